"""Bytes, FLOPs and kernel launches of one op call, for bench/roofline.py.

Every op the roofline sees is an OpOverload called below autograd with fake
tensors: shapes and dtypes, no values. Rules:
  views and allocations (view, transpose, empty, detach, ...): free, no launch;
  GEMMs (mm, addmm, bmm, baddbmm): 2*M*N*K FLOPs;
  SDPA ops: 4*N*H*L*S*Dh forward FLOPs (every key, masked or not), 2.5x that
      backward;
  everything else: the bytes of its tensor inputs and outputs, each read or
      written once, one launch;
  custom ops (`migt::...`) are opaque here: each needs an entry in COSTS
      (register with @register_cost("migt::name")), else the default (bytes
      of inputs and outputs, 0 FLOPs, one launch) is used and the op is
      reported as "unregistered".
The FLOPs of masked attention depend on how many steps are valid: the
tracer sets `valid_steps` (valid steps per sample of the traced batch)
before it runs the model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
from torch.utils._pytree import tree_leaves

from kernels._launch import BWD_PROGRAMS_PER_SM

BWD_FLOP_FACTOR = 2.5  # attention backward: 5 matmuls to the forward's 2


@dataclasses.dataclass
class Cost:
    bytes: float
    flops: float = 0.0
    launches: int = 1
    # A custom op that runs several kernels (a fused block op: GEMMs and
    # elementwise passes) returns a list of Costs, one per kernel: `part`
    # names it and `group` is its group (else the op's name decides), so each
    # is predicted on its own roofline and GEMM time is not hidden by bytes.
    part: str = ""
    group: Optional[str] = None


# name ("migt::masked_attention_fwd") -> fn(inputs, outputs) -> Cost
COSTS: dict = {}
# Valid steps per sample of the batch being traced (None: every step valid).
valid_steps: Optional[list] = None

# Ops that only describe or allocate memory.
_FREE = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
    "lift_fresh_copy", "_unsafe_view", "view", "set_", "resize_", "sym_size", "sym_stride", "sym_numel",
    "is_same_size", "_has_compatible_shallow_copy_type", "_propagate_xla_data",
    "scalar_tensor", "_local_scalar_dense",  # a Python scalar as a 0-dim host tensor
}
# Dispatcher entries that are not ops on data: device queries, profiler marks.
_FREE_NAMESPACES = {"prim", "profiler"}
# aten ops whose CUDA implementation launches more than one kernel.
_LAUNCHES = {"native_layer_norm_backward": 2}
_GEMM = {"mm", "addmm", "bmm", "baddbmm"}


def register_cost(name: str) -> Callable:
    """Decorator: `@register_cost("migt::my_op")` on fn(inputs, outputs) -> Cost,
    where inputs are the op's arguments in schema order and outputs its
    results (tensors, or tuples of them)."""
    def wrap(fn):
        COSTS[name] = fn
        return fn
    return wrap


def tensor_bytes(*trees) -> float:
    return float(sum(t.numel() * t.element_size() for t in tree_leaves(trees) if isinstance(t, torch.Tensor)))


def default_cost(inputs, outputs) -> Cost:
    return Cost(tensor_bytes(inputs, outputs))


def _op_name(func) -> tuple:
    """('aten', 'addmm') from aten.addmm.default."""
    namespace, rest = func.name().split("::", 1)
    return namespace, rest.split(".")[0]


def op_cost(func, args, kwargs, outputs) -> tuple:
    """(Cost or list of Costs, registered) of one call: registered is False
    for a custom op without an entry in COSTS (the default cost was used)."""
    namespace, name = _op_name(func)
    if namespace in _FREE_NAMESPACES:
        return Cost(0.0, 0.0, 0), True
    if namespace != "aten":
        fn = COSTS.get(f"{namespace}::{name}")
        inputs = list(args) + list(kwargs.values())
        return (fn(inputs, outputs), True) if fn else (default_cost(inputs, outputs), False)
    if func.is_view or name in _FREE:
        return Cost(0.0, 0.0, 0), True
    cost = Cost(tensor_bytes(args, kwargs, outputs), 0.0, _LAUNCHES.get(name, 1))
    if name in _GEMM:
        out = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
        inner = args[0].shape[-1] if name in ("mm", "bmm") else args[1].shape[-1]  # K of (M, K) @ (K, N)
        cost.flops = 2.0 * out.numel() * inner
    elif "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        cost.flops = _sdpa_flops(name, args)
    elif name.startswith("_foreach_"):
        cost.launches = _foreach_launches(args)
    return cost, True


def _sdpa_flops(name: str, args) -> float:
    backward = name.endswith("backward")
    q, k = (args[1], args[2]) if backward else (args[0], args[1])
    *lead, L, Dh = q.shape
    S = k.shape[-2]
    fwd = 4.0 * math.prod(lead) * L * S * Dh
    return fwd * BWD_FLOP_FACTOR if backward else fwd


def _foreach_launches(args) -> int:
    """CUDA's multi_tensor_apply: a launch per 320 chunks of 65536 elements or
    per 36 tensors (the limit with 4 lists, as AdamW has), whichever is more."""
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    if not lists:
        return 1
    tensors = lists[0]
    chunks = sum(math.ceil(t.numel() / 65536) for t in tensors)
    return max(1, math.ceil(chunks / 320), math.ceil(len(tensors) / 36))


# --- the migt:: custom ops ----------------------------------------------------

def _valid_counts(mask: torch.Tensor) -> list:
    B, T = mask.shape
    if valid_steps is not None and len(valid_steps) == B:
        return list(valid_steps)
    return [T] * B


def _attention_flops(shape, mask, axis) -> float:
    """Forward FLOPs on valid tokens: 4*n_q*n_k*Dh per (b, v, h) along time
    (n valid steps each way), per valid (b, t, h) over V x V along variables."""
    B, V, T, H, Dh = shape
    n = _valid_counts(mask)
    if axis == "time":
        return 4.0 * Dh * H * V * sum(c * c for c in n)
    return 4.0 * Dh * H * V * V * sum(n)


@register_cost("migt::masked_attention_fwd")
def _attention_fwd(inputs, outputs) -> Cost:
    q, k, v, mask, axis = inputs[:5]
    return Cost(tensor_bytes(q, k, v, mask, outputs), _attention_flops(q.shape, mask, axis), 1)


@register_cost("migt::masked_attention_qkvpacked_fwd")
def _attention_packed_fwd(inputs, outputs) -> Cost:
    qkv, bias, mask, axis = inputs[:4]
    q_shape = qkv.shape[:3] + qkv.shape[4:]
    return Cost(tensor_bytes(qkv, bias, mask, outputs), _attention_flops(q_shape, mask, axis), 1)


def _backward_launches(axis) -> int:
    return 2 if axis == "time" else 1  # time: the dq (with delta) and dk/dv kernels; variables: one kernel


@register_cost("migt::masked_attention_bwd")
def _attention_bwd(inputs, outputs) -> Cost:
    grad_out, q, k, v, out, lse, mask, axis = inputs[:8]
    flops = BWD_FLOP_FACTOR * _attention_flops(q.shape, mask, axis)
    return Cost(tensor_bytes(grad_out, q, k, v, out, lse, mask, outputs), flops, _backward_launches(axis))


@register_cost("migt::masked_attention_qkvpacked_bwd")
def _attention_packed_bwd(inputs, outputs) -> Cost:
    grad_out, qkv, bias, out, lse, mask, axis = inputs[:7]
    flops = BWD_FLOP_FACTOR * _attention_flops(grad_out.shape, mask, axis)
    launches = _backward_launches(axis)
    partials = 0.0
    if bias is not None:
        # per program two (Dh,) float32 partial rows of the bias gradient,
        # written and read by one host sum; then the (3, H, Dh) gradient
        # (zeros, copy, cast: four small launches in all)
        B, V, T, _, H, Dh = qkv.shape
        programs = B * V * H * -(-T // 64) if axis == "time" else B * H * -(-T // 8)
        partials = 2 * 2 * 4.0 * programs * Dh
        launches += 4
    return Cost(tensor_bytes(grad_out, qkv, bias, out, lse, mask, outputs) + partials, flops, launches)


def _norm_cost(flops_per_element: float):
    """A one-kernel norm: every tensor read or written once; its FLOPs are a
    few per element of the largest tensor (they never bound the time)."""
    def cost(inputs, outputs) -> Cost:
        largest = max((t.numel() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)), default=0)
        return Cost(tensor_bytes(inputs, outputs), flops_per_element * largest, 1)
    return cost


register_cost("migt::revin_normalize")(_norm_cost(6))
register_cost("migt::revin_normalize_backward")(_norm_cost(10))
register_cost("migt::gated_residual_norm")(_norm_cost(12))
register_cost("migt::gated_residual_norm_backward")(_norm_cost(24))


# --- the fused transformer-block ops: each a chain of kernels and GEMMs ------

def _nbytes(numel, dtype_or_tensor) -> float:
    size = dtype_or_tensor.element_size() if isinstance(dtype_or_tensor, torch.Tensor) else \
        torch.empty((), dtype=dtype_or_tensor).element_size()
    return float(numel) * size


def _gemm(part: str, m: int, n: int, k: int, dtype, extra_bytes: float = 0.0) -> Cost:
    """(m, k) @ (k, n) in dtype: 2mnk FLOPs, each operand read and the result written once."""
    return Cost(_nbytes(m * k + k * n + m * n, dtype) + extra_bytes, 2.0 * m * n * k, 1, part, "GEMM")


def _pass(part: str, group: str, nbytes: float, launches: int = 1) -> Cost:
    return Cost(nbytes, 0.0, launches, part, group)


@register_cost("migt::layer_norm_linear")
def _layer_norm_linear(inputs, outputs) -> list:
    x, weight, residual = inputs[0], inputs[4], outputs[1]
    D, D_out = x.shape[-1], weight.shape[0]
    N = x.numel() // D
    h = _nbytes(N * D, weight)
    # reads x; writes h, the statistics and (return_residual) the handed-on copy of x
    return [_pass("norm", "norm", tensor_bytes(x) + h + 8.0 * N + tensor_bytes(residual)),
            _gemm("gemm", N, D_out, D, weight.dtype)]


@register_cost("migt::layer_norm_linear_backward")
def _layer_norm_linear_backward(inputs, outputs) -> list:
    dy, dresidual, x, weight, has_bias = inputs[0], inputs[1], inputs[2], inputs[8], inputs[9]
    D, D_out = x.shape[-1], weight.shape[0]
    N = x.numel() // D
    h = _nbytes(N * D, weight)
    bias_grad = [_pass("bias grad", "reductions", tensor_bytes(dy))] if has_bias else []
    return [_pass("norm recompute", "norm", tensor_bytes(x) + h),
            _gemm("gemm dx", N, D, D_out, weight.dtype), _gemm("gemm dW", D_out, D, N, weight.dtype),
            *bias_grad,
            # reads dh, x, the statistics and the handed-on residual's gradient; writes dx
            _pass("norm backward", "norm", h + 2 * tensor_bytes(x) + 8.0 * N + tensor_bytes(dresidual), launches=2)]


def _gelu_in_gemm(inputs, w1) -> bool:
    """Whether a FFN op ran its GELU in the GEMMs' epilogues (its last
    argument, where kernels/gelu_gemm.py applies to the GEMMs' dtype)."""
    from kernels import gelu_gemm  # imports triton: only a traced fused op gets here

    return bool(inputs[-1]) and gelu_gemm.applies(w1)


