"""A quantized run's Linear layers: int8 (or packed int4) codes with their scales, dequantized on the fly.

    swap_in(model, spec)            # every Linear of the blocks becomes a QuantLinear of the same shape
    quantize_weights(model, spec)   # ... holding the codes of the model's own float weights

The checkpoint of a quantized run stores, per Linear, `weight` (the codes, int8; INT4 packs two codes per byte,
uint8), `weight_scale` and `weight_zero_point` (one per tensor, output channel or group), the names of Hugging
Face's compressed-tensors format. Codes are kept in the (in, out) layout whatever the float layer's layout, so
the matmul sums over axis 0 and INT4 groups run along it. The embedding (tied to the LM head) stays float, as in
LLM.int8() and GPTQ: it is a lookup, and the head's errors land directly on the logits.

This layer rebuilds the float weight, (codes - zero) * scale, then runs the ordinary matmul: the plain formulation,
and the oracle of kernels' FusedQuantLinear, which on CPU multiplies decoding steps straight from the codes. The
Linears' storage shrinks 4x (int8) or ~5x (int4 with its scales); decoding on this CPU is slower than float32's
fused block (measured in `python -m mindllm.bench --quant`).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..errors import UserError
from ..models.layers import Linear
from ..models.surgery import replace_cells
from .schemes import quantize

SCHEMES = {  # --scheme -> how schemes.quantize is called
    "per_tensor": dict(granularity="tensor"),
    "per_channel": dict(granularity="channel"),
    "group": dict(granularity="group"),
}


def check_spec(spec: dict) -> None:
    """Refuse what the schemes cannot do, in one line each."""
    if spec["bits"] not in (4, 8):
        raise UserError(f"--bits {spec['bits']}: only 8 (int8) and 4 (int4, in groups) are supported")
    if spec["scheme"] not in SCHEMES:
        raise UserError(f"--scheme {spec['scheme']!r}: choose one of {', '.join(SCHEMES)}")
    if spec["bits"] == 4 and spec["scheme"] != "group":
        raise UserError("--bits 4 needs --scheme group: 15 levels cannot cover a whole row's range")
    if spec["scheme"] == "group" and (spec.get("group_size", 0) < 2 or spec["group_size"] % 2):
        raise UserError(f"--group-size {spec.get('group_size')}: use an even number such as 32 or 64")


def _pack4(q: np.ndarray) -> np.ndarray:
    """int4 codes in [-8, 7] (in, out) -> uint8 (in/2, out): row i in the low nibble, row i + in/2 in the high."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    half = q.shape[0] // 2
    return u[:half] | (u[half:] << 4)


class QuantLinear(Linear):
    """y = x @ ((codes - zero) * scale) + bias. The codes and scales are Parameters that never train."""

    def __init__(self, base: Linear, spec: dict):
        nn.Cell.__init__(self)
        out_in = bool(base.matmul.transpose_b)
        n_in, n_out = base.weight.shape[::-1] if out_in else base.weight.shape
        g = spec.get("group_size", 0) if spec["scheme"] == "group" else n_in
        if n_in % g:
            raise UserError(f"--group-size {g} does not divide a layer's input size {n_in}")
        self.bits, self.n_in, self.n_out, self.groups = spec["bits"], n_in, n_out, n_in // g
        per = (self.groups, 1, n_out if spec["scheme"] != "per_tensor" else 1)  # one scale per block
        rows = n_in // 2 if self.bits == 4 else n_in
        self.weight = Parameter(Tensor(np.zeros((rows, n_out), np.uint8 if self.bits == 4 else np.int8)),
                                requires_grad=False)
        self.weight_scale = Parameter(Tensor(np.ones(per, np.float32)), requires_grad=False)
        self.weight_zero_point = Parameter(Tensor(np.zeros(per, np.float32)), requires_grad=False)
        self.bias = base.bias
        self.matmul = ops.MatMul()
        self.compute_dtype = ms.float32
        self.out_in = out_in

    def codes(self):
        """The codes as float (in, out); INT4 unpacked with integer arithmetic (no bitwise kernels needed)."""
        if self.bits == 8:
            return self.weight.astype(ms.float32)
        u = self.weight.astype(ms.int32)
        high = ops.floor_div(u, 16)
        low = u - high * 16
        return ops.concat((low, high), 0).astype(ms.float32) - 8.0

    def dequantized(self):
        q = self.codes().reshape(self.groups, self.n_in // self.groups, self.n_out)  # (G, g, out)
        return ((q - self.weight_zero_point) * self.weight_scale).reshape(self.n_in, self.n_out)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.dequantized())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (y.shape[-1],))

    def set_from(self, w_in_out: np.ndarray, spec: dict) -> dict:
        """Quantize a float (in, out) weight into this layer; returns the error statistics."""
        t = quantize(w_in_out, bits=self.bits, symmetric=spec.get("symmetric", True),
                     group_size=spec.get("group_size", 128), axis=1, **SCHEMES[spec["scheme"]])
        self.weight_scale.set_data(Tensor(np.asarray(t.scale, np.float32).reshape(self.weight_scale.shape)))
        self.weight_zero_point.set_data(Tensor(np.asarray(t.zero, np.float32).reshape(self.weight_zero_point.shape)))
        self.weight.set_data(Tensor(_pack4(t.q) if self.bits == 4 else t.q))
        err = self.dequantized().asnumpy() - w_in_out
        return {"max_abs_error": float(np.abs(err).max()), "rel_error": float(np.linalg.norm(err) /
                                                                               max(np.linalg.norm(w_in_out), 1e-12))}


def _is_plain_linear(cell) -> bool:
    # the exact layer and its fused twin (same weights); LoRA's subclass is merged before quantizing
    return isinstance(cell, Linear) and type(cell).__name__ in ("Linear", "FusedLinear")


def swap_in(model, spec: dict) -> list[str]:
    """Replace every Linear of `model` by an empty QuantLinear of its shape (for loading a quantized checkpoint)."""
    check_spec(spec)
    return replace_cells(model, lambda name, cell: QuantLinear(cell, spec) if _is_plain_linear(cell) else None)


def quantize_weights(model, spec: dict) -> dict:
    """Quantize the float Linears of `model` in place; returns {layer name: error statistics}."""
    floats = {name: cell.weight.asnumpy() for name, cell in model.cells_and_names() if _is_plain_linear(cell)}
    swap_in(model, spec)
    stats = {}
    for name, cell in model.cells_and_names():
        if isinstance(cell, QuantLinear):
            w = floats[name]
            stats[name] = cell.set_from(w.T if cell.out_in else w, spec)
    return stats
