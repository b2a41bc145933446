#!/usr/bin/env bash
# The one prepared script for a GPU machine (see bench/README.md):
#   bash bench/gpu_check.sh [OUT_DIR]        (default $OUT, else bench/results/)
# Everything it writes goes under OUT_DIR. In order of value, each step given
# at most what is left of GPU_CHECK_BUDGET_S (default 450 s) less what the
# later steps need, so the whole script ends in under 8 minutes:
# 1. the device (nvidia-smi, torch / triton versions);
# 2. parity of every Triton kernel against the float64 reference at full model
#    shapes, after compilation (bench/gpu_parity.py), said loudly on a mismatch;
# 3. the training step of eager triton (also with the FFN's GELU in a Triton
#    GEMM's epilogue), eager sdpa and torch.compile of each, B=64
#    (OUT_DIR/configs/); then the other configurations users run, eager
#    (pooled variable mode, selective recompute, bf16 stream, input checks read
#    from the device each step: OUT_DIR/configs-options/); then 24 steps of
#    the trainer (its CUDA-only loss read-back);
# 4. one training step under torch.profiler, kernels grouped (bench/profile.py),
#    and each fused-block kernel alone against the copy bandwidth, with a sweep
#    of the backward kernels' launch settings (bench/kernel_times.py), then the
#    attention kernels under each launch setting a tuning run compares and the
#    training step with the fastest of each;
# 5. the largest batch whose training step runs, triton, default and selective
#    recompute (--max-batch);
# 6. the ceilings and the model, attention and norms suites, within what is left;
# 7. the roofline (no GPU needed) checked against step 4's profile.
# Installs nothing; uses python3 (PYTHON to override) with PYTHONPATH=. .
# Exit status: 1 when parity failed or a step errored, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-bench/results}}
mkdir -p "$OUT_DIR"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET MIGT_BACKEND
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)
status=0
elapsed() { echo $(( $(date +%s) - START )); }
# seconds a step may take: its cap, but never eating the reserve of the later steps
allow() {  # allow CAP RESERVE
  local left=$(( BUDGET - $(elapsed) - $2 ))
  if [ "$left" -gt "$1" ]; then left=$1; fi
  if [ "$left" -lt 10 ]; then left=10; fi
  echo "$left"
}
step_failed() {  # step_failed NAME RC
  if [ "$2" -ne 0 ]; then echo "!!! $1 exited $2 (124: its time limit)"; status=1; fi
}

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
timeout "$(allow 150 280)" "$PY" -m bench.gpu_parity --device cuda 2>&1 | tee "$OUT_DIR/parity.log"
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

# first what issue 11's targets are measured on (eager triton and its GELU-in-GEMM
# variant, eager sdpa, torch.compile of each model), so that a spent time budget
# cuts the options below rather than the compiled triton step (the first H200
# run's budget ran out before its pooled / recompute / bf16-stream cases)
echo "=== the training step, B=64 ($(elapsed) s)"
t=$(allow 130 250)
timeout "$t" "$PY" -m bench --suites model --ops train_step train_step_gelu_in_gemm \
    train_step_recompute_gelu_in_gemm --batch-sizes 64 \
    --backends triton sdpa compile compile_triton --dtype bf16 --time-budget $(( t > 50 ? t - 40 : 10 )) \
    --no-plots --out "$OUT_DIR/configs"
step_failed "training step" $?

echo "=== the configurations users run, eager, B=64 ($(elapsed) s)"
t=$(allow 60 220)
timeout "$t" "$PY" -m bench --suites model --ops train_step_pooled train_step_recompute_ffn \
    train_step_bf16_stream train_step_device_checks --batch-sizes 64 --backends triton sdpa --dtype bf16 \
    --time-budget $(( t > 30 ? t - 20 : 10 )) --no-plots --out "$OUT_DIR/configs-options"
step_failed "configurations" $?

# the trainer's CUDA-only path: each step's loss read through pinned memory
# after the next step is queued (migt/training/trainer.py StepStats); seed
# config, so the kernels compiled above are reused
echo "=== trainer, 24 steps on synthetic bars ($(elapsed) s)"
timeout "$(allow 45 170)" "$PY" -m migt.train --data synthetic --synthetic-days 80 --max-steps 24 --batch-size 16 \
    --log-every 8 --eval-every 24 --warmup-steps 4 --no-progress --out "$OUT_DIR/trainer" 2>&1 | tail -n 8
