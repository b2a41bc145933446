"""`python -m bench.profile` on the CPU (tiny config) and the grouping of
kernel and op names it shares with bench/roofline.py."""
from __future__ import annotations

import json

import pytest

from bench import profile
from bench.op_groups import GROUPS, group_of
from bench_tiny import tiny_config_path

# Names from the H200 profile (shared README) and the CPU / dispatch forms.
NAMES = [
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float", "norm"),
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernelTemplate<float, float, 32u>", "norm"),
    ("_gated_norm_bwd_kernel", "norm"),
    ("_time_bwd_dkdv_kernel", "attention"),
    ("_var_kernel", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "attention"),
    ("void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, unsigned int>", "dropout"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::(anonymous namespace)::masked_scale_kernel<bool, c10::BFloat16>", "dropout"),
    ("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_splitK_NTN", "GEMM"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_256x128_64x3_nt_align8>", "GEMM"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)", "casts"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)", "casts"),
    ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::BFloat16, at::native::func_wrapper_t<c10::BFloat16>", "reductions"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul> >", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::GeluBackwardCUDAKernelImpl(at::TensorIteratorBase&, c10::BFloat16)", "elementwise"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<float>", "elementwise"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor>", "optimizer"),
    ("aten::addmm", "GEMM"), ("aten.mm.default", "GEMM"), ("aten::native_layer_norm", "norm"),
    ("migt.masked_attention_fwd.default", "attention"), ("migt.gated_residual_norm.default", "norm"),
    ("migt.revin_normalize_backward.default", "norm"), ("aten._to_copy.default", "casts"),
    ("aten.native_dropout.default", "dropout"), ("aten.sum.dim_IntList", "reductions"),
    ("aten._foreach_addcdiv_.ScalarList", "optimizer"), ("aten::empty_strided", "other"),
]


@pytest.mark.parametrize("name, group", NAMES, ids=[f"{g}-{n[:40]}" for n, g in NAMES])
def test_group_of_names(name, group):
    assert group_of(name) == group


def test_profile_runs_on_the_cpu(tmp_path, capsys):
    assert profile.main(["--device", "cpu", "--config", str(tiny_config_path(tmp_path)), "--seq-len", "8",
                         "--batch", "2", "--backends", "sdpa", "--warmup", "1", "--out", str(tmp_path)]) == 0
    [md] = tmp_path.glob("*-profile.md")
    [js] = tmp_path.glob("*-profile.json")
    [png] = tmp_path.glob("*-profile.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sdpa = json.loads(js.read_text())["profiles"]["sdpa"]
    groups = sdpa["groups_ms"]
    assert set(groups) == set(GROUPS)
    assert sum(groups.values()) == pytest.approx(sdpa["total_ms"])
    # a training step has all of these, and AdamW's per-parameter ops count as optimizer
    for group in ("attention", "GEMM", "norm", "dropout", "elementwise", "optimizer"):
        assert groups[group] > 0, group
    assert "| group | ms | share | calls |" in md.read_text() and "sdpa: CPU self time" in capsys.readouterr().out


def test_timeline_counts_overlaps_once_and_finds_the_longest_gaps():
    # (start_us, end_us, name): b overlaps a (another stream); idle 50 us
    # before c and 200 us before d; e lies inside d
    kernels = [(0, 100, "a"), (40, 120, "b"), (170, 200, "c"), (400, 500, "d"), (410, 450, "e")]
    tl = profile.timeline(kernels, top=1)
    assert tl.span_ms == pytest.approx(0.5)
    assert tl.busy_ms == pytest.approx(0.25)
    assert tl.idle_ms == pytest.approx(0.25)
    assert tl.gaps == [(pytest.approx(0.2), "c", "d")]
    assert profile.timeline(kernels).gaps[1] == (pytest.approx(0.05), "b", "c")
    assert profile.timeline([]).span_ms == 0.0


def test_the_table_reports_the_timeline():
    step = profile.StepProfile("triton", "CUDA kernel time", [("k", 1.0, 1, "other")],
                               timeline=profile.timeline([(0, 1000, "k"), (3000, 3500, "k2")]))
    text = profile.table(step)
    assert "3.50 ms from the first kernel's start" in text and "1.50 ms busy, 2.00 ms idle" in text
    assert "| 2.000 | `k` | `k2` |" in text
