"""Mixture of experts (models/moe.py): a tiny random Hugging Face Mixtral with copied weights (logits and the
load-balancing loss), the capacity dispatch against a numpy implementation of its queue rule."""
import math

import numpy as np
import pytest
from mindspore import Tensor

from mindllm import device
from mindllm.models.llama import Llama, LlamaConfig
from mindllm.models.moe import SparseMoE
from mindllm.sample import generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MOE = dict(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_kv_head=2, block_size=24, intermediate_size=40,
           num_experts=4, experts_per_token=2)


@pytest.fixture(autouse=True)
def cpu():
    device.setup(device.context_for("CPU"), seed=0)


def mixtral_pair(seed=0, **overrides):
    cfg = LlamaConfig(**{**MOE, **overrides})
    torch.manual_seed(seed)
    hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.rms_norm_eps, num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.02 if "experts" not in name else 0.2).mul_(4.0)
    ours = Llama(cfg)
    state, mine = hf.state_dict(), dict(ours.parameters_and_names())
    assert set(mine) == set(state), set(mine) ^ set(state)  # names equal Mixtral's keys
    for name, p in mine.items():
        p.set_data(Tensor(state[name].numpy()))
    ours.set_train(False)
    return hf, ours


def ids(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 61, size=shape).astype(np.int32)


def test_dropless_moe_equals_mixtral_logits_and_greedy_tokens():
    hf, ours = mixtral_pair()
    x = ids((2, 24))
    with torch.no_grad():
        want = hf(torch.tensor(x, dtype=torch.long)).logits.numpy()
        prompt = x[:1, :4]
        tokens = hf.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=20, do_sample=False,
                             pad_token_id=0).numpy()
    np.testing.assert_allclose(ours(Tensor(x)).asnumpy(), want, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(generate(ours, prompt, 20, top_k=1), tokens)


def test_load_balancing_loss_equals_transformers():
    hf, ours = mixtral_pair(seed=2, n_layer=1)
    x = ids((3, 24), seed=3)
    with torch.no_grad():
        out = hf(torch.tensor(x, dtype=torch.long), output_router_logits=True)
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    want = float(load_balancing_loss_func(out.router_logits, 4, 2))
    _, aux, load = ours.forward_with_router(Tensor(x))
    assert float(aux.asnumpy()) == pytest.approx(want, rel=1e-5)
    chosen = torch.topk(out.router_logits[0], 2, dim=-1).indices.numpy()
    np.testing.assert_allclose(load.asnumpy()[0], np.bincount(chosen.ravel(), minlength=4) / chosen.size, atol=1e-6)


def numpy_capacity_moe(moe: SparseMoE, x):
    """The GShard rule written out: first choices queue before second choices, in token order; an expert
    processes at most `cap` tokens and the rest get nothing from it."""
    h = x.reshape(-1, x.shape[-1]).astype(np.float64)
    gate = moe.gate.weight.asnumpy()
    gu, down = moe.experts.gate_up_proj.asnumpy(), moe.experts.down_proj.asnumpy()
    logits = h @ gate.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = np.argsort(-p, axis=-1, kind="stable")[:, :moe.top_k]
    w = np.take_along_axis(p, top, -1)
    w /= w.sum(-1, keepdims=True)
    cap, used = moe.capacity(len(h)), np.zeros(moe.num_experts, int)
    y = np.zeros_like(h)
    for j in range(moe.top_k):
        for n in range(len(h)):
            e = top[n, j]
            if used[e] < cap:
                used[e] += 1
                g, u = np.split(gu[e] @ h[n], 2)
                y[n] += w[n, j] * (down[e] @ (g / (1 + np.exp(-g)) * u))
    return y.reshape(x.shape), used


@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_capacity_dispatch_equals_the_queue_rule_and_drops_overflow(factor):
    moe = SparseMoE(n_embd=16, hidden=24, num_experts=4, top_k=2, capacity_factor=factor)
    rng = np.random.default_rng(4)
    for p in moe.get_parameters():  # a skewed router, so some experts overflow
        p.set_data(Tensor((rng.normal(size=p.shape) * (1.5 if "gate.weight" in p.name else 0.3)).astype(np.float32)))
    x = rng.normal(size=(2, 10, 16)).astype(np.float32)
    want, used = numpy_capacity_moe(moe, x)
    y, _, load = moe(Tensor(x))
    np.testing.assert_allclose(y.asnumpy(), want, atol=1e-5)
    assert moe.capacity(20) == math.ceil(factor * 20 * 2 / 4) and used.max() == moe.capacity(20)
    assert (load.asnumpy() * 40 > moe.capacity(20)).any()  # some expert was asked for more than it took


def test_large_capacity_equals_dropless_and_active_parameters():
    _, dropless = mixtral_pair(seed=5)
    roomy = Llama(LlamaConfig(**{**MOE, "capacity_factor": 2.0}))  # cap = N: nothing dropped
    for (name, p), (_, q) in zip(roomy.parameters_and_names(), dropless.parameters_and_names()):
        p.set_data(q.data.copy())
    roomy.set_train(False)
    x = Tensor(ids((2, 24), seed=6))
    np.testing.assert_allclose(roomy(x).asnumpy(), dropless(x).asnumpy(), atol=1e-5)
    c = dropless.config
    assert dropless.num_params() - dropless.active_params() == c.n_layer * 2 * 3 * c.n_embd * c.hidden


def test_mixtral_checkpoints_in_and_out(tmp_path):
    from mindllm.convert import from_hf, to_hf
    hf, ours = mixtral_pair(seed=7)
    hf.save_pretrained(tmp_path / "hf")  # the Hub layout: block_sparse_moe.experts.j.w1/w2/w3
    from safetensors.numpy import load_file
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in load_file(tmp_path / "hf" / "model.safetensors")
    x = ids((2, 24), seed=8)
    with torch.no_grad():
        want = hf(torch.tensor(x, dtype=torch.long)).logits.numpy()
    loaded = from_hf(str(tmp_path / "hf"), log=None)
    assert loaded.config.num_experts == 4 and loaded.config.experts_per_token == 2
    np.testing.assert_allclose(loaded(Tensor(x)).asnumpy(), want, atol=1e-4, rtol=0)
    to_hf(ours, str(tmp_path / "out"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(back).__name__ == "MixtralForCausalLM"
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.tensor(x, dtype=torch.long)).logits.numpy(), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_mixture_of_experts_trains_and_logs_its_router(tiny_cfg):
    import json
    import os
    from mindllm.train import train
    cfg = tiny_cfg("model.arch=llama", "model.num_experts=4", "model.experts_per_token=2", "train.max_iters=120",
                   "train.lr=3e-3", "train.eval_interval=60")
    s = train(cfg, log=lambda *_: None)
    assert s["val_loss"] < s["unigram_val_loss"] - 0.2, s
    records = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    evals = [r for r in records if "val_loss" in r]
    assert len(evals) == 3 and all(0 < r["moe_aux_loss"] < 4 and r["moe_max_load"] >= 1.0 for r in evals)
