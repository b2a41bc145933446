"""bench/kernel_times.py, which only a GPU run times: its cases run (under
the interpreter, a few rows) and count the bytes each kernel must move."""
import torch

from bench import kernel_times


def test_every_case_runs_and_counts_its_bytes():
    rows, D, F = 20, 256, 1024
    cases = kernel_times.cases(1, "cpu", rows=rows)
    assert len({name for name, _, _ in cases}) == len(cases) == 15
    for name, fn, nbytes in cases:
        fn()
        # at least one read and one write of a bf16 (rows, D) tensor; the hidden's are d_ff wide
        assert 4 * rows * D <= nbytes <= 8 * rows * F + 24 * rows * D + 8 * rows, name


def test_needs_cuda(capsys):
    if torch.cuda.is_available():
        return
    assert kernel_times.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
