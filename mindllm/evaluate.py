"""Evaluation metrics, written out so they can be read: exact match, BLEU (tested against sacrebleu), accuracy,
precision, recall, F1 and the confusion matrix (tested against scikit-learn), word F1, ROUGE-L (tested against
rouge-score) and bits per byte."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np


def exact_match(predictions, references) -> float:
    """Share of predictions equal to their reference."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    return sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1)


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions, references, max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002) in [0, 100] over token lists (one reference each):
    BP · exp(mean_n log p_n), p_n = clipped n-gram matches / predicted n-grams, summed over the corpus;
    BP = exp(1 - r/c) when the predictions (c tokens) are shorter than the references (r tokens), else 1.
    Any p_n = 0 makes BLEU 0 (no smoothing), as sacrebleu's default."""
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for pred, ref in zip(predictions, references):
        c, r = c + len(pred), r + len(ref)
        for n in range(1, max_n + 1):
            p, q = _ngrams(pred, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(k, q[g]) for g, k in p.items())  # clipped counts
            totals[n - 1] += max(len(pred) - n + 1, 0)
    if c == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100.0 * bp * math.exp(log_p)


def classification_metrics(predictions, labels, n_classes: int) -> dict:
    """Accuracy, macro-averaged precision / recall / F1 and the confusion matrix (rows: true class, columns:
    predicted). A class never predicted has precision 0 (as scikit-learn's zero_division=0); macro averaging weighs
    every class equally, so always answering the majority class scores well on accuracy but badly on F1."""
    p, y = np.asarray(predictions, np.int64), np.asarray(labels, np.int64)
    if p.shape != y.shape:
        raise ValueError("predictions and labels differ in length")
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, p), 1)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {"accuracy": float(tp.sum() / max(len(y), 1)), "precision": float(precision.mean()),
            "recall": float(recall.mean()), "f1": float(f1.mean()), "confusion": cm.tolist()}


# CJK ideographs count as one word each, as Chinese reading-comprehension benchmarks (CMRC 2018) score answers:
# text without spaces would otherwise be a single word, and F1 only 0 or 1
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORDS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def f1_words(text: str) -> list[str]:
    """The lower-cased words token_f1 compares: whitespace-separated runs, every CJK ideograph on its own."""
    return _WORDS.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's answer F1: harmonic mean of precision and recall of the lower-cased words two texts share (with
    multiplicity; Chinese scored by character); 1.0 for two empty texts."""
    p, r = f1_words(prediction), f1_words(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


# rouge-score's tokenizer keeps only [a-z0-9] runs, so Chinese text would score as empty: here every CJK ideograph
# is a token of its own (as word F1 above), and on text without ideographs the tokens equal rouge-score's
_ROUGE_TOKENS = re.compile(f"[{_CJK}]|[a-z0-9]+")


def rouge_words(text: str) -> list[str]:
    """The tokens ROUGE-L compares: lower-cased runs of letters and digits, every CJK ideograph on its own."""
    return _ROUGE_TOKENS.findall(text.lower())


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row at a time)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin, 2004) of one text against its reference: with LCS the longest common subsequence of
    their tokens, precision LCS/|prediction|, recall LCS/|reference|, F = 2PR/(P+R); 0 when either is empty (as
    rouge-score)."""
    p, r = rouge_words(prediction), rouge_words(reference)
    lcs = lcs_length(p, r) if p and r else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Cross-entropy summed over the tokens (in nats), in bits per UTF-8 byte of the text they encode: a model's
    cost of the text itself, comparable across tokenizers (per-token loss is not: a BPE token holds more text than
    a character)."""
    if n_bytes <= 0:
        raise ValueError("bits per byte of an empty text")
    return total_nats / math.log(2) / n_bytes
