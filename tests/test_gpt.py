import math

import numpy as np
import pytest
from mindspore import Tensor

from mindllm import device
from mindllm.models.gpt import GPT, GPTConfig, cross_entropy

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True)
def cpu():
    device.setup(device.context_for("CPU"), seed=0)


def logits_of(model, ids):
    return model(Tensor(np.asarray(ids, dtype=np.int32))).asnumpy()


def test_causal_mask_future_tokens_never_change_earlier_logits():
    model = GPT(CFG)
    model.set_train(False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, size=(2, CFG.block_size))
    base = logits_of(model, ids)
    for t in (0, 5, CFG.block_size - 2):
        changed = ids.copy()
        changed[:, t + 1:] = rng.integers(0, CFG.vocab_size, size=changed[:, t + 1:].shape)
        out = logits_of(model, changed)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-3)  # the future does matter later


def test_initial_loss_is_about_ln_vocab():
    model = GPT(GPTConfig(vocab_size=84, block_size=32))
    model.set_train(False)
    rng = np.random.default_rng(1)
    x = Tensor(rng.integers(0, 84, size=(8, 32)).astype(np.int32))
    y = Tensor(rng.integers(0, 84, size=(8, 32)).astype(np.int32))
    loss = float(cross_entropy(model(x), y).asnumpy())
    assert abs(loss - math.log(84)) < 0.05, loss


def test_cross_entropy_matches_numpy_and_ignores_masked_targets():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    targets = np.array([[1, 2, -100], [6, -100, 0]], dtype=np.int32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = targets != -100
    expect = -np.mean([logp[b, t, targets[b, t]] for b in range(2) for t in range(3) if keep[b, t]])
    got = float(cross_entropy(Tensor(logits), Tensor(targets)).asnumpy())
    assert got == pytest.approx(expect, rel=1e-5)


def test_parameter_names_are_hugging_face_gpt2_keys():
    names = {p.name for p in GPT(CFG).get_parameters()}
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    for i in range(CFG.n_layer):
        for sub in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            expected |= {f"transformer.h.{i}.{sub}.weight", f"transformer.h.{i}.{sub}.bias"}
    assert names == expected


def test_same_logits_as_hugging_face_gpt2_with_copied_weights():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=CFG.vocab_size, n_positions=CFG.block_size, n_embd=CFG.n_embd, n_layer=CFG.n_layer,
        n_head=CFG.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = GPT(CFG)
    for name, p in model.parameters_and_names():  # same names, same (in, out) layout: a plain loop
        p.set_data(Tensor(state[name]))
    model.set_train(False)
    ids = np.random.default_rng(3).integers(0, CFG.vocab_size, size=(2, CFG.block_size))
    with torch.no_grad():
        expect = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits_of(model, ids), expect, atol=1e-4)


def test_same_init_for_same_seed():
    device.seed_everything(7)
    a = [p.asnumpy() for p in GPT(CFG).get_parameters()]
    device.seed_everything(7)
    b = [p.asnumpy() for p in GPT(CFG).get_parameters()]
    assert all((u == v).all() for u, v in zip(a, b))
