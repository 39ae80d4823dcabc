"""Text generation from a trained GPT or Llama run, on the command line (the decoding itself: decoding.py).

    python -m mindllm.sample --ckpt runs/gpt_char_shakespeare --prompt "ROMEO:" --max-new-tokens 200

Strategies act on the last position's logits, in this order: repetition penalty, temperature (0 = greedy),
top-k, top-p (nucleus). With the KV cache each new token costs one position's forward pass instead of the
whole window's; both paths produce the same tokens. `--draft RUN` decodes speculatively (speculative.py).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import device, runs
from .decoding import Decoder, adjust_logits, decoder_for, generate, pick, tokens  # noqa: F401 (the package's API)
from .errors import ArgumentParser, UserError, cli, ctrl_c
from .speculative import Stats, load_draft, speculative_tokens


def unescape(text: str) -> str:
    """Let `--prompt "\\n"` mean a newline from the shell; other characters (Chinese included) pass unchanged."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def prompt_ids(tokenizer, prompt: str, block: int, notice=print) -> list[int]:
    """The prompt's ids, cropped to the context (the last block_size tokens) with a notice."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty; give at least one character, e.g. --prompt '\\n'")
    if len(ids) > block:
        notice(f"note: the prompt has {len(ids)} tokens; only the last {block} (model.block_size) are used")
        ids = ids[-block:]
    return ids


def complete(model, tokenizer, prompt, max_new_tokens, num_samples=1, notice=print, **kwargs) -> list[str]:
    """Encode a prompt, crop it to the context with a notice, generate, and decode only the new text."""
    ids = prompt_ids(tokenizer, prompt, model.config.block_size, notice)
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
    ap.add_argument("--draft", metavar="RUN", help="speculative decoding: a smaller run with the same tokenizer "
                                                   "proposes tokens, this one checks them (same output distribution)")
    ap.add_argument("--speculative-k", type=int, default=4, help="with --draft: tokens proposed per round")
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
              (args.repetition_penalty > 0, "--repetition-penalty must be > 0"),
              (1 <= args.speculative_k <= 32, "--speculative-k must be in 1..32")]
    if args.draft:
        checks += [(args.num_samples == 1, "--draft decodes one sample (speculative decoding is for one user's "
                                           "latency): drop --num-samples"),
                   (args.repetition_penalty == 1 and not args.no_kv_cache,
                    "--draft works with temperature, top-k and top-p; drop --repetition-penalty / --no-kv-cache")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def speculative_text(model, draft, tokenizer, prompt, args, stream):
    """The new text with --draft, streamed round by round, and the line that reports the acceptance."""

    ids, stats = prompt_ids(tokenizer, prompt, model.config.block_size, lambda m: print(m, file=sys.stderr)), Stats()
    new = np.zeros((1, 0), np.int32)
    for round_ in speculative_tokens(model, draft, ids, args.max_new_tokens, k=args.speculative_k,
                                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     seed=args.seed, stats=stats):
        new = np.concatenate([new, np.array([round_], np.int32)], axis=1)
        stream(new)
    report = (f"speculative: {stats.accepted} of {stats.proposed} proposals kept ({stats.acceptance:.0%}), "
              f"{stats.tokens / max(stats.rounds, 1):.2f} tokens per pass of the target")
    return tokenizer.decode(new[0]), report


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    device.setup(device.context_for(args.device), args.seed)
    model, tokenizer, _ = runs.load_model(args.ckpt)
    draft = load_draft(args.draft, args.ckpt, tokenizer) if args.draft else None
    prompt = unescape(args.prompt)
    stream = Stream(tokenizer, show=args.num_samples == 1)
    if stream.show:
        print(prompt, end="", flush=True)  # then each token as it comes: a long generation shows its progress
    t0, extra = time.perf_counter(), ""
    with ctrl_c(lambda: f"\ninterrupted after {stream.count} of {args.max_new_tokens} new tokens"):
        if draft is not None:
            text, extra = speculative_text(model, draft, tokenizer, prompt, args, stream)
            texts = [text]
        else:
            texts = complete(model, tokenizer, prompt, args.max_new_tokens, args.num_samples,
                             notice=lambda m: print(m, file=sys.stderr), temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                             seed=args.seed, kv_cache=not args.no_kv_cache, on_token=stream)
    dt = time.perf_counter() - t0
    if stream.show:
        stream.finish(texts[0])
    for i, text in enumerate(texts if not stream.show else []):
        print(f"--- sample {i + 1}\n{prompt}{text}")
    n = args.max_new_tokens * args.num_samples
    print(f"[{n} tokens in {dt:.2f} s, {n / max(dt, 1e-9):.0f} tokens/s, "
          f"KV cache {'off' if args.no_kv_cache else 'on'}{'; ' + extra if extra else ''}]", file=sys.stderr)


if __name__ == "__main__":
    main()
