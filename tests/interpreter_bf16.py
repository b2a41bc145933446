"""bfloat16 under the Triton interpreter, as a GPU computes it, for the tests.

Triton 3.6's interpreter stores bfloat16 as its uint16 bit pattern and gets
two things wrong that the model's kernels rely on (upstream calls bf16
"not supported yet" in the interpreter: triton-lang/triton#11584):

- ``tl.dot`` on bfloat16 operands multiplies the bit patterns (values near
  1e10 for inputs in [-2, 2]); only 8-bit float operands are converted;
- a float32 -> bfloat16 cast truncates, where a GPU (``cvt.rn.bf16.f32``)
  rounds to nearest even.

So the tests of the attention kernels, the GELU GEMM and the model in
bfloat16, the dtype users train in, could not run on the CPU. Here the
dot converts bfloat16 operands to float32 first (exact: the high half of a
float32), the float32 -> bfloat16 cast rounds to nearest even through
torch's own conversion (NaN stays a NaN, though torch's is 0x7FC0 where a
GPU's is 0x7FFF), and the bfloat16 -> float32 cast is the exact one (the
shipped conversion got bf16 subnormals wrong). Other bfloat16 paths are
still the shipped interpreter's and wrong: arithmetic on two bf16 values
without a cast (done on the bit patterns), casts from float64 or integers.
The kernels cast to float32 before any arithmetic, and ``cast_for`` rounds
float64 through float32, so none of them takes those paths.

Installed (tests/conftest.py) only on the Triton version it was written
against, and only where its internals are as expected; MIGT_PLAIN_INTERPRETER=1
leaves the interpreter as shipped (the bf16 cases then skip, and the autocast
tests run float16: tests/helpers.py).
"""
from __future__ import annotations

SUPPORTED_TRITON = ("3.6.",)
INSTALLED = False  # whether install() patched this process's interpreter


def bf16_bits_to_float32(bits):
    """uint16 bfloat16 bit patterns -> float32 values (exact)."""
    import numpy as np

    wide = np.array(bits, dtype=np.uint32)  # a copy, kept an array at any rank
    wide <<= 16
    return wide.view(np.float32)


def float32_to_bf16_bits(values):
    """float32 values -> uint16 bfloat16 bit patterns, rounded to nearest even."""
    import numpy as np
    import torch

    values = np.array(values, dtype=np.float32)  # a contiguous copy, of any rank
    return torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def install() -> bool:
    """Patch the interpreter; returns whether it did."""
    import numpy as np
    import triton
    import triton.language as tl

    if not triton.__version__.startswith(SUPPORTED_TRITON):
        return False
    try:
        from triton.runtime import interpreter
        builder = interpreter.InterpreterBuilder
        real_dot, real_cast, handle = builder.create_dot, builder.cast_impl, interpreter.TensorHandle
    except (ImportError, AttributeError):
        return False

    def as_float32(t):
        return bf16_bits_to_float32(t.data) if t.dtype.scalar == tl.bfloat16 else t.data

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if tl.bfloat16 not in (a.dtype.scalar, b.dtype.scalar):
            return real_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        product = np.matmul(as_float32(a), as_float32(b), dtype=np.float32)
        return handle(product.astype(d.data.dtype) + d.data, d.dtype.scalar)

    def cast_impl(self, src, dst_type):
        pair = (src.dtype.scalar, dst_type.scalar)
        if pair == (tl.float32, tl.bfloat16):
            return handle(float32_to_bf16_bits(src.data), tl.bfloat16)
        if pair == (tl.bfloat16, tl.float32):
            return handle(bf16_bits_to_float32(src.data), tl.float32)
        return real_cast(self, src, dst_type)

    global INSTALLED
    builder.create_dot = create_dot
    builder.cast_impl = cast_impl
    INSTALLED = True
    return True
