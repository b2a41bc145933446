"""kernels.value_embedding (the model's input embedding in one pass) on the
Triton backend under the interpreter: parity with the plain-PyTorch
reference on the output and every gradient, the dropout mask (kernels.dropout's,
redrawn in the backward), what the backward keeps, the op contract, the
argument checks, and the model's embedding stage built on it."""
import pytest
import torch

import kernels
from helpers import assert_close, saved_by
from kernels import philox
from kernels import embedding as value_embedding_module
from migt import MIGT_TVDT, MIGTConfig
from migt.data import synthetic_batch

F64 = dict(atol=1e-12, rtol=1e-10)


def operands(B, V, T, D, dtype=torch.float64, pos_dtype=None, *, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt).requires_grad_()

    return rand(B, V, T), rand(V, D), rand(V, D), rand(B, T, D, dt=pos_dtype or dtype)


def run(backend, y, w, b, pos, p, seeds, out_dtype=None):
    x = kernels.value_embedding(y, w, b, pos, p, seeds=seeds, out_dtype=out_dtype, backend=backend)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(x.dtype)
    return x, torch.autograd.grad(x, (y, w, b, pos), upstream)


# B, V, T, D: D off a power of two, T off the backward's step blocks, one step, one variable
SHAPES = [(2, 3, 5, 7), (1, 1, 1, 33), (3, 4, 19, 257), (2, 24, 9, 64)]


@pytest.mark.parametrize("B,V,T,D", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
def test_matches_float64_reference(B, V, T, D, p, poisoned_allocations):
    y, w, b, pos = operands(B, V, T, D)
    seeds = kernels.dropout_seeds("cpu", 1)
    x, grads = run("triton", y, w, b, pos, p, seeds)
    ref, ref_grads = run("reference", y, w, b, pos, p, seeds)
    assert x.shape == (B, V, T, D) and x.dtype == torch.float64
    assert_close(x, ref, **F64, name="x")
    for name, got, want in zip(("y", "weight", "bias", "pos"), grads, ref_grads):
        assert got.dtype == want.dtype
        assert_close(got, want, **F64, name=f"d{name}")


@pytest.mark.parametrize("programs", [1, 3, 50], ids=str)
def test_weight_gradients_with_any_programs_per_variable(programs, monkeypatch, poisoned_allocations):
    # the GPU's count of programs per variable, including more programs than
    # tiles (a program with no tile writes zero partials)
    monkeypatch.setattr(value_embedding_module, "params_programs", lambda device, tiles, V: programs)
    y, w, b, pos = operands(3, 4, 19, 257)
    seeds = kernels.dropout_seeds("cpu", 1)
    _, grads = run("triton", y, w, b, pos, 0.3, seeds)
    _, ref_grads = run("reference", y, w, b, pos, 0.3, seeds)
    for name, got, want in zip(("y", "weight", "bias", "pos"), grads, ref_grads):
        assert_close(got, want, **F64, name=f"d{name}")


def test_empty_batch():
    y, w, b, pos = operands(0, 3, 5, 8)
    x, grads = run("triton", y, w, b, pos, 0.2, kernels.dropout_seeds("cpu", 1))
    assert x.shape == (0, 3, 5, 8)
    assert not grads[1].any() and not grads[2].any()


def test_mask_is_kernels_dropout_mask():
    # y = 0, weight = 0, bias = 1, pos = 0: x is the kept elements' 1/(1-p)
    B, V, T, D, p = 2, 3, 7, 10, 0.4
    seeds = kernels.dropout_seeds("cpu", 1)
    x = kernels.value_embedding(torch.zeros(B, V, T), torch.zeros(V, D), torch.ones(V, D), torch.zeros(B, T, D),
                                p, seeds=seeds, backend="triton")
    keep = philox.keep_mask(seeds[0], (B, V, T, D), p)
    assert torch.equal(x, torch.where(keep, 1.0 / (1.0 - p), 0.0).float())
    assert torch.equal(x, kernels.dropout(torch.ones(B, V, T, D), p, seeds=seeds, backend="triton"))


def test_low_precision_output_and_mixed_dtypes():
    # float32 parameters, a bf16 calendar part, a bf16 stream written directly
    y, w, b, pos = operands(2, 3, 6, 16, torch.float32, torch.bfloat16)
    seeds = kernels.dropout_seeds("cpu", 1)
    x, grads = run("triton", y, w, b, pos, 0.1, seeds, out_dtype=torch.bfloat16)
    ref, ref_grads = run("reference", y, w, b, pos, 0.1, seeds, out_dtype=torch.bfloat16)
    assert x.dtype == torch.bfloat16 and grads[3].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    assert_close(x, ref, atol=1e-2, rtol=1e-2, name="x")
    for name, got, want in zip(("y", "weight", "bias", "pos"), grads, ref_grads):
        assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=2e-2, name=f"d{name}")


