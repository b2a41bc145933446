#!/usr/bin/env bash
# Create .venv (once) and install the pinned dependencies and the package in it.
# Reinstalls only when requirements.txt changes. On a machine whose python3
# already has a CUDA build of torch, the venv sees it (system site packages)
# and torch/triton/numpy are not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MIGT_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    "$PY" -m venv --system-site-packages "$VENV"
    touch "$VENV/.system-torch"
  else
    "$PY" -m venv "$VENV"
  fi
fi

stamp="$VENV/.requirements.sha"
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  reqs=requirements.txt
  if [ -f "$VENV/.system-torch" ]; then
    reqs="$VENV/requirements-no-torch.txt"
    grep -vE '^(torch|triton|numpy)==' requirements.txt > "$reqs"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
