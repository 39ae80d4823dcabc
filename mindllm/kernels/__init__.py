"""Fused CPU kernels: the speed tricks of mindllm, all in this one place.

On CPU, MindSpore runs LayerNorm, GELU, the masked softmax and the bias gradients of the models as chains of small
ops, each a pass over memory plus a launch; their gradients add reductions over rows that its CPU ReduceSum does
slowly (profiled: 21 ms of a 97 ms nanoGPT-shape step were ReduceSum). `cpu_kernels.cc` does each in one
vectorised pass, forward and backward, called through `ops.Custom(func_type="aot")`; for decoding, a whole GPT
block with its KV cache is one kernel; for training, the global-norm gradient clip over every gradient is one
kernel (`clip_by_global_norm()`, given to TrainSteps). What each bought: docs/performance.md.

The models themselves are plain MindSpore (models/); `fuse(model)` swaps their layers for the fused ones of
fused.py after construction, sharing the Parameters, the way `apply_lora` swaps in adapters. Training and sampling
call it; on GPU/Ascend, without a compiler or with `MINDLLM_KERNELS=plain` it leaves the model as it is. The
library is compiled on first use with the system's g++ and cached by the hash of the source, flags and CPU
(`$MINDLLM_CACHE`, default ~/.cache/mindllm). The plain layers are the oracle the kernels are tested against
(tests/test_kernels.py).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile

import mindspore as ms
from mindspore import ops

from ..errors import UserError
from ..models.surgery import replace_cells
from ..steps import clip_by_global_norm as plain_clip
from .decode import GPTDecodeStep
from .fused import FusedBlock, decode_kernel_applies, fused_version

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17"]


def mode() -> str:
    """`auto` (fused kernels on CPU where they build) or `plain` (pure MindSpore ops), from $MINDLLM_KERNELS."""
    value = os.environ.get("MINDLLM_KERNELS", "auto")
    if value not in ("auto", "plain"):
        raise UserError(f"MINDLLM_KERNELS={value!r}: use auto (fused CPU kernels) or plain (MindSpore ops only)")
    return value


@functools.lru_cache(maxsize=None)
def library() -> str | None:
    """The compiled kernels' path, building them if needed; None (after one warning) when g++ fails."""
    with open(SOURCE, "rb") as fh:
        # -march=native: a library built on one CPU may not run on another (a home directory shared by machines)
        digest = hashlib.sha256(fh.read() + " ".join(FLAGS).encode() + _cpu().encode()).hexdigest()[:16]
    cache = os.environ.get("MINDLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindllm")
    path = os.path.join(cache, f"cpu_kernels-{digest}.so")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        subprocess.run(["g++", *FLAGS, "-o", tmp, SOURCE], check=True, capture_output=True, text=True)
        os.replace(tmp, path)  # atomic: two processes building at once both end with a whole library
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"warning: mindllm's fused CPU kernels did not build ({detail.strip().splitlines()[-1:]}); "
              f"running the plain MindSpore ops (slower, same results)", file=sys.stderr)
        return None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _cpu() -> str:
    """The CPU's instruction-set flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return platform.machine()


def fused() -> "Kernels | None":
    """The fused kernels for the current device, or None where the plain ops must run."""
    if mode() == "plain" or ms.get_context("device_target") != "CPU":
        return None
    lib = library()
    return None if lib is None else _kernels(lib)


@functools.lru_cache(maxsize=None)
def _kernels(lib: str) -> "Kernels":
    return Kernels(lib)


class Kernels:
    """The Custom primitives, each forward with its backward as bprop. Scalars (eps, scale) travel as (1,) Tensors."""

    def __init__(self, lib: str):
        def op(name, shape, dtype, bprop=None):
            return ops.Custom(f"{lib}:{name}", out_shape=shape, out_dtype=dtype, func_type="aot", bprop=bprop)

        f32 = ms.float32
        ln_bwd = op("LayerNormBwd", lambda dy, x, w, m, r: (x, w, w), lambda *a: (f32, f32, f32))
        gelu_bwd = op("GeluBwd", lambda dy, x: x, lambda dy, x: f32)
        gelu_erf_bwd = op("GeluErfBwd", lambda dy, x: x, lambda dy, x: f32)
        softmax_bwd = op("CausalSoftmaxBwd", lambda dy, y, s: y, lambda *a: f32)
        masked_softmax_bwd = op("MaskedSoftmaxBwd", lambda dy, y, s: y, lambda *a: f32)
        self.column_sum = op("ColumnSum", lambda dy: dy[-1:], lambda dy: f32)

        def ln_bprop(x, w, b, eps, out, dout):
            dx, dw, db = ln_bwd(dout[0], x, w, out[1], out[2])
            return dx, dw, db, ops.zeros_like(eps)

        def gelu_bprop(x, out, dout):
            return (gelu_bwd(dout, x),)

        def gelu_erf_bprop(x, out, dout):
            return (gelu_erf_bwd(dout, x),)

        def softmax_bprop(x, scale, out, dout):
            return softmax_bwd(dout, out, scale), ops.zeros_like(scale)

        def masked_softmax_bprop(x, mask, scale, out, dout):  # the mask is not learned: no gradient
            return masked_softmax_bwd(dout, out, scale), ops.zeros_like(mask), ops.zeros_like(scale)

        def bias_bprop(x, b, out, dout):
            return dout, self.column_sum(dout)

        def rows(x):
            n = 1
            for d in x[:-1]:
                n *= d
            return [n]

        self.layer_norm = op("LayerNormFwd", lambda x, w, b, e: (x, rows(x), rows(x)), lambda *a: (f32, f32, f32),
                             ln_bprop)
        self.gelu = op("GeluFwd", lambda x: x, lambda x: f32, gelu_bprop)
        self.gelu_exact = op("GeluErfFwd", lambda x: x, lambda x: f32, gelu_erf_bprop)
        self.cached_attention = op(  # decoding only: no bprop
            "CachedAttention", lambda qkv, k, v, pos, s: ([qkv[0], qkv[1], qkv[2] // 3], k, v),
            lambda *a: (f32, f32, f32))
        self.decode_block = op(  # a whole GPT block for one decoding step: no bprop
            "DecodeBlock", lambda x, *rest: (x, rest[12], rest[13]), lambda *a: (f32, f32, f32))
        self.decode_gpt = op(  # a whole GPT's decoding step: no bprop
            "DecodeGPT", lambda idx, wte, w, cache, meta, pos: ([idx[0], idx[1], wte[0]], cache),
            lambda *a: (f32, f32))
        self.quant_matmul = op(  # a quantized run's Linear: no bprop (int8 weights do not train)
            "QuantMatmul", lambda x, q, s, z: x[:-1] + [q[1]], lambda *a: f32)
        self.add_bias = op("AddBias", lambda x, b: x, lambda x, b: f32, bias_bprop)
        self.causal_softmax = op("CausalSoftmaxFwd", lambda x, s: x, lambda x, s: f32, softmax_bprop)
        self.masked_softmax = op("MaskedSoftmaxFwd", lambda x, m, s: x, lambda *a: f32, masked_softmax_bprop)
        clip = op("ClipGradNorm", lambda m, *gs: ([1], *gs), lambda m, *gs: (f32,) * (len(gs) + 1))

        def clip_by_global_norm(grads, max_norm):  # steps.clip_by_global_norm's contract
            out = clip(ms.Tensor([max_norm], f32), *grads)
            return out[0].reshape(()), out[1:]

        self.clip_by_global_norm = clip_by_global_norm


def clip_by_global_norm():
    """Global-norm gradient clipping in one kernel where the kernels run (for TrainSteps' `clip`), else the plain
    ops of steps.clip_by_global_norm. Gradients of float32 parameters: mindllm's are (mixed precision casts
    activations, not weights)."""
    k = fused()
    return plain_clip if k is None else k.clip_by_global_norm


def decode_step(model) -> "GPTDecodeStep | None":
    """A whole GPT's decoding step as one kernel (decode.GPTDecodeStep), or None where it does not apply: no
    kernels, not a plain GPT, or a block that cannot decode in one kernel (LoRA, mixed precision)."""
    k = fused()
    return None if k is None or not GPTDecodeStep.applies(model) else GPTDecodeStep(model, k.decode_gpt)


def fuse(model):
    """Swap the model's plain layers for fused ones where the kernels apply (CPU, the kernels built); returns the
    model. Idempotent: call it again after adding LoRA adapters or changing precision, and each GPT block's
    one-kernel decoding step is switched on or off to match its layers."""
    k = fused()
    if k is None:
        return model
    replace_cells(model, lambda name, cell: fused_version(cell, k))
    for _, cell in model.cells_and_names():
        if isinstance(cell, FusedBlock):
            cell.decode_kernel = decode_kernel_applies(cell)
    return model
