"""Weight quantization against numbers worked by hand and the bounds the schemes promise."""
import numpy as np
import pytest

from mindllm.quant.schemes import dequantize, quantize


def test_absmax_per_tensor_by_hand():
    """max|w| = 2.54 -> scale 0.02; 1.0 / 0.02 = 50, -2.54 -> -127, 0.011 -> round(0.55) = 1."""
    w = np.array([[1.0, -2.54], [0.011, 0.0]], np.float32)
    t = quantize(w, bits=8, granularity="tensor")
    np.testing.assert_allclose(t.scale.ravel(), [0.02], rtol=1e-6)
    np.testing.assert_array_equal(t.q, [[50, -127], [1, 0]])
    np.testing.assert_allclose(dequantize(t), [[1.0, -2.54], [0.02, 0.0]], atol=1e-6)


def test_zero_point_by_hand():
    """w in [0, 2.55]: scale 2.55 / 255 = 0.01, zero = -128 - round(0 / 0.01) = -128, 1.0 -> 100 - 128 = -28."""
    w = np.array([[0.0, 1.0, 2.55]], np.float32)
    t = quantize(w, bits=8, granularity="tensor", symmetric=False)
    np.testing.assert_allclose(t.scale.ravel(), [0.01], rtol=1e-6)
    np.testing.assert_array_equal(t.q, [[-128, -28, 127]])
    np.testing.assert_allclose(dequantize(t), w, atol=1e-6)


@pytest.mark.parametrize("bits,granularity,symmetric", [(8, "tensor", True), (8, "channel", True),
                                                       (8, "channel", False), (4, "group", True), (4, "group", False)])
def test_error_is_at_most_half_a_step(bits, granularity, symmetric):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(256, 96)) * rng.uniform(0.1, 3, size=96)).astype(np.float32)  # channels of unequal size
    t = quantize(w, bits=bits, granularity=granularity, symmetric=symmetric, group_size=64)
    err = np.abs(dequantize(t) - w)
    step = np.broadcast_to(t.scale, (256 // 64, 64, 96)).reshape(256, 96) if granularity == "group" else t.scale
    assert (err <= step / 2 + 1e-6).all()
    assert t.q.min() >= -2 ** (bits - 1) and t.q.max() <= 2 ** (bits - 1) - 1


def test_finer_granularity_lowers_the_error():
    """One large output channel sets a per-tensor scale far too coarse for the others; per channel does not care."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(128, 64)).astype(np.float32)
    w[:, 0] *= 50
    errors = {g: np.abs(dequantize(quantize(w, granularity=g, group_size=32)) - w)[:, 1:].mean()
              for g in ("tensor", "channel", "group")}
    assert errors["channel"] < errors["tensor"] / 10 and errors["group"] <= errors["channel"]


def test_storage_and_bad_arguments():
    w = np.ones((128, 64), np.float32)
    assert quantize(w, bits=8).nbytes() == 128 * 64 + 64 * 4
    assert quantize(w, bits=4, granularity="group", group_size=32).nbytes() == 128 * 64 // 2 + 4 * 64 * 4
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize(w, bits=3)
    with pytest.raises(ValueError, match="divides by 48"):
        quantize(w, bits=4, granularity="group", group_size=48)


def test_llm_int8_by_hand():
    """x = [[1, 2], [-4, 0.5]], w = [[1], [2]] (no outliers): rows of x scale 2/127 and 4/127, w's column 2/127;
    codes x [[64, 127], [-127, 16]], w [[64], [127]]; row 0: (64*64 + 127*127) * (2/127) * (2/127) = 5.0350."""
    from mindllm.quant.llm_int8 import int8_matmul

    y, outliers = int8_matmul([[1.0, 2.0], [-4.0, 0.5]], [[1.0], [2.0]])
    assert outliers.size == 0
    np.testing.assert_allclose(y[0, 0], (64 * 64 + 127 * 127) * (2 / 127) ** 2, rtol=1e-6)
    np.testing.assert_allclose(y[1, 0], (-127 * 64 + 16 * 127) * (4 / 127) * (2 / 127), rtol=1e-6)


def test_outlier_dimensions_break_absmax_and_the_decomposition_fixes_it():
    from mindllm.quant.llm_int8 import int8_matmul

    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(32, 256)).astype(np.float32), rng.normal(size=(256, 64)).astype(np.float32) * 0.05
    x[:, [7, 100]] *= 60                                   # two outlier features, as in large models
    exact = x @ w
    plain, _ = int8_matmul(x, w, threshold=np.inf)        # every dimension in int8
    mixed, outliers = int8_matmul(x, w, threshold=6.0)
    assert set(outliers.tolist()) == {7, 100}
    err_plain, err_mixed = np.abs(plain - exact).mean(), np.abs(mixed - exact).mean()
    assert err_mixed < err_plain / 5, (err_plain, err_mixed)
    assert err_mixed < 0.01 * np.abs(exact).mean()
