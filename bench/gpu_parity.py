"""Parity of every Triton kernel against the float64 reference, after compilation.

    python3 -m bench.gpu_parity                 # CUDA, full model shapes (bench/gpu_check.sh)
    TRITON_INTERPRET=1 python -m bench.gpu_parity --device cpu --small --dtypes fp32 fp16

Each check draws fresh random inputs, stores NaN at every padded step (it
must affect nothing), includes one sample with no valid step, runs the
forward and the backward, and compares the output and every input gradient
with kernels' reference run in float64 by the relative error
||out - ref|| / ||ref|| (NaN never passes). A Triton kernel missing from the
build is reported as "missing". Exit status: 1 on any mismatch, 2 when
nothing failed but a kernel is missing, 0 when all pass.
`--backend` checks another backend the same way (the tests use it on CPU).
The fused transformer-block ops are checked as a block chains them (the
norm + QKV GEMM handing x on to the FFN half, or in a variable block to the
FFN half + gate + gated norm), with dropout on, and the fused model's ops
around the blocks (the input embedding, the final norm) together.
A triton run also checks the sdpa fallback with its SDPA calls split into
chunks of rows (kernels/sdpa.py), which only a GPU shows runs in cuDNN.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

# Relative-error bounds per dtype: float32 dots may run as tf32 (~3e-4),
# half precision operands land between 1e-3 and 1e-2.
ATTENTION_TOL = {"fp32": 2e-3, "fp16": 1e-2, "bf16": 4e-2}
# float64: the norms' fp64 path, where the eps split into two float32 halves
# is exercised (a real launch rounds Python floats to float32).
NORM_TOL = {"fp64": 1e-10, "fp32": 1e-4, "fp16": 4e-3, "bf16": 2e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_DTYPES = {**DTYPES, "fp64": torch.float64}
FULL = dict(B=64, V=24, T=288, H=8, Dh=32, D=256)
SMALL = dict(B=3, V=5, T=37, H=2, Dh=16, D=48)


@dataclasses.dataclass
class Check:
    name: str
    status: str  # "ok", "MISMATCH", "missing"
    worst: float = 0.0  # largest relative error over the compared tensors
    detail: str = ""


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape or not torch.isfinite(actual).all():
        return float("inf")
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def _masks(B: int, T: int, device) -> torch.Tensor:
    """Full days, short sessions, gaps, and a last sample with no valid step."""
    # drawn from the global generator, which main() seeds (and prints)
    mask = torch.ones(B, T, dtype=torch.bool)
    for b in range(B):
        if b % 3 == 1:
            mask[b, int(torch.randint(1, T, (1,))):] = False
        elif b % 3 == 2:
            mask[b] = torch.rand(T) > 0.2
    mask[-1] = False
    return mask.to(device)


def _poison(t: torch.Tensor, step_ok: torch.Tensor) -> torch.Tensor:
    return torch.where(step_ok, t, torch.full_like(t, float("nan")))


def _compare(name: str, pairs: dict, tol: float) -> Check:
    errors = {k: rel_err(a, b) for k, (a, b) in pairs.items()}
    worst_key = max(errors, key=errors.get)
    worst = errors[worst_key]
    status = "ok" if worst <= tol else "MISMATCH"
    detail = ", ".join(f"{k} {v:.2e}" for k, v in errors.items()) + f" (tol {tol:.0e})"
    return Check(name, status, worst, detail)


def _missing(op: str, backend: str, device) -> str | None:
    if backend != "triton":
        return None
    from bench.common import triton_skip_reason

    return triton_skip_reason(torch.device(device), [op])


def check_attention(device, dtype: str, axis: str, s: dict, backend: str = "triton", packed: bool = False) -> Check:
    """packed: through masked_attention_qkvpacked (its own Triton backward),
    with a QKV bias added and its gradient summed in the kernels."""
    import kernels
    from kernels import reference

    name = (f"attention{'_qkvpacked + bias' if packed else ''} {axis} {dtype} "
            f"B={s['B']} V={s['V']} T={s['T']} H={s['H']} Dh={s['Dh']}")
    reason = _missing("masked_attention", backend, device)
    if reason:
        return Check(name, "missing", detail=reason)
    B, V, T, H, Dh = s["B"], s["V"], s["T"], s["H"], s["Dh"]
    mask = _masks(B, T, device)
    step_ok = mask[:, None, :, None, None, None]  # [B, 1, T, 1, 1, 1] over (B, V, T, 3, H, Dh)
    base = _poison(torch.randn(B, V, T, 3, H, Dh, device=device, dtype=torch.float64), step_ok)
    qkv = base.to(DTYPES[dtype]).requires_grad_()
    qkv64 = qkv.detach().double().requires_grad_()
    grad = torch.randn(B, V, T, H, Dh, device=device, dtype=torch.float64)
    bias = torch.randn(3 * H * Dh, device=device, dtype=torch.float64).to(DTYPES[dtype]).requires_grad_()
    bias64 = bias.detach().double().requires_grad_()  # the same rounded values
    if packed:
        out = kernels.masked_attention_qkvpacked(qkv, mask, axis, bias=bias, backend=backend)
        ref = reference.attention(*(qkv64 + bias64.view(3, H, Dh)).unbind(3), mask, axis)
    else:
        out = kernels.masked_attention(*qkv.unbind(3), mask, axis, backend=backend)
        ref = reference.attention(*qkv64.unbind(3), mask, axis)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    tol = ATTENTION_TOL[dtype]
    pairs = {"out": (out, ref), "dqkv": (qkv.grad, qkv64.grad)}
    if packed:  # q's and v's parts (k's is 0, which a relative error cannot show)
        dbias, ref_dbias = bias.grad.view(3, H, Dh), bias64.grad.view(3, H, Dh)
        pairs.update(dbias_q=(dbias[0], ref_dbias[0]), dbias_v=(dbias[2], ref_dbias[2]))
    return _compare(name, pairs, tol)


def check_revin(device, s: dict, backend: str = "triton", dtype: str = "fp32") -> Check:
    import kernels
    from kernels import reference

    name = f"revin_normalize {dtype} B={s['B']} T={s['T']} V={s['V']}"
    reason = _missing("revin_normalize", backend, device)
    if reason:
        return Check(name, "missing", detail=reason)
    B, T, V = s["B"], s["T"], s["V"]
    mask = _masks(B, T, device)
    # realistic scales: returns ~1e-3, prices ~1e3
    scale = torch.logspace(-3, 3, V, device=device, dtype=torch.float64)
    x = _poison(torch.randn(B, T, V, device=device, dtype=torch.float64) * scale + scale, mask[:, :, None])
    weight = 1 + 0.1 * torch.randn(V, device=device, dtype=torch.float64)
    bias = 0.1 * torch.randn(V, device=device, dtype=torch.float64)
    grads_y = torch.randn(B, V, T, device=device, dtype=torch.float64)
    results = {}
    for label, dt, impl in (("triton", NORM_DTYPES[dtype], "kernel"), ("ref", torch.float64, "reference")):
        xs, w, b = (t.to(dt).requires_grad_() for t in (x, weight, bias))
        if impl == "kernel":
            y, mean, std = kernels.revin_normalize(xs, mask, w, b, backend=backend)
        else:
            y, mean, std = reference.revin_normalize(xs, mask, w, b)
        (y * grads_y.to(dt)).sum().backward()
        # dx at padded steps must be 0 (never NaN): compare x's gradient everywhere
        results[label] = (y, mean, std, xs.grad, w.grad, b.grad)
    names = ("y", "mean", "std", "dx", "dweight", "dbias")
    return _compare(name, {n: (a, r) for n, a, r in zip(names, results["triton"], results["ref"])}, NORM_TOL[dtype])


def check_gated(device, dtype: str, s: dict, backend: str = "triton") -> Check:
    import kernels
    from kernels import reference

    name = f"gated_residual_norm {dtype} B={s['B']} V={s['V']} T={s['T']} D={s['D']}"
    reason = _missing("gated_residual_norm", backend, device)
    if reason:
        return Check(name, "missing", detail=reason)
    shape = (s["B"], s["V"], s["T"], s["D"])
    inputs = [torch.randn(shape, device=device, dtype=torch.float64) for _ in range(3)]
    inputs += [1 + 0.1 * torch.randn(s["D"], device=device, dtype=torch.float64),
               0.1 * torch.randn(s["D"], device=device, dtype=torch.float64)]
    low = [t.to(NORM_DTYPES[dtype]).requires_grad_() for t in inputs]
    # the reference sees the same rounded values, in float64
    high = [t.detach().double().requires_grad_() for t in low]
    grad = torch.randn(shape, device=device, dtype=torch.float64)
    out = kernels.gated_residual_norm(*low, backend=backend)
    out.backward(grad.to(out.dtype))
    ref = reference.gated_residual_norm(*high)
    ref.backward(grad)
    names = ("x", "update", "gate", "weight", "bias")
    pairs = {"out": (out, ref), **{f"d{n}": (a.grad, r.grad) for n, a, r in zip(names, low, high)}}
    return _compare(name, pairs, NORM_TOL[dtype])


# The fused block ops run their GEMMs in the weights' dtype (cuBLAS, tf32
# possible in float32), their norms and elementwise work in float32.
FUSED_TOL = {"fp64": 1e-10, "fp32": 2e-3, "fp16": 1e-2, "bf16": 4e-2}


def check_fused_block(device, dtype: str, s: dict, backend: str = "triton", p: float = 0.1,
                      gated: bool = False, gelu_in_gemm: bool = False) -> Check:
    """layer_norm_linear (the QKV GEMM, handing x on) feeding
    residual_feed_forward (add + dropout + norm, FFN with GELU + dropout,
    add), as a temporal block runs them, or with `gated` gated_feed_forward
    (the same FFN, then the gate Linear of x and the gated norm), as a
    variable block does: a float32 residual stream (float64 for fp64),
    weights and GEMMs in `dtype`, dropout p at every site with one set of
    seeds for kernel and reference. gelu_in_gemm: the FFN's GELU in the
    Triton GEMMs' epilogues (kernels/gelu_gemm.py)."""
    import kernels

    kind = ("fused variable block" if gated else "fused block") + (", GELU in GEMM" if gelu_in_gemm else "")
    name = f"{kind} {dtype} residual {'fp64' if dtype == 'fp64' else 'fp32'} p={p} B={s['B']} V={s['V']} T={s['T']} D={s['D']}"
    reason = _missing("residual_feed_forward", backend, device)
    if reason:
        return Check(name, "missing", detail=reason)
    D, F = s["D"], 4 * s["D"]
    shape = (s["B"], s["V"], s["T"], D)
    g = dict(device=device, dtype=torch.float64)
    base = {"x": torch.randn(shape, **g), "branch": torch.randn(shape, **g),
            "norm_weight": 1 + 0.1 * torch.randn(D, **g), "norm_bias": 0.1 * torch.randn(D, **g),
            "qkv_weight": torch.randn(3 * D, D, **g) / D ** 0.5, "qkv_bias": 0.1 * torch.randn(3 * D, **g),
            "fc1_weight": torch.randn(F, D, **g) / D ** 0.5, "fc1_bias": 0.1 * torch.randn(F, **g),
            "fc2_weight": torch.randn(D, F, **g) / F ** 0.5, "fc2_bias": 0.1 * torch.randn(D, **g)}
    if gated:
        base.update(gate_weight=torch.randn(D, D, **g) / D ** 0.5, gate_bias=0.1 * torch.randn(D, **g),
                    out_norm_weight=1 + 0.1 * torch.randn(D, **g), out_norm_bias=0.1 * torch.randn(D, **g))
    gemm = ("branch", "qkv_weight", "qkv_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
            "gate_weight", "gate_bias")
    low_dtype = NORM_DTYPES[dtype]
    stream = torch.float64 if dtype == "fp64" else torch.float32
    low = {k: v.to(low_dtype if k in gemm else stream).requires_grad_() for k, v in base.items()}
    high = {k: v.detach().double().requires_grad_() for k, v in low.items()}  # the same rounded values
    seeds = kernels.dropout_seeds(device)
    grad_out = torch.randn(shape, **g)
    grad_qkv = torch.randn(*shape[:-1], 3 * D, **g)
    results = {}
    for label, t, be in (("kernel", low, backend), ("ref", high, "reference")):
        # as a block chains them: the norm + QKV GEMM hands x on to the FFN half
        qkv, x = kernels.layer_norm_linear(t["x"], t["norm_weight"], t["norm_bias"], t["qkv_weight"],
                                           t["qkv_bias"], return_residual=True, backend=be)
        ffn = (x, t["branch"], t["norm_weight"], t["norm_bias"], t["fc1_weight"], t["fc1_bias"],
               t["fc2_weight"], t["fc2_bias"])
        options = {"gelu_in_gemm": gelu_in_gemm} if be == "triton" else {}
        if gated:
            out = kernels.gated_feed_forward(*ffn, t["gate_weight"], t["gate_bias"], t["out_norm_weight"],
                                             t["out_norm_bias"], dropout_p=p, seeds=seeds, backend=be, **options)
        else:
            out = kernels.residual_feed_forward(*ffn, dropout_p=p, seeds=seeds, backend=be, **options)
        torch.autograd.backward([out, qkv], [grad_out.to(out.dtype), grad_qkv.to(qkv.dtype)])
        results[label] = {"out": out, "qkv": qkv, **{f"d{k}": v.grad for k, v in t.items()}}
    return _compare(name, {k: (results["kernel"][k], results["ref"][k]) for k in results["ref"]}, FUSED_TOL[dtype])


