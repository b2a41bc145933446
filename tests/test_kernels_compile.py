"""Every Triton kernel variant compiles for an H100/H200 (sm_90) and fits its
shared memory, checked without a GPU (bench/compile_check.py): the
interpreter the other kernel tests use accepts code the compiler rejects."""
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def compile_check(*args: str) -> str:
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.compile_check", "--arch", "90", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    assert " 0 failure(s)" in report, report[-6000:]
    return report


def test_all_kernel_variants_compile_for_sm90():
    compile_check()
    # --sass (disassembling takes ~0.35 s a variant: the embedding's model variants only):
    # each variant's instruction count, and the persistent kernel's loop body
    report = compile_check("--sass", "--quick", "--only", "value_embedding")
    counts = re.findall(r"(\w+kernel)\s.* sass\s+(\d+) loop (\S+)", report)
    assert counts and all(int(n) > 0 for _, n, _ in counts), report[-6000:]
    loops = [(name, body) for name, _, body in counts]
    assert all(body != "-" for name, body in loops if name == "_value_embedding_bwd_params_kernel")
    assert all(body == "-" for name, body in loops if name == "_value_embedding_fwd_kernel")
    assert {name for name, _ in loops} >= {"_value_embedding_bwd_params_kernel", "_value_embedding_fwd_kernel"}


def test_sass_counts_find_loop_bodies():
    # (bench.compile_check itself is not imported here: it turns the
    # interpreter off for the rest of the session)
    from bench import sass

    listing = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;               /* 0x00000a0000017a02 */
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;              /* 0x0000000102027810 */
        /*0020*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;    /* 0x000000030200720c */
        /*0030*/              @!P0 BRA 0x10 ;                           /* 0xfffffffc00f48947 */
        /*0040*/                   EXIT ;                               /* 0x000000000000794d */
        /*0050*/                   BRA 0x50;                            /* 0xfffffffc00fc7947 */
    """
    lines = sass.instructions(listing)
    assert [a for a, _ in lines] == [0x00, 0x10, 0x20, 0x30, 0x40, 0x50] and lines[3][1] == "@!P0 BRA 0x10"
    assert sass.counts(lines) == (6, [3])


def test_loop_stages_only_where_the_staged_tiles_fit(monkeypatch):
    from kernels import _launch

    bf16 = torch.empty(0, dtype=torch.bfloat16)
    f32 = torch.empty(0, dtype=torch.float32)
    assert _launch.loop_stages(8 * 256, bf16, f32) == _launch.BWD_LOOP_STAGES
    monkeypatch.setattr(_launch, "BWD_LOOP_STAGES", 3)
    assert _launch.loop_stages(8 * 256, bf16, f32, f32, bf16) == 3  # the FFN's norm backward: 74 KB
    assert _launch.loop_stages(8 * 256, bf16, f32, f32, bf16, bf16, f32) == 1  # + dx_add, dx: 111 KB
    assert _launch.loop_stages(16 * 8192, f32) == 1
