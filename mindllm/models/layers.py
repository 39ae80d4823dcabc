"""Transformer building blocks as MindSpore Cells, shared by every model in the course.

Parameter names and layouts follow Hugging Face GPT-2 (`weight`/`bias`, Linear weights stored (in, out) like
its Conv1D), so importing a checkpoint is a loop over names. Written with `ops.*` primitives that have CPU
kernels in MindSpore 2.10.

These are the plain formulations, the math a student reads. On CPU, `mindllm.kernels.fuse(model)` swaps some of
them for fused kernels after construction (same math in one pass, tested against these).
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..data.dataset import IGNORE


def mm_dtype(cell, *xs):
    """Cast matmul inputs to the cell's compute dtype (float16/bfloat16 under mixed precision). Weights and
    everything outside matmuls (LayerNorm, softmax, residual sums, the loss) stay float32."""
    if cell.compute_dtype == ms.float32:
        return xs
    return tuple(x.astype(cell.compute_dtype) for x in xs)


def tied_logits(cell, h, weight, matmul):
    """The LM head tied to the token embedding: h (B, T, C) @ weightᵀ -> logits (B, T, vocab), the matmul in the
    cell's compute dtype. `matmul` is the cell's ops.MatMul(transpose_b=True)."""
    B, T, C = h.shape
    a, w = mm_dtype(cell, h.reshape(B * T, C), weight)
    return matmul(a, w).astype(h.dtype).reshape(B, T, -1)


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
    """y = x @ weight + bias, weight of shape (in, out) as GPT-2's Conv1D; with out_in=True stored (out, in) as
    PyTorch's nn.Linear (BERT), so either checkpoint layout loads without transposing."""

    def __init__(self, n_in, n_out, bias=True, std=0.02, rng=None, out_in=False):
        super().__init__()
        self.weight = _normal((n_out, n_in) if out_in else (n_in, n_out), std, rng)
        self.bias = _const((n_out,), 0.0) if bias else None
        self.matmul = ops.MatMul(transpose_b=out_in)
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


def gelu_exact(x):
    """GELU as x·Φ(x) with the error function (BERT's `gelu`)."""
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


class MLP(nn.Cell):
    """Position-wise feed-forward network (FFN): Linear(C, hidden) -> activation -> Linear(hidden, C) -> dropout.
    GPT-2: hidden 4C with GELU; the original Transformer: ReLU."""

    def __init__(self, n_embd, dropout=0.0, bias=True, proj_std=0.02, hidden=None, activation="gelu"):
        super().__init__()
        hidden = hidden or 4 * n_embd
        self.c_fc = Linear(n_embd, hidden, bias)
        self.c_proj = Linear(hidden, n_embd, bias, std=proj_std)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = activation == "relu"

    def construct(self, x):
        h = self.c_fc(x)
        h = ops.relu(h) if self.relu else gelu(h)
        return self.dropout(self.c_proj(h))


NEG_INF = -1e9  # an additive mask value: exp() of it is 0 in float32, and it stays finite (no NaN from inf - inf)


def causal_mask(T):
    """(1, T, T) additive mask: 0 where key position <= query position, NEG_INF above the diagonal (the future)."""
    return Tensor(np.triu(np.full((1, T, T), NEG_INF, np.float32), k=1))


def padding_mask(ids, pad_id):
    """(B, 1, T) additive mask from token ids (B, T): NEG_INF at padding keys, so no query attends to them."""
    return ((ids == pad_id).astype(ms.float32) * NEG_INF).reshape(ids.shape[0], 1, ids.shape[1])


class Attention(nn.Cell):
    """Scaled dot-product attention, softmax(q kᵀ / sqrt(d_k) + mask) v, over heads folded into the batch axis:
    q (B*nh, Tq, hs), k and v (B*nh, Tk, hs), mask additive and broadcastable to (B*nh, Tq, Tk). No parameters:
    every attention layer of the course calls this one implementation."""

    def __init__(self, head_size, dropout=0.0):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_size)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.av = ops.BatchMatMul()
        self.dropout = nn.Dropout(p=dropout)
        self.compute_dtype = ms.float32

    def weights(self, q, k, mask):
        """The attention weights (B*nh, Tq, Tk); each row sums to 1."""
        att = self.qk(*mm_dtype(self, q, k)).astype(q.dtype) * self.scale
        if mask is not None:
            # broadcast by hand: MindSpore's CPU graphs hold an implicit broadcast's buffers (~4x its output) until
            # the graph ends (measured: 160 MB of MiniLM prompt tuning's peak)
            att = att + ops.broadcast_to(mask, att.shape)
        return ops.softmax(att, -1)

    def construct(self, q, k, v, mask=None):
        att = self.weights(q, k, mask)
        return self.av(*mm_dtype(self, self.dropout(att), v)).astype(q.dtype)


