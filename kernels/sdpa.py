"""The "sdpa" attention backend: torch's scaled_dot_product_attention with
the permutes it needs.

Default on CPU and the fallback for shapes the Triton kernel does not take.
Padded steps are zeroed with torch.where first (a copy of q, k, v), so NaN
stored there cannot leak; rows with no valid key are handled explicitly
rather than left to SDPA (which would give NaN for them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q, k, v, mask, axis: str, scale: float | None = None) -> torch.Tensor:
    """Same contract as reference.attention: (B, V, T, H, Dh) in and out."""
    B, V, T, H, Dh = q.shape
    step_ok = mask[:, None, :, None, None]  # [B, 1, T, 1, 1]
    q, k, v = (torch.where(step_ok, t, 0.0) for t in (q, k, v))  # contiguous (B, V, T, H, Dh)
    if axis == "time":
        # (B*V, H, T, Dh) views: B and V are adjacent, so no copy here
        qh, kh, vh = (t.view(B * V, T, H, Dh).transpose(1, 2) for t in (q, k, v))
        # A sample with no valid step attends to all of its (zeroed) keys:
        # finite, and its rows are zeroed below anyway.
        keys = mask | ~mask.any(1, keepdim=True)  # [B, T]
        keys = keys[:, None, :].expand(B, V, T).reshape(B * V, 1, 1, T)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=keys, scale=scale)
        out = out.transpose(1, 2).reshape(B, V, T, H, Dh)
    elif axis == "variable":
        # (B*T, H, V, Dh): B and T are not adjacent, so this is a copy
        qh, kh, vh = (t.permute(0, 2, 3, 1, 4).reshape(B * T, H, V, Dh) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
        out = out.view(B, T, H, V, Dh).permute(0, 3, 1, 2, 4)
    else:
        raise ValueError(f"axis must be 'time' or 'variable', got {axis!r}")
    return torch.where(step_ok, out, 0.0).contiguous()
