"""The memory estimator against numbers computed by hand from the papers' formulas, and the parameter count
against the real models."""
import numpy as np
import pytest

from mindllm.memory import Layout, estimate, gpt_params, layer_activation_bytes

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, block_size=1024)
SBH = 1024 * 8 * 768  # s x b x h for GPT-2 small, 8 rows


def test_gpt2_small_has_its_published_parameter_count():
    assert gpt_params(12, 768, 50257, 1024) == 124_439_808


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_equals_the_model(bias):
    from mindllm.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=3, n_head=2, n_embd=40, bias=bias))
    real = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    assert gpt_params(3, 40, 97, 24, bias=bias) == real


def test_sixteen_bytes_per_parameter_on_one_device():
    for precision in ("fp32", "mixed"):
        e = estimate(**GPT2_SMALL, global_batch=8, precision=precision)
        assert e["params"] + e["grads"] + e["optimizer"] == 16 * 124_439_808


def test_activations_match_korthikanti_eq1_and_eq2():
    # eq. 1, no tensor parallelism, 16-bit, with dropout: sbh(34 + 5as/h) bytes per layer
    assert layer_activation_bytes(1024, 8, 768, 12, 3072, t=1, elem=2, dropout=True) == \
        34 * SBH + 5 * 12 * 1024 * 1024 * 8 == 717_225_984
    # eq. 2, t = 4: sbh(10 + 24/t) + 5as^2b/t
    assert layer_activation_bytes(1024, 8, 768, 12, 3072, t=4, elem=2, dropout=True) == \
        16 * SBH + 5 * 12 * 1024 * 1024 * 8 / 4 == 226_492_416
    # without dropout no masks and no second copy of the attention matrix; float32 doubles every element
    assert layer_activation_bytes(1024, 8, 768, 12, 3072, t=1, elem=4) == \
        4 * (16 * SBH + 12 * 1024 * 1024 * 8)


def test_full_recompute_keeps_each_layers_input():
    e = estimate(**GPT2_SMALL, global_batch=8, precision="mixed", layout=Layout(recompute=True), dropout=True)
    logits = 1024 * 8 * 50257 * 4  # float32 logits for the loss
    assert e["activations"] == 12 * 2 * SBH + logits == 1_797_816_320


def test_zero_stages_divide_what_they_shard():
    P = 124_439_808
    base = dict(**GPT2_SMALL, global_batch=64, precision="mixed")
    z1 = estimate(**base, layout=Layout(data_parallel=8, zero=1))
    assert (z1["params"], z1["grads"], z1["optimizer"]) == (2 * P, 2 * P, 12 * P / 8)
    z3 = estimate(**base, layout=Layout(data_parallel=8, zero=3))
    assert (z3["params"], z3["grads"], z3["optimizer"]) == (2 * P / 8, 2 * P / 8, 12 * P / 8)
    assert z1["micro_batch"] == 8


def test_tensor_pipeline_data_layout_by_hand():
    """TP 2 x PP 2 x DP 2, ZeRO-1, recompute, 4 micro-batches, global batch 32 (the 8-card Ascend config)."""
    e = estimate(**GPT2_SMALL, global_batch=32, precision="mixed", dropout=True,
                 layout=Layout(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=4, zero=1,
                               recompute=True))
    # each stage: 6 layers of 7,083,264 split parameters / 2 + 4,608 kept; the token embedding / 2 (vocab-parallel)
    # first stage: + positions; 2 micro-batches in flight (1F1B), each 6 layer inputs of 1024 x 4 x 768 x 2 bytes
    first_n = 6 * (7_083_264 / 2 + 4_608) + 50257 * 768 / 2 + 1024 * 768
    first = (2 + 2 + 12 / 2) * first_n + 6 * 1024 * 4 * 768 * 2 * 2
    # last stage: + ln_f and the tied LM head's embedding copy; one micro-batch in flight + its float32 logits / 2
    last_n = 6 * (7_083_264 / 2 + 4_608) + 50257 * 768 / 2 + 2 * 768
    last = (2 + 2 + 12 / 2) * last_n + 6 * 1024 * 4 * 768 * 2 + 1024 * 4 * 50257 / 2 * 4
    assert (first_n, last_n) == (41_362_560, 40_577_664) and first < last
    assert e["stage"] == "last" and e["micro_batch"] == 4
    assert e["params"] == 2 * last_n and e["optimizer"] == 12 * last_n / 2 and e["total"] == last == 855_230_720


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        estimate(**GPT2_SMALL, global_batch=10, layout=Layout(data_parallel=4))
    with pytest.raises(ValueError, match="n_head"):
        estimate(**GPT2_SMALL, global_batch=8, layout=Layout(model_parallel=5))
