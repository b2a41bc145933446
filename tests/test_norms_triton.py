"""The Triton RevIN and gated-residual-norm kernels (kernels/revin.py,
kernels/gated_norm.py) against the float64 reference, under
TRITON_INTERPRET=1 on the CPU: outputs and every gradient, padding safety,
awkward series, strided inputs, determinism, custom-op registration and the
unsupported-case errors."""
import pytest
import torch

import kernels
from kernels import _launch, gated_norm, revin
from helpers import assert_close, poison_padding, random_mask

LOW_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def close(actual, expected, tol, name):
    """Relative to the tensor's largest value, so one tolerance serves
    gradients of any magnitude (std = eps makes them ~1e5)."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 1.0
    assert_close(actual, expected, atol=tol * max(scale, 1e-30), rtol=tol, name=name)


# ---------------------------------------------------------------- RevIN


def revin_case(B, T, V, dtype, *, seed=0, scale=1.0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale + offset
    mask = random_mask(B, T, seed=seed)  # full, short, gappy and late-start days; last sample all padding
    x = poison_padding(x, mask, 1).to(dtype)  # NaN at every padded step
    weight = (1 + 0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype)
    bias = (0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype)
    grads = (  # upstream gradients of y (B, V, T), mean and std (B, V)
        torch.randn(B, V, T, generator=g, dtype=torch.float64),
        torch.randn(B, V, generator=g, dtype=torch.float64),
        torch.randn(B, V, generator=g, dtype=torch.float64),
    )
    return x, mask, weight, bias, grads


def run_revin(x, mask, weight, bias, grads, backend):
    x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
    y, mean, std = kernels.revin_normalize(x, mask, weight, bias, backend=backend)
    loss = sum((out.double() * g).sum() for out, g in zip((y, mean, std), grads))
    dx, dw, db = torch.autograd.grad(loss, (x, weight, bias))
    return {"y": y, "mean": mean, "std": std, "dx": dx, "dweight": dw, "dbias": db}


def check_revin(x, mask, weight, bias, grads, tol):
    got = run_revin(x, mask, weight, bias, grads, "triton")
    want = run_revin(x.double(), mask, weight.double(), bias.double(), grads, "reference")
    assert got["y"].dtype == x.dtype and got["y"].is_contiguous()
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert got["mean"].dtype == got["std"].dtype == stats_dtype
    assert got["dweight"].dtype == weight.dtype and got["dx"].dtype == x.dtype
    for name in want:
        close(got[name], want[name], tol, name)
    # padded steps: y exactly 0, dx exactly 0 (x there is NaN)
    assert (got["y"].transpose(1, 2)[~mask] == 0).all()
    assert (got["dx"][~mask] == 0).all()
    return got


@pytest.mark.parametrize(
    "B,T,V,dtype,tol",
    [
        (4, 37, 5, torch.float64, 1e-12),
        (4, 37, 5, torch.float32, 2e-6),
        (3, 300, 13, torch.float32, 2e-6),  # several T chunks and V blocks
        (4, 37, 5, torch.float16, 2e-3),
        (4, 37, 5, torch.bfloat16, 1.6e-2),
    ],
    ids=["fp64-T37-V5", "fp32-T37-V5", "fp32-T300-V13", "fp16-T37-V5", "bf16-T37-V5"],
)
def test_revin_matches_float64_reference(B, T, V, dtype, tol, poisoned_allocations):
    got = check_revin(*revin_case(B, T, V, dtype), tol)
    # the all-padding sample: mean 0, std eps, y 0, zero gradient
    assert (got["mean"][-1] == 0).all() and (got["y"][-1] == 0).all() and (got["dx"][-1] == 0).all()
    assert_close(got["std"][-1], torch.full((V,), 1e-5, dtype=torch.float64), atol=0, rtol=tol, name="std eps")


@pytest.mark.parametrize(
    "scale,offset,tol",
    [(0.0, 7.0, 2e-6), (1e-4, 0.0, 2e-6), (1.0, 1e4, 2e-6), (1e4, 3e4, 2e-6)],
    ids=["constant", "std1e-4", "near1e4-std1", "scale1e4"],
)
def test_revin_awkward_series_fp32(scale, offset, tol, poisoned_allocations):
    # near1e4-std1: fp32 cannot hold the mean of a series at 1e4 to better
    # than ~1e-3; the two-step mean keeps y right, tol covers dx through it
    x, mask, w, b, grads = revin_case(4, 37, 5, torch.float32, scale=scale, offset=offset)
    got = check_revin(x, mask, w, b, grads, tol)
    if scale == 0.0:  # variance 0: std is exactly eps, y is the bias
        assert_close(got["std"], torch.full((4, 5), 1e-5, dtype=torch.float64), atol=0, rtol=1e-6, name="std")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_revin_one_and_two_valid_steps(dtype, tol, poisoned_allocations):
    # count 1: variance exactly 0, std eps, dx only through mean and std
    x, mask, w, b, grads = revin_case(3, 37, 5, dtype)
    mask[:] = False
    mask[0, 17] = True
    mask[1, [0, 36]] = True  # first and last step of the series
    mask[2, 30:] = True
    x = poison_padding(x, mask, 1)
    got = check_revin(x, mask, w, b, grads, tol)
    assert_close(got["std"][0], torch.full((5,), 1e-5, dtype=torch.float64), atol=0, rtol=tol, name="std")


@pytest.mark.parametrize("path", ["eager", "custom-op"])
def test_revin_gradient_of_y_only_features_without_grad(path, poisoned_allocations):
    # The model's case: features need no gradient and the loss reads y only,
    # so mean and std send None (not zero-filled tensors) and dx is skipped.
    x, mask, w, b, (grad_y, _, _) = revin_case(4, 37, 5, torch.float32)
    fn = {"eager": revin.revin_normalize, "custom-op": revin._revin_op}[path]
    results = []
    for xs, ws, bs, run in ((x, w, b, fn), (x.double(), w.double(), b.double(), kernels.reference.revin_normalize)):
        ws, bs = ws.detach().requires_grad_(), bs.detach().requires_grad_()
        y, _, _ = run(xs, mask, ws, bs, 1e-5)
        results.append(torch.autograd.grad((y.double() * grad_y).sum(), (ws, bs)))
    for name, got, want in zip(("dweight", "dbias"), *results):
        close(got, want, 2e-6, name)


@pytest.mark.parametrize("path", ["eager", "custom-op"])
def test_revin_gradient_of_std_only(path, poisoned_allocations):
    # y and mean send None: a zero gradient of y is made and grad_mean zero-filled
    x, mask, w, b, (_, _, grad_std) = revin_case(4, 37, 5, torch.float32)
    fn = {"eager": revin.revin_normalize, "custom-op": revin._revin_op}[path]
    results = []
    for xs, run in ((x, fn), (x.double(), kernels.reference.revin_normalize)):
        xs = xs.detach().requires_grad_()
        _, _, std = run(xs, mask, w.to(xs.dtype), b.to(xs.dtype), 1e-5)
        results.append(torch.autograd.grad((std.double() * grad_std).sum(), xs)[0])
    close(results[0], results[1], 2e-6, "dx")
    assert (results[0][~mask] == 0).all()


def test_revin_eager_path_matches_custom_op_bitwise():
    # revin_normalize skips the custom op's dispatch in eager mode; both
    # paths must run the same launches and so give the same bits
    x, mask, w, b, grads = revin_case(4, 37, 5, torch.float32)
    got = []
    for fn in (revin.revin_normalize, revin._revin_op):
        xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
        outs = fn(xs, mask, ws, bs, 1e-5)
        loss = sum((out.double() * g).sum() for out, g in zip(outs, grads))
        got.append((*outs, *torch.autograd.grad(loss, (xs, ws, bs))))
    for name, a, b_ in zip(("y", "mean", "std", "dx", "dweight", "dbias"), *got):
        assert torch.equal(a, b_), name


def test_revin_under_torch_compile_uses_the_custom_op():
    x, mask, w, b, grads = revin_case(3, 21, 5, torch.float32)
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    compiled = torch.compile(revin.revin_normalize, backend="aot_eager", fullgraph=True)
    y, _, _ = compiled(x, mask, w, b, 1e-5)
    got = torch.autograd.grad((y.double() * grads[0]).sum(), (x, w))
    y_eager, _, _ = revin.revin_normalize(x, mask, w, b, 1e-5)
    want = torch.autograd.grad((y_eager.double() * grads[0]).sum(), (x, w))
    assert torch.equal(y, y_eager)
    for name, g, r in zip(("dx", "dweight"), got, want):
        assert torch.equal(g, r), name


def strided_params(*params):
    """(n,) views at stride 2 of wider tensors whose other half is NaN, so a
    kernel that reads them as contiguous picks up NaN."""
    return [torch.stack([p, torch.full_like(p, float("nan"))], -1)[:, 0] for p in params]


@pytest.mark.parametrize("grad_layout", ["broadcast", "transposed"])
def test_revin_strided_input_and_gradients(grad_layout, poisoned_allocations):
    x, mask, w, b, (grad_y, _, grad_std) = revin_case(3, 21, 6, torch.float32)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, V) with V-stride T
    w_s, b_s = strided_params(w, b)
    assert not any(t.is_contiguous() for t in (x_t, w_s, b_s))
    results = []
    for xs, ws, bs, backend in ((x_t, w_s, b_s, "triton"), (x.double(), w.double(), b.double(), "reference")):
        xs, ws, bs = (t.detach().requires_grad_() for t in (xs, ws, bs))
        y, mean, std = kernels.revin_normalize(xs, mask, ws, bs, backend=backend)
        if grad_layout == "broadcast":  # y.sum() and mean.sum() send stride-0 gradients
            loss = y.sum() + mean.sum()
        else:  # the gradient of y arrives as a (B, T, V) tensor seen transposed
            loss = (y.transpose(1, 2) * grad_y.transpose(1, 2).to(y.dtype)).sum()
        loss = loss + (std.double() * grad_std).sum()
        results.append((y, *torch.autograd.grad(loss, (xs, ws, bs))))
    for name, got, want in zip(("y", "dx", "dweight", "dbias"), *results):
        if name == "dweight" and grad_layout == "broadcast":
            # sum over steps of z, which is 0 up to rounding: no scale to be relative to
            assert_close(got, want, atol=1e-5, rtol=0, name=name)
        else:
            close(got, want, 2e-6, name)


def test_revin_round_trip():
    x, mask, w, b, _ = revin_case(4, 37, 5, torch.float32, scale=50.0, offset=4500.0)
    y, mean, std = kernels.revin_normalize(x, mask, w, b, backend="triton")
    back = kernels.revin_denormalize(y, mean, std, w, b)
    # fp32 at 4500: one ulp is 5e-4
    assert_close(back.transpose(1, 2)[mask], x[mask], atol=2e-3, rtol=0, name="round trip")


def test_revin_gradients_bitwise_deterministic():
    x, mask, w, b, grads = revin_case(4, 37, 5, torch.float32)
    first, second = (run_revin(x, mask, w, b, grads, "triton") for _ in range(2))
    for name in ("dx", "dweight", "dbias"):
        assert torch.equal(first[name], second[name]), name


def test_revin_custom_op_opcheck():
    x, mask, w, b, _ = revin_case(3, 11, 5, torch.float32)
    x = torch.where(mask[:, :, None], x, 0.0)  # opcheck compares outputs, not NaN-safe
    args = (x.requires_grad_(), mask, w.requires_grad_(), b.requires_grad_(), 1e-5)
    torch.library.opcheck(revin._revin_op, args)


def test_revin_unsupported_case_raises_reason():
    # 2**32 elements by expand: no memory, but past the kernel's int32 offsets
    x = torch.zeros(1, 1, 1).expand(2**16, 2**10, 2**6)
    mask = torch.ones(1, 1, dtype=torch.bool).expand(2**16, 2**10)
    w, b = torch.ones(2**6), torch.zeros(2**6)
    assert kernels._triton_reason("revin_normalize", x[:2, :3], mask[:2, :3], w, b) is None
    with pytest.raises(ValueError, match="backend='triton' cannot run this case: .*64-bit offsets"):
        kernels.revin_normalize(x, mask, w, b, backend="triton")


# ------------------------------------------------------ gated residual norm


def gated_case(shape, dtype, *, seed=0, param_dtype=None):
    g = torch.Generator().manual_seed(seed)
    D = shape[-1]
    x, update, gate = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    update = update * 3 + 1  # a mean and spread LayerNorm must remove
    weight = (1 + 0.2 * torch.randn(D, generator=g, dtype=torch.float64)).to(param_dtype or dtype)
    bias = (0.2 * torch.randn(D, generator=g, dtype=torch.float64)).to(param_dtype or dtype)
    grad_out = torch.randn(shape, generator=g, dtype=torch.float64)
    return [x, update, gate, weight, bias], grad_out


GATED_NAMES = ("x", "update", "gate_logits", "weight", "bias")


def run_gated(inputs, grad_out, backend):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = kernels.gated_residual_norm(*inputs, backend=backend)
    grads = torch.autograd.grad((out.double() * grad_out).sum(), inputs)
    return {"out": out, **{f"d{n}": g for n, g in zip(GATED_NAMES, grads)}}


def check_gated(inputs, grad_out, tol):
    got = run_gated(inputs, grad_out, "triton")
    want = run_gated([t.double() for t in inputs], grad_out, "reference")
    assert got["out"].dtype == inputs[0].dtype and got["out"].is_contiguous()
    for name, t in zip(GATED_NAMES, inputs):
        assert got[f"d{name}"].dtype == t.dtype
    for name in want:
        close(got[name], want[name], tol, name)
    return got


@pytest.mark.parametrize(
    "shape,dtype,tol",
    [
        ((3, 7, 48), torch.float64, 1e-12),
        ((3, 7, 48), torch.float32, 2e-6),
        ((2, 3, 5, 256), torch.float32, 2e-6),  # the model's D
        ((190, 37), torch.float32, 2e-6),  # 12 row blocks over 4 backward programs
        ((2, 8192), torch.float32, 2e-6),  # the largest D in one block
        ((3, 7, 48), torch.float16, 4e-3),
        ((3, 7, 48), torch.bfloat16, 3e-2),
    ],
    ids=["fp64-D48", "fp32-D48", "fp32-D256", "fp32-N190-D37", "fp32-D8192", "fp16-D48", "bf16-D48"],
)
def test_gated_norm_matches_float64_reference(shape, dtype, tol, poisoned_allocations):
    check_gated(*gated_case(shape, dtype), tol)


def test_gated_norm_low_precision_with_fp32_params(poisoned_allocations):
    inputs, grad_out = gated_case((3, 7, 48), torch.bfloat16, param_dtype=torch.float32)
    got = check_gated(inputs, grad_out, 3e-2)
    assert got["dweight"].dtype == torch.float32


def test_gated_norm_float32_residual_with_fp16_update(poisoned_allocations):
    # under autocast the block output (update, gate) is low precision while
    # the residual stream x stays float32: each gradient keeps its input's dtype
    inputs, grad_out = gated_case((3, 7, 48), torch.float32)
    inputs[1], inputs[2] = inputs[1].half(), inputs[2].half()
    got = check_gated(inputs, grad_out, 4e-3)
    assert got["out"].dtype == torch.float32 and got["dupdate"].dtype == torch.float16


@pytest.mark.parametrize("rotation", [0, 1, 2], ids=["x-wide", "x-swapped", "x-every-other"])
def test_gated_norm_strided_inputs(rotation, poisoned_allocations):
    inputs, grad_out = gated_case((4, 6, 48), torch.float32)
    layouts = [
        lambda t: torch.cat([t, t], -1)[..., :48],  # row stride 96: a 2-D view, no copy
        lambda t: t.transpose(0, 1).contiguous().transpose(0, 1),  # leading dims do not merge: one copy
        lambda t: torch.stack([t, t], -1)[..., 0],  # column stride 2
    ]
    layouts = layouts[rotation:] + layouts[:rotation]
    strided = [layout(t) for layout, t in zip(layouts, inputs[:3])] + strided_params(*inputs[3:])
    assert not any(t.is_contiguous() for t in strided)
    check_gated(strided, grad_out, 2e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_gated_norm_constant_row_and_extreme_gates(dtype, tol, poisoned_allocations):
    inputs, grad_out = gated_case((5, 48), dtype)
    inputs[1][0] = 2.5  # variance 0: normed row is the bias
    inputs[2][1] = 80.0  # sigmoid saturates to 1
    inputs[2][2] = -80.0  # and to 0
    got = check_gated(inputs, grad_out, tol)
    assert all(torch.isfinite(g).all() for g in got.values())


def test_gated_norm_broadcast_upstream_gradient(poisoned_allocations):
    # out.sum() sends a gradient whose every stride is 0
    inputs, _ = gated_case((3, 7, 48), torch.float32)
    got, want = (
        torch.autograd.grad(kernels.gated_residual_norm(*ts, backend=backend).sum(), ts)
        for ts, backend in (
            ([t.detach().requires_grad_() for t in inputs], "triton"),
            ([t.double().requires_grad_() for t in inputs], "reference"),
        )
    )
    for name, g, r in zip(GATED_NAMES, got, want):
        close(g, r, 2e-6, f"d{name}")


def test_gated_norm_gradients_bitwise_deterministic():
    inputs, grad_out = gated_case((190, 37), torch.float32)
    first, second = (run_gated(inputs, grad_out, "triton") for _ in range(2))
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_gated_norm_custom_op_opcheck():
    inputs, _ = gated_case((2, 5, 48), torch.float32)
    inputs = [t.requires_grad_() for t in inputs]
    torch.library.opcheck(gated_norm._gated_norm_op, (*inputs, 1e-5))


def test_gated_norm_unsupported_case_raises_reason():
    u = torch.randn(2, 8193)
    w, b = torch.ones(8193), torch.zeros(8193)
    assert kernels._triton_reason("gated_residual_norm", u[:, :8192], u[:, :8192], u[:, :8192], w[:8192], b[:8192]) is None
    with pytest.raises(ValueError, match="backend='triton' cannot run this case: D=8193 is over 8192"):
        kernels.gated_residual_norm(u, u, u, w, b, backend="triton")
    # auto never picks Triton for it (here: CPU, so sdpa / plain PyTorch anyway)
    assert torch.isfinite(kernels.gated_residual_norm(u, u, u, w, b)).all()


# ------------------------------------------------------------ host helpers


@pytest.mark.parametrize("value", [1e-10, 1e-5, 0.1], ids=["eps1e-5-squared", "eps1e-5", "0.1"])
def test_eps_split_survives_float32_arguments(value):
    # On a GPU Triton passes a Python float as float32; the interpreter
    # passes it unrounded, so the float64 parity tests cannot see a lost low
    # half. Here: both halves as float32 still add up to the float64 value.
    assert float(torch.tensor(value, dtype=torch.float32)) != value  # else there is nothing to lose
    hi, lo = _launch.split_float32(value)
    hi32, lo32 = (float(torch.tensor(h, dtype=torch.float32)) for h in (hi, lo))
    assert hi32 == hi
    assert abs(hi32 + lo32 - value) <= 1e-15 * value


def test_upstream_gradient_past_int32_offsets_is_copied():
    # meta tensors: the strides of a 2**31-element span without the memory
    wide = torch.empty_strided((2, 3, 8), (2**31, 8, 1), device="meta")
    assert _launch.int32_indexable(wide).stride() == (24, 8, 1)
    narrow = torch.empty_strided((2, 3, 8), (0, 16, 1), device="meta")  # broadcast: kept as is
    assert _launch.int32_indexable(narrow).stride() == (0, 16, 1)


def test_host_grid_helpers_match_triton():
    # plain-Python stand-ins for triton.cdiv / next_power_of_2 (host cost)
    import triton
    for n in [1, 2, 3, 5, 37, 64, 65, 288, 4097]:
        assert _launch.next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in [1, 3, 8, 16, 64]:
            assert _launch.cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert _launch.next_power_of_2(0) == 1 and _launch.cdiv(0, 8) == 0
