#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite on the CPU
# (Triton kernels through TRITON_INTERPRET=1) in MIGT_TEST_WORKERS pytest-xdist
# workers (default 2, one per core of the CI machine; 0 runs it in one
# process), then the data tests again under pandas 3 (scripts/test_pandas3.sh).
# Extra arguments go to pytest and select part of the main suite; the pandas 3
# step then does not run (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# (-p no:benchmark: no test uses pytest-benchmark, which under xdist only warns)
"${MIGT_VENV:-.venv}/bin/python" -m pytest tests -q -n "${MIGT_TEST_WORKERS:-2}" -p no:benchmark "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/test_pandas3.sh
else
  echo "pandas 3 data tests not run (arguments given); run them with: bash scripts/test_pandas3.sh"
fi
