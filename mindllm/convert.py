"""Hugging Face checkpoints <-> mindllm models: config.json + safetensors, no PyTorch needed.

    from mindllm.convert import from_hf, to_hf
    model = from_hf("path/to/hf_dir")      # BERT, GPT-2, Llama or Qwen2, in eval mode, class from config.json
    model = from_hf(minilm_dir(), arch="BertForSequenceClassification", num_labels=3)  # encoder + new head
    to_hf(model, "export/")                # transformers.AutoModel...from_pretrained("export/") opens it

    python -m mindllm.convert --to-hf RUN_DIR OUT_DIR    # a training run -> HF GPT2LMHeadModel / LlamaForCausalLM
    python -m mindllm.convert --to-mindformers RUN_DIR OUT_DIR   # a Llama run -> HF Qwen2 + mindformers YAML

mindllm's parameter names equal the Hugging Face state-dict keys and its weights share HF's layouts (GPT-2's
Conv1D (in, out), BERT's nn.Linear (out, in)), so conversion is a loop over names. What remains is bookkeeping:
  * keys HF stores that mindllm does not: tied copies of the word embeddings (GPT-2 `lm_head.weight`, BERT
    `cls.predictions.decoder.weight/bias`, checked to be equal to what they copy), constant buffers
    (`attn.bias`, `attn.masked_bias`, `embeddings.position_ids`): skipped;
  * the `bert.` / `transformer.` prefix, present in head models and absent in bare encoders: added or stripped;
  * a checkpoint with a different head than the model asked for: the encoder loads; missing head parameters
    are freshly initialised and unused head tensors dropped, and both are reported.
Every mismatch that would silently change the numbers (activation, LayerNorm eps, position embedding type,
shapes) is a one-line UserError instead.

`pytorch_model.bin` is refused: it is a Python pickle, and reading one safely needs torch (`weights_only`
unpickling); mindllm does not depend on torch. The error says how to convert it to safetensors once.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field, fields

import numpy as np
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from . import device, mindformers, runs
from .errors import ArgumentParser, UserError, cli
from .files import write_text_atomic
from .models import bert
from .models.bert import BertConfig
from .models.gpt import GPT, GPTConfig
from .models.llama import Llama, LlamaConfig

SAFETENSORS, INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
BERT_ARCHS = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")
GPT2_ARCHS = ("GPT2LMHeadModel", "GPT2Model")
GPT2_OVERRIDES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "resid_pdrop")
LLAMA_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mixtral": "MixtralForCausalLM"}
LLAMA_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "num_local_experts", "num_experts_per_tok")
LLAMA_MAX_BLOCK = 16384  # a (T, T) float32 causal mask beyond this is > 1 GB: ask for a shorter context


@dataclass
class LoadReport:
    """What from_hf did besides copying: the architecture it built, the model parameters the checkpoint lacked
    (freshly initialised: train them before use), and the checkpoint tensors no parameter took (other heads)."""
    arch: str
    fresh: list = field(default_factory=list)
    unused: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- reading


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"'{path}' must hold a JSON object")
    return data


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors_bf16(path: str) -> dict:
    """A safetensors file holding bfloat16 (which NumPy lacks and safetensors.numpy refuses), read by hand:
    8-byte header length, JSON header, raw little-endian data; bfloat16 becomes float32 exactly."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _ST_DTYPES:
            arr = np.frombuffer(raw, np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"tensor '{name}' has unsupported dtype {info['dtype']}")
        out[name] = arr.reshape(info["shape"])
    return out


def _read_safetensors(path: str) -> dict:
    try:
        try:
            return load_file(path)
        except TypeError as e:  # "data type 'bfloat16' not understood"
            if "bfloat16" not in str(e):
                raise
            return _read_safetensors_bf16(path)
    except Exception as e:  # noqa: BLE001 - a damaged file raises many kinds of error
        raise UserError(f"cannot read '{path}' ({type(e).__name__}: {e}); is the file complete?") from None


def _bin_message(path: str, config: dict) -> str:
    arch = (config.get("architectures") or ["AutoModel"])[0]
    return (f"'{path}' holds only pytorch_model.bin, a Python pickle that cannot be read safely without torch; "
            f"convert it to safetensors once (with torch + transformers): python -c \"import transformers; "
            f"transformers.{arch}.from_pretrained('{path}').save_pretrained('{path}')\"")


