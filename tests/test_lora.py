"""LoRA against its oracle, Hugging Face peft on the same tiny random BERT and GPT-2 (same weights, same adapter
matrices, equal outputs), and its contracts: a fresh adapter changes nothing, merge/unmerge round-trip, only the
adapter trains, the adapter file holds only adapter tensors."""
import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindllm.convert import from_hf
from mindllm.errors import UserError
from mindllm.peft import apply_lora, load_adapter, merge_lora, save_adapter, trainable_report, unmerge_lora
from test_convert import BERT_HF, hf_model, i32, inputs, max_diff, ours, saved, theirs

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

CASES = {"BertForSequenceClassification": ["query", "value"], "GPT2LMHeadModel": ["c_attn", "c_fc"]}


def randomise_b(model, seed=1, scale=0.1):
    """A fresh adapter's B is zero; give it values so the update is visible."""
    rng = np.random.default_rng(seed)
    for n, p in model.parameters_and_names():
        if n.endswith(".lora_B"):
            p.set_data(Tensor(rng.normal(0, scale, p.shape).astype(np.float32)))


@pytest.mark.parametrize("arch", list(CASES))
def test_lora_equals_peft(arch, tmp_path):
    hf = hf_model(arch)
    model = from_hf(saved(hf, tmp_path), log=None)
    targets = CASES[arch]
    adapted = apply_lora(model, r=4, alpha=8, targets=targets)
    randomise_b(model)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                          fan_in_fan_out=arch.startswith("GPT2"))
    wrapped = peft.get_peft_model(hf, cfg).eval()
    ours_by_name = {n: p.asnumpy() for n, p in model.parameters_and_names() if ".lora_" in n}
    copied = 0
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".lora_" not in name:
                continue
            key = name.replace("base_model.model.", "").replace(".default.weight", "")
            p.copy_(torch.tensor(ours_by_name[key]))
            copied += 1
    assert copied == 2 * len(adapted) and len(adapted) == 2 * BERT_HF["num_hidden_layers"]
    vocab = 50 if arch.startswith("GPT2") else BERT_HF["vocab_size"]
    ids, tt, mask = inputs(vocab)
    if arch.startswith("GPT2"):
        mask = np.ones_like(mask)
    assert max_diff(ours(model, arch, ids, tt, mask), theirs(wrapped, arch, ids, tt, mask), mask) <= 1e-4


@pytest.mark.parametrize("arch", list(CASES))
def test_fresh_adapter_changes_nothing_and_merge_round_trips(arch, tmp_path):
    model = from_hf(saved(hf_model(arch), tmp_path), log=None)
    vocab = 50 if arch.startswith("GPT2") else BERT_HF["vocab_size"]
    ids, tt, mask = inputs(vocab)
    base = ours(model, arch, ids, tt, mask)
    weights = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    apply_lora(model, r=2, alpha=4, targets=CASES[arch])
    assert max_diff(ours(model, arch, ids, tt, mask), base, np.ones_like(mask)) == 0.0  # B = 0
    randomise_b(model)
    unmerged = ours(model, arch, ids, tt, mask)
    assert max_diff(unmerged, base, np.ones_like(mask)) > 1e-3  # the adapter now matters
    merge_lora(model)
    assert max_diff(ours(model, arch, ids, tt, mask), unmerged, np.ones_like(mask)) <= 1e-5
    unmerge_lora(model)
    assert max_diff(ours(model, arch, ids, tt, mask), unmerged, np.ones_like(mask)) <= 1e-5
    for n, p in model.parameters_and_names():
        if n in weights:
            np.testing.assert_allclose(p.asnumpy(), weights[n], atol=1e-6, err_msg=n)


