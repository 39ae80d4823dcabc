"""Token streams on disk (numpy memmap) and random-window batches for language modelling."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import UserError
from ..files import write_text_atomic

IGNORE = -100  # the label of a position the loss skips (prompt, padding, unmasked token): PyTorch's convention


def _dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Train/val split by characters, at the first newline after the cut: the val part is the end of the text."""
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.find("\n", cut)
    cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
    return text[:cut], text[cut:]


def prepare_tokens(text: str, tokenizer, data_dir: str, val_fraction: float = 0.1):
    """Tokenize `text`, split it train/val (the val part is the end of the text), and cache both as
    `train.bin`/`val.bin` memmaps in `data_dir`. A cache is reused only if text and tokenizer are unchanged."""
    os.makedirs(data_dir, exist_ok=True)
    tok_path = os.path.join(data_dir, "_tok.json")
    tokenizer.save(tok_path)
    with open(tok_path, "rb") as fh:
        key = hashlib.sha256(text.encode("utf-8") + fh.read() + str(val_fraction).encode()).hexdigest()
    os.remove(tok_path)
    meta_path = os.path.join(data_dir, "meta.json")
    dtype = _dtype(tokenizer.vocab_size)
    paths = {s: os.path.join(data_dir, f"{s}.bin") for s in ("train", "val")}
    if _cached(meta_path, key, paths):
        return {s: np.memmap(p, dtype=dtype, mode="r") for s, p in paths.items()}
    train_text, val_text = split_text(text, val_fraction)
    splits = {"train": np.asarray(tokenizer.encode(train_text), dtype=dtype),
              "val": np.asarray(tokenizer.encode(val_text), dtype=dtype)}
    for s, arr in splits.items():
        if len(arr) < 2:  # (an empty file cannot even be memory-mapped)
            raise UserError(f"the corpus is too small: its {s} part has {len(arr)} token(s); give a text of at "
                            f"least a few thousand characters")
        tmp = paths[s] + ".tmp"
        try:
            arr.tofile(tmp)
            os.replace(tmp, paths[s])
        finally:
            if os.path.exists(tmp):  # a full disk: no half-written cache left behind
                os.remove(tmp)
    write_text_atomic(meta_path, json.dumps({"key": key, "vocab_size": tokenizer.vocab_size,
                                             "dtype": np.dtype(dtype).name, "train_tokens": len(splits["train"]),
                                             "val_tokens": len(splits["val"])}))
    return {s: np.memmap(p, dtype=dtype, mode="r") for s, p in paths.items()}


def _cached(meta_path: str, key: str, paths: dict) -> bool:
    """Whether the token files were written for this text and tokenizer (an unreadable meta.json: no)."""
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("key") == key and all(os.path.exists(p) for p in paths.values())


class TokenWindows:
    """Random (x, y) windows of `block_size` tokens; y is x shifted left by one.

    The numpy Generator is the whole data position: save `state()` with a checkpoint and `set_state()` it back
    to resume on exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int):
        if len(tokens) <= block_size:
            raise UserError(f"the data split has {len(tokens)} tokens, fewer than model.block_size+1 "
                            f"({block_size + 1}); use a bigger corpus or a smaller block_size")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rng = np.random.default_rng(seed)

    def next(self):
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        x = np.stack([self.tokens[i: i + self.block_size] for i in starts]).astype(np.int32)
        y = np.stack([self.tokens[i + 1: i + 1 + self.block_size] for i in starts]).astype(np.int32)
        return x, y

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


class RowBatches:
    """Random batches of rows from aligned arrays (e.g. source, target-in, target-out of a seq2seq set), with the
    same resumable Generator state as TokenWindows."""

    def __init__(self, arrays, batch_size: int, seed: int):
        self.arrays, self.batch_size = arrays, batch_size
        self.rng = np.random.default_rng(seed)

    def next(self):
        rows = self.rng.integers(0, len(self.arrays[0]), size=self.batch_size)
        return tuple(a[rows] for a in self.arrays)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
