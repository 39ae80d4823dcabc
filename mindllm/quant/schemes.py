"""Round-to-nearest weight quantization: a float matrix becomes small integers and a scale (and a zero point).

    q = quantize(w, bits=8, granularity="channel", axis=1)   # one scale per output channel (GPT-2's (in, out))
    w_hat = dequantize(q)                                     # |w - w_hat| <= scale / 2 wherever w is in range

Symmetric (absmax): scale = max|w| / (2^(b-1) - 1), q = round(w / scale), zero = 0.
Asymmetric (zero point): scale = (max - min) / (2^b - 1), q = round(w / scale) + zero, with zero chosen so that min
maps to the lowest code; it uses the whole code range when the weights are not centred on 0.
Granularity: one scale for the tensor, one per channel (along `axis`), or one per group of `group_size`
consecutive values along the other axis (INT4 needs groups: 15 levels cannot cover a whole row's range).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRANULARITIES = ("tensor", "channel", "group")


@dataclass
class Quantized:
    q: np.ndarray        # int8 codes, the shape of the weight (INT4 codes also held in int8)
    scale: np.ndarray    # float32, broadcastable to q's shape (after groups are expanded)
    zero: np.ndarray     # int32, like scale (0 when symmetric)
    bits: int
    group_size: int = 0  # > 0: scale and zero hold one value per group along axis 0
    shape: tuple = ()

    def nbytes(self) -> int:
        """Storage: codes at `bits` each, plus float32 scales and (when used) int8 zero points."""
        codes = (self.q.size * self.bits + 7) // 8
        return codes + self.scale.size * 4 + (self.zero.size if np.any(self.zero) else 0)


def _ranges(w: np.ndarray, granularity: str, axis: int, group_size: int):
    """(min, max) over each block that shares a scale, shaped to broadcast against w (groups: reshaped w)."""
    if granularity == "tensor":
        return w.min(keepdims=True), w.max(keepdims=True)
    if granularity == "channel":
        other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        return w.min(axis=other, keepdims=True), w.max(axis=other, keepdims=True)
    return w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)  # groups: w reshaped (G, group_size, out)


def quantize(w, bits: int = 8, granularity: str = "channel", axis: int = 1, symmetric: bool = True,
             group_size: int = 128) -> Quantized:
    """Quantize a 2-D weight (in, out); `axis` is the output-channel axis for granularity="channel"; groups run
    along axis 0 (the input dimension, the one a matmul sums over) with one scale per (group, output column)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
    w = np.asarray(w, np.float32)
    shape, g = w.shape, 0
    if granularity == "group":
        g = group_size
        if w.ndim != 2 or w.shape[0] % g:
            raise ValueError(f"groups of {g} need a 2-D weight whose first dimension divides by {g}; got {w.shape}")
        w = w.reshape(w.shape[0] // g, g, w.shape[1])
    lo, hi = _ranges(w, granularity, axis, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1                              # 127: -128 is left out so that 0 stays exact
        scale = np.maximum(np.maximum(-lo, hi), 1e-12) / qmax
        zero = np.zeros_like(scale, dtype=np.int32)
        q = np.clip(np.round(w / scale), -qmax, qmax)
    else:
        qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1     # the whole range: [-128, 127]
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)           # 0 must be representable (padding, ReLU zeros)
        scale = np.maximum(hi - lo, 1e-12) / (qmax - qmin)
        zero = (qmin - np.round(lo / scale)).astype(np.int32)
        q = np.clip(np.round(w / scale) + zero, qmin, qmax)
    return Quantized(q.astype(np.int8).reshape(shape), scale.astype(np.float32), zero, bits, g, shape)


def dequantize(t: Quantized) -> np.ndarray:
    """The float weight the codes stand for: (q - zero) * scale."""
    q = t.q.astype(np.float32)
    if t.group_size:
        q = q.reshape(t.shape[0] // t.group_size, t.group_size, t.shape[1])
    return ((q - t.zero) * t.scale).reshape(t.shape).astype(np.float32)
