"""Attention suite: masked attention along time and along variables.

q, k, v are strided `unbind` views of one (B, V, T, 3, H, Dh) tensor, as in
the model; masks are drawn like real days (full, short sessions, gaps).
Backends:
  triton, sdpa, reference: kernels.masked_attention (sdpa includes the
      masking copies and, along variables, the permute copies it needs);
  triton_packed: kernels.masked_attention_qkvpacked on the fused tensor;
  triton_packed_bias: the same with the QKV bias added and its gradient
      summed inside the kernels (the model's time blocks; its ratio to
      triton_packed is what the bias costs the kernels);
  flex: torch.compile(flex_attention) with a BlockMask built from the key
      padding mask (time: batch B*V, rows and keys of padded steps masked;
      variables: q, k, v permuted to (B*T, H, V, Dh), rows of padded steps
      masked, one call per chunk of rows within CUDA's grid limit), plus
      the permute back to (B, V, T, H, Dh) the model needs.
      The BlockMask is built once per case (its cost is in extra.block_mask_ms).
fwd_bwd runs the forward, then backward of a fixed random gradient into the
fused tensor. TFLOP/s counts valid tokens only: 4 * n_q * n_k * Dh per
(b, v, h) or (b, t, h) forward, 2.5x that for the backward. Ratio: / sdpa.
"""
from __future__ import annotations

import time

import torch

from bench.common import DTYPES, RunSettings, day_masks, flex_attention_module, skip_unless_runnable
from bench.harness import Case, Skip, Timed, Work
from kernels.sdpa import GRID_YZ_LIMIT

# triton_packed: the Triton kernel through masked_attention_qkvpacked (the
# model's entry point), whose backward writes one packed gradient instead of
# autograd stacking dq, dk, dv.
BACKENDS = ("sdpa", "triton", "triton_packed", "triton_packed_bias", "flex", "reference")
HEADS, HEAD_DIM, N_VARIABLES = 8, 32, 24
BWD_FLOP_FACTOR = 2.5


def cases(settings: RunSettings) -> list:
    T = settings.seq_len
    out = []
    for backend in (b for b in BACKENDS if b in settings.backends):
        for batch in settings.batch_sizes:
            for dtype in settings.dtypes:
                for axis in ("time", "variable"):
                    for pass_ in ("fwd", "fwd_bwd"):
                        out.append(Case(
                            suite="attention", op=f"{axis}_{pass_}", backend=backend, dtype=dtype,
                            batch=batch, shape=f"B={batch},V={N_VARIABLES},T={T},H={HEADS},Dh={HEAD_DIM}",
                            baseline="sdpa",
                            setup=_setup(settings, backend, dtype, batch, T, axis, pass_ == "fwd_bwd"),
                        ))
    return out


def valid_flops(mask: torch.Tensor, axis: str, n_vars: int, heads: int, head_dim: int) -> float:
    """Forward FLOPs on valid tokens: 4 * n_q * n_k * Dh per attention row group."""
    n = mask.sum(1).double()  # [B] valid steps per sample
    if axis == "time":
        return float(4 * head_dim * heads * n_vars * (n * n).sum())  # per (b, v, h): n x n
    return float(4 * head_dim * heads * n_vars * n_vars * n.sum())  # per valid (b, t, h): V x V


