"""Llama: the modern decoder block (Llama, Qwen2, Mistral) in MindSpore, in reading order.

What changes from GPT-2's block (models/gpt.py), one idea each:
- RMSNorm (均方根归一化) instead of LayerNorm: no mean, no bias, x / rms(x) * weight;
- rotary position embedding, RoPE (旋转位置编码), instead of learned positions: q and k are rotated by an angle
  proportional to their position, so q·k depends on positions only through p - q;
- SwiGLU MLP: down(silu(gate(x)) * up(x)), a gated unit with three matrices;
- grouped-query attention, GQA (分组查询注意力): `n_kv_head` key/value heads, each shared by n_head / n_kv_head query
  heads, so the KV cache shrinks by that factor (MQA at n_kv_head = 1);
- no biases (Qwen2 keeps them on q, k, v), and an untied LM head;
- optionally a sparse mixture of experts in place of the MLP (Mixtral; models/moe.py).

Parameter names equal Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM` / `MixtralForCausalLM` state-dict keys
(`model.layers.0.self_attn.q_proj.weight`, ...), Linear weights stored (out, in) as in PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import (Attention, Embedding, Linear, _const, causal_mask, cross_entropy, merge_heads,  # noqa: F401
                     mm_dtype, split_heads, tied_logits, write_cache)
from .moe import SparseMoE


@dataclass
class LlamaConfig:
    vocab_size: int
    block_size: int = 64          # the longest context (Hugging Face: max_position_embeddings)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4            # key/value heads: n_head (multi-head), a divisor (GQA) or 1 (MQA)
    n_embd: int = 128
    intermediate_size: int = 0    # SwiGLU hidden width; 0 = about 8/3 * n_embd (same parameters as GPT's 4C MLP)
    rope_theta: float = 10000.0   # RoPE base θ: angle of pair i at position p is p * θ^(-2i/hs)
    rope_scaling: float = 1.0     # linear position interpolation: positions are divided by this factor
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False        # Qwen2: biases on q, k and v projections
    tie_word_embeddings: bool = False
    dropout: float = 0.0
    num_experts: int = 0          # > 0: each MLP is a sparse mixture of this many SwiGLU experts (Mixtral)
    experts_per_token: int = 2    # top-k routing
    capacity_factor: float = 0.0  # 0 = dropless; else each expert takes at most factor·N·k/E of N tokens
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in training

    @property
    def hidden(self) -> int:
        """SwiGLU's width: 2/3 of 4C so three matrices hold what GPT's two hold, rounded up to a multiple of 8."""
        return self.intermediate_size or 8 * math.ceil(8 * self.n_embd / 3 / 8)


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x²) + eps) * weight over the last axis: LayerNorm without centring and without a bias."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = _const((dim,), 1.0)
        self.eps = eps

    def construct(self, x):
        return x * ops.rsqrt((x * x).mean(-1, keep_dims=True) + self.eps) * self.weight


def rope_tables(block_size, head_size, theta=10000.0, scaling=1.0):
    """cos and sin tables (block_size, head_size) of RoPE's angles. Pair i of a head (dims i and i + hs/2, Hugging
    Face's layout) turns by angle (p / scaling) * θ^(-2i/hs) at position p."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs/2,)
    angles = np.outer(np.arange(block_size, dtype=np.float64) / scaling, inv_freq)      # (block, hs/2)
    angles = np.concatenate([angles, angles], axis=-1)                                   # (block, hs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a 90° turn of every pair (x1[i], x2[i])."""
    half = x.shape[-1] // 2
    return ops.concat((-x[..., half:], x[..., :half]), -1)


