"""A whole GPT's decoding step as one kernel (cpu_kernels.cc: DecodeGPT).

The per-block graph costs ~0.7 ms per token on CPU, and the arithmetic of the course's GPT 0.09 ms of it: MindSpore
spends the rest handling the graph's ~70 inputs and outputs. So the kernel takes the weights as one flat buffer,
packed at the start of each generation (they may have been trained since the last) and dropped at its end (a copy
of every weight), and the KV caches of all layers as one tensor (L, 2, B*nh, block_size, hs). The per-block graph
stays the oracle (tests/test_kernels.py).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from ..models.gpt import GPT
from .fused import FusedBlock, FusedLayerNorm


class GPTDecodeStep:
    """`pack()` once per generation, `cache(presents)` to pack a window pass's per-layer (k, v), then
    `step(tok, cache, pos) -> (logits, cache)` per token, with the meaning of GPT.forward_cached's."""

    @staticmethod
    def applies(model) -> bool:
        if not isinstance(model, GPT) or type(model).forward_cached is not GPT.forward_cached:
            return False
        t = model.transformer
        return model.compute_dtype == ms.float32 and type(t.ln_f) is FusedLayerNorm and \
            all(isinstance(b, FusedBlock) and b.decode_kernel for b in t.h)

    def __init__(self, model: GPT, kernel):
        t, self.kernel = model.transformer, kernel
        self.wte = t.wte.weight
        # the flat buffer's order: DecodeGPT's
        self.params = [t.wpe.weight, t.ln_f.weight, t.ln_f.bias]
        for b in t.h:
            qkv, proj, fc, out = b.linears()
            self.params += [b.ln_1.weight, b.ln_1.bias, qkv.weight, qkv.bias, proj.weight, proj.bias,
                            b.ln_2.weight, b.ln_2.bias, fc.weight, fc.bias, out.weight, out.bias]
        first = t.h[0]
        self.meta = Tensor([t.wpe.weight.shape[0], first.mlp.c_fc.weight.shape[1],
                            float(first.attn.attention.scale_t.asnumpy()[0]),
                            float(first.ln_1.eps_t.asnumpy()[0])], ms.float32)
        self.flat = None

    def pack(self) -> None:
        self.flat = ops.cat([p.reshape(-1) for p in self.params])

    @staticmethod
    def cache(presents) -> Tensor:
        return ops.stack([ops.stack(kv) for kv in presents])  # (L, 2, B*nh, block_size, hs)

    def step(self, tok, cache, pos):
        if self.flat is None:  # a caller that did not start(): the weights as they are now
            self.pack()
        return self.kernel(tok, self.wte, self.flat, cache, self.meta, pos)