def test_merging_beside_a_compiled_decoder_keeps_the_tokens():
    """generate() keeps its compiled decoding graphs on the model. Merging an adapter into W, and unmerging it, must
    not change what those graphs (compiled with the adapter beside W) or a fresh decoder produce: the greedy tokens
    stay those of the unmerged model, and differ from the base model's."""
    import mindspore as ms

    from mindllm.models.gpt import GPT, GPTConfig
    from mindllm.sample import generate

    ms.set_seed(0)  # the same initial weights whatever ran before in this process
    model = GPT(GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32))
    prompt = np.random.default_rng(3).integers(0, 50, (1, 4)).astype(np.int32)
    base = generate(model, prompt, 12, temperature=0.0)
    apply_lora(model, r=4, targets=("c_attn", "c_fc"))
    randomise_b(model, seed=4, scale=0.5)  # at 0.1, 1 of 8 unseeded inits kept the greedy tokens; at 0.5, 0 of 8
    tuned = generate(model, prompt, 12, temperature=0.0)
    assert not (tuned == base).all()
    merge_lora(model)
    assert (generate(model, prompt, 12, temperature=0.0) == tuned).all()
    assert (generate(model, prompt, 12, temperature=0.0, kv_cache=False) == tuned).all()
    two_rows = np.repeat(prompt, 2, axis=0)  # another batch size: a decoder compiled after the merge
    assert (generate(model, two_rows, 12, temperature=0.0) == tuned).all()
    unmerge_lora(model)
    assert (generate(model, prompt, 12, temperature=0.0) == tuned).all()
    assert (generate(model, two_rows, 12, temperature=0.0) == tuned).all()  # compiled while merged


def test_only_the_adapter_and_head_train_and_the_file_holds_only_them(tmp_path):
    from mindllm.config import TrainConfig
    from mindllm.models.layers import cross_entropy
    from mindllm.optim import build_optimizer
    from mindllm.steps import TrainSteps

    model = from_hf(saved(hf_model("BertForSequenceClassification"), tmp_path / "hf"), log=None)
    apply_lora(model, r=4, alpha=8, targets=["query", "value"], train_also=("classifier.",))
    report = trainable_report(model)
    lora_n = 2 * 2 * 4 * (32 + 32)  # 2 layers x (q, v) x r x (in + out)
    head_n = 32 * 3 + 3
    assert report.startswith(f"trainable params: {lora_n + head_n:,} ||")
    before = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    model.set_train(True)

    def loss_fn(ids, tt, mask, y):
        return cross_entropy(model(ids, tt, mask), y)

    step = TrainSteps(loss_fn, build_optimizer(model, TrainConfig(lr=1e-2, warmup_iters=0, max_iters=5)),
                      grad_clip=1.0).step
    ids, tt, mask = inputs(BERT_HF["vocab_size"])
    for _ in range(5):
        step(i32(ids), i32(tt), i32(mask), i32([0, 2]))
    changed = {n for n, p in model.parameters_and_names() if not np.array_equal(p.asnumpy(), before[n])}
    trainable = {n for n, p in model.parameters_and_names() if ".lora_" in n or n.startswith("classifier.")}
    assert changed == trainable
    size = save_adapter(model, str(tmp_path / "adapter.safetensors"))
    stored = load_file(str(tmp_path / "adapter.safetensors"))
    assert set(stored) == trainable and size < 20_000
    # a second copy of the base model with this adapter gives the trained model's outputs
    other = from_hf(str(tmp_path / "hf"), log=None)
    apply_lora(other, r=4, alpha=8, targets=["query", "value"], train_also=("classifier.",))
    load_adapter(other, str(tmp_path / "adapter.safetensors"))
    model.set_train(False)
    arch = "BertForSequenceClassification"
    assert max_diff(ours(other, arch, ids, tt, mask), ours(model, arch, ids, tt, mask), mask) == 0.0


def test_unknown_target_names_the_layers():
    from mindllm.models.gpt import GPT, GPTConfig

    with pytest.raises(UserError, match="match no Linear layer; this model has: c_attn, c_fc, c_proj"):
        apply_lora(GPT(GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=8)), targets=["query"])


