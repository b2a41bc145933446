"""Activation-memory model of MIGT-TVDT: what each stage keeps for the backward.

Counted per token (one (b, v, t) position; N = B * V * T tokens) from the
modules in migt/ and the backends in kernels/, in bytes:

  a  = bytes of an activation that a Linear produces or saves (4 in fp32,
       2 under bf16 autocast: autocast saves the bf16 copy of a Linear input);
  4  = the residual stream, LayerNorm in/outputs and statistics (fp32 under autocast);
  m  = a dropout mask element: 1 byte on CUDA (bool), `a` on the CPU (the
       CPU kernel keeps a scaled noise tensor of the input's dtype).

  r  = an element of the residual stream: 4, or a with residual_stream
       "autocast" under autocast.

Temporal / variable block, plain modules (sdpa, reference):
  LayerNorm in 4D + stats 8, qkv input aD, attention (below), out_proj input
  (aD unless it is the saved attention output itself), dropout mask mD, second
  LayerNorm 4D + 8, fc1 input aD, GELU input aF, dropout mask mF, fc2 input aF,
  dropout mask mD. (Autocast runs LayerNorm in float32: its input is kept as
  4D whatever the stream's dtype.)
Temporal / variable block, fused (triton: kernels.layer_norm_linear and
kernels.residual_feed_forward):
  block input rD + stats 8, attention (below), the attention branch aD
  (out_proj's output) + stats 8, the FFN pre-activation aF (none with
  recompute_ffn_hidden); x_mid = x + dropout(branch) is rebuilt, and there
  is no normalised copy, no GELU output, no dropout mask.
Attention, per backend:
  triton:    q, k, v (views of the qkv output, 3aD) + O (aD) + LSE (4H); O is
             out_proj's input, so it is not counted twice;
  sdpa:      masked copies of q, k, v (3aD) + O (aD) + LSE (4H), then a masked
             copy of O feeds out_proj (aD);
  reference: float32 copies of q, k, v (12D) + the probabilities, 4HT per token
             along time (a T x T matrix per (b, v, h)) and 4HV along variables.
Gated residual norm after each variable block (+ the gate Linear's input:
with the plain modules autocast's copy of x unless the stream is already
in a; the fused block's gate, inside kernels.gated_feed_forward, keeps x itself):
  triton:    update rD + stats 8 (x is the block input, kept anyway; the gate
             logits are made again in the backward);
  reference: update 4D + stats 8 + sigmoid output 4D + (LayerNorm(update) - x) 4D.
Embedding: RevIN's and the value embedding's 12 + the dropout mask mD (none
  on triton: kernels.value_embedding redraws it).
Final norm + pooling: the norm's input 4D + stats 8 + one aD copy of the
  normalised values for both pooling products; on triton only the stream rD
  (both are recomputed in the backward) and 4D + 8 per series, not per token.
Under bf16 autocast each forward also keeps a bf16 copy of every weight (2 bytes
per parameter). Activation checkpointing keeps only each block's input (4D) and recomputes
one block at a time in the backward, so that block's full set is added once.

Besides what is saved, a training step needs the parameter gradients and a
transient working set in the backward (the gradients of one block's largest
tensors; for `reference` attention two T x T float32 matrices per (b, v, h);
on triton the fused FFN backward's, whose (rows, d_ff) part is one chunk of
rows, not the batch: see kernels/chunking.py).
The estimate is checked against the saved-tensor bytes measured with
torch.autograd.graph.saved_tensors_hooks (tests/test_bench_harness.py), and
each GPU model-suite row reports it beside the measured peak.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from kernels import chunking

GIB = 2**30


@dataclasses.dataclass
class MemoryEstimate:
    saved_bytes: dict  # stage -> bytes kept for the backward (0 for inference)
    transient_bytes: int  # largest extra working set on top of what is saved
    param_bytes: int
    grad_bytes: int  # parameter gradients (training only)

    @property
    def saved_total(self) -> int:
        return sum(self.saved_bytes.values())

    @property
    def step_delta(self) -> int:
        """Predicted peak above what the model, optimizer state and inputs hold."""
        return self.saved_total + self.transient_bytes + self.grad_bytes


def count_parameters(config) -> int:
    """Parameters of MIGT_TVDT(config), built on the meta device (no memory)."""
    import migt

    with torch.device("meta"):
        model = migt.MIGT_TVDT(config)
    return sum(p.numel() for p in model.parameters())


def _attention_bytes(backend: str, axis: str, a: int, D: int, H: int, T: int, V: int) -> int:
    """Per-token bytes that masked_attention keeps, incl. out_proj's input."""
    lse = 4 * H
    if backend == "triton":
        return 3 * a * D + a * D + lse
    if backend == "sdpa":
        return 3 * a * D + a * D + lse + a * D
    if backend == "reference":
        probs = 4 * H * (T if axis == "time" else V)
        return 12 * D + probs + a * D
    raise ValueError(f"backend must be 'triton', 'sdpa' or 'reference', got {backend!r}")