def test_float64_math_into_a_half_precision_stream():
    # float64 weights with a bf16 calendar part and a bf16 output: the
    # float64 results reach bf16 through float32 (the interpreter, like some
    # targets, has no direct float64 -> bf16 conversion)
    y, w, b, pos = operands(2, 3, 6, 16, torch.float64, torch.bfloat16)
    seeds = kernels.dropout_seeds("cpu", 1)
    x, grads = run("triton", y, w, b, pos, 0.2, seeds, out_dtype=torch.bfloat16)
    ref, ref_grads = run("reference", y, w, b, pos, 0.2, seeds, out_dtype=torch.bfloat16)
    assert_close(x, ref, atol=1e-2, rtol=1e-2, name="x")
    assert_close(grads[3], ref_grads[3], atol=2e-2 * ref_grads[3].abs().max().item(), rtol=2e-2, name="dpos")
    # and a bf16 y's gradient from float64 math
    y16 = y.detach().to(torch.bfloat16).requires_grad_()
    _, grads = run("triton", y16, w, b, pos, 0.2, seeds, out_dtype=torch.bfloat16)
    _, ref_grads = run("reference", y16, w, b, pos, 0.2, seeds, out_dtype=torch.bfloat16)
    assert_close(grads[0], ref_grads[0], atol=2e-2 * ref_grads[0].abs().max().item(), rtol=2e-2, name="dy")


def test_backward_keeps_y_and_the_seed_only():
    y, w, b, pos = operands(2, 3, 6, 16, torch.float32)
    seeds = kernels.dropout_seeds("cpu", 1)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kernels.value_embedding(y, w, b, pos, 0.3, seeds=seeds, backend="triton")
    assert sorted((str(t.dtype), tuple(t.shape)) for t in saved) == sorted(
        [("torch.float32", (2, 3, 6)), ("torch.float32", (3, 16)), ("torch.int64", (1,))])


def test_custom_ops_pass_opcheck():
    y, w, b, pos = operands(2, 3, 5, 8, torch.float32)
    seeds = torch.tensor([77])
    op, bwd = value_embedding_module._value_embedding_op, value_embedding_module._value_embedding_backward_op
    torch.library.opcheck(op, (y, w, b, pos, seeds, 0.25, torch.float32))
    torch.library.opcheck(op, (y, w, b, pos.detach().to(torch.float64).requires_grad_(), seeds, 0.0, torch.bfloat16))
    torch.library.opcheck(bwd, (torch.randn(2, 3, 5, 8), y.detach(), w.detach(), seeds, 0.25, torch.float32))


def test_bad_inputs_name_the_argument():
    y, w, b, pos = operands(2, 3, 5, 8, torch.float32)
    with pytest.raises(ValueError, match=r"y must have 3 dims \(B, V, T\), got shape \(2, 3, 5, 1\)"):
        kernels.value_embedding(y[..., None], w, b, pos)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, D\) = \(3, 8\), got \(4, 8\)"):
        kernels.value_embedding(y, torch.zeros(4, 8), b, pos)
    with pytest.raises(ValueError, match=r"bias must have shape \(V, D\) = \(3, 8\), got \(3, 7\)"):
        kernels.value_embedding(y, w, b[:, :7], pos)
    with pytest.raises(ValueError, match=r"pos must have shape \(B, T, D\) = \(2, 5, 8\), got \(2, 4, 8\)"):
        kernels.value_embedding(y, w, b, pos[:, :4])
    with pytest.raises(ValueError, match=r"dropout_p must be a float in \[0, 1\), got 1.5"):
        kernels.value_embedding(y, w, b, pos, 1.5)
    with pytest.raises(ValueError, match=r"seeds must be a 1-D int64 tensor"):
        kernels.value_embedding(y, w, b, pos, 0.1, seeds=torch.tensor([1.0]))
    assert kernels._triton_reason("value_embedding", y, torch.zeros(3, 8193)).startswith("D=8193 is over")


TINY = dict(
    d_model=32, n_heads=2, d_ff=48, dropout=0.3, attn_dropout=0.0,
    n_temporal_layers=1, n_variable_layers=1, max_seq_len=12, n_variables=3,
    n_horizons=3, n_quantiles=3, quantiles=[0.1, 0.5, 0.9],
    time_of_day_dim=8, day_of_week_dim=4, day_of_month_dim=4, day_of_year_dim=6,
)


def tiny_embed(backend, train: bool):
    torch.manual_seed(0)
    model = MIGT_TVDT(MIGTConfig(**TINY, backend=backend)).train(train)
    batch = synthetic_batch(2, model.config, seed=2)
    torch.manual_seed(5)
    return saved_by(lambda: model.embed(batch["features"], batch["attention_mask"], batch["temporal_info"])[0])


def test_model_embedding_keeps_no_activation_and_no_mask_on_triton():
    (x, saved) = tiny_embed("triton", train=True)
    B, V, T, D = x.shape
    activations = [t for t in saved if t.numel() == B * V * T * D]
    assert not activations, [(t.dtype, tuple(t.shape)) for t in activations]
    assert any(t.dtype == torch.int64 and t.numel() == 1 for t in saved)  # the seed
    dropped = (x == 0).double().mean().item()
    assert 0.2 < dropped < 0.4  # p = 0.3 of B*V*T*D = 2304 elements
    # nn.Dropout (sdpa) keeps a (B, V, T, D) mask (on the CPU a scaled noise tensor)
    (_, sdpa_saved) = tiny_embed("sdpa", train=True)
    assert [t for t in sdpa_saved if t.numel() == B * V * T * D]


def test_model_embedding_is_the_identity_dropout_in_eval():
    (x, saved) = tiny_embed("triton", train=False)
    (ref, _) = tiny_embed("sdpa", train=False)
    # (the two backends' RevIN differ by float32 rounding)
    assert_close(x, ref, atol=1e-4, rtol=1e-4, name="embedding")
    assert not (x == 0).any()
