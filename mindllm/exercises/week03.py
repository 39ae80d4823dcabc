"""Week 3 exercises: near-duplicate detection and tokenization, each against mindllm.data (notebook 03).

The references are the package's own: `clean.jaccard`, `clean.lsh_candidates` (the banding inside
`near_duplicate_pairs`), `BPETokenizer.train` and its encoder, and `pad_batch`. Every check draws fresh random
cases from a seeded generator: several sizes, and the edge cases (empty inputs, ties, unseen characters)."""
from __future__ import annotations

import numpy as np

from ..data.bpe import BPETokenizer
from ..data.clean import jaccard as reference_jaccard, lsh_candidates as reference_lsh_candidates
from ..data.tokenizer import pad_batch as reference_pad_batch
from .core import Mismatch, exercise, expect_close, expect_equal

WORDS = ["low", "lower", "lowest", "new", "newer", "newest", "wide", "wider", "the", "and", "人民", "日报", "中国",
         "经济", "aaab", "ab", "!", "12", "2024", "O", "lord", "Lord", "LORD"]


def _text(rng, n_words: int) -> str:
    """A random text of the words above (English, Chinese, digits, punctuation), joined by spaces or not."""
    words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n_words)]
    return "".join(w + (" " if rng.random() < 0.8 else "") for w in words).strip()


@exercise("week03.jaccard", hint="|A ∩ B| / |A ∪ B| with Python's set operators & and |; two empty sets count as "
                                  "identical (1.0)")
def jaccard(student) -> int:
    rng = np.random.default_rng(31)
    cases = [({"a", "b", "c"}, {"b", "c", "d"}), ({"x"}, {"x"}), ({"x"}, {"y"}), (set(), {"a"}), (set(), set())]
    for size in (5, 50, 500):
        a = {int(v) for v in rng.integers(0, size * 2, size)}
        b = {int(v) for v in rng.integers(0, size * 2, size)}
        cases.append((a, b))
    for a, b in cases:
        shown = f"{sorted(a)[:4]}{'...' if len(a) > 4 else ''} and {sorted(b)[:4]}{'...' if len(b) > 4 else ''}"
        expect_close(student(set(a), set(b)), reference_jaccard(a, b), f"J of {shown} ({len(a)} and {len(b)} items)")
    return len(cases)


@exercise("week03.lsh_candidates",
          hint="band k is columns k*rows .. (k+1)*rows - 1 (later columns are ignored); put each document in a bucket "
               "keyed by its band (tuple(sig[band])); every two documents in one bucket are a pair (i, j) with i < j")
def lsh_candidates(student) -> int:
    rng = np.random.default_rng(32)
    cases = [(6, 4, 2, 3), (20, 6, 3, 2), (40, 14, 9, 2), (1, 3, 2, 5), (5, 2, 2, 1), (12, 3, 4, 3)]
    n = 0
    for n_docs, bands, rows, alphabet in cases:  # a small alphabet of signature values makes bands collide
        num_perm = bands * rows + int(rng.integers(0, 3))  # sometimes columns left over after the last band
        sigs = rng.integers(0, alphabet, (n_docs, num_perm)).astype(np.uint64)
        want = reference_lsh_candidates(sigs, bands, rows)
        got = student(sigs.copy(), bands, rows)
        try:
            got = {(int(i), int(j)) for i, j in got}
        except (TypeError, ValueError):
            raise Mismatch(f"return a set of pairs (i, j), got {type(got).__name__} {str(got)[:60]}") from None
        what = f"{n_docs} signatures of length {num_perm}, {bands} bands × {rows} rows"
        for i, j in sorted(got - want):
            if i >= j:
                raise Mismatch(f"{what}: pair {(i, j)} — write each pair once, as (i, j) with i < j")
            raise Mismatch(f"{what}: {(i, j)} is not a candidate: no band of rows {rows} columns is equal in both "
                           f"(signature {i}: {sigs[i].tolist()}, signature {j}: {sigs[j].tolist()})")
        for i, j in sorted(want - got):
            band = next(k for k in range(bands)
                        if (sigs[i, k * rows:(k + 1) * rows] == sigs[j, k * rows:(k + 1) * rows]).all())
            raise Mismatch(f"{what}: missing the pair {(i, j)}: both have {sigs[i, band * rows:(band + 1) * rows].tolist()} "
                           f"in band {band} (columns {band * rows}..{(band + 1) * rows - 1}); "
                           f"{len(want - got)} of {len(want)} pairs missing")
        n += 1
    return n


