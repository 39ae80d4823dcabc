"""python -m mindllm.bench: a --quick smoke run end to end (times are never asserted: the machines are noisy), the
two frameworks' models are the same model, and bad input is one line with exit status 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindllm import bench


def run(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "mindllm.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown(tmp_path):
    out = run("--quick", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    row = result["shapes"]["nanogpt-cpu"]
    assert row["ms"]["params"] == row["torch"]["params"] == 4 * 12 * 128 ** 2 + 4 * 13 * 128 + 65 * 128 + 64 * 128 + 256
    for side in ("ms", "torch"):
        r = row[side]
        assert r["median_step_ms"] > 0 and r["peak_rss_mb"] > 100
        # MFU is the step's FLOPs over the machine's measured peak; both are timings on a shared machine (a disturbed
        # peak measurement gave 1.10 here once), so check the arithmetic, not a bound
        assert r["mfu"] == pytest.approx(bench.flops_per_step(row["shape"], r["params"])
                                         / (r["median_step_ms"] / 1e3) / (result["matmul_peak_gflops"] * 1e9))
        # both start from GPT-2's initialisation on the same 65-token vocabulary: loss ~ ln 65
        assert abs(r["first_losses"][0] - np.log(65)) < 0.1
    assert row["speed_ratio"] == pytest.approx(row["ms"]["tokens_per_s"] / row["torch"]["tokens_per_s"])
    assert set(row["decode"]) >= {"ms_kv", "ms_nokv", "torch_kv", "torch_nokv", "kv_speedup"}
    table = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert "| 4L/4H/128, B12×64 | 0.81M | mindllm (MindSpore graph) |" in table and table in out.stdout


def test_reference_is_the_same_gpt_as_mindllm():
    """Copy mindllm's weights into the PyTorch reference (transposing GPT-2's (in, out) Linears): equal logits."""
    import torch

    s = dict(bench.SHAPES["nanogpt-cpu"], n_layer=2)
    ms_model = bench._ms_model(s)
    ms_model.set_train(False)
    ref = bench.torch_gpt(s, vocab=bench.VOCAB)
    weights = {name: p.asnumpy() for name, p in ms_model.parameters_and_names()}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            w = weights.pop(name)
            p.copy_(torch.from_numpy(w.T.copy() if p.dim() == 2 and "wte" not in name and "wpe" not in name else w))
    assert not weights  # every parameter has its counterpart
    idx = np.random.default_rng(0).integers(0, bench.VOCAB, (2, s["block_size"])).astype(np.int32)
    from mindspore import Tensor

    want = ms_model(Tensor(idx)).asnumpy()
    got = ref(torch.from_numpy(idx).long())[0].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("args,message", [(["--shapes", "gpt5"], "unknown shape 'gpt5'"),
                                          (["--steps", "0"], "--steps must be >= 1")])
def test_bad_input_is_one_line(args, message):
    out = run(*args, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {message}" or out.stderr.strip().startswith(f"error: {message}")
    assert "Traceback" not in out.stderr


def test_bad_kernels_setting_is_one_line():
    out = run("--quick", env={**os.environ, "MINDLLM_KERNELS": "fast"}, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: MINDLLM_KERNELS='fast': use auto (fused CPU kernels) or plain "
                                  "(MindSpore ops only)")


# ---------------------------------------------------------------- --e2e: the whole run beside nanoGPT's loop

@pytest.mark.slow
def test_e2e_quick_runs_both_whole_runs(tmp_path):
    out = run("--e2e", "--quick", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "e2e.json").read_text())
    assert result["iters"] == 40 and result["recipe"]["shape"]["n_embd"] == 128
    uniform = np.log(84)  # the Shakespeare corpus has 84 distinct characters
    for side in ("mindllm", "pytorch"):
        (r,) = result["runs"][side]
        assert r["wall_s"] > r["outside_steps_s"] > 0 and r["median_step_s"] > 0
        assert r["user_s"] > 0 and r["peak_rss_mb"] > 100
        assert r["val_loss"] < uniform - 0.5, f"{side} did not learn in 40 steps: {r['val_loss']}"
    assert result["ratio"]["wall_s"] == pytest.approx(result["runs"]["mindllm"][0]["wall_s"]
                                                      / result["runs"]["pytorch"][0]["wall_s"])
    table = (tmp_path / "e2e.md").read_text(encoding="utf-8")
    assert "| `python -m mindllm.train` |" in table and table in out.stdout


def test_e2e_schedule_is_nanogpts_and_mindllms():
    """The PyTorch side's get_lr (nanoGPT's) gives mindllm's learning rate at every step, decay past the end too."""
    from mindllm import bench_e2e
    from mindllm.config import load_config
    from mindllm.optim import lr_schedule

    for overrides in ([], ["train.lr_decay_iters=1500", "train.warmup_iters=10"]):
        cfg = load_config(None, overrides)
        r = bench_e2e.recipe(None, overrides)["train"]
        assert [bench_e2e.nanogpt_lr(i, r) for i in range(cfg.train.max_iters)] == pytest.approx(
            lr_schedule(cfg.train), rel=1e-12)


