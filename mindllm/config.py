"""Typed configuration: YAML file -> dotted overrides -> validated dataclasses.

Sections follow mindformers (`context`, `parallel`, `model`, `data`, `train`) so a course config reads like a
production one. Every mistake is reported as one UserError naming the key.

    cfg = load_config("configs/gpt_char_shakespeare.yaml", ["train.max_iters=200", "out_dir=runs/x"])
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field

import yaml

from . import tasks
from .errors import UserError
from .files import write_text_atomic


def opt(default, *, lo=None, hi=None, lo_open=False, choices=None, doc=""):
    """A config field with its allowed range; `lo_open` makes the lower bound exclusive (lr > 0)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc})


@dataclass
class ContextConfig:
    device_target: str = opt("auto", choices=("auto", "CPU", "GPU", "Ascend"), doc="auto picks GPU/Ascend if present")
    mode: str = opt("graph", choices=("graph", "pynative"), doc="graph compiles the train step with mindspore.jit")
    num_threads: int = opt(0, lo=0, doc="CPU intra-op threads; 0 keeps MindSpore's default")


@dataclass
class ParallelConfig:
    """mindformers' `parallel:` block: the arguments of mindspore.set_auto_parallel_context."""
    parallel_mode: str = opt("stand_alone", choices=("stand_alone", "data_parallel", "semi_auto_parallel",
                                                     "auto_parallel"),
                             doc="data_parallel: every device holds the whole model (CPU too, via "
                                 "python -m mindllm.launch); semi_auto/auto_parallel shard tensors (GPU/Ascend)")
    gradients_mean: bool = opt(True, doc="average (not sum) the gradients of the devices")
    full_batch: bool = opt(False, doc="semi_auto/auto: every device reads the whole global batch")
    enable_parallel_optimizer: bool = opt(False, doc="shard optimizer state over data-parallel devices (ZeRO-1)")


@dataclass
class ParallelLayoutConfig:
    """mindformers' `parallel_config:` block: how devices are split (data x model x pipeline = device count)."""
    data_parallel: int = opt(1, lo=1, doc="model replicas; each sees batch_size / data_parallel rows")
    model_parallel: int = opt(1, lo=1, doc="tensor parallelism: attention heads and MLP columns split (Megatron)")
    pipeline_stage: int = opt(1, lo=1, doc="consecutive groups of layers on different devices")
    micro_batch_num: int = opt(1, lo=1, doc="pipeline micro-batches per step (>= pipeline_stage keeps it busy)")
    recompute: bool = opt(False, doc="activation checkpointing: keep only each block's input, recompute the rest "
                                     "in the backward pass (less memory, ~1/3 more compute)")


