"""The curated mutant list for kernels/ (and the model's mask plumbing).

Each mutant is a small, deliberate bug: an exact-text substitution in one
file (`find` must occur exactly once there), the kind of site it hits
(masking, scaling, span, reduction), the tests that must fail when it is
applied, and why it matters. run_kernel_mutants.py applies them one at a
time to a copy of the tree. When kernel code moves, update `find` here in
the same change, so the mutant keeps guarding the new code.
"""
from __future__ import annotations

from dataclasses import dataclass

ATT = "kernels/attention.py"
REVIN = "kernels/revin.py"
GATED = "kernels/gated_norm.py"
TILES = "kernels/_tiles.py"
NORM_LINEAR = "kernels/norm_linear.py"
FEED_FORWARD = "kernels/feed_forward.py"
CHUNKING = "kernels/chunking.py"
EMBEDDING = "kernels/embedding.py"
GELU = "kernels/gelu.py"
POOLING = "kernels/pooling.py"
GELU_GEMM = "kernels/gelu_gemm.py"

ATT_PARITY = "tests/test_attention_triton.py::test_matches_float64_reference"
BOUNDARIES = "tests/test_block_boundaries.py"
REVIN_PARITY = "tests/test_norms_triton.py::test_revin_matches_float64_reference"
GATED_PARITY = "tests/test_norms_triton.py::test_gated_norm_matches_float64_reference"
FUSED_PARITY = "tests/test_fused_block.py::test_feed_forward_matches_float64_reference"
CHUNK_PARITY = "tests/test_ffn_row_chunks.py::test_chunked_feed_forward_matches_float64_reference"
TAIL_PARITY = "tests/test_ffn_gated_norm.py::test_matches_float64_reference"
GELU_ACCURACY = "tests/test_gelu.py"
ATT_BIAS = "tests/test_attention_triton.py::test_packed_bias_matches_float64_reference"
POOL_PARITY = "tests/test_norm_attention_pool.py::test_matches_float64_reference"
ATT_LAUNCH = "tests/test_attention_launch.py"
GELU_GEMM_FWD = "tests/test_gelu_gemm.py::test_forward_is_the_gemm_then_the_gelu_pass"
GELU_GEMM_BWD = "tests/test_gelu_gemm.py::test_backward_is_the_gelu_backward_of_the_product"
GELU_GEMM_OPS = "tests/test_gelu_gemm.py::test_ops_match_float64_reference"
FUSED_MASKS = ("tests/test_fused_block.py::test_kernel_masks_are_the_philox_reference_masks",
               "tests/test_fused_block.py::test_hidden_masks_are_the_philox_reference_masks")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    kind: str  # masking | scaling | span | reduction
    find: str
    replace: str
    tests: tuple[str, ...]
    why: str


