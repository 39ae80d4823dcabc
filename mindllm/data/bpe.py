"""Byte-level byte-pair encoding (字节对编码, BPE), written from scratch — the GPT-2 tokenizer's algorithm.

Text -> UTF-8 bytes -> ids 0..255, then repeatedly replace the most frequent adjacent pair of ids with a new id.
Training records those merges in order; encoding replays them (lowest-ranked pair first). Because every byte has an
id, any Unicode string round-trips exactly: decode(encode(s)) == s.

Before counting, text is split into chunks with GPT-2's regex (words with their leading space, numbers,
punctuation runs, whitespace), so merges never cross a word boundary ("dog." and "dog!" share "dog").
The same class loads the real GPT-2 vocabulary (`gpt2()`), whose merges are recovered from its token ranks.
"""
from __future__ import annotations

import base64
import heapq
import json
from collections import Counter, defaultdict

import regex

from ..errors import UserError

GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def pair_counts(ids, counts=None, weight: int = 1) -> Counter:
    """How often each adjacent pair occurs in `ids` (added into `counts`, each occurrence weighing `weight`)."""
    counts = Counter() if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] += weight
    return counts


def merge(ids, pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, with `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """vocab[id] -> bytes; merges[(a, b)] -> id of the merged token, and its rank (earlier merges win)."""
    kind = "bpe"

    def __init__(self, vocab: list[bytes], merges: dict, special: dict[str, int], pattern: str = GPT2_SPLIT):
        self.vocab, self.merges, self.special, self.pattern = vocab, merges, special, pattern
        self.byte_id = {v[0]: i for i, v in enumerate(vocab) if len(v) == 1}  # GPT-2 does not put byte b at id b
        self.rank = {pair: r for r, pair in enumerate(merges)}  # dict order is merge order
        self._split = regex.compile(pattern)
        self._special_re = regex.compile("|".join(regex.escape(s) for s in sorted(special, key=len, reverse=True)))
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special)

    # -- training: the merge loop -------------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,), min_frequency: int = 2,
              pattern: str = GPT2_SPLIT, verbose: bool = False) -> "BPETokenizer":
        """Learn `vocab_size - 256 - len(special_tokens)` merges (fewer if no pair occurs `min_frequency` times).

        Ties between equally frequent pairs go to the pair with the smaller ids, so training is deterministic."""
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise UserError(f"BPE vocab_size {vocab_size} is smaller than the byte alphabet: it needs at least "
                            f"256 byte tokens + {len(special_tokens)} special token(s) = "
                            f"{256 + len(special_tokens)}")
        if not text:
            raise UserError("cannot train a BPE tokenizer on an empty text")
        chunks = Counter(regex.findall(pattern, text))
        words = [list(c.encode("utf-8")) for c in chunks]  # each distinct chunk once, weighted by its count
        freq = list(chunks.values())
        stats, where = Counter(), defaultdict(set)  # pair -> count, pair -> indices of words containing it
        for w, (ids, f) in enumerate(zip(words, freq)):
            pair_counts(ids, stats, f)
            for pair in zip(ids, ids[1:]):
                where[pair].add(w)
        # The most frequent pair is the top of a heap of (-count, pair); ties go to the smaller pair. An entry whose
        # count is out of date is skipped when it surfaces (re-scanning all pairs every merge is what makes naive
        # BPE slow: Chinese text has hundreds of thousands of distinct byte pairs).
        heap = [(-c, p) for p, c in stats.items()]
        heapq.heapify(heap)
        vocab = [bytes([b]) for b in range(256)]
        merges = {}
        while len(merges) < n_merges and heap:
            count, pair = heapq.heappop(heap)
            if -count != stats.get(pair, 0):
                continue  # stale
            if -count < min_frequency:
                break
            new_id = len(vocab)
            merges[pair] = new_id
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
            if verbose:
                print(f"merge {new_id - 255}: {vocab[pair[0]]!r} + {vocab[pair[1]]!r} -> {vocab[-1]!r} "
                      f"({-count} times)")
            # Only words that contain the pair change, and in them only the pairs next to each merge site:
            # (x, a) becomes (x, new) and (b, y) becomes (new, y). Re-counting whole words would be the slow part.
            touched = set()
            for w in where.pop(pair):
                ids, f, out, i = words[w], freq[w], [], 0
                while i < len(ids):
                    if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                        changed = []
                        if out:
                            changed += [((out[-1], pair[0]), -f), ((out[-1], new_id), f)]
                        if i + 2 < len(ids):
                            changed += [((pair[1], ids[i + 2]), -f), ((new_id, ids[i + 2]), f)]
                        for p, d in changed:
                            stats[p] += d
                            touched.add(p)
                            if d > 0:
                                where[p].add(w)
                        stats[pair] -= f
                        out.append(new_id)
                        i += 2
                    else:
                        out.append(ids[i])
                        i += 1
                words[w] = out
            for p in touched:
                if stats[p] > 0:
                    heapq.heappush(heap, (-stats[p], p))
        special = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
        return cls(vocab, merges, special, pattern)

    # -- encoding and decoding ----------------------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = [self.byte_id[b] for b in chunk.encode("utf-8")]
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.rank.get(p, float("inf")))
            if pair not in self.merges:
                break  # nothing left to merge
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special-token strings as plain text."""
        out = []
        for chunk in self._split.findall(text):
            ids = self._cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(self._cache) < 1 << 18:
                    self._cache[chunk] = ids
            out.extend(ids)
        return out

    def encode(self, text: str) -> list[int]:
        """Encode; special-token strings such as <|endoftext|> become their single id."""
        if not self.special:
            return self.encode_ordinary(text)
        out, start = [], 0
        for m in self._special_re.finditer(text):
            out.extend(self.encode_ordinary(text[start:m.start()]))
            out.append(self.special[m.group()])
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    def decode(self, ids) -> str:
        inverse = {i: s.encode("utf-8") for s, i in self.special.items()}
        data = b"".join(self.vocab[i] if i < len(self.vocab) else inverse[i] for i in map(int, ids))
        return data.decode("utf-8", errors="replace")  # a slice may cut a character: show U+FFFD, don't fail

    def token_bytes(self, i: int) -> bytes:
        return self.vocab[i]

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        data = {"type": "bpe", "pattern": self.pattern, "special": self.special,
                "vocab": [base64.b64encode(v).decode("ascii") for v in self.vocab],
                "merges": [[a, b, i] for (a, b), i in self.merges.items()]}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: dict) -> "BPETokenizer":
        vocab = [base64.b64decode(v) for v in data["vocab"]]
        merges = {(a, b): i for a, b, i in data["merges"]}
        return cls(vocab, merges, dict(data["special"]), data["pattern"])

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], special: dict[str, int],
                   pattern: str = GPT2_SPLIT) -> "BPETokenizer":
        """From a tiktoken-style {token bytes: rank} table (ranks = ids = merge order): recover each token's merge
        by running BPE on its bytes with only the lower-ranked tokens allowed; it must end in exactly two parts."""
        vocab = [b""] * len(ranks)
        for tok, r in ranks.items():
            vocab[r] = tok
        merges = {}
        for r, tok in enumerate(vocab):
            if len(tok) == 1:
                continue
            parts = [tok[i:i + 1] for i in range(len(tok))]
            while len(parts) > 2:
                best = None
                for i in range(len(parts) - 1):
                    q = ranks.get(parts[i] + parts[i + 1])
                    if q is not None and q < r and (best is None or q < best[0]):
                        best = (q, i)
                i = best[1]
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            merges[(ranks[parts[0]], ranks[parts[1]])] = r
        return cls(vocab, merges, special, pattern)


def read_tiktoken(path: str) -> dict[bytes, int]:
    """A `.tiktoken` file: one 'base64(token bytes) rank' per line."""
    ranks = {}
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks
