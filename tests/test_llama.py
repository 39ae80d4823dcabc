"""The modern block (models/llama.py) against independent oracles: tiny random Hugging Face Llama and Qwen2 models
with copied weights, RoPE written with complex numbers, GQA as multi-head attention with repeated weights, and the
KV-cache generator against the uncached one."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindllm import device
from mindllm.models.llama import Llama, LlamaConfig, apply_rope, rope_tables
from mindllm.sample import generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_kv_head=2, block_size=24, intermediate_size=40)


@pytest.fixture(autouse=True)
def cpu():
    device.setup(device.context_for("CPU"), seed=0)


def hf_config(kind, cfg: LlamaConfig):
    rope = {"rope_type": "default" if cfg.rope_scaling == 1 else "linear", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != 1:
        rope["factor"] = cfg.rope_scaling
    Config = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
    return Config(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                  num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
                  rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope)


def hf_pair(kind="llama", seed=0, **overrides):
    """A random Hugging Face model (norm weights and biases perturbed so none is trivially 1 or 0) and mindllm's
    Llama with its weights copied by name."""
    cfg = LlamaConfig(**{**SMALL, "qkv_bias": kind == "qwen2", **overrides})
    torch.manual_seed(seed)
    Model = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
    hf = Model(hf_config(kind, cfg)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(4.0)  # logits far from uniform, so a wrong mapping shows
    ours = Llama(cfg)
    state = hf.state_dict()
    mine = dict(ours.parameters_and_names())
    expected = {k for k in state if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    assert set(mine) == expected, set(mine) ^ expected  # names equal Hugging Face's keys
    for name, p in mine.items():
        p.set_data(Tensor(state[name].numpy()))
    ours.set_train(False)
    return hf, ours


def ids_for(cfg_vocab, shape, seed=1):
    return np.random.default_rng(seed).integers(0, cfg_vocab, size=shape).astype(np.int32)


@pytest.mark.parametrize("kind,overrides", [
    ("llama", {}), ("qwen2", {}), ("llama", {"n_kv_head": 1}), ("llama", {"n_kv_head": 4}),
    ("llama", {"tie_word_embeddings": True}), ("llama", {"rope_theta": 500.0, "rope_scaling": 2.0})],
    ids=["llama-gqa", "qwen2-bias", "mqa", "mha", "tied", "theta-scaled"])
def test_logits_equal_transformers(kind, overrides):
    hf, ours = hf_pair(kind, **overrides)
    ids = ids_for(61, (2, 24))
    with torch.no_grad():
        want = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    got = ours(Tensor(ids)).asnumpy()
    assert np.abs(want).max() > 1.0  # not a near-zero comparison
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_20_tokens_equal_transformers_generate(kind):
    hf, ours = hf_pair(kind, seed=3)
    prompt = ids_for(61, (1, 4), seed=5)
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=20, do_sample=False,
                           pad_token_id=0).numpy()
    got = generate(ours, prompt, 20, top_k=1)
    np.testing.assert_array_equal(got, want)


def test_kv_cache_decoding_equals_uncached_past_the_block():
    _, ours = hf_pair("llama", seed=4)
    prompt = ids_for(61, (2, 5), seed=6)
    n = 30  # 5 + 30 > block_size 24: the window slides and is re-encoded
    cached = generate(ours, prompt, n, top_k=1)
    plain = generate(ours, prompt, n, top_k=1, kv_cache=False)
    np.testing.assert_array_equal(cached, plain)
    assert ours.kv_cache_bytes(2) == 2 * 2 * 2 * 2 * 24 * 8 * 4  # k,v x layers x batch x n_kv x block x hs x fp32


def test_rope_equals_complex_rotation_and_depends_only_on_the_offset():
    hs, T = 8, 12
    cos, sin = rope_tables(T, hs, theta=100.0)
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(1, T, hs)).astype(np.float32), rng.normal(size=(1, T, hs)).astype(np.float32)
    rq = apply_rope(Tensor(q), Tensor(cos), Tensor(sin)).asnumpy()
    # complex form: pair i = (x[i], x[i + hs/2]) is the number x[i] + j·x[i+hs/2], turned by e^{j p θ_i}
    theta = 100.0 ** (-np.arange(0, hs, 2) / hs)
    z = (q[..., :hs // 2] + 1j * q[..., hs // 2:]) * np.exp(1j * np.arange(T)[:, None] * theta)
    np.testing.assert_allclose(rq, np.concatenate([z.real, z.imag], -1), atol=1e-5)
    # the same q and k vectors at positions (p, p - d): the score depends on d only
    same_q, same_k = np.repeat(q[:, :1], T, 1), np.repeat(k[:, :1], T, 1)
    Q = apply_rope(Tensor(same_q), Tensor(cos), Tensor(sin)).asnumpy()[0]
    K = apply_rope(Tensor(same_k), Tensor(cos), Tensor(sin)).asnumpy()[0]
    for d in (0, 1, 5):
        scores = [Q[p] @ K[p - d] for p in range(d, T)]
        np.testing.assert_allclose(scores, scores[0], atol=1e-5)
    assert not np.isclose(Q[6] @ K[5], Q[6] @ K[1], atol=1e-3)


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_weights():
    """GQA = MHA whose k/v projections are the grouped ones, each repeated for the query heads it serves."""
    _, gqa = hf_pair("llama", seed=7, n_kv_head=2)
    mha = Llama(LlamaConfig(**{**SMALL, "n_kv_head": 4}))
    hs, rep = 8, 2
    for name, p in mha.parameters_and_names():
        src = dict(gqa.parameters_and_names())[name].asnumpy()
        if name.endswith(("k_proj.weight", "v_proj.weight")):  # (n_kv*hs, C) -> (n_head*hs, C)
            src = np.repeat(src.reshape(-1, hs, src.shape[-1]), rep, axis=0).reshape(-1, src.shape[-1])
        p.set_data(Tensor(src))
    mha.set_train(False)
    ids = Tensor(ids_for(61, (2, 24)))
    np.testing.assert_allclose(mha(ids).asnumpy(), gqa(ids).asnumpy(), atol=1e-5)
    assert gqa.kv_cache_bytes() * 2 == mha.kv_cache_bytes()


@pytest.mark.slow
def test_llama_trains_resumes_samples_and_takes_lora(tiny_cfg, capsys):
    """model.arch=llama through the one training loop: it learns, resumes bit-identically, samples with the
    KV cache, and instruction-style LoRA targets its q_proj / v_proj by name."""
    from mindllm.peft.lora import LoRALinear, apply_lora
    from mindllm.runs import load_model
    from mindllm.train import train
    common = ["model.arch=llama", "model.n_kv_head=1", "train.lr=3e-3", "train.eval_interval=60",
              "train.ckpt_interval=60", "train.lr_decay_iters=120"]
    s = train(tiny_cfg(*common, "train.max_iters=120", out="full"), log=lambda *_: None)
    assert s["val_loss"] < s["unigram_val_loss"] - 0.2, s
    train(tiny_cfg(*common, "train.max_iters=60", out="part"), log=lambda *_: None)
    r = train(tiny_cfg(*common, "train.max_iters=120", "resume=true", out="part"), log=lambda *_: None)
    assert r["val_loss"] == pytest.approx(s["val_loss"], abs=1e-5)
    model, tokenizer, cfg = load_model(tiny_cfg(out="full").out_dir)
    assert isinstance(model, Llama) and model.config.n_kv_head == 1
    out = generate(model, np.array([tokenizer.encode("ROMEO:")], np.int32), 10, top_k=1)
    assert out.shape == (1, 16)
    from mindllm.convert import main as convert
    convert(["--to-hf", cfg.out_dir, cfg.out_dir + "_hf"])  # the run as a LlamaForCausalLM directory
    assert "LlamaForCausalLM" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(cfg.out_dir + "_hf").eval()
    with torch.no_grad():
        want = hf(torch.tensor(out, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(model(Tensor(out)).asnumpy(), want, atol=1e-4, rtol=0)
    convert(["--to-mindformers", cfg.out_dir, cfg.out_dir + "_mf"])  # Qwen2 format, zero q/k/v biases
    qwen = transformers.Qwen2ForCausalLM.from_pretrained(cfg.out_dir + "_mf").eval()
    with torch.no_grad():
        np.testing.assert_allclose(qwen(torch.tensor(out, dtype=torch.long)).logits.numpy(), want, atol=1e-4, rtol=0)
    check_against_mindformers(cfg.out_dir + "_mf")
    adapted = apply_lora(model, r=4, alpha=8.0, targets=["q_proj", "v_proj"])
    names = [name for name, c in model.cells_and_names() if isinstance(c, LoRALinear)]
    assert sorted(adapted) == sorted(names) and len(names) == 2 * 2 and all(x.endswith(("q_proj", "v_proj")) for x in names), names


def test_llama_options_are_checked(tiny_cfg):
    from mindllm.errors import UserError
    with pytest.raises(UserError, match="n_kv_head .3. must divide model.n_head .2."):
        tiny_cfg("model.arch=llama", "model.n_kv_head=3")
    with pytest.raises(UserError, match="model.n_kv_head belongs to the Llama block"):
        tiny_cfg("model.n_kv_head=1")


@pytest.mark.parametrize("kind,overrides", [("llama", {}), ("qwen2", {"tie_word_embeddings": True})],
                         ids=["llama", "qwen2-tied"])
def test_hugging_face_checkpoints_in_and_out(kind, overrides, tmp_path):
    """save_pretrained (sharded) -> from_hf: equal logits; to_hf -> transformers' from_pretrained: equal logits."""
    from mindllm.convert import from_hf, to_hf
    hf, ours = hf_pair(kind, seed=8, **overrides)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")  # several model-0000k-of-0000n.safetensors
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ids = ids_for(61, (2, 24), seed=9)
    with torch.no_grad():
        want = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    loaded = from_hf(str(tmp_path / "hf"), log=None)
    assert isinstance(loaded, Llama) and loaded.config.qkv_bias == (kind == "qwen2")
    np.testing.assert_allclose(loaded(Tensor(ids)).asnumpy(), want, atol=1e-4, rtol=0)
    to_hf(ours, str(tmp_path / "out"))
    Model = transformers.AutoModelForCausalLM
    back = Model.from_pretrained(str(tmp_path / "out")).eval()
    assert type(back).__name__ == ("Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM")
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.tensor(ids, dtype=torch.long)).logits.numpy(), want, atol=1e-4, rtol=0)


