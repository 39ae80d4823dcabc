"""The fused CPU kernels (mindllm/kernels) against the plain MindSpore formulation they replace: a plain model and
`kernels.fuse` of a copy compared on forward values, gradients by MindSpore autograd of the plain ops, a training
run's loss curve, and decoding."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindllm import kernels
from mindllm.models import layers
from mindllm.models.gpt import GPT, GPTConfig

K = kernels.fused()
pytestmark = pytest.mark.skipif(K is None, reason="the fused kernels need g++ (they fall back to plain ops)")

rng = np.random.default_rng(0)


def arr(*shape, scale=1.0):
    return Tensor((rng.normal(size=shape) * scale).astype(np.float32))


def plain_and_fused(build):
    """The same cell twice with one set of weights: as built (plain ops), and a copy with the kernels fused in."""
    plain, fused = build(), build()
    for p, q in zip(plain.get_parameters(), fused.get_parameters()):
        q.set_data(p.data.copy())
    holder = nn.SequentialCell([fused])  # fuse() swaps sub-cells: a lone layer is fused inside a holder
    kernels.fuse(holder)
    return plain, holder[0]


def grads_of(fn, args, weights):
    """Output and gradients of sum(fn(*args) * a fixed random cotangent) w.r.t. the inputs and `weights`."""
    out = fn(*args)
    dy = Tensor(np.random.default_rng(1).normal(size=out.shape).astype(np.float32))

    def loss(*a):
        return (fn(*a) * dy).sum()

    g_inputs, g_weights = ms.grad(loss, tuple(range(len(args))), weights)(*args)
    g_inputs = (g_inputs,) if isinstance(g_inputs, Tensor) else tuple(g_inputs)
    return out.asnumpy(), [t.asnumpy() for t in g_inputs + tuple(g_weights)]


def assert_same(a, b, atol):
    out_a, grads_a = a
    out_b, grads_b = b
    np.testing.assert_allclose(out_a, out_b, atol=atol, rtol=0)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("shape,eps", [((3, 5, 16), 1e-5), ((7, 13), 1e-12), ((2, 4, 384), 1e-5)])
def test_layer_norm_equals_plain(shape, eps):
    plain, fused = plain_and_fused(lambda: layers.LayerNorm(shape[-1], eps=eps))
    plain.weight.set_data(arr(shape[-1]))  # a non-trivial gain and shift, so their gradients are tested too
    plain.bias.set_data(arr(shape[-1]))
    fused.weight.set_data(plain.weight.data.copy())
    fused.bias.set_data(plain.bias.data.copy())
    x = arr(*shape, scale=3.0)
    assert type(fused).__name__ == "FusedLayerNorm" and type(plain) is layers.LayerNorm
    assert_same(grads_of(plain, (x,), plain.trainable_params()),
                grads_of(fused, (x,), fused.trainable_params()), atol=2e-5)


def test_gelu_and_bias_equal_plain():
    plain, fused = plain_and_fused(lambda: layers.MLP(24))
    x = arr(4, 9, 24)
    assert type(fused).__name__ == "FusedMLP" and type(fused.c_fc).__name__ == "FusedLinear"
    assert_same(grads_of(plain, (x,), plain.trainable_params()),
                grads_of(fused, (x,), fused.trainable_params()), atol=2e-5)


@pytest.mark.parametrize("layer", ["BertIntermediate", "BertTransform"])
def test_exact_gelu_equals_plain(layer):
    """BERT's erf GELU as one kernel, inside the two BERT layers that use it; inputs out to +-9 reach erf's tails."""
    from mindllm.models import bert
    cfg = bert.BertConfig(vocab_size=10, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=40)
    plain, fused = plain_and_fused(lambda: getattr(bert, layer)(cfg))
    x = arr(4, 9, 24, scale=3.0)
    assert type(fused).__name__ == "Fused" + layer and type(fused.dense).__name__ == "FusedLinear"
    # BertTransform's LayerNorm (eps 1e-12) gives weight gradients up to ~70 here: float32 sums differ by ~5e-5
    assert_same(grads_of(plain, (x,), plain.trainable_params()),
                grads_of(fused, (x,), fused.trainable_params()), atol=1e-4)
    g = np.linspace(-9, 9, 721, dtype=np.float32)
    want, (dwant,) = grads_of(bert.gelu_exact, (Tensor(g),), [])
    got, (dgot,) = grads_of(K.gelu_exact, (Tensor(g),), [])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(dgot, dwant, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mask_shape", [(12, 1, 7), (1, 5, 7), (5, 7), (12, 5, 7)])
def test_masked_softmax_equals_plain(mask_shape):
    """Scale, additive mask and softmax in one kernel, for every mask the course passes: BERT's per-example padding
    (BH, 1, Tk), a shared causal (1, Tq, Tk) or (Tq, Tk), a per-example full (BH, Tq, Tk); cross-attention sizes."""
    plain, fused = plain_and_fused(lambda: layers.Attention(8))
    assert type(fused).__name__ == "MaskedSoftmaxAttention"
    q, k, v = arr(12, 5, 8, scale=2.0), arr(12, 7, 8, scale=2.0), arr(12, 7, 8)
    mask = np.where(np.random.default_rng(2).random(mask_shape) < 0.3, layers.NEG_INF, 0.0).astype(np.float32)
    mask[..., 0] = 0.0  # every query sees a key
    mask = Tensor(mask)
    assert_same(grads_of(lambda *a: plain(*a, mask), (q, k, v), []),
                grads_of(lambda *a: fused(*a, mask), (q, k, v), []), atol=1e-5)


def test_causal_softmax_equals_masked_softmax():
    plain, fused = plain_and_fused(lambda: layers.CausalSelfAttention(32, 4, 16))
    x = arr(3, 11, 32)  # T=11 < block 16: the mask is sliced
    run = lambda cell: (lambda a: cell(a)[0])  # noqa: E731
    assert_same(grads_of(run(plain), (x,), plain.trainable_params()),
                grads_of(run(fused), (x,), fused.trainable_params()), atol=1e-5)


@pytest.mark.parametrize("T,pos", [(1, 0), (1, 9), (3, 5), (2, 14)])
def test_cached_attention_equals_plain_cache(T, pos):
    plain, fused = plain_and_fused(lambda: layers.CausalSelfAttention(32, 4, 16))
    x = arr(2, T, 32)
    cache = (arr(2 * 4, 16, 8), arr(2 * 4, 16, 8))  # filled with junk: the mask must hide positions > pos + t
    p = Tensor(pos, ms.int32)
    (y0, (k0, v0)), (y1, (k1, v1)) = plain(x, cache, p), fused(x, cache, p)
    np.testing.assert_allclose(y0.asnumpy(), y1.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(k0.asnumpy(), k1.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(v0.asnumpy(), v1.asnumpy(), atol=1e-6)


@pytest.mark.parametrize("max_norm", [1.0, 1e6, 0.0])  # clips; below the limit (scale 1); measure only
def test_clip_by_global_norm_equals_plain_and_numpy(max_norm):
    """The one-kernel clip gives the plain ops' norm and clipped gradients, both compiled and not; numpy's norm of
    the concatenated gradients is the oracle for both."""
    from mindllm.steps import clip_by_global_norm

    grads = tuple(arr(*shape, scale=0.3) for shape in [(64, 192), (192,), (7,), (3, 5, 11), (1,)])
    want_norm = np.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads))
    fused = kernels.clip_by_global_norm()
    assert fused is not clip_by_global_norm  # the kernels built here

    def run(clip):
        return clip(grads, max_norm)

    for fn in (run, ms.jit(run)):
        (norm, got), (plain_norm, want) = fn(fused), fn(clip_by_global_norm)
        assert norm.shape == plain_norm.shape == ()
        np.testing.assert_allclose(float(norm.asnumpy()), want_norm, rtol=1e-6)
        np.testing.assert_allclose(float(plain_norm.asnumpy()), want_norm, rtol=1e-5)
        scale = min(1.0, max_norm / (want_norm + 1e-6)) if max_norm > 0 else 1.0
        for g, a, b in zip(grads, got, want):
            assert a.shape == g.shape
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(a.asnumpy(), g.asnumpy() * scale, rtol=1e-5, atol=1e-7)
    assert max_norm != 1.0 or want_norm > 1.0  # the first case really clips


def test_training_loss_curve_equals_plain():
    """40 AdamW steps of a small GPT on real Shakespeare characters, compiled: the fast path's loss curve is the
    plain one's (float32 summation order differs, nothing else)."""
    from mindllm.config import TrainConfig
    from mindllm.data import load_corpus
    from mindllm.data.tokenizer import CharTokenizer
    from mindllm.optim import build_optimizer
    from mindllm.steps import TrainSteps, clip_by_global_norm

    text = load_corpus("shakespeare")[:50_000]
    tok = CharTokenizer.train(text)
    ids = np.array(tok.encode(text), dtype=np.int32)
    starts = np.random.default_rng(0).integers(0, len(ids) - 33, size=(40, 8))
    batches = [(ids[s[:, None] + np.arange(32)], ids[s[:, None] + np.arange(1, 33)]) for s in starts]
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
    plain, fused = plain_and_fused(lambda: GPT(cfg))
    curves = []
    for model in (plain, fused):
        model.set_train(True)

        def loss_fn(x, y):
            return layers.cross_entropy(model(x), y)

        clip = kernels.clip_by_global_norm() if model is fused else clip_by_global_norm
        step = TrainSteps(loss_fn, build_optimizer(model, TrainConfig(max_iters=40, warmup_iters=5)),
                          grad_clip=1.0, clip=clip).step
        curves.append([float(step(Tensor(x), Tensor(y))[0].asnumpy()) for x, y in batches])
    assert curves[0][-1] < curves[0][0] - 0.5  # it learned something
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-4)
    for p, q in zip(plain.get_parameters(), fused.get_parameters()):
        np.testing.assert_allclose(q.asnumpy(), p.asnumpy(), atol=2e-4)


