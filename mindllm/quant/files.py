"""A quantized run on disk: the float run's config and tokenizer beside one checkpoint of the quantized model."""
from __future__ import annotations

import os
import shutil

from .. import runs
from ..checkpoint import save_checkpoint


def write_run(out: str, run_dir: str, model, state: dict) -> str:
    """The quantized run: the float run's config and tokenizer, and one checkpoint of the quantized model."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in (runs.CONFIG, runs.TOKENIZER):
        if os.path.exists(os.path.join(run_dir, name)):
            shutil.copy2(os.path.join(run_dir, name), os.path.join(out, name))
    return save_checkpoint(runs.ckpt_dir(out), state.get("step", 0), model, None,
                           {**runs.tokenizer_fingerprint(out), **state})


def size(path: str) -> int:
    return os.path.getsize(os.path.join(path, "model.safetensors"))
