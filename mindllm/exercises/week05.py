"""Week 5 exercises: BERT (notebook 05). The references are the package's: `BertEmbeddings` (input embedding),
`mask_tokens` (the 15% / 80-10-10 rule), `BertForSequenceClassification` with `tasks.classify.freeze` (trainable
parameters), `evaluate.classification_metrics` (precision, recall, macro-F1) and `models.bert.mean_pool` (sentence
embeddings). Every check draws fresh random cases of several sizes from a seeded generator, with edge cases."""
from __future__ import annotations

import numpy as np

from .core import Mismatch, exercise, expect_close, expect_equal


def _bert_config(vocab, hidden, layers, ffn, positions, labels=2, heads=2):
    from ..models.bert import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=ffn, max_position_embeddings=positions, num_labels=labels,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@exercise("week05.input_embedding",
          hint="e_t = LayerNorm(word[x_t] + pos[t] + seg[s_t]): position t is the index along the sequence (0, 1, "
               "...), the LayerNorm is over the last axis with the biased variance, then * gamma + beta")
def input_embedding(student) -> int:
    from mindspore import Tensor

    from ..models.bert import BertEmbeddings

    rng = np.random.default_rng(51)
    n = 0
    for vocab, hidden, positions, (B, T) in [(7, 4, 6, (1, 3)), (30, 8, 16, (2, 9)), (100, 16, 40, (3, 40)),
                                              (50, 12, 20, (4, 1))]:
        emb = BertEmbeddings(_bert_config(vocab, hidden, 1, 2 * hidden, positions))
        emb.set_train(False)
        for name, p in emb.parameters_and_names():  # random weights everywhere, the LayerNorm's too
            scale = 0.3 if "LayerNorm.bias" in name else 1.0
            base = 1.0 if "LayerNorm.weight" in name else 0.0
            p.set_data(Tensor((base + scale * rng.normal(size=p.shape)).astype(np.float32)))
        ids = rng.integers(0, vocab, (B, T)).astype(np.int32)
        types = (np.arange(T)[None] >= rng.integers(1, T + 1, (B, 1))).astype(np.int32)  # 0 then 1 per row
        w = {name: p.asnumpy().astype(np.float64) for name, p in emb.parameters_and_names()}
        want = emb(Tensor(ids), Tensor(types)).asnumpy()
        got = student(ids, types, w["word_embeddings.weight"], w["position_embeddings.weight"],
                      w["token_type_embeddings.weight"], w["LayerNorm.weight"], w["LayerNorm.bias"],
                      emb.LayerNorm.eps)
        expect_close(got, want, f"embeddings of a batch of {B} x {T} ids (vocabulary {vocab}, hidden {hidden})",
                     rtol=1e-4, atol=1e-4)
        n += 1
    return n


