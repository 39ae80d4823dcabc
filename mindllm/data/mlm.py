"""BERT pretraining data: sentence pairs for next-sentence prediction (NSP, 下一句预测) and the 15% / 80-10-10
masking rule of the masked language model (MLM, 掩码语言模型), after Google's create_pretraining_data.py.

Masks are drawn afresh for every batch (dynamic masking, as RoBERTa does), from a numpy Generator whose state is
the whole data position, so a resumed run sees exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import UserError
from .dataset import IGNORE

_SENTENCE_END = re.compile(r"(?<=[。！？!?])")


def split_sentences(text: str) -> list[str]:
    """Lines, each further cut after sentence-final 。！？!? (a People's Daily paragraph is one line; a line of
    verse is already a unit)."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def tokenize_sentences(tokenizer, sentences: list[str]) -> list[np.ndarray]:
    """Token ids of each sentence, without special tokens; empty results dropped."""
    encs = tokenizer.tok.encode_batch(sentences, add_special_tokens=False)
    return [np.array(e.ids, np.int32) for e in encs if e.ids]


def mask_tokens(ids, maskable, rng, mask_id: int, random_ids, prob: float = 0.15, max_predictions: int = 20):
    """BERT's masking of one sequence. Choose round(prob × #maskable) positions (at least 1, at most
    max_predictions); of those, 80% become [MASK], 10% a random token, 10% stay unchanged — the model must predict
    the original token at all of them, so it cannot learn that only [MASK] positions matter.

    Returns (masked ids, positions (sorted), original ids at those positions)."""
    cand = np.flatnonzero(maskable)
    n = min(max_predictions, max(1, int(round(len(cand) * prob))), len(cand))
    pos = np.sort(rng.choice(cand, size=n, replace=False))
    out = np.array(ids, copy=True)
    r = rng.random(n)
    out[pos[r < 0.8]] = mask_id
    swap = pos[(r >= 0.8) & (r < 0.9)]
    out[swap] = rng.choice(random_ids, size=len(swap))
    return out, pos, np.asarray(ids)[pos]


class PairBatches:
    """Batches for BertForPreTraining: (input_ids, token_type_ids, attention_mask, mlm_positions, mlm_labels,
    nsp_labels), shapes (B, T) × 3, (B, P) × 2, (B,).

    A pair is [CLS] A [SEP] B [SEP]: A is one or more consecutive sentences; half the time B is the text that
    follows A (label 0, IsNext), otherwise sentences taken from at least `far` sentences away (label 1, NotNext,
    in practice another article or play). Too-long pairs lose tokens from the longer part, at its outer end
    (the start of A, the end of B), so an IsNext junction stays contiguous."""

    def __init__(self, segments, tokenizer, max_len: int, batch_size: int, seed: int, mask_prob: float = 0.15,
                 far: int = 100):
        if len(segments) < 2 * far + 2:
            raise UserError(f"BERT pretraining needs at least {2 * far + 2} sentences in each split, got "
                            f"{len(segments)}; use a bigger corpus")
        if max_len < 8:
            raise UserError(f"model.block_size={max_len} is too short for [CLS] A [SEP] B [SEP]; use >= 8")
        self.segments, self.max_len, self.batch_size, self.far = segments, max_len, batch_size, far
        ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]")}
        if None in ids.values():
            raise UserError("the BERT tokenizer needs [CLS], [SEP], [MASK] and [PAD] tokens; use "
                            "data.tokenizer=hf_wordpiece or bert_uncased")
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], ids["[PAD]"]
        special = set(ids.values()) | {tokenizer.token_to_id("[UNK]")}
        self.random_ids = np.array([i for i in range(tokenizer.vocab_size) if i not in special], np.int32)
        self.mask_prob = mask_prob
        self.max_predictions = max(1, int(round(max_len * mask_prob)))
        self.rng = np.random.default_rng(seed)

    def _take(self, start: int, budget: int) -> list[np.ndarray]:
        """Consecutive sentences from `start` until `budget` tokens are reached (at least one sentence)."""
        out, n, i = [], 0, start
        while i < len(self.segments) and (not out or n < budget):
            out.append(self.segments[i])
            n += len(self.segments[i])
            i += 1
        return out

    def pair(self):
        """(A ids, B ids, nsp label) for one example."""
        rng, target = self.rng, self.max_len - 3
        i = int(rng.integers(0, len(self.segments) - 1))
        chunk = self._take(i, target)
        if len(chunk) == 1:  # one long sentence: continue into the next so a split exists
            chunk.append(self.segments[i + 1])
        cut = int(rng.integers(1, len(chunk)))
        a = np.concatenate(chunk[:cut])
        if rng.random() < 0.5:
            b, label = np.concatenate(chunk[cut:]), 0
        else:
            j = int(rng.integers(0, len(self.segments) - 2 * self.far))
            j = j if j < i - self.far else j + 2 * self.far + 1  # skip the window around i
            j = min(j, len(self.segments) - 1)
            b, label = np.concatenate(self._take(j, max(1, target - len(a)))), 1
        while len(a) + len(b) > target:  # trim the longer side, away from the A|B junction NSP is about
            if len(a) > len(b):
                a = a[1:]
            else:
                b = b[:-1]
        return a, b, label

    def example(self):
        a, b, label = self.pair()
        ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]]).astype(np.int32)
        types = np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)])
        maskable = np.ones(len(ids), bool)
        maskable[[0, len(a) + 1, len(ids) - 1]] = False  # never mask [CLS]/[SEP]
        masked, pos, orig = mask_tokens(ids, maskable, self.rng, self.mask_id, self.random_ids, self.mask_prob,
                                        self.max_predictions)
        return masked, types, pos, orig, label

    def next(self):
        B, T, P = self.batch_size, self.max_len, self.max_predictions
        ids = np.full((B, T), self.pad_id, np.int32)
        types, attn = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
        positions, labels = np.zeros((B, P), np.int32), np.full((B, P), IGNORE, np.int32)
        nsp = np.zeros(B, np.int32)
        for r in range(B):
            x, t, pos, orig, nsp[r] = self.example()
            ids[r, :len(x)], types[r, :len(x)], attn[r, :len(x)] = x, t, 1
            positions[r, :len(pos)], labels[r, :len(pos)] = pos, orig
        return ids, types, attn, positions, labels, nsp

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
