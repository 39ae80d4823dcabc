"""python -m mindllm.export against tiny real runs (GPT and Llama with grouped-query attention): the reloaded MindIR
graphs give the trained model's logits and cache, and decode the model's own greedy tokens, past the block too."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import train_tiny
from mindspore import Tensor
from test_cli import assert_clean_error, call

from mindllm import runs
from mindllm.config import load_config, save_config
from mindllm.decoding import generate
from mindllm.errors import UserError
from mindllm.export import export_model, generate_exported, load_exported, sample_window
from mindllm.files import sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = {"gpt": [], "llama": ["model.arch=llama", "model.n_kv_head=1"]}  # llama: 2 query heads share 1 k/v head
pytestmark = pytest.mark.slow


def export_cli(*args):
    """python -m mindllm.export in its own interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mindllm.export", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, GLOG_v="3"), timeout=600, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    """arch -> a tiny character run on Shakespeare (block 16), trained on first use."""
    done = {}

    def get(arch):
        if arch not in done:
            done[arch] = train_tiny(small_corpus, tmp_path_factory.mktemp(f"export_{arch}") / "run", *ARCHS[arch],
                                    "train.max_iters=120", "train.lr=0.01")
        return done[arch]

    return get


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """arch -> (run, folder) of its export with batch 2 (rows decode different prompts)."""
    done = {}

    def get(arch):
        if arch not in done:
            run = trained(arch)
            model, _, _ = runs.load_model(run)
            folder = str(tmp_path_factory.mktemp(f"exported_{arch}"))
            export_model(model, os.path.join(run, "tokenizer.json"), folder, batch=2)
            done[arch] = run, folder
        return done[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_and_cache_equal_the_model(exported, arch):
    run, folder = exported(arch)
    model, _, _ = runs.load_model(run)  # a fresh plain model: the oracle, run op by op
    ex = load_exported(folder)
    idx = sample_window(model.config.vocab_size, 2, model.config.block_size, seed=7)
    logits, k, v = ex.window(idx)
    want, cache = model.forward_cached(Tensor(idx))
    np.testing.assert_allclose(logits, model(Tensor(idx)).asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, want.asnumpy(), rtol=1e-5, atol=1e-5)
    heads = model.config.n_head if arch == "gpt" else 1
    assert k.shape == (2, 2 * heads, 16, 16) == tuple(ex.manifest["cache_shape"])  # (L, B*n_kv, block, hs)
    for i, (ki, vi) in enumerate(cache):  # the documented layout: layer i is forward_cached's cache[i]
        np.testing.assert_allclose(k.asnumpy()[i], ki.asnumpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v.asnumpy()[i], vi.asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_decoding_equals_the_models_greedy_tokens(exported, arch):
    run, folder = exported(arch)
    model, _, _ = runs.load_model(run)
    ex = load_exported(folder)
    prompt = sample_window(model.config.vocab_size, 2, 5, seed=5)  # (2, 5), two different prompts
    want = generate(model, prompt, 20, temperature=0)  # 5 + 20 > block 16: the window slides, re-prefilled
    got = generate_exported(ex, prompt, 20)
    assert got.shape == (2, 25)
    np.testing.assert_array_equal(got, want)
    assert len(set(want[:, 5:].ravel().tolist())) > 2  # varied text: a wrong position or cache would show


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_graph_fed_its_own_cache_gives_the_models_logits(exported, arch):
    """Teacher-forced through the block: each step's logits equal the full forward's at that position (a test
    that tokens alone cannot pass by a tiny model's habit of repeating one character)."""
    run, folder = exported(arch)
    model, _, _ = runs.load_model(run)
    ex = load_exported(folder)
    seq = sample_window(model.config.vocab_size, 2, 16, seed=3)
    full = model(Tensor(seq)).asnumpy()  # (2, 16, V)
    logits, k, v = ex.window(np.pad(seq[:, :4], ((0, 0), (0, 12))))
    np.testing.assert_allclose(logits[:, 3], full[:, 3], rtol=1e-5, atol=1e-5)
    for pos in range(4, 16):
        logits, k, v = ex.step(seq[:, pos], k, v, pos)
        np.testing.assert_allclose(logits, full[:, pos], rtol=1e-4, atol=1e-4, err_msg=f"position {pos}")
    assert len(set(full[:, 4:].argmax(-1).ravel().tolist())) > 1  # the positions really differ


def test_a_fused_model_is_refused(trained, tmp_path):
    model, _, _ = runs.load_model(trained("gpt"))
    generate(model, np.zeros((1, 1), np.int32), 1)  # sampling fuses the layers (on CPU, where the kernels build)
    if not any("Fused" in type(c).__name__ for _, c in model.cells_and_names()):
        pytest.skip("the fused CPU kernels did not build here")
    with pytest.raises(UserError, match="fused"):
        export_model(model, os.path.join(trained("gpt"), "tokenizer.json"), str(tmp_path / "x"))


def test_text_prompt_from_the_folder_alone(exported, tmp_path):
    run, folder = exported("gpt")
    moved = shutil.copytree(folder, tmp_path / "elsewhere")  # no run directory needed
    model, tokenizer, _ = runs.load_model(run)
    ids = tokenizer.encode("ROMEO:")
    want = generate(model, np.array([ids, ids], np.int32), 8, temperature=0)[0, len(ids):]
    assert generate_exported(load_exported(str(moved)), "ROMEO:", 8) == tokenizer.decode(want)


def test_cli_writes_a_checked_self_contained_folder(trained, tmp_path):
    run, out = trained("llama"), tmp_path / "out"
    p = export_cli(run, "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "greedy tokens equal: yes" in p.stdout and "max |logit difference|" in p.stdout, p.stdout
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["block_size"] == 16 and manifest["batch"] == 1 and manifest["tokenizer"] == "tokenizer.json"
    for name, digest in manifest["sha256"].items():
        assert sha256(str(out / name)) == digest and f"wrote {out / name} (" in p.stdout
    # a damaged graph is refused, not run
    with open(out / "decode.mindir", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(UserError, match="SHA-256 differs"):
        load_exported(str(out))


@pytest.fixture
def not_a_language_model(trained, tmp_path):
    """A run whose config is a real seq2seq_dates config (with a checkpoint beside it): not a language model."""
    out = tmp_path / "dates"
    shutil.copytree(os.path.join(trained("gpt"), "ckpt"), out / "ckpt")
    cfg = load_config(os.path.join(ROOT, "configs/transformer_dates.yaml"), [f"out_dir={out}"])
    save_config(cfg, str(out / "config.yaml"))
    return str(out)


def test_cli_bad_inputs(trained, not_a_language_model, tmp_path):
    run = trained("gpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [([str(tmp_path / "nope")], "not found"), ([not_a_language_model], "seq2seq_dates run"),
             ([run, "--format", "tflite"], "invalid choice"), ([run, "--format", "air"], "only on Ascend"),
             ([run, "--format", "onnx"], "ONNX"), ([run, "--out", str(tmp_path / "taken")], "--force"),
             ([run, "--out", str(tmp_path / "file"), "--force"], "is a file"), ([run, "--batch", "0"], "--batch")]
    for args, fragment in cases:
        assert_clean_error(call("mindllm.export", *args), fragment)
    assert not os.listdir(tmp_path / "taken")  # refused before writing anything
    # and once through a real interpreter: MindSpore's own start-up must not add lines or a traceback
    p = export_cli(run, "--out", str(tmp_path / "taken"))
    assert_clean_error(p, "exists")