def test_e2e_reference_has_mindllms_parameter_count():
    from mindllm import bench_e2e

    r = bench_e2e.recipe(None, [])
    ref = bench.torch_gpt(r["shape"], vocab=84)
    C, L, V, T = 128, 4, 84, 64
    assert sum(p.numel() for p in ref.parameters()) == L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C


@pytest.mark.parametrize("args,message", [
    (["--e2e", "configs/bert_mlm_peoples_daily.yaml"],
     "error: --e2e mirrors a character-level GPT run in PyTorch; this config has task=bert_pretrain (causal_lm only)"),
    (["--e2e", "--set", "data.tokenizer=bpe"],
     "error: --e2e mirrors a character-level GPT run in PyTorch; this config has data.tokenizer=bpe (char only: "
     "prepare.py's vocabulary)"),
    (["--e2e", "--repeats", "0"], "error: --repeats must be >= 1"),
    (["--e2e", "--set", "train.max_iters=x"], "error: config"),
    (["--finetune", "--repeats", "0"], "error: --repeats must be >= 1"),
    (["--finetune", "configs/gpt_char_shakespeare.yaml"],
     "error: --finetune mirrors fine-tuning the real MiniLM (task=classify, classify.init=minilm) and BERT "
     "pretraining (task=bert_pretrain); this config has task=causal_lm"),
    (["--finetune", "configs/lora_minilm_tweets.yaml", "--set", "peft.dropout=0.1"],
     "error: --finetune mirrors LoRA without dropout (peft's dropout draws other random numbers); this config has "
     "peft.dropout=0.1"),
    (["--finetune", "--set", "train.lr=x"], "error: config")])
def test_e2e_and_finetune_bad_input_is_one_line(args, message):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "mindllm.bench", *args], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().startswith(message) and "\n" not in out.stderr.strip(), out.stderr


# ---------------------------------------------------------------- --finetune: MiniLM beside PyTorch + transformers

@pytest.mark.slow
def test_finetune_quick_runs_both_sides(tmp_path):
    out = run("--finetune", "--quick", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "finetune.json").read_text())
    med = result["median"]
    assert med["mindllm"]["trainable"] == med["pytorch"]["trainable"] == 22_714_371  # all-MiniLM-L6-v2 + 3-way head
    for side in ("mindllm", "pytorch"):
        assert med[side]["median_step_ms"] > 0 and med[side]["peak_rss_mb"] > 100
    speed = med["pytorch"]["median_step_ms"] / med["mindllm"]["median_step_ms"]
    assert result["ratio"]["speed"] == pytest.approx(speed)
    table = (tmp_path / "finetune.md").read_text(encoding="utf-8")
    assert "| mindllm (MindSpore graph) |" in table and table in out.stdout


