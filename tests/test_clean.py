"""Cleaning: MinHash estimates against exact Jaccard and datasketch, planted near-duplicates found, distinct texts
kept, quality filters, and the command line."""
import random
import subprocess
import sys

import numpy as np
import pytest

from mindllm.data import load_corpus
from mindllm.data.clean import (MinHash, clean, jaccard, lsh_params, near_duplicate_pairs, normalize,
                                quality_problem, shingles, split_documents)


def perturb(doc: str, rng: random.Random, rate: float) -> str:
    """A near-duplicate: about `rate` of the words upper-cased, deleted, or with a word inserted."""
    words = doc.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        i, op = rng.randrange(len(words)), rng.random()
        if op < 0.4:
            words[i] = words[i].upper()
        elif op < 0.7 and len(words) > 1:
            del words[i]
        else:
            words.insert(i, rng.choice(["the", "and", "O", "my", "lord"]))
    return " ".join(words)


@pytest.fixture(scope="module")
def planted():
    """300 distinct Shakespeare paragraphs (>= 300 chars) and a near-duplicate of each of the first 100."""
    rng = random.Random(0)
    docs = [d for d in split_documents(load_corpus("shakespeare")) if len(d) >= 300]
    originals = rng.sample(sorted(set(docs)), 300)
    return originals, [perturb(d, rng, 0.08) for d in originals[:100]]


def test_minhash_estimates_jaccard_like_datasketch(planted):
    from datasketch import MinHash as Reference

    originals, dups = planted
    mh = MinHash(num_perm=256)
    ours, ref, exact = [], [], []
    for a, b in zip(originals[:60], dups[:60] + originals[60:]):  # half near-duplicate pairs, half unrelated
        sa, sb = shingles(a), shingles(b)
        exact.append(jaccard(sa, sb))
        ours.append(MinHash.similarity(mh.signature(sa), mh.signature(sb)))
        ra, rb = Reference(num_perm=256), Reference(num_perm=256)
        ra.update_batch([s.encode() for s in sa])
        rb.update_batch([s.encode() for s in sb])
        ref.append(ra.jaccard(rb))
    err_ours, err_ref = np.subtract(ours, exact), np.subtract(ref, exact)
    # Unbiased, with the spread theory predicts (std <= sqrt(1/4k) = 0.031) and no worse than the library's.
    assert abs(err_ours.mean()) < 0.01 and err_ours.std() < 0.03
    assert err_ours.std() < 1.5 * err_ref.std() + 0.005


def test_lsh_s_curve_sits_at_the_threshold():
    for threshold in (0.5, 0.7, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1  # the curve's inflection point


def test_finds_planted_near_duplicates_and_keeps_distinct_texts(planted):
    originals, dups = planted
    docs = originals + dups
    found = {(i, j) for i, j, _ in near_duplicate_pairs(docs, threshold=0.7)}
    planted_pairs = {(i, 300 + i) for i in range(100)}
    true_j = [jaccard(shingles(a), shingles(b)) for a, b in zip(originals, dups)]
    expected = {p for p, j in zip(sorted(planted_pairs), true_j) if j >= 0.7}
    assert len(expected) >= 90  # the planted edits keep most pairs above the threshold
    assert len(found & expected) / len(expected) >= 0.9  # recall
    assert found <= planted_pairs  # nothing distinct flagged
    kept, report = clean(docs, threshold=0.7)
    assert report.removed["near duplicate"] == len(found) and report.kept_docs == 400 - len(found)
    assert all(normalize(d) in kept for d in originals)  # the first of each cluster is the one kept


def test_normalisation_exact_duplicates_and_quality_filters():
    docs = ["Ｆｕｌｌ－ｗｉｄｔｈ text １２３ is folded by NFKC.", "Full-width text 123 is folded by NFKC.",
            "too short", "#### $$$$ %%%% &&&& **** @@@@ !!!!", "same line\nsame line\nsame line\nother line",
            "人民日报一九九八年一月一日发表了国家主席的新年讲话全文。"]
    kept, report = clean(docs)
    assert kept == ["Full-width text 123 is folded by NFKC.", "人民日报一九九八年一月一日发表了国家主席的新年讲话全文。"]
    assert report.removed == {"short": 1, "symbols": 1, "repeated lines": 1, "exact duplicate": 1,
                              "near duplicate": 0}
    assert quality_problem("人民日报一九九八年一月一日发表了国家主席的新年讲话全文。", min_chars=10) is None  # CJK letters count
    assert "kept" in str(report)


def test_cli_cleans_a_file_and_rejects_bad_input(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("First paragraph, long enough to keep.\n\nFirst paragraph, long enough to keep.\n\nshort\n",
                   encoding="utf-8")
    out = tmp_path / "out.txt"
    run = subprocess.run([sys.executable, "-m", "mindllm.data.clean", str(src), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_text(encoding="utf-8") == "First paragraph, long enough to keep.\n"
    assert "exact duplicate" in run.stdout
    for args, msg in [([str(tmp_path / "missing.txt")], "not found"), ([str(src), "--threshold", "2"], "(0, 1]")]:
        bad = subprocess.run([sys.executable, "-m", "mindllm.data.clean", *args], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and msg in bad.stderr
    (tmp_path / "empty.txt").write_text("\n\n")
    bad = subprocess.run([sys.executable, "-m", "mindllm.data.clean", str(tmp_path / "empty.txt")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "has no text" in bad.stderr