@register_cost("migt::residual_feed_forward")
def _feed_forward(inputs, outputs, keep_hidden_at: int = 11) -> list:
    """keep_hidden_at: where the op takes keep_hidden (the gated op: later)."""
    x, branch, w1, keep_hidden = inputs[0], inputs[1], inputs[7], inputs[keep_hidden_at]
    D, C = x.shape[-1], w1.shape[0]
    N = x.numel() // D
    h, hidden, f = _nbytes(N * D, w1), _nbytes(N * C, w1), _nbytes(N * D, w1)
    if _gelu_in_gemm(inputs, w1):
        # one kernel: the GEMM's tiles, then g (and the kept hidden) written from them
        first = [_gemm("gemm fc1 + gelu+dropout", N, C, D, w1.dtype, extra_bytes=hidden if keep_hidden else 0.0)]
    else:
        first = [_gemm("gemm fc1", N, C, D, w1.dtype), _pass("gelu+dropout", "dropout", 2 * hidden)]
    # x_mid is never written: the output pass rebuilds it from x and the branch
    return [_pass("add+dropout+norm", "norm", tensor_bytes(x) + tensor_bytes(branch) + h), *first,
            _gemm("gemm fc2", N, D, C, w1.dtype),
            _pass("dropout+add", "dropout", 2 * tensor_bytes(x) + tensor_bytes(branch) + f)]