@pytest.mark.parametrize("method", ["lora", "ptuning"])
@pytest.mark.slow
def test_peft_config_fine_tunes_real_minilm_through_the_loop(tmp_path, method):
    """configs/lora_minilm_tweets.yaml, shortened: the pretrained weights end unchanged, the adapter file holds
    exactly the trained tensors, and the run reloads."""
    from mindllm.config import load_config
    from mindllm.data.tokenizer import minilm_dir
    from mindllm.runs import load_trained
    from mindllm.train import train

    cfg = load_config("configs/lora_minilm_tweets.yaml", [
        f"peft.method={method}", "peft.num_virtual_tokens=4", "peft.encoder_hidden=8", "train.max_iters=3",
        "train.batch_size=4", "model.block_size=16", "train.eval_iters=1", "train.eval_interval=3",
        "data.test_examples=8", "train.progress=false", "train.warmup_iters=0", f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg, log=lambda *a: None)
    stored = load_file(str(tmp_path / "run" / "adapter.safetensors"))
    assert summary["adapter_bytes"] == (tmp_path / "run" / "adapter.safetensors").stat().st_size
    assert summary["trainable_params"] == sum(v.size for v in stored.values())
    task, _ = load_trained(str(tmp_path / "run"))
    trained = {n: p.asnumpy() for n, p in task.model.parameters_and_names()}
    assert set(stored) == {n for n, p in task.model.parameters_and_names() if p.requires_grad}
    assert all(n.startswith(("classifier.", "prompt.")) or ".lora_" in n for n in stored)
    base = from_hf(minilm_dir(), arch="BertForSequenceClassification", num_labels=3, log=None)
    for n, p in base.parameters_and_names():
        if not n.startswith("classifier."):
            np.testing.assert_array_equal(trained[n], p.asnumpy(), err_msg=n)
    for n, value in stored.items():
        np.testing.assert_array_equal(trained[n], value, err_msg=n)


@pytest.mark.parametrize("overrides, fragment", [
    (["peft.method=lora", "model.freeze=encoder"], "leave classify.freeze=none"),  # the old key still works
    (["peft.method=lora", "peft.targets=nothing"], "match no Linear layer"),
    (["peft.method=prompt", "peft.num_virtual_tokens=500"], "exceeds the model's 512 positions"),
    (["peft.method=adapter"], "peft.method must be one of"),
])
def test_peft_mistakes_are_one_line(tmp_path, overrides, fragment):
    from test_cli import assert_clean_error, call

    assert_clean_error(call("mindllm.train", "configs/lora_minilm_tweets.yaml", *overrides,
                           f"out_dir={tmp_path / 'r'}", "train.max_iters=1"), fragment)


@pytest.mark.parametrize("config", ["configs/lora_minilm_tweets.yaml", "configs/bert_mlm_peoples_daily.yaml"])
def test_the_evaluation_loss_through_the_shared_forward_graph_is_the_training_loss(tmp_path, config):
    """Classification and BERT pretraining evaluate their loss on the compiled forward graph their metrics use (a
    second graph would hold its own memory): on the same batch, with dropout off, it equals loss_fn's value."""
    import mindspore as ms
    from mindspore import Tensor

    from mindllm import device, tasks
    from mindllm.config import load_config

    (tmp_path / "run").mkdir()
    cfg = load_config(config, ["train.batch_size=4", "model.block_size=16", "train.eval_iters=1",
                               f"out_dir={tmp_path / 'run'}"])
    device.setup(cfg.context, cfg.seed)
    task = tasks.build(cfg)
    assert task.eval_loss_compiled
    task.model.set_train(False)
    batch = [Tensor(a) for a in task.eval_batches["val"][0]]
    want = float(ms.jit(task.loss_fn)(*batch).asnumpy())
    assert abs(float(task.eval_loss_fn(*batch).asnumpy()) - want) <= 1e-6 * max(1.0, abs(want))
