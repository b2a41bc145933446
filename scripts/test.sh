#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite on the CPU
# (Triton kernels through TRITON_INTERPRET=1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${MIGT_VENV:-.venv}/bin/python" -m pytest tests -q "$@"
