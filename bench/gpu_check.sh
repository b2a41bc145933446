#!/usr/bin/env bash
# The one prepared script for a GPU machine (see bench/README.md):
#   bash bench/gpu_check.sh [OUT_DIR]        (default $OUT, else bench/results/)
# 1. prints the device (nvidia-smi, torch / triton versions);
# 2. checks every Triton kernel against the float64 reference at full model
#    shapes, after compilation (bench/gpu_parity.py), and says so loudly on a mismatch;
# 3. measures the ceilings (copy bandwidth, bf16/fp32 GEMM), then runs the
#    model, attention and norms suites within what is left of the time budget
#    (GPU_CHECK_BUDGET_S, default 400 s, so that with a case in flight at the end
#    the whole script stays under 8 minutes).
# Installs nothing; uses python3 (PYTHON to override) with PYTHONPATH=. .
# Exit status: 1 when parity failed or a benchmark case errored, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench/results}}
mkdir -p "$OUT_DIR"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET MIGT_BACKEND
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-400}
START=$(date +%s)
status=0
elapsed() { echo $(( $(date +%s) - START )); }

echo "=== device"
nvidia-smi || echo "nvidia-smi failed"
"$PY" - <<'PY' || { echo "!!! python3 cannot see a CUDA device: nothing to check"; exit 1; }
import sys, torch, triton
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}")
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
PY

echo "=== parity of the Triton kernels at full shapes ($(elapsed) s)"
timeout 180 "$PY" -m bench.gpu_parity --device cuda 2>&1 | tee "$OUT_DIR/parity.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 1 ] || [ "$rc" -gt 2 ]; then
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!!! PARITY FAILED (exit $rc): a Triton kernel disagrees with the reference"
  echo "!!! or crashed; the timings below of that kernel are of a WRONG kernel."
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  status=1
elif [ "$rc" -eq 2 ]; then
  echo "!!! parity: some Triton kernels are missing from this build (see above)"
fi

left=$(( BUDGET - $(elapsed) - 20 ))
if [ "$left" -lt 60 ]; then left=60; fi
echo "=== ceilings and suites, time budget ${left} s ($(elapsed) s so far)"
# the budget stops new cases; the hard timeout leaves a case in flight 90 s to end
timeout $(( left + 90 )) "$PY" -m bench --suites ceilings model attention norms \
    --dtype bf16 --time-budget "$left" --out "$OUT_DIR"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "!!! bench exited $rc (1: a case errored, 124: hard timeout)"
  status=1
fi
echo "=== done in $(elapsed) s, exit $status; results in $OUT_DIR"
exit $status