def test_bert_training_curve_equals_plain():
    """30 AdamW steps of a small BERT classifier on padded batches of Shakespeare lines (is the speaker's line a
    question?), compiled: with the exact-GELU and masked-softmax kernels the curve and weights are the plain ones."""
    from mindllm.config import TrainConfig
    from mindllm.data import load_corpus
    from mindllm.data.tokenizer import CharTokenizer
    from mindllm.models.bert import BertConfig, BertForSequenceClassification
    from mindllm.optim import build_optimizer
    from mindllm.steps import TrainSteps, clip_by_global_norm

    lines = [t.strip() for t in load_corpus("shakespeare")[:200_000].split("\n") if 8 <= len(t.strip()) <= 31]
    tok = CharTokenizer.train("".join(lines))
    pick = np.random.default_rng(0).choice(len(lines), size=(30, 16))
    batches = []
    for rows in pick:
        ids, mask = np.zeros((16, 32), np.int32), np.zeros((16, 32), np.int32)
        for i, r in enumerate(rows):
            enc = [tok.vocab_size] + tok.encode(lines[r])  # a [CLS] id after the characters' ids
            ids[i, :len(enc)], mask[i, :len(enc)] = enc, 1
        batches.append((ids, mask, np.array([lines[r].endswith("?") for r in rows], np.int32)))
    cfg = BertConfig(vocab_size=tok.vocab_size + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     max_position_embeddings=32, num_labels=2)
    plain, fused = plain_and_fused(lambda: BertForSequenceClassification(cfg))
    assert {"MaskedSoftmaxAttention", "FusedBertIntermediate"} <= {type(c).__name__ for _, c in fused.cells_and_names()}
    curves = []
    for model in (plain, fused):
        model.set_train(True)

        def loss_fn(x, m, y):
            return layers.cross_entropy(model(x, None, m), y)

        clip = kernels.clip_by_global_norm() if model is fused else clip_by_global_norm
        step = TrainSteps(loss_fn, build_optimizer(model, TrainConfig(max_iters=30, warmup_iters=3, lr=3e-3)),
                          grad_clip=1.0, clip=clip).step
        curves.append([float(step(*(Tensor(a) for a in b))[0].asnumpy()) for b in batches])
    assert min(curves[0][-5:]) < curves[0][0] - 0.1  # it learned something
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-4)
    for p, q in zip(plain.get_parameters(), fused.get_parameters()):
        np.testing.assert_allclose(q.asnumpy(), p.asnumpy(), atol=2e-4)


