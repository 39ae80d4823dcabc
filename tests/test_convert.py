"""mindllm.convert against its oracle, Hugging Face transformers (PyTorch, CPU): tiny random HF models saved with
save_pretrained load into mindllm with equal outputs, mindllm models exported with to_hf open in transformers
with equal outputs, the real all-MiniLM-L6-v2 matches, and every bad input is a one-line UserError."""
import json
import os

import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn
from safetensors.numpy import load_file, save_file

from conftest import TINY
from mindllm.convert import from_hf, load_hf, main, to_hf
from mindllm.errors import UserError
from mindllm.models import bert
from mindllm.models.gpt import GPT, GPTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-4
BERT_HF = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
GPT_HF = dict(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
BERT_ARCHS = ["BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification"]


def perturb_(hf, seed=0):
    """Random init leaves LayerNorms at 1/0 and biases at 0; noise makes every tensor's mapping matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():  # tied tensors appear once
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return hf


def hf_model(arch, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**GPT_HF) if arch.startswith("GPT2") else transformers.BertConfig(**BERT_HF)
    return perturb_(getattr(transformers, arch)(cfg), seed).eval()


def inputs(vocab, seed=0):
    """(ids, token types, attention mask): two rows of 10, the second padded after 7 tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, 7:] = 0
    tt = np.zeros_like(ids)
    tt[:, 5:] = 1
    return ids, tt, mask


def i32(a):
    return Tensor(np.asarray(a, np.int32))


def ours(model, arch, ids, tt, mask):
    if arch.startswith("GPT"):
        return [model(i32(ids)).asnumpy()]
    if arch == "BertForPreTraining":
        pos = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))
        return [t.asnumpy() for t in model(i32(ids), i32(tt), i32(mask), i32(pos))]
    return [model(i32(ids), i32(tt), i32(mask)).asnumpy()]


def theirs(hf, arch, ids, tt, mask):
    with torch.no_grad():
        if arch.startswith("GPT2"):
            out = hf(torch.tensor(ids))
            if arch == "GPT2Model":  # the body: logits through the tied token embedding, as mindllm's GPT gives
                return [(out.last_hidden_state @ hf.wte.weight.T).numpy()]
            return [out.logits.numpy()]
        out = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt), attention_mask=torch.tensor(mask))
    if arch == "BertForPreTraining":
        return [out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()]
    return [out.last_hidden_state.numpy() if arch == "BertModel" else out.logits.numpy()]


def max_diff(a_list, b_list, mask):
    """Largest |difference| over all outputs; per-position outputs only at real (unpadded) tokens."""
    worst = 0.0
    for a, b in zip(a_list, b_list, strict=True):
        assert a.shape == b.shape, (a.shape, b.shape)
        d = np.abs(a - b)
        worst = max(worst, float(d[mask.astype(bool)].max() if d.ndim == 3 else d.max()))
    return worst


def saved(hf, path, **kw):
    hf.save_pretrained(str(path), **kw)
    return str(path)


# ------------------------------------------------------------------------------------------- HF -> mindllm


@pytest.mark.parametrize("arch", BERT_ARCHS + ["GPT2LMHeadModel", "GPT2Model"])
def test_from_hf_outputs_equal_transformers(arch, tmp_path):
    hf = hf_model(arch)
    model = from_hf(saved(hf, tmp_path), log=None)
    expected = {"BertModel": bert.Bert, "GPT2LMHeadModel": GPT, "GPT2Model": GPT}.get(arch) or getattr(bert, arch)
    assert type(model) is expected and not model.training
    vocab = GPT_HF["vocab_size"] if arch.startswith("GPT2") else BERT_HF["vocab_size"]
    ids, tt, mask = inputs(vocab)
    if arch.startswith("GPT2"):
        mask = np.ones_like(mask)
    diff = max_diff(ours(model, arch, ids, tt, mask), theirs(hf, arch, ids, tt, mask), mask)
    assert diff <= TOL, diff


def test_gpt2_greedy_continuation_equals_transformers_generate(tmp_path):
    from mindllm.sample import generate

    hf = hf_model("GPT2LMHeadModel", seed=1)
    model = from_hf(saved(hf, tmp_path), log=None)
    prompt = np.array([[3, 14, 15, 9, 26, 5]])
    with torch.no_grad():
        expect = hf.generate(torch.tensor(prompt), max_new_tokens=20, do_sample=False, pad_token_id=0).numpy()
    got = generate(model, prompt.astype(np.int32), 20, temperature=0.0, compile_=False)
    assert expect.shape == got.shape == (1, 26)
    assert len(set(expect[0, 6:].tolist())) > 1  # a continuation that is not one repeated token
    np.testing.assert_array_equal(got, expect)


