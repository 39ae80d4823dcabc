"""Weight quantization against numbers worked by hand and the bounds the schemes promise."""
import os

import numpy as np
import pytest

from mindllm.quant.schemes import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ---------------------------------------------------------------- the quantized layer, runs and the command line

SPECS = [{"bits": 8, "scheme": "per_tensor", "symmetric": True}, {"bits": 8, "scheme": "per_channel", "symmetric": True},
         {"bits": 8, "scheme": "per_channel", "symmetric": False},
         {"bits": 4, "scheme": "group", "group_size": 16, "symmetric": True},
         {"bits": 4, "scheme": "group", "group_size": 16, "symmetric": False}]


@pytest.mark.parametrize("out_in", [False, True], ids=["in_out", "out_in"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['bits']}{s['scheme']}{'' if s['symmetric'] else '_zp'}")
def test_quant_linear_equals_numpy_dequantized_matmul(spec, out_in):
    """The MindSpore layer (INT4 unpacked from nibbles in the graph) against x @ dequantize(quantize(w)) + b in numpy,
    for GPT-2's (in, out) and PyTorch's (out, in) weight layouts."""
    from mindspore import Tensor

    from mindllm.models.layers import Linear
    from mindllm.quant.layers import QuantLinear
    from mindllm.quant.schemes import GRANULARITIES  # noqa: F401 (the schemes the layer maps onto)

    rng = np.random.default_rng(3)
    base = Linear(48, 24, bias=True, out_in=out_in)
    w = (rng.normal(size=(48, 24)) * rng.uniform(0.1, 2, size=24)).astype(np.float32)  # (in, out)
    b = rng.normal(size=24).astype(np.float32)
    base.weight.set_data(Tensor(w.T.copy() if out_in else w))
    base.bias.set_data(Tensor(b))
    q = QuantLinear(base, spec)
    q.set_from(w, spec)
    gran = {"per_tensor": "tensor", "per_channel": "channel", "group": "group"}[spec["scheme"]]
    w_hat = dequantize(quantize(w, bits=spec["bits"], granularity=gran, symmetric=spec["symmetric"],
                                group_size=spec.get("group_size", 128)))
    x = rng.normal(size=(2, 5, 48)).astype(np.float32)
    np.testing.assert_allclose(q(Tensor(x)).asnumpy(), x @ w_hat + b, rtol=1e-5, atol=1e-5)
    assert q.weight.dtype == (ms_uint8() if spec["bits"] == 4 else ms_int8())
    assert q.weight.shape == ((24, 24) if spec["bits"] == 4 else (48, 24))  # two int4 codes per byte


def ms_int8():
    import mindspore as ms
    return ms.int8


def ms_uint8():
    import mindspore as ms
    return ms.uint8


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, small_corpus):
    from conftest import train_tiny

    return train_tiny(small_corpus, tmp_path_factory.mktemp("quant") / "gpt", "train.max_iters=60", "train.lr=0.01")


def quantize_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mindllm.quant", *args], capture_output=True, text=True)


@pytest.mark.parametrize("spec_args", [["--bits", "8", "--scheme", "per_channel"],
                                       ["--bits", "4", "--scheme", "group", "--group-size", "16"]])
