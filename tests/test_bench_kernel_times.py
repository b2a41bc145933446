"""bench/kernel_times.py, which only a GPU run times: its cases run (under
the interpreter, a few rows) and count the bytes each kernel must move."""
import json

import pytest
import torch

from bench import kernel_times


def test_every_case_runs_and_counts_its_bytes():
    rows, D, F = 20, 256, 1024
    cases = kernel_times.cases(1, "cpu", rows=rows)
    assert len({name for name, _, _ in cases}) == len(cases) == 19
    for name, fn, nbytes in cases:
        fn()
        # at least one read and one write of a bf16 (rows, D) tensor; the hidden's are d_ff wide
        assert 4 * rows * D <= nbytes <= 10 * rows * F + 24 * rows * D + 8 * rows, name


def test_needs_cuda(capsys):
    if torch.cuda.is_available():
        return
    assert kernel_times.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")  # bf16 under the interpreter
def test_attention_sweep_times_every_candidate_on_its_kernels_case():
    """Each launch setting of kernels.attention_launch.LAUNCH_CANDIDATES gets a row,
    timed while the override is set (and only then), on the case that runs
    that kernel; the cases run under the interpreter at a small shape (their
    values are not looked at)."""
    pytest.importorskip("triton")
    from kernels import attention_launch

    seen = []

    def fake_time(fn):
        seen.append(dict(attention_launch.LAUNCH_OVERRIDE))
        fn()
        return 1.0

    attention_launch.LAUNCH_OVERRIDE["dq"] = (64, 32, 4, 3)  # e.g. from MIGT_ATTENTION_LAUNCH: put back after
    try:
        rows = list(kernel_times.attention_sweep(1, "cpu", time_ms=fake_time, steps=20, heads=1, n_vars=3))
        assert attention_launch.LAUNCH_OVERRIDE == {"dq": (64, 32, 4, 3)}
    finally:
        attention_launch.LAUNCH_OVERRIDE.clear()
    candidates = [(kernel, setting) for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items()
                  for setting in settings]
    assert len(rows) == len(seen) == len(candidates)
    for (kernel, setting), override, (label, name, ms, nbytes) in zip(candidates, seen, rows):
        assert override == {kernel: setting}
        assert label.startswith(f"{kernel} {'x'.join(map(str, setting))}")
        assert ("variable" in name) == kernel.startswith("var")
        assert ("bwd" in name) == (kernel in ("dq", "dkdv", "var_bwd"))
        assert nbytes == (8 if "bwd" in name else 4) * 2 * 3 * 20 * 32
    assert sum("(table)" in label for label, _, _, _ in rows) == len(attention_launch.LAUNCH_CANDIDATES)


def test_fastest_attention_settings_read_back_from_a_sweep(tmp_path, capsys):
    """--fastest-attention turns a sweep's records into MIGT_ATTENTION_LAUNCH's
    value, which kernels.attention_launch accepts."""
    from kernels import attention_launch

    records = [dict(setting="fwd 64x64x4x3 (table)", ms=1.0), dict(setting="fwd 128x64x8x3", ms=0.8),
               dict(setting="fwd 64x32x4x3", ms=0.9), dict(setting="dq 64x64x4x3 (table)", ms=0.5),
               dict(setting="dq 128x32x8x3", ms=0.7), dict(setting="var_bwd 16x2", ms=0.3)]
    path = tmp_path / "kernel-times.json"
    path.write_text(json.dumps(records))
    assert kernel_times.main(["--fastest-attention", str(path)]) == 0
    value = capsys.readouterr().out.strip()
    assert value == "fwd=128x64x8x3,dq=64x64x4x3,var_bwd=16x2"
    assert attention_launch.parse_settings(value) == {"fwd": (128, 64, 8, 3), "dq": (64, 64, 4, 3),
                                                      "var_bwd": (16, 2)}
