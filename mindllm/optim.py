"""AdamW with decay/no-decay parameter groups, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

from mindspore import nn


def lr_at(it: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup to `lr`, cosine decay to `min_lr` at `decay_iters`, then constant (nanoGPT's schedule)."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def lr_schedule(train) -> list[float]:
    """One learning rate per optimizer step of a TrainConfig's run."""
    decay = train.lr_decay_iters or train.max_iters
    return [lr_at(i, train.lr, train.min_lr, train.warmup_iters, decay) for i in range(max(1, train.max_iters))]


def build_optimizer(model, train):
    """AdamW; matrices (dim >= 2: Linear weights, embeddings) decay, biases and LayerNorm gains do not.

    The schedule is a per-step list, so MindSpore indexes it by the optimizer's own `global_step`, which is saved
    with the optimizer state: a resumed run continues on the same learning rate.
    """
    params = model.trainable_params()
    groups = [{"params": [p for p in params if len(p.shape) >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if len(p.shape) < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # e.g. LoRA trains matrices only; MindSpore rejects empty groups
    return nn.AdamWeightDecay(groups, learning_rate=lr_schedule(train), beta1=train.beta1, beta2=train.beta2,
                              eps=1e-8)