def apply_rope(x, cos, sin):
    """Rotate each pair of x (..., T, hs) by its position's angle: x·cos + rotate_half(x)·sin, cos/sin (T, hs)."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x, n_rep: int):
    """(B*n_kv, T, hs) -> (B*n_kv*n_rep, T, hs): each key/value head serves n_rep consecutive query heads."""
    return x if n_rep == 1 else ops.repeat_elements(x, n_rep, 0)


class LlamaAttention(nn.Cell):
    """Causal self-attention with RoPE on q and k and grouped key/value heads; the static KV cache holds the
    n_kv_head rotated keys and values (B*n_kv, block, hs), repeated for the query heads only when attending."""

    def __init__(self, cfg: LlamaConfig, proj_std=0.02):
        super().__init__()
        if cfg.n_embd % cfg.n_head or cfg.n_head % cfg.n_kv_head:
            raise ValueError(f"n_head={cfg.n_head} must divide n_embd={cfg.n_embd}, and n_kv_head={cfg.n_kv_head} "
                             f"must divide n_head")
        hs = cfg.n_embd // cfg.n_head
        self.n_head, self.n_kv_head, self.n_rep = cfg.n_head, cfg.n_kv_head, cfg.n_head // cfg.n_kv_head
        self.q_proj = Linear(cfg.n_embd, cfg.n_head * hs, cfg.qkv_bias, out_in=True)
        self.k_proj = Linear(cfg.n_embd, cfg.n_kv_head * hs, cfg.qkv_bias, out_in=True)
        self.v_proj = Linear(cfg.n_embd, cfg.n_kv_head * hs, cfg.qkv_bias, out_in=True)
        self.o_proj = Linear(cfg.n_head * hs, cfg.n_embd, False, std=proj_std, out_in=True)
        self.attention = Attention(hs, cfg.dropout)
        cos, sin = rope_tables(cfg.block_size, hs, cfg.rope_theta, cfg.rope_scaling)
        self.cos, self.sin = Tensor(cos), Tensor(sin)
        self.mask = causal_mask(cfg.block_size)[0]

    def construct(self, x, cache=None, pos=None):
        B, T, _ = x.shape
        q = split_heads(self.q_proj(x), self.n_head)     # (B*nh, T, hs)
        k = split_heads(self.k_proj(x), self.n_kv_head)  # (B*n_kv, T, hs)
        v = split_heads(self.v_proj(x), self.n_kv_head)
        positions = ops.arange(T, dtype=ms.int32) + (0 if pos is None else pos)
        cos, sin = ops.gather(self.cos, positions, 0), ops.gather(self.sin, positions, 0)  # (T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            mask = self.mask[:T, :T]
        else:
            k, v, mask = write_cache(cache, k, v, pos)
        y = self.attention(q, repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep), mask)  # (B*nh, T, hs)
        return self.o_proj(merge_heads(y, B)), (k, v)


class LlamaMLP(nn.Cell):
    """SwiGLU: down(silu(gate(x)) * up(x)); the gate decides, per hidden unit, how much of up(x) passes."""

    def __init__(self, cfg: LlamaConfig, proj_std=0.02):
        super().__init__()
        self.gate_proj = Linear(cfg.n_embd, cfg.hidden, False, out_in=True)
        self.up_proj = Linear(cfg.n_embd, cfg.hidden, False, out_in=True)
        self.down_proj = Linear(cfg.hidden, cfg.n_embd, False, std=proj_std, out_in=True)
        self.dropout = nn.Dropout(p=cfg.dropout)

    def construct(self, x):
        g = self.gate_proj(x)
        return self.dropout(self.down_proj(g * ops.sigmoid(g) * self.up_proj(x)))  # silu(g) = g·σ(g)


class LlamaDecoderLayer(nn.Cell):
    """Pre-norm block: x + attn(rmsnorm(x)), then x + mlp(rmsnorm(x)). Returns (x, present, router), router =
    (aux loss, expert load) of a mixture-of-experts MLP, None for a dense one."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # as GPT-2: residual projections scaled by depth
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, proj_std)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.moe = cfg.num_experts > 0
        self.mlp = SparseMoE(cfg.n_embd, cfg.hidden, cfg.num_experts, cfg.experts_per_token, cfg.capacity_factor,
                             proj_std) if self.moe else LlamaMLP(cfg, proj_std)

    def construct(self, x, cache=None, pos=None):
        a, present = self.self_attn(self.input_layernorm(x), cache, pos)
        x = x + a
        if not self.moe:
            return x + self.mlp(self.post_attention_layernorm(x)), present, None
        m, aux, load = self.mlp(self.post_attention_layernorm(x))
        return x + m, present, (aux, load)


class LlamaModel(nn.Cell):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.CellList([LlamaDecoderLayer(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)


class Llama(nn.Cell):
    """Decoder-only LM with the modern block. Same interface as GPT (construct, forward_cached, num_params), so
    training, sampling, LoRA and the KV-cache generator use it unchanged; `forward_with_router` adds the
    mixture-of-experts statistics training needs."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, False, out_in=True)
        self.tied_head = ops.MatMul(transpose_b=True)  # logits = h @ embed_tokens.T when tied
        self.compute_dtype = ms.float32

    def _logits(self, h):
        if not self.config.tie_word_embeddings:
            return self.lm_head(h)
        return tied_logits(self, h, self.model.embed_tokens.weight, self.tied_head)

    def construct(self, idx):
        """idx (B, T) int32 -> logits (B, T, vocab)."""
        logits, _ = self.forward_cached(idx)
        return logits

    def forward_cached(self, idx, cache=None, pos=None):
        """As GPT.forward_cached: `cache` a list of per-layer (k, v) of shape (B*n_kv_head, block_size, hs), `pos`
        an int32 scalar Tensor (position of idx's first token); returns (logits, cache)."""
        logits, presents, _ = self._forward(idx, cache, pos)
        return logits, presents

    def forward_with_router(self, idx):
        """(logits, aux loss: the mean of the MoE layers' load-balancing losses, load (n_moe_layers, E): each
        layer's share of routing choices per expert)."""
        logits, _, routers = self._forward(idx)
        aux = sum(r[0] for r in routers) / len(routers)
        return logits, aux, ops.stack([r[1] for r in routers])

    def _forward(self, idx, cache=None, pos=None):
        x = self.model.embed_tokens(idx)  # (B, T, C); positions enter inside attention, as rotations
        presents, routers = [], []
        for i, layer in enumerate(self.model.layers):
            x, present, router = layer(x, None if cache is None else cache[i], pos)
            presents.append(present)
            if router is not None:
                routers.append(router)
        return self._logits(self.model.norm(x)), presents, routers

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; RoPE has none, so non_embedding changes nothing (kept for GPT's signature)."""
        return sum(int(np.prod(p.shape)) for p in self.get_parameters())

    def active_params(self) -> int:
        """Parameters one token uses: a mixture of experts counts only its top-k experts (and the router)."""
        c = self.config
        if not c.num_experts:
            return self.num_params()
        per_expert = 3 * c.n_embd * c.hidden
        return self.num_params() - c.n_layer * (c.num_experts - c.experts_per_token) * per_expert

    def kv_cache_bytes(self, batch_size: int = 1) -> int:
        """float32 bytes of a full KV cache: 2 (k, v) x layers x batch x n_kv_head x block x head_size."""
        c = self.config
        return 2 * c.n_layer * batch_size * c.n_kv_head * c.block_size * (c.n_embd // c.n_head) * 4
