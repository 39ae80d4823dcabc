"""fp16 mixed precision with dynamic loss scaling. train.py refuses it on CPU (slower there), but float16
kernels exist on CPU, so the code path GPU/Ascend runs is exercised here directly."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindllm import device
from mindllm.config import TrainConfig
from mindllm.models.gpt import GPT, GPTConfig, cross_entropy
from mindllm.models.layers import set_compute_dtype
from mindllm.optim import build_optimizer
from mindllm.steps import TrainSteps

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def losses(amp, scale=2.0 ** 16, steps=20):
    device.setup(device.context_for("CPU"), seed=0)
    model = GPT(CFG)
    scaler = None
    if amp:
        set_compute_dtype(model, ms.float16)
        scaler = ms.amp.DynamicLossScaler(scale_value=scale, scale_factor=2, scale_window=1000)
    opt = build_optimizer(model, TrainConfig(max_iters=steps, lr=3e-3, warmup_iters=0))

    def loss_fn(x, y):
        return cross_entropy(model(x), y)

    step = TrainSteps(loss_fn, opt, grad_clip=1.0, scaler=scaler).step
    rng = np.random.default_rng(0)
    x = rng.integers(0, CFG.vocab_size, size=(4, CFG.block_size)).astype(np.int32)
    y = np.roll(x, -1, axis=1)
    before = model.transformer.h[0].attn.c_attn.weight.asnumpy().copy()
    out = [float(step(Tensor(x), Tensor(y))[0].asnumpy()) for _ in range(steps)]
    return out, before, model, scaler


@pytest.mark.slow
def test_fp16_follows_fp32_loss_curve():
    fp32, _, _, _ = losses(amp=False)
    fp16, _, model, _ = losses(amp=True)
    assert fp16[-1] < fp16[0] - 1.0  # it learns
    np.testing.assert_allclose(fp16, fp32, atol=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.dtype == ms.float32  # master weights stay float32


@pytest.mark.slow
def test_overflowing_step_is_skipped_and_scale_lowered():
    _, before, model, scaler = losses(amp=True, scale=2.0 ** 60, steps=1)  # 2^60 overflows float16 gradients
    assert np.array_equal(model.transformer.h[0].attn.c_attn.weight.asnumpy(), before)
    assert float(scaler.scale_value.asnumpy()) == pytest.approx(2.0 ** 59)