MUTANTS = [
    # ------------------------------------------------------------ the model's mask plumbing
    Mutant(
        "model-temporal-mask-all-true", "migt/model.py", "masking",
        "for block, params in zip(self.temporal_blocks, temporal_params):\n"
        "            x = self._run_block(block, x, attention_mask, params)",
        "for block, params in zip(self.temporal_blocks, temporal_params):\n"
        "            x = self._run_block(block, x, torch.ones_like(attention_mask), params)",
        ("tests/test_padding_extension.py",),
        "temporal blocks attend to padded keys; every forecast of a short day changes (issue 15)",
    ),
    # ------------------------------------------------------------ attention: span
    Mutant(
        "attention-span-end-short", ATT, "span",
        "end = torch.where(mask, idx + 1, 0).amax(1)",
        "end = torch.where(mask, idx, 0).amax(1)",
        (BOUNDARIES,),
        "the last valid step is dropped when it opens a block (issue 15: slots 64, 128, ...)",
    ),
    Mutant(
        "attention-span-start-late", ATT, "span",
        "first = torch.where(mask, idx, steps).amin(1)",
        "first = torch.where(mask, idx + 1, steps).amin(1)",
        (BOUNDARIES,),
        "the first valid step is dropped when it closes a block",
    ),
    Mutant(
        "attention-loop-end-short", ATT, "span",
        "    return (first // BLOCK) * BLOCK, end\n",
        "    return (first // BLOCK) * BLOCK, end - 1\n",
        (BOUNDARIES,),
        "the kernel's key/query loop stops one step early: same effect as a short span, inside the kernel",
    ),
    Mutant(
        "attention-step-bound-inclusive", ATT, "span",
        "    in_range = offs < n_steps\n",
        "    in_range = offs <= n_steps\n",
        (ATT_PARITY,),
        "step T (past the end: the next sample's mask and rows) is read as a valid key",
    ),
    # ------------------------------------------------------------ attention: masking
    Mutant(
        "attention-step-mask-ignored", ATT, "masking",
        "ok = tl.load(MASK + b * sm_b + offs * sm_t, mask=in_range, other=0) != 0",
        "ok = in_range",
        (ATT_PARITY,),
        "the time kernels treat every in-range step as valid",
    ),
    Mutant(
        "attention-scores-unmasked", ATT, "masking",
        '    s = tl.where(key_ok[None, :], s, float("-inf"))\n',
        "",
        (ATT_PARITY,),
        "padded keys (loaded as 0) get score 0 instead of -inf in the forward",
    ),
    Mutant(
        "attention-bwd-pairs-ignore-keys", ATT, "masking",
        "pair_ok = row_ok[:, None] & key_ok[None, :]",
        "pair_ok = row_ok[:, None] | key_ok[None, :]",
        (ATT_PARITY,),
        "the backward recomputes probabilities for padded keys and padded rows",
    ),
    Mutant(
        "attention-padded-rows-written", ATT, "masking",
        "has_key = row_ok & (l_i > 0)",
        "has_key = l_i > 0",
        (ATT_PARITY,),
        "padded query rows get an average of the valid values instead of 0",
    ),
    Mutant(
        "attention-var-step-mask-ignored", ATT, "masking",
        "step_ok = tl.load(MASK + b * sm_b + t * sm_t) != 0",
        "step_ok = t >= 0",
        (ATT_PARITY,),
        "along variables, padded steps are attended (and their NaN read) instead of written as 0",
    ),
    # ------------------------------------------------------------ attention: scaling
    Mutant(
        "attention-fwd-scale-not-base2", ATT, "scaling",
        "    qk_scale = scale * LOG2E\n    strides =",
        "    qk_scale = scale\n    strides =",
        (ATT_PARITY,),
        "exp2 of natural-log scores: the forward's softmax temperature is off by log2(e)",
    ),
    Mutant(
        "attention-bwd-scale-not-base2", ATT, "scaling",
        "    qk_scale = scale * LOG2E\n    qkv_strides =",
        "    qk_scale = scale\n    qkv_strides =",
        (ATT_PARITY,),
        "the backward recomputes probabilities with another scale than the forward's LSE",
    ),
    Mutant(
        "attention-dk-unscaled", ATT, "scaling",
        "(dk * scale).to(DK.dtype.element_ty)",
        "dk.to(DK.dtype.element_ty)",
        (ATT_PARITY,),
        "dk along time misses the softmax scale",
    ),
    Mutant(
        "attention-dq-unscaled", ATT, "scaling",
        "    dq = dq * scale\n",
        "",
        (ATT_PARITY,),
        "dq along time misses the softmax scale",
    ),
    Mutant(
        "attention-var-dq-unscaled", ATT, "scaling",
        "dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale",
        "dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)",
        (ATT_PARITY,),
        "dq along variables misses the softmax scale",
    ),
    Mutant(
        "attention-default-scale", ATT, "scaling",
        "scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None",
        "scale = 1.0 / q.shape[-1] if scale is None",
        (ATT_PARITY,),
        "the default softmax scale is 1/Dh instead of 1/sqrt(Dh)",
    ),
    Mutant(
        "attention-packed-default-scale", ATT, "scaling",
        "scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None",
        "scale = 1.0 / qkv.shape[-1] if scale is None",
        ("tests/test_model_triton.py::test_triton_model_matches_reference",),
        "the packed entry point (the model's) has its own default scale",
    ),
    # ------------------------------------------------------------ attention: reduction
    Mutant(
        "attention-sum-not-rescaled", ATT, "reduction",
        "l_i = l_i * alpha + tl.sum(p, 1)",
        "l_i = l_i + tl.sum(p, 1)",
        (ATT_PARITY,),
        "the online softmax's running sum is not rescaled when the max grows (two or more key blocks)",
    ),
    Mutant(
        "attention-acc-not-rescaled", ATT, "reduction",
        "acc = acc * alpha[:, None] + tl.dot(",
        "acc = acc + tl.dot(",
        (ATT_PARITY,),
        "the online softmax's accumulator is not rescaled when the max grows",
    ),
    Mutant(
        "attention-any-is-all", ATT, "reduction",
        "return tl.max(flags.to(tl.int32), axis=0) > 0",
        "return tl.min(flags.to(tl.int32), axis=0) > 0",
        (ATT_PARITY,),
        "a block with some padding is skipped as if it had no valid step",
    ),
    Mutant(
        "attention-lse-without-sum", ATT, "reduction",
        "lse = tl.where(has_key, m_i + tl.log2(l_safe), 0.0)",
        "lse = tl.where(has_key, m_i, 0.0)",
        (ATT_PARITY,),
        "the saved log-sum-exp is only the max: the backward's probabilities are unnormalised",
    ),
    Mutant(
        "attention-delta-without-do", ATT, "reduction",
        "delta = tl.sum(o * do.to(tl.float32), 1)  # [BLOCK_M]",
        "delta = tl.sum(o, 1)  # [BLOCK_M]",
        (ATT_PARITY,),
        "the time backward's rowsum(dO * O) loses dO",
    ),
    # ------------------------------------------------------------ RevIN
    Mutant(
        "revin-padded-steps-in-stats", REVIN, "masking",
        "ok = step_ok[:, None] & v_ok[None, :]",
        "ok = t_in[:, None] & v_ok[None, :]",
        (REVIN_PARITY,),
        "padded steps (NaN in the tests) enter the mean and variance",
    ),
    Mutant(
        "revin-count-off-by-one", REVIN, "span",
        "count = tl.maximum(tl.sum(count_t, 0), 1.0)  # a sample with no valid step",
        "count = tl.maximum(tl.sum(count_t, 0) + 1.0, 1.0)  # a sample with no valid step",
        (REVIN_PARITY,),
        "the forward divides by one step too many",
    ),
    Mutant(
        "revin-eps-not-squared", REVIN, "scaling",
        "eps_hi, eps_lo = split_float32(eps * eps)",
        "eps_hi, eps_lo = split_float32(eps)",
        (REVIN_PARITY, "tests/test_norms_triton.py::test_revin_awkward_series_fp32"),
        "std = sqrt(var + eps) instead of sqrt(var + eps**2): distorts returns with std near 1e-3",
    ),
    Mutant(
        "revin-unbiased-variance", REVIN, "reduction",
        "var = tl.maximum(tl.sum(dev_sq, 0) / count - shift * shift, 0.0)",
        "var = tl.maximum(tl.sum(dev_sq, 0) / (count - 1.0) - shift * shift, 0.0)",
        (REVIN_PARITY,),
        "the unbiased variance instead of the biased one of the contract",
    ),
    Mutant(
        "revin-dx-mean-term-dropped", REVIN, "reduction",
        "dx = (gy * w[None, :] - mean_gz[None, :] - z * mean_gzz[None, :]) * inv_std[None, :]",
        "dx = (gy * w[None, :] - z * mean_gzz[None, :]) * inv_std[None, :]",
        (REVIN_PARITY,),
        "dx forgets the gradient through the mean",
    ),
    Mutant(
        "revin-dx-padding-written", REVIN, "masking",
        "            dx = tl.where(ok, dx, 0.0)\n",
        "",
        (REVIN_PARITY,),
        "padded steps get a nonzero dx",
    ),
    # ------------------------------------------------------------ LayerNorm rows (kernels/_tiles.py):
    # shared by the gated norm and the fused block, so both parity tests guard them
    Mutant(
        "layer-norm-mean-over-block", TILES, "reduction",
        "mean = tl.sum(x, 1) / n_cols",
        "mean = tl.sum(x, 1) / x.shape[1]",
        (GATED_PARITY, FUSED_PARITY),
        "the LayerNorm mean divides by the padded tile width when D is not a power of two",
    ),
    Mutant(
        "layer-norm-padded-columns-in-variance", TILES, "masking",
        "centred = tl.where(ok, x - mean[:, None], 0.0)",
        "centred = x - mean[:, None]",
        (GATED_PARITY, FUSED_PARITY),
        "columns past D add mean**2 each to the variance",
    ),
    Mutant(
        "layer-norm-eps-dropped", TILES, "scaling",
        "rstd = 1.0 / tl.sqrt(var + eps_hi + eps_lo)",
        "rstd = 1.0 / tl.sqrt(var)",
        (GATED_PARITY, "tests/test_norms_triton.py::test_gated_norm_constant_row_and_extreme_gates"),
        "LayerNorm without eps: a constant row divides by zero",
    ),
    Mutant(
        "layer-norm-bwd-mean-over-block", TILES, "reduction",
        "mean_dxhat = tl.sum(dxhat, 1) / n_cols  # [BLOCK_M]",
        "mean_dxhat = tl.sum(dxhat, 1) / dxhat.shape[1]  # [BLOCK_M]",
        (GATED_PARITY, FUSED_PARITY),
        "the input gradient's mean term divides by the padded tile width",
    ),
    Mutant(
        "layer-norm-bwd-projection-over-block", TILES, "reduction",
        "mean_dxhat_xhat = tl.sum(dxhat * xhat, 1) / n_cols",
        "mean_dxhat_xhat = tl.sum(dxhat * xhat, 1) / (n_cols + 1)",
        (GATED_PARITY, FUSED_PARITY),
        "LayerNorm's input gradient keeps part of the component along xhat",
    ),
    # ------------------------------------------------------------ gated residual norm
    Mutant(
        "gated-bwd-rows-revisited", GATED, "span",
        "range(pid, tl.cdiv(N, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES)",
        "range(pid, tl.cdiv(N, BLOCK_M), 1, num_stages=LOOP_STAGES)",
        (GATED_PARITY,),
        "every backward program walks all later row blocks: dweight and dbias count rows several times",
    ),
    # ------------------------------------------------------------ fused block (issue 11): norm + dropout,
    # GELU + dropout, dropout + add (kernels/norm_linear.py, feed_forward.py, _tiles.py)
    Mutant(
        "fused-branch-dropout-unscaled", NORM_LINEAR, "scaling",
        "branch = tl.where(keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D), branch * scale, 0.0)",
        "branch = tl.where(keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D), branch, 0.0)",
        (FUSED_PARITY,),
        "inverted dropout without 1/(1-p): the residual branch shrinks by (1-p) in training only",
    ),
    Mutant(
        "fused-norm-bwd-residual-grad-dropped", NORM_LINEAR, "reduction",
        "dx += tl.load(dres_ptr + offs, mask=ok, other=0.0).to(ACC)",
        "dx += 0.0",
        (FUSED_PARITY,),
        "the residual stream's own gradient is lost: dx carries only the norm's",
    ),
    Mutant(
        "fused-norm-bwd-branch-grad-unmasked", NORM_LINEAR, "masking",
        "dbranch = tl.where(keep, dx * scale, 0.0)",
        "dbranch = dx * scale",
        (FUSED_PARITY,),
        "dropped elements still get a gradient: the backward ignores the forward's mask",
    ),
    Mutant(
        "fused-norm-bwd-dweight-unscaled", NORM_LINEAR, "reduction",
        "dw_acc += dh * xhat",
        "dw_acc += dh",
        (FUSED_PARITY,),
        "the norm weight's gradient forgets the normalised input",
    ),
    Mutant(
        "fused-philox-words-swapped", TILES, "masking",
        "words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))",
        "words = tl.interleave(tl.interleave(w0, w1), tl.interleave(w2, w3))",
        FUSED_MASKS,
        "the kernels' masks stop being the reference's (kernels/philox.py): parity with p > 0 breaks",
    ),
    Mutant(
        "fused-philox-halves-swapped", TILES, "masking",
        "draws = tl.interleave((words & 0xFFFF).to(tl.int32), (words >> 16).to(tl.int32))",
        "draws = tl.interleave((words >> 16).to(tl.int32), (words & 0xFFFF).to(tl.int32))",
        FUSED_MASKS,
        "each column takes its neighbour's 16-bit draw: the masks stop being the reference's",
    ),
    Mutant(
        "fused-philox-counter-per-row-overlap", TILES, "span",
        "groups = rows.to(tl.int64)[:, None] * groups_per_row + group_cols[None, :]",
        "groups = rows.to(tl.int64)[:, None] * (groups_per_row - 1) + group_cols[None, :]",
        FUSED_MASKS,
        "neighbouring rows share Philox counters: correlated masks",
    ),
    Mutant(
        "fused-gelu-bwd-derivative-cdf-only", GELU, "scaling",
        "return x * cdf, cdf + x * pdf",
        "return x * cdf, cdf",
        (FUSED_PARITY, GELU_ACCURACY),
        "GELU's derivative without its x * pdf(x) term",
    ),
    Mutant(
        "gelu-tail-sign-swapped", GELU, "scaling",
        "return tl.where(x < 0, tail, 1.0 - tail)",
        "return tl.where(x > 0, tail, 1.0 - tail)",
        (GELU_ACCURACY,),
        "the 16-bit normal CDF takes the lower tail for positive x: Phi(x) becomes Phi(-x)",
    ),
    Mutant(
        "gelu-tail-coefficient-dropped", GELU, "scaling",
        "poly = tl.fma(poly, u, _L3)",
        "poly = poly * u",
        (GELU_ACCURACY,),
        "one term of the tail polynomial lost: Phi off by up to a few percent in 16-bit",
    ),
    Mutant(
        "gelu-tail-unclamped", GELU, "span",
        "u = tl.fma(tl.minimum(tl.abs(x), _END), _U_SCALE, -1.0)",
        "u = tl.fma(tl.abs(x), _U_SCALE, -1.0)",
        (GELU_ACCURACY,),
        "the tail polynomial is evaluated past its fitted range, where it diverges",
    ),
    Mutant(
        "fused-gelu-fwd-not-16-bit-form", FEED_FORWARD, "scaling",
        "g = gelu(f, hidden_ptr.dtype.element_ty.primitive_bitwidth == 16)",
        "g = gelu(f, False)",
        ("tests/test_fused_block.py::test_gelu_backward_rewrites_the_forward_g_exactly",),
        "the forward's g (erf) and the backward's rewrite of it (tail polynomial) differ: fc2's weight "
        "gradient is taken against values the forward never used",
    ),
    Mutant(
        "fused-gelu-bwd-bias-grad-before-derivative", FEED_FORWARD, "reduction",
        "db_acc += df\n",
        "db_acc += dg\n",
        (FUSED_PARITY,),
        "fc1's bias gradient sums the gradient before GELU's derivative",
    ),
    Mutant(
        "fused-fc2-bias-grad-last-block-only", FEED_FORWARD, "reduction",
        "db_acc += df.to(ACC)  # the bias gradient sums the rounded df, as the GEMMs read it",
        "db_acc = df.to(ACC)",
        (FUSED_PARITY, "tests/test_fused_block.py::test_dropout_grad_sums_its_own_df_for_the_bias"),
        "fc2's bias gradient keeps only each program's last row block",
    ),
    Mutant(
        "fused-fc2-bias-grad-skips-df-write", FEED_FORWARD, "masking",
        "    write_df = has_dropout or dout.dtype != dtype",
        "    write_df = has_dropout",
        (FUSED_PARITY, "tests/test_fused_block.py::test_dropout_grad_sums_its_own_df_for_the_bias"),
        "without dropout, fc2's gradient in another dtype is never written (read uninitialised)",
    ),
    Mutant(
        "embedding-bwd-weight-grad-last-tile-only", EMBEDDING, "reduction",
        "dw_acc += g * y[:, None]",
        "dw_acc = g * y[:, None]",
        ("tests/test_value_embedding.py::test_matches_float64_reference",),
        "each program's weight gradient keeps only its last tile of steps",
    ),
    Mutant(
        "embedding-bwd-pos-grad-last-variable-only", EMBEDDING, "reduction",
        "dpos += g",
        "dpos = g",
        ("tests/test_value_embedding.py::test_matches_float64_reference",),
        "the calendar gradient keeps only the last variable's share",
    ),
    Mutant(
        "fused-gelu-bwd-rewritten-g-unscaled", FEED_FORWARD, "scaling",
        "g = tl.where(keep, g * scale, 0.0)",
        "g = tl.where(keep, g, 0.0)",
        (FUSED_PARITY, "tests/test_fused_block.py::test_gelu_backward_rewrites_the_forward_g_exactly"),
        "the g the backward writes for fc2's weight gradient misses dropout's 1/(1-p)",
    ),
    Mutant(
        "fused-output-dropout-wrong-site", FEED_FORWARD, "masking",
        "return _dropout_rows(x, f, seeds, OUTPUT_SITE,",
        "return _dropout_rows(x, f, seeds, HIDDEN_SITE,",
        (FUSED_PARITY,),
        "the output dropout draws the hidden's mask in the forward and its own in the backward",
    ),
    Mutant(
        "fused-output-x-mid-wrong-site", FEED_FORWARD, "masking",
        "mid=branch, mid_site=BRANCH_SITE,",
        "mid=branch, mid_site=OUTPUT_SITE,",
        (FUSED_PARITY,),
        "the output add rebuilds x_mid with another mask than the norm saw: the residual drifts from the norm's input",
    ),
    Mutant(
        "fused-output-x-mid-unrounded", FEED_FORWARD, "scaling",
        "base = cast_for(base.to(MID_ACC) + mid, x_ptr)",
        "base = base.to(MID_ACC) + mid",
        ("tests/test_fused_block.py::test_every_pass_rebuilds_the_same_x_mid",),
        "with a half-precision stream the output adds an x_mid the norm never saw (1 ulp off)",
    ),
    Mutant(
        "fused-norm-bwd-x-mid-unrounded", NORM_LINEAR, "scaling",
        "x = cast_for(x.to(ACC) + branch, x_ptr)  # rounded as in the forward",
        "x = x.to(ACC) + branch  # rounded as in the forward",
        ("tests/test_fused_block.py::test_every_pass_rebuilds_the_same_x_mid",),
        "with a half-precision stream the norm backward normalises the unrounded x_mid",
    ),
    Mutant(
        "fused-norm-bwd-x-mid-not-rebuilt", NORM_LINEAR, "masking",
        "x = cast_for(x.to(ACC) + branch, x_ptr)  # rounded as in the forward",
        "x = x.to(ACC)  # rounded as in the forward",
        (FUSED_PARITY,),
        "the norm backward normalises the block input instead of x_mid = x + dropout(branch)",
    ),
    Mutant(
        "fused-hidden-dropout-unscaled", FEED_FORWARD, "scaling",
        "g = tl.where(kept, g * scale, 0.0)",
        "g = tl.where(kept, g, 0.0)",
        (FUSED_PARITY, *FUSED_MASKS),
        "the hidden's dropout without 1/(1-p)",
    ),
    Mutant(
        "fused-hidden-kept-despite-recompute", FEED_FORWARD, "span",
        "    hidden = (torch.empty((N, C), dtype=fc1_weight.dtype, device=x.device) if keep_hidden",
        "    keep_hidden = True\n    hidden = (torch.empty((N, C), dtype=fc1_weight.dtype, device=x.device) if keep_hidden",
        ("tests/test_fused_block.py::test_fused_blocks_keep_no_dropout_mask_and_one_hidden_at_most",),
        "recompute_ffn_hidden saves nothing: the (N, d_ff) pre-activation is kept anyway",
    ),
    Mutant(
        "ffn-chunk-hidden-mask-counts-from-zero", FEED_FORWARD, "masking",
        "g = gelu_dropout_fwd(hidden_rows, seeds, p, row0=start)",
        "g = gelu_dropout_fwd(hidden_rows, seeds, p)",
        (CHUNK_PARITY,),
        "every chunk of rows redraws the first chunk's hidden mask: dropout repeats across the batch",
    ),
    Mutant(
        "ffn-chunk-norm-bwd-mask-counts-from-zero", FEED_FORWARD, "masking",
        "site=BRANCH_SITE, p=p, row0=start, dx=dx, dbranch=dbranch,",
        "site=BRANCH_SITE, p=p, dx=dx, dbranch=dbranch,",
        (CHUNK_PARITY,),
        "the backward of a later chunk rebuilds x_mid with another branch mask than its forward",
    ),
    Mutant(
        "ffn-chunk-grads-not-summed", CHUNKING, "reduction",
        "                total.add_(grad)",
        "                pass",
        (CHUNK_PARITY,),
        "the parameter gradients keep only the first chunk's rows",
    ),
    Mutant(
        "ffn-chunk-weight-grads-rounded-per-chunk", FEED_FORWARD, "reduction",
        "weight_grad = mm_float32 if weight_grads_float32 else torch.mm",
        "weight_grad = torch.mm",
        ("tests/test_ffn_row_chunks.py::test_chunked_bf16_weight_gradients_are_summed_in_float32",),
        "each chunk's bf16 weight gradient is rounded before the sum: errors grow with the chunk count",
    ),
    Mutant(
        "ffn-chunk-weight-grads-left-float32", FEED_FORWARD, "span",
        "return [None, None, fc1_weight.dtype, None, fc2_weight.dtype, None]",
        "return [None] * 6",
        ("tests/test_ffn_row_chunks.py::test_chunked_ops_pass_opcheck",),
        "in several chunks dW1 and dW2 come back float32 where the op declares bf16: a compiled graph reads garbage",
    ),
    # ------------------------------------------------------------ a variable block's FFN + gate + gated norm
    # as one node (kernels/ffn_gated_norm.py): x's three gradients summed inside its kernels
    Mutant(
        "tail-dx-drops-gated-part", NORM_LINEAR, "reduction",
        "            dx_total += tl.load(dx_ptr + offs, mask=ok, other=0.0).to(ACC)",
        "            dx_total += 0.0",
        (TAIL_PARITY,),
        "the FFN's norm backward overwrites the gated norm's part of dx instead of adding to it",
    ),
    Mutant(
        "tail-dx-drops-gate-part", NORM_LINEAR, "reduction",
        "            dx_total += tl.load(dx_add_ptr + offs, mask=ok, other=0.0).to(ACC)",
        "            dx_total += 0.0",
        (TAIL_PARITY,),
        "the gate Linear's dg @ Wg never reaches dx",
    ),
    Mutant(
        "tail-dbranch-takes-x-only-gradients", NORM_LINEAR, "span",
        "        if HAS_BRANCH:\n            dbranch = dx\n",
        "        if HAS_BRANCH:\n            dbranch = dx_total\n",
        (TAIL_PARITY,),
        "the branch gets the gradients of x's direct uses, which do not pass through x_mid",
    ),
    Mutant(
        "tail-gate-bias-grad-not-summed", GATED, "reduction",
        "            dgb_acc += dg",
        "            dgb_acc += 0.0",
        (TAIL_PARITY,),
        "the gate bias gets a zero gradient",
    ),
    Mutant(
        "tail-bwd-logits-not-the-forward-ones", "kernels/ffn_gated_norm.py", "span",
        "logits = _gate_logits(x_low, gate_weight, gate_bias)",
        "logits = _gate_logits(x_low, gate_weight, gate_bias * 0)",
        (TAIL_PARITY,),
        "the backward's logits, made again, are not the forward's: every gradient uses another gate",
    ),
    Mutant(
        "tail-chunk-gate-weight-grad-left-float32", "kernels/ffn_gated_norm.py", "span",
        "+ [gate_weight.dtype, None, None, None]\n",
        "+ [None, None, None, None]\n",
        ("tests/test_ffn_gated_norm.py::test_ops_pass_opcheck",),
        "in several chunks the gate weight's gradient comes back float32 where the op declares bf16",
    ),
    Mutant(
        "tail-chunk-gate-weight-grad-rounded-per-chunk", "kernels/ffn_gated_norm.py", "reduction",
        "weight_grad = mm_float32 if several else torch.mm",
        "weight_grad = torch.mm",
        ("tests/test_ffn_gated_norm.py::test_chunked_bf16_gate_weight_gradient_is_summed_in_float32",),
        "each chunk's bf16 gate weight gradient is rounded before the sum",
    ),
    Mutant(
        "tail-inference-keeps-hidden", "kernels/ffn_gated_norm.py", "span",
        "keep_hidden = not recompute_hidden and torch.is_grad_enabled()",
        "keep_hidden = not recompute_hidden",
        ("tests/test_ffn_gated_norm.py::test_without_grad_keeps_no_hidden",),
        "inference makes and holds the (N, d_ff) hidden for the whole batch",
    ),
    # ------------------------------------------------------------ the QKV bias inside the attention kernels
    Mutant(
        "attention-bias-q-not-added", ATT, "masking",
        "    if HAS_BIAS:\n        q = _biased(q, _head_bias(BIAS, 0, h, n_heads, offs_d))\n    k_off",
        "    if HAS_BIAS:\n        q = q\n    k_off",
        (ATT_BIAS,),
        "the time forward scores q without its bias",
    ),
    Mutant(
        "attention-bias-v-not-added", ATT, "masking",
        "        out = _with_value_bias(out, BIAS, h, n_heads, offs_d, row_ok & (l_i > 0))",
        "        out = out",
        (ATT_BIAS,),
        "the time forward's output misses v's bias",
    ),
    Mutant(
        "attention-bias-v-on-padded-rows", ATT, "masking",
        "    return tl.where(has_key[:, None], out + _head_bias(BIAS, 2, h, n_heads, offs_d)[None, :], 0.0)",
        "    return out + _head_bias(BIAS, 2, h, n_heads, offs_d)[None, :]",
        (ATT_BIAS,),
        "padded rows get v's bias instead of 0",
    ),
    Mutant(
        "attention-bias-delta-keeps-bv", ATT, "scaling",
        "        o = tl.where(row_ok[:, None], o - _head_bias(BIAS, 2, h, n_heads, offs_d)[None, :], 0.0)",
        "        o = tl.where(row_ok[:, None], o, 0.0)",
        (ATT_BIAS,),
        "delta includes dO . bv while dP leaves v's bias out: every score gradient is shifted",
    ),
    Mutant(
        "attention-bias-dkdv-q-unbiased", ATT, "masking",
        "            q = _biased(q, q_bias)  # padded rows too: their ds is 0",
        "            q = q  # padded rows too: their ds is 0",
        (ATT_BIAS,),
        "dk is taken against q without its bias",
    ),
    Mutant(
        "attention-bias-dbq-unscaled", ATT, "scaling",
        "        _column_sums(DBQ_PART, tl.program_id(0), dq, offs_d)",
        "        _column_sums(DBQ_PART, tl.program_id(0), dq / scale, offs_d)",
        (ATT_BIAS,),
        "q's bias gradient misses the softmax scale",
    ),
    Mutant(
        "attention-bias-empty-block-partials-unwritten", ATT, "masking",
        "            _column_sums(DBQ_PART, tl.program_id(0), zeros, offs_d)\n",
        "",
        (ATT_BIAS,),
        "a query block of padding leaves its row of q's bias partials unwritten",
    ),
    Mutant(
        "attention-bias-partials-heads-and-blocks-swapped", ATT, "reduction",
        "sums = parts.view(2, B * V, H, cdiv(T, block_m), Dh).sum((1, 3)) if has_bias else None",
        "sums = parts.view(2, B * V, cdiv(T, block_m), H, Dh).sum((1, 2)) if has_bias else None",
        (ATT_BIAS,),
        "the host sums the time kernel's partial rows with heads and query blocks swapped (review of 39a5bb8)",
    ),
    Mutant(
        "attention-bias-var-v-not-added", ATT, "masking",
        "                        out = tl.where(tile_ok, out + v_bias[None, :], 0.0)",
        "                        out = tl.where(tile_ok, out, 0.0)",
        (ATT_BIAS,),
        "the variable kernel's output misses v's bias",
    ),
    Mutant(
        "attention-bias-var-padded-step-partials-unwritten", ATT, "masking",
        "                        tl.store(DBV_PART + part_ptrs, tl.zeros([HEAD_DIM], dtype=tl.float32))\n",
        "",
        (ATT_BIAS,),
        "a padded step leaves its row of v's bias partials unwritten",
    ),
    # ------------------------------------------------------------ attention launch settings a tuning run compares
    Mutant(
        "attention-launch-override-ignored", "kernels/attention_launch.py", "span",
        "    if kernel in LAUNCH_OVERRIDE and head_dim == TUNED_HEAD_DIM and dtype in TUNED_DTYPES:\n"
        "        block_m, block_n, warps, stages",
        "    if kernel in () and head_dim == TUNED_HEAD_DIM and dtype in TUNED_DTYPES:\n"
        "        block_m, block_n, warps, stages",
        (ATT_LAUNCH,),
        "the time kernels ignore a tuning run's setting: the sweep would time the table under every label",
    ),
    Mutant(
        "attention-launch-dkdv-grid-by-dq-blocks", ATT, "span",
        "_time_bwd_dkdv_kernel[(B * V * H * cdiv(T, kv_block_n),)]",
        "_time_bwd_dkdv_kernel[(B * V * H * cdiv(T, block_m),)]",
        (ATT_LAUNCH,),
        "the dk/dv grid counts the dq kernel's blocks: equal in the table, wrong once their settings differ",
    ),
    # ------------------------------------------------------------ the blocks' GEMM parameters cast together
    Mutant(
        "cast-together-gradients-cast-one-by-one", "kernels/param_cast.py", "reduction",
        "        return (None, *_split_as(_cat_as(grads, ctx.in_dtype), ctx.shapes))",
        "        return (None, *_split_as(_cat_as(grads, grads[0].dtype), ctx.shapes))",
        ("tests/test_cast_together.py",),
        "the gradients leave in 16 bits: autograd casts each to float32 on its own (the launches this saves)",
    ),
    Mutant(
        "cast-together-gradients-shifted", "kernels/param_cast.py", "reduction",
        "        return (None, *_split_as(_cat_as(grads, ctx.in_dtype), ctx.shapes))",
        "        return (None, *_split_as(_cat_as(grads, ctx.in_dtype).roll(1), ctx.shapes))",
        ("tests/test_cast_together.py",),
        "each gradient is read one element off in the concatenation",
    ),
    Mutant(
        "cast-together-frozen-copies-differentiable", "kernels/param_cast.py", "masking",
        "        ctx.mark_non_differentiable(*(o for o, t in zip(outs, tensors) if not t.requires_grad))\n",
        "",
        ("tests/test_cast_together.py",),
        "a frozen parameter's copy requires grad: the ops downstream compute a weight gradient nobody reads",
    ),
    Mutant(
        "model-block-ffn-ignores-cast-parameters", "migt/blocks.py", "masking",
        "        x, branch = self.fused_attention_half(x, mask, gemm_params)\n        w = gemm_params or self.gemm_parameters()",
        "        x, branch = self.fused_attention_half(x, mask, gemm_params)\n        w = self.gemm_parameters()",
        ("tests/test_cast_together.py",),
        "a temporal block's FFN casts its own weights again: twice the casts, two autograd paths to them",
    ),
    # ------------------------------------------------------------ final norm + attention pooling (kernels/pooling.py)
    Mutant(
        "pool-padded-steps-read", POOLING, "masking",
        "    ok = valid[:, None] & col_ok[None, :]\n",
        "    ok = in_range[:, None] & col_ok[None, :]\n",
        (POOL_PARITY,),
        "padded steps are loaded: NaN stored there reaches the norm statistics and every gradient",
    ),
    Mutant(
        "pool-fwd-padded-steps-scored", POOLING, "masking",
        'score = tl.where(valid, tl.sum(h * kq[None, :], 1) + c, float("-inf"))',
        'score = tl.where(valid | (t0 + tl.arange(0, BLOCK_T) < T), tl.sum(h * kq[None, :], 1) + c, float("-inf"))',
        (POOL_PARITY,),
        "padded steps get softmax weight: every short day's pooled vector changes",
    ),
    Mutant(
        "pool-fwd-slot-not-rescaled", POOLING, "scaling",
        "        slot_acc = slot_acc * rescale[:, None] + p[:, None] * h\n",
        "        slot_acc = slot_acc + p[:, None] * h\n",
        (POOL_PARITY,),
        "the online softmax forgets to rescale a slot's weighted sum when its max rises",
    ),
    Mutant(
        "pool-fwd-no-max-shift", POOLING, "scaling",
        "        shift = tl.where(new_max == float(\"-inf\"), 0.0, new_max)  # a slot with no valid step yet\n",
        "        shift = tl.zeros_like(new_max)  # a slot with no valid step yet\n",
        ("tests/test_norm_attention_pool.py::test_large_scores_keep_the_softmax_finite",),
        "scores are not shifted by their running max: exp overflows once they pass ~88 (float32)",
    ),
    Mutant(
        "pool-fwd-slots-combined-unscaled", POOLING, "scaling",
        "    total = tl.sum(slot_sum * rescale, 0)\n",
        "    total = tl.sum(slot_sum, 0)\n",
        (POOL_PARITY,),
        "the row slots' sums are added without bringing them to one max",
    ),
    Mutant(
        "pool-empty-series-divides-by-zero", POOLING, "masking",
        "    pooled = tl.sum(slot_acc * rescale[:, None], 0) / tl.where(total > 0, total, 1.0)",
        "    pooled = tl.sum(slot_acc * rescale[:, None], 0) / total",
        (POOL_PARITY, "tests/test_norm_attention_pool.py::test_padding_and_empty_series_give_zeros_and_finite_gradients"),
        "a series with no valid step pools to 0/0 = NaN instead of zeros",
    ),
    Mutant(
        "pool-bwd-score-grad-no-centring", POOLING, "scaling",
        "ds = a * (tl.sum(h * g[None, :], 1) - g_pooled)",
        "ds = a * tl.sum(h * g[None, :], 1)",
        (POOL_PARITY,),
        "the softmax backward misses the weighted mean: key and norm gradients drift",
    ),
    Mutant(
        "pool-bwd-norm-grads-last-tile-only", POOLING, "reduction",
        "        dw_acc += dh * xhat\n",
        "        dw_acc = dh * xhat\n",
        (POOL_PARITY,),
        "each series' norm weight gradient keeps only its last tile of steps",
    ),
    Mutant(
        "pool-bwd-key-grad-misses-kq-path", POOLING, "reduction",
        "dh = a[:, None] * g[None, :] + ds[:, None] * kq[None, :]",
        "dh = a[:, None] * g[None, :]",
        (POOL_PARITY,),
        "dx misses the gradient through the scores",
    ),
    Mutant(
        "pool-bwd-padded-dx-unwritten", POOLING, "masking",
        "tl.store(dx_ptr + offs, cast_for(dx, dx_ptr), mask=in_range[:, None] & col_ok[None, :])",
        "tl.store(dx_ptr + offs, cast_for(dx, dx_ptr), mask=ok)",
        (POOL_PARITY, "tests/test_norm_attention_pool.py::test_padding_and_empty_series_give_zeros_and_finite_gradients"),
        "dx at padded steps is never written (whatever the allocation held)",
    ),
    Mutant(
        "tail-gate-reads-x-mid", NORM_LINEAR, "masking",
        "    if STORE_X:  # x_new, or without a branch a copy of x (a residual handed on)\n",
        "    if STORE_X_LOW:\n        tl.store(x_low_ptr + offs, cast_for(x, x_low_ptr), mask=ok)\n"
        "    if STORE_X:  # x_new, or without a branch a copy of x (a residual handed on)\n",
        ("tests/test_fused_block.py::test_norm_pass_writes_x_itself_for_the_gate",),
        "the copy of x for the gate is written after the branch is added: the gate reads x_mid, not x",
    ),
    Mutant(
        "fused-branch-bias-not-added", TILES, "masking",
        "        branch += tl.load(branch_bias_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]",
        "        branch += 0.0",
        ("tests/test_fused_block.py::test_feed_forward_branch_bias_matches_float64_reference",),
        "out_proj's bias, moved out of its GEMM, never reaches the residual branch",
    ),
    Mutant(
        "fused-branch-bias-grad-before-dropout", NORM_LINEAR, "scaling",
        "                dbb_acc += dbranch  # 0 on padded rows (dh is); padded columns are masked at the store",
        "                dbb_acc += dx  # 0 on padded rows (dh is); padded columns are masked at the store",
        ("tests/test_fused_block.py::test_feed_forward_branch_bias_matches_float64_reference",),
        "the branch bias's gradient sums dx, not dbranch: the dropout mask and scale are missed",
    ),
    Mutant(
        "fused-output-x-mid-without-branch-bias", FEED_FORWARD, "masking",
        "            HAS_MID_BIAS=mid is not None and mid_bias is not None,",
        "            HAS_MID_BIAS=False,",
        ("tests/test_fused_block.py::test_feed_forward_branch_bias_matches_float64_reference",),
        "the output pass rebuilds x_mid without the branch bias the norm saw",
    ),
    Mutant(
        "fused-recomputed-h-without-branch-bias", FEED_FORWARD, "masking",
        "                                   fc1_weight.dtype, store_stats=False, row0=start, branch_bias=branch_bias)",
        "                                   fc1_weight.dtype, store_stats=False, row0=start)",
        ("tests/test_fused_block.py::test_feed_forward_branch_bias_matches_float64_reference",),
        "the backward recomputes h without the branch bias: fc1's weight gradient is taken against another input",
    ),
    Mutant(
        "ffn-chunk-branch-bias-grad-first-chunk-only", "kernels/ffn_gated_norm.py", "reduction",
        "        grads.add((*ffn_grads[:6], dgate_w, dgate_b, dnorm_w, dnorm_b, *ffn_grads[6:]))",
        "        grads.add((*ffn_grads[:6], dgate_w, dgate_b, dnorm_w, dnorm_b, *(g * (start == 0) for g in ffn_grads[6:])))",
        ("tests/test_ffn_gated_norm.py::test_in_chunks_matches_float64_reference",),
        "the variable tail's branch-bias gradient keeps only the first chunk's rows",
    ),
    # ------------------------------------------------------------ GELU in the GEMMs' epilogues
    Mutant(
        "gelu-gemm-forward-without-bias", GELU_GEMM, "scaling",
        "    return acc + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]",
        "    return acc",
        (GELU_GEMM_FWD, GELU_GEMM_OPS),
        "the epilogue forgets fc1's bias: the hidden and g of every row are off (and the recompute's)",
    ),
    Mutant(
        "gelu-gemm-forward-g-from-unrounded-hidden", GELU_GEMM, "scaling",
        "    g = gelu(hidden.to(tl.float32), True)",
        "    g = gelu(hidden.to(tl.float32) * 1.0001, True)",
        (GELU_GEMM_FWD,),
        "g not from the stored hidden's values: the backward, which reads the hidden, makes another g",
    ),
    Mutant(
        "gelu-gemm-k-loop-rereads-first-weight-step", GELU_GEMM, "span",
        "        b_ptrs += BLOCK_K * stride_bk",
        "        b_ptrs += 0",
        (GELU_GEMM_FWD, GELU_GEMM_BWD),
        "every K step multiplies by the weight's first 64 rows: wrong whenever d_model > 64",
    ),
    Mutant(
        "gelu-gemm-forward-bits-from-row-0", GELU_GEMM, "masking",
        "        kept = keep_tile(seed_ptr, SITE, row0 + rows, col_start, C, cut, BLOCK_N)\n"
        "        g = tl.where(kept, g * split_scalar(scale_hi, scale_lo, tl.float32), 0.0)",
        "        kept = keep_tile(seed_ptr, SITE, rows, col_start, C, cut, BLOCK_N)\n"
        "        g = tl.where(kept, g * split_scalar(scale_hi, scale_lo, tl.float32), 0.0)",
        (GELU_GEMM_FWD, GELU_GEMM_OPS),
        "a chunk's dropout bits count its rows from 0: every chunk after the first redraws the first one's mask",
    ),
    Mutant(
        "gelu-gemm-recompute-without-bias", GELU_GEMM, "scaling",
        "        hidden = _fc1_tile(h_ptr, w1_ptr, b1_ptr, rows, cols, col_ok, M, C, K, EVEN_K, BLOCK_M, BLOCK_N,\n"
        "                           BLOCK_K).to(g_ptr.dtype.element_ty)",
        "        hidden = (_fc1_tile(h_ptr, w1_ptr, b1_ptr, rows, cols, col_ok, M, C, K, EVEN_K, BLOCK_M, BLOCK_N,\n"
        "                           BLOCK_K) - tl.load(b1_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]).to(g_ptr.dtype.element_ty)",
        (GELU_GEMM_BWD, GELU_GEMM_OPS),
        "the backward's recompute of the hidden leaves out fc1's bias: GELU slopes at the wrong points",
    ),
    Mutant(
        "gelu-gemm-bias-grad-of-rows-past-the-end", GELU_GEMM, "reduction",
        "    dhidden = tl.where(ok, dg * slope, 0.0)",
        "    dhidden = dg * slope",
        (GELU_GEMM_BWD,),
        "the last row tile's rows past M (which computed row 0's products) join fc1's bias gradient",
    ),
    Mutant(
        "gelu-gemm-backward-output-site", FEED_FORWARD, "masking",
        "        dhidden, db1, g = gelu_gemm.dhidden_gelu(df, fc2_weight, hidden, seeds, p, HIDDEN_SITE, row0=start,",
        "        dhidden, db1, g = gelu_gemm.dhidden_gelu(df, fc2_weight, hidden, seeds, p, OUTPUT_SITE, row0=start,",
        (GELU_GEMM_OPS,),
        "the backward redraws the hidden's mask from the output dropout's seed: gradients through dropped units",
    ),
    Mutant(
        "fused-block-dropout-in-eval", "migt/blocks.py", "masking",
        "return self.dropout.p if self.training else 0.0",
        "return self.dropout.p",
        ("tests/test_fused_block.py::test_block_state_dict_moves_between_backends",),
        "the fused block drops activations in eval mode too",
    ),
]

assert len({m.id for m in MUTANTS}) == len(MUTANTS), "mutant ids must be unique"
