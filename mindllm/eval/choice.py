"""Multiple choice scored by log-likelihood, as MMLU and HellaSwag are scored without generation: each option's
score is the summed log-probability of its tokens given the context; `acc` takes the highest sum, `acc_norm` the
highest sum per UTF-8 byte of the option (HellaSwag's length normalisation, fair to longer options)."""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

ROWS = 16  # (context, option) rows per forward pass
# context tokens before an option, at most: the cost of a row is its length, and a few lines of text already say
# what fits; the whole block_size would double the run time of a course model for little
CONTEXT_TOKENS = 64


@dataclass
class Item:
    context: str
    options: list[str]
    answer: int  # index of the right option


def encode_row(tokenizer, context: str, option: str, block: int) -> tuple[list[int], int]:
    """(ids of context + option, the context cropped from the left to CONTEXT_TOKENS and so that the model's
    input, all but the last id, fits block_size; number of option tokens)."""
    ctx, opt = tokenizer.encode(context), tokenizer.encode(option)
    if not ctx or not 1 <= len(opt) <= block:
        raise ValueError(f"a row needs a context and an option of 1..{block} tokens: {context!r}, {option!r}")
    keep = min(CONTEXT_TOKENS, block + 1 - len(opt))
    return ctx[max(0, len(ctx) - keep):] + opt, len(opt)


def log_softmax_fn(model, graph: bool):
    def fn(x):
        return ops.log_softmax(model(x), -1)

    return ms.jit(fn) if graph else fn


def option_logprobs(model, tokenizer, rows, graph: bool = True, progress=None) -> np.ndarray:
    """Summed log-probability of each (context, option) row's option tokens. Every forward pass has one shape
    (ROWS × the longest row, right-padded: a causal model's earlier positions do not see the padding), so a
    compiled graph is built once."""
    encoded = [encode_row(tokenizer, c, o, model.config.block_size) for c, o in rows]
    width = max(len(ids) for ids, _ in encoded) - 1
    forward, out = log_softmax_fn(model, graph), []
    for start in range(0, len(encoded), ROWS):
        chunk = encoded[start:start + ROWS]
        x = np.zeros((ROWS, width), np.int32)
        for r, (ids, _) in enumerate(chunk):
            x[r, :len(ids) - 1] = ids[:-1]
        logp = forward(Tensor(x)).asnumpy()
        for r, (ids, n_opt) in enumerate(chunk):
            pos = np.arange(len(ids) - n_opt, len(ids))  # option tokens, predicted at the position before
            out.append(float(logp[r, pos - 1, np.asarray(ids)[pos]].sum()))
        if progress is not None:
            progress(len(chunk))
    return np.array(out)


def accuracy(model, tokenizer, items, graph: bool = True, progress=None) -> dict:
    """acc and acc_norm over the items (ties go to the first option; the answer's place is random), and the mean
    log-probability of the right options."""
    rows = [(it.context, o) for it in items for o in it.options]
    scores = option_logprobs(model, tokenizer, rows, graph, progress)
    ends = np.cumsum([len(it.options) for it in items])
    hit = hit_norm = 0
    right = []
    for it, s in zip(items, np.split(scores, ends[:-1])):
        n_bytes = np.array([len(o.encode("utf-8")) for o in it.options])
        hit += int(np.argmax(s) == it.answer)
        hit_norm += int(np.argmax(s / n_bytes) == it.answer)
        right.append(s[it.answer])
    n = len(items)
    return {"acc": hit / n, "acc_norm": hit_norm / n, "items": n, "mean_answer_logprob": float(np.mean(right))}