def test_llama_configs_mindllm_cannot_compute_are_one_line_errors(tmp_path):
    import json
    from mindllm.convert import from_hf
    from mindllm.errors import UserError
    hf, _ = hf_pair("llama", seed=10)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    cases = [({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope type 'yarn'"),
             ({"max_position_embeddings": 131072}, "from_hf\\(path, max_position_embeddings=2048\\)"),
             ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
             ({"num_hidden_layers": 3}, "3 layers but the checkpoint holds 2")]
    for change, message in cases:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UserError, match=message):
            from_hf(str(tmp_path), log=None)
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    assert from_hf(str(tmp_path), log=None, max_position_embeddings=16).config.block_size == 16


MINDFORMERS = os.path.join(os.path.dirname(__file__), "data", "mindformers_2.1.0_qwen2.json")


def check_against_mindformers(out_dir):
    """The exported YAML has exactly the sections and names of mindformers 2.1.0's predict_qwen2.yaml, and
    config.json only fields its Qwen2Config reads."""
    import yaml
    wheel = json.load(open(MINDFORMERS))

    def shape(d):
        return {k: shape(v) if isinstance(v, dict) else None for k, v in d.items()}

    ours = yaml.safe_load(open(os.path.join(out_dir, "predict_qwen2.yaml")))
    assert shape(ours) == wheel["predict_qwen2_yaml"]
    assert ours["trainer"]["model_name"] == "qwen2" and os.path.isdir(ours["pretrained_model_dir"])
    config = json.load(open(os.path.join(out_dir, "config.json")))
    assert set(config) - {"model_type", "architectures", "torch_dtype"} <= set(wheel["qwen2_config_fields"])


def test_mindformers_yaml_has_the_wheels_sections(tmp_path):
    from mindllm import mindformers
    path = tmp_path / "predict_qwen2.yaml"
    path.write_text(mindformers.dump(mindformers.predict_yaml(str(tmp_path)), str(path)))
    (tmp_path / "config.json").write_text(json.dumps(mindformers.qwen2_config_json(
        {"vocab_size": 65, "hidden_size": 32, "rope_parameters": {"rope_type": "default"}, "head_dim": 8})))
    check_against_mindformers(str(tmp_path))


def test_gpt_cells_swap_for_llama_cells():
    """Notebook 12's ablation builds GPT-2 with one Llama change by swapping cells: a replaced parent's old children
    (GPT's c_fc, c_proj) are skipped, not looked up, every Parameter keeps its full name, and the swapped cells
    compute SwiGLU and RMSNorm as numpy does."""
    import math
    from mindllm.models.gpt import GPT, GPTConfig
    from mindllm.models.layers import LayerNorm
    from mindllm.models.llama import LlamaMLP, RMSNorm
    from mindllm.models.surgery import replace_cells

    gpt = GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=32))
    lcfg = LlamaConfig(vocab_size=61, n_embd=32, intermediate_size=40)
    swapped = replace_cells(gpt, lambda name, cell: LlamaMLP(lcfg, 0.02 / math.sqrt(4)) if name.endswith(".mlp")
                            else None)
    assert swapped == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    replace_cells(gpt, lambda name, cell: RMSNorm(32) if isinstance(cell, LayerNorm) else None)
    names = [n for n, _ in gpt.parameters_and_names()]
    assert "transformer.h.1.mlp.gate_proj.weight" in names and not [n for n in names if "c_fc" in n]
    assert not [n for n in names if n.startswith("transformer.ln_f.") and not n.endswith("weight")]
    assert [p.name for p in gpt.get_parameters()] == names
    block, h = gpt.transformer.h[0], np.random.default_rng(0).normal(size=(2, 16, 32)).astype(np.float32)
    w = {n: p.asnumpy() for n, p in block.mlp.parameters_and_names()}
    g = h @ w["gate_proj.weight"].T
    want = (g / (1 + np.exp(-g)) * (h @ w["up_proj.weight"].T)) @ w["down_proj.weight"].T
    np.testing.assert_allclose(block.mlp(Tensor(h)).asnumpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(block.ln_2(Tensor(h)).asnumpy(), h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6),
                               rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(1).integers(0, 61, (2, 16)).astype(np.int32)
    assert gpt(Tensor(x)).shape == (2, 16, 61)


def test_mindformers_export_refuses_a_gpt_run_in_one_line(tiny_cfg, capsys):
    """The arch is read from the run's config before any weight is loaded; nothing is written."""
    from mindllm.convert import main as convert
    from mindllm.train import train
    cfg = tiny_cfg("train.max_iters=2", "train.eval_interval=2", "train.ckpt_interval=2")
    train(cfg, log=lambda *_: None)
    with pytest.raises(SystemExit) as e:
        convert(["--to-mindformers", cfg.out_dir, cfg.out_dir + "_mf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "model.arch=gpt" in err and "Llama block" in err and "\n" not in err, err
    assert not os.path.exists(cfg.out_dir + "_mf")