def _block_bytes(backend, axis, a, m, D, H, F, T, V, r=4, keep_hidden=True) -> int:
    if backend == "triton":  # the fused block
        return r * D + a * D + 2 * 8 + (a * F if keep_hidden else 0) + _attention_bytes(backend, axis, a, D, H, T, V)
    norms = 2 * (4 * D + 8)
    linears_in = a * D + a * D + a * F  # qkv, fc1, fc2 inputs
    gelu_in = a * F
    masks = m * (2 * D + F)
    return norms + linears_in + gelu_in + masks + _attention_bytes(backend, axis, a, D, H, T, V)


def _gated_norm_bytes(backend, a, D, r=4) -> int:
    if backend == "triton":  # the gate logits are made again in the backward (kernels/ffn_gated_norm.py)
        return r * D + 8
    gate_input = 0 if a == r else a * D  # autocast's bf16 copy of x for the gate Linear
    return gate_input + r * D + 8 + 4 * D + 4 * D


def estimate(
    config,
    batch: int,
    *,
    seq_len: Optional[int] = None,
    backend: str = "sdpa",
    autocast_bf16: bool = False,
    checkpointing: Optional[bool] = None,
    training: bool = True,
    device_type: str = "cuda",
    n_params: Optional[int] = None,
) -> MemoryEstimate:
    """Estimate the activation memory of one forward(+backward) of MIGT_TVDT.

    backend: the attention/norm backend ("triton", "sdpa", "reference";
    "compile" and "compile_triton" count as "sdpa" and "triton", what they
    compile). checkpointing:
    default config.activation_checkpointing. n_params: pass it to skip
    building the model on the meta device.
    """
    backend = {"compile": "sdpa", "auto": "sdpa", "compile_triton": "triton"}.get(backend, backend)
    if checkpointing is None:
        checkpointing = config.activation_checkpointing
    T = seq_len or config.max_seq_len
    V, D, H, F = config.n_variables, config.d_model, config.n_heads, config.d_ff
    a = 2 if autocast_bf16 else 4
    r = a if config.residual_stream == "autocast" else 4
    m = 1 if device_type == "cuda" else a
    has_dropout = config.dropout > 0
    if not has_dropout:
        m = 0
    N = batch * V * T  # tokens
    n_params = count_parameters(config) if n_params is None else n_params
    param_bytes = 4 * n_params

    keep_hidden = not config.recompute_ffn_hidden
    temporal = _block_bytes(backend, "time", a, m, D, H, F, T, V, r, keep_hidden) * N
    variable_rows = T if config.variable_attention == "per_step" else 1
    Nv = batch * V * variable_rows
    variable = (_block_bytes(backend, "variable", a, m, D, H, F, T, V, r, keep_hidden)
                + _gated_norm_bytes(backend, a, D, r)) * Nv
    # RevIN + value embedding + dropout mask (none in the fused model:
    # kernels.value_embedding redraws it); the (B, T, D) calendar part is small
    embed = (3 * 4 + (0 if backend == "triton" else m * D)) * N
    # final LayerNorm (in float32: its input 4D) + stats, one copy of the
    # pooled values for both of the pooling's products; the fused model
    # (kernels.norm_attention_pool) recomputes both in the backward and keeps
    # the stream rD, and per series the float pooled vector, max and sum
    if backend == "triton":
        aggregation = r * D * N + (4 * D + 8) * batch * V
    else:
        aggregation = (4 * D + 8 + a * D) * N

    # The backward's largest working set, plus two T x T float32 matrices per
    # (b, v, h) for reference attention.
    reference_scores = 2 * 4 * H * T * N if backend == "reference" else 0
    # the fused FFN makes its (rows, d_ff) tensors a chunk of rows at a time
    hidden_rows = chunking.row_chunks(N, F, a)[0][1] if backend == "triton" else N
    if backend == "triton":
        # The fused FFN backward (kernels/feed_forward.py): the block's dx and
        # dbranch for every row, and per chunk of rows (kernels/chunking.py) dhidden
        # and g again, and the hidden itself under selective recompute (not
        # with ffn_gelu_in_gemm in 16 bits: kernels/gelu_gemm.py makes its tiles in registers).
        hidden_made = not keep_hidden and not (config.ffn_gelu_in_gemm and a == 2)

        def ffn_transient(rows, chunk_rows):
            return (r + a) * D * rows + (3 if hidden_made else 2) * a * F * chunk_rows

        transient = ffn_transient(N, hidden_rows) if config.n_temporal_layers else 0
        if config.n_variable_layers:
            # A variable block's tail is one node (kernels/ffn_gated_norm.py),
            # which holds its incoming gradient to the end, and per chunk the
            # update's gradient and the gate's part of dx.
            v_rows = chunking.row_chunks(Nv, F, a)[0][1]
            transient = max(transient, ffn_transient(Nv, v_rows) + r * D * Nv + (r + a) * D * v_rows)
        # At the seed config in bf16 (one chunk) bench.saved_bytes measures
        # the step peak within a few % of the model's (bench/results/cpu-saved-bytes/).
    else:
        # one block's FFN gradients in float32
        transient = (2 * F + 4 * D) * 4 * N + reference_scores

    if not training:
        # no_grad: nothing saved; the peak is one block's working set
        work = (4 * 4 * D + 6 * a * D) * N + 2 * a * F * hidden_rows + reference_scores
        return MemoryEstimate({}, work, param_bytes, 0)

    saved = {"embedding": embed, "aggregation": aggregation}
    if autocast_bf16:
        saved["bf16 weight copies"] = 2 * n_params  # autocast's per-forward casts of the weights
    n_t, n_v = config.n_temporal_layers, config.n_variable_layers
    if checkpointing:
        saved["block inputs (checkpointed)"] = r * D * (n_t * N + n_v * Nv)
        # one block recomputed at a time in the backward
        transient += max(temporal if n_t else 0, variable if n_v else 0)
    else:
        saved["temporal blocks"] = n_t * temporal
        saved["variable blocks"] = n_v * variable
    return MemoryEstimate(saved, transient, param_bytes, param_bytes)


def measure_saved_bytes(fn, exclude=()) -> int:
    """Bytes of distinct storages autograd saves for the backward while fn()
    runs, leaving out the storages of the tensors in `exclude` (parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        if t.device.type != "meta" and t.untyped_storage().data_ptr() not in skip:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        # Not `return t`: a node that saves its own output would then hold that
        # output, whose grad_fn is the node, a C++ reference cycle the garbage
        # collector cannot see, and the whole graph leaked (on the H200 every
        # train_step case left its activations behind). A detached alias keeps
        # the storage alive for the forward (so addresses are not reused and
        # miscounted) and dies with the graph.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def describe(est: MemoryEstimate) -> str:
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in est.saved_bytes.items())
    return (f"saved {est.saved_total / GIB:.2f} GiB ({parts}); transient {est.transient_bytes / GIB:.2f}; "
            f"grads {est.grad_bytes / GIB:.2f}; predicted step peak above model+optimizer {est.step_delta / GIB:.2f} GiB")
