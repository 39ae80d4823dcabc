import json
import math
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindllm.checkpoint import latest_checkpoint
from mindllm.errors import UserError
from mindllm.tasks.common import unigram_loss
from mindllm.train import train


def weights(out_dir):
    return load_file(os.path.join(latest_checkpoint(os.path.join(out_dir, "ckpt")), "model.safetensors"))


def test_short_run_learns_and_writes_its_outputs(tiny_cfg):
    cfg = tiny_cfg("train.max_iters=150", "train.eval_interval=75", "train.log_interval=25", "train.lr=3e-3")
    s = train(cfg, log=lambda *_: None)
    # untrained ~ ln(vocab); a context-free model reaches the unigram loss; 150 steps must beat both
    assert abs(s["untrained_val_loss"] - math.log(s["vocab_size"])) < 0.1
    assert s["val_loss"] < s["unigram_val_loss"] - 0.2, s
    out = cfg.out_dir
    for f in ("config.yaml", "tokenizer.json", "metrics.jsonl", "loss.png", "summary.json", "ckpt/latest"):
        assert os.path.exists(os.path.join(out, f)), f
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [0, 25, 50, 75, 100, 125, 150]
    for r in records[1:]:
        assert {"step", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(r)
    assert [r["step"] for r in records if "val_loss" in r] == [0, 75, 150]
    from mindllm.runs import load_trained

    moved = out + "_moved"  # a run directory can be moved (or opened from another working directory)
    os.rename(out, moved)
    task, _ = load_trained(moved)
    assert task.tokenizer.vocab_size == s["vocab_size"] and os.path.exists(os.path.join(moved, "summary.json"))


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted_run(tiny_cfg):
    common = ["train.lr_decay_iters=40", "train.ckpt_interval=20", "train.eval_interval=20", "model.dropout=0.0"]
    full = tiny_cfg(*common, "train.max_iters=40", out="full")
    train(full, log=lambda *_: None)
    part = tiny_cfg(*common, "train.max_iters=20", out="part")
    train(part, log=lambda *_: None)  # "interrupted" after the step-20 checkpoint
    resumed = tiny_cfg(*common, "train.max_iters=40", "resume=true", out="part")
    train(resumed, log=lambda *_: None)
    a, b = weights(full.out_dir), weights(part.out_dir)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    steps = [json.loads(line)["step"] for line in open(os.path.join(part.out_dir, "metrics.jsonl"))]
    assert steps == sorted(set(steps))  # the resumed log reads as one run, no duplicated steps


@pytest.mark.slow
def test_same_seed_same_weights_different_seed_different(tiny_cfg):
    runs = [tiny_cfg("train.max_iters=10", f"seed={s}", out=f"s{i}") for i, s in enumerate((1, 1, 2))]
    for cfg in runs:
        train(cfg, log=lambda *_: None)
    w = [weights(c.out_dir)["transformer.h.0.attn.c_attn.weight"] for c in runs]
    assert np.array_equal(w[0], w[1]) and not np.allclose(w[0], w[2])


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tiny_cfg):
    big = tiny_cfg("train.max_iters=5", "train.batch_size=8", out="big")
    acc = tiny_cfg("train.max_iters=5", "train.batch_size=4", "train.grad_accum=2", out="acc")
    for cfg in (big, acc):
        train(cfg, log=lambda *_: None)
    a, b = weights(big.out_dir), weights(acc.out_dir)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_existing_run_is_never_overwritten_and_resume_needs_a_checkpoint(tiny_cfg):
    cfg = tiny_cfg("train.max_iters=2")
    with pytest.raises(UserError, match="holds no checkpoint"):
        train(tiny_cfg("train.max_iters=2", "resume=true"), log=lambda *_: None)
    train(cfg, log=lambda *_: None)
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, log=lambda *_: None)


def test_unigram_baseline():
    train_ids, val_ids = np.array([0, 0, 0, 1]), np.array([0, 1])
    p0, p1 = 4 / 6, 2 / 6  # add-one smoothing over a vocab of 2
    assert unigram_loss(train_ids, val_ids, 2) == pytest.approx(-(math.log(p0) + math.log(p1)) / 2)


@pytest.mark.slow
def test_pynative_and_graph_mode_train_the_same(tiny_cfg):
    runs = [tiny_cfg("train.max_iters=6", f"context.mode={m}", "train.log_interval=1", out=m)
            for m in ("graph", "pynative")]
    for cfg in runs:
        train(cfg, log=lambda *_: None)
    curves = [[json.loads(line).get("loss") for line in open(os.path.join(c.out_dir, "metrics.jsonl"))][1:]
              for c in runs]
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted_run(tiny_cfg, tmp_path):
    """A real crash: SIGKILL a training process mid-run (possibly mid-save), then resume."""
    import signal
    import subprocess
    import sys
    import time

    from mindllm.config import save_config

    common = ["train.lr_decay_iters=60", "train.ckpt_interval=10", "train.eval_interval=30"]
    victim = tiny_cfg(*common, "train.max_iters=100000", out="killed")
    save_config(victim, tmp_path / "victim.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "mindllm.train", str(tmp_path / "victim.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = os.path.join(victim.out_dir, "ckpt", "latest")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(latest) and open(latest).read().strip() >= "step_0000020"):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(open(latest).read().strip().split("_")[1])
    assert 20 <= killed_at < 60, killed_at
    train(tiny_cfg(*common, "train.max_iters=60", "resume=true", out="killed"), log=lambda *_: None)
    full = tiny_cfg(*common, "train.max_iters=60", out="full")
    train(full, log=lambda *_: None)
    a, b = weights(full.out_dir), weights(victim.out_dir)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind,vocab", [("bpe", 300), ("hf_bpe", 300), ("gpt2", 50257)])
@pytest.mark.slow
def test_every_language_model_tokenizer_trains_and_reloads(tiny_cfg, kind, vocab):
    from mindllm.runs import load_model

    cfg = tiny_cfg(f"data.tokenizer={kind}", "data.vocab_size=300", "train.max_iters=4", "train.eval_interval=4")
    s = train(cfg, log=lambda *_: None)
    assert s["vocab_size"] == vocab and abs(s["untrained_val_loss"] - math.log(vocab)) < 0.15
    _, tok, _ = load_model(cfg.out_dir)
    assert tok.vocab_size == vocab and tok.decode(tok.encode("Thou art, 汝是.")) == "Thou art, 汝是."
