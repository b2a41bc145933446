"""pinball_loss against a hand computation and a loop, plus shape errors."""
from __future__ import annotations

import pytest
import torch

from migt import pinball_loss


def test_hand_computed():
    q = torch.tensor([[[1.0, 2.0, 3.0]]])  # (1, 1, 3)
    y = torch.tensor([[2.0]])
    # errors y - q = 1, 0, -1 -> 0.1 * 1, 0, (0.9 - 1) * -1 = 0.1 -> mean 0.2 / 3
    loss = pinball_loss(q, y, [0.1, 0.5, 0.9])
    assert loss.shape == ()
    assert loss.item() == pytest.approx(0.2 / 3)


def test_matches_loop_and_tensor_levels():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    total = 0.0
    for b in range(4):
        for h in range(3):
            for j, tau in enumerate(levels):
                e = (y[b, h] - q[b, h, j]).item()
                total += tau * e if e >= 0 else (tau - 1) * e
    expected = total / (4 * 3 * 5)
    assert pinball_loss(q, y, levels).item() == pytest.approx(expected, rel=1e-12)
    assert pinball_loss(q, y, torch.tensor(levels, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)


def test_gradient_pushes_towards_target():
    q = torch.zeros(1, 1, 2, requires_grad=True)
    pinball_loss(q, torch.ones(1, 1), [0.25, 0.75]).backward()
    assert (q.grad < 0).all()  # both quantiles below the target move up


@pytest.mark.parametrize(
    "q_shape, y_shape, levels, match",
    [
        ((2, 3), (2, 3), [0.5], r"quantiles must be a 3-D tensor"),
        ((2, 3, 2), (2, 4), [0.1, 0.9], r"targets must have shape \(B, H\) = \(2, 3\).*got \(2, 4\)"),
        ((2, 3, 2), (2, 3, 1), [0.1, 0.9], r"targets must have shape"),
        ((2, 3, 2), (2, 3), [0.1, 0.5, 0.9], r"Q=2 quantile levels"),
        ((2, 3, 2), (2, 3), [0.0, 0.9], r"strictly inside \(0, 1\)"),
    ],
)
def test_shape_errors(q_shape, y_shape, levels, match):
    with pytest.raises(ValueError, match=match):
        pinball_loss(torch.zeros(q_shape), torch.zeros(y_shape), levels)


def test_levels_are_checked_in_the_quantiles_dtype():
    # 0.999 is 1.0 in bfloat16: a level the loss would use as 1
    q = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        pinball_loss(q, torch.zeros(1, 2), [0.001, 0.5, 0.999])
    pinball_loss(q.float(), torch.zeros(1, 2), [0.001, 0.5, 0.999])


@pytest.mark.parametrize("levels", [[[0.1, 0.5, 0.9]], [0.5]], ids=["nested", "short"])
def test_levels_of_the_wrong_shape_under_compile(levels):
    # torch.compile skips the value check (a host read), not the shape check
    compiled = torch.compile(pinball_loss, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="Q=3 quantile levels"):
        compiled(torch.zeros(1, 2, 3), torch.zeros(1, 2), levels)