def _flex_fn(q, k, v, mask, axis, device):
    """A callable running compiled flex_attention in the model's layout."""
    flex = flex_attention_module()
    B, V, T, H, Dh = q.shape
    compiled = torch.compile(flex.flex_attention, dynamic=False)
    if axis == "time":
        def mask_mod(b, h, q_idx, kv_idx):
            sample = b // V
            return mask[sample, q_idx] & mask[sample, kv_idx]

        block_mask = flex.create_block_mask(mask_mod, B * V, None, T, T, device=device.type)

        def fn():
            # (B*V, H, T, Dh): B and V are adjacent, so these are views
            qh, kh, vh = (t.permute(0, 1, 3, 2, 4).reshape(B * V, H, T, Dh) for t in (q, k, v))
            out = compiled(qh, kh, vh, block_mask=block_mask)  # [B*V, H, T, Dh]
            return out.view(B, V, H, T, Dh).permute(0, 1, 3, 2, 4).contiguous()
    else:
        # B*T rows x H heads pass CUDA's 65535 grid limit from B=28 at the seed
        # shape (the H200 run: "CUDA driver error: invalid argument"), so one
        # launch per chunk of rows, each with its own BlockMask.
        rows = mask.reshape(B * T)
        step = GRID_YZ_LIMIT // H
        chunks = [(start, _variable_block_mask(flex, rows[start:start + step], V, device))
                  for start in range(0, B * T, step)]

        def attend():
            # (B*T, H, V, Dh): a copy, B and T are not adjacent
            qh, kh, vh = (t.permute(0, 2, 3, 1, 4).reshape(B * T, H, V, Dh) for t in (q, k, v))
            out = torch.cat([compiled(qh[s:s + step], kh[s:s + step], vh[s:s + step], block_mask=bm)
                             for s, bm in chunks])  # [B*T, H, V, Dh]
            return out.view(B, T, H, V, Dh).permute(0, 3, 1, 2, 4).contiguous()

        def fn():
            # A launch CUDA refuses is not sticky (later cases run): if the
            # chunks were not enough, say why in a skipped row.
            try:
                return attend()
            except RuntimeError as err:
                if "invalid argument" not in str(err):
                    raise
                raise Skip(f"FlexAttention along variables: CUDA refused the launch ({str(err)[:80]}) "
                           f"for {B * T} rows x {H} heads in chunks of {step} rows") from None
    return fn


def _variable_block_mask(flex, rows, n_vars, device):
    """BlockMask over (len(rows), H, V, V): rows of padded steps masked."""
    def mask_mod(b, h, q_idx, kv_idx):
        return rows[b] & (kv_idx >= 0)

    return flex.create_block_mask(mask_mod, rows.shape[0], None, n_vars, n_vars, device=device.type)


def _setup(settings: RunSettings, backend, dtype, batch, T, axis, backward):
    def setup() -> Timed:
        import kernels

        skip_unless_runnable(settings, backend)
        device = settings.device
        if backend == "flex" and backward and device.type == "cpu":
            raise Skip(f"FlexAttention has no CPU backward in torch {torch.__version__}")
        g = torch.Generator(device=device).manual_seed(0)
        qkv = torch.randn(batch, N_VARIABLES, T, 3, HEADS, HEAD_DIM, generator=g, device=device,
                          dtype=DTYPES[dtype], requires_grad=backward)
        q, k, v = qkv.unbind(3)  # 3 x [B, V, T, H, Dh], strided views
        mask = day_masks(batch, T, N_VARIABLES, device)
        extra = {}
        if backend == "flex":
            start = time.perf_counter()
            attend = _flex_fn(q, k, v, mask, axis, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            extra["block_mask_ms"] = round((time.perf_counter() - start) * 1e3, 2)
        elif backend == "triton_packed":
            def attend():
                return kernels.masked_attention_qkvpacked(qkv, mask, axis, backend="triton")
        elif backend == "triton_packed_bias":
            bias = torch.randn(3 * HEADS * HEAD_DIM, generator=g, device=device, dtype=qkv.dtype,
                               requires_grad=backward)

            def attend():
                return kernels.masked_attention_qkvpacked(qkv, mask, axis, bias=bias, backend="triton")
        else:
            def attend():
                return kernels.masked_attention(q, k, v, mask, axis, backend=backend)

        flops = valid_flops(mask, axis, N_VARIABLES, HEADS, HEAD_DIM)
        if not backward:
            def fn():
                with torch.no_grad():
                    attend()
        else:
            flops *= 1 + BWD_FLOP_FACTOR
            grad_out = torch.randn(qkv.shape[:3] + qkv.shape[4:], generator=g, device=device, dtype=qkv.dtype)

            def fn():
                attend().backward(grad_out)
                qkv.grad = None
                if backend == "triton_packed_bias":
                    bias.grad = None
        return Timed(fn, Work(flops, "TFLOP/s"), lambda: extra)

    return setup