def test_sharded_and_bfloat16_checkpoints(tmp_path):
    hf = hf_model("GPT2LMHeadModel")
    d = saved(hf, tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))
    assert not os.path.isfile(os.path.join(d, "model.safetensors"))
    ids = inputs(50)[0]
    diff = max_diff(ours(from_hf(d, log=None), "GPT", ids, None, None), theirs(hf, "GPT2LMHeadModel", ids, 0, 0),
                    np.ones_like(ids))
    assert diff <= TOL, diff
    # bfloat16, which NumPy lacks: widened to float32 exactly
    d = saved(hf_model("GPT2LMHeadModel").to(torch.bfloat16), tmp_path / "bf16")
    model = from_hf(d, log=None)
    want = hf.to(torch.bfloat16).transformer.h[1].mlp.c_fc.weight.float().detach().numpy()
    np.testing.assert_array_equal(model.transformer.h[1].mlp.c_fc.weight.asnumpy(), want)


def test_legacy_keys_are_skipped_or_renamed(tmp_path):
    """Old checkpoints: GPT-2 mask buffers and a stored lm_head copy; BERT TF-era gamma/beta LayerNorm names,
    position_ids, the tied decoder weight stored explicitly, the MLM bias stored as the decoder's bias, and no
    `architectures` (the head is inferred from the keys)."""
    for arch in ("GPT2LMHeadModel", "BertForMaskedLM"):
        hf = hf_model(arch)
        d = saved(hf, tmp_path / arch)
        sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
        if arch == "GPT2LMHeadModel":
            for i in range(GPT_HF["n_layer"]):
                sd[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.uint8))
                sd[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
            sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
        else:
            sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                  for k, v in sd.items()}
            sd["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
            sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].copy()
            sd["cls.predictions.decoder.bias"] = sd.pop("cls.predictions.bias")  # stored only as the decoder's
            with open(os.path.join(d, "config.json")) as fh:
                cfg = json.load(fh)
            del cfg["architectures"]
            with open(os.path.join(d, "config.json"), "w") as fh:
                json.dump(cfg, fh)
        save_file(sd, os.path.join(d, "model.safetensors"))
        model, report = load_hf(d)
        assert report.arch == arch and report.fresh == [] and report.unused == []
        ids, tt, mask = inputs(hf.config.vocab_size)
        mask = np.ones_like(mask) if arch.startswith("GPT") else mask
        diff = max_diff(ours(model, arch, ids, tt, mask), theirs(hf, arch, ids, tt, mask), mask)
        assert diff <= TOL, (arch, diff)


def test_encoder_loads_across_prefixes_and_heads(tmp_path):
    ids, tt, mask = inputs(99)
    # a BertForMaskedLM checkpoint (keys `bert.*`, `cls.*`) -> the bare encoder: the MLM head is left out
    mlm = hf_model("BertForMaskedLM")
    notes = []
    enc = from_hf(saved(mlm, tmp_path / "mlm"), arch="BertModel", log=notes.append)
    assert type(enc) is bert.Bert and enc.pooler is None  # the checkpoint has no pooler: none is invented
    diff = max_diff(ours(enc, "BertModel", ids, tt, mask), theirs(mlm.bert, "BertModel", ids, tt, mask), mask)
    assert diff <= TOL, diff
    assert len(notes) == 1 and "not used" in notes[0] and "cls.predictions" in notes[0]
    # a bare BertModel checkpoint (no prefix) -> a classifier: encoder and pooler load, the classifier is new
    base = hf_model("BertModel")
    clf, report = load_hf(saved(base, tmp_path / "base"), arch="BertForSequenceClassification", num_labels=5)
    assert type(clf) is bert.BertForSequenceClassification and not clf.training
    assert sorted(report.fresh) == ["classifier.bias", "classifier.weight"] and report.unused == []
    assert clf.classifier.weight.shape == (5, 32)
    h = clf.bert(i32(ids), i32(tt), i32(mask))
    with torch.no_grad():
        out = base(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt), attention_mask=torch.tensor(mask))
    assert max_diff([h.asnumpy()], [out.last_hidden_state.numpy()], mask) <= TOL
    np.testing.assert_allclose(clf.bert.pooler(h).asnumpy(), out.pooler_output.numpy(), atol=TOL)
    notes = []
    from_hf(os.path.join(tmp_path, "base"), arch="BertForSequenceClassification", log=notes.append)
    assert len(notes) == 1 and "freshly initialised" in notes[0] and "classifier.weight" in notes[0]
    # a classifier checkpoint -> MLM: the MLM head is new, pooler and classifier are unused
    _, report = load_hf(saved(hf_model("BertForSequenceClassification"), tmp_path / "clf"), arch="BertForMaskedLM")
    assert report.fresh and all(n.startswith("cls.predictions.") for n in report.fresh)
    assert set(report.unused) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                                  "classifier.bias"}


