"""Speculative decoding (投机解码): a small draft model proposes k tokens, the target model checks them all in one
forward pass, and a rejection rule keeps exactly the target's distribution (Leviathan et al. 2023; Chen et al. 2023).

    out, stats = speculate(target, draft, idx, max_new_tokens=100, k=4, temperature=0.8, seed=0)
    stats.acceptance            # share of the draft's proposals the target kept

One round: the draft proposes x_1..x_k with probabilities q_1..q_k (one position per token, its own KV cache); the
target reads the prefix and x_1..x_k in one pass and gives p_1..p_{k+1}; x_i is kept with probability
min(1, p_i(x_i) / q_i(x_i)); at the first rejection a token is drawn from max(0, p_i - q_i), normalised, and the
round ends; when all k are kept, one more token comes from p_{k+1}. Each round yields 1..k+1 tokens for one target
pass. At temperature 0, "kept" means x_i is the target's argmax, so the output is the target's greedy decoding token
for token. Both models decode with the same rules (temperature, top-k, top-p) and must share the tokenizer.
Batch size 1: the case speculative decoding is for (one user's latency).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor

from . import runs
from .decoding import adjust_logits, decoder_for
from .errors import UserError


@dataclass
class Stats:
    rounds: int = 0          # target passes
    proposed: int = 0        # draft tokens offered
    accepted: int = 0        # draft tokens kept
    tokens: int = 0          # tokens produced

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.proposed, 1)


def load_draft(path: str, target_path: str, tokenizer):
    """The draft model of --draft, refused unless it writes text with the very same tokenizer as the target."""
    draft, draft_tok, _ = runs.load_model(path)
    same = [runs.tokenizer_fingerprint(runs.locate(p)[0]) for p in (path, target_path)]
    if same[0] != same[1] or draft_tok.vocab_size != tokenizer.vocab_size:
        raise UserError(f"the draft '{path}' has another tokenizer than '{target_path}'; speculative decoding needs "
                        f"the same vocabulary (train the draft with the target's tokenizer)")
    return draft


def probabilities(logits, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """(V,) logits -> the distribution the decoding rules sample from; at temperature 0, one-hot on the argmax."""
    z = adjust_logits(np.asarray(logits)[None], temperature=temperature, top_k=top_k, top_p=top_p)[0]
    if temperature == 0:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    p = np.exp(z - z.max())
    return p / p.sum()


def window_logits(dec, block: int, ids: np.ndarray) -> np.ndarray:
    """The model's logits at every position of the last `block` ids (one padded, compiled pass): (n, V)."""
    win = ids[-block:]
    x = np.pad(win, (0, block - len(win)))[None].astype(np.int32)
    return dec.window(Tensor(x))[0].asnumpy()[0, :len(win)]


def propose(draft, ids: np.ndarray, k: int, rules: dict, rng) -> tuple[list[int], list[np.ndarray]]:
    """The draft's k tokens after `ids` and the distribution each was drawn from: its KV cache while the window
    fills; past it, each token re-encodes the window without a cache, as decoding.tokens does (a cache would be
    discarded at the next slide)."""
    block, dec = draft.config.block_size, decoder_for(draft, 1, True)
    seq, out, qs, cache, pos = list(ids), [], [], None, 0
    for _ in range(k):
        if len(seq) > block:
            row = window_logits(dec, block, np.array(seq, np.int32))[-1]
        elif cache is None:
            logits, cache = dec.encode(Tensor(np.pad(np.array(seq, np.int32), (0, block - len(seq)))[None]))
            row, pos = logits.asnumpy()[0, len(seq) - 1], len(seq)
        else:
            logits, cache = dec.next(Tensor([[seq[-1]]], ms.int32), cache, pos)
            row, pos = logits.asnumpy()[0, 0], pos + 1
        q = probabilities(row, **rules)
        x = int(np.argmax(q)) if rules["temperature"] == 0 else int(rng.choice(len(q), p=q))
        seq.append(x)
        out.append(x)
        qs.append(q)
    return out, qs


def verify(p: np.ndarray, q: np.ndarray, x: int, greedy: bool, rng) -> int | None:
    """None when the target keeps the draft's token x, else the token to emit instead."""
    if greedy:
        return None if int(np.argmax(p)) == x else int(np.argmax(p))
    if rng.random() < min(1.0, p[x] / q[x]):
        return None
    residual = np.maximum(p - q, 0.0)  # where the target wants more than the draft offered
    return int(rng.choice(len(p), p=residual / residual.sum()))


