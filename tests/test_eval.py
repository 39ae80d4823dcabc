"""python -m mindllm.eval and the metrics it adds: ROUGE-L against rouge-score (English) and by hand (Chinese), bits
per byte by hand, the cloze scorer against numpy's log-softmax of the model's logits, a trained GPT above an
untrained one on the cloze items, the report files, runs side by side, and bad input as one `error:` line.
(BLEU against sacrebleu: test_transformer.py; classification metrics against scikit-learn: test_bert.py.)"""
import json
import math
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import train_tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from mindspore import Tensor

from mindllm.config import load_config
from mindllm.data.dataset import IGNORE, split_text
from mindllm.data.tokenizer import CharTokenizer, train_tokenizer
from mindllm.eval import choice, cloze, lm
from mindllm.eval.__main__ import main
from mindllm.evaluate import bits_per_byte, lcs_length, rouge_l
from mindllm.models.layers import cross_entropy
from mindllm.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()

# --- ROUGE-L ---------------------------------------------------------------------------------------------------------


def rouge_score_f(prediction, reference):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure


@pytest.mark.parametrize("pred, ref", [
    ("the cat sat on the mat", "a cat was sitting on the mat"),
    ("Police killed the gunman.", "The gunman was shot by police!"),
    ("b a b a", "a b a b"), ("x y z", "p q r"), ("", "something"), ("It's 2024, year-end", "year end 2024 its"),
])
def test_rouge_l_equals_rouge_score(pred, ref):
    assert rouge_l(pred, ref) == pytest.approx(rouge_score_f(pred, ref), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["the", "cat", "Sat", "on", "a", "mat,", "dog", "7"]), max_size=12),
       st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "bird", "7."]), max_size=12))
def test_rouge_l_equals_rouge_score_on_random_sentences(pred, ref):
    assert rouge_l(" ".join(pred), " ".join(ref)) == pytest.approx(rouge_score_f(" ".join(pred), " ".join(ref)))


def test_rouge_l_chinese_by_hand():
    # 7 and 5 characters, LCS 我爱天安门 = 5: P 5/7, R 1, F = 2·(5/7)/(12/7) = 5/6; rouge-score's tokenizer drops
    # every ideograph and scores 0
    assert rouge_l("我爱北京天安门", "我爱天安门") == pytest.approx(5 / 6)
    assert rouge_score_f("我爱北京天安门", "我爱天安门") == 0.0
    # [天 气 很 好 ok] against [ok 天 气 好]: LCS 天气好 = 3 (ok comes last in one, first in the other), case ignored:
    # P 3/5, R 3/4, F = 2·0.45/1.35 = 2/3
    assert rouge_l("天气很好 OK", "ok 天气好") == pytest.approx(2 / 3)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's example


# --- bits per byte ---------------------------------------------------------------------------------------------------


def test_bits_per_byte_by_hand():
    # "ab中" with probabilities 1/2, 1/4, 1/8: 1 + 2 + 3 = 6 bits over 1 + 1 + 3 = 5 UTF-8 bytes
    assert bits_per_byte(math.log(2) + math.log(4) + math.log(8), 5) == pytest.approx(1.2)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


class FixedModel:
    """A 'language model' giving every position the distribution p (a, b, 中) = (1/2, 1/4, 1/4)."""
    logits = np.log(np.array([0.5, 0.25, 0.25], np.float32))

    def set_train(self, mode):
        pass

    def loss(self, x, y):
        return cross_entropy(Tensor(np.broadcast_to(self.logits, y.shape + (3,)).copy()), y)


def test_language_scores_by_hand():
    model, tok = FixedModel(), CharTokenizer(["a", "b", "中"])
    # batch 1 targets a, b, 中: 1 + 2 + 2 = 5 bits, 5 bytes; batch 2 a, (ignored), 中: 1 + 2 = 3 bits, 4 bytes
    batches = [(np.zeros((1, 3), np.int32), np.array([[0, 1, 2]], np.int32)),
               (np.zeros((1, 3), np.int32), np.array([[0, IGNORE, 2]], np.int32))]
    task = SimpleNamespace(model=model, loss_fn=model.loss, eval_loss_fn=None, tokenizer=tok,
                           eval_batches={"val": batches})
    s = lm.language_scores(task, graph=False)
    assert (s["targets"], s["bytes"]) == (5, 9)
    assert s["bits_per_byte"] == pytest.approx(8 / 9, rel=1e-5)  # (float32 losses)
    assert s["perplexity"] == pytest.approx(2 ** (8 / 5), rel=1e-5)
    assert s["val_loss"] == pytest.approx((5 / 3 + 3 / 2) * math.log(2) / 2, rel=1e-5)  # mean of batch means


