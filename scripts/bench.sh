#!/usr/bin/env bash
# The main job: set up .venv, then run the benchmark suite on whatever device
# there is (a quick run on the CPU). Extra arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${MIGT_VENV:-.venv}/bin/python" -m bench "$@"
