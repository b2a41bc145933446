"""Every Triton kernel variant compiles for an H100/H200 (sm_90) and fits its
shared memory, checked without a GPU (bench/compile_check.py): the
interpreter the other kernel tests use accepts code the compiler rejects."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_all_kernel_variants_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.compile_check", "--arch", "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    assert " 0 failure(s)" in report, report[-6000:]
