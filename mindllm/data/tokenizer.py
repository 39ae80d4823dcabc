"""Tokenizers with one interface: encode(str) -> list[int], decode(ids) -> str, vocab_size, save(path).

- CharTokenizer: one id per distinct character of the training text (the classic char-level GPT).
- BPETokenizer: byte-level BPE (GPT-2 style) trained offline with Hugging Face `tokenizers`.
Both save to a single JSON file, so a run directory carries the exact tokenizer its model was trained with.
"""
from __future__ import annotations

import json

from ..errors import UserError

ENDOFTEXT = "<|endoftext|>"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unseen = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in unseen[:10])
            raise UserError(f"text has {len(unseen)} character(s) the tokenizer never saw: {shown}; the "
                            f"vocabulary is the {self.vocab_size} characters of the training corpus") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"type": "char", "chars": self.chars}, fh, ensure_ascii=False)


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_chunks(text), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=[ENDOFTEXT], show_progress=False)
        return cls(bpe._tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # Encoding paragraph chunks in a batch is parallel and byte-exact (decode(encode(t)) == t).
        return [i for enc in self.tok.encode_batch(_chunks(text)) for i in enc.ids]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str) -> None:
        self.tok.save(path)


def _chunks(text: str, size: int = 1 << 14) -> list[str]:
    """Split at newlines into pieces of about `size` characters; joining them gives back `text`."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def train_tokenizer(kind: str, text: str, vocab_size: int = 1024):
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise UserError(f"unknown tokenizer '{kind}': use char or bpe")


def load_tokenizer(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"tokenizer file '{path}' not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"tokenizer file '{path}' is corrupt (not JSON)") from None
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(path))
