"""The run directory: what `python -m mindllm.train` writes, opened and rebuilt in one place.

    out_dir/config.yaml      the resolved configuration (its `task:` says what was trained)
    out_dir/tokenizer.json   the exact tokenizer of the model
    out_dir/ckpt/            checkpoints (checkpoint.py); each state.json records the SHA-256 of tokenizer.json
    out_dir/metrics.jsonl    one record per logged step
    out_dir/.lock            held by the training process that writes here

    model, tokenizer, cfg = load_model("runs/gpt_char_shakespeare")   # a language model, for sampling
    task, cfg = load_trained("runs/bert_cls_reviews_zh")                # any run, its data and evaluation too
"""
from __future__ import annotations

import fcntl
import json
import os

from . import kernels, tasks
from .checkpoint import latest_checkpoint, load_arrays, read_checkpoint, read_state
from .config import Config, from_dict, read_yaml
from .data import load_tokenizer
from .errors import UserError
from .files import sha256
from .quant import layers as quant_layers

CONFIG, TOKENIZER, METRICS, LOCK = "config.yaml", "tokenizer.json", "metrics.jsonl", ".lock"


def ckpt_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "ckpt")


def locate(path: str) -> tuple[str, str]:
    """(run directory, checkpoint directory) of a run's out_dir (its latest checkpoint) or of one ckpt/step_* dir."""
    if os.path.isfile(os.path.join(path, "state.json")):
        return os.path.dirname(os.path.dirname(os.path.abspath(path))), path
    if not os.path.isdir(path):
        raise UserError(f"run '{path}' not found: give a training out_dir or one of its ckpt/step_* directories")
    ckpt = latest_checkpoint(ckpt_dir(path))
    if ckpt is None:
        raise UserError(f"'{path}' has no checkpoint yet (no ckpt/latest); train first: "
                        f"python -m mindllm.train out_dir={path}")
    return path, ckpt


def read_config(out_dir: str) -> Config:
    """The run's config.yaml; out_dir is where the run is now (it may have been moved since)."""
    cfg = from_dict(read_yaml(os.path.join(out_dir, CONFIG)), f"'{os.path.join(out_dir, CONFIG)}'")
    cfg.out_dir = out_dir
    return cfg


def tokenizer_fingerprint(out_dir: str) -> dict:
    """What a checkpoint records of the run's files besides its own: the tokenizer's SHA-256."""
    path = os.path.join(out_dir, TOKENIZER)
    return {"tokenizer_sha256": sha256(path)} if os.path.exists(path) else {}


def verify_files(out_dir: str, state: dict, ckpt: str) -> None:
    """Refuse a tokenizer.json that is not the one the checkpoint was trained with (hand-edited, replaced)."""
    want = state.get("tokenizer_sha256")
    if want and tokenizer_fingerprint(out_dir).get("tokenizer_sha256") != want:
        raise UserError(f"'{os.path.join(out_dir, TOKENIZER)}' is not the tokenizer '{ckpt}' was trained with "
                        f"(its SHA-256 differs); restore the run's own tokenizer.json")


# config sections and keys that make a run what it is: a resume must not change them
IDENTITY = ("task", "model", "peft", "data")


def check_same_run(cfg: Config, saved: dict, where: str) -> None:
    """A resume continues the run in `where`: refuse settings that would train something else than it did."""
    before = from_dict(saved, f"'{where}'").to_dict()
    now = cfg.to_dict()
    for section in IDENTITY + (cfg.task,):
        old, new = before.get(section), now.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in old:
                if key != "test_examples" and old[key] != new.get(key):
                    raise UserError(f"resume=true: {section}.{key}={new.get(key)!r} but the run in '{where}' was "
                                    f"trained with {old[key]!r}; resume with the run's own settings or train into "
                                    f"a new out_dir")
        elif old != new:
            raise UserError(f"resume=true: {section}={new!r} but the run in '{where}' is {section}={old!r}; "
                            f"train into a new out_dir")


def restore(model, out_dir: str, ckpt: str) -> dict:
    """Load a checkpoint's weights into a freshly built model; returns its state. A quantized run (written by
    `python -m mindllm.quant`, its state.json says how) first gets its Linears swapped for quantized ones."""
    weights, _, state = read_checkpoint(ckpt)
    verify_files(out_dir, state, ckpt)
    if state.get("quant"):
        quant_layers.swap_in(model, state["quant"])
    load_arrays(model, weights, ckpt)
    return state


def require_float(path: str, purpose: str) -> None:
    """Refuse a quantized run where training would start from it: its int8 weights do not train."""
    state = read_state(locate(path)[1])
    if state.get("quant"):
        raise UserError(f"'{path}' is a quantized run (for inference); {purpose} from the float run it was made "
                        f"from: {state.get('quantized_from', 'see its ckpt state.json')}")


def load_model(path: str):
    """(model, tokenizer, config) of a language-model run (out_dir or a ckpt/step_* dir), in eval mode."""
    out_dir, ckpt = locate(path)
    cfg = read_config(out_dir)
    task = tasks.get(cfg.task)
    if not task.SAMPLES:
        raise UserError(f"'{path}' is a {cfg.task} run; text generation needs a language model (a causal_lm or "
                        f"instruct run)")
    tokenizer = load_tokenizer(os.path.join(out_dir, TOKENIZER))
    model = task.language_model(cfg, tokenizer)
    restore(model, out_dir, ckpt)
    model.set_train(False)
    return model, tokenizer, cfg


def load_trained(out_dir: str, cfg: Config | None = None):
    """(task, config) of a finished run, the model holding the latest checkpoint's weights (for notebooks and
    evaluation): the task is rebuilt from the run's own config.yaml and tokenizer."""
    run_dir, ckpt = locate(out_dir)
    cfg = cfg or read_config(run_dir)
    cfg.out_dir, cfg.resume = run_dir, True  # resume: reuse the run's tokenizer file instead of training a new one
    task = tasks.build(cfg)
    restore(task.model, run_dir, ckpt)
    kernels.fuse(task.model)  # as training ran it (on CPU)
    task.model.set_train(False)
    return task, cfg


class RunLock:
    """out_dir/.lock, held (flock) by the process training into out_dir; a second training there is refused.
    The kernel releases the lock when its holder dies, so a killed run's lock is simply taken over."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOCK)
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 100, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UserError(f"'{os.path.dirname(self.path)}' is in use by a training run ({holder}); wait for it "
                            f"to finish or choose another out_dir") from None
        except OSError as e:
            raise UserError(f"cannot lock '{self.path}' ({e.strerror})") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing releases the flock


class Metrics:
    """out_dir/metrics.jsonl, one JSON object per logged step; a resumed run first drops records after its
    checkpoint so the file reads like one uninterrupted run. Only the writing rank (`owner`) touches the file."""

    def __init__(self, out_dir: str, resume_step: int | None, owner: bool = True):
        self.path = os.path.join(out_dir, METRICS)
        if not owner:
            return
        kept = []
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as fh:
                kept = [line for line in fh if line.strip() and json.loads(line)["step"] <= resume_step]
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.writelines(kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
