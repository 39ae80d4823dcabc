"""Checkpoints: safetensors files written atomically, with a `latest` pointer that only ever names a
complete checkpoint.

    out_dir/ckpt/step_0000500/{model.safetensors, optimizer.safetensors, state.json}
    out_dir/ckpt/latest        -> "step_0000500"

A checkpoint is written to a temporary directory, fsynced, then renamed into place, and `latest` is replaced
last; an interrupted save leaves the previous checkpoint as `latest`. state.json records a SHA-256 of each file
so a damaged checkpoint is detected on load instead of silently training on garbage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from .errors import UserError


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def named_arrays(cell, skip=()) -> dict:
    return {name: p.asnumpy() for name, p in cell.parameters_and_names() if name not in skip}


def optimizer_skip(optimizer, model_names) -> set:
    """Optimizer entries that are not its state: the model's own weights, and the learning-rate table, which
    is rebuilt from the config (so a resumed run may extend max_iters)."""
    return set(model_names) | {n for n, _ in optimizer.parameters_and_names() if n.startswith("learning_rate")}


def save_checkpoint(ckpt_dir: str, step: int, model, optimizer, state: dict, keep: int = 2) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    name = f"step_{step:07d}"
    final, tmp = os.path.join(ckpt_dir, name), os.path.join(ckpt_dir, f".tmp_{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model_arrays = named_arrays(model)
    files = {"model.safetensors": model_arrays,
             # the optimizer also lists the model's weights; store only its own state (moments, global_step)
             "optimizer.safetensors": named_arrays(optimizer, skip=optimizer_skip(optimizer, model_arrays))}
    state = dict(state, step=step, files={})
    for fname, arrays in files.items():
        path = os.path.join(tmp, fname)
        save_file(arrays, path)
        _fsync(path)
        state["files"][fname] = _sha256(path)
    write_text_atomic(os.path.join(tmp, "state.json"), json.dumps(state, indent=1))
    if os.path.exists(final):  # re-saving the same step (e.g. a resumed run's final save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(os.path.join(ckpt_dir, "latest"), name + "\n")
    _prune(ckpt_dir, keep, protect=name)
    return final


def _prune(ckpt_dir: str, keep: int, protect: str) -> None:
    steps = sorted(d for d in os.listdir(ckpt_dir) if d.startswith("step_"))
    for d in steps[:-keep]:
        if d != protect:
            shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)


def latest_checkpoint(ckpt_dir: str) -> str | None:
    pointer = os.path.join(ckpt_dir, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as fh:
        path = os.path.join(ckpt_dir, fh.read().strip())
    if not os.path.isdir(path):
        raise UserError(f"checkpoint pointer '{pointer}' names '{path}', which does not exist")
    return path


def read_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(model arrays, optimizer arrays, state) of a checkpoint directory, verified against its checksums."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        arrays = {}
        for fname, digest in state["files"].items():
            fpath = os.path.join(path, fname)
            if _sha256(fpath) != digest:
                raise ValueError(f"{fname} does not match its checksum")
            arrays[fname] = load_file(fpath)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"checkpoint '{path}' is corrupt or incomplete ({e}); delete it and point "
                        f"'{os.path.join(os.path.dirname(path), 'latest')}' at an earlier step") from None
    return arrays["model.safetensors"], arrays.get("optimizer.safetensors", {}), state


def load_arrays(cell, arrays: dict, where: str, skip=()) -> None:
    """Copy named arrays into a cell's parameters (except those named in `skip`), checking names and shapes."""
    params = {n: p for n, p in cell.parameters_and_names() if n not in skip}
    missing = [n for n in params if n not in arrays]
    if missing:
        raise UserError(f"{where} lacks {len(missing)} parameter(s) of this model, e.g. '{missing[0]}'; "
                        f"was it saved by a different model config?")
    for name, arr in arrays.items():
        if name not in params:
            raise UserError(f"{where} has parameter '{name}' that this model does not have")
        p = params[name]
        if tuple(p.shape) != tuple(arr.shape):
            raise UserError(f"{where}: '{name}' has shape {tuple(arr.shape)} but the model expects "
                            f"{tuple(p.shape)}; use the model config the checkpoint was trained with")
        p.set_data(Tensor(np.ascontiguousarray(arr), dtype=p.dtype))
