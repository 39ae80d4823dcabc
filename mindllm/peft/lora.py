"""LoRA (低秩适配, Hu et al. 2021): freeze a pretrained weight W and learn a low-rank update beside it,

    y = x W + b + (alpha / r) * dropout(x) A^T B^T,     A: (r, in) random, B: (out, r) zeros,

so a fresh adapter leaves the model's output unchanged, training touches r * (in + out) numbers per matrix instead
of in * out, and after training the update can be merged into W (no extra inference cost) or kept apart (one base
model, many small adapters). Names follow Hugging Face peft (`lora_A`, `lora_B` beside the layer's `weight`), and
the base layer's parameter names are unchanged, so checkpoints and `from_hf` still line up.

    apply_lora(model, r=8, alpha=16, targets=("query", "value"))   # freeze everything, adapt q and v
    print(trainable_report(model))
    save_adapter(model, "adapter.safetensors")                       # only the LoRA tensors (+ the head if trained)
"""
from __future__ import annotations

import fnmatch
import math
import os

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from safetensors.numpy import load_file, save_file

from ..checkpoint import load_arrays
from ..errors import UserError
from ..models.layers import Linear, mm_dtype
from ..models.surgery import replace_cells


class LoRALinear(Linear):
    """A mindllm Linear (either weight layout) with a trainable low-rank update; shares the base's Parameters."""

    def __init__(self, base: Linear, r: int, alpha: float, dropout: float = 0.0, rng=None):
        nn.Cell.__init__(self)
        self.weight, self.bias, self.matmul = base.weight, base.bias, base.matmul
        self.compute_dtype = base.compute_dtype
        self.out_in = bool(base.matmul.transpose_b)  # weight stored (out, in) like nn.Linear (BERT) or (in, out)
        n_out, n_in = self.weight.shape if self.out_in else self.weight.shape[::-1]
        rng = rng or np.random.default_rng(0)
        bound = 1.0 / math.sqrt(n_in)  # peft's kaiming_uniform_(a=sqrt(5)) for A
        self.lora_A = Parameter(Tensor(rng.uniform(-bound, bound, (r, n_in)).astype(np.float32)))
        self.lora_B = Parameter(Tensor(np.zeros((n_out, r), np.float32)))
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(p=dropout)
        self.down = ops.MatMul(transpose_b=True)  # x A^T
        self.up = ops.MatMul(transpose_b=True)    # (x A^T) B^T
        self.merged = False

    def construct(self, x):
        y = Linear.construct(self, x)
        if self.merged:
            return y
        shape = x.shape
        h = self.lora_dropout(x.reshape(-1, shape[-1]))
        a, w = mm_dtype(self, h, self.lora_A)
        h = self.down(a, w)
        a, w = mm_dtype(self, h, self.lora_B)
        delta = self.up(a, w).astype(x.dtype) * self.scaling
        return y + delta.reshape(shape[:-1] + (delta.shape[-1],))

    def delta_weight(self) -> np.ndarray:
        """(alpha/r) B A in the base weight's layout."""
        d = self.scaling * (self.lora_B.asnumpy() @ self.lora_A.asnumpy())  # (out, in)
        return d if self.out_in else d.T


def _lora_layers(model):
    return [(n, c) for n, c in model.cells_and_names() if isinstance(c, LoRALinear)]


def apply_lora(model, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, targets=("query", "value"),
               train_also=(), seed: int = 0) -> list[str]:
    """Replace every Linear whose name matches one of `targets` (a last name component like 'query', or a glob
    over the full name like '*.attn.c_attn') by a LoRALinear and freeze all other parameters except those whose
    names start with one of `train_also` (e.g. the new classifier head). Returns the adapted layer names."""
    if r < 1:
        raise UserError(f"LoRA rank r must be >= 1, got {r}")
    rng = np.random.default_rng(seed)

    def adapter(name, cell):
        if not isinstance(cell, Linear) or isinstance(cell, LoRALinear):
            return None
        last = name.rsplit(".", 1)[-1]
        return LoRALinear(cell, r, alpha, dropout, rng) if any(last == t or fnmatch.fnmatch(name, t)
                                                                for t in targets) else None

    names = replace_cells(model, adapter)
    if not names:
        linears = sorted({n.rsplit(".", 1)[-1] for n, c in model.cells_and_names() if isinstance(c, Linear)})
        raise UserError(f"LoRA targets {list(targets)} match no Linear layer; this model has: {', '.join(linears)}")
    for full, p in model.parameters_and_names():
        p.requires_grad = ".lora_" in full or full.startswith(tuple(train_also))
    return names


def merge_lora(model) -> None:
    """Fold every adapter into its weight, W <- W + (alpha/r) B A: same outputs, no extra matmuls."""
    # set_data, not an in-place assign: a decoder compiled before the merge still adds the adapter, and must keep
    # reading the old W (tests/test_lora.py)
    for _, layer in _lora_layers(model):
        if not layer.merged:
            layer.weight.set_data(Tensor(layer.weight.asnumpy() + layer.delta_weight()))
            layer.merged = True


def unmerge_lora(model) -> None:
    """Undo merge_lora: W <- W - (alpha/r) B A, and run the adapter beside W again."""
    for _, layer in _lora_layers(model):
        if layer.merged:
            layer.weight.set_data(Tensor(layer.weight.asnumpy() - layer.delta_weight()))
            layer.merged = False


def adapter_state(model) -> dict:
    """The tensors an adapter file holds: every trainable parameter (the LoRA matrices, a trained head)."""
    return {n: p.asnumpy() for n, p in model.parameters_and_names() if p.requires_grad}


def save_adapter(model, path: str) -> int:
    """Write the trainable tensors only (safetensors, atomically). Returns the file size in bytes."""
    layers = {n: {"r": c.r, "alpha": c.alpha} for n, c in _lora_layers(model)}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(adapter_state(model), tmp, metadata={"lora": str(layers)})
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_adapter(model, path: str) -> None:
    """Load an adapter file into a model that apply_lora was called on with the same settings."""
    arrays = load_file(path)
    load_arrays(model, arrays, path, skip={n for n, _ in model.parameters_and_names() if n not in arrays})


def trainable_report(model) -> str:
    """'trainable params: 73,728 || all params: 22,786,560 || trainable%: 0.3236' (peft's wording)."""
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
