"""BERT: the model against Hugging Face with copied weights, the MLM masking rule and NSP pairs measured over many
draws, padding invariance, classification metrics against scikit-learn, and short real runs through the loop."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor
import mindspore as ms

from conftest import TINY
from mindllm.config import load_config
from mindllm.data.mlm import IGNORE, PairBatches, mask_tokens, split_sentences
from mindllm.evaluate import classification_metrics
from mindllm.models.bert import (Bert, BertConfig, BertForMaskedLM, BertForPreTraining,
                                 BertForSequenceClassification, mean_pool)
from mindllm.train import train

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def inputs(B=2, T=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 99, (B, T)).astype(np.int32)
    attn = np.ones((B, T), np.int32)
    attn[1, 7:] = 0
    types = np.zeros((B, T), np.int32)
    types[:, 5:] = 1
    return ids, types, attn


@pytest.mark.parametrize("hf_name, ours", [("BertModel", Bert), ("BertForMaskedLM", BertForMaskedLM),
                                           ("BertForPreTraining", BertForPreTraining),
                                           ("BertForSequenceClassification", BertForSequenceClassification)])
def test_equals_hugging_face_bert_with_copied_weights(hf_name, ours):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(**TINY_BERT)
    hf = getattr(transformers, hf_name)(hf_cfg).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = ours(BertConfig.from_dict(hf_cfg.to_dict()))
    names = {n for n, _ in model.parameters_and_names()}
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # = word embeddings, predictions.bias
    assert names == set(state) - tied  # parameter names ARE the Hugging Face keys: import is a loop
    for n, p in model.parameters_and_names():
        p.set_data(Tensor(state[n]))
    model.set_train(False)
    ids, types, attn = inputs()
    with torch.no_grad():
        expect = hf(*(torch.tensor(a, dtype=torch.long) for a in (ids,)), token_type_ids=torch.tensor(types).long(),
                    attention_mask=torch.tensor(attn).long())
    real = attn.astype(bool)
    if ours is BertForPreTraining:
        positions = np.tile(np.arange(10, dtype=np.int32), (2, 1))
        mlm, nsp = model(*map(Tensor, (ids, types, attn, positions)))
        np.testing.assert_allclose(mlm.asnumpy()[real], expect.prediction_logits.numpy()[real], atol=1e-4)
        np.testing.assert_allclose(nsp.asnumpy(), expect.seq_relationship_logits.numpy(), atol=1e-4)
        return
    got = model(*map(Tensor, (ids, types, attn))).asnumpy()
    want = expect.last_hidden_state.numpy() if ours is Bert else expect.logits.numpy()
    if got.ndim == 3:  # padded positions are garbage in both; only real tokens are compared
        got, want = got[real], want[real]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_padding_never_changes_real_positions():
    model = Bert(BertConfig(**TINY_BERT))
    model.set_train(False)
    ids, types, attn = inputs()
    a = model(*map(Tensor, (ids, types, attn))).asnumpy()
    ids2 = ids.copy()
    ids2[1, 7:] = np.array([5, 6, 7])  # different tokens behind the mask
    b = model(*map(Tensor, (ids2, types, attn))).asnumpy()
    np.testing.assert_allclose(a[1, :7], b[1, :7], atol=1e-6)
    assert np.abs(a[1, 7:] - b[1, 7:]).max() > 1e-3  # the test can fail: padded positions themselves did change


def test_mean_pool_ignores_padding():
    h = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    m = np.array([[1, 1, 1], [1, 0, 0]], np.int32)
    got = mean_pool(Tensor(h), Tensor(m)).asnumpy()
    np.testing.assert_allclose(got, [h[0].mean(0), h[1, 0]])


def test_masking_follows_the_80_10_10_rule():
    rng = np.random.default_rng(0)
    V, mask_id = 1000, 4
    random_ids = np.arange(5, V)
    n_masked = n_mask = n_random = n_same = n_chosen = n_maskable = 0
    for _ in range(2000):
        ids = rng.integers(5, V, 64)
        maskable = np.ones(64, bool)
        maskable[[0, 30, 63]] = False
        out, pos, orig = mask_tokens(ids, maskable, rng, mask_id, random_ids, 0.15, max_predictions=20)
        assert maskable[pos].all() and len(set(pos)) == len(pos)
        np.testing.assert_array_equal(orig, ids[pos])
        unchanged = np.delete(np.arange(64), pos)
        np.testing.assert_array_equal(out[unchanged], ids[unchanged])  # only chosen positions differ
        n_chosen += len(pos)
        n_maskable += maskable.sum()
        n_mask += (out[pos] == mask_id).sum()
        same = out[pos] == ids[pos]
        n_same += same.sum()
        n_random += ((out[pos] != mask_id) & ~same).sum()
    assert abs(n_chosen / n_maskable - 0.15) < 0.005
    assert abs(n_mask / n_chosen - 0.8) < 0.01
    # a random replacement equal to the original (p = 1/995) counts as "same"
    assert abs(n_random / n_chosen - 0.1) < 0.01 and abs(n_same / n_chosen - 0.1) < 0.01


class FakeTokenizer:
    """Token ids as in a trained WordPiece vocabulary: the five specials first."""
    vocab_size = 500

    def token_to_id(self, t):
        return {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}.get(t)


def numbered_sentences(n=380):
    """Sentence i is the id 100 + i repeated 1..5 times, so every token says which sentence it came from."""
    return [np.full(1 + i % 5, 100 + i, np.int32) for i in range(n)]


def test_nsp_pairs_are_half_continuations_half_far_away():
    segs = numbered_sentences()
    batches = PairBatches(segs, FakeTokenizer(), max_len=32, batch_size=8, seed=0)
    labels = []
    for _ in range(400):
        a, b, label = batches.pair()
        labels.append(label)
        assert 2 <= len(a) + len(b) + 3 <= 32
        gap = int(b[0]) - int(a[-1])  # sentence index of B's start minus that of A's end
        if label == 0:
            assert gap == 1  # B starts with the sentence right after A
        else:
            assert abs(gap) > 90  # B comes from at least `far` (100) sentences away from A's start
    assert abs(np.mean(labels) - 0.5) < 0.08


def test_pair_batches_layout_and_exact_resume():
    batches = PairBatches(numbered_sentences(), FakeTokenizer(), max_len=32, batch_size=8, seed=3)
    state = batches.state()
    ids, types, attn, positions, labels, nsp = batches.next()
    assert ids.shape == types.shape == attn.shape == (8, 32) and positions.shape == labels.shape == (8, 5)
    for r in range(8):
        n = attn[r].sum()
        assert ids[r, 0] == 2 and ids[r, n - 1] == 3 and (ids[r, n:] == 0).all()
        assert (ids[r, :n] == 3).sum() == 2  # [CLS] A [SEP] B [SEP]
        sep = int(np.flatnonzero(ids[r] == 3)[0])
        assert (types[r, :sep + 1] == 0).all() and (types[r, sep + 1:n] == 1).all()
        real = labels[r] != IGNORE
        assert real.any() and (positions[r, real] < n).all()
    batches.set_state(state)
    again = batches.next()
    for x, y in zip((ids, types, attn, positions, labels, nsp), again):
        np.testing.assert_array_equal(x, y)


def test_sentences_split_after_chinese_and_english_full_stops():
    assert split_sentences("今天下雨。明天晴！好吗？\nHello there. Who? Me!\n\n") == [
        "今天下雨。", "明天晴！", "好吗？", "Hello there. Who?", "Me!"]


def test_classification_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 3, 500))
    p[p == 2] = 1  # class 2 never predicted: precision 0 by convention
    ours = classification_metrics(p, y, 3)
    prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert ours["precision"] == pytest.approx(prec) and ours["recall"] == pytest.approx(rec)
    assert ours["f1"] == pytest.approx(f1)
    assert ours["confusion"] == confusion_matrix(y, p).tolist()


BERT_TINY = TINY + ["model.arch=bert", "model.n_embd=64", "model.n_head=4", "model.ffn_dim=128",
                    "model.block_size=32", "train.batch_size=16", "train.eval_iters=4", "data.tokenizer=hf_wordpiece",
                    "data.vocab_size=2000", "train.warmup_iters=5"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, small_corpus_module):
    """A tiny BERT pretrained for 120 steps on the first 300k characters of Shakespeare."""
    out = tmp_path_factory.mktemp("bert") / "pre"
    cfg = load_config(None, BERT_TINY + [f"data.corpus={small_corpus_module}", f"out_dir={out}",
                                         "train.max_iters=120", "train.eval_interval=60", "train.lr=2e-3"])
    return cfg, train(cfg, log=lambda *_: None)


@pytest.fixture(scope="module")
def small_corpus_module(tmp_path_factory):
    from mindllm.data import load_corpus

    path = tmp_path_factory.mktemp("corpus") / "head.txt"
    path.write_text(load_corpus("shakespeare")[:300_000], encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_bert_pretraining_runs_through_the_loop_and_learns(pretrained):
    cfg, s = pretrained
    assert abs(s["untrained_val_loss"] - s["uniform_loss"]) < 0.3  # ln V + ln 2 at the start
    assert s["val_loss"] < s["untrained_val_loss"] - 1.5
    # 120 tiny steps reach the unigram plateau (predict frequent tokens); leaving it takes thousands (the config run)
    assert s["mlm_accuracy"] >= s["frequent_token_accuracy"] - 0.01, s
    records = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "mlm_accuracy" in r] == [0, 60, 120]


@pytest.mark.slow
def test_mlm_accuracies_recomputed_from_the_checkpoint(pretrained):
    from mindspore import Tensor

    from mindllm.data.mlm import IGNORE
    from mindllm.runs import load_trained

    cfg, s = pretrained
    task, _ = load_trained(cfg.out_dir)
    mask_id = task.tokenizer.token_to_id("[MASK]")
    kinds = {"all": [0, 0], "[MASK]": [0, 0]}
    for ids, types, attn, pos, labels, nsp in task.eval_batches["val"]:
        pred = task.model(*map(Tensor, (ids, types, attn, pos)))[0].asnumpy().argmax(-1)
        for r in range(len(ids)):
            for j in range(pos.shape[1]):
                if labels[r, j] == IGNORE:
                    continue
                for k in ("all", "[MASK]") if ids[r, pos[r, j]] == mask_id else ("all",):
                    kinds[k][0] += int(pred[r, j] == labels[r, j])
                    kinds[k][1] += 1
    assert s["mlm_accuracy"] == pytest.approx(kinds["all"][0] / kinds["all"][1])
    assert s["mask_accuracy"] == pytest.approx(kinds["[MASK]"][0] / kinds["[MASK]"][1])
    assert 0.7 < kinds["[MASK]"][1] / kinds["all"][1] < 0.9  # 80% of the predicted positions show [MASK]


def classifier_cfg(tmp_path, *extra):
    return load_config(None, TINY + ["model.arch=bert_classifier", "data.corpus=reviews_zh", "model.n_embd=64",
                                     "model.n_head=4", "model.ffn_dim=128", "model.block_size=48",
                                     "train.batch_size=32", "data.tokenizer=hf_wordpiece", "data.vocab_size=3000",
                                     f"out_dir={tmp_path / 'cls'}", "train.warmup_iters=10", "train.lr=2e-3",
                                     *extra])


@pytest.mark.slow
def test_classifier_from_scratch_beats_the_majority_class(tmp_path):
    s = train(classifier_cfg(tmp_path, "train.max_iters=150", "train.eval_interval=150"), log=lambda *_: None)
    assert s["majority_accuracy"] == pytest.approx(max(np.array(s["test_confusion"]).sum(1)) / s["test_examples"])
    assert s["test_accuracy"] > s["majority_accuracy"] + 0.15, s
    assert s["test_f1"] > s["majority_f1"] + 0.2
    assert np.array(s["test_confusion"]).sum() == s["test_examples"]


@pytest.mark.slow
def test_fine_tuning_starts_from_the_pretrained_encoder_and_freezing_holds(tmp_path, pretrained):
    from safetensors.numpy import load_file

    from mindllm.checkpoint import latest_checkpoint

    pre_cfg, _ = pretrained
    pre = load_file(os.path.join(latest_checkpoint(os.path.join(pre_cfg.out_dir, "ckpt")), "model.safetensors"))
    cfg = load_config(None, TINY + ["model.arch=bert_classifier", "data.corpus=tweets_en", "model.block_size=32",
                                    f"model.init={pre_cfg.out_dir}", "model.freeze_layers=1", "train.max_iters=5",
                                    "train.batch_size=8", f"out_dir={tmp_path / 'ft'}"])
    train(cfg, log=lambda *_: None)
    ft = load_file(os.path.join(latest_checkpoint(os.path.join(cfg.out_dir, "ckpt")), "model.safetensors"))
    frozen = [n for n in ft if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    trained = [n for n in ft if n.startswith(("bert.encoder.layer.1.", "bert.pooler."))]
    assert frozen and trained
    for n in frozen:
        np.testing.assert_array_equal(ft[n], pre[n])  # came from pretraining and never moved
    assert all(np.abs(ft[n] - pre[n]).max() > 0 for n in trained)
    assert set(ft) - set(pre) == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("overrides, fragment", [
    (["model.arch=bert", "data.tokenizer=char"], "WordPiece"),
    (["model.arch=bert_classifier", "data.corpus=shakespeare"], "labelled corpus"),
    (["model.arch=bert_classifier", "data.corpus=reviews_zh", "model.freeze=encoder", "model.freeze_layers=1"],
     "already freezes"),
    (["model.arch=bert_classifier", "data.corpus=reviews_zh", "model.init=/nonexistent"], "neither"),
])
def test_bert_config_mistakes_are_one_line_errors(tmp_path, overrides, fragment):
    from mindllm.errors import UserError

    with pytest.raises(UserError, match=fragment):  # most are caught when the config loads, the rest at build
        cfg = load_config(None, TINY + [f"out_dir={tmp_path / 'x'}", "train.max_iters=1", "data.vocab_size=500",
                                        *overrides])
        train(cfg, log=lambda *_: None)