@exercise("week03.bpe_merges",
          hint="split with regex.findall(GPT2_SPLIT, text), each chunk into its UTF-8 bytes; repeat: count adjacent "
               "pairs over all chunks, take the most frequent (ties: the smaller pair), stop if it occurs fewer than "
               "2 times, replace it left to right by the next id (256, 257, ...)")
def bpe_merges(student) -> int:
    rng = np.random.default_rng(33)
    cases = [("aaabdaaabac", 10), ("low lower lowest newer newest wider widest new low", 8), ("abc", 5),
             ("aaaaaaa", 4), ("人民日报 人民 日报 人民日报", 6), ("", 0)]
    cases += [(_text(rng, n_words), n_merges) for n_words, n_merges in ((30, 10), (120, 25), (300, 40))]
    for text, n_merges in cases:
        want = [] if not text else [tuple(int(v) for v in p) for p in
                                    BPETokenizer.train(text, 256 + n_merges, special_tokens=()).merges]
        got = student(text, n_merges)
        try:
            got = [(int(a), int(b)) for a, b in got]
        except (TypeError, ValueError):
            raise Mismatch(f"return a list of pairs (a, b), got {type(got).__name__} {str(got)[:60]}") from None
        for k, (g, w) in enumerate(zip(got, want)):
            if g != w:
                raise Mismatch(f"text {text[:40]!r}: merge {k + 1} (new id {256 + k}) is {g}, expected {w}")
        if len(got) != len(want):
            more = "stop when the most frequent pair occurs fewer than 2 times" if len(got) > len(want) else \
                "learn up to n_merges merges"
            raise Mismatch(f"text {text[:40]!r}, n_merges={n_merges}: {len(got)} merges, expected {len(want)} ({more})")
    return len(cases)


@exercise("week03.bpe_encode",
          hint="split with regex.findall(GPT2_SPLIT, text); in each chunk start from its bytes and repeatedly merge the "
               "adjacent pair with the LOWEST new id (the earliest merge) until no pair of the chunk is in `merges`")
def bpe_encode(student) -> int:
    rng = np.random.default_rng(34)
    tok = BPETokenizer.train(" ".join(_text(rng, 400) for _ in range(3)), 256 + 60, special_tokens=())
    toy = BPETokenizer.train("aaabdaaabac", 300, special_tokens=())
    cases = [(toy, "aaabdaaabac"), (toy, ""), (tok, "lowest newest"), (tok, "LORD 人民日报 2024!"),
             (tok, "unseen: é, 😀, 経済")]
    cases += [(tok, _text(rng, n)) for n in (5, 40, 200)]
    for t, text in cases:
        got = student(text, dict(t.merges))
        expect_equal(list(map(int, got)), t.encode_ordinary(text), f"ids of {text[:40]!r}")
    return len(cases)


@exercise("week03.pad_batch",
          hint="cut each row to max_length first; width = max_length, or the longest row if max_length is None; "
               "fill with pad_id; mask 1 where a real token is, 0 on padding")
def pad_batch(student) -> int:
    rng = np.random.default_rng(35)
    cases = [([[5, 6, 7], [8]], 0, None), ([[1, 2, 3, 4, 5], [6, 7]], 9, 3), ([[1], [2, 3]], 0, 6),
             ([[], [4, 4]], 1, None)]
    for batch in (1, 4, 16):
        seqs = [rng.integers(2, 1000, int(rng.integers(0, 30))).tolist() for _ in range(batch)]
        cases.append((seqs, 0, None if batch != 16 else 12))
    for seqs, pad_id, max_length in cases:
        want = reference_pad_batch(seqs, pad_id, max_length)
        got = student([list(s) for s in seqs], pad_id, max_length)
        if not isinstance(got, dict) or not {"input_ids", "attention_mask"} <= set(got):
            raise Mismatch(f"return a dict with 'input_ids' and 'attention_mask', got {type(got).__name__} "
                           f"{sorted(got) if isinstance(got, dict) else ''}")
        what = f"{len(seqs)} rows of lengths {[len(s) for s in seqs][:6]}, pad_id {pad_id}, max_length {max_length}"
        for key in ("input_ids", "attention_mask"):
            expect_equal(np.asarray(got[key]), want[key], f"{key} for {what}")
    return len(cases)
