"""The Linear backward the fused ops share (plain PyTorch, cuBLAS)."""
from __future__ import annotations


def linear_backward(dy, inp, weight, acc, bias_grad: bool = True):
    """Gradients of y = inp @ weight.T + bias for 2-D dy and inp: (dinp,
    dweight, dbias), dbias summed in ``acc`` (None without bias_grad)."""
    return dy @ weight, dy.t() @ inp, (dy.sum(0, dtype=acc) if bias_grad else None)