def speculative_tokens(target, draft, idx, max_new_tokens: int, k: int = 4, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, seed=0, stats: Stats | None = None):
    """Yield the new tokens round by round (a list of 1..k+1 ids each) until `max_new_tokens`; `idx` is one
    sequence of ids. Past the target's context window (where positions would shift under the draft's guesses)
    the target decodes alone, one token per pass, exactly as sample.generate does."""
    rules = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    rng, stats = np.random.default_rng(seed), stats if stats is not None else Stats()
    block, tdec = target.config.block_size, decoder_for(target, 1, True)
    ids = np.asarray(idx, np.int32).ravel()
    target.set_train(False)
    draft.set_train(False)
    decoder_for(draft, 1, True).start()  # propose's decoder reads the draft's weights as they are now
    left = max_new_tokens
    while left > 0:
        n = min(k, left, block - len(ids))  # proposals the target can check inside its window
        drafted, qs = propose(draft, ids, n, rules, rng) if n > 0 else ([], [])
        logits = window_logits(tdec, block, np.concatenate([ids, np.array(drafted, np.int32)]))
        first = len(ids[-block:]) - 1  # the row that predicts the first new token
        new = []
        for i, (x, q) in enumerate(zip(drafted, qs)):
            other = verify(probabilities(logits[first + i], **rules), q, x, temperature == 0, rng)
            if other is not None:
                new.append(other)
                break
            new.append(x)
            stats.accepted += 1
        else:  # every proposal kept: the target's own next token comes free with the same pass
            p = probabilities(logits[first + len(drafted)], **rules)
            new.append(int(np.argmax(p)) if temperature == 0 else int(rng.choice(len(p), p=p)))
        new = new[:left]  # the free token of the last round may be one too many
        stats.rounds += 1
        stats.proposed += len(drafted)
        stats.tokens += len(new)
        ids = np.concatenate([ids, np.array(new, np.int32)])
        left -= len(new)
        yield new


def speculate(target, draft, idx, max_new_tokens: int, **rules) -> tuple[np.ndarray, Stats]:
    """(ids + the new tokens, Stats): speculative_tokens collected."""
    stats = Stats()
    new = [t for round_ in speculative_tokens(target, draft, idx, max_new_tokens, stats=stats, **rules) for t in round_]
    return np.concatenate([np.asarray(idx, np.int32).ravel(), np.array(new, np.int32)]), stats


def measure(target_run: str, draft_runs: list[str], ks=range(1, 9), new_tokens: int = 200, repeats: int = 3,
            temperature: float = 0.0, prompt: str = "ROMEO:", log=print) -> dict:
    """Tokens/s of plain KV-cache decoding of the target against speculative decoding with each draft and k,
    measured in alternation (each repeat times every configuration once), medians reported; for
    python -m mindllm.bench --speculative."""
    import time

    from .decoding import generate

    target, tok, _ = runs.load_model(target_run)
    drafts = {d: load_draft(d, target_run, tok) for d in draft_runs}
    ids = np.array([tok.encode(prompt)], np.int32)
    configs = [("plain", None, 0)] + [(d, m, k) for d, m in drafts.items() for k in ks]

    def once(draft, k):
        if draft is None:
            return generate(target, ids, new_tokens, temperature=temperature, seed=0)[0], None
        return speculate(target, draft, ids, new_tokens, k=k, temperature=temperature, seed=0)

    for _, draft, k in configs:
        once(draft, k)  # compile every graph before timing
    seconds = {(name, k): [] for name, _, k in configs}
    for r in range(repeats):
        for name, draft, k in configs:
            t0 = time.perf_counter()
            once(draft, k)
            seconds[(name, k)].append(time.perf_counter() - t0)
        log(f"repeat {r + 1}/{repeats} done")
    plain = new_tokens / float(np.median(seconds[("plain", 0)]))
    rows = []
    for name, draft, k in configs[1:]:
        _, stats = once(draft, k)  # the same run again (seeded): its counts
        tps = new_tokens / float(np.median(seconds[(name, k)]))
        rows.append({"draft": name, "draft_params": draft.num_params(), "k": k, "acceptance": stats.acceptance,
                     "tokens_per_target_pass": stats.tokens / stats.rounds, "tokens_per_s": tps,
                     "speedup": tps / plain})
    return {"target": target_run, "target_params": target.num_params(), "new_tokens": new_tokens,
            "temperature": temperature, "repeats": repeats, "plain_tokens_per_s": plain, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Target `{result['target']}` ({result['target_params'] / 1e6:.2f}M parameters), {result['new_tokens']} "
             f"new tokens at temperature {result['temperature']:g}, median of {result['repeats']} alternating "
             f"repeats. Plain KV-cache decoding: {result['plain_tokens_per_s']:.0f} tokens/s.", "",
             "| draft | k | kept | tokens per target pass | tokens/s | vs plain |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['draft']} ({r['draft_params'] / 1e6:.2f}M) | {r['k']} | {r['acceptance']:.0%} | "
                     f"{r['tokens_per_target_pass']:.2f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}× |")
    return "\n".join(lines) + "\n"
