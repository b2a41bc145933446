import os

# The Triton kernels run on the CPU through the interpreter; this must be set
# before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A developer's MIGT_BACKEND must not change what the tests exercise.
os.environ.pop("MIGT_BACKEND", None)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import pytest  # noqa: E402


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Every float tensor made by torch.empty or torch.empty_like starts as
    NaN, so an output element (or partial sum) a kernel forgets to write
    fails the test instead of reading whatever memory held."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def nan_filled(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_filled(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(real_empty_like(*a, **k)))