@dataclass
class ModelConfig:
    arch: str = opt("gpt", choices=("gpt", "llama", "transformer", "bert", "bert_classifier"),
                    doc="gpt: decoder-only causal LM (GPT-2's block); llama: the same with the modern block (RoPE, "
                        "RMSNorm, SwiGLU, grouped-query attention); transformer: encoder-decoder; bert: BERT with the MLM+NSP "
                        "heads; bert_classifier: BERT with a classification head. Each task names the ones it "
                        "trains (mindllm/tasks/)")
    n_layer: int = opt(4, lo=1, doc="transformer: encoder layers = decoder layers")
    n_head: int = opt(4, lo=1)
    n_embd: int = opt(128, lo=1)
    block_size: int = opt(64, lo=1, doc="context length in tokens")
    dropout: float = opt(0.0, lo=0.0, hi=0.99)
    bias: bool = opt(True, doc="biases in Linear and LayerNorm, as GPT-2")
    ffn_dim: int = opt(512, lo=1, doc="transformer, bert: feed-forward hidden size")
    norm_first: bool = opt(True, doc="transformer only: pre-LN (true) or the original post-LN (false)")
    positions: str = opt("sinusoidal", choices=("sinusoidal", "learned"), doc="transformer only")
    n_kv_head: int = opt(0, lo=0, doc="llama only: key/value heads, each shared by n_head/n_kv_head query heads "
                                      "(grouped-query attention); 0 = n_head, 1 = multi-query")
    intermediate_size: int = opt(0, lo=0, doc="llama only: SwiGLU hidden width; 0 = 8/3 x n_embd, rounded up to 8")
    rope_theta: float = opt(10000.0, lo=0.0, lo_open=True, doc="llama only: RoPE base θ")
    rope_scaling: float = opt(1.0, lo=1.0, doc="llama only: linear position interpolation (positions / factor)")
    rms_norm_eps: float = opt(1e-6, lo=0.0, lo_open=True, doc="llama only")
    qkv_bias: bool = opt(False, doc="llama only: biases on the q, k, v projections, as Qwen2")
    tie_word_embeddings: bool = opt(False, doc="llama only: the LM head is the token embedding (GPT always ties)")
    num_experts: int = opt(0, lo=0, doc="llama only: > 0 makes every MLP a sparse mixture of this many experts")
    experts_per_token: int = opt(2, lo=1, doc="llama only: top-k routing of the mixture of experts")
    capacity_factor: float = opt(0.0, lo=0.0, doc="llama only: 0 = dropless (every expert sees every token); "
                                                  "else each expert takes at most factor x tokens x k / experts")
    router_aux_loss_coef: float = opt(0.01, lo=0.0, doc="llama only: weight of the load-balancing loss")


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning of model.arch=bert_classifier, and LoRA for instruction tuning a GPT (names
    after Hugging Face peft)."""
    method: str = opt("none", choices=("none", "lora", "prompt", "ptuning"),
                      doc="lora: low-rank updates beside frozen weights; prompt: trained soft-prompt vectors; "
                          "ptuning: soft prompts from a small MLP; the classifier head trains in every case")
    r: int = opt(8, lo=1, doc="lora: rank of the update")
    alpha: float = opt(16.0, lo=0.0, lo_open=True, doc="lora: the update is scaled by alpha / r")
    dropout: float = opt(0.0, lo=0.0, hi=0.9, doc="lora: dropout on the adapter's input")
    targets: str = opt("query,value", doc="lora: comma-separated Linear names (query, key, value, dense, ...) or "
                                          "globs over full names")
    num_virtual_tokens: int = opt(20, lo=1, doc="prompt/ptuning: how many soft-prompt vectors")
    encoder_hidden: int = opt(128, lo=1, doc="ptuning: width of the prompt encoder")


@dataclass
class DataConfig:
    corpus: str = opt("shakespeare", doc="shakespeare | peoples_daily | a path to a UTF-8 text file; each task "
                                         "names the corpora it reads")
    tokenizer: str = opt("char", choices=("char", "bpe", "hf_bpe", "gpt2", "hf_wordpiece", "bert_uncased"),
                         doc="bpe = mindllm's own byte-level BPE; hf_bpe = Hugging Face tokenizers'; gpt2 = the real "
                             "GPT-2 vocabulary; hf_wordpiece / bert_uncased for BERT")
    vocab_size: int = opt(1024, lo=257, doc="bpe/hf_bpe only: vocabulary size (>= 256 bytes + <|endoftext|>)")
    val_fraction: float = opt(0.1, lo=0.0, hi=0.5, lo_open=True)


@dataclass
class TrainConfig:
    max_iters: int = opt(2000, lo=0)
    batch_size: int = opt(12, lo=1)
    grad_accum: int = opt(1, lo=1, doc="micro-batches per optimizer step")
    lr: float = opt(1e-3, lo=0.0, lo_open=True)
    min_lr: float = opt(1e-4, lo=0.0)
    warmup_iters: int = opt(100, lo=0)
    lr_decay_iters: int = opt(0, lo=0, doc="end of the cosine decay; 0 means max_iters")
    weight_decay: float = opt(0.1, lo=0.0)
    beta1: float = opt(0.9, lo=0.0, hi=0.999999)
    beta2: float = opt(0.99, lo=0.0, hi=0.999999)
    grad_clip: float = opt(1.0, lo=0.0, doc="global-norm clipping; 0 disables")
    amp: str = opt("none", choices=("none", "fp16", "bf16"), doc="mixed precision, GPU/Ascend only")
    log_interval: int = opt(10, lo=1)
    eval_interval: int = opt(250, lo=1)
    eval_iters: int = opt(20, lo=1)
    ckpt_interval: int = opt(500, lo=1)
    keep_ckpts: int = opt(2, lo=1)
    progress: bool = opt(True, doc="tqdm progress bar")


@dataclass
class SampleConfig:
    prompt: str = opt("\n")
    max_new_tokens: int = opt(300, lo=0)
    temperature: float = opt(0.8, lo=0.0)
    top_k: int = opt(0, lo=0, doc="0 disables")
    top_p: float = opt(1.0, lo=0.0, hi=1.0, lo_open=True)


@dataclass
class Config:
    seed: int = opt(1337, lo=0, hi=2 ** 32 - 3, doc="seeds every RNG (evaluation batches use seed + 1 and + 2)")
    out_dir: str = opt("runs/gpt_char_shakespeare")
    resume: bool = opt(False, doc="continue from out_dir/ckpt/latest")
    task: str = opt("causal_lm", choices=tasks.NAMES, doc="what is trained: the model, batches, loss and "
                                                          "evaluation (mindllm/tasks/<task>.py)")
    context: ContextConfig = field(default_factory=ContextConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    parallel_config: ParallelLayoutConfig = field(default_factory=ParallelLayoutConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # the task's own section, written in YAML under the task's name (`classify: {freeze: encoder}`)
    options: typing.Any = field(default=None, metadata={"section": True})

    def __post_init__(self):
        if self.options is None:
            self.options = tasks.get(self.task).Options()

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()}
        out[self.task] = dataclasses.asdict(self.options)
        return out


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
MAX_TEXT = 4096  # longest accepted string value (a path, a prompt); longer is a mistake, not a config
MAX_FILE = 1 << 20  # a config file over 1 MiB is not a config


def shown(value, width: int = 80) -> str:
    """`value` for an error message: bounded in length and depth (a YAML anchor bomb must not become a 350 MB
    line)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, width, width
    text = r.repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


