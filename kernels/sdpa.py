"""The "sdpa" attention backend: torch's scaled_dot_product_attention with
the permutes it needs.

Default on CPU and the fallback for shapes the Triton kernel does not take.
Padded steps are zeroed with torch.where first (a copy of q, k, v), so NaN
stored there cannot leak; rows with no valid key are handled explicitly
rather than left to SDPA (which would give NaN for them).

The SDPA batch dimension is B*V (along time) or B*T (along variables), which
grows past what SDPA's CUDA kernels take long before memory runs out, so the
rows are split into chunks of at most `rows_per_call` (every row attends
independently, so the result is the same; each chunk is its own forward and
backward call).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# CUDA caps grid dimensions y and z at 65535, and attention kernels put
# batch x heads there (FlexAttention's launch failed with "invalid argument" on
# an H200 at 18432 x 8 heads along variables).
GRID_YZ_LIMIT = 65535
# On an H200 (torch 2.11, bf16) cuDNN's attention backward failed
# (`mha_graph.execute(...) is_good()`) for 6144 rows x 8 heads x T=288 x Dh=32
# and ran for 4608 rows. Both fit the guess of a 2**31-byte (int32) offset into
# a float32 buffer with the sequence padded to 128: 6144 rows need 2.4e9 bytes,
# 4608 need 1.8e9. Half of that range keeps a margin for a guess that cannot
# be checked without the GPU: 2730 rows at the seed shape, so the seed config
# splits from B=114 on (one call at B=64).
CALL_BYTES_LIMIT = 2**30
_SEQ_PAD = 128


def rows_per_call(heads: int, length: int, head_dim: int) -> int:
    """The most (batch) rows of one SDPA call over `length` keys: within the
    grid limit, and its float32 size with the sequence padded to 128 within
    CALL_BYTES_LIMIT."""
    padded = -(-length // _SEQ_PAD) * _SEQ_PAD
    by_bytes = CALL_BYTES_LIMIT // (heads * padded * head_dim * 4)
    return max(1, min(GRID_YZ_LIMIT // heads, by_bytes))


def _sdpa_in_chunks(qh, kh, vh, attn_mask, scale, max_rows):
    """scaled_dot_product_attention over dim 0 in chunks of at most max_rows."""
    n = qh.shape[0]
    if n <= max_rows:
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=scale)
    outs = [
        F.scaled_dot_product_attention(
            qh[s:s + max_rows], kh[s:s + max_rows], vh[s:s + max_rows],
            attn_mask=None if attn_mask is None else attn_mask[s:s + max_rows], scale=scale)
        for s in range(0, n, max_rows)
    ]
    return torch.cat(outs)


def attention(q, k, v, mask, axis: str, scale: float | None = None, *, max_rows: int | None = None) -> torch.Tensor:
    """Same contract as reference.attention: (B, V, T, H, Dh) in and out.
    max_rows: rows per SDPA call (default rows_per_call(...); tests force small ones)."""
    B, V, T, H, Dh = q.shape
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    step_ok = mask[:, None, :, None, None]  # [B, 1, T, 1, 1]
    q, k, v = (torch.where(step_ok, t, 0.0) for t in (q, k, v))  # contiguous (B, V, T, H, Dh)
    if axis == "time":
        # (B*V, H, T, Dh) views: B and V are adjacent, so no copy here
        qh, kh, vh = (t.view(B * V, T, H, Dh).transpose(1, 2) for t in (q, k, v))
        # A sample with no valid step attends to all of its (zeroed) keys:
        # finite, and its rows are zeroed below anyway.
        keys = mask | ~mask.any(1, keepdim=True)  # [B, T]
        keys = keys[:, None, :].expand(B, V, T).reshape(B * V, 1, 1, T)
        out = _sdpa_in_chunks(qh, kh, vh, keys, scale, max_rows or rows_per_call(H, T, Dh))
        out = out.transpose(1, 2).reshape(B, V, T, H, Dh)
    elif axis == "variable":
        # (B*T, H, V, Dh): B and T are not adjacent, so this is a copy
        qh, kh, vh = (t.permute(0, 2, 3, 1, 4).reshape(B * T, H, V, Dh) for t in (q, k, v))
        out = _sdpa_in_chunks(qh, kh, vh, None, scale, max_rows or rows_per_call(H, V, Dh))
        out = out.view(B, T, H, V, Dh).permute(0, 3, 1, 2, 4)
    else:
        raise ValueError(f"axis must be 'time' or 'variable', got {axis!r}")
    return torch.where(step_ok, out, 0.0).contiguous()