def split_heads(x, n_head):
    """(B, T, C) -> (B*nh, T, hs): heads folded into the batch axis, so attention is one 3-D BatchMatMul."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3).reshape(B * n_head, T, C // n_head)


def merge_heads(y, B):
    """(B*nh, T, hs) -> (B, T, C)."""
    BH, T, hs = y.shape
    nh = BH // B
    return y.reshape(B, nh, T, hs).transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def per_head(mask, n_head):
    """A per-example mask (B, Tq|1, Tk) repeated for each head, in split_heads' (B*nh) order."""
    return ops.repeat_elements(mask, n_head, 0)


class MultiHeadAttention(nn.Cell):
    """Multi-head attention (多头注意力) with separate q/k/v projections: self-attention when `memory` is None,
    encoder–decoder (cross) attention when queries come from x and keys/values from `memory`.
    `mask` is additive, (B, Tq|1, Tk) per example or (1, Tq, Tk) shared (combine with +)."""

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True):
        super().__init__()
        self.n_head = n_head
        self.q_proj = Linear(n_embd, n_embd, bias)
        self.k_proj = Linear(n_embd, n_embd, bias)
        self.v_proj = Linear(n_embd, n_embd, bias)
        self.out_proj = Linear(n_embd, n_embd, bias)
        self.attention = Attention(n_embd // n_head, dropout)
        self.dropout = nn.Dropout(p=dropout)

    def _qkv_mask(self, x, memory, mask):
        kv = x if memory is None else memory
        q, k, v = (split_heads(t, self.n_head) for t in (self.q_proj(x), self.k_proj(kv), self.v_proj(kv)))
        if mask is not None and mask.shape[0] != 1:
            mask = per_head(mask, self.n_head)
        return q, k, v, mask

    def construct(self, x, memory=None, mask=None):
        q, k, v, mask = self._qkv_mask(x, memory, mask)
        y = merge_heads(self.attention(q, k, v, mask), x.shape[0])
        return self.dropout(self.out_proj(y))

    def attention_weights(self, x, memory=None, mask=None):
        """The weights this layer would use, (B, nh, Tq, Tk), for plots."""
        q, k, _, mask = self._qkv_mask(x, memory, mask)
        w = self.attention.weights(q, k, mask)
        return w.reshape(x.shape[0], self.n_head, w.shape[1], w.shape[2])


class SinusoidalPositions(nn.Cell):
    """The original Transformer's fixed positional encoding (位置编码):
    PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)). No parameters."""

    def __init__(self, max_len, dim):
        super().__init__()
        self.table = Tensor(sinusoidal_table(max_len, dim))

    def construct(self, positions):
        return ops.gather(self.table, positions, 0)


def sinusoidal_table(max_len, dim):
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    freq = np.power(10000.0, -np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((max_len, dim), np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, :dim // 2]
    return table.astype(np.float32)


def write_cache(cache, k, v, pos):
    """A static KV cache step: write k, v (BH, T, hs) into rows pos..pos+T-1 of cache = (k, v) of shape
    (BH, block, hs); return the full keys and values and the (T, block) mask of the keys each query may see.
    The write is a one-hot matmul, so shapes never change and one compiled graph serves every position."""
    block, T = cache[0].shape[1], k.shape[1]
    slots = ops.arange(block, dtype=ms.int32)
    rows = pos + ops.arange(T, dtype=ms.int32)  # absolute positions of the new tokens
    write = (slots.reshape(1, -1) == rows.reshape(-1, 1)).astype(k.dtype)  # (T, block) one-hot
    keep = (1.0 - write.sum(0)).reshape(1, -1, 1)
    place = ops.tile(write.transpose(1, 0).reshape(1, block, T), (k.shape[0], 1, 1))
    k = cache[0] * keep + ops.bmm(place, k)  # (BH, block, hs)
    v = cache[1] * keep + ops.bmm(place, v)
    visible = slots.reshape(1, -1) <= rows.reshape(-1, 1)  # (T, block): keys at or before each query
    mask = ops.select(visible, ops.zeros_like(write), ops.full_like(write, NEG_INF))
    return k, v, mask


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
        self.attention = Attention(n_embd // n_head, dropout)
        self.resid_dropout = nn.Dropout(p=dropout)
        self.mask = causal_mask(block_size)[0]
        self.compute_dtype = ms.float32

    def construct(self, x, cache=None, pos=None):
        B, T, C = x.shape
        q, k, v = ops.split(self.c_attn(x), C, axis=2)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B*nh, T, hs)
        if cache is None:
            mask = self.mask[:T, :T]
        else:
            k, v, mask = write_cache(cache, k, v, pos)
        y = merge_heads(self.attention(q, k, v, mask), B)  # attention over (T | block) keys -> (B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class EncoderLayer(nn.Cell):
    """Self-attention + FFN, each wrapped in a residual connection and LayerNorm (Add & Norm, 残差连接与层归一化).
    norm_first=False is the original post-LN, x = LN(x + f(x)); True is pre-LN, x = x + f(LN(x)), which trains
    without warmup tricks and is what GPT-2 and most later models use."""

    def __init__(self, n_embd, n_head, ffn_dim, dropout=0.0, norm_first=True, activation="relu"):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(n_embd, n_head, dropout)
        self.ln_1 = LayerNorm(n_embd)
        self.ffn = MLP(n_embd, dropout, hidden=ffn_dim, activation=activation)
        self.ln_2 = LayerNorm(n_embd)

    def construct(self, x, mask=None):
        if self.norm_first:
            h = self.ln_1(x)
            x = x + self.self_attn(h, None, mask)
            return x + self.ffn(self.ln_2(x))
        x = self.ln_1(x + self.self_attn(x, None, mask))
        return self.ln_2(x + self.ffn(x))


class DecoderLayer(nn.Cell):
    """Masked self-attention over the target prefix, encoder–decoder attention over the source, FFN; each with
    Add & Norm as in EncoderLayer."""

    def __init__(self, n_embd, n_head, ffn_dim, dropout=0.0, norm_first=True, activation="relu"):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(n_embd, n_head, dropout)
        self.ln_1 = LayerNorm(n_embd)
        self.cross_attn = MultiHeadAttention(n_embd, n_head, dropout)
        self.ln_2 = LayerNorm(n_embd)
        self.ffn = MLP(n_embd, dropout, hidden=ffn_dim, activation=activation)
        self.ln_3 = LayerNorm(n_embd)

    def construct(self, x, memory, self_mask, memory_mask):
        if self.norm_first:
            h = self.ln_1(x)
            x = x + self.self_attn(h, None, self_mask)
            x = x + self.cross_attn(self.ln_2(x), memory, memory_mask)
            return x + self.ffn(self.ln_3(x))
        x = self.ln_1(x + self.self_attn(x, None, self_mask))
        x = self.ln_2(x + self.cross_attn(x, memory, memory_mask))
        return self.ln_3(x + self.ffn(x))


def cross_entropy(logits, targets, ignore_index: int = IGNORE, label_smoothing: float = 0.0):
    """Mean negative log-likelihood of `targets` (B, T) under `logits` (B, T, V); `ignore_index` positions
    (padding, prompt tokens) contribute nothing. With label smoothing ε the target distribution is
    (1-ε)·onehot + ε/V, which keeps logits from growing without bound."""
    V = logits.shape[-1]
    logp = ops.log_softmax(logits.reshape(-1, V), -1)
    t = targets.reshape(-1)
    keep = (t != ignore_index).astype(logp.dtype)
    nll = -ops.gather_elements(logp, 1, (t * (t != ignore_index).astype(t.dtype)).reshape(-1, 1)).reshape(-1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return (nll * keep).sum() / ops.maximum(keep.sum(), 1.0)
