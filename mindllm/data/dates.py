"""A sequence-to-sequence task that trains on a CPU in minutes: date normalisation (日期格式规范化).

"the 3rd of March, 2021", "03/03/2021", "3.3.2021", "2021年3月3日", "二〇二一年三月三日", ... -> "2021-03-03".
The model has to read month names, ordinals, day/month order by separator and Chinese numerals, and copy digits.
Dates from 1950 to 2049 are split into train/val/test by date (a test date never occurs in training, in any
format), so accuracy measures generalisation. Generated from a seed: the same seed gives the same data.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from ..errors import UserError
from .dataset import IGNORE

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ZH_DIGITS = "〇一二三四五六七八九"


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _zh_number(n: int) -> str:
    """1-31 in Chinese numerals: 3 -> 三, 10 -> 十, 21 -> 二十一."""
    tens, ones = divmod(n, 10)
    return (("" if tens == 1 else ZH_DIGITS[tens]) + "十" if tens else "") + (ZH_DIGITS[ones] if ones else "")


FORMATS = {  # name -> date -> text
    "iso": lambda d: d.isoformat(),
    "us_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "eu_dot": lambda d: f"{d.day}.{d.month}.{d.year}",
    "ymd_slash": lambda d: f"{d.year}/{d.month}/{d.day}",
    "compact": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "long_us": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "short_us": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "long_uk": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "ordinal": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    "weekday": lambda d: f"{d.strftime('%A')}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    "lower": lambda d: f"{d.day} {MONTHS[d.month - 1].lower()[:3]} {d.year}",
    "zh": lambda d: f"{d.year}年{d.month}月{d.day}日",
    "zh_numerals": lambda d: "".join(ZH_DIGITS[int(c)] for c in str(d.year)) + f"年{_zh_number(d.month)}月"
                             f"{_zh_number(d.day)}日",
}


def date_pairs(n: int, split: str, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (source, target) pairs from the dates of one split ('train' 80%, 'val' 10%, 'test' 10% of the days
    1950-01-01 .. 2049-12-31, assigned by a fixed permutation), each in a random format."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split '{split}': use train, val or test")
    first, last = dt.date(1950, 1, 1), dt.date(2049, 12, 31)
    days = np.random.default_rng(12345).permutation((last - first).days + 1)  # fixed: splits never move
    cut = {"train": (0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}[split]
    pool = days[int(cut[0] * len(days)):int(cut[1] * len(days))]
    rng = np.random.default_rng(seed)
    names = list(FORMATS)
    out = []
    for k in rng.choice(pool, size=n, replace=n > len(pool)):
        d = first + dt.timedelta(days=int(k))
        out.append((FORMATS[names[rng.integers(len(names))]](d), d.isoformat()))
    return out


class CharVocab:
    """Characters -> ids with <pad>=0, <s>=1, </s>=2 first."""

    def __init__(self, chars):
        self.itos = [PAD, BOS, EOS] + sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise UserError(f"characters outside the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in ids if i > 2)


def all_characters() -> str:
    """Every character any format can produce (so the vocabulary never depends on the sample)."""
    sample = [f(dt.date(2000 + y, m, d)) for f in FORMATS.values() for y in range(10) for m in range(1, 13)
              for d in (1, 2, 3, 11, 12, 13, 21, 22, 23, 28)]
    weekdays = [dt.date(2024, 1, k).strftime("%A") for k in range(1, 8)]
    return "".join(sample) + "".join(weekdays) + "".join(MONTHS) + "".join(m.lower() for m in MONTHS) + ZH_DIGITS


def encode_pairs(pairs, src_vocab: CharVocab, tgt_vocab: CharVocab, max_len: int):
    """-> src (N, max_len), tgt_in (N, max_len) = <s> y, tgt_out (N, max_len) = y </s>; padded with 0 and, in
    tgt_out, IGNORE (-100: skipped by the loss)."""
    N = len(pairs)
    src = np.zeros((N, max_len), np.int32)
    tgt_in = np.zeros((N, max_len), np.int32)
    tgt_out = np.full((N, max_len), IGNORE, np.int32)
    for i, (s, t) in enumerate(pairs):
        a, b = src_vocab.encode(s), tgt_vocab.encode(t)
        if len(a) > max_len or len(b) + 1 > max_len:
            raise UserError(f"'{s}' -> '{t}' is longer than model.block_size={max_len}")
        src[i, :len(a)] = a
        tgt_in[i, :len(b) + 1] = [1] + b
        tgt_out[i, :len(b) + 1] = b + [2]
    return src, tgt_in, tgt_out