def _mask_stats(student, n_runs: int, rng, mask_id: int, random_ids, prob: float, max_predictions: int):
    """Run the student's masking on random sequences; check every single call exactly, return the outcome counts."""
    from ..data.mlm import mask_tokens

    counts, first_half, n_chosen_total = np.zeros(3, np.int64), 0, 0
    for _ in range(n_runs):
        T = int(rng.integers(1, 80))
        ids = rng.integers(0, mask_id, T).astype(np.int32)  # ordinary tokens: ids below mask_id
        maskable = rng.random(T) < 0.9
        maskable[int(rng.integers(T))] = True
        want_k = len(mask_tokens(ids, maskable, np.random.default_rng(0), mask_id, random_ids, prob,
                                 max_predictions)[1])
        result = student(ids.copy(), maskable.copy(), rng, mask_id, random_ids, prob, max_predictions)
        if not isinstance(result, tuple) or len(result) != 3:
            raise Mismatch(f"return (masked ids, positions, original ids), got {type(result).__name__}")
        out, pos, orig = (np.asarray(r) for r in result)
        what = f"a sequence of {T} tokens ({int(maskable.sum())} maskable, prob {prob}, max_predictions " \
               f"{max_predictions})"
        expect_equal(len(pos), want_k, f"number of chosen positions for {what}")
        expect_equal(out.shape, ids.shape, f"shape of the masked ids for {what}")
        if len(pos) and (np.any(np.diff(pos) <= 0)):
            raise Mismatch(f"positions {pos.tolist()[:12]} for {what}: they must be distinct and sorted")
        if len(pos) and not maskable[pos].all():
            raise Mismatch(f"position {int(pos[~maskable[pos]][0])} was chosen for {what}, but it is not maskable "
                           f"([CLS]/[SEP] are never chosen)")
        expect_equal(orig, ids[pos], f"original ids at the chosen positions of {what}")
        rest = np.ones(T, bool)
        rest[pos] = False
        expect_equal(out[rest], ids[rest], f"tokens that were NOT chosen in {what} (they must stay as they are)")
        o, x = out[pos], ids[pos]
        kind = np.where(o == mask_id, 0, np.where(o == x, 2, 1))
        if np.any((kind == 1) & ~np.isin(o, random_ids)):
            raise Mismatch(f"a chosen token of {what} became {int(o[(kind == 1) & ~np.isin(o, random_ids)][0])}, "
                           f"which is neither [MASK] ({mask_id}), the original, nor one of random_ids")
        counts += np.bincount(kind, minlength=3)
        cand = np.flatnonzero(maskable)
        first_half += int(np.isin(pos, cand[: len(cand) // 2]).sum())
        n_chosen_total += len(pos) * (len(cand) // 2) / max(len(cand), 1)
    return counts, first_half, n_chosen_total


@exercise("week05.mask_tokens",
          hint="k = min(max_predictions, max(1, round(prob * n_maskable))) positions drawn without replacement "
               "(rng.choice on the maskable indices), sorted; then per chosen position one rng.random() draw: < 0.8 "
               "-> [MASK], < 0.9 -> rng.choice(random_ids), else unchanged")
def mask_tokens(student) -> int:
    rng = np.random.default_rng(52)
    mask_id, random_ids = 1000, np.arange(5, 1000, dtype=np.int32)
    runs = 0
    total = np.zeros(3, np.int64)
    for prob, max_predictions, n_runs in ((0.15, 20, 800), (0.15, 4, 200), (0.3, 10, 200), (0.5, 50, 200)):
        counts, first_half, expected_first = _mask_stats(student, n_runs, rng, mask_id, random_ids, prob,
                                                         max_predictions)
        total += counts
        runs += n_runs
        n = counts.sum()
        if abs(first_half - expected_first) > 5 * np.sqrt(max(expected_first, 1)) + 5:
            raise Mismatch(f"with prob {prob}: {first_half} of {n} chosen positions are in the first half of the "
                           f"maskable ones, expected about {expected_first:.0f}: choose positions uniformly at "
                           f"random, not the first ones")
    n = total.sum()
    share = total / n
    # a random replacement can be the original token by chance (1 / len(random_ids)): tiny, inside the tolerance
    for i, (name, rule) in enumerate((("[MASK]", 0.8), ("random", 0.1), ("unchanged", 0.1))):
        se = np.sqrt(rule * (1 - rule) / n)
        if abs(share[i] - rule) > 5 * se + 0.002:
            raise Mismatch(f"{name}: {share[i]:.2%} of {n:,} chosen positions over {runs:,} sequences, expected "
                           f"{rule:.0%} (standard error {se:.2%})")
    return runs


@exercise("week05.trainable_params",
          hint="embeddings V*H + P*H + 2*H + 2*H (LayerNorm); one layer 4(H*H + H) + (H*F + F) + (F*H + H) + 2*2*H; "
               "pooler H*H + H; classifier H*K + K. freeze_layers=k freezes the embeddings and layers 0..k-1 "
               "(k=0: nothing frozen)")
def trainable_params(student) -> int:
    from ..tasks.classify import freeze
    from ..models.bert import BertForSequenceClassification

    # MiniLM's shape scaled down (building all-MiniLM-L6-v2's 22.7M parameters takes seconds per case)
    cases = [(3000, 96, 6, 384, 128, 3, 0), (3000, 96, 6, 384, 128, 3, 3), (3000, 96, 6, 384, 128, 3, 6),
             (3982, 128, 4, 512, 64, 2, 0), (3982, 128, 4, 512, 64, 2, 1)]
    rng = np.random.default_rng(53)
    for _ in range(3):
        layers = int(rng.integers(1, 5))
        cases.append((int(rng.integers(10, 200)), 2 * int(rng.integers(2, 12)), layers, int(rng.integers(4, 60)),
                      int(rng.integers(4, 40)), int(rng.integers(2, 6)), int(rng.integers(0, layers + 1))))
    for vocab, hidden, layers, ffn, positions, labels, k in cases:
        model = BertForSequenceClassification(_bert_config(vocab, hidden, layers, ffn, positions, labels))
        freeze(model, "none", k)
        want = sum(int(np.prod(p.shape)) for p in model.trainable_params())
        got = student(vocab, hidden, layers, ffn, positions, labels, k)
        if isinstance(got, (int, np.integer)) or (isinstance(got, float) and got.is_integer()):
            got = int(got)
        expect_equal(got, want,
                     f"trainable parameters (vocabulary {vocab}, hidden {hidden}, {layers} layers, FFN {ffn}, "
                     f"{positions} positions, {labels} classes, freeze_layers={k})")
    return len(cases)


@exercise("week05.classification_metrics",
          hint="confusion C[true, predicted]; precision = diagonal / column sum, recall = diagonal / row sum (0 "
               "when the sum is 0), F1 = 2PR/(P+R) (0 when P+R = 0); macro = the plain mean over the classes")
def classification_metrics(student) -> int:
    from ..evaluate import classification_metrics as reference

    rng = np.random.default_rng(54)
    cases = [(np.array([0, 0, 0, 0]), np.array([0, 1, 0, 1]), 2),        # always one class: the majority baseline
             (np.array([0, 1, 2, 1]), np.array([0, 1, 2, 1]), 3),        # perfect
             (np.array([2, 2, 0, 0, 1]), np.array([0, 0, 2, 2, 1]), 4)]  # class 3 never appears at all
    for n, k in ((50, 2), (200, 3), (1000, 5), (37, 4)):
        labels = rng.integers(0, k, n)
        right = rng.random(n) < 0.6
        preds = np.where(right, labels, rng.integers(0, k - 1, n))      # class k-1 predicted only when right
        cases.append((preds, labels, k))
    for preds, labels, k in cases:
        want = reference(preds, labels, k)
        got = student(preds.copy(), labels.copy(), k)
        if not isinstance(got, dict):
            raise Mismatch(f"return a dict with accuracy, precision, recall, f1; got {type(got).__name__}")
        for key in ("accuracy", "precision", "recall", "f1"):
            if key not in got:
                raise Mismatch(f"the dict has no '{key}'")
            expect_close(got[key], want[key], f"{key} for {len(labels)} examples, {k} classes (confusion "
                                              f"{want['confusion'] if len(labels) <= 5 else '...'})")
    return len(cases)


@exercise("week05.sentence_similarity",
          hint="mean over the REAL tokens only: sum_t m_t h_t / sum_t m_t; then divide each sentence vector by its "
               "norm, and the cosine matrix is U @ U.T")
def sentence_similarity(student) -> int:
    from mindspore import Tensor

    from ..models.bert import mean_pool

    rng = np.random.default_rng(55)
    n = 0
    for B, T, H in ((2, 3, 4), (4, 7, 16), (6, 20, 32), (1, 5, 8)):
        h = rng.normal(size=(B, T, H)).astype(np.float32)
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
        h[mask == 0] = 50.0  # padding positions hold large junk: a mean over them is far off
        emb = mean_pool(Tensor(h), Tensor(mask)).asnumpy().astype(np.float64)
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        got = student(h.copy(), mask.copy())
        expect_close(got, unit @ unit.T, f"cosine matrix of {B} sentences padded to {T} tokens (lengths "
                                         f"{lengths.tolist()})", rtol=1e-4, atol=1e-5)
        n += 1
    return n