def plain_generate(monkeypatch, *args, **kwargs):
    """generate() with MINDLLM_KERNELS=plain: it fuses the model it is given, except then."""
    from mindllm.sample import generate

    with monkeypatch.context() as m:
        m.setenv("MINDLLM_KERNELS", "plain")
        return generate(*args, **kwargs)


def test_decoding_with_kernels_equals_plain(monkeypatch):
    from mindllm.sample import generate

    cfg = GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32)
    plain, fused = plain_and_fused(lambda: GPT(cfg))
    prompt = np.random.default_rng(2).integers(0, 50, (2, 5)).astype(np.int32)
    # 30 > 24 - 5: the window slides and is re-encoded
    want = plain_generate(monkeypatch, plain, prompt, 30, temperature=0.0)
    assert (generate(fused, prompt, 30, temperature=0.0) == want).all()
    assert fused.transformer.h[0].decode_kernel and type(plain.transformer.h[0]).__name__ == "Block"
    assert (generate(fused, prompt, 30, temperature=0.0, kv_cache=False) == want).all()


def test_one_kernel_decoding_step_equals_the_block_graph_and_rereads_the_weights(monkeypatch):
    """A whole GPT's decoding step in one kernel (kernels.decode_step) against the per-block graph it replaces:
    same logits and caches; and a generation after the weights change decodes with the new weights."""
    from mindllm.decoding import decoder_for
    from mindllm.sample import generate

    cfg = GPTConfig(vocab_size=50, block_size=24, n_layer=3, n_head=2, n_embd=32)
    plain, fused = plain_and_fused(lambda: GPT(cfg))
    dec = decoder_for(fused, 2, True)
    assert dec.kernel is not None and decoder_for(fused, 2, False).kernel is None
    rng = np.random.default_rng(5)
    logits, presents = dec.window(Tensor(rng.integers(0, 50, (2, 24)).astype(np.int32)))
    tok, pos = Tensor(rng.integers(0, 50, (2, 1)).astype(np.int32)), 9
    want, want_cache = dec.step(tok, ms.mutable(presents), ms.mutable(Tensor(pos, ms.int32)))
    dec.start()
    got, got_cache = dec.kernel.step(tok, dec.kernel.cache(presents), Tensor(pos, ms.int32))
    np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(got_cache.asnumpy(), dec.kernel.cache(want_cache).asnumpy(), atol=1e-6)

    prompt = rng.integers(0, 50, (1, 4)).astype(np.int32)
    generate(fused, prompt, 5, temperature=0.0)  # packs the weights as they are now
    before = generate(fused, prompt, 12, temperature=0.0)
    for model in (plain, fused):  # then "training" changes them, in place (as optimizers and load_checkpoint do)
        for name, p in model.parameters_and_names():
            if name.startswith("transformer.h.1.mlp"):
                ops.assign(p, Tensor(np.random.default_rng(6).normal(0, 0.5, p.shape).astype(np.float32)))
    assert not (generate(fused, prompt, 12, temperature=0.0) == before).all()
    assert (generate(fused, prompt, 12, temperature=0.0) ==
            plain_generate(monkeypatch, plain, prompt, 12, temperature=0.0)).all()