# ------------------------------------------------------------------------------------------- mindllm -> HF


def mindllm_model(arch, seed=0):
    rng = np.random.default_rng(seed)
    if arch == "GPT":
        model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32))
    else:
        model = getattr(bert, arch)(bert.BertConfig.from_dict(BERT_HF))
    for _, p in model.parameters_and_names():  # "trained" weights: every tensor differs from its init
        p.set_data(Tensor(p.asnumpy() + rng.normal(0, 0.05, p.shape).astype(np.float32)))
    model.set_train(False)
    return model


@pytest.mark.parametrize("arch", ["Bert", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification",
                                  "GPT"])
def test_to_hf_opens_in_transformers_with_equal_outputs(arch, tmp_path):
    model = mindllm_model(arch)
    to_hf(model, str(tmp_path))
    hf_arch = {"Bert": "BertModel", "GPT": "GPT2LMHeadModel"}.get(arch, arch)
    with open(tmp_path / "config.json") as fh:
        cfg = json.load(fh)
    assert cfg["architectures"] == [hf_arch] and cfg["model_type"] in ("bert", "gpt2")
    auto = {"BertModel": "AutoModel", "BertForMaskedLM": "AutoModelForMaskedLM",
            "BertForPreTraining": "AutoModelForPreTraining", "GPT2LMHeadModel": "AutoModelForCausalLM",
            "BertForSequenceClassification": "AutoModelForSequenceClassification"}[hf_arch]
    hf, info = getattr(transformers, auto).from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(hf).__name__ == hf_arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    ids, tt, mask = inputs(cfg["vocab_size"])
    mask = np.ones_like(mask) if arch == "GPT" else mask
    diff = max_diff(ours(model, hf_arch, ids, tt, mask), theirs(hf, hf_arch, ids, tt, mask), mask)
    assert diff <= TOL, diff
    back = from_hf(str(tmp_path), log=None)  # and the round trip is exact
    assert type(back) is type(model)
    theirs_params = dict(back.parameters_and_names())
    for name, p in model.parameters_and_names():
        np.testing.assert_array_equal(theirs_params[name].asnumpy(), p.asnumpy())


def test_cli_exports_a_training_run(tmp_path, capsys):
    from mindllm.checkpoint import save_checkpoint
    from mindllm.config import load_config, save_config
    from mindllm.data.tokenizer import CharTokenizer

    run = tmp_path / "run"
    cfg = load_config(None, TINY + [f"out_dir={run}"])
    run.mkdir()
    save_config(cfg, str(run / "config.yaml"))
    tok = CharTokenizer.train("To be, or not to be: that is the question.")
    tok.save(str(run / "tokenizer.json"))
    m = cfg.model
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head,
                          n_embd=m.n_embd))
    save_checkpoint(str(run / "ckpt"), 1, model, nn.Cell(), {})
    main(["--to-hf", str(run), str(tmp_path / "hf")])
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = np.array([tok.encode("to be or not")])
    diff = max_diff(ours(model, "GPT", ids, 0, 0), theirs(hf, "GPT2LMHeadModel", ids, 0, 0), np.ones_like(ids))
    assert diff <= TOL, diff
    assert os.path.isfile(tmp_path / "hf" / "mindllm_tokenizer.json")


# ------------------------------------------------------------------------------------------- real weights


