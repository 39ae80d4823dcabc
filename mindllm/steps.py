"""The update of one training step, compiled: forward, backward, (all-reduce,) clip, optimizer."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


def clip_by_global_norm(grads, max_norm: float):
    """torch.nn.utils.clip_grad_norm_: (the global L2 norm of all gradients, the gradients scaled so that it is at
    most max_norm). max_norm <= 0 measures the norm and scales nothing. On CPU, `kernels.clip_by_global_norm()` is
    this in one kernel."""
    norm = ops.sqrt(ops.addn([ops.reduce_sum(g * g) for g in grads]))
    if max_norm > 0:
        scale = ops.minimum(1.0, max_norm / (norm + 1e-6))
        grads = tuple(g * scale for g in grads)
    return norm, grads


class TrainSteps:
    """`step(*batch)`: forward, backward, clip and update in one graph -> (loss, pre-clip global gradient norm).
    For gradient accumulation: `grads(*batch)` -> (loss, gradients), `accumulate(a, b)` -> a + b, and
    `apply(grads, scale)` -> the norm, after updating with grads * scale.

    With a `scaler` (fp16 mixed precision) the loss is multiplied by the loss scale before backward so small
    gradients survive float16; gradients are divided back, and a step whose gradients overflowed is skipped while
    the scaler lowers its scale (dynamic loss scaling).

    Under data parallelism `grad_reducer` averages the gradients across ranks before clipping, so every rank clips
    the same global norm and the replicas stay identical; the returned loss is this rank's own.

    `clip` is the global-norm clipping function: clip_by_global_norm's contract, e.g. the fused CPU kernel's."""

    def __init__(self, loss_fn, optimizer, *, grad_clip: float, compile_: bool = True, scaler=None,
                 grad_reducer=None, clip=clip_by_global_norm):
        def scaled_loss(*batch):
            loss = loss_fn(*batch)
            return scaler.scale(loss) if scaler is not None else loss

        grad_fn = ms.value_and_grad(scaled_loss, None, optimizer.parameters)
        reduce_grads = grad_reducer if grad_reducer is not None else nn.Identity()  # (graph mode: no lambda here)

        def clip_and_update(grads):
            grads = reduce_grads(grads)
            finite = True
            if scaler is not None:
                grads = scaler.unscale(grads)
                finite = ms.amp.all_finite(grads)
                scaler.adjust(finite)
            norm, grads = clip(grads, grad_clip)
            if finite:
                optimizer(grads)
            return norm

        def unscaled(loss):
            return scaler.unscale(loss) if scaler is not None else loss

        def step(*batch):
            loss, grads = grad_fn(*batch)
            return unscaled(loss), clip_and_update(grads)

        def grads(*batch):
            loss, g = grad_fn(*batch)
            return unscaled(loss), g

        def accumulate(a, b):
            return tuple(u + v for u, v in zip(a, b))

        def apply(grads, scale):
            return clip_and_update(tuple(g * scale for g in grads))

        wrap = ms.jit if compile_ else (lambda f: f)
        self.step, self.grads = wrap(step), wrap(grads)
        # a tuple of Tensors passed to a compiled function is a constant of the graph unless marked mutable: every
        # new set of gradients recompiled these two (measured: 15 s per accumulated step instead of 0.4 s)
        self._accumulate, self._apply = wrap(accumulate), wrap(apply)

    def accumulate(self, a, b):
        return self._accumulate(ms.mutable(a), ms.mutable(b))

    def apply(self, grads, scale):
        return self._apply(ms.mutable(grads), scale)