def check_model_edges(device, dtype: str, s: dict, backend: str = "triton", p: float = 0.1) -> Check:
    """The fused model's ops around the blocks, at full shapes: the input
    embedding (value_embedding, dropout p, the stream written in `dtype`),
    the final norm + attention pooling (norm_attention_pool, padded steps
    NaN, written in `dtype`) and the norm alone (layer_norm); float64 for
    fp64. (The variable blocks' gate runs inside gated_feed_forward: check_fused_block.)"""
    import kernels

    name = f"embedding + norm + pooling {dtype} p={p} B={s['B']} V={s['V']} T={s['T']} D={s['D']}"
    reason = _missing("value_embedding", backend, device)
    if reason:
        return Check(name, "missing", detail=reason)
    B, V, T, D = s["B"], s["V"], s["T"], s["D"]
    g = dict(device=device, dtype=torch.float64)
    low_dtype = NORM_DTYPES[dtype]
    stream = torch.float64 if dtype == "fp64" else torch.float32
    base = {"y": torch.randn(B, V, T, **g), "emb_weight": torch.randn(V, D, **g), "emb_bias": torch.randn(V, D, **g),
            "pos": torch.randn(B, T, D, **g), "x": 3 + torch.randn(B, V, T, D, **g),
            "norm_weight": 1 + 0.1 * torch.randn(D, **g), "norm_bias": 0.1 * torch.randn(D, **g),
            "key_weight": torch.randn(D, D, **g), "key_bias": torch.randn(D, **g), "query": torch.randn(D, **g)}
    mask = _masks(B, T, device)
    base["x_pool"] = _poison(3 + torch.randn(B, V, T, D, **g), mask[:, None, :, None])
    low = {k: v.to(stream).requires_grad_() for k, v in base.items()}
    high = {k: v.detach().double().requires_grad_() for k, v in low.items()}  # the same rounded values
    seeds = kernels.dropout_seeds(device, 1)
    upstream = [torch.randn(B, V, T, D, **g) for _ in range(2)] + [torch.randn(B, V, D, **g)]
    half = low_dtype in (torch.bfloat16, torch.float16)
    results = {}
    for label, t, be in (("kernel", low, backend), ("ref", high, "reference")):
        kernel = label == "kernel"
        emb = kernels.value_embedding(t["y"], t["emb_weight"], t["emb_bias"], t["pos"], p, seeds=seeds,
                                      out_dtype=low_dtype if kernel else torch.float64, backend=be)
        # under autocast the norm writes autocast's dtype, as in the model
        with torch.autocast(torch.device(device).type, dtype=low_dtype, enabled=kernel and half):
            h = kernels.layer_norm(t["x"], t["norm_weight"], t["norm_bias"], backend=be)
            pooled = kernels.norm_attention_pool(t["x_pool"], mask, t["norm_weight"], t["norm_bias"],
                                                 t["key_weight"], t["key_bias"], t["query"], backend=be)
        outs = (emb, h, pooled)
        torch.autograd.backward(outs, [u.to(o.dtype) for u, o in zip(upstream, outs)])
        # key_bias only shifts every score alike: its gradient is rounding noise around 0
        results[label] = {"embedding": emb, "norm": h, "pooled": pooled,
                          **{f"d{k}": v.grad for k, v in t.items() if k != "key_bias"}}
    return _compare(name, {k: (results["kernel"][k], results["ref"][k]) for k in results["ref"]}, FUSED_TOL[dtype])