def test_finetune_sides_compute_the_same_model_on_the_same_batches():
    """The bench's two models, with the random head copied across and dropout off, give equal logits on its
    padded batches: the same weights, the same attention mask."""
    import torch
    from mindspore import Tensor
    from transformers import BertForSequenceClassification

    from mindllm import bench_finetune
    from mindllm.convert import from_hf
    from mindllm.data.tokenizer import minilm_dir

    ms_model = from_hf(minilm_dir(), arch="BertForSequenceClassification", num_labels=3, log=None)
    ms_model.set_train(False)
    ref = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=3).eval()
    head = {n: p.asnumpy() for n, p in ms_model.parameters_and_names() if n.startswith("classifier.")}
    with torch.no_grad():
        ref.classifier.weight.copy_(torch.from_numpy(head["classifier.weight"]))
        ref.classifier.bias.copy_(torch.from_numpy(head["classifier.bias"]))
    ids, types, mask, labels = bench_finetune.batches(bench_finetune.recipe(None, []), ms_model.config.vocab_size,
                                                      1)[0]
    lengths = mask.sum(1)
    assert ids.shape == (32, 48) and lengths.min() >= 8 and (ids[mask == 0] == 0).all()
    assert (ids[np.arange(32), lengths - 1] == 102).all() and set(labels) <= {0, 1, 2}
    want = ms_model(Tensor(ids), Tensor(types), Tensor(mask)).asnumpy()
    got = ref(input_ids=torch.from_numpy(ids).long(), token_type_ids=torch.from_numpy(types).long(),
              attention_mask=torch.from_numpy(mask).long()).logits.detach().numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_pretraining_sides_compute_the_same_model_on_the_same_batches(tmp_path):
    """BERT pretraining: Hugging Face's BertForPreTraining, saved and imported by mindllm, gives mindllm's masked-LM
    and NSP logits when its modules are called as the bench's reference calls them, on the bench's batches."""
    import torch
    from mindspore import Tensor
    from transformers import BertConfig, BertForPreTraining

    from mindllm import bench_finetune, bench_pretrain
    from mindllm.convert import from_hf

    r = bench_finetune.recipe("configs/bert_mlm_peoples_daily.yaml", [])
    torch.manual_seed(0)
    ref = BertForPreTraining(BertConfig(**r["bert"])).eval()
    ref.save_pretrained(str(tmp_path))
    ms_model = from_hf(str(tmp_path), arch="BertForPreTraining", log=None)
    ms_model.set_train(False)
    ids, types, mask, positions, labels, nsp = bench_pretrain.batches(r, 1)[0]
    assert positions.shape == (32, 10) and (positions < mask.sum(1, keepdims=True)).all()
    assert ((types == 1) <= (mask == 1)).all() and set(nsp) <= {0, 1}
    mlm, ns = (t.asnumpy() for t in ms_model(*(Tensor(a) for a in (ids, types, mask, positions))))
    with torch.no_grad():
        h, pooled = ref.bert(input_ids=torch.from_numpy(ids).long(), token_type_ids=torch.from_numpy(types).long(),
                             attention_mask=torch.from_numpy(mask).long(), return_dict=False)[:2]
        picked = torch.gather(h, 1, torch.from_numpy(positions).long()[..., None].expand(-1, -1, h.shape[-1]))
        np.testing.assert_allclose(ref.cls.predictions(picked).numpy(), mlm, atol=2e-5)
        np.testing.assert_allclose(ref.cls.seq_relationship(pooled).numpy(), ns, atol=2e-5)


BERT_4L_128 = ((6000 + 64 + 2) * 128 + 2 * 128                                        # embeddings, LayerNorm
               + 4 * (4 * (128 * 128 + 128) + 2 * 2 * 128 + 2 * 128 * 512 + 512 + 128)  # 4 layers
               + 128 * 128 + 128                                                      # pooler
               + 128 * 128 + 128 + 2 * 128 + 6000   # MLM head: transform, LayerNorm, bias (decoder = tied embedding)
               + 2 * 128 + 2)                                                         # NSP head


@pytest.mark.slow
@pytest.mark.parametrize("config, trainable", [
    ("configs/lora_minilm_tweets.yaml", 6 * 2 * 2 * 384 * 8 + 384 * 3 + 3),  # A and B of query, value; the head
    ("configs/prompt_minilm_tweets.yaml", 20 * 384 + 384 * 3 + 3),           # 20 virtual tokens; the head
    ("configs/ptuning_minilm_tweets.yaml", 20 * 384 + 384 * 128 + 128 + 128 * 128 + 128 + 128 * 384 + 384
     + 384 * 3 + 3),                                     # 20 encoder inputs, the MLP 384-128-128-384; the head
    ("configs/bert_mlm_peoples_daily.yaml", BERT_4L_128)])
def test_lora_soft_prompts_and_pretraining_train_the_same_parameters_on_both_sides(tmp_path, config, trainable):
    out = run("--finetune", config, "--quick", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    med = json.loads((tmp_path / "finetune.json").read_text())["median"]
    assert med["mindllm"]["trainable"] == med["pytorch"]["trainable"] == trainable


def test_the_pytorch_workers_never_import_mindspore():
    """The reference's peak RSS is PyTorch's own: a MindSpore import in its worker added ~250 MB to the reference
    (this happened: bench_e2e imported mindllm.runs at the top)."""
    code = ("import sys; from mindllm import bench, bench_e2e, bench_finetune, bench_pretrain, bench_torch; "
            "from mindllm.data.tokenizer import minilm_dir; "
            "print(sorted(m for m in sys.modules if m.startswith('mindspore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout[-500:] + out.stderr[-2000:]