def test_token_bytes_add_up_to_the_text():
    text = "To be, or not to be: 生存还是毁灭，这是一个问题。\n" * 20
    for tok in (CharTokenizer.train(text), train_tokenizer("bpe", text, 300)):
        lengths = lm.token_byte_lengths(tok)
        assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))


# --- cloze items and their scorer ------------------------------------------------------------------------------------


def corpus_cfg(path):
    return SimpleNamespace(data=SimpleNamespace(corpus=str(path), val_fraction=0.1),
                           model=SimpleNamespace(block_size=64))


@pytest.fixture(scope="module")
def chinese_corpus(tmp_path_factory):
    from mindllm.data import load_corpus

    path = tmp_path_factory.mktemp("zh") / "peoples_daily_head.txt"
    path.write_text(load_corpus("peoples_daily")[:200_000], encoding="utf-8")
    return str(path)


def check_items(items, val, tok, n):
    assert len(items) == n
    assert {it.answer for it in items} == set(range(cloze.N_OPTIONS))  # the answer's place varies
    for it in items:
        assert len(set(it.options)) == cloze.N_OPTIONS
        assert (it.context + it.options[it.answer]) in val  # the held-out text, continued as it is written
        assert len({len(tok.encode(o)) for o in it.options}) == 1  # as many tokens each: no length advantage


def test_cloze_items_english(small_corpus):
    cfg = corpus_cfg(small_corpus)
    text = read(small_corpus)
    train, val = split_text(text, 0.1)
    tok = train_tokenizer("bpe", train, 300)
    items = cloze.build_items(cfg, tok, 50)
    check_items(items, val, tok, 50)
    assert items == cloze.build_items(cfg, tok, 50)  # seeded: the same items every time
    for it in items:
        words = [o.strip(" ") for o in it.options]
        assert all(o.startswith(" ") and w[:-1].isalpha() and w[:-1].islower() for o, w in zip(it.options, words))
        assert len({o[-1] for o in it.options}) == 1  # the character after the word is the text's, in every option


def test_cloze_items_chinese(chinese_corpus):
    text = read(chinese_corpus)
    train, val = split_text(text, 0.1)
    tok = CharTokenizer.train(text)
    items = cloze.build_items(corpus_cfg(chinese_corpus), tok, 40)
    check_items(items, val, tok, 40)
    by_count = sorted(Counter(c for c in train if "\u4e00" <= c <= "\u9fff").values(), reverse=True)
    for it in items:
        assert all(len(o) == 1 and "\u4e00" <= o <= "\u9fff" for o in it.options)
        # distractors are the answer's neighbours in training frequency: within NEAREST places of its rank
        count = train.count(it.options[it.answer])
        first, last = by_count.index(count), len(by_count) - 1 - by_count[::-1].index(count)  # ties share a count
        lo, hi = by_count[min(last + cloze.NEAREST, len(by_count) - 1)], by_count[max(first - cloze.NEAREST, 0)]
        assert all(lo <= train.count(o) <= hi for o in it.options), it.options