def check_sdpa_chunks(device, dtype: str, axis: str, s: dict, chunks: int = 4) -> Check:
    """The sdpa backend with its SDPA calls split into about `chunks` pieces of
    rows (kernels/sdpa.py: what keeps cuDNN within the sizes it takes), against
    the float64 reference like any other attention check."""
    from kernels import sdpa

    rows, length = (s["B"] * s["V"], s["T"]) if axis == "time" else (s["B"] * s["T"], s["V"])
    padded = -(-length // 128) * 128
    limit = sdpa.CALL_BYTES_LIMIT
    sdpa.CALL_BYTES_LIMIT = max(1, -(-rows // chunks)) * s["H"] * padded * s["Dh"] * 4
    try:
        check = check_attention(device, dtype, axis, s, backend="sdpa")
    finally:
        sdpa.CALL_BYTES_LIMIT = limit
    return dataclasses.replace(check, name=check.name.replace("attention", f"sdpa in {chunks} chunks", 1))


def check_ffn_chunks(device, dtype: str, s: dict, chunks: int = 3, gated: bool = False) -> Check:
    """The fused block (with `gated`, the variable block) with its FFN run in
    about `chunks` chunks of rows (kernels/chunking.py, one chunk at B=64 by
    default, seven at B=512): the dropout bits count rows across chunks, and
    the weight gradients are summed over them."""
    from kernels import chunking

    rows = s["B"] * s["V"] * s["T"]
    itemsize = torch.finfo(NORM_DTYPES[dtype]).bits // 8
    budget = chunking.HIDDEN_CHUNK_BYTES
    # a chunk a row tile more than an even split: the last chunk is ragged
    chunk_rows = -(-rows // chunks) + chunking.CHUNK_ROW_MULTIPLE
    chunking.HIDDEN_CHUNK_BYTES = chunk_rows * 4 * s["D"] * itemsize
    try:
        made = len(chunking.row_chunks(rows, 4 * s["D"], itemsize))
        check = check_fused_block(device, dtype, s, gated=gated)
    finally:
        chunking.HIDDEN_CHUNK_BYTES = budget
    return dataclasses.replace(check, name=check.name.replace("block", f"block, FFN in {made} chunks", 1))


def check_gelu_16bit(device, dtype: str, s: dict) -> Check:
    """The FFN's 16-bit GELU + dropout passes as compiled: the forward's g
    and the backward's rewrite of it bit for bit (the backward's g feeds
    fc2's weight gradient; an FMA contracted differently in one kernel would
    break it), and both g and dhidden against float64 within the dtype's
    rounding (kernels/gelu.py's tail-polynomial CDF, not erf)."""
    import math

    from kernels import dropout_seeds, feed_forward

    name = f"GELU + dropout passes {dtype} (N={s['B'] * s['V'] * s['T']}, C={4 * s['D']})"
    missing = _missing("residual_feed_forward", "triton", device)
    if missing is not None:
        return Check(name, "missing", detail=missing)
    N, C, p = s["B"] * s["V"] * s["T"], 4 * s["D"], 0.1
    hidden = (torch.randn(N, C, device=device) * 3).to(DTYPES[dtype])
    dg = torch.randn(N, C, device=device).to(DTYPES[dtype])
    seeds = dropout_seeds(device)
    g = feed_forward.gelu_dropout_fwd(hidden, seeds, p)
    dhidden, _, g_again = feed_forward.gelu_dropout_bwd(dg.clone(), hidden, seeds, p)
    if not torch.equal(g, g_again):
        differ = int((g != g_again).sum())
        return Check(name, "MISMATCH", 1.0, f"the backward's g differs from the forward's in {differ} elements")
    f = hidden.double()
    cdf = 0.5 * torch.special.erfc(-f / math.sqrt(2.0))
    keep = g != 0  # kept elements (a kept g is 0 only where gelu is, which the reference shares)
    g_ref = torch.where(keep, f * cdf / (1 - p), 0.0)
    slope = cdf + f * torch.exp(-0.5 * f * f) / math.sqrt(2.0 * math.pi)
    dh_ref = torch.where(keep, dg.double() * slope / (1 - p), 0.0)
    return _compare(name, {"g": (g, g_ref), "dhidden": (dhidden, dh_ref)}, NORM_TOL[dtype])


def check_gelu_gemm(device, dtype: str, s: dict) -> Check:
    """kernels/gelu_gemm.py as compiled: the forward GEMM's g equal to the
    separate pass's g of the hidden it wrote; the backward GEMM's g equal to
    the forward's (it feeds fc2's weight gradient; torch.equal: the sign of
    a zero may differ), and with the hidden recomputed in the kernel
    (selective recompute) everything equal to the run that read it: the
    recompute must round the same bits; dhidden and db1 against float64
    within the dtype's rounding."""
    from kernels import dropout_seeds, feed_forward, gelu_gemm

    N, D, C, p = s["B"] * s["V"] * s["T"], s["D"], 4 * s["D"], 0.1
    name = f"GELU in the GEMMs' epilogues {dtype} (N={N}, D={D}, C={C})"
    missing = _missing("residual_feed_forward", "triton", device)
    if missing is not None:
        return Check(name, "missing", detail=missing)
    low = DTYPES[dtype]
    h, df = torch.randn(N, D, device=device).to(low), torch.randn(N, D, device=device).to(low)
    w1, b1 = (torch.randn(C, D, device=device) / D ** 0.5).to(low), (0.1 * torch.randn(C, device=device)).to(low)
    w2 = (torch.randn(D, C, device=device) / C ** 0.5).to(low)
    seeds, site = dropout_seeds(device), feed_forward.HIDDEN_SITE
    hidden = torch.empty(N, C, device=device, dtype=low)
    g = gelu_gemm.fc1_gelu(h, w1, b1, seeds, p, site, hidden=hidden)
    dhidden, db, g_again = gelu_gemm.dhidden_gelu(df, w2, hidden, seeds, p, site)
    re_dhidden, re_db, re_g = gelu_gemm.dhidden_gelu(df, w2, None, seeds, p, site, recompute=(h, w1, b1))
    for label, a, b in (("the pass's g", feed_forward.gelu_dropout_fwd(hidden, seeds, p), g),
                        ("the backward's g", g_again, g), ("the recomputing backward's g", re_g, g_again),
                        ("the recomputing backward's dhidden", re_dhidden, dhidden),
                        ("the recomputing backward's db1", re_db, db)):
        if not torch.equal(a, b):
            return Check(name, "MISMATCH", 1.0, f"{label} differs in {int((a != b).sum())} elements")
    dh_ref, db_ref, _ = feed_forward.gelu_dropout_bwd(df.double() @ w2.double(), hidden.double(), seeds, p)
    hidden_ref = h.double() @ w1.double().t() + b1.double()
    return _compare(name, {"hidden": (hidden, hidden_ref), "dhidden": (dhidden, dh_ref), "db1": (db, db_ref)},
                    NORM_TOL[dtype])


def run_checks(device, shapes: dict, dtypes, backend: str = "triton") -> list:
    checks = []
    if backend == "triton":  # the fallback's chunked calls, beside the kernels
        checks += [check_sdpa_chunks(device, dtypes[0], axis, shapes) for axis in ("time", "variable")]
    for dtype in dtypes:
        for axis in ("time", "variable"):
            for packed in (False, True):
                checks.append(check_attention(device, dtype, axis, shapes, backend, packed))
    for dtype in ("fp32", "fp64"):
        checks.append(check_revin(device, shapes, backend, dtype))
    for dtype in (*dtypes, "fp64"):
        checks.append(check_gated(device, dtype, shapes, backend))
    for dtype in (*dtypes, "fp64"):
        for gated in (False, True):
            checks.append(check_fused_block(device, dtype, shapes, backend, gated=gated))
    if backend == "triton":
        halves = [d for d in dtypes if d in ("bf16", "fp16")]
        checks += [check_gelu_16bit(device, dtype, shapes) for dtype in halves]
        checks += [check_gelu_gemm(device, dtype, shapes) for dtype in halves]
        checks += [check_fused_block(device, dtype, shapes, gated=gated, gelu_in_gemm=True)
                   for dtype in halves for gated in (False, True)]
    if backend == "triton":  # in half precision if run at all: the chunks' float32 weight GEMMs
        half = next((d for d in dtypes if d in ("bf16", "fp16")), dtypes[0])
        checks += [check_ffn_chunks(device, half, shapes, gated=gated) for gated in (False, True)]
    for dtype in (*dtypes, "fp64"):
        checks.append(check_model_edges(device, dtype, shapes, backend))
    return checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help=f"small odd shapes {SMALL} instead of {FULL}")
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["bf16", "fp16", "fp32"])
    p.add_argument("--backend", default="triton", choices=("triton", "sdpa", "reference"))
    p.add_argument("--seed", type=int, default=None, help="input seed (default: a fresh one, printed)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time_ns() % 2**31)  # fresh inputs every run
    torch.manual_seed(seed)
    print(f"parity inputs: seed {seed} (rerun a failure with --seed {seed})")
    shapes = SMALL if args.small else FULL
    checks = []
    for check in run_checks(args.device, shapes, args.dtypes, args.backend):
        checks.append(check)
        print(f"{check.status:<9} {check.name:<60} worst {check.worst:.2e}  {check.detail}", flush=True)
    failed = [c for c in checks if c.status == "MISMATCH"]
    missing = [c for c in checks if c.status == "missing"]
    if failed:
        print(f"\n!!! PARITY FAILED: {len(failed)} of {len(checks)} checks mismatch the float64 reference !!!")
        return 1
    if missing:
        print(f"\nparity: no mismatch, but {len(missing)} checks have no Triton kernel to check")
        return 2
    print(f"\nparity: all {len(checks)} checks pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
