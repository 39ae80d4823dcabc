"""Week 12 exercises: the modern block (notebook 12). The references are the package's own: `RMSNorm`,
`apply_rope` with `rope_tables`, the attention core `Attention` with `repeat_kv`, `Llama.kv_cache_bytes` and the
cache `forward_cached` returns, and `SparseMoE`'s load-balancing loss. Every check draws fresh random cases from a
seeded generator, of several sizes, with the edge cases that break a first attempt."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ..models.layers import Attention, causal_mask
from ..models import llama
from ..models.moe import SparseMoE
from .core import Mismatch, exercise, expect_close, expect_equal


@exercise("week12.rmsnorm",
          hint="x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight: the mean of squares over the last axis "
               "only, eps inside the root, no mean subtracted (that would be LayerNorm)")
def rmsnorm(student) -> int:
    rng = np.random.default_rng(121)
    cases = [((3, 8), 1e-6), ((2, 5, 16), 1e-5), ((4, 1, 3, 32), 1e-6), ((1, 128), 0.1)]
    n = 0
    for shape, eps in cases:
        x = (rng.normal(size=shape) * rng.uniform(0.1, 30)).astype(np.float32)
        if n == 0:
            x[0] = 0.0                                       # zero vectors: eps keeps them finite (and 0)
        w = rng.normal(size=shape[-1]).astype(np.float32)
        norm = llama.RMSNorm(shape[-1], eps)
        norm.weight.set_data(Tensor(w))
        expect_close(student(x.copy(), w.copy(), eps), norm(Tensor(x)).asnumpy(),
                     f"my_rmsnorm on shape {shape}, eps {eps}", rtol=1e-4, atol=1e-5)
        n += 1
    return n


@exercise("week12.apply_rope",
          hint="angles = np.outer(positions, theta ** (-np.arange(0, d, 2) / d)), concatenated with itself to width d; "
               "return x * cos(angles) + concat(-x[:, d/2:], x[:, :d/2]) * sin(angles)")
def apply_rope(student) -> int:
    rng = np.random.default_rng(122)
    n = 0
    for T, d, theta, start in [(5, 8, 10000.0, 0), (16, 32, 10000.0, 0), (7, 64, 500000.0, 100), (3, 4, 10.0, 9)]:
        x = rng.normal(size=(T, d)).astype(np.float32)
        positions = np.arange(start, start + T)
        cos, sin = llama.rope_tables(start + T, d, theta)
        want = llama.apply_rope(Tensor(x), Tensor(cos[start:]), Tensor(sin[start:])).asnumpy()
        expect_close(student(x.copy(), positions, theta), want,
                     f"my_apply_rope with T={T}, head size {d}, theta {theta:g}, positions {start}..{start + T - 1}",
                     rtol=1e-4, atol=1e-5)
        n += 1
    return n


def _reference_gqa(q, k, v, causal: bool) -> np.ndarray:
    rep = q.shape[0] // k.shape[0]
    mask = causal_mask(q.shape[1])[0] if causal else None
    return Attention(q.shape[-1])(Tensor(q), llama.repeat_kv(Tensor(k), rep), llama.repeat_kv(Tensor(v), rep), mask).asnumpy()


@exercise("week12.gqa",
          hint="k, v = np.repeat(k, h // h_kv, 0), np.repeat(v, ...) (repeat groups heads; tile would interleave), "
               "then softmax(q @ k^T / sqrt(d) + mask) @ v with mask -1e9 strictly above the diagonal when causal")
def gqa(student) -> int:
    rng = np.random.default_rng(123)
    n = 0
    for h, h_kv, T, d in [(4, 4, 6, 8), (4, 2, 7, 16), (8, 2, 5, 8), (6, 1, 9, 4), (2, 1, 1, 8)]:
        q, k, v = (rng.normal(size=(hh, T, d)).astype(np.float32) for hh in (h, h_kv, h_kv))
        for causal in (True, False):
            expect_close(student(q.copy(), k.copy(), v.copy(), causal), _reference_gqa(q, k, v, causal),
                         f"my_gqa with {h} query heads, {h_kv} KV heads, T={T}, causal={causal}",
                         rtol=1e-4, atol=1e-5)
            n += 1
    return n


@exercise("week12.kv_cache_bytes",
          hint="2 (keys and values) x n_layer x n_kv_head x head_size x seq_len x batch x bytes_per_value")
def kv_cache_bytes(student) -> int:
    rng = np.random.default_rng(124)
    n = 0
    for _ in range(6):
        n_head = int(rng.choice([2, 4, 8]))
        n_kv = int(rng.choice([k for k in (1, 2, 4, 8) if n_head % k == 0]))
        cfg = llama.LlamaConfig(vocab_size=50, block_size=int(rng.integers(8, 4096)), n_layer=int(rng.integers(1, 80)),
                          n_head=n_head, n_kv_head=n_kv, n_embd=n_head * int(rng.choice([4, 16, 128])))
        batch = int(rng.integers(1, 9))
        want = llama.Llama.kv_cache_bytes(type("M", (), {"config": cfg})(), batch)   # the formula, float32
        got = student(cfg.n_layer, n_kv, cfg.n_embd // n_head, cfg.block_size, batch, 4)
        expect_equal(got, want, f"my_kv_cache_bytes({cfg.n_layer}, {n_kv}, {cfg.n_embd // n_head}, {cfg.block_size}, "
                                f"{batch}, 4)")
        n += 1
    # against memory the model really holds: the cache forward_cached returns for a full block
    for n_kv in (4, 2, 1):
        m = llama.Llama(llama.LlamaConfig(vocab_size=30, block_size=16, n_layer=2, n_head=4, n_kv_head=n_kv, n_embd=32))
        _, cache = m.forward_cached(Tensor(np.zeros((2, 16), np.int32)))
        measured = sum(k.asnumpy().nbytes + v.asnumpy().nbytes for k, v in cache)
        expect_equal(student(2, n_kv, 8, 16, 2, 4), measured,
                     f"my_kv_cache_bytes for the cache a 2-layer Llama with {n_kv} KV heads holds (batch 2, 16 tokens)")
        n += 1
    if student(32, 8, 128, 4096, 1, 2) != 536870912:
        raise Mismatch("my_kv_cache_bytes(32, 8, 128, 4096, 1, 2) (Llama-3-8B, float16) should be 536,870,912 "
                       "(0.5 GiB)")
    return n + 1


@exercise("week12.load_balancing_loss",
          hint="f = np.bincount(chosen.ravel(), minlength=E) / N (each token makes k choices, so f sums to k); "
               "P = probs.mean(0); return E * (f * P).sum()")
def load_balancing_loss(student) -> int:
    rng = np.random.default_rng(125)
    n = 0
    for N, C, E, k in [(12, 16, 4, 2), (30, 8, 8, 2), (7, 8, 4, 1), (20, 16, 3, 3), (1, 8, 2, 1)]:
        moe = SparseMoE(C, 8, E, k)
        x = rng.normal(size=(1, N, C)).astype(np.float32) * rng.uniform(0.5, 20)   # large: a peaked router
        _, aux, _ = moe(Tensor(x))
        probs, idx, _ = moe.route(Tensor(x[0]))
        expect_close(student(probs.asnumpy().copy(), idx.asnumpy().copy()), float(aux.asnumpy()),
                     f"my_load_balancing_loss for {N} tokens, {E} experts, top-{k}", rtol=1e-4, atol=1e-5)
        n += 1
    even = np.full((4, 4), 0.25, np.float32), np.array([[0, 1], [2, 3], [0, 1], [2, 3]])
    expect_close(student(*even), 2.0, "my_load_balancing_loss for an even load (4 experts, top-2: the loss is k = 2)")
    return n + 1
