"""Week 6 exercises: the pieces of a GPT's training objective and of its decoding (notebook 06).
The references are mindllm's own: `models.layers.causal_mask` and `cross_entropy`, `sample.adjust_logits` (the
decoding rules) and `sample.generate` (the generation loop); every check draws fresh random inputs."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ..models.gpt import GPT, GPTConfig
from ..models.layers import causal_mask as reference_mask, cross_entropy as reference_cross_entropy
from ..decoding import adjust_logits, generate
from .core import Mismatch, exercise, expect_close, expect_equal


@exercise("week06.causal_mask",
          hint="M[i, j] = -1e9 where the key j is in the future of the query i (j > i), else 0; "
               "np.triu(..., k=1) keeps what lies above the diagonal")
def causal_mask(student) -> int:
    sizes = [1, 2, 5, 8, 13]
    for T in sizes:
        got = student(T)
        expect_close(got, reference_mask(T).asnumpy()[0], f"the mask for T = {T}", rtol=0, atol=1e-3)
    return len(sizes)


def _logits_cases(seed: int):
    """(logits (B, T, V) float32, targets (B, T) int32, what) of several shapes, and very large logits."""
    rng = np.random.default_rng(seed)
    for B, T, V, scale in [(1, 1, 2, 1.0), (2, 5, 7, 2.0), (3, 8, 84, 3.0), (4, 6, 50, 1000.0)]:
        logits = rng.normal(0, scale, (B, T, V)).astype(np.float32)
        targets = rng.integers(0, V, (B, T)).astype(np.int32)
        yield logits, targets, f"logits of shape {(B, T, V)}" + (" (entries up to ~3000)" if scale > 100 else "")


@exercise("week06.cross_entropy",
          hint="loss = mean over all positions of -log softmax(logits)[target]; compute log-softmax stably as "
               "z - max(z) - log(sum(exp(z - max(z)))); perplexity = exp(loss)")
def cross_entropy(student) -> int:
    n = 0
    for logits, targets, what in _logits_cases(21):
        got = student(logits, targets)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Mismatch(f"return (loss, perplexity), got {type(got).__name__} {str(got)[:60]}")
        want = float(reference_cross_entropy(Tensor(logits), Tensor(targets)).asnumpy())
        expect_close(got[0], want, f"the loss for {what}", rtol=1e-4, atol=1e-5)
        expect_close(got[1], np.exp(want), f"the perplexity for {what}", rtol=1e-4)
        n += 1
    return n


def _rows(seed: int, ties: bool):
    """(z (B, V) float64, what): random logits, a row of known probabilities and (for top-k) rows with ties."""
    rng = np.random.default_rng(seed)
    yield rng.normal(0, 2, (1, 10)), "one row of 10 logits"
    yield rng.normal(0, 1, (3, 84)), "3 rows of 84 logits"
    yield np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]])), "log of p = (0.5, 0.2, 0.15, 0.1, 0.05)"
    if ties:
        tie = rng.normal(0, 1, (2, 12))
        for row in tie:
            order = np.argsort(-row)
            row[order[5]] = row[order[2]]  # the 3rd largest appears twice
        yield tie, "2 rows of 12 logits whose 3rd largest value appears twice"


@exercise("week06.temperature_top_k",
          hint="divide by the temperature first, then set every logit below the k-th largest of its row to -inf "
               "(ties with the k-th survive); top_k = 0 or >= V keeps everything")
def temperature_top_k(student) -> int:
    n = 0
    for z, what in _rows(22, ties=True):
        V = z.shape[1]
        for tau, k in [(1.0, 3), (0.5, 1), (2.0, 5), (0.8, 0), (1.3, V)]:
            got = student(z.copy(), tau, k)
            expect_close(got, adjust_logits(z, temperature=tau, top_k=k), f"{what}, temperature {tau}, top_k {k}")
            n += 1
    return n


@exercise("week06.top_p",
          hint="sort by probability, then keep a token while the mass of the tokens BEFORE it is still below top_p "
               "(the first token always stays); 0.7 - 0.2 rounds below 0.5 in floating point, so sum the "
               "probabilities before a token instead of subtracting, and allow ~1e-9")
def top_p(student) -> int:
    n = 0
    for z, what in _rows(23, ties=False):
        for p in (0.9, 0.5, 0.8, 0.3, 1.0):
            got = student(z.copy(), p)
            want = adjust_logits(z, top_p=p)
            got_arr = np.asarray(got, dtype=np.float64)
            if got_arr.shape == want.shape:
                kept, should = np.isfinite(got_arr).sum(-1), np.isfinite(want).sum(-1)
                if (kept != should).any():
                    r = int(np.argmax(kept != should))
                    raise Mismatch(f"{what}, top_p {p}: row {r} keeps {kept[r]} tokens, expected {should[r]}")
            expect_close(got, want, f"{what}, top_p {p}")
            n += 1
    return n


def _model(seed: int, n_layer: int, n_embd: int, vocab: int, block: int):
    """A small GPT with large random weights, so greedy decoding has clear winners and varied text."""
    rng = np.random.default_rng(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2, n_embd=n_embd))
    for p in model.trainable_params():
        if "ln_" not in p.name:  # LayerNorms stay 1 and 0
            p.set_data(Tensor(rng.normal(0, 0.5, p.shape).astype(np.float32)))
    model.set_train(False)
    return model


@exercise("week06.greedy_generate",
          hint="repeat n_new times: window = the last block_size tokens; logits = model(Tensor(window)); append the "
               "argmax of the LAST position's logits to every row. Positions beyond block_size do not exist")
def greedy_generate(student) -> int:
    rng = np.random.default_rng(24)
    cases = [(1, 16, 11, 6, (1, 3), 5), (2, 16, 13, 6, (2, 8), 3)]  # past the window; a prompt longer than it
    for i, (n_layer, n_embd, vocab, block, shape, n_new) in enumerate(cases):
        model = _model(100 + i, n_layer, n_embd, vocab, block)
        idx = rng.integers(0, vocab, shape).astype(np.int32)
        want = generate(model, idx, n_new, temperature=0, kv_cache=False, compile_=False)
        got = student(model, idx.copy(), n_new)
        expect_equal(np.asarray(got), want, f"{n_new} new tokens after a prompt of shape {shape} "
                                            f"(block_size {block})")
    return len(cases)