class Override:
    """A command-line value: its raw text, and that text read as YAML (`3`, `0.1`, `true`)."""

    def __init__(self, raw: str):
        self.raw = raw
        try:
            self.parsed = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            self.parsed = raw


def _coerce(key: str, value, typ, meta):
    """Check one leaf value against its declared type and range; return it converted."""
    if isinstance(value, Override):  # a string field takes the text as typed (`sample.prompt=ROMEO:`)
        value = value.raw if typ is str else value.parsed
    if isinstance(value, dict):
        raise UserError(f"config: {key} is a value, not a section")
    if typ is float and isinstance(value, str):
        try:  # PyYAML reads `1e-3` (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = (isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))) or (
        typ is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise UserError(f"config: {key} must be {_TYPE_NAMES[typ]}, got {shown(value)}")
    if typ is float:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"config: {key} must be a finite number, got {value}")
    if typ is str and len(value) > meta.get("max_len", MAX_TEXT):
        raise UserError(f"config: {key} is {len(value):,} characters long (at most {meta.get('max_len', MAX_TEXT):,})")
    if meta.get("choices") and value not in meta["choices"]:
        raise UserError(f"config: {key} must be one of {', '.join(map(str, meta['choices']))}; got {shown(value)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise UserError(f"config: {key} must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise UserError(f"config: {key} must be <= {hi}, got {value}")
    return value


def build_section(cls, data, prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise UserError(f"config: {prefix.rstrip('.') or 'the file'} must be a section of keys, not a value")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("section")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known: {', '.join(fields) or 'none'}"
            raise UserError(f"config: unknown key '{prefix}{str(key)[:60]}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build_section(typ, data[name] if data[name] is not None else {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, data[name], typ, f.metadata)
    return cls(**kwargs)


# Keys of task options that older configs (and run directories) kept in the shared sections, with the value
# that meant "not set" there; they are moved into the task's own section.
LEGACY = {("model", "init"): "", ("model", "freeze"): "none", ("model", "freeze_layers"): 0,
          ("data", "train_examples"): 50000, ("data", "test_examples"): 0, ("data", "mask_prob"): 0.15,
          ("train", "label_smoothing"): 0.0}


def _raw(value):
    return value.parsed if isinstance(value, Override) else value


def _split_task(data: dict) -> tuple[str, dict]:
    """Take the task name and its own section out of `data` (moving legacy keys into that section)."""
    name = _raw(data.pop("task", None))
    if name is None:  # configs written before `task:` existed name the task by model and corpus
        model, corpus = data.get("model") or {}, data.get("data") or {}
        name = tasks.infer(_raw(model.get("arch", "gpt")) if isinstance(model, dict) else "gpt",
                           _raw(corpus.get("corpus", "")) if isinstance(corpus, dict) else "")
    if name not in tasks.NAMES:
        raise UserError(f"config: task must be one of {', '.join(tasks.NAMES)}; got {shown(name)}")
    for other in tasks.NAMES:
        if other != name and other in data:
            raise UserError(f"config: section '{other}:' holds options of task {other}, but task is {name}")
    section = data.pop(name, None) or {}
    if not isinstance(section, dict):
        raise UserError(f"config: {name} must be a section of keys, not a value")
    options = {f.name for f in dataclasses.fields(tasks.get(name).Options)}
    for (part, key), unset in LEGACY.items():
        block = data.get(part)
        if not isinstance(block, dict) or key not in block:
            continue
        value = block.pop(key)
        cli_wins = isinstance(value, Override) and not isinstance(section.get(key), Override)
        if key in options and (key not in section or cli_wins):
            if not (part == "data" and key == "test_examples" and _raw(value) == 0):  # 0 meant the task's default
                section[key] = value
        elif key in options or _raw(value) != unset:
            owner = [t for t in tasks.NAMES if key in {f.name for f in dataclasses.fields(tasks.get(t).Options)}]
            where = f"{name}.{key}" if key in options else f"an option of task {', '.join(owner)}"
            raise UserError(f"config: {part}.{key} is {where} now" +
                            (f"; give it once, as {name}.{key}" if key in options else f", not of task {name}"))
    if "arch" not in (data.get("model") or {}):
        data.setdefault("model", {})["arch"] = tasks.get(name).ARCHS[0]
    return name, section


def _validate(cfg: Config) -> Config:
    """Checks that span several keys; the task checks its own."""
    model = cfg.model
    if model.n_embd % model.n_head:
        raise UserError(f"config: model.n_embd ({model.n_embd}) must be divisible by model.n_head ({model.n_head})")
    if model.n_kv_head and model.n_head % model.n_kv_head:
        raise UserError(f"config: model.n_kv_head ({model.n_kv_head}) must divide model.n_head ({model.n_head}): "
                        f"each key/value head serves a whole group of query heads")
    if model.num_experts and model.experts_per_token > model.num_experts:
        raise UserError(f"config: model.experts_per_token ({model.experts_per_token}) must not exceed "
                        f"model.num_experts ({model.num_experts})")
    if cfg.train.min_lr > cfg.train.lr:
        raise UserError(f"config: train.min_lr ({cfg.train.min_lr}) must not exceed train.lr ({cfg.train.lr})")
    task = tasks.get(cfg.task)
    if model.arch not in task.ARCHS:
        raise UserError(f"config: task {cfg.task} trains model.arch={' or '.join(task.ARCHS)}, not {model.arch}")
    task.check(cfg)
    return cfg


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{str(key)[:60]}'",
                                                        key_node.start_mark)
            seen.add(key) if isinstance(key, typing.Hashable) else None
        return super().construct_mapping(node, deep)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"config file {shown(path, 200)} not found (try one of the files in configs/)")
    if os.path.getsize(path) > MAX_FILE:
        raise UserError(f"config file '{path}' is {os.path.getsize(path):,} bytes; a config is a few KB of YAML")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not UTF-8 text (a YAML config is expected)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file '{path}' is not valid YAML{where}: {shown(problem, 200)}") from None
    return data if data is not None else {}


def apply_override(data: dict, item: str) -> None:
    """Apply one `dotted.key=value` override in place; the value's type is settled against the schema."""
    if "=" not in item:
        raise UserError(f"override {shown(item, 200)} must look like key=value, e.g. train.max_iters=200")
    if len(item) > 2 * MAX_TEXT:
        raise UserError(f"override {shown(item, 60)} is {len(item):,} characters long; values are at most "
                        f"{MAX_TEXT:,}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override {shown(item, 200)} has an empty key part")
    node = data
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"config: {'.'.join(parts[:i + 1])} is a value, not a section")
    node[parts[-1]] = Override(raw)


def from_dict(data: dict, where: str = "the config") -> Config:
    """A validated Config from nested sections (a parsed YAML file with its overrides applied)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a mapping of sections (model:, train:, ...)")
    data = copy.deepcopy(data)
    name, section = _split_task(data)
    cfg = build_section(Config, data)
    cfg.task, cfg.options = name, build_section(tasks.get(name).Options, section, f"{name}.")
    return _validate(cfg)


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- overrides, validated. With no file, the defaults are the char-Shakespeare recipe."""
    data = read_yaml(path) if path else {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections (model:, train:, ...)")
    for item in overrides:
        apply_override(data, item)
    return from_dict(data, f"config file '{path}'")


def save_config(cfg: Config, path: str) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
