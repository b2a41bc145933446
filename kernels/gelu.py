"""The GELU of the fused FFN kernels, nn.GELU()'s erf form, gelu(x) = x Phi(x), and its
derivative Phi(x) + x phi(x), with Phi and phi the standard normal CDF and
density.

float32 and float64 tiles use libdevice's erf, as PyTorch does. 16-bit tiles
(the model's case under autocast) use a cheaper Phi: libdevice's erff is
about 28 SASS instructions an element and was half the instructions of the
GELU passes, which the H200 showed bound by instruction issue, not bytes
(docs/kernel-tuning.md section 7). With the upper tail written
Q(t) = exp(-t^2 / 2) R(t), log2 R is smooth on [0, TAIL_END] and one
degree-9 polynomial (scripts/fit_normal_tail.py) holds it:

    Q(|x|) = exp2(-x^2 log2(e) / 2 + L(u)),  u = 2 min(|x|, TAIL_END) / TAIL_END - 1
    Phi(x) = Q(|x|) for x < 0, 1 - Q(|x|) otherwise

which is about 14 instructions and one exp2 whose argument's first term is
phi's too. For |x| <= TAIL_END it is within 2.9e-6 of Phi relative and
5.1e-7 absolute in float32 under the interpreter (tests/test_gelu.py, which
allows 3.1e-6 and 5.3e-7), about 3.2e-6 relative on a GPU, whose exp2
adds up to 2^-22. The float32 erf form is within 1e-7 absolute there but
past 1e-4 relative below about x = -3.6, where 1 + erf cancels. Both are
far inside a 16-bit output's rounding (2^-9 bf16, 2^-12 fp16). Below
-TAIL_END, where Phi < 1e-9, the clamped polynomial overstates it by a
factor of about |x| / TAIL_END, until the exp2 underflows to 0 near
x = -13.2 (the erf form is exactly 0 from about x = -5.4).
"""
from __future__ import annotations

import triton
import triton.language as tl

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_HALF_LOG2E = tl.constexpr(0.7213475204444817)  # log2(e) / 2: exp(-x^2/2) = exp2(-x^2 * this)

# `python scripts/fit_normal_tail.py --end 6 --degree 9`: L(u) lowest power
# first, float32 values (|error| <= 1.7e-6 in log2).
TAIL_END = 6.0
TAIL_POLY = (-3.0408074855804443, -1.2252663373947144, 0.4581410884857178, -0.2044525146484375,
             0.09169328957796097, -0.03902050480246544, 0.016859542578458786, -0.006453073583543301,
             -4.652433926821686e-05, 0.0010311040095984936)
_END = tl.constexpr(TAIL_END)
_U_SCALE = tl.constexpr(2.0 / TAIL_END)
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9 = (tl.constexpr(c) for c in TAIL_POLY)


@triton.jit
def _normal_cdf_16bit(x, sq):
    """Phi(x) by the tail polynomial, float32 [tile]; sq = x * x, which the
    caller shares with phi. Every multiply-add is an explicit fma: the
    compiler has no contraction left to choose, so the forward and the
    backward, whose code around this differs, get the same bits."""
    u = tl.fma(tl.minimum(tl.abs(x), _END), _U_SCALE, -1.0)
    poly = tl.fma(u, _L9, _L8)  # Horner's rule
    poly = tl.fma(poly, u, _L7)
    poly = tl.fma(poly, u, _L6)
    poly = tl.fma(poly, u, _L5)
    poly = tl.fma(poly, u, _L4)
    poly = tl.fma(poly, u, _L3)
    poly = tl.fma(poly, u, _L2)
    poly = tl.fma(poly, u, _L1)
    poly = tl.fma(poly, u, _L0)
    tail = tl.exp2(tl.fma(sq, -_HALF_LOG2E, poly))  # Q(|x|)
    return tl.where(x < 0, tail, 1.0 - tail)


@triton.jit
def gelu(x, SIXTEEN_BIT: tl.constexpr):
    """gelu(x) = x Phi(x) of a float32/float64 tile; SIXTEEN_BIT: the tile
    will be stored in 16 bits, so the tail polynomial is accurate enough.
    gelu_and_grad's first value, the same code (the unused slope compiles
    away), so a backward that recomputes gelu gets the forward's bits."""
    g, _slope = gelu_and_grad(x, SIXTEEN_BIT)
    return g


@triton.jit
def gelu_and_grad(x, SIXTEEN_BIT: tl.constexpr):
    """(gelu(x), gelu'(x) = Phi(x) + x phi(x)) of a tile."""
    if SIXTEEN_BIT:
        sq = x * x
        cdf = _normal_cdf_16bit(x, sq)
        pdf = _INV_SQRT_2PI * tl.exp2(sq * -_HALF_LOG2E)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * _SQRT1_2))
        pdf = _INV_SQRT_2PI * tl.exp(-0.5 * x * x)
    return x * cdf, cdf + x * pdf