def test_real_minilm_matches_transformers_and_ranks_sentences():
    from mindllm.data.tokenizer import bert_uncased, minilm_dir
    from mindllm.models.bert import mean_pool

    notes = []
    model = from_hf(minilm_dir(), log=notes.append)
    assert type(model) is bert.Bert and notes == []  # everything used, nothing new (position_ids skipped)
    sentences = ["A man is playing a guitar.", "Someone is playing an instrument.",
                 "The stock market fell sharply today.", "Share prices dropped steeply this morning."]
    batch = bert_uncased().batch(sentences)
    ids, tt, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # the rows have different lengths: padding is exercised
    hf = transformers.BertModel.from_pretrained(minilm_dir()).eval()
    h = model(i32(ids), i32(tt), i32(mask))
    diff = max_diff([h.asnumpy()], theirs(hf, "BertModel", ids.astype(np.int64), tt.astype(np.int64),
                                          mask.astype(np.int64)), mask)
    assert diff <= TOL, diff
    e = mean_pool(h, i32(mask)).asnumpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cos = e @ e.T
    assert cos[0, 1] > max(cos[0, 2], cos[0, 3]) and cos[2, 3] > max(cos[2, 0], cos[2, 1]), cos


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Saved tiny BertModel and GPT2LMHeadModel directories to copy and damage."""
    root = tmp_path_factory.mktemp("good")
    return {"bert": saved(hf_model("BertModel"), root / "bert"), "gpt": saved(hf_model("GPT2LMHeadModel"),
                                                                                root / "gpt")}


def edit_config(**changes):
    def apply(d):
        path = os.path.join(d, "config.json")
        with open(path) as fh:
            cfg = json.load(fh)
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        with open(path, "w") as fh:
            json.dump(cfg, fh)
    return apply


def edit_weights(fn):
    def apply(d):
        path = os.path.join(d, "model.safetensors")
        sd = load_file(path)
        fn(sd)
        save_file(sd, path)
    return apply


def remove(name):
    return lambda d: os.remove(os.path.join(d, name))


def only_bin(d):
    os.remove(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as fh:
        fh.write(b"\x80\x02pickle")


def truncate(d):
    path = os.path.join(d, "model.safetensors")
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def missing_shard(d):
    os.remove(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
        json.dump({"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}, fh)


BAD = [
    ("bert", remove("config.json"), {}, "no config.json"),
    ("bert", remove("model.safetensors"), {}, "no model.safetensors"),
    ("bert", only_bin, {}, "pickle"),
    ("gpt", missing_shard, {}, "model-00001-of-00002.safetensors"),
    ("bert", truncate, {}, "cannot read"),
    ("bert", edit_config(model_type="mistral"), {}, "model_type 'mistral'"),
    ("bert", edit_config(model_type="llama"), {}, "hidden_act 'gelu' is not supported"),
    ("bert", edit_config(model_type=None), {}, "no model_type"),
    ("bert", edit_config(vocab_size=98), {}, "word_embeddings.weight' as (98, 32) but the checkpoint holds (99, 32)"),
    ("bert", edit_config(num_hidden_layers=1000000), {}, "says 1000000 layers but the checkpoint holds 2"),
    ("gpt", edit_config(n_layer=1000000), {}, "says 1000000 layers but the checkpoint holds"),
    ("gpt", edit_config(vocab_size=10 ** 12), {}, "vocab_size must be a whole number in 1..10,000,000"),
    ("gpt", edit_config(n_layer="many"), {}, "n_layer must be a whole number"),
    ("bert", edit_config(hidden_act="gelu_new"), {}, "hidden_act 'gelu_new'"),
    ("bert", edit_config(position_embedding_type="relative_key"), {}, "relative_key"),
    ("bert", edit_config(architectures=["BertForQuestionAnswering"]), {}, "arch='BertModel'"),
    ("bert", lambda d: None, {"arch": "BertForTokenClassification"}, "BertForTokenClassification"),
    ("bert", lambda d: None, {"arch": "GPT2Model"}, "GPT2Model"),
    ("bert", lambda d: None, {"num_lables": 3}, "num_lables"),
    ("bert", edit_weights(lambda sd: sd.update({"encoder.layer.7.output.dense.bias": np.zeros(32, np.float32)})),
     {}, "encoder.layer.7.output.dense.bias"),
    ("bert", edit_weights(lambda sd: sd.pop("encoder.layer.1.output.dense.bias")), {},
     "encoder.layer.1.output.dense.bias"),
    ("gpt", edit_config(activation_function="relu"), {}, "activation_function 'relu'"),
    ("gpt", edit_config(layer_norm_epsilon=1e-6), {}, "layer_norm_epsilon"),
    ("gpt", edit_config(n_positions=16), {}, "(32, 32)"),
    ("gpt", edit_weights(lambda sd: sd.update({"lm_head.weight": sd["transformer.wte.weight"] + 1})), {},
     "untied"),
]


@pytest.mark.parametrize("base,damage,kwargs,fragment", BAD, ids=[b[3] for b in BAD])
def test_bad_checkpoints_are_one_line_user_errors(good, tmp_path, base, damage, kwargs, fragment):
    import shutil

    d = str(tmp_path / "ckpt")
    shutil.copytree(good[base], d)
    damage(d)
    with pytest.raises(UserError) as e:
        from_hf(d, log=None, **kwargs)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg


def test_missing_directory_and_unexportable_models(tmp_path, capsys):
    with pytest.raises(UserError, match="not found"):
        from_hf(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="to_hf exports"):
        to_hf(nn.Dense(2, 2), str(tmp_path / "out"))
    with pytest.raises(UserError, match="no biases"):
        to_hf(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False)), str(tmp_path))
    model = bert.Bert(bert.BertConfig.from_dict(BERT_HF))
    model.adapter = Parameter(Tensor(np.zeros(3, np.float32)), name="adapter")  # e.g. an unmerged LoRA weight
    with pytest.raises(UserError, match="'adapter' has no Hugging Face counterpart"):
        to_hf(model, str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:  # the command line: one line on stderr, exit status 2
        main(["--to-hf", str(tmp_path / "no_run"), str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "no_run" in err, err
