"""Attention, masks, the encoder–decoder Transformer, decoding and BLEU, against hand computations, numpy
references, sacrebleu, and perturbation of what a mask must hide."""
import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindllm.evaluate import corpus_bleu, exact_match
from mindllm.models.layers import (Attention, MultiHeadAttention, causal_mask, cross_entropy, padding_mask,
                                   sinusoidal_table)
from mindllm.models.transformer import Seq2SeqTransformer, TransformerConfig, beam_search, greedy_decode

rng = np.random.default_rng(0)


def small_model(**kw):
    ms.set_seed(0)
    np.random.seed(0)
    cfg = dict(src_vocab=20, tgt_vocab=15, max_len=12, n_layer=2, n_head=4, n_embd=32, ffn_dim=64, dropout=0.0)
    model = Seq2SeqTransformer(TransformerConfig(**{**cfg, **kw}))
    model.set_train(False)
    return model


def test_attention_rows_sum_to_one_and_masked_keys_get_zero_weight():
    att = Attention(8)
    q, k = (Tensor(rng.normal(size=(6, 5, 8)).astype(np.float32)) for _ in range(2))
    w = att.weights(q, k, causal_mask(5)).asnumpy()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert np.all(w[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)


def test_multi_head_equals_a_loop_over_heads():
    mha = MultiHeadAttention(16, 4)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    mem = rng.normal(size=(2, 7, 16)).astype(np.float32)
    got = mha(Tensor(x), Tensor(mem)).asnumpy()
    P = {n: p.asnumpy() for n, p in mha.parameters_and_names()}
    lin = lambda a, name: a @ P[f"{name}.weight"] + P[f"{name}.bias"]  # noqa: E731
    q, k, v = lin(x, "q_proj"), lin(mem, "k_proj"), lin(mem, "v_proj")
    heads = []
    for h in range(4):  # one head at a time, textbook style
        sl = slice(4 * h, 4 * h + 4)
        s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / math.sqrt(4)
        a = np.exp(s - s.max(-1, keepdims=True))
        heads.append((a / a.sum(-1, keepdims=True)) @ v[..., sl])
    want = lin(np.concatenate(heads, -1), "out_proj")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_padding_mask_hides_padded_keys():
    mha = MultiHeadAttention(16, 4)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    mem = rng.normal(size=(2, 6, 16)).astype(np.float32)
    ids = np.array([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 0]], np.int32)
    mask = padding_mask(Tensor(ids), 0)
    out = mha(Tensor(x), Tensor(mem), mask).asnumpy()
    mem2 = mem.copy()
    mem2[ids == 0] = rng.normal(size=(int((ids == 0).sum()), 16))  # change only what the mask hides
    np.testing.assert_allclose(mha(Tensor(x), Tensor(mem2), mask).asnumpy(), out, atol=1e-6)
    mem2[0, 1] += 1.0  # a visible key does matter
    assert np.abs(mha(Tensor(x), Tensor(mem2), mask).asnumpy()[0] - out[0]).max() > 1e-3


