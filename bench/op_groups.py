"""Which part of a training step an op or kernel belongs to, by its name.

One classification for the profile (CUDA kernel names such as
`vectorized_layer_norm_kernel<...>` or `nvjet_sm90_...`, CPU op names such as
`aten::addmm`) and the roofline (dispatch names such as `aten.addmm.default`,
`migt.masked_attention_fwd.default`), so their groups compare one to one.
The groups follow the H200 profile in the shared README.
"""
from __future__ import annotations

GROUPS = ("attention", "GEMM", "norm", "dropout", "elementwise", "casts", "reductions", "optimizer", "other")

# (group, substrings of the lower-cased name), first match wins: the order
# settles names that fit two (a fused AdamW kernel is elementwise too, an
# attention backward has "bwd" like a norm's).
_RULES = (
    ("optimizer", ("adam", "foreach", "multi_tensor", "lerp", "optimizer")),
    ("attention", ("attention", "sdpa", "flash", "fmha", "_time_fwd", "_time_bwd", "_var_kernel",
                   "compute_dot_do_o", "convert_dq", "softmax")),
    ("dropout", ("dropout", "masked_scale", "bernoulli", "philox")),
    ("norm", ("layer_norm", "layernorm", "gammabeta", "gated_norm", "gated_residual", "revin", "residual_norm",
              "norm_linear", "batch_norm")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "cublas", "xmma", "matmul", "aten::mm", "aten.mm", "addmm", "bmm",
              "aten::linear", "aten.linear", "feed_forward")),
    # not "bfloat16" or "cast": template arguments (c10::BFloat16, gpu_kernel_impl_nocast) hold them
    ("casts", ("copy", "convert", "clone", "contiguous", "memcpy")),
    ("reductions", ("reduce", "sum", "mean", "aten::norm", "aten.norm", "amax", "cumsum", "argmax", "var")),
    ("elementwise", ("elementwise", "add", "mul", "div", "sub", "gelu", "where", "sigmoid", "softplus", "exp",
                     "sqrt", "fill", "zero", "neg", "pow", "tanh", "sin", "cos", "clamp", "abs", "threshold",
                     "maximum", "minimum", "masked", "memset")),
)


def group_of(name: str) -> str:
    """The group of an op or kernel name (one of GROUPS)."""
    lowered = name.lower()
    for group, needles in _RULES:
        if any(n in lowered for n in needles):
            return group
    return "other"
