"""bench.live_bytes: the step-peak measurement the memory model is checked
against on the CPU (tests/test_bench_harness.py, tests/test_ffn_row_chunks.py)."""
import torch

import kernels
from bench.live_bytes import LiveBytes


def test_each_storage_counts_once_until_it_dies():
    with LiveBytes() as live:
        a = torch.empty(1000)  # 4000 bytes
        view = a[10:]  # a view: no new storage
        b = a * 2  # 4000 more
        b.add_(1)  # in place: nothing new
        del a, view  # a's storage dies
        c = torch.empty(500)
    assert (live.peak, live.live) == (8000, 6000)
    del b, c
    assert live.live == 0


def test_the_fused_ops_are_seen_inside():
    # the fused FFN's output is (N, D), but its body makes the (N, d_ff)
    # hidden and GELU output: both must reach the peak
    N, D, C = 64, 16, 128
    x, branch = torch.randn(N, D), torch.randn(N, D)
    weights = dict(norm_weight=torch.ones(D), norm_bias=torch.zeros(D), fc1_weight=torch.randn(C, D),
                   fc1_bias=torch.zeros(C), fc2_weight=torch.randn(D, C), fc2_bias=torch.zeros(D))
    with LiveBytes() as live:
        kernels.residual_feed_forward(x, branch, **weights, dropout_p=0.0, backend="triton")
    assert live.peak >= 2 * N * C * 4


def test_views_of_tensors_made_before_are_not_counted():
    # parameters and inputs exist before the block: their views (w.t() in a
    # Linear, x.view in a reshape) are not new memory
    x, w = torch.randn(1000), torch.randn(10, 100)
    with LiveBytes() as live:
        y = x.view(10, 100) * 2  # 4000 new bytes
        w.t()
    assert live.peak == 4000, live.peak
    del y
