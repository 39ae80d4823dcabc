"""Text generation from a trained GPT: decoding strategies and a KV cache.

    python -m mindllm.sample --ckpt runs/gpt_char_shakespeare --prompt "ROMEO:" --max-new-tokens 200

Strategies act on the last position's logits, in this order: repetition penalty, temperature (0 = greedy),
top-k, top-p (nucleus). With the KV cache each new token costs one position's forward pass instead of the
whole window's; both paths produce the same tokens.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from . import device, kernels, runs
from .errors import ArgumentParser, UserError, cli, ctrl_c


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
    `window(idx)` on a full block (B, block_size) -> (logits, cache), and `step(tok, cache, pos)` on one new
    token per row."""

    def __init__(self, model, batch_size: int, compile_: bool = True):
        self.model, self.batch_size = model, batch_size

        def window(idx):
            # on a full (padded) block the per-layer keys/values are exactly a filled static cache
            return model.forward_cached(idx)

        def step(tok, cache, pos):
            return model.forward_cached(tok, cache, pos)

        wrap = ms.jit if compile_ else (lambda f: f)
        self.window, self.step = wrap(window), wrap(step)


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
    costs one position's forward pass until the window is full; once it slides, positions shift and the window
    is re-encoded, so the result equals the uncached computation token for token.
    """
    block = model.config.block_size
    idx = np.asarray(idx, dtype=np.int32)
    B = idx.shape[0]
    rng = np.random.default_rng(seed)
    rules = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    model.set_train(False)
    dec = decoder_for(model, B, compile_)

    def padded_window():
        win = idx[:, -block:]
        return Tensor(np.pad(win, ((0, 0), (0, block - win.shape[1])))), win.shape[1]

    cache, pos = None, 0
    for _ in range(max_new_tokens):
        if not kv_cache:
            x, n = padded_window()
            logits = dec.window(x)[0].asnumpy()[:, n - 1]
        elif cache is None or pos >= block:  # (re)encode the current window into a fresh cache
            x, n = padded_window()
            out, cache = dec.window(x)
            logits, pos = out.asnumpy()[:, n - 1], n
        else:  # feed only the newest token
            # mutable: the cache and position are data, not constants to specialise (and recompile) the graph on
            out, cache = dec.step(Tensor(idx[:, -1:]), ms.mutable(cache), ms.mutable(Tensor(pos, ms.int32)))
            logits, pos = out.asnumpy()[:, 0], pos + 1
        nxt = pick(logits, rng, history=idx, **rules).astype(np.int32)
        idx = np.concatenate([idx, nxt[:, None]], axis=1)
        yield nxt


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


def unescape(text: str) -> str:
    """Let `--prompt "\\n"` mean a newline from the shell; other characters (Chinese included) pass unchanged."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def complete(model, tokenizer, prompt, max_new_tokens, num_samples=1, notice=print, **kwargs) -> list[str]:
    """Encode a prompt, crop it to the context with a notice, generate, and decode only the new text."""
    ids = tokenizer.encode(prompt)
    block = model.config.block_size
    if not ids:
        raise UserError("the prompt is empty; give at least one character, e.g. --prompt '\\n'")
    if len(ids) > block:
        notice(f"note: the prompt has {len(ids)} tokens; only the last {block} (model.block_size) are used")
        ids = ids[-block:]
    out = generate(model, np.tile(np.array(ids, dtype=np.int32), (num_samples, 1)), max_new_tokens, **kwargs)
    return [tokenizer.decode(row[len(ids):]) for row in out]


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.sample", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="training out_dir (uses its latest checkpoint) or a ckpt dir")
    ap.add_argument("--prompt", default="\\n", help="start text; \\n means newline (default: a newline)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-kv-cache", action="store_true", help="recompute the whole window every token")
    ap.add_argument("--device", default="CPU", help="CPU, GPU, Ascend or auto")
    return ap


MAX_NEW_TOKENS = 100_000  # a few zeros too many must not run for weeks: far beyond any course model's use


class Stream:
    """Counts the new tokens and prints a single sample's new text as it is generated (an incomplete UTF-8
    character waits for its bytes)."""

    def __init__(self, tokenizer, show: bool):
        self.tokenizer, self.show, self.shown, self.count = tokenizer, show, "", 0

    def __call__(self, new_ids):
        self.count = new_ids.shape[1]
        if not self.show:
            return
        text = self.tokenizer.decode(new_ids[0])
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            print(text[len(self.shown):], end="", flush=True)
            self.shown = text

    def finish(self, text: str) -> None:
        print(text[len(self.shown):] if text.startswith(self.shown) else "\n" + text, flush=True)


def check_args(args) -> None:
    checks = [(0 <= args.max_new_tokens <= MAX_NEW_TOKENS, f"--max-new-tokens must be in 0..{MAX_NEW_TOKENS:,}"),
              (args.num_samples >= 1, "--num-samples must be >= 1"),
              (args.temperature >= 0, "--temperature must be >= 0 (0 = greedy)"),
              (args.top_k >= 0, "--top-k must be >= 0"), (0 < args.top_p <= 1, "--top-p must be in (0, 1]"),
              (args.repetition_penalty > 0, "--repetition-penalty must be > 0")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    device.setup(device.context_for(args.device), args.seed)
    model, tokenizer, _ = runs.load_model(args.ckpt)
    prompt = unescape(args.prompt)
    stream = Stream(tokenizer, show=args.num_samples == 1)
    if stream.show:
        print(prompt, end="", flush=True)  # then each token as it comes: a long generation shows its progress
    t0 = time.perf_counter()
    with ctrl_c(lambda: f"\ninterrupted after {stream.count} of {args.max_new_tokens} new tokens"):
        texts = complete(model, tokenizer, prompt, args.max_new_tokens, args.num_samples,
                         notice=lambda m: print(m, file=sys.stderr), temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                         kv_cache=not args.no_kv_cache, on_token=stream)
    dt = time.perf_counter() - t0
    if stream.show:
        stream.finish(texts[0])
    for i, text in enumerate(texts if not stream.show else []):
        print(f"--- sample {i + 1}\n{prompt}{text}")
    n = args.max_new_tokens * args.num_samples
    print(f"[{n} tokens in {dt:.2f} s, {n / max(dt, 1e-9):.0f} tokens/s, "
          f"KV cache {'off' if args.no_kv_cache else 'on'}]", file=sys.stderr)


if __name__ == "__main__":
    main()
