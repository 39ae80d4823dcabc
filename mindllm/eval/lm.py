"""Loss, perplexity and bits per byte of a run's model on the fixed held-out batches its training evaluated on."""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor

from ..data.dataset import IGNORE
from ..evaluate import bits_per_byte


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes of the text each token id stands for. A byte-level BPE token holds its bytes exactly; other
    tokenizers decode one id at a time (a lone id of a split character decodes to U+FFFD, 3 bytes: rare)."""
    exact = getattr(tokenizer, "token_bytes", None)

    def length(i: int) -> int:
        try:
            return len(exact(i)) if exact is not None else len(tokenizer.decode([i]).encode("utf-8"))
        except IndexError:  # a special token past the byte vocabulary
            return len(tokenizer.decode([i]).encode("utf-8"))

    return np.array([length(i) for i in range(tokenizer.vocab_size)], np.int64)


def held_out_loss(task, graph: bool = True, progress=None) -> dict:
    """The evaluation loss over task.eval_batches['val'] (as training reported it), with the total in nats and
    the number of scored targets (the last array of a batch, positions labelled IGNORE left out)."""
    fn = task.eval_loss_fn or task.loss_fn
    fn = ms.jit(fn) if graph else fn
    task.model.set_train(False)
    losses, counts = [], []
    for batch in task.eval_batches["val"]:
        losses.append(float(fn(*map(Tensor, batch)).asnumpy()))
        counts.append(int(np.sum(batch[-1] != IGNORE)))
        if progress is not None:
            progress(1)
    # per batch the loss is a mean over its scored targets: weigh by them for the total
    total = float(np.dot(losses, counts))
    return {"val_loss": float(np.mean(losses)), "total_nats": total, "targets": int(sum(counts))}


def language_scores(task, graph: bool = True, progress=None) -> dict:
    """Perplexity and bits per byte of a language model: the targets' bytes come from the tokenizer."""
    out = held_out_loss(task, graph, progress)
    lengths = token_byte_lengths(task.tokenizer)
    targets = np.concatenate([b[-1][b[-1] != IGNORE].ravel() for b in task.eval_batches["val"]])
    n_bytes = int(lengths[targets].sum())
    return {**out, "perplexity": math.exp(out["total_nats"] / out["targets"]), "bytes": n_bytes,
            "bits_per_byte": bits_per_byte(out["total_nats"], n_bytes)}


def per_byte(loss_per_token: float, scores: dict) -> float:
    """A per-token loss (a baseline's) in bits per byte of the same held-out targets."""
    return bits_per_byte(loss_per_token * scores["targets"], scores["bytes"])
