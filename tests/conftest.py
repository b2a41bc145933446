import os

# The Triton kernels run on the CPU through the interpreter; this must be set
# before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A developer's MIGT_BACKEND must not change what the tests exercise.
os.environ.pop("MIGT_BACKEND", None)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class _NaNAllocations(TorchDispatchMode):
    """Fills every floating tensor that torch.empty / empty_like /
    empty_strided / new_empty return with NaN."""

    ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.ALLOCATIONS and out.is_floating_point():
            out.fill_(float("nan"))
        return out


@pytest.fixture
def poisoned_allocations():
    """Every float tensor a kernel's host code allocates starts as NaN, so an
    output element (or partial sum) a kernel forgets to write fails the test
    instead of reading whatever memory held. A dispatch mode, not a patched
    torch.empty: torch.compile, imported lazily by the first custom-op call,
    would otherwise record the patched function in its tables for good."""
    with _NaNAllocations():
        yield