@pytest.mark.slow
def test_lora_models_decode_through_their_adapters(monkeypatch):
    """The fused decoding block reads the base weights only, so a block with LoRA adapters must take the plain path:
    with non-zero adapters, the kernels' tokens equal the plain ops' and differ from the base model's."""
    from mindllm.peft import apply_lora
    from mindllm.sample import generate

    cfg = GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32)
    plain, fused = plain_and_fused(lambda: GPT(cfg))
    prompt = np.random.default_rng(3).integers(0, 50, (1, 4)).astype(np.int32)
    base = generate(fused, prompt, 12, temperature=0.0)
    for model in (plain, fused):
        apply_lora(model, r=4, targets=("c_attn", "c_fc"))
        for name, p in model.parameters_and_names():
            if "lora_B" in name:
                p.set_data(Tensor(np.random.default_rng(4).normal(0, 0.5, p.shape).astype(np.float32)))
    kernels.fuse(fused)  # generate() does this too: the one-kernel decoding step is off for adapted blocks
    assert not fused.transformer.h[0].decode_kernel
    tuned = generate(fused, prompt, 12, temperature=0.0)
    assert (tuned == plain_generate(monkeypatch, plain, prompt, 12, temperature=0.0)).all()
    assert all(type(c).__name__ != "FusedBlock" for _, c in plain.cells_and_names())
    assert (tuned == generate(fused, prompt, 12, temperature=0.0, kv_cache=False)).all()
    assert not (tuned == base).all()


def test_without_a_compiler_the_plain_ops_run(tmp_path):
    """No g++ on PATH: one warning, library() is None, and a model still builds and runs on the plain ops."""
    code = ("from mindllm import kernels; import mindspore as ms; ms.set_device('CPU'); "
            "from mindllm.models.gpt import GPT, GPTConfig; import numpy as np; "
            "m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)); "
            "print(kernels.library(), kernels.fused(), type(kernels.fuse(m).transformer.ln_f).__name__, "
            "m(ms.Tensor(np.zeros((1, 8), np.int32))).shape)")
    env = {**os.environ, "PATH": str(tmp_path), "MINDLLM_CACHE": str(tmp_path / "cache"), "GLOG_v": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None", "LayerNorm", "(1,", "8,", "10)"]
    assert "fused CPU kernels did not build" in out.stderr


def test_bad_kernels_setting_is_one_line(monkeypatch):
    from mindllm.errors import UserError

    monkeypatch.setenv("MINDLLM_KERNELS", "fast")
    with pytest.raises(UserError, match="MINDLLM_KERNELS='fast': use auto"):
        kernels.fused()