def read_hf(path: str) -> tuple[dict, dict]:
    """(config.json as a dict, {key: numpy array}) of a Hugging Face model directory: model.safetensors, or the
    shards named by model.safetensors.index.json."""
    if not os.path.isdir(path):
        raise UserError(f"Hugging Face model directory '{path}' not found (give the folder that holds "
                        f"config.json and model.safetensors)")
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg_path):
        raise UserError(f"'{path}' has no config.json; a Hugging Face model directory needs config.json + "
                        f"model.safetensors (save_pretrained writes both)")
    config = _read_json(cfg_path)
    single, index = os.path.join(path, SAFETENSORS), os.path.join(path, INDEX)
    if os.path.isfile(single):
        return config, _read_safetensors(single)
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"'{index}' has no weight_map; re-save the model with save_pretrained")
        arrays = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise UserError(f"'{index}' names shard '{shard}', which is missing from '{path}'")
            arrays.update(_read_safetensors(shard_path))
        return config, arrays
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        raise UserError(_bin_message(path, config))
    raise UserError(f"'{path}' has no model.safetensors (nor a sharded model.safetensors.index.json); save the "
                    f"model with transformers' save_pretrained, which writes safetensors")


# ----------------------------------------------------------------------------------------------- configs


def _whole_numbers(d: dict, names, where: str) -> None:
    """config.json sizes must be positive whole numbers of a sane size (a typo must not allocate terabytes)."""
    for name in names:
        v = d.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 10 ** 7):
            raise UserError(f"{where}: {name} must be a whole number in 1..10,000,000, got {str(v)[:40]!r}")


def check_sizes(where: str, named: dict, expect: dict, layers: tuple[str, int]) -> None:
    """Refuse a config.json whose sizes disagree with the checkpoint's tensors, before the model is built."""
    for key, shape in expect.items():
        if key in named and tuple(named[key].shape) != tuple(shape):
            raise UserError(f"{where}: config.json describes '{key}' as {tuple(shape)} but the checkpoint holds "
                            f"{tuple(named[key].shape)}; the config does not belong to these weights")
    pattern, n = layers
    found = {int(m.group(1)) for k in named for m in [re.match(pattern, k)] if m}
    if found and len(found) < n:  # (more tensors than layers: the copy below names the stray one)
        raise UserError(f"{where}: config.json says {n} layers but the checkpoint holds {len(found)}")


def _check_overrides(overrides: dict, allowed, model_type: str) -> None:
    for k in overrides:
        if k not in allowed:
            raise UserError(f"from_hf got unknown {model_type} config field '{k}'; use one of "
                            f"{', '.join(sorted(allowed))}")


def hf_bert_config(config: dict, overrides: dict | None = None, where: str = "config.json"):
    """mindllm BertConfig from a HF BERT config.json dict, refusing settings mindllm's BERT computes
    differently."""
    overrides = overrides or {}
    _check_overrides(overrides, [f.name for f in fields(BertConfig)], "BERT")
    d = {**config, **overrides}
    _whole_numbers(d, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size"), where)
    checks = [(d.get("position_embedding_type", "absolute") == "absolute",
               f"position_embedding_type '{d.get('position_embedding_type')}' is not supported (only absolute)"),
              (not d.get("is_decoder", False), "is_decoder=true (a causal BERT) is not supported"),
              (not d.get("add_cross_attention", False), "add_cross_attention=true is not supported")]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    try:
        cfg = BertConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {e}") from None
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"{where}: hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
                        f"{cfg.num_attention_heads}")
    return cfg


