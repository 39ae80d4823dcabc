"""Data cleaning (数据清洗) before tokenization: normalise, drop exact and near duplicates (去重), filter junk.

    python -m mindllm.data.clean corpus.txt --out clean.txt [--threshold 0.7]

Documents are paragraphs (blank-line separated). Steps, in order, each reported with what it removed:
1. Unicode NFKC normalisation (full-width ｌｅｔｔｅｒｓ and digits １２ -> ASCII, compatibility forms folded).
2. Quality filters: too short, too many symbols, too many repeated lines (heuristics in the style of Gopher/C4).
3. Exact duplicates: same text after normalisation (SHA-1 of the text).
4. Near duplicates: MinHash signatures of character 5-gram shingles, locality-sensitive hashing (LSH) to propose
   candidate pairs, exact Jaccard on the shingle sets to decide; from each cluster the first document is kept.
"""
from __future__ import annotations

import hashlib
import os
import sys
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..errors import ArgumentParser, UserError, cli
from ..files import write_text_atomic

PRIME = (1 << 31) - 1  # hash functions are a*x + b mod this Mersenne prime


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text.replace("\r\n", "\n")).strip()


def split_documents(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped; empty ones dropped."""
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


# -- quality filters -----------------------------------------------------------------------------------------------
def symbol_ratio(doc: str) -> float:
    """Share of non-space characters that are neither letters nor digits (any script)."""
    chars = [c for c in doc if not c.isspace()]
    return sum(unicodedata.category(c)[0] not in "LN" for c in chars) / max(len(chars), 1)


def repeated_line_ratio(doc: str) -> float:
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


def quality_problem(doc: str, min_chars: int = 20, max_symbol_ratio: float = 0.3,
                    max_repeated_lines: float = 0.3) -> str | None:
    """Why `doc` fails the filters ('short', 'symbols', 'repeated lines'), or None if it passes."""
    if len(doc) < min_chars:
        return "short"
    if symbol_ratio(doc) > max_symbol_ratio:
        return "symbols"
    if repeated_line_ratio(doc) > max_repeated_lines:
        return "repeated lines"
    return None


# -- MinHash and LSH -----------------------------------------------------------------------------------------------
def shingles(doc: str, n: int = 5) -> set[str]:
    """Character n-grams of the text with whitespace collapsed: works for Chinese, which has no spaces."""
    s = " ".join(doc.lower().split())
    return {s[i:i + n] for i in range(max(len(s) - n + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHash:
    """k random hash functions h_i(x) = (a_i·x + b_i) mod p over a 31-bit hash x of each shingle.

    The signature is the minimum of each h_i over a set; two sets agree in position i with probability equal to
    their Jaccard similarity, so the fraction of agreeing positions estimates it (std ≈ sqrt(J(1-J)/k))."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        # a, b, x < p = 2^31 - 1, so a·x + b < 2^62 never overflows uint64; a must range over all of [1, p) so
        # that a·x wraps around p many times (a small a keeps h nearly monotone in x: every h picks the same min).
        self.a = rng.integers(1, PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, PRIME, num_perm, dtype=np.uint64)

    def signature(self, items) -> np.ndarray:
        x = np.array([int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") % PRIME
                      for s in items], dtype=np.uint64)
        if len(x) == 0:
            return np.full(self.num_perm, PRIME, np.uint64)
        return ((x[:, None] * self.a + self.b) % np.uint64(PRIME)).min(axis=0)

    @staticmethod
    def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
        return float(np.mean(sig_a == sig_b))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands·rows <= num_perm minimising false positives + false negatives around threshold.

    A pair of similarity s shares at least one band with probability 1 - (1 - s^rows)^bands: an S-curve whose
    steep part should sit at the threshold."""
    s = np.linspace(0, 1, 201)  # a uniform grid on [0, 1]: an integral over it is a mean
    best = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = 1 - (1 - s ** rows) ** bands
        fp = np.where(s < threshold, p, 0).mean()
        fn = np.where(s >= threshold, 1 - p, 0).mean()
        if best is None or fp + fn < best[0]:
            best = (fp + fn, bands, rows)
    return best[1], best[2]


def lsh_candidates(sigs, bands: int, rows: int) -> set[tuple[int, int]]:
    """Candidate pairs (i, j), i < j: the signatures (one row per document) agree on every one of the `rows`
    columns of at least one band; band k is columns k*rows .. (k+1)*rows - 1, and columns after the last band are
    ignored. Each band hashes the documents into buckets, so only documents that share a bucket are paired."""
    sigs = np.asarray(sigs)
    candidates = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i, sig in enumerate(sigs[:, band * rows:(band + 1) * rows]):
            buckets.setdefault(np.ascontiguousarray(sig).tobytes(), []).append(i)
        for members in buckets.values():
            candidates.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    return candidates


def near_duplicate_pairs(docs, threshold: float = 0.7, num_perm: int = 128, n: int = 5, seed: int = 1):
    """[(i, j, jaccard)] for i < j whose shingle sets have Jaccard >= threshold (found via MinHash LSH)."""
    sets = [shingles(d, n) for d in docs]
    mh = MinHash(num_perm, seed)
    sigs = np.stack([mh.signature(s) for s in sets]) if sets else np.zeros((0, num_perm), np.uint64)
    bands, rows = lsh_params(threshold, num_perm)
    pairs = [(i, j, jaccard(sets[i], sets[j])) for i, j in sorted(lsh_candidates(sigs, bands, rows))]
    return [(i, j, s) for i, j, s in pairs if s >= threshold]


def clusters(n: int, pairs) -> list[int]:
    """Union-find: the smallest document index of each document's cluster."""
    root = list(range(n))

    def find(i):
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i, j, *_ in pairs:
        a, b = find(i), find(j)
        root[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


# -- the pipeline --------------------------------------------------------------------------------------------------
@dataclass
class CleanReport:
    input_docs: int
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    kept_docs: int = 0

    def add(self, step: str, doc: str) -> None:
        self.removed[step] = self.removed.get(step, 0) + 1
        if len(self.examples.setdefault(step, [])) < 3:
            self.examples[step].append(doc[:80])

    def __str__(self) -> str:
        lines = [f"{'step':<22}{'removed':>9}", f"{'input documents':<22}{self.input_docs:>9}"]
        lines += [f"{step:<22}{n:>9}" for step, n in self.removed.items()]
        lines.append(f"{'kept':<22}{self.kept_docs:>9}")
        return "\n".join(lines)


def clean(docs, threshold: float = 0.7, num_perm: int = 128, **quality) -> tuple[list[str], CleanReport]:
    """Run the four steps; return the kept (normalised) documents in their original order and the report."""
    report = CleanReport(len(docs))
    for step in ("short", "symbols", "repeated lines", "exact duplicate", "near duplicate"):
        report.removed[step] = 0
    kept, seen = [], set()
    for doc in map(normalize, docs):
        problem = quality_problem(doc, **quality)
        digest = hashlib.sha1(doc.encode("utf-8")).digest()
        if problem:
            report.add(problem, doc)
        elif digest in seen:
            report.add("exact duplicate", doc)
        else:
            seen.add(digest)
            kept.append(doc)
    roots = clusters(len(kept), near_duplicate_pairs(kept, threshold, num_perm))
    out = []
    for i, doc in enumerate(kept):
        if roots[i] == i:
            out.append(doc)
        else:
            report.add("near duplicate", doc)
    report.kept_docs = len(out)
    return out, report


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m mindllm.data.clean", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="a UTF-8 text file; paragraphs (blank-line separated) are the documents")
    ap.add_argument("--out", help="write the kept documents here (default: only print the report)")
    ap.add_argument("--threshold", type=float, default=0.7, help="Jaccard similarity of near duplicates")
    ap.add_argument("--num-perm", type=int, default=128, help="MinHash signature length")
    ap.add_argument("--min-chars", type=int, default=20)
    return ap


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 < args.threshold <= 1:
        raise UserError("--threshold must be in (0, 1]")
    if args.num_perm < 1:
        raise UserError("--num-perm must be >= 1")
    if args.out:  # before the cleaning runs: a bad output path must not cost the whole run
        check_writable(args.out)
    docs = read_documents(args.input)
    kept, report = clean(docs, args.threshold, args.num_perm, min_chars=args.min_chars)
    print(report)
    if args.out:
        try:
            write_text_atomic(args.out, "\n\n".join(kept) + "\n")  # never a half-written output
        except OSError as e:
            raise UserError(f"cannot write '{args.out}' ({e.strerror})") from None
        print(f"wrote {len(kept)} documents to {args.out}", file=sys.stderr)


def read_documents(path: str) -> list[str]:
    if os.path.isdir(path):
        raise UserError(f"'{path}' is a directory; give a UTF-8 text file")
    try:
        with open(path, encoding="utf-8") as fh:
            docs = split_documents(fh.read())
    except FileNotFoundError:
        raise UserError(f"input file '{path}' not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"'{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read '{path}' ({e.strerror})") from None
    if not docs:
        raise UserError(f"'{path}' has no text")
    return docs


def check_writable(path: str) -> None:
    """A file can be created at `path`: its folder exists and takes writes, and `path` is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"--out '{path}' is a directory; give a file name")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"--out '{path}': the folder '{folder}' does not exist or cannot be written")


if __name__ == "__main__":
    main()
