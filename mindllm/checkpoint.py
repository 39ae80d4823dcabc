"""Checkpoints: safetensors files written atomically, with a `latest` pointer that only ever names a
complete checkpoint.

    out_dir/ckpt/step_0000500/{model.safetensors, optimizer.safetensors, state.json}
    out_dir/ckpt/latest        -> "step_0000500"

A checkpoint is written to a temporary directory, fsynced, then renamed into place, and `latest` is replaced
last; an interrupted save leaves the previous checkpoint as `latest`. state.json records a SHA-256 of each file
so a damaged checkpoint is detected on load instead of silently training on garbage.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
from mindspore import Tensor, ops
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .errors import UserError
from .files import fsync, sha256, write_text_atomic


def named_arrays(cell, skip=()) -> dict:
    return {name: p.asnumpy() for name, p in cell.parameters_and_names() if name not in skip}


def optimizer_skip(optimizer, model_names) -> set:
    """Optimizer entries that are not its state: the model's own weights, and the learning-rate table, which
    is rebuilt from the config (so a resumed run may extend max_iters)."""
    return set(model_names) | {n for n, _ in optimizer.parameters_and_names() if n.startswith("learning_rate")}


def save_checkpoint(ckpt_dir: str, step: int, model, optimizer, state: dict, keep: int = 2) -> str:
    """Write step `step` and point `latest` at it. Raises UserError (the temporary directory removed) when the
    disk refuses the write; `latest` then still names the previous checkpoint."""
    os.makedirs(ckpt_dir, exist_ok=True)
    name = f"step_{step:07d}"
    final, tmp = os.path.join(ckpt_dir, name), os.path.join(ckpt_dir, f".tmp_{name}")
    if _complete(final):  # the same step again (a resumed run that had nothing left to do): keep the copy on disk
        write_text_atomic(os.path.join(ckpt_dir, "latest"), name + "\n")
        return final
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, model, optimizer, dict(state, step=step))
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write checkpoint step {step} to '{ckpt_dir}' ({_reason(e)}); free disk space, "
                        f"then continue with resume=true") from None
    if os.path.exists(final):  # a damaged copy of this step: set it aside first, so some copy is complete
        aside = os.path.join(ckpt_dir, f".old_{name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync(ckpt_dir)
    write_text_atomic(os.path.join(ckpt_dir, "latest"), name + "\n")
    _prune(ckpt_dir, keep, protect=name)
    return final


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0][:200]


def _write(tmp: str, model, optimizer, state: dict) -> None:
    os.makedirs(tmp)
    model_arrays = named_arrays(model)
    files = {"model.safetensors": model_arrays}
    if optimizer is not None:  # None: a model that does not train on (a quantized run)
        # the optimizer also lists the model's weights; store only its own state (moments, global_step)
        files["optimizer.safetensors"] = named_arrays(optimizer, skip=optimizer_skip(optimizer, model_arrays))
    state["files"] = {}
    for fname, arrays in files.items():
        path = os.path.join(tmp, fname)
        save_file(arrays, path)
        fsync(path)
        state["files"][fname] = sha256(path)
    write_text_atomic(os.path.join(tmp, "state.json"), json.dumps(state, indent=1))


def _prune(ckpt_dir: str, keep: int, protect: str) -> None:
    steps = sorted(d for d in os.listdir(ckpt_dir) if d.startswith("step_"))
    for d in steps[:-keep]:
        if d != protect:
            shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)


def _load_state(path: str):
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"state.json unreadable: {_reason(e)}") from None


def _verify(path: str) -> dict:
    """state.json of a checkpoint directory whose every file matches its recorded SHA-256; ValueError otherwise."""
    state = _load_state(path)
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise ValueError("state.json lists no model.safetensors")
    for fname, digest in files.items():
        fpath = os.path.join(path, str(fname))
        try:
            ok = sha256(fpath) == digest
        except OSError as e:
            raise ValueError(f"{fname}: {_reason(e)}") from None
        if not ok:
            raise ValueError(f"{fname} does not match its checksum")
    return state


def _complete(path: str) -> bool:
    try:
        return os.path.isdir(path) and bool(_verify(path))
    except ValueError:
        return False


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The checkpoint `latest` names. If the pointer is missing, empty or names a directory that is gone (a save
    killed at the wrong moment), recover: the newest complete checkpoint (a finished temporary copy of a step is
    renamed into place), and the pointer is rewritten. None if the directory holds no complete checkpoint."""
    if not os.path.isdir(ckpt_dir):
        return None
    pointer = os.path.join(ckpt_dir, "latest")
    try:
        with open(pointer, encoding="utf-8") as fh:
            name = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if re.fullmatch(r"step_\d+", name) and os.path.isdir(os.path.join(ckpt_dir, name)):
        return os.path.join(ckpt_dir, name)
    return _recover(ckpt_dir, pointer, name)


def _recover(ckpt_dir: str, pointer: str, named: str) -> str | None:
    found = {}
    for d in os.listdir(ckpt_dir):
        m = re.fullmatch(r"(\.tmp_|\.old_)?(step_\d+)", d)
        # the step's own directory wins over a temporary copy of it
        if m and (m.group(2) not in found or m.group(1) is None) and _complete(os.path.join(ckpt_dir, d)):
            found[m.group(2)] = d
    if not found:
        if named or os.path.exists(pointer):
            print(f"warning: '{pointer}' names '{named}', and no complete checkpoint is left beside it",
                  file=sys.stderr)
        return None
    name = max(found)
    if found[name] != name:
        os.replace(os.path.join(ckpt_dir, found[name]), os.path.join(ckpt_dir, name))
    write_text_atomic(pointer, name + "\n")
    what = f"named '{named}', which is missing" if named else "was missing or empty"
    print(f"note: '{pointer}' {what}; recovered the newest complete checkpoint, {name}", file=sys.stderr)
    return os.path.join(ckpt_dir, name)


def clean_partial_saves(ckpt_dir: str) -> None:
    """Remove what killed or failed saves left behind (after latest_checkpoint has recovered what it could)."""
    if os.path.isdir(ckpt_dir):
        for d in os.listdir(ckpt_dir):
            if d.startswith((".tmp_step_", ".old_step_")):
                shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)


def read_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(model arrays, optimizer arrays, state) of a checkpoint directory, verified against its checksums."""
    try:
        state = _verify(path)
        arrays = {fname: load_file(os.path.join(path, fname)) for fname in state["files"]}
    except (ValueError, OSError, SafetensorError) as e:
        raise UserError(f"checkpoint '{path}' is corrupt or incomplete ({_reason(e)}); resume or sample from an "
                        f"earlier step_* directory beside it") from None
    return arrays["model.safetensors"], arrays.get("optimizer.safetensors", {}), state


def read_state(path: str) -> dict:
    """A checkpoint's state.json alone (its step, how it was quantized), without reading its arrays: for the checks
    made before loading; read_checkpoint verifies every file when the weights are loaded."""
    try:
        state = _load_state(path)
        if not isinstance(state, dict):
            raise ValueError("state.json is not a record")
    except ValueError as e:
        raise UserError(f"checkpoint '{path}' is corrupt or incomplete ({e}); resume or sample from an earlier "
                        f"step_* directory beside it") from None
    return state


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
        value = Tensor(np.ascontiguousarray(arr), dtype=p.dtype)
        if p.has_init:  # not materialised yet: nothing can have compiled over it
            p.set_data(value)
        else:  # in place: a graph compiled over p (a decoder) would keep reading the old tensor after set_data
            ops.assign(p, value)