def hf_gpt_config(config: dict, overrides: dict | None = None, where: str = "config.json"):
    """mindllm GPTConfig from a HF GPT-2 config.json dict (missing fields take GPT2Config's defaults)."""
    overrides = overrides or {}
    _check_overrides(overrides, GPT2_OVERRIDES, "GPT-2")
    d = {**config, **overrides}
    _whole_numbers(d, ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head"), where)
    n_embd = d.get("n_embd", 768)
    act = d.get("activation_function", "gelu_new")
    checks = [(act in ("gelu_new", "gelu_pytorch_tanh"),
               f"activation_function '{act}' is not supported (mindllm's GPT uses gelu_new, the tanh GELU)"),
              (abs(d.get("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12,
               f"layer_norm_epsilon {d.get('layer_norm_epsilon')} is not supported (mindllm's GPT uses 1e-5)"),
              (d.get("n_inner") in (None, 4 * n_embd), f"n_inner {d.get('n_inner')} is not supported "
                                                       f"(mindllm's GPT uses 4 * n_embd = {4 * n_embd})"),
              (d.get("scale_attn_weights", True), "scale_attn_weights=false is not supported"),
              (not d.get("scale_attn_by_inverse_layer_idx", False),
               "scale_attn_by_inverse_layer_idx=true is not supported"),
              (not d.get("add_cross_attention", False), "add_cross_attention=true is not supported"),
              (n_embd % d.get("n_head", 12) == 0, f"n_embd {n_embd} is not divisible by n_head {d.get('n_head')}")]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    block = d.get("n_positions", d.get("n_ctx", 1024))  # n_ctx: the same number in old GPT-2 configs
    return GPTConfig(vocab_size=d.get("vocab_size", 50257), block_size=block, n_layer=d.get("n_layer", 12),
                     n_head=d.get("n_head", 12), n_embd=n_embd, dropout=d.get("resid_pdrop", 0.1), bias=True)


def _rope(d: dict, where: str) -> tuple[float, float]:
    """(θ, linear factor) from either transformers 5's `rope_parameters` or the older `rope_theta` +
    `rope_scaling`; other RoPE variants (llama3, yarn, dynamic NTK) compute different angles: refused."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        raise UserError(f"{where}: rope type '{kind}' is not supported (mindllm's RoPE has the default angles and "
                        f"linear scaling)")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    return float(theta), float(rope.get("factor", 1.0)) if kind == "linear" else 1.0


def hf_llama_config(config: dict, overrides: dict | None = None, where: str = "config.json") -> LlamaConfig:
    """mindllm LlamaConfig from a HF Llama, Qwen2 or Mixtral config.json dict, refusing what mindllm computes
    differently.
    Override `max_position_embeddings` to load a long-context model with a shorter context."""
    overrides = overrides or {}
    _check_overrides(overrides, LLAMA_SIZES + ("rms_norm_eps", "tie_word_embeddings"), config.get("model_type"))
    d = {**config, **overrides}
    _whole_numbers(d, LLAMA_SIZES, where)
    qwen, mixtral = d.get("model_type") == "qwen2", d.get("model_type") == "mixtral"
    hidden, heads = d.get("hidden_size", 4096), d.get("num_attention_heads", 32)
    block = d.get("max_position_embeddings", 2048)
    checks = [(d.get("hidden_act", "silu") == "silu", f"hidden_act '{d.get('hidden_act')}' is not supported (SwiGLU "
                                                      f"uses silu)"),
              (qwen or not d.get("attention_bias", False), "attention_bias=true is not supported"),
              (not d.get("mlp_bias", False), "mlp_bias=true is not supported"),
              (not (qwen and d.get("use_sliding_window", False)), "use_sliding_window=true is not supported"),
              (not (mixtral and d.get("sliding_window")), f"sliding_window {d.get('sliding_window')} is not supported"),
              (not (mixtral and d.get("router_jitter_noise", 0.0)), "router_jitter_noise is not supported"),
              (hidden % heads == 0 and (d.get("head_dim") or hidden // heads) == hidden // heads,
               f"head_dim {d.get('head_dim')} is not hidden_size / num_attention_heads"),
              (heads % d.get("num_key_value_heads", heads) == 0, "num_key_value_heads must divide "
                                                                 "num_attention_heads"),
              (block <= LLAMA_MAX_BLOCK, f"max_position_embeddings {block} would need a {block}x{block} attention "
                                         f"mask; load with a shorter context, e.g. from_hf(path, "
                                         f"max_position_embeddings=2048)")]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")
    theta, factor = _rope(d, where)
    return LlamaConfig(vocab_size=d.get("vocab_size", 32000), block_size=block,
                       n_layer=d.get("num_hidden_layers", 32), n_head=heads,
                       n_kv_head=d.get("num_key_value_heads") or heads, n_embd=hidden,
                       intermediate_size=d.get("intermediate_size", 11008), rope_theta=theta, rope_scaling=factor,
                       rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), qkv_bias=qwen,
                       tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                       num_experts=d.get("num_local_experts", 8) if mixtral else 0,
                       experts_per_token=d.get("num_experts_per_tok", 2),
                       router_aux_loss_coef=float(d.get("router_aux_loss_coef", 0.01)))


# ----------------------------------------------------------------------------------------------- import


def _short(names, n=4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _check_tied(arrays: dict, copy: str, original: str, what: str, where: str) -> None:
    """A tied copy must equal its original: mindllm stores the tensor once."""
    a, b = arrays[copy], arrays.get(original)
    if b is not None and (a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-6)):
        raise UserError(f"{where}: '{copy}' differs from '{original}' ({what} untied); mindllm's model ties "
                        f"them and cannot hold two different tensors")


def _copy_into(model, arrays: dict, where: str, body: tuple) -> tuple[list, list]:
    """Copy `arrays` (already in the model's naming) into the model's parameters. Parameters and tensors under
    the `body` prefixes (embeddings and layers) must match one to one; head parameters the checkpoint lacks
    keep their fresh initialisation and head tensors the model lacks are left out. Returns (fresh, unused)."""
    params = dict(model.parameters_and_names())
    unused = sorted(k for k in arrays if k not in params)
    fresh = [n for n in params if n not in arrays]
    stray = [k for k in unused if k.startswith(body)]
    if stray:
        raise UserError(f"{where}: tensor '{stray[0]}' ({len(stray)} such) has no place in a model built from "
                        f"its config.json; do the weights belong to this config?")
    lost = [n for n in fresh if n.startswith(body)]
    if lost:
        raise UserError(f"{where} lacks {len(lost)} tensor(s) that config.json's model has, e.g. '{lost[0]}'; "
                        f"is the file complete?")
    for name, p in params.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(p.shape):
            raise UserError(f"{where}: '{name}' has shape {tuple(arrays[name].shape)} in the checkpoint but the "
                            f"model built from config.json expects {tuple(p.shape)}")
    for name, p in params.items():
        if name in arrays:
            p.set_data(Tensor(np.ascontiguousarray(arrays[name]), dtype=p.dtype))
    return fresh, unused


def _bert_arch(config: dict, keys, arch: str | None) -> str:
    if arch is not None:
        if arch not in BERT_ARCHS:
            raise UserError(f"arch '{arch}' does not fit this BERT checkpoint (model_type bert); use one of "
                            f"{', '.join(BERT_ARCHS)}")
        return arch
    archs = config.get("architectures") or []
    if archs:
        if archs[0] not in BERT_ARCHS:
            raise UserError(f"config.json's architecture '{archs[0]}' has no mindllm counterpart "
                            f"({', '.join(BERT_ARCHS)}); load its encoder with from_hf(path, arch='BertModel')")
        return archs[0]
    if any(k.startswith("cls.predictions.") for k in keys):  # no architectures: infer from the heads present
        return "BertForPreTraining" if any(k.startswith("cls.seq_relationship.") for k in keys) else "BertForMaskedLM"
    return "BertForSequenceClassification" if any(k.startswith("classifier.") for k in keys) else "BertModel"


def _load_bert(config: dict, arrays: dict, where: str, arch: str | None, overrides: dict, cfg_path: str):
    cfg = hf_bert_config(config, overrides, cfg_path)
    canon = {}  # every key with the `bert.` prefix of the head models, TF-era LayerNorm names modernised
    for k, v in arrays.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
        canon["bert." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k] = v
    for buf in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids"):  # constant buffers
        canon.pop(buf, None)
    arch = _bert_arch(config, canon, arch)
    check_sizes(where, canon, {"bert.embeddings.word_embeddings.weight": (cfg.vocab_size, cfg.hidden_size),
                               "bert.embeddings.position_embeddings.weight": (cfg.max_position_embeddings,
                                                                              cfg.hidden_size)},
                (r"bert\.encoder\.layer\.(\d+)\.", cfg.num_hidden_layers))
    if arch == "BertModel":  # the bare encoder: HF's BertModel keys have no prefix
        model = bert.Bert(cfg, add_pooling_layer=any(k.startswith("bert.pooler.") for k in canon))
        named = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in canon.items()}
        body = ("embeddings.", "encoder.")
    else:
        model = getattr(bert, arch)(cfg)
        named, body = canon, ("bert.embeddings.", "bert.encoder.")
        if arch in ("BertForMaskedLM", "BertForPreTraining"):  # the decoder is the word embeddings, tied
            if "cls.predictions.decoder.weight" in named:
                _check_tied(named, "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight",
                            "MLM decoder and word embeddings", where)
                named.pop("cls.predictions.decoder.weight")
            if "cls.predictions.decoder.bias" in named:
                if "cls.predictions.bias" not in named:
                    named["cls.predictions.bias"] = named["cls.predictions.decoder.bias"]
                _check_tied(named, "cls.predictions.decoder.bias", "cls.predictions.bias", "MLM decoder bias", where)
                named.pop("cls.predictions.decoder.bias")
    fresh, unused = _copy_into(model, named, where, body)
    return model, LoadReport(arch, fresh, unused)


def _load_gpt2(config: dict, arrays: dict, where: str, arch: str | None, overrides: dict, cfg_path: str):
    if arch is not None and arch not in GPT2_ARCHS:
        raise UserError(f"arch '{arch}' does not fit this GPT-2 checkpoint (model_type gpt2); use one of "
                        f"{', '.join(GPT2_ARCHS)}")
    archs = config.get("architectures") or []
    if arch is None and archs and archs[0] not in GPT2_ARCHS:
        raise UserError(f"config.json's architecture '{archs[0]}' has no mindllm counterpart "
                        f"({', '.join(GPT2_ARCHS)}); load its body with from_hf(path, arch='GPT2Model')")
    arch = arch or (archs[0] if archs else "GPT2LMHeadModel")
    cfg = hf_gpt_config(config, overrides, cfg_path)
    named = {}
    for k, v in arrays.items():
        if re.fullmatch(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)", k):
            continue  # the causal mask and its fill value, stored as buffers by old transformers versions
        named["transformer." + k if k.startswith(("h.", "wte.", "wpe.", "ln_f.")) else k] = v
    if "lm_head.weight" in named:  # GPT-2's LM head is the token embedding, tied
        _check_tied(named, "lm_head.weight", "transformer.wte.weight", "LM head and token embedding", where)
        named.pop("lm_head.weight")
    elif config.get("tie_word_embeddings", True) is False:
        raise UserError(f"{where}: config.json says tie_word_embeddings=false but the checkpoint has no "
                        f"lm_head.weight; mindllm's GPT ties its LM head to transformer.wte")
    check_sizes(where, named, {"transformer.wte.weight": (cfg.vocab_size, cfg.n_embd),
                               "transformer.wpe.weight": (cfg.block_size, cfg.n_embd)},
                (r"transformer\.h\.(\d+)\.", cfg.n_layer))
    model = GPT(cfg)
    fresh, unused = _copy_into(model, named, where, ("transformer.",))
    return model, LoadReport(arch, fresh, unused)


_LEGACY_MOE = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w[123])\.weight)")


def experts_from_legacy(arrays: dict) -> dict:
    """Mixtral checkpoints on the Hub (and transformers' save_pretrained) store each expert as w1 (gate), w3 (up),
    w2 (down) under `block_sparse_moe`; mindllm (like transformers 5 in memory) holds them as 3-D tensors."""
    out, experts = {}, {}
    for k, v in arrays.items():
        m = _LEGACY_MOE.fullmatch(k)
        if m is None:
            out[k] = v
        elif m.group(3) is None:
            out[f"model.layers.{m.group(1)}.mlp.gate.weight"] = v
        else:
            experts.setdefault(int(m.group(1)), {}).setdefault(int(m.group(3)), {})[m.group(4)] = v
    for layer, by_expert in experts.items():
        e = [by_expert[j] for j in sorted(by_expert)]
        if any(set(x) != {"w1", "w2", "w3"} for x in e):
            raise UserError(f"layer {layer}'s experts lack some of w1, w2, w3; is the checkpoint complete?")
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = np.stack([np.concatenate([x["w1"], x["w3"]])
                                                                   for x in e])
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = np.stack([x["w2"] for x in e])
    return out


def experts_to_legacy(arrays: dict) -> dict:
    """The inverse of experts_from_legacy: the layout every transformers version and the Hub read."""
    out = {}
    for k, v in arrays.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.(gate_up|down)_proj)", k)
        if m is None:
            out[k] = v
            continue
        prefix = f"model.layers.{m.group(1)}.block_sparse_moe."
        if m.group(3) is None:
            out[prefix + "gate.weight"] = v
        for j, w in enumerate(v if m.group(3) else []):
            if m.group(3) == "down":
                out[f"{prefix}experts.{j}.w2.weight"] = np.ascontiguousarray(w)
            else:
                gate, up = np.split(w, 2)
                out[f"{prefix}experts.{j}.w1.weight"] = np.ascontiguousarray(gate)
                out[f"{prefix}experts.{j}.w3.weight"] = np.ascontiguousarray(up)
    return out


def _load_llama(config: dict, arrays: dict, where: str, arch: str | None, overrides: dict, cfg_path: str):
    expected = LLAMA_ARCHS[config["model_type"]]
    if arch not in (None, expected):
        raise UserError(f"arch '{arch}' does not fit this {config['model_type']} checkpoint; use {expected}")
    cfg = hf_llama_config(config, overrides, cfg_path)
    named = {k: v for k, v in experts_from_legacy(arrays).items()
             if not k.endswith("rotary_emb.inv_freq")}  # a buffer of old versions
    if cfg.tie_word_embeddings and "lm_head.weight" in named:
        _check_tied(named, "lm_head.weight", "model.embed_tokens.weight", "LM head and token embedding", where)
        named.pop("lm_head.weight")
    elif not cfg.tie_word_embeddings and "lm_head.weight" not in named:
        raise UserError(f"{where}: config.json says tie_word_embeddings=false but the checkpoint has no "
                        f"lm_head.weight")
    check_sizes(where, named, {"model.embed_tokens.weight": (cfg.vocab_size, cfg.n_embd)},
                (r"model\.layers\.(\d+)\.", cfg.n_layer))
    model = Llama(cfg)
    fresh, unused = _copy_into(model, named, where, ("model.", "lm_head."))
    return model, LoadReport(expected, fresh, unused)


def load_hf(path: str, arch: str | None = None, **config):
    """(model in eval mode, LoadReport) from a Hugging Face model directory. `arch` overrides config.json's
    architecture (e.g. 'BertForSequenceClassification' on a bare encoder, whose new head is then freshly
    initialised); keyword arguments override config.json fields (e.g. num_labels=3)."""
    hf_config, arrays = read_hf(path)
    where = os.path.join(path, SAFETENSORS if os.path.isfile(os.path.join(path, SAFETENSORS)) else INDEX)
    model_type, cfg_path = hf_config.get("model_type"), os.path.join(path, CONFIG)
    if model_type == "bert":
        model, report = _load_bert(hf_config, arrays, where, arch, config, cfg_path)
    elif model_type == "gpt2":
        model, report = _load_gpt2(hf_config, arrays, where, arch, config, cfg_path)
    elif model_type in LLAMA_ARCHS:
        model, report = _load_llama(hf_config, arrays, where, arch, config, cfg_path)
    elif model_type is None:
        raise UserError(f"'{cfg_path}' has no model_type; mindllm converts bert, gpt2, llama and qwen2")
    else:
        raise UserError(f"model_type '{model_type}' in '{cfg_path}' is not supported; mindllm converts bert, "
                        f"gpt2, llama and qwen2")
    model.set_train(False)
    return model, report


def from_hf(path: str, arch: str | None = None, log=print, **config):
    """A mindllm model (eval mode) holding a Hugging Face checkpoint: `Bert`, `BertForMaskedLM`,
    `BertForPreTraining`, `BertForSequenceClassification`, `GPT` or `Llama` (Llama and Qwen2 checkpoints). Freshly initialised parameters and unused
    checkpoint tensors are reported through `log` (None: silent); see load_hf for the arguments."""
    model, report = load_hf(path, arch, **config)
    if log and report.fresh:
        log(f"note: {len(report.fresh)} parameter(s) of {report.arch} are not in '{path}' and were freshly "
            f"initialised ({_short(report.fresh)}); train them before use")
    if log and report.unused:
        log(f"note: {len(report.unused)} tensor(s) of '{path}' are not used by {report.arch} "
            f"({_short(report.unused)})")
    return model


# ----------------------------------------------------------------------------------------------- export

_GPT2_KEY = re.compile(r"transformer\.((wte|wpe)\.weight|ln_f\.(weight|bias)|"
                       r"h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias))")
_LLAMA_KEY = re.compile(r"model\.(embed_tokens\.weight|norm\.weight|"
                        r"layers\.\d+\.((input|post_attention)_layernorm\.weight|"
                        r"self_attn\.[qkv]_proj\.(weight|bias)|self_attn\.o_proj\.weight|"
                        r"mlp\.(gate|up|down)_proj\.weight|mlp\.gate\.weight|mlp\.experts\.(gate_up|down)_proj))|"
                        r"lm_head\.weight")
_BERT_KEY = re.compile(r"(bert\.)?(embeddings\.((word|position|token_type)_embeddings\.weight|"
                       r"LayerNorm\.(weight|bias))|encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|"
                       r"attention\.output\.(dense|LayerNorm)|intermediate\.dense|output\.(dense|LayerNorm))\."
                       r"(weight|bias)|pooler\.dense\.(weight|bias))|"
                       r"cls\.predictions\.(bias|transform\.(dense|LayerNorm)\.(weight|bias))|"
                       r"cls\.seq_relationship\.(weight|bias)|classifier\.(weight|bias)")


def llama_hf_config(c: LlamaConfig) -> dict:
    """config.json of a mindllm Llama: LlamaForCausalLM, Qwen2ForCausalLM when it has q/k/v biases,
    MixtralForCausalLM when its MLPs are experts (dropless: Mixtral has no capacity limit)."""
    if c.num_experts and (c.qkv_bias or c.capacity_factor):
        raise UserError("a mixture of experts with q/k/v biases or a capacity limit has no Hugging Face counterpart "
                        "(MixtralForCausalLM has neither)")
    model_type = "mixtral" if c.num_experts else "qwen2" if c.qkv_bias else "llama"
    config = {"model_type": model_type, "architectures": [LLAMA_ARCHS[model_type]], "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "intermediate_size": c.hidden, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.n_embd // c.n_head,
              "max_position_embeddings": c.block_size, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
              "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_word_embeddings,
              "attention_dropout": c.dropout, "initializer_range": 0.02}
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling != 1.0:
        rope = {"rope_type": "linear", "factor": c.rope_scaling, "rope_theta": c.rope_theta}
        config["rope_scaling"] = {"rope_type": "linear", "factor": c.rope_scaling}  # older transformers read this
    config["rope_parameters"] = rope  # transformers >= 5
    if model_type == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif model_type == "qwen2":
        config.update(use_sliding_window=False)
    else:
        config.update(num_local_experts=c.num_experts, num_experts_per_tok=c.experts_per_token,
                      router_aux_loss_coef=c.router_aux_loss_coef, sliding_window=None)
    return config


def hf_state(model) -> tuple[dict, dict]:
    """(config.json dict, {HF key: float32 array}) of a mindllm GPT, Llama or BERT model, in Hugging Face layout."""
    if isinstance(model, Llama):
        config, pattern = llama_hf_config(model.config), _LLAMA_KEY
    elif isinstance(model, GPT):
        c = model.config
        if not c.bias:
            raise UserError("this GPT has no biases (model.bias=false); Hugging Face GPT-2 always has them, so it "
                            "cannot be exported")
        eos = 50256 if c.vocab_size == 50257 else None  # GPT-2's <|endoftext|>, only in GPT-2's own vocabulary
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
                  "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
                  "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new",
                  "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
                  "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
                  "tie_word_embeddings": True, "bos_token_id": eos, "eos_token_id": eos}
        pattern = _GPT2_KEY
    else:
        archs = {bert.Bert: "BertModel", bert.BertForMaskedLM: "BertForMaskedLM",
                 bert.BertForPreTraining: "BertForPreTraining",
                 bert.BertForSequenceClassification: "BertForSequenceClassification"}
        arch = archs.get(type(model))
        if arch is None:
            raise UserError(f"to_hf exports GPT, Llama, Bert, BertForMaskedLM, BertForPreTraining and "
                            f"BertForSequenceClassification; got {type(model).__name__}")
        c = model.config
        config = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "num_labels"}
        config.update(model_type="bert", architectures=[arch], position_embedding_type="absolute",
                      initializer_range=0.02, tie_word_embeddings=True)
        if arch == "BertForSequenceClassification":
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
        pattern = _BERT_KEY
    config["dtype"] = "float32"
    arrays = {}
    for name, p in model.parameters_and_names():
        if not pattern.fullmatch(name):
            raise UserError(f"parameter '{name}' has no Hugging Face counterpart (merge adapters such as LoRA "
                            f"into the weights before exporting)")
        arrays[name] = np.ascontiguousarray(p.asnumpy().astype(np.float32))
    if config["model_type"] == "mixtral":
        arrays = experts_to_legacy(arrays)
    return config, arrays


def to_hf(model, out_dir: str) -> str:
    """Write `model` as a Hugging Face model directory (config.json + model.safetensors, tied weights stored
    once, as save_pretrained does) that `transformers.AutoModel...from_pretrained(out_dir)` opens. Each file is
    written to a temporary name and renamed into place. Returns out_dir."""
    return _write_hf(out_dir, *hf_state(model))


def _write_hf(out_dir: str, config: dict, arrays: dict) -> str:
    try:
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, f".{SAFETENSORS}.tmp{os.getpid()}")
        save_file(arrays, tmp, metadata={"format": "pt"})  # transformers expects the "pt" format tag
        os.replace(tmp, os.path.join(out_dir, SAFETENSORS))
        write_text_atomic(os.path.join(out_dir, CONFIG), json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise UserError(f"cannot write the Hugging Face model to '{out_dir}' ({e})") from None
    return out_dir


# ----------------------------------------------------------------------------------------------- CLI


def _run_model(run: str, archs: tuple, refusal: str):
    """A run's model and tokenizer, its model.arch checked first from the config alone (no weights loaded)."""
    arch = runs.read_config(runs.locate(run)[0]).model.arch
    if arch not in archs:
        raise UserError(f"'{run}' trained a model.arch={arch} model; {refusal}")
    model, tokenizer, _ = runs.load_model(run)
    return model, tokenizer


def export_run(run: str, out_dir: str, log=print) -> str:
    """Export a mindllm training run (its out_dir, or one of its ckpt/step_* dirs) as a Hugging Face
    GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM directory; the run's tokenizer is copied beside it."""
    model, tokenizer = _run_model(run, ("gpt", "llama"), "only GPT and Llama runs have a Hugging Face counterpart "
                                                         "(GPT2LMHeadModel, LlamaForCausalLM / Qwen2ForCausalLM)")
    to_hf(model, out_dir)
    hf_arch = llama_hf_config(model.config)["architectures"][0] if isinstance(model, Llama) else "GPT2LMHeadModel"
    tok_note = _save_tokenizer(tokenizer, out_dir)
    log(f"wrote {out_dir}/: config.json + model.safetensors ({hf_arch}, "
        f"{sum(int(np.prod(p.shape)) for p in model.get_parameters()):,} parameters) and {tok_note}; "
        f"open with transformers.{hf_arch}.from_pretrained('{out_dir}')")
    return out_dir


def _save_tokenizer(tokenizer, out_dir: str) -> str:
    """Write the run's tokenizer beside an exported model; returns how to read it."""
    if getattr(tokenizer, "kind", None) == "hf":  # a `tokenizers` file: PreTrainedTokenizerFast reads it
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        return "tokenizer.json (load with transformers.PreTrainedTokenizerFast(tokenizer_file=...))"
    tokenizer.save(os.path.join(out_dir, "mindllm_tokenizer.json"))
    return "mindllm_tokenizer.json (a mindllm tokenizer: read it with mindllm.data.load_tokenizer)"


def export_mindformers(run: str, out_dir: str, log=print) -> str:
    """Export a course Llama run for mindformers: a Hugging Face Qwen2 directory (a Llama without biases gets zero
    q/k/v biases: the same function) with the tokenizer, and predict_qwen2.yaml in mindformers' own format."""
    model, tokenizer = _run_model(run, ("llama",), "mindformers' Qwen2 takes the Llama block (train with "
                                                   "configs/llama_*.yaml)")
    if model.config.num_experts:
        raise UserError("a mixture-of-experts run has no mindformers Qwen2 counterpart (mindformers' MoE models "
                        "use other blocks); export it with --to-hf as MixtralForCausalLM")
    config, arrays = hf_state(model)
    for layer in range(model.config.n_layer):
        for proj in ("q_proj", "k_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{proj}"
            arrays.setdefault(key + ".bias", np.zeros(arrays[key + ".weight"].shape[0], np.float32))
    _write_hf(out_dir, mindformers.qwen2_config_json(config), arrays)
    tok_note = _save_tokenizer(tokenizer, out_dir)
    path = os.path.join(out_dir, "predict_qwen2.yaml")
    write_text_atomic(path, mindformers.dump(mindformers.predict_yaml(out_dir), path))
    log(f"wrote {out_dir}/: config.json + model.safetensors (Qwen2ForCausalLM), {tok_note}, and predict_qwen2.yaml "
        f"for mindformers (on Ascend: python run_mindformer.py --config {path} --predict_data \"...\")")
    return out_dir


@cli
def main(argv=None):
    ap = ArgumentParser(prog="python -m mindllm.convert", description=__doc__.split("\n\n")[0])
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--to-hf", nargs=2, metavar=("RUN_DIR", "OUT_DIR"),
                     help="export a mindllm GPT or Llama training run as a Hugging Face GPT2LMHeadModel or "
                          "LlamaForCausalLM / Qwen2ForCausalLM / MixtralForCausalLM directory")
    how.add_argument("--to-mindformers", nargs=2, metavar=("RUN_DIR", "OUT_DIR"),
                     help="export a mindllm Llama run for mindformers: a Hugging Face Qwen2 directory and "
                          "predict_qwen2.yaml")
    ap.add_argument("--device", default="CPU", help="CPU, GPU, Ascend or auto")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    device.setup(device.context_for(args.device), 0)
    if args.to_hf:
        export_run(*args.to_hf)
    else:
        export_mindformers(*args.to_mindformers)


if __name__ == "__main__":
    main()
