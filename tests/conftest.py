import os

# The Triton kernels run on the CPU through the interpreter; this must be set
# before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A developer's MIGT_BACKEND, or attention launch settings being timed
# (MIGT_ATTENTION_LAUNCH), must not change what the tests exercise.
os.environ.pop("MIGT_BACKEND", None)
os.environ.pop("MIGT_ATTENTION_LAUNCH", None)

import torch  # noqa: E402

# Two cores: the whole suite's one process takes both; each of pytest-xdist's
# workers (scripts/test.sh runs one per core) takes one.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

if os.environ.get("TRITON_INTERPRET") == "1" and not os.environ.get("MIGT_PLAIN_INTERPRETER"):
    import fast_interpreter  # noqa: E402
    import interpreter_bf16  # noqa: E402

    fast_interpreter.install()
    interpreter_bf16.install()  # bfloat16 dots and casts as a GPU computes them


import pytest  # noqa: E402


class _NaNAllocatingTorch:
    """The torch module as a kernel module's host code sees it, except that
    torch.empty and torch.empty_like return NaN-filled float tensors."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    @staticmethod
    def _nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty(self, *args, **kwargs):
        return self._nan(self._real.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._nan(self._real.empty_like(*args, **kwargs))


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Every float tensor the Triton kernels' host code allocates starts as
    NaN, so an output element (or partial sum) a kernel forgets to write
    fails the test instead of reading whatever memory held. Only the kernel
    modules see it: a patched torch.empty would be recorded for good by
    torch.compile's tables (imported lazily by the first custom-op call),
    which then refuse to trace the real one."""
    from kernels import (attention, chunking, embedding, feed_forward, ffn_gated_norm, gated_norm, gelu_gemm,
                         norm_linear, pooling, revin, seeded_dropout)

    for module in (attention, chunking, embedding, feed_forward, ffn_gated_norm, gated_norm, gelu_gemm, norm_linear,
                   pooling, revin, seeded_dropout):
        monkeypatch.setattr(module, "torch", _NaNAllocatingTorch(torch))
