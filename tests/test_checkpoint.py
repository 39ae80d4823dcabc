import os

import numpy as np
import pytest

from mindspore import Tensor

from mindllm import device
from mindllm.checkpoint import latest_checkpoint, load_arrays, read_checkpoint, save_checkpoint
from mindllm.errors import UserError
from mindllm.models.gpt import GPT, GPTConfig
from mindllm.optim import build_optimizer, lr_at
from mindllm.config import TrainConfig

CFG = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def model_opt():
    device.setup(device.context_for("CPU"), seed=0)
    model = GPT(CFG)
    return model, build_optimizer(model, TrainConfig(max_iters=10))


def test_save_load_round_trip_and_pruning(tmp_path, model_opt):
    model, opt = model_opt
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), step, model, opt, {"data_rng": {"x": step}}, keep=2)
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("step_")) == ["step_0000002", "step_0000003"]
    path = latest_checkpoint(str(tmp_path))
    assert path.endswith("step_0000003")
    w, o, state = read_checkpoint(path)
    assert state["step"] == 3 and state["data_rng"] == {"x": 3}
    assert set(w) == {p.name for p in model.get_parameters()}
    assert "global_step" in o and any(k.startswith("adam_m.") for k in o) and not set(o) & set(w)
    other = GPT(CFG)
    load_arrays(other, w, path)
    for (n, a), (_, b) in zip(model.parameters_and_names(), other.parameters_and_names()):
        assert np.array_equal(a.asnumpy(), b.asnumpy()), n


def test_interrupted_save_keeps_previous_latest(tmp_path, model_opt):
    model, opt = model_opt
    save_checkpoint(str(tmp_path), 5, model, opt, {})
    os.makedirs(tmp_path / ".tmp_step_0000006")  # a save that died half way
    assert latest_checkpoint(str(tmp_path)).endswith("step_0000005")
    read_checkpoint(latest_checkpoint(str(tmp_path)))


def test_corrupt_checkpoint_is_detected(tmp_path, model_opt):
    model, opt = model_opt
    path = save_checkpoint(str(tmp_path), 1, model, opt, {})
    f = os.path.join(path, "model.safetensors")
    data = bytearray(open(f, "rb").read())
    data[-3] ^= 0xFF  # one flipped byte inside a weight
    open(f, "wb").write(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        read_checkpoint(path)
    os.remove(os.path.join(path, "state.json"))
    with pytest.raises(UserError, match="corrupt or incomplete"):
        read_checkpoint(path)


def test_shape_mismatch_is_a_clear_error(tmp_path, model_opt):
    model, opt = model_opt
    w, _, _ = read_checkpoint(save_checkpoint(str(tmp_path), 1, model, opt, {}))
    bigger = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(UserError, match="has shape"):
        load_arrays(bigger, w, "ckpt")


def test_lr_schedule_warmup_cosine_floor():
    kw = dict(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    assert lr_at(0, **kw) == pytest.approx(1 / 11) and lr_at(9, **kw) == pytest.approx(10 / 11)
    assert lr_at(10, **kw) == pytest.approx(1.0) and lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)


def test_weight_decay_groups():
    model = GPT(CFG)
    opt = build_optimizer(model, TrainConfig(max_iters=2, weight_decay=0.1))
    wd = {p.name: float(w.asnumpy()) for p, w in zip(opt.parameters, opt.weight_decay)}
    assert wd["transformer.h.0.attn.c_attn.weight"] == pytest.approx(0.1)
    assert wd["transformer.wte.weight"] == pytest.approx(0.1)
    assert wd["transformer.h.0.attn.c_attn.bias"] == 0.0 and wd["transformer.ln_f.weight"] == 0.0


def test_loaded_weights_reach_a_decoder_compiled_before():
    """load_arrays writes in place: a decoder compiled over the old weights decodes with the new ones (set_data would
    rebind the Parameter and leave the compiled graph reading the old tensor; a resumed run evaluated with the
    weights it started from)."""
    from mindllm.checkpoint import named_arrays
    from mindllm.decoding import generate

    device.seed_everything(0)
    a, b = GPT(CFG), GPT(CFG)
    rng = np.random.default_rng(0)
    for p in b.get_parameters():  # far from the near-uniform initialisation, so the two decode differently
        p.set_data(Tensor(rng.normal(0, 0.5, p.shape).astype(np.float32)))
    prompt = np.array([[1, 2, 3]], np.int32)
    want = generate(b, prompt, 8, temperature=1.0, seed=0)
    before = generate(a, prompt, 8, temperature=1.0, seed=0)  # compiles a's decoder over a's own weights
    assert not np.array_equal(before, want)  # the two models decode differently: the test can tell them apart
    load_arrays(a, named_arrays(b), "b")
    np.testing.assert_array_equal(generate(a, prompt, 8, temperature=1.0, seed=0), want)
