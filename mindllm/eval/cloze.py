"""Cloze items from the held-out part of a language model's own corpus (the split its training validated on):
a passage, then four options for the next word (English) or character (Chinese) — the one the text has and three
distractors of similar frequency in the training text. Distractors have as many tokens as the answer, so a model
that knows nothing (an untrained one, near-uniform) gives every option the same summed log-probability and scores
at chance; a model that read the corpus prefers what fits the passage."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from ..data import load_corpus
from ..data.dataset import split_text
from ..evaluate import _CJK
from .choice import CONTEXT_TOKENS, Item

N_OPTIONS = 4
POOL = 4000  # the most frequent training units that can be answers or distractors
NEAREST = 8  # distractors are drawn from the answer's NEAREST neighbours in frequency rank
MIN_CONTEXT = 40  # characters of passage before the blank, at least
# an English blank: a lower-case word of 3+ letters after a space and before a non-letter (the next character is
# part of every option, so no option wins by being the prefix of a longer word)
_WORD = re.compile(r" ([a-z]{3,})(?=[^a-zA-Z'\-])")
_HAN = re.compile(f"[{_CJK}]")


def is_chinese(text: str) -> bool:
    return len(_HAN.findall(text[:20000])) > 0.3 * len(text[:20000])


def blanks(val: str, chinese: bool):
    """(start, unit, option text) of every candidate blank in the held-out text."""
    if chinese:
        return [(m.start(), m.group(), m.group()) for m in _HAN.finditer(val) if m.start() >= MIN_CONTEXT]
    return [(m.start(), m.group(1), m.group(0) + val[m.end()]) for m in _WORD.finditer(val)
            if m.start() >= MIN_CONTEXT and m.end() < len(val)]


def frequency_pool(train: str, chinese: bool, tokenizer) -> tuple[dict, dict]:
    """({unit: frequency rank}, {unit: token count}) of the POOL most frequent training units."""
    units = _HAN.findall(train) if chinese else re.findall(r"(?<= )[a-z]{3,}(?=[^a-zA-Z'\-])", train)
    top = [u for u, _ in Counter(units).most_common(POOL)]
    space = "" if chinese else " "
    return {u: r for r, u in enumerate(top)}, {u: len(tokenizer.encode(space + u)) for u in top}


def distractors(answer: str, rank: dict, length: dict, rng) -> list[str] | None:
    """N_OPTIONS-1 units of the answer's token count, drawn from its nearest neighbours in frequency."""
    same = [u for u in rank if length[u] == length[answer] and u != answer]
    if len(same) < N_OPTIONS - 1:
        return None
    near = sorted(same, key=lambda u: (abs(rank[u] - rank[answer]), rank[u]))[:NEAREST]
    return [near[i] for i in rng.choice(len(near), N_OPTIONS - 1, replace=False)]


def make_item(val: str, blank, pool, rng, context_chars: int) -> Item | None:
    start, unit, option = blank
    rank, length = pool
    if unit not in rank:
        return None
    others = distractors(unit, rank, length, rng)
    if others is None:
        return None
    tail = option[len(option) - 1:] if option != unit else ""  # the character after an English word
    lead = " " if option != unit else ""
    options = [lead + u + tail for u in others]
    answer = int(rng.integers(N_OPTIONS))
    options.insert(answer, option)
    return Item(context=val[max(0, start - context_chars):start], options=options, answer=answer)


def build_items(cfg, tokenizer, limit: int, seed: int = 0) -> list[Item]:
    """`limit` items (fewer if the held-out text has fewer blanks), the same for every run of this corpus,
    val_fraction and tokenizer: seeded, and spread over the whole held-out text."""
    train, val = split_text(load_corpus(cfg.data.corpus), cfg.data.val_fraction)
    chinese = is_chinese(val)
    pool = frequency_pool(train, chinese, tokenizer)
    rng = np.random.default_rng(seed)
    candidates = blanks(val, chinese)
    items = []
    # characters of passage: enough for the scorer's context (a BPE token holds a few characters); not tied to the
    # run's block_size, so runs of one corpus and tokenizer answer the same items
    context_chars = 8 * CONTEXT_TOKENS
    for k in rng.permutation(len(candidates)):
        item = make_item(val, candidates[k], pool, rng, context_chars)
        if item is not None:
            items.append(item)
        if len(items) == limit:
            break
    return items
