"""Transformer building blocks as MindSpore Cells, shared by every model in the course.

Parameter names and layouts follow Hugging Face GPT-2 (`weight`/`bias`, Linear weights stored (in, out) like
its Conv1D), so importing a checkpoint is a loop over names. Written with `ops.*` primitives that have CPU
kernels in MindSpore 2.10.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


def mm_dtype(cell, *xs):
    """Cast matmul inputs to the cell's compute dtype (float16/bfloat16 under mixed precision). Weights and
    everything outside matmuls (LayerNorm, softmax, residual sums, the loss) stay float32."""
    if cell.compute_dtype == ms.float32:
        return xs
    return tuple(x.astype(cell.compute_dtype) for x in xs)


def set_compute_dtype(model, dtype) -> None:
    """Mixed precision: run every matmul of `model` in `dtype` (results return to float32)."""
    for _, cell in model.cells_and_names():
        if hasattr(cell, "compute_dtype"):
            cell.compute_dtype = dtype


def _normal(shape, std, rng=None):
    rng = rng or np.random
    return Parameter(Tensor(rng.normal(0.0, std, size=shape).astype(np.float32)))


def _const(shape, value):
    return Parameter(Tensor(np.full(shape, value, dtype=np.float32)))


class Linear(nn.Cell):
    """y = x @ weight + bias, weight of shape (in, out) as GPT-2's Conv1D."""

    def __init__(self, n_in, n_out, bias=True, std=0.02, rng=None):
        super().__init__()
        self.weight = _normal((n_in, n_out), std, rng)
        self.bias = _const((n_out,), 0.0) if bias else None
        self.matmul = ops.MatMul()
        self.compute_dtype = ms.float32

    def construct(self, x):
        shape = x.shape
        a, w = mm_dtype(self, x.reshape(-1, shape[-1]), self.weight)
        y = self.matmul(a, w).astype(x.dtype)  # 2-D matmul: fastest kernel on CPU
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (y.shape[-1],))


class Embedding(nn.Cell):
    """A lookup table: row i of `weight` is the vector of id i."""

    def __init__(self, num, dim, std=0.02):
        super().__init__()
        self.weight = _normal((num, dim), std)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class LayerNorm(nn.Cell):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""

    def __init__(self, dim, bias=True, eps=1e-5):
        super().__init__()
        self.weight = _const((dim,), 1.0)
        self.bias = _const((dim,), 0.0) if bias else None
        self.eps = eps

    def construct(self, x):
        mean = x.mean(-1, keep_dims=True)
        xc = x - mean
        var = (xc * xc).mean(-1, keep_dims=True)
        y = xc * ops.rsqrt(var + self.eps) * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def gelu(x):
    """GELU, tanh approximation (GPT-2's `gelu_new`)."""
    return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class MLP(nn.Cell):
    """Position-wise feed-forward: Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout."""

    def __init__(self, n_embd, dropout=0.0, bias=True, proj_std=0.02):
        super().__init__()
        self.c_fc = Linear(n_embd, 4 * n_embd, bias)
        self.c_proj = Linear(4 * n_embd, n_embd, bias, std=proj_std)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x):
        return self.dropout(self.c_proj(gelu(self.c_fc(x))))


class CausalSelfAttention(nn.Cell):
    """Multi-head self-attention where position t attends to positions <= t.

    Heads are folded into the batch axis, (B, T, C) -> (B*nh, T, hs), so the two attention products are
    single 3-D BatchMatMuls. For generation, `cache` is a static KV cache: (k, v) of shape (B*nh, block, hs)
    plus `pos`, the position of x's first token. The new keys/values are written at pos..pos+T-1 and queries
    see cached positions <= their own. Shapes never change, so one compiled graph serves every step.
    """

    def __init__(self, n_embd, n_head, block_size, dropout=0.0, bias=True, proj_std=0.02):
        super().__init__()
        self.n_head, self.n_embd, self.block_size = n_head, n_embd, block_size
        self.c_attn = Linear(n_embd, 3 * n_embd, bias)  # q, k, v projections side by side
        self.c_proj = Linear(n_embd, n_embd, bias, std=proj_std)
        self.attn_dropout = nn.Dropout(p=dropout)
        self.resid_dropout = nn.Dropout(p=dropout)
        # Additive mask: 0 on and below the diagonal, a large negative number above (future positions).
        self.mask = Tensor(np.triu(np.full((block_size, block_size), -1e9, np.float32), k=1))
        self.scale = 1.0 / math.sqrt(n_embd // n_head)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.av = ops.BatchMatMul()
        self.compute_dtype = ms.float32

    def _split_heads(self, x, B, T):
        hs = self.n_embd // self.n_head
        return x.reshape(B, T, self.n_head, hs).transpose(0, 2, 1, 3).reshape(B * self.n_head, T, hs)

    def construct(self, x, cache=None, pos=None):
        B, T, C = x.shape
        q, k, v = ops.split(self.c_attn(x), C, axis=2)
        q, k, v = (self._split_heads(t, B, T) for t in (q, k, v))  # (B*nh, T, hs)
        if cache is None:
            mask = self.mask[:T, :T]
        else:
            k, v, mask = self._use_cache(cache, k, v, pos, T)
        att = self.qk(*mm_dtype(self, q, k)).astype(x.dtype) * self.scale + mask  # (B*nh, T, T|block)
        att = self.attn_dropout(ops.softmax(att, -1))
        y = self.av(*mm_dtype(self, att, v)).astype(x.dtype)  # (B*nh, T, hs)
        y = y.reshape(B, self.n_head, T, C // self.n_head).transpose(0, 2, 1, 3).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)

    def _use_cache(self, cache, k, v, pos, T):
        """Write k, v (B*nh, T, hs) into the cache rows pos..pos+T-1; return the full cache and its mask."""
        slots = ops.arange(self.block_size, dtype=ms.int32)
        rows = pos + ops.arange(T, dtype=ms.int32)  # absolute positions of the new tokens
        write = (slots.reshape(1, -1) == rows.reshape(-1, 1)).astype(k.dtype)  # (T, block) one-hot
        keep = (1.0 - write.sum(0)).reshape(1, -1, 1)
        place = ops.tile(write.transpose(1, 0).reshape(1, self.block_size, T), (k.shape[0], 1, 1))
        k = cache[0] * keep + self.av(place, k)  # (B*nh, block, hs)
        v = cache[1] * keep + self.av(place, v)
        visible = slots.reshape(1, -1) <= rows.reshape(-1, 1)  # (T, block): keys at or before each query
        mask = ops.select(visible, ops.zeros_like(write), ops.full_like(write, -1e9))
        return k, v, mask
