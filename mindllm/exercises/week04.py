"""Week 4 exercises: attention and the Transformer (notebook 04).
The references are mindllm's own layers: `Attention`, `MultiHeadAttention`, `causal_mask` + `padding_mask` (as the
decoder combines them), `sinusoidal_table`, and `cross_entropy` with label smoothing. Every check draws fresh random
inputs of several sizes, with the edge cases named in its messages."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ..data.dataset import IGNORE
from ..models.layers import (NEG_INF, Attention, MultiHeadAttention, causal_mask, cross_entropy, padding_mask,
                             sinusoidal_table)
from .core import Mismatch, exercise, expect_close, expect_equal


def _f32(a):
    return Tensor(np.ascontiguousarray(a, dtype=np.float32))


@exercise("week04.attention",
          hint="softmax(Q K^T / sqrt(d_k) + mask) V, the softmax over each row (the keys); subtract the row maximum "
               "before np.exp so large scores do not overflow")
def attention(student) -> int:
    """Q (Tq, d), K (Tk, d), V (Tk, dv), mask None or additive (Tq, Tk) -> output (Tq, dv)."""
    rng = np.random.default_rng(41)
    cases = []
    for tq, tk, d, dv in [(3, 3, 4, 4), (1, 1, 1, 1), (5, 7, 8, 3), (6, 6, 16, 16)]:
        cases.append((f"Q {tq}x{d}, K {tk}x{d}, V {tk}x{dv}, no mask", rng.normal(size=(tq, d)),
                      rng.normal(size=(tk, d)), rng.normal(size=(tk, dv)), None))
    t = 5
    causal = causal_mask(t).asnumpy()[0].astype(np.float64)
    cases.append(("a causal mask (5 tokens)", rng.normal(size=(t, 8)), rng.normal(size=(t, 8)),
                  rng.normal(size=(t, 4)), causal))
    keys = np.array([0, 0, 0, NEG_INF, NEG_INF, 0])  # keys 3 and 4 are padding
    cases.append(("a padding mask on keys 3 and 4 (4 queries, 6 keys)", rng.normal(size=(4, 8)),
                  rng.normal(size=(6, 8)), rng.normal(size=(6, 2)), np.broadcast_to(keys, (4, 6)).copy()))
    cases.append(("large scores (entries of Q and K about 30)", 30 * rng.normal(size=(4, 8)),
                  30 * rng.normal(size=(4, 8)), rng.normal(size=(4, 3)), None))
    for what, Q, K, V, mask in cases:
        att = Attention(head_size=Q.shape[1])
        want = att(_f32(Q[None]), _f32(K[None]), _f32(V[None]),
                   None if mask is None else _f32(mask[None])).asnumpy()[0]
        got = student(Q.copy(), K.copy(), V.copy(), None if mask is None else mask.copy())
        expect_close(got, want, f"the output for {what}", rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("week04.decoder_mask",
          hint="causal: block key j > query i (np.triu(..., k=1)); padding: block every key whose id is pad_id, "
               "for all queries; the decoder adds the two, so a blocked entry is -1e9 (or -2e9 where both block)")
def decoder_mask(student) -> int:
    """ids (B, T) token ids, pad_id -> additive mask (B, T, T): 0 where query i may read key j, <= -1e9 where not."""
    rng = np.random.default_rng(42)
    cases = [("two sequences padded with 0", np.array([[5, 7, 9, 3, 0, 0], [4, 8, 0, 0, 0, 0]]), 0),
             ("no padding at all", rng.integers(1, 20, (3, 5)), 0),
             ("one token", np.array([[7]]), 0),
             ("pad_id 2 (not 0)", np.array([[5, 9, 2, 2], [6, 7, 8, 2]]), 2)]
    lengths = rng.integers(1, 9, 4)
    ids = np.array([[int(rng.integers(3, 30)) for _ in range(n)] + [1] * (8 - n) for n in lengths])
    cases.append((f"random lengths {lengths.tolist()} padded with 1 to 8", ids, 1))
    for what, ids, pad in cases:
        T = ids.shape[1]
        want = causal_mask(T).asnumpy() + padding_mask(Tensor(ids.astype(np.int32)), pad).asnumpy()
        got = student(ids.copy(), pad)
        try:
            got = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            raise Mismatch(f"mask for {what}: got {type(got).__name__}, expected an array of numbers") from None
        if got.shape != want.shape:
            raise Mismatch(f"mask for {what}: shape {got.shape}, expected {want.shape} (batch, query, key)")
        blocked, allowed = want < NEG_INF / 2, want == 0
        if (got[allowed] != 0).any():
            b, i, j = (int(k) for k in np.argwhere(allowed & (got != 0))[0])
            raise Mismatch(f"mask for {what}: entry [{b}, {i}, {j}] is {got[b, i, j]:.3g}, expected 0 (query {i} "
                           f"may read key {j}, id {ids[b, j]})")
        if (got[blocked] > NEG_INF / 2).any():
            b, i, j = (int(k) for k in np.argwhere(blocked & (got > NEG_INF / 2))[0])
            why = "it is in the future" if j > i else f"key {j} is padding (id {pad})"
            raise Mismatch(f"mask for {what}: entry [{b}, {i}, {j}] is {got[b, i, j]:.3g}, expected -1e9 or less "
                           f"({why})")
        expect_equal(got < NEG_INF / 2, blocked, f"blocked entries for {what}")
    return len(cases)


@exercise("week04.position_shift",
          hint="column pair (2i, 2i+1) holds (sin p w_i, cos p w_i), w_i = 10000^(-2i/d); by the angle-addition "
               "formulas a shift by k rotates each pair: the 2x2 block is [[cos k w_i, -sin k w_i], "
               "[sin k w_i, cos k w_i]] (rows: input columns)")
def position_shift(student) -> int:
    """my_position_shift(k, dim) -> R (dim, dim) with PE[p + k] = PE[p] @ R for every position p."""
    n = 0
    for k, dim in [(1, 8), (0, 4), (5, 16), (3, 128), (-3, 8), (12, 2)]:
        p = np.arange(max(0, -k), 40)
        pe = sinusoidal_table(int(p.max()) + max(k, 0) + 1, dim).astype(np.float64)
        R = student(k, dim)
        try:
            R = np.asarray(R, dtype=np.float64)
        except (TypeError, ValueError):
            raise Mismatch(f"R for k={k}, dim={dim}: got {type(R).__name__}, expected a matrix") from None
        if R.shape != (dim, dim):
            raise Mismatch(f"R for k={k}, dim={dim}: shape {R.shape}, expected {(dim, dim)}")
        expect_close(pe[p] @ R, pe[p + k], f"PE[p] @ R for k={k}, dim={dim} (row = position p from {p[0]}), "
                                            f"compared with PE[p + k] from sinusoidal_table", rtol=0, atol=2e-5)
        expect_close(R @ R.T, np.eye(dim), f"R R^T for k={k}, dim={dim} (a rotation keeps lengths)", rtol=0,
                     atol=1e-6)
        n += 1
    return n


def _mha_case(rng, d, n_head, bias_scale=0.1):
    params = {}
    for n in "QKVO":
        params[f"W_{n}"] = 0.5 * rng.normal(size=(d, d))
        params[f"b_{n}"] = bias_scale * rng.normal(size=d)
    return params


def _mha_reference(x, params, n_head, mask):
    d = x.shape[1]
    mha = MultiHeadAttention(d, n_head=n_head)
    for n, proj in zip("QKVO", (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj)):
        proj.weight.set_data(_f32(params[f"W_{n}"]))  # stored (in, out): y = x W + b
        proj.bias.set_data(_f32(params[f"b_{n}"]))
    return mha(_f32(x[None]), mask=None if mask is None else _f32(mask[None])).asnumpy()[0]


@exercise("week04.multi_head_attention",
          hint="Q = x W_Q + b_Q (same for K, V); head h uses columns h*hs:(h+1)*hs of Q, K and V (hs = d / n_head) "
               "and divides its scores by sqrt(hs), not sqrt(d); concatenate the heads' outputs, then @ W_O + b_O")
def multi_head_attention(student) -> int:
    """x (T, d), params {W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O} (weights (d, d), y = x W + b), n_head, mask None or
    additive (T, T) -> (T, d)."""
    rng = np.random.default_rng(44)
    cases = [(3, 8, 2, False), (5, 12, 3, True), (1, 4, 1, False), (6, 16, 4, True), (4, 8, 8, False)]
    for T, d, n_head, causal in cases:
        x, params = rng.normal(size=(T, d)), _mha_case(rng, d, n_head)
        mask = causal_mask(T).asnumpy()[0].astype(np.float64) if causal else None
        want = _mha_reference(x, params, n_head, mask)
        got = student(x.copy(), {k: v.copy() for k, v in params.items()}, n_head, None if mask is None else mask.copy())
        expect_close(got, want, f"output for T={T}, d={d}, {n_head} head{'s' * (n_head > 1)}"
                                f"{', causal mask' if causal else ''}", rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("week04.smoothed_cross_entropy",
          hint="log-softmax over the last axis (subtract the max first); per position (1 - eps) * (-log p[target]) "
               "+ eps * mean over the V classes of (-log p); average over the positions whose target is not "
               "ignore_index")
def smoothed_cross_entropy(student) -> int:
    """logits (B, T, V), targets (B, T) ints (ignore_index = skip), eps -> the mean label-smoothed loss (a number)."""
    rng = np.random.default_rng(45)
    n = 0
    for B, T, V, eps, n_ignored, scale in [(2, 3, 5, 0.1, 0, 1.0), (1, 1, 2, 0.0, 0, 1.0), (4, 6, 14, 0.1, 5, 2.0),
                                           (3, 4, 7, 0.3, 2, 1.0), (2, 5, 11, 0.1, 3, 60.0)]:
        logits = scale * rng.normal(size=(B, T, V))
        targets = rng.integers(0, V, (B, T))
        targets.reshape(-1)[rng.choice(B * T, n_ignored, replace=False)] = IGNORE
        want = float(cross_entropy(_f32(logits), Tensor(targets.astype(np.int32)), label_smoothing=eps).asnumpy())
        got = student(logits.copy(), targets.copy(), eps, IGNORE)
        what = (f"loss for logits {B}x{T}x{V}, eps={eps}, {n_ignored} ignored position{'s' * (n_ignored != 1)}"
                + (f", logits about {scale:g}" if scale > 2 else ""))
        expect_close(got, want, what, rtol=1e-4, atol=1e-5)
        n += 1
    return n
