"""The encoder–decoder Transformer (Vaswani et al., 2017) in MindSpore, with greedy and beam-search decoding.

Source ids (B, S) -> encoder (self-attention over the source) -> memory (B, S, C); target prefix (B, T) ->
decoder (masked self-attention over the prefix, cross-attention over the memory) -> logits (B, T, V).
The layers are the course's shared ones (models/layers.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .layers import (DecoderLayer, Embedding, EncoderLayer, LayerNorm, Linear, SinusoidalPositions, causal_mask,
                     padding_mask)


@dataclass
class TransformerConfig:
    src_vocab: int
    tgt_vocab: int
    max_len: int = 64  # longest source or target sequence (positions)
    n_layer: int = 2  # encoder layers = decoder layers
    n_head: int = 4
    n_embd: int = 128
    ffn_dim: int = 512
    dropout: float = 0.1
    norm_first: bool = True
    positions: str = "sinusoidal"  # or "learned"
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class Seq2SeqTransformer(nn.Cell):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        C = cfg.n_embd
        self.src_embed = Embedding(cfg.src_vocab, C, std=C ** -0.5)
        self.tgt_embed = Embedding(cfg.tgt_vocab, C, std=C ** -0.5)
        # sqrt(C) x an embedding of std C^-1/2 gives unit-scale tokens, comparable to the sinusoids (paper, 3.4)
        self.embed_scale = math.sqrt(C)
        self.pos = (SinusoidalPositions(cfg.max_len, C) if cfg.positions == "sinusoidal"
                    else Embedding(cfg.max_len, C, std=0.02))
        self.drop = nn.Dropout(p=cfg.dropout)
        layer_args = (C, cfg.n_head, cfg.ffn_dim, cfg.dropout, cfg.norm_first)
        self.encoder = nn.CellList([EncoderLayer(*layer_args) for _ in range(cfg.n_layer)])
        self.decoder = nn.CellList([DecoderLayer(*layer_args) for _ in range(cfg.n_layer)])
        # pre-LN leaves the residual stream unnormalised: one final LayerNorm per stack
        self.enc_ln = LayerNorm(C) if cfg.norm_first else None
        self.dec_ln = LayerNorm(C) if cfg.norm_first else None
        self.lm_head = Linear(C, cfg.tgt_vocab)
        self.causal = causal_mask(cfg.max_len)

    def _embed(self, table, ids):
        positions = ops.arange(ids.shape[1], dtype=ms.int32)
        return self.drop(table(ids) * self.embed_scale + self.pos(positions))

    def encode(self, src):
        """src (B, S) -> memory (B, S, C) and the source padding mask (B, 1, S)."""
        src_mask = padding_mask(src, self.config.pad_id)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        if self.enc_ln is not None:
            x = self.enc_ln(x)
        return x, src_mask

    def decode(self, tgt_in, memory, src_mask):
        """Target prefix (B, T) -> logits (B, T, V). Position t sees target positions <= t only, so running the
        decoder on a padded prefix gives the same logits at t as on the prefix alone."""
        T = tgt_in.shape[1]
        self_mask = self.causal[:, :T, :T] + padding_mask(tgt_in, self.config.pad_id)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, self_mask, src_mask)
        if self.dec_ln is not None:
            x = self.dec_ln(x)
        return self.lm_head(x)

    def construct(self, src, tgt_in):
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def cross_attention(self, src, tgt_in):
        """Encoder–decoder attention weights of every decoder layer, [(B, nh, T, S), ...]: which source positions
        each target position reads. Replays decode() layer by layer (for plots, not speed)."""
        memory, src_mask = self.encode(src)
        T = tgt_in.shape[1]
        self_mask = self.causal[:, :T, :T] + padding_mask(tgt_in, self.config.pad_id)
        x = self._embed(self.tgt_embed, tgt_in)
        maps = []
        for layer in self.decoder:
            h = x + layer.self_attn(layer.ln_1(x), None, self_mask) if self.config.norm_first else \
                layer.ln_1(x + layer.self_attn(x, None, self_mask))
            maps.append(layer.cross_attn.attention_weights(layer.ln_2(h) if self.config.norm_first else h, memory,
                                                           src_mask))
            x = layer(x, memory, self_mask, src_mask)
        return maps

    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.get_parameters())


# -- decoding -----------------------------------------------------------------------------------------------------
class _Decoder:
    """Runs the decoder on a fixed-size (B, max_len) buffer, so one compiled graph serves every step; the encoder
    runs once per source batch and its memory is reused at every step."""

    def __init__(self, model: Seq2SeqTransformer, compile_: bool = True):
        self.model = model
        if not compile_:
            self.encode, self.decode = model.encode, model.decode
            return
        # One pair of compiled functions per model, reused by every call: a fresh ms.jit wrapper per call
        # compiles (and keeps) new graphs each time, which exhausted 24 GB in a notebook that decodes often.
        fns = model.__dict__.get("_compiled_decoding")
        if fns is None:
            fns = (ms.jit(model.encode), ms.jit(model.decode))
            object.__setattr__(model, "_compiled_decoding", fns)
        self.encode, self.decode = fns

    def log_probs(self, buf, t, memory, src_mask):
        """log p(next token | buf[:, :t+1]) for every row: (rows, V) float64."""
        logits = self.decode(Tensor(buf), memory, src_mask).asnumpy()[:, t].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def greedy_decode(model, src: np.ndarray, max_new: int | None = None, compile_: bool = True,
                  max_chunk: int = 256) -> list[list[int]]:
    """The most probable next token at every step, for a batch of sources (B, S); each output stops at EOS
    (not included). Rows go through in chunks padded to a power of two (<= max_chunk): every new batch shape
    compiles, and keeps, graphs of its own, so this bounds them to a handful however the function is called
    (a notebook decoding per-format subsets of every size ran out of 24 GB before)."""
    cfg = model.config
    model.set_train(False)
    max_new = min(max_new or cfg.max_len - 1, cfg.max_len - 1)
    dec = _Decoder(model, compile_)
    chunk = min(max_chunk, 1 << max(len(src) - 1, 0).bit_length())
    out = []
    for i in range(0, len(src), chunk):
        part = src[i:i + chunk].astype(np.int32)
        rows = len(part)
        part = np.concatenate([part, np.full((chunk - rows, part.shape[1]), cfg.pad_id, np.int32)])
        memory, src_mask = dec.encode(Tensor(part))
        buf = np.full((chunk, cfg.max_len), cfg.pad_id, np.int32)
        buf[:, 0] = cfg.bos_id
        done = np.zeros(chunk, bool)
        done[rows:] = True  # padding rows
        for t in range(max_new):
            nxt = dec.log_probs(buf, t, memory, src_mask).argmax(-1)
            buf[:, t + 1] = np.where(done, cfg.pad_id, nxt)
            done |= nxt == cfg.eos_id
            if done.all():
                break
        out += [_strip(row[1:], cfg) for row in buf[:rows]]
    return out


def beam_search(model, src: np.ndarray, beam: int = 4, length_penalty: float = 0.6, max_new: int | None = None,
                compile_: bool = True) -> list[list[int]]:
    """Beam search per source: keep the `beam` best prefixes by total log-probability; a prefix that emits EOS is
    finished. Finished hypotheses are ranked by log p / lp(len), lp(n) = ((5 + n) / 6)^α (GNMT), so longer outputs
    are not penalised just for having more factors below 1. α = 0 ranks by raw log-probability."""
    cfg = model.config
    model.set_train(False)
    max_new = min(max_new or cfg.max_len - 1, cfg.max_len - 1)
    dec = _Decoder(model, compile_)
    out = []
    for s in src:
        memory, src_mask = dec.encode(Tensor(np.repeat(s[None].astype(np.int32), beam, 0)))
        buf = np.full((beam, cfg.max_len), cfg.pad_id, np.int32)
        buf[:, 0] = cfg.bos_id
        scores = np.full(beam, -np.inf)
        scores[0] = 0.0  # start from one live prefix, not `beam` copies of it
        finished = []  # (normalised score, tokens)
        for t in range(max_new):
            cand = scores[:, None] + dec.log_probs(buf, t, memory, src_mask)  # (beam, V)
            flat = np.argsort(-cand, axis=None, kind="stable")[:2 * beam]  # enough to refill after EOS exits
            rows, toks = np.unravel_index(flat, cand.shape)
            live = []
            for r, tok in zip(rows, toks):
                if not np.isfinite(cand[r, tok]):
                    continue
                if tok == cfg.eos_id:
                    n = t + 1  # tokens generated, EOS included
                    finished.append((cand[r, tok] / ((5 + n) / 6) ** length_penalty, buf[r, 1:t + 1].tolist()))
                elif len(live) < beam:
                    live.append((r, tok, cand[r, tok]))
                if len(live) == beam:
                    break
            best_live = max((sc for *_, sc in live), default=-np.inf)
            # stop once no live prefix can beat the best finished one (its score only falls with more tokens)
            if finished and (not live or max(f[0] for f in finished) >=
                             best_live / ((5 + max_new) / 6) ** length_penalty):
                break
            new_buf = np.full_like(buf, cfg.pad_id)
            scores = np.full(beam, -np.inf)
            for i, (r, tok, sc) in enumerate(live):
                new_buf[i, :t + 1] = buf[r, :t + 1]
                new_buf[i, t + 1] = tok
                scores[i] = sc
            buf = new_buf
        if not finished:  # no EOS within max_new: take the best live prefix
            finished.append((scores.max(), buf[int(scores.argmax()), 1:].tolist()))
        out.append(_strip(max(finished, key=lambda f: f[0])[1], cfg))
    return out


def _strip(ids, cfg) -> list[int]:
    ids = list(int(i) for i in ids)
    if cfg.eos_id in ids:
        ids = ids[:ids.index(cfg.eos_id)]
    return [i for i in ids if i != cfg.pad_id]