def test_scorer_equals_numpy_log_softmax():
    from mindllm.models.gpt import GPT, GPTConfig

    text = "the quick brown fox jumps over the lazy dog; 中文也可以。\n"
    tok = CharTokenizer.train(text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    model.set_train(False)
    long_context = text * 3  # longer than CONTEXT_TOKENS: cropped from the left
    rows = [("the quick brown", " fox"), ("the", " lazy dog"), (long_context, "中文"), ("x", "y")]
    for graph in (False, True):
        got = choice.option_logprobs(model, tok, rows, graph=graph)
        for (ctx, opt), value in zip(rows, got):
            c, o = tok.encode(ctx)[-choice.CONTEXT_TOKENS:], tok.encode(opt)
            logits = model(Tensor(np.array([c + o[:-1]], np.int32))).asnumpy()[0].astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            want = sum(logp[len(c) - 1 + j, o[j]] for j in range(len(o)))
            assert value == pytest.approx(want, abs=1e-4)
    item = choice.Item(context="the quick brown", options=[" cat", " fox"], answer=1)
    scores = choice.option_logprobs(model, tok, [(item.context, o) for o in item.options], graph=False)
    acc = choice.accuracy(model, tok, [item], graph=False)
    assert acc["acc"] == float(np.argmax(scores) == 1)


# --- real runs through the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_corpus):
    """A small character GPT, 400 steps on the Shakespeare head (block 64): it has learned English words."""
    return train_tiny(small_corpus, tmp_path_factory.mktemp("eval") / "gpt", "train.max_iters=400", "train.lr=0.01",
                      "model.block_size=64", "model.n_embd=64", "train.batch_size=16")


@pytest.mark.slow
def test_trained_beats_untrained_on_cloze(trained_run):
    from mindllm.eval import card

    metrics = {m["name"]: m for m in card.evaluate_run(trained_run, ["cloze"], 1000)["metrics"]}
    acc = metrics["cloze accuracy (1000 items)"]
    hits = round(acc["value"] * 1000)
    # one-sided binomial tail of `hits` or more right out of 1000 at chance 1/4: below 1e-4 rules out luck
    tail = sum(math.comb(1000, k) * 0.25 ** k * 0.75 ** (1000 - k) for k in range(hits, 1001))
    assert tail < 1e-4, acc
    assert acc["value"] > acc["baselines"]["untrained"], acc


@pytest.mark.slow
def test_cli_writes_the_report_card(trained_run, capsys):
    main([trained_run, "--limit", "20"])
    shown = capsys.readouterr().out
    card = json.loads(read(os.path.join(trained_run, "eval.json")))
    assert card["task"] == "causal_lm" and card["checkpoint"].startswith("step_")
    names = [m["name"] for m in card["metrics"]]
    assert names == ["val loss (nats/token)", "val perplexity", "val bits per byte", "cloze accuracy (20 items)",
                     "cloze accuracy, length-normalised (20 items)"]
    for m in card["metrics"]:
        assert set(m["baselines"]) == ({"untrained", "chance"} if "cloze" in m["name"]
                                       else {"untrained", "uniform", "unigram"})
    loss = card["metrics"][0]
    assert loss["value"] < loss["baselines"]["unigram"] < loss["baselines"]["uniform"]
    summary = json.loads(read(os.path.join(trained_run, "summary.json")))
    assert loss["value"] == pytest.approx(summary["val_loss"], rel=1e-5)  # the batches training evaluated on
    assert loss["baselines"]["untrained"] == pytest.approx(summary["untrained_val_loss"], rel=1e-5)  # seeded
    md = read(os.path.join(trained_run, "eval.md"))
    assert md.strip() in shown  # one run: the card is printed too
    assert "| val bits per byte ↓ |" in md and "untrained" in md and "chance" in md


@pytest.mark.slow
def test_two_runs_side_by_side(trained_run, tmp_path, small_corpus, capsys):
    other = tmp_path / "short"
    train_tiny(small_corpus, other, "train.max_iters=2")
    main([trained_run, str(other), "--tasks", "perplexity", "--out-name", "card"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| metric | gpt (causal_lm) | short (causal_lm) |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| val loss (nats/token)", "| val perplexity",
                                                           "| val bits per byte"]
    assert os.path.exists(other / "card.md") and os.path.exists(other / "card.json")


@pytest.mark.slow
def test_instruct_run_card(tmp_path, small_corpus):
    """An instruction-tuned run: held-out loss and bits per byte of the answers, the answers' word F1, exact match
    and ROUGE-L beside the model before tuning; no cloze (its held-out text is Q/A records)."""
    pre = tmp_path / "pre"
    train_tiny(small_corpus, pre, "data.tokenizer=bpe", "data.vocab_size=300", "model.block_size=96",
               "train.max_iters=5")
    cfg = load_config(os.path.join(ROOT, "configs/instruct_lora_gpt_bpe.yaml"), [
        f"instruct.init={pre}", f"out_dir={tmp_path / 'chat'}", "peft.method=none", "train.lr=0.02",
        "train.warmup_iters=0", "train.max_iters=20", "train.batch_size=8", "train.eval_iters=1",
        "train.eval_interval=20", "instruct.test_examples=3", "train.progress=false"])
    summary = train(cfg, log=lambda *a: None)
    main([str(tmp_path / "chat"), "--limit", "5"])
    metrics = {m["name"]: m for m in json.loads(read(str(tmp_path / "chat" / "eval.json")))["metrics"]}
    assert not any("cloze" in name for name in metrics)
    assert metrics["val loss (nats/token)"]["value"] == pytest.approx(summary["val_loss"], rel=1e-5)
    for name in ("answer word F1", "answer exact match", "answer ROUGE-L"):
        assert set(metrics[name]["baselines"]) == {"before tuning", "most frequent training answer"}
        assert 0 <= metrics[name]["value"] <= 1
    assert metrics["answer word F1"]["value"] == pytest.approx(summary["answer_f1"])  # the task's own final test


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mindllm.eval", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, check=False)


def test_missing_run_is_one_error_line(tmp_path):
    p = run_cli(str(tmp_path / "nowhere"))
    assert p.returncode == 2 and p.stderr.startswith("error: run ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--tasks", "perplexity,bleu"], "unknown part 'bleu'"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--out-name", "../x"], "must be a plain file name"),
    ([], "has no checkpoint yet"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    (tmp_path / "config.yaml").write_text("task: causal_lm\n")  # a run directory that never saved a checkpoint
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
