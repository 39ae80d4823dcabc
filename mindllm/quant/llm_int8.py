"""LLM.int8() (Dettmers et al. 2022): an int8 matrix product that keeps the few outlier feature dimensions in float.

    y, outliers = int8_matmul(x, w, threshold=6.0)   # x (N, in) activations, w (in, out) weights

Large models grow a handful of hidden dimensions whose activations reach 20-60 while the rest stay near 1. With one
absmax scale per row of x, such a dimension makes every other value of its row round to a few levels. The fix splits
the product along the inner dimension: the columns of x where any |x| exceeds `threshold` (and the same rows of w)
multiply in float; the rest are quantized vector-wise (a scale per row of x, per column of w), multiplied in integers
with int32 sums, and scaled back by the outer product of the two scale vectors.
"""
from __future__ import annotations

import numpy as np


def absmax_rows(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and scales, one scale per slice along `axis` (rows of x: axis=1; columns of w: axis=0)."""
    scale = np.maximum(np.abs(a).max(axis=axis, keepdims=True), 1e-12) / 127.0
    return np.clip(np.round(a / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def int8_matmul(x, w, threshold: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """(x @ w computed as LLM.int8() does, the indices of the outlier dimensions); threshold=inf: no decomposition."""
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    outliers = np.flatnonzero(np.abs(x).max(axis=0) > threshold)
    regular = np.setdiff1d(np.arange(x.shape[1]), outliers)
    xq, sx = absmax_rows(x[:, regular], axis=1)          # (N, r), (N, 1)
    wq, sw = absmax_rows(w[regular], axis=0)             # (r, out), (1, out)
    y = (xq.astype(np.int32) @ wq.astype(np.int32)).astype(np.float32) * sx * sw
    return y + x[:, outliers] @ w[outliers], outliers
