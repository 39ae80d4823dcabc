"""Choose the backend (CPU/GPU/Ascend), execution mode and threads, and seed every RNG."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import mindspore as ms

from .config import ContextConfig
from .errors import UserError

_TARGETS = ("Ascend", "GPU", "CPU")


def available(target: str) -> bool:
    """Whether this MindSpore install can run on `target` (checks drivers/plugins, not just the name)."""
    if target == "CPU":
        return True
    # hal.is_available prints a multi-line warning about missing plugins: keep it off the student's screen.
    logger = logging.getLogger("mindspore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return bool(ms.hal.is_available(target))
    except Exception:
        return False
    finally:
        logger.setLevel(level)


def resolve_target(target: str) -> str:
    """`auto` -> the first available of Ascend, GPU, CPU; an explicit target must be available."""
    if target == "auto":
        return next(t for t in _TARGETS if available(t))
    if target not in _TARGETS:
        raise UserError(f"unknown device '{target}': use context.device_target=auto, CPU, GPU or Ascend")
    if not available(target):
        raise UserError(f"context.device_target={target} but this machine/MindSpore install has no usable "
                        f"{target} backend; use context.device_target=CPU (or auto)")
    return target


def setup(context, seed: int) -> str:
    """Apply a ContextConfig and seed Python, NumPy and MindSpore. Returns the device target in use."""
    target = resolve_target(context.device_target)
    if target == "CPU":
        # Synchronous host execution: for the small graphs of this course it cuts CPU step time ~3x (measured).
        os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
    ms.set_device(target)
    # Steps are compiled explicitly with mindspore.jit (see train.py); the global mode stays PyNative so
    # notebook cells can still step through code op by op.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    if context.num_threads and target == "CPU":
        ms.device_context.cpu.op_tuning.threads_num(context.num_threads)
    seed_everything(seed)
    return target


def context_for(target: str):
    """A ContextConfig for tools that take only --device (sampling, evaluation)."""
    return ContextConfig(device_target=target)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
