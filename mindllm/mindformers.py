"""The road to mindformers (MindSpore's suite for large models on Ascend): the run configuration it reads.

mindformers 2.x cannot be installed beside mindspore 2.10 (it needs mindspore 2.11 and `hyper-parallel`), so mindllm
speaks its formats instead. Its current ("non-legacy") models read a Hugging Face model directory
(`pretrained_model_dir`: config.json + safetensors + tokenizer) plus a YAML of run settings. The YAML below has the
sections and field names of the wheel's own `configs/qwen2/predict_qwen2.yaml` (mindformers 2.1.0; the key list is
committed as tests/data/mindformers_2.1.0_qwen2.json and the test compares against it).

A course Llama maps onto mindformers' Qwen2 model: the same block (RMSNorm, RoPE, SwiGLU, grouped-query attention)
with biases on q, k and v — a course Llama without biases is written with zero biases, which compute the same thing.
"""
from __future__ import annotations

import os

import yaml

# Hugging Face config.json field -> what mindformers' Qwen2Config calls it (the same names: it reads config.json)
QWEN2_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
                "tie_word_embeddings", "rope_theta", "rope_scaling", "attention_dropout", "use_sliding_window")


def qwen2_config_json(hf_config: dict) -> dict:
    """A Qwen2 config.json holding only the fields mindformers' Qwen2Config reads (plus model_type and
    architectures), RoPE scaling in the older `rope_scaling` form it knows."""
    out = {k: hf_config[k] for k in QWEN2_FIELDS if k in hf_config}
    out.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=False,
               torch_dtype="float32")
    return out


def predict_yaml(model_dir: str) -> dict:
    """mindformers' predict YAML for a Qwen2-format model directory, on one Ascend card."""
    return {
        "seed": 0,
        "output_dir": "./output",
        "load_checkpoint": "",
        "use_parallel": False,
        "run_mode": "predict",
        "use_legacy": False,  # the current model code, which reads pretrained_model_dir
        "load_ckpt_format": "safetensors",
        "trainer": {"type": "CausalLanguageModelingTrainer", "model_name": "qwen2"},
        "parallel_config": {"data_parallel": 1, "model_parallel": 1},
        "pretrained_model_dir": os.path.abspath(model_dir),
        "model": {"model_config": {"compute_dtype": "bfloat16", "layernorm_compute_dtype": "float32",
                                   "softmax_compute_dtype": "float32", "rotary_dtype": "bfloat16",
                                   "params_dtype": "bfloat16", "add_qkv_bias": True}},
        "context": {"mode": 0, "enable_graph_kernel": False, "ascend_config": {"precision_mode": "must_keep_origin_dtype"},
                    "max_device_memory": "59GB", "save_graphs": False, "save_graphs_path": "./graph"},
        "parallel": {"parallel_mode": "MANUAL_PARALLEL", "enable_alltoall": False},
    }


HEADER = """\
# mindformers run configuration for a course model exported by `python -m mindllm.convert --to-mindformers`.
# Sections and names follow mindformers 2.1.0's configs/qwen2/predict_qwen2.yaml. On an Ascend machine with
# mindformers installed, from its source tree:
#   python run_mindformer.py --config {yaml} --predict_data "<your prompt>"
# pretrained_model_dir below holds config.json + model.safetensors (Hugging Face Qwen2 format) and the tokenizer.
"""


def dump(config: dict, path: str) -> str:
    return HEADER.format(yaml=os.path.basename(path)) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
