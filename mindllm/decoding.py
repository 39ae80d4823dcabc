"""Decoding: the rules that turn logits into the next token, and the model's compiled forward passes that produce
them, with a static KV cache. `tokens` yields one token per step (to stream or stop early); `generate` collects them.

Strategies act on the last position's logits, in this order: repetition penalty, temperature (0 = greedy),
top-k, top-p (nucleus). With the KV cache each new token costs one position's forward pass instead of the
whole window's; both paths produce the same tokens. `python -m mindllm.sample` is the command line over this module.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor

from . import kernels
from .errors import interruption_point


def adjust_logits(logits, history=None, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0):
    """(B, V) logits -> (B, V) logits after the decoding rules; masked-out tokens get -inf."""
    logits = np.array(logits, dtype=np.float64)
    if repetition_penalty != 1.0 and history is not None:  # CTRL: make already-seen tokens less likely
        for b in range(logits.shape[0]):
            seen = np.unique(history[b])
            row = logits[b, seen]
            logits[b, seen] = np.where(row > 0, row / repetition_penalty, row * repetition_penalty)
    if temperature > 0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, -1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        # mass before each token (an exclusive cumsum: `cumsum - p` rounds 0.7 - 0.2 below 0.5); a token is dropped
        # once that mass reaches top_p, give or take float rounding
        before = np.concatenate([np.zeros_like(probs[:, :1]), np.cumsum(probs, -1)[:, :-1]], -1)
        drop_sorted = before >= top_p - 1e-9
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        logits = np.where(drop, -np.inf, logits)
    return logits


def pick(logits, rng, temperature=1.0, **rules):
    """Choose the next token per row: argmax when temperature == 0, else a draw from the softmax."""
    logits = adjust_logits(logits, temperature=temperature, **rules)
    if temperature == 0:
        return logits.argmax(-1)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


class Decoder:
    """The model's two forward passes used by generation, compiled once each (graph mode) with static shapes:
    `encode(idx)` on a full block (B, block_size) -> (logits, cache), and `next(tok, cache, pos)` on one new token
    per row. Where the kernels apply, `next` is a whole GPT's step in one kernel (kernels.decode_step): call
    `start()` before each generation, so it reads the weights as they are then."""

    def __init__(self, model, batch_size: int, compile_: bool = True):
        self.model, self.batch_size = model, batch_size

        def window(idx):
            # on a full (padded) block the per-layer keys/values are exactly a filled static cache
            return model.forward_cached(idx)

        def step(tok, cache, pos):
            return model.forward_cached(tok, cache, pos)

        wrap = ms.jit if compile_ else (lambda f: f)
        self.window, self.step = wrap(window), wrap(step)
        self.kernel = kernels.decode_step(model) if compile_ else None

    def start(self) -> None:
        if self.kernel is not None:
            self.kernel.pack()

    def finish(self) -> None:
        if self.kernel is not None:
            self.kernel.flat = None  # the packed copy of the weights: not kept between generations

    def encode(self, idx):
        logits, cache = self.window(idx)
        return logits, (cache if self.kernel is None else self.kernel.cache(cache))

    def next(self, tok, cache, pos: int):
        pos = Tensor(pos, ms.int32)
        if self.kernel is not None:
            return self.kernel.step(tok, cache, pos)
        # mutable: the cache and position are data, not constants to specialise (and recompile) the graph on
        return self.step(tok, ms.mutable(cache), ms.mutable(pos))


def decoder_for(model, batch_size: int, compile_: bool) -> Decoder:
    """One Decoder per (model, batch size, mode), kept on the model, so repeated calls reuse compiled graphs.
    The model's layers are fused first (on CPU), and the key includes their types: after apply_lora a stale graph
    would decode without the adapters."""
    kernels.fuse(model)
    cache = model.__dict__.setdefault("_mindllm_decoders", {})
    key = (batch_size, compile_, tuple(type(c).__name__ for _, c in model.cells_and_names()))
    if key not in cache:
        cache[key] = Decoder(model, batch_size, compile_)
    return cache[key]


def tokens(model, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0,
           kv_cache=True, compile_=True):
    """Yield the next token of every row, (B,) int32, `max_new_tokens` times: the loop behind `generate`, for
    callers that stream or stop early (a chat stops at the end-of-answer token; a server when its client leaves).

    The context is the last `block_size` tokens (a sliding window). A window shorter than the block is padded
    at the end, which the causal mask makes harmless, so shapes stay static. With the cache, each new token
    costs one position's forward pass until the window is full; once it slides, positions shift and each token
    re-encodes the window as the uncached path does (a cache would be discarded at the next slide), so the result
    equals the uncached computation token for token.
    """
    block = model.config.block_size
    idx = np.asarray(idx, dtype=np.int32)
    B = idx.shape[0]
    rng = np.random.default_rng(seed)
    rules = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    model.set_train(False)
    dec = decoder_for(model, B, compile_)
    dec.start()

    def padded_window():
        win = idx[:, -block:]
        return Tensor(np.pad(win, ((0, 0), (0, block - win.shape[1])))), win.shape[1]

    cache, pos = None, 0
    try:
        for _ in range(max_new_tokens):
            if not kv_cache or idx.shape[1] > block:  # past the window each token re-encodes it: no cache to keep
                x, n = padded_window()
                logits = dec.window(x)[0].asnumpy()[:, n - 1]
            elif cache is None:  # encode the prompt into a fresh cache
                x, n = padded_window()
                out, cache = dec.encode(x)
                logits, pos = out.asnumpy()[:, n - 1], n
            else:  # feed only the newest token
                out, cache = dec.next(Tensor(idx[:, -1:]), cache, pos)
                logits, pos = out.asnumpy()[:, 0], pos + 1
            nxt = pick(logits, rng, history=idx, **rules).astype(np.int32)
            idx = np.concatenate([idx, nxt[:, None]], axis=1)
            interruption_point()  # a Ctrl-C that came during the forward pass
            yield nxt
    finally:  # also when the caller stops early (a chat at the end of its answer, a client that left)
        dec.finish()


def generate(model, idx, max_new_tokens, on_token=None, **rules):
    """Continue `idx` (B, T) int token ids by `max_new_tokens`; returns (B, T + max_new_tokens). `rules` are those
    of `tokens` (temperature, top_k, top_p, repetition_penalty, seed, kv_cache, compile_). `on_token(new)`, if
    given, sees the new tokens so far (B, n) after each step (to stream them)."""
    idx = np.asarray(idx, dtype=np.int32)
    new = np.zeros((idx.shape[0], 0), np.int32)
    for nxt in tokens(model, idx, max_new_tokens, **rules):
        new = np.concatenate([new, nxt[:, None]], axis=1)
        if on_token is not None:
            on_token(new)
    return np.concatenate([idx, new], axis=1)