@register_cost("migt::residual_feed_forward_backward")
def _feed_forward_backward(inputs, outputs) -> list:
    dout, x, branch, hidden, w1 = inputs[0], inputs[1], inputs[2], inputs[5], inputs[11]
    D, C = x.shape[-1], w1.shape[0]
    N = x.numel() // D
    h, hid = _nbytes(N * D, w1), _nbytes(N * C, w1)
    x_mid = tensor_bytes(x) + tensor_bytes(branch)  # x_mid rebuilt from x and the branch where it is read
    # the dropout grad pass also sums its df for fc2's bias (no pass of its own)
    parts = [_pass("dropout grad + bias grad fc2", "dropout", tensor_bytes(dout) + h),
             _pass("norm recompute", "norm", x_mid + h)]
    recompute = hidden.numel() == 0  # selective recompute of the hidden
    if _gelu_in_gemm(inputs, w1):
        # one kernel: dg's tiles never leave it; reads the hidden (or makes
        # its tiles again from h and W1: a second GEMM, no (N, d_ff) read),
        # writes dhidden and g (for dW2) and per 128 rows a float32 row of
        # db1's partial sums (then one host sum: a second launch)
        fused = _gemm("gemm d hidden + gelu+dropout backward", N, C, D, w1.dtype,
                      extra_bytes=(h + _nbytes(C * D + C, w1) if recompute else hid) + hid + 8.0 * C * -(-N // 128))
        parts.append(dataclasses.replace(fused, flops=fused.flops * (2 if recompute else 1), launches=2))
    else:
        if recompute:
            parts.append(_gemm("gemm fc1 recompute", N, C, D, w1.dtype))
        parts += [_gemm("gemm d hidden", N, C, D, w1.dtype),
                  # reads d hidden and the hidden; writes dhidden and g again (for dW2)
                  _pass("gelu+dropout backward", "dropout", 4 * hid, launches=2)]
    return parts + [
        _gemm("gemm dW2", D, C, N, w1.dtype),
        _gemm("gemm dh", N, D, C, w1.dtype), _gemm("gemm dW1", C, D, N, w1.dtype),
        # reads dh, dout, x, branch; writes dx, dbranch
        _pass("norm backward", "norm", h + x_mid + 2 * tensor_bytes(x) + tensor_bytes(branch), launches=2),
    ]


def _gate_sizes(x, gate_weight) -> tuple[int, int, float]:
    """D, N and the bytes of an (N, D) tensor in the gate's dtype."""
    D = x.shape[-1]
    N = x.numel() // D
    return D, N, _nbytes(N * D, gate_weight)


@register_cost("migt::gated_feed_forward")
def _gated_feed_forward(inputs, outputs) -> list:
    # the FFN's passes (same leading arguments), then the gate and the gated norm
    x, gate_weight = inputs[0], inputs[11]
    D, N, low = _gate_sizes(x, gate_weight)
    # the FFN's norm pass also writes x in the gate's dtype (when it differs)
    x_low = low if gate_weight.dtype != x.dtype else 0.0
    return _feed_forward(inputs, outputs, keep_hidden_at=16) + [
        _pass("x for the gate (in the norm pass)", "norm", x_low, launches=0),
        _gemm("gemm gate", N, D, D, gate_weight.dtype),
        # reads x, the update and the logits; writes out and the statistics
        _pass("gated norm", "norm", 3 * tensor_bytes(x) + low + 8.0 * N),
    ]


@register_cost("migt::gated_feed_forward_backward")
def _gated_feed_forward_backward(inputs, outputs) -> list:
    x, gate_weight = inputs[1], inputs[15]
    D, N, low = _gate_sizes(x, gate_weight)
    ffn = _feed_forward_backward(inputs, outputs)
    # the FFN's norm backward also reads the gated norm's dx (which it adds
    # to) and the gate's dx
    ffn[-1] = _pass("norm backward", "norm", ffn[-1].bytes + tensor_bytes(x) + low, launches=2)
    return [
        # the logits made again (they are not kept)
        _pass("gate cast", "casts", tensor_bytes(x) + low), _gemm("gemm gate", N, D, D, gate_weight.dtype),
        # reads dout, x, the update, the logits and the statistics; writes
        # dx, the update's gradient and the logits'
        _pass("gated norm backward", "norm", 5 * tensor_bytes(x) + 2 * low + 8.0 * N, launches=2),
        _gemm("gemm dW gate", D, D, N, gate_weight.dtype), _gemm("gemm dx gate", N, D, D, gate_weight.dtype),
    ] + ffn


# --- dropout with a seed instead of a stored mask (kernels/seeded_dropout.py) --------

@register_cost("migt::dropout")
def _dropout(inputs, outputs) -> list:
    return [_pass("dropout", "dropout", tensor_bytes(inputs[0]) + tensor_bytes(outputs))]  # read x, write y


# --- the final norm (kernels/norm_linear.py)

@register_cost("migt::layer_norm")
def _layer_norm(inputs, outputs) -> list:
    return [_pass("norm", "norm", tensor_bytes(inputs[0]) + tensor_bytes(outputs))]  # read x; write h, mean, rstd


@register_cost("migt::layer_norm_backward")
def _layer_norm_backward(inputs, outputs) -> list:
    dh, x = inputs[0], inputs[1]
    # reads dh, x and the statistics, writes dx; then the (D,) partial sums are summed
    return [_pass("norm backward", "norm", tensor_bytes(dh, x, inputs[2], inputs[3]) + tensor_bytes(x), launches=3)]


# --- the input embedding in one pass (kernels/embedding.py) -------------------

@register_cost("migt::value_embedding")
def _value_embedding(inputs, outputs) -> list:
    # reads y, the (V, D) parameters and pos (B, T, D); writes x
    return [_pass("embedding", "elementwise", tensor_bytes(inputs[:4]) + tensor_bytes(outputs))]


@register_cost("migt::value_embedding_backward")
def _value_embedding_backward(inputs, outputs) -> list:
    # reads dx, y, weight; writes dy, dpos and the persistent programs'
    # (V, D) partial rows of dweight and dbias (their per-tile updates stay
    # in L2), which the host sums: 132 SMs (H100/H200) x the programs per SM
    dout, y, weight = inputs[0], inputs[1], inputs[2]
    B, V, T = y.shape
    D = weight.shape[1]
    tiles = B * -(-T // 16)  # (sample, 16-step block) tiles at D <= 256
    programs = min(tiles, 132 * BWD_PROGRAMS_PER_SM)
    # two arrays, each zeroed, written and read by the host's sum
    partials = 2 * 3 * _nbytes(programs * V * D, torch.float32)
    return [_pass("embedding backward", "elementwise", tensor_bytes(dout, y, weight) + tensor_bytes(outputs) + partials,
                  launches=5)]


# --- the final norm + attention pooling in one pass (kernels/pooling.py) ------

@register_cost("migt::norm_attention_pool")
def _norm_attention_pool(inputs, outputs) -> list:
    # reads x and the mask; writes the pooled vectors (out dtype and float) and two floats per series
    return [_pass("norm + pool", "norm", tensor_bytes(inputs[:2]) + tensor_bytes(outputs))]


@register_cost("migt::norm_attention_pool_backward")
def _norm_attention_pool_backward(inputs, outputs) -> list:
    x = inputs[1]
    B, V, _, D = x.shape
    # reads dout, x, the mask and the saved per-series values; writes dx and
    # the per-series partial rows of three (D,) gradients, which the host sums
    partials = 2 * 3 * _nbytes(B * V * D, outputs[1])
    return [_pass("norm + pool backward", "norm", tensor_bytes(inputs) + tensor_bytes(x) + partials, launches=5)]