step_failed "trainer" "${PIPESTATUS[0]}"
"$PY" - "$OUT_DIR/trainer/metrics.jsonl" <<'PY' || { echo "!!! trainer: a logged loss is not finite"; status=1; }
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in rows if r["split"] == "train"]
print("trainer losses:", [(r["step"], round(r["loss"], 4), round(r["grad_norm"], 3)) for r in train])
assert [r["step"] for r in train] == [8, 16, 24] and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train)
PY

echo "=== profile of one training step ($(elapsed) s)"
timeout "$(allow 75 150)" "$PY" -m bench.profile --backends triton sdpa --out "$OUT_DIR" 2>&1 \
    | tee "$OUT_DIR/profile.log" | tail -n 40
step_failed "profile" "${PIPESTATUS[0]}"

echo "=== the fused block's kernels alone ($(elapsed) s)"
timeout "$(allow 45 130)" "$PY" -m bench.kernel_times --sweep --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/kernel-times.md"
step_failed "kernel times" "${PIPESTATUS[0]}"

# attention is the group furthest above its roofline floor (run 2: 14.0 ms
# against 4.0): each launch setting of kernels.attention_launch.LAUNCH_CANDIDATES,
# parity-tested on the CPU, timed alone at B=64
echo "=== attention launch settings ($(elapsed) s)"
mkdir -p "$OUT_DIR/attention-launch"
timeout "$(allow 70 120)" "$PY" -m bench.kernel_times --attention-sweep --out "$OUT_DIR/attention-launch" 2>&1 \
    | tee "$OUT_DIR/attention-launch/kernel-times.md"
step_failed "attention launch settings" "${PIPESTATUS[0]}"

# the training step with the sweep's fastest setting of each attention kernel
# (kernels/attention_launch.py reads MIGT_ATTENTION_LAUNCH), against the
# table's step in configs/ above: what the settings are worth in the step
fastest=$("$PY" -m bench.kernel_times --fastest-attention "$OUT_DIR/attention-launch/kernel-times.json" 2>/dev/null)
if [ -n "$fastest" ]; then
  echo "=== training step with MIGT_ATTENTION_LAUNCH=$fastest ($(elapsed) s)"
  t=$(allow 60 100)
  MIGT_ATTENTION_LAUNCH="$fastest" timeout "$t" "$PY" -m bench --suites model --ops train_step --batch-sizes 64 \
      --backends triton --dtype bf16 --time-budget $(( t > 30 ? t - 20 : 10 )) --no-plots \
      --out "$OUT_DIR/attention-launch/step"
  step_failed "step with the fastest attention settings" $?
fi

# triton only (sdpa's, 192, comes from the first H200 run and its code has
# not changed): the default step and selective recompute, from 384 up
echo "=== largest batch, triton ($(elapsed) s)"
timeout "$(allow 170 40)" "$PY" -m bench --max-batch --backends triton --dtype bf16 \
    --ops train_step train_step_recompute_ffn --max-batch-start 384 --max-batch-limit 1024 --out "$OUT_DIR"
step_failed "max-batch" $?

t=$(allow 300 25)
case_budget=$(( t > 75 ? t - 60 : 15 ))
echo "=== ceilings and suites, time budget ${case_budget} s ($(elapsed) s so far)"
# the budget stops new cases; the hard timeout leaves a case in flight time to end
timeout "$t" "$PY" -m bench --suites ceilings model attention norms --dtype bf16 \
    --time-budget "$case_budget" --out "$OUT_DIR"
step_failed "bench suites" $?

echo "=== roofline against this run's profile ($(elapsed) s)"
profile_json=$(ls "$OUT_DIR"/*-profile.json 2>/dev/null | head -n 1)
timeout "$(allow 60 0)" "$PY" -m bench.roofline ${profile_json:+--measured "$profile_json"} --out "$OUT_DIR" \
    | tail -n 60
step_failed "roofline" "${PIPESTATUS[0]}"

echo "=== done in $(elapsed) s, exit $status; results in $OUT_DIR"
exit $status