def test_source_padding_and_future_target_tokens_do_not_change_the_logits():
    model = small_model()
    src_short = np.array([[3, 4, 5, 6, 0, 0]], np.int32)
    src_long = np.array([[3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    tgt = np.array([[1, 7, 8, 9, 10, 11]], np.int32)
    a = model(Tensor(src_short), Tensor(tgt)).asnumpy()
    np.testing.assert_allclose(model(Tensor(src_long), Tensor(tgt)).asnumpy(), a, atol=1e-5)
    tgt2 = tgt.copy()
    tgt2[0, 3:] = [12, 13, 14]  # change the future of position 2
    b = model(Tensor(src_short), Tensor(tgt2)).asnumpy()
    np.testing.assert_allclose(b[:, :3], a[:, :3], atol=1e-5)
    assert np.abs(b[:, 3:] - a[:, 3:]).max() > 1e-3


def test_sinusoidal_positions_match_the_paper():
    table = sinusoidal_table(50, 16)
    p, i = 7, 3
    assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-6)


def test_label_smoothing_loss_matches_numpy():
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    t = np.array([[1, 2, -100], [4, 0, 3]], np.int32)
    got = float(cross_entropy(Tensor(logits), Tensor(t), label_smoothing=0.1).asnumpy())
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = t != -100
    target = np.full(logp.shape, 0.1 / 5)
    target[keep, t[keep]] += 0.9
    want = -(target * logp).sum(-1)[keep].mean()
    assert got == pytest.approx(want, abs=1e-5)


def sequence_logprob(model, src, out, cfg):
    tgt = [cfg.bos_id] + out + [cfg.eos_id]
    logits = model(Tensor(src[None]), Tensor(np.array([tgt[:-1]], np.int32))).asnumpy()[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return sum(logp[i, tok] for i, tok in enumerate(tgt[1:]))


def test_beam_width_one_is_greedy_and_wider_beams_score_at_least_as_well():
    model = small_model()
    src = rng.integers(3, 20, size=(4, 8)).astype(np.int32)
    greedy = greedy_decode(model, src, max_new=8, compile_=False)
    assert beam_search(model, src, beam=1, length_penalty=0.0, max_new=8, compile_=False) == greedy
    wide = beam_search(model, src, beam=4, length_penalty=0.0, max_new=8, compile_=False)
    for s, g, w in zip(src, greedy, wide):
        if len(g) < 8 and len(w) < 8:  # both ended with EOS, so both are complete hypotheses
            assert sequence_logprob(model, s, w, model.config) >= sequence_logprob(model, s, g, model.config) - 1e-9


def test_bleu_by_hand_and_against_sacrebleu():
    # p1 5/6, p2 3/5, p3 2/4, p4 1/3, equal lengths (BP = 1)
    assert corpus_bleu([list("abcdef")], [list("abcdxf")]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # all n-grams match, 4 of 6 tokens: BP = exp(1 - 6/4)
    assert corpus_bleu([list("abcd")], [list("abcdef")]) == pytest.approx(100 * math.exp(-0.5))
    assert corpus_bleu([list("ab")], [list("ab")]) == 0.0  # no 4-grams at all
    import sacrebleu

    hyps = ["the cat sat on the mat today", "a quick brown fox jumps", "2021-03-03", "hello world again"]
    refs = ["the cat is on the mat today", "the quick brown fox jumped", "2021-03-30", "hello world again"]
    ours = corpus_bleu([h.split() for h in hyps], [r.split() for r in refs])
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score, abs=1e-6)
    # A string is a sequence of characters; sacrebleu's char tokenizer also drops the spaces.
    nospace = [h.replace(" ", "") for h in hyps], [r.replace(" ", "") for r in refs]
    assert corpus_bleu(*nospace) == pytest.approx(sacrebleu.corpus_bleu(nospace[0], [nospace[1]],
                                                                        tokenize="char").score, abs=1e-6)
    assert exact_match(hyps, refs) == 0.25


def test_date_data_splits_are_disjoint_and_deterministic():
    import datetime

    from mindllm.data.dates import FORMATS, date_pairs

    train = date_pairs(5000, "train", seed=0)
    test = date_pairs(1000, "test", seed=0)
    assert train == date_pairs(5000, "train", seed=0)
    assert not {y for _, y in train} & {y for _, y in test}
    d = datetime.date(2021, 3, 3)
    assert FORMATS["zh_numerals"](d) == "二〇二一年三月三日" and FORMATS["ordinal"](d) == "the 3rd of March, 2021"
    assert FORMATS["zh_numerals"](datetime.date(1999, 12, 21)) == "一九九九年十二月二十一日"


@pytest.mark.slow
def test_a_short_dates_run_learns(tiny_cfg):
    from mindllm.train import train

    cfg = tiny_cfg("model.arch=transformer", "data.corpus=dates", "data.train_examples=2000", "model.block_size=32",
                   "model.n_embd=64", "model.ffn_dim=128", "train.batch_size=32", "train.max_iters=60",
                   "train.eval_interval=60", "train.lr=3e-3", "train.warmup_iters=10")
    s = train(cfg, log=lambda *_: None)
    assert abs(s["untrained_val_loss"] - s["uniform_loss"]) < 0.3
    assert s["val_loss"] < s["unigram_val_loss"] - 0.5
    assert 0.0 <= s["test_exact_match"] <= 1.0 and s["copy_exact_match"] > 0.03  # iso inputs copy exactly
    assert s["frequent_exact_match"] == 0.0  # test dates never occur in training
    from mindllm.runs import load_trained

    task, _ = load_trained(cfg.out_dir)  # the checkpoint reproduces the run's own test numbers
    assert task.final_eval(task.model)["test_bleu"] == pytest.approx(s["test_bleu"])