def test_quantized_run_is_the_float_model_with_dequantized_weights(float_run, tmp_path, spec_args):
    """The oracle: the float model with each Linear's weight replaced by numpy's dequantize(quantize(w)). The
    quantized run loaded from disk must give its logits; the checkpoint must shrink; the loss barely move."""
    from mindspore import Tensor

    from mindllm import runs
    from mindllm.quant.measure import lm_loss

    p = quantize_cli(float_run, *spec_args, "--out", str(tmp_path / "q"))
    assert p.returncode == 0, p.stderr
    assert "smaller" in p.stdout
    qmodel, _, _ = runs.load_model(str(tmp_path / "q"))
    ref, _, _ = runs.load_model(float_run)
    bits, saved = int(spec_args[1]), 0
    for name, cell in ref.cells_and_names():
        if type(cell).__name__ in ("Linear", "FusedLinear"):
            t = quantize(cell.weight.asnumpy(), bits=bits, granularity="channel" if bits == 8 else "group",
                         group_size=16)
            cell.weight.set_data(Tensor(dequantize(t)))
            saved += cell.weight.size * 4 - (t.q.size * bits // 8 + 2 * t.scale.size * 4)  # codes, scale, zero
    x = np.random.default_rng(0).integers(0, ref.config.vocab_size, (2, 16)).astype(np.int32)
    np.testing.assert_allclose(qmodel(Tensor(x)).asnumpy(), ref(Tensor(x)).asnumpy(), rtol=1e-4, atol=1e-4)
    size = lambda run: os.path.getsize(os.path.join(runs.locate(run)[1], "model.safetensors"))  # noqa: E731
    # the file shrinks by what the Linears save, give or take safetensors' JSON header (embeddings stay float)
    assert abs(size(float_run) - size(str(tmp_path / "q")) - saved) < 2000, (size(float_run), saved)
    task, _ = runs.load_trained(float_run)
    floss, qloss = lm_loss(runs.load_model(float_run)[0], task.eval_batches["val"]), lm_loss(qmodel,
                                                                                             task.eval_batches["val"])
    assert abs(qloss - floss) < (0.02 if bits == 8 else 0.15), (floss, qloss)


def test_sample_reads_a_quantized_run(float_run, tmp_path):
    import subprocess
    import sys

    assert quantize_cli(float_run, "--out", str(tmp_path / "q8")).returncode == 0
    p = subprocess.run([sys.executable, "-m", "mindllm.sample", "--ckpt", str(tmp_path / "q8"), "--prompt", "KING",
                        "--max-new-tokens", "20", "--temperature", "0"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("KING") and len(p.stdout.strip()) > len("KING")


def test_bad_input_is_one_line_and_exit_2(float_run, tmp_path, small_corpus):
    q8 = str(tmp_path / "q8")
    assert quantize_cli(float_run, "--out", q8).returncode == 0
    cases = {"already quantized": [q8, "--out", str(tmp_path / "x")],
             "only 8 (int8) and 4": [float_run, "--bits", "3", "--out", str(tmp_path / "x")],
             "needs --scheme group": [float_run, "--bits", "4", "--out", str(tmp_path / "x")],
             "choose one of": [float_run, "--scheme", "fancy", "--out", str(tmp_path / "x")],
             "does not divide": [float_run, "--bits", "4", "--scheme", "group", "--group-size", "6",
                                 "--out", str(tmp_path / "x")],
             "exists": [float_run, "--out", q8],
             "not found": [str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
             "the run itself": [float_run, "--out", float_run, "--force"]}
    for expect, args in cases.items():
        p = quantize_cli(*args)
        assert p.returncode == 2 and expect in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not os.path.exists(tmp_path / "x")
    # training refuses to start from, or resume into, int8 weights
    import subprocess
    import sys

    from conftest import TINY

    for args in ([os.path.join(ROOT, "configs/instruct_lora_gpt_bpe.yaml"), f"instruct.init={q8}",
                  f"out_dir={tmp_path / 'x'}"], [*TINY, f"data.corpus={small_corpus}", f"out_dir={q8}", "resume=true"]):
        p = subprocess.run([sys.executable, "-m", "mindllm.train", *args], capture_output=True, text=True)
        assert p.returncode == 2 and "quantized run" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['bits']}{s['scheme']}{'' if s['symmetric'] else '_zp'}")
def test_fused_quant_kernel_equals_the_plain_layer(spec):
    """kernels' QuantMatmul (the codes read directly, no float weight built) against QuantLinear's dequantize-then-
    matmul, on a batch of rows (prefill) and on one row (a decoding step)."""
    from mindspore import Tensor

    from mindllm import kernels
    from mindllm.kernels.fused import FusedQuantLinear
    from mindllm.models.layers import Linear
    from mindllm.quant.layers import QuantLinear

    k = kernels.fused()
    if k is None:
        pytest.skip("the fused CPU kernels did not build here")
    rng = np.random.default_rng(5)
    w = (rng.normal(size=(64, 40)) * rng.uniform(0.1, 2, size=40) + 0.3).astype(np.float32)
    base = Linear(64, 40, bias=True)
    base.bias.set_data(Tensor(rng.normal(size=40).astype(np.float32)))
    plain = QuantLinear(base, spec)
    plain.set_from(w, spec)
    fused = FusedQuantLinear(plain, k)
    for shape in [(3, 5, 64), (1, 1, 64), (4, 40, 64)]:  # the kernel (<= 16 rows), and the matmul past it
        x = Tensor(rng.normal(size=shape).astype(np.float32))
        np.testing.assert_allclose(fused(x).asnumpy(), plain(x).asnumpy(), rtol=1e-4, atol=1e-4)


def test_a_quantized_run_exports_to_mindir(float_run, tmp_path):
    """The exported graphs carry the int8 codes and dequantize inside: the same logits as the quantized model, and
    files smaller than the float export's."""
    from mindspore import Tensor

    from mindllm import runs
    from mindllm.export import PREFILL, export_model, load_exported

    assert quantize_cli(float_run, "--out", str(tmp_path / "q8")).returncode == 0
    sizes = {}
    for name in ("float", "q8"):
        run = float_run if name == "float" else str(tmp_path / "q8")
        model, _, _ = runs.load_model(run)
        export_model(model, os.path.join(runs.locate(run)[0], runs.TOKENIZER), str(tmp_path / f"exp_{name}"))
        sizes[name] = os.path.getsize(tmp_path / f"exp_{name}" / PREFILL)
    exported = load_exported(str(tmp_path / "exp_q8"))
    x = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, model.config.block_size)).astype(np.int32)
    np.testing.assert_allclose(exported.window(x)[0], model(Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-5)
    codes = sum(c.weight.size for _, c in model.cells_and_names() if type(c).__name__ == "QuantLinear")
    assert sizes["float"] - sizes["q8"] > codes, (sizes, codes)  # over a byte saved per Linear weight
