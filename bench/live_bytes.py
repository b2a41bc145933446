"""The peak of the bytes that tensors made inside a block hold at once, on
any device, the CPU included: the CPU allocator keeps no statistics, so this
follows storages instead.

``LiveBytes`` is a TorchDispatchMode: every tensor an aten op returns adds its
storage's bytes once (views and in-place results add nothing), and the
storage's death (a weakref finalizer; PyTorch keeps one Python object per
live storage) takes them off; an output on the storage of one of the op's
inputs (a view, an in-place result) is not counted, whether or not that
input was made in the block. The peak is read after each op, so it is the
peak of what ops return, which is every allocation but an op's internal
scratch. The kernels' custom ops (namespace ``migt``) are run through their
Python bodies under the mode, so the GEMM outputs and working tensors inside
a fused op count as they are made and freed, not only the op's outputs.
Tensors made before the block (parameters, inputs) are not counted.
"""
from __future__ import annotations

import weakref

import torch
from torch._library.custom_ops import _maybe_get_opdef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_FUSED_NAMESPACE = "migt"


class LiveBytes(TorchDispatchMode):
    """with LiveBytes() as live: ...; then live.peak (bytes) and live.live (still held)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._held = {}  # storage data_ptr -> bytes

    def _free(self, key: int) -> None:
        self.live -= self._held.pop(key, 0)

    def _track(self, out, inputs) -> None:
        # an output on an input's storage (a view, an in-place result) is not
        # new memory, even when the input was made before the block
        given = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._held or key in given:
                continue
            self._held[key] = nbytes
            self.live += nbytes
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        opdef = _maybe_get_opdef(func._schema.name) if func.namespace == _FUSED_NAMESPACE else None
        if opdef is not None:
            # see inside the fused op (its GEMMs and working tensors), with no
            # autograd recording, as the op's own body runs
            with self, torch.no_grad():
                out = opdef._init_fn(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        self._track(out, tree_leaves((args, kwargs)))
        return out
