"""GPT: a GPT-2-style decoder-only Transformer in MindSpore, in reading order (after nanoGPT's model.py).

Parameter names equal Hugging Face GPT-2's state-dict keys (`transformer.h.0.attn.c_attn.weight`, ...), and the
LM head is tied to the token embedding, as in GPT-2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .layers import MLP, CausalSelfAttention, Embedding, LayerNorm, cross_entropy, mm_dtype, tied_logits  # noqa: F401


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True


class Block(nn.Cell):
    """Pre-LN Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale residual projections by depth
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.bias, proj_std)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.dropout, cfg.bias, proj_std)

    def construct(self, x, cache=None, pos=None):
        a, present = self.attn(self.ln_1(x), cache, pos)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class Transformer(nn.Cell):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding
        self.wpe = Embedding(cfg.block_size, cfg.n_embd, std=0.01)  # learned position embedding
        self.drop = nn.Dropout(p=cfg.dropout)
        self.h = nn.CellList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)


class GPT(nn.Cell):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)
        self.lm_head = ops.MatMul(transpose_b=True)  # logits = h @ wte.T (weights tied)
        self.compute_dtype = ms.float32

    def _logits(self, h):
        return tied_logits(self, h, self.transformer.wte.weight, self.lm_head)

    def construct(self, idx):
        """idx (B, T) int32 -> logits (B, T, vocab)."""
        logits, _ = self.forward_cached(idx)
        return logits

    def forward_cached(self, idx, cache=None, pos=None):
        """Like construct, with a static KV cache for generation: `cache` is a list of per-layer (k, v) of shape
        (B*nh, block_size, hs) and `pos` an int32 scalar Tensor, the position of idx's first token. Returns
        (logits, cache). Without a cache, the returned (k, v) of a full block_size input fill one."""
        h, presents = self.features(idx, cache, pos)
        return self._logits(h), presents

    def features(self, idx, cache=None, pos=None):
        """The last block's normalised output (B, T, n_embd), which the LM head reads (and a reward or value head
        does, in the alignment week), and the per-layer (k, v)."""
        B, T = idx.shape
        start = 0 if pos is None else pos
        x = self.transformer.drop(self.transformer.wte(idx) +
                                  self.transformer.wpe(start + ops.arange(T, dtype=ms.int32)))  # (B, T, C)
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, None if cache is None else cache[i], pos)
            presents.append(present)
        return self.transformer.ln_f(x), presents

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(int(np.prod(p.shape)) for p in self.get_parameters())
        if non_embedding:
            n -= int(np.prod(self.transformer.wpe.weight.shape))
        return n
