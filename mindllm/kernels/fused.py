"""The fused layers: each a subclass of the plain layer it replaces, sharing its Parameters, running its forward
(and backward) through one kernel of cpu_kernels.cc. `mindllm.kernels.fuse(model)` swaps them in."""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn

from ..models.bert import BertIntermediate, BertTransform
from ..models.gpt import Block
from ..models.layers import MLP, Attention, CausalSelfAttention, LayerNorm, Linear, mm_dtype
from ..quant.layers import QuantLinear


_CELL_OWN = set(vars(nn.Cell()))  # what every Cell carries itself (hooks, phases, flags): not shared


def _share(new, base) -> None:
    """Give `new` (an empty Cell) what `base` holds: the same Parameters, sub-cells, primitives and settings."""
    for name, p in base._params.items():  # attribute name -> Parameter (the Parameter's own name is its full path)
        setattr(new, name, p)
    for name, cell in base.name_cells().items():
        setattr(new, name, cell)
    for name, value in vars(base).items():
        if name not in _CELL_OWN and not name.startswith("_") and name not in base._params:
            setattr(new, name, value)


class FusedLinear(Linear):
    """The bias add as a kernel: its gradient, a sum over rows, is slow as MindSpore's CPU ReduceSum."""

    def __init__(self, base: Linear, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.add_bias = kernels.add_bias

    def construct(self, x):
        shape = x.shape
        a, w = mm_dtype(self, x.reshape(-1, shape[-1]), self.weight)
        y = self.add_bias(self.matmul(a, w).astype(x.dtype), self.bias)
        return y.reshape(shape[:-1] + (y.shape[-1],))


class FusedQuantLinear(QuantLinear):
    """A quantized Linear whose product reads the int8 (or int4) codes directly for a few rows (a decoding step):
    no float weight is built, and a step reads a quarter (an eighth) of the bytes the float32 layer reads. Many rows
    (a prompt's prefill) go through MindSpore's multi-threaded matmul on the rebuilt weight, which is faster there
    than this one-thread kernel."""

    KERNEL_ROWS = 16

    def __init__(self, base: QuantLinear, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.quant_matmul = kernels.quant_matmul

    def construct(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.shape[0] > self.KERNEL_ROWS:  # a static shape: graph mode compiles one branch
            return QuantLinear.construct(self, x)
        y = self.quant_matmul(x2, self.weight, self.weight_scale, self.weight_zero_point)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (y.shape[-1],))


class FusedLayerNorm(LayerNorm):
    def __init__(self, base: LayerNorm, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.layer_norm = kernels.layer_norm
        self.eps_t = Tensor([base.eps], ms.float32)  # the kernels take scalars as (1,) tensors

    def construct(self, x):
        return self.layer_norm(x, self.weight, self.bias, self.eps_t)[0]


class FusedMLP(MLP):
    """GELU (tanh form) in one pass instead of seven element-wise ops."""

    def __init__(self, base: MLP, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.gelu = kernels.gelu

    def construct(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class FusedBertIntermediate(BertIntermediate):
    """BERT's exact GELU in one pass: as five element-wise ops its graph kept each op's output for the backward
    pass (150 MB of MiniLM fine-tuning's peak, measured)."""

    def __init__(self, base: BertIntermediate, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.gelu = kernels.gelu_exact

    def construct(self, x):
        return self.gelu(self.dense(x))


class FusedBertTransform(BertTransform):
    """The masked-LM head's dense + exact GELU + LayerNorm, the GELU in one pass."""

    def __init__(self, base: BertTransform, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.gelu = kernels.gelu_exact

    def construct(self, h):
        return self.LayerNorm(self.gelu(self.dense(h)))


class MaskedSoftmaxAttention(Attention):
    """The attention core with scale, additive mask and softmax in one kernel (BERT's padding mask, the
    Transformer's masks): the three score-sized tensors between them are not kept for the backward pass."""

    def __init__(self, base: Attention, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.masked_softmax = kernels.masked_softmax
        self.scale_t = Tensor([base.scale], ms.float32)

    def weights(self, q, k, mask):
        if mask is None or q.dtype != ms.float32:  # static in graph mode: one branch is compiled
            return Attention.weights(self, q, k, mask)
        att = self.qk(*mm_dtype(self, q, k)).astype(q.dtype)
        mask = mask.astype(ms.float32).reshape((1,) * (3 - mask.ndim) + mask.shape)  # (M, Mq, Tk)
        return self.masked_softmax(att, mask, self.scale_t)


class CausalSoftmaxAttention(Attention):
    """The attention core with scale, causal mask and softmax in one kernel: self-attention over Tq == Tk positions
    only (the mask argument is implied)."""

    def __init__(self, base: Attention, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.causal_softmax = kernels.causal_softmax
        self.scale_t = Tensor([base.scale], ms.float32)

    def construct(self, q, k, v, mask=None):
        att = self.causal_softmax(self.qk(*mm_dtype(self, q, k)).astype(q.dtype), self.scale_t)
        return self.av(*mm_dtype(self, self.dropout(att), v)).astype(q.dtype)


class FusedCausalSelfAttention(CausalSelfAttention):
    """Training: the causal-softmax core. Decoding with the KV cache: head split, cache write, attention over the
    cache and head merge in one kernel."""

    def __init__(self, base: CausalSelfAttention, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.attention = CausalSoftmaxAttention(base.attention, kernels)
        self.cached_attention = kernels.cached_attention

    def construct(self, x, cache=None, pos=None):
        if cache is None:
            return CausalSelfAttention.construct(self, x)
        y, k, v = self.cached_attention(self.c_attn(x), cache[0], cache[1], pos, self.attention.scale_t)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class FusedBlock(Block):
    """A GPT block; one decoding step with the KV cache runs the whole block as one kernel, which reads the four
    Linears' float32 weights directly. `fuse` turns that off (`decode_kernel`) where it would be wrong: LoRA
    adapters on those Linears, or mixed precision."""

    def __init__(self, base: Block, kernels):
        nn.Cell.__init__(self)
        _share(self, base)
        self.decode_block = kernels.decode_block
        self.decode_kernel = True

    def construct(self, x, cache=None, pos=None):
        if cache is None or not self.decode_kernel:
            return Block.construct(self, x, cache, pos)
        a, m = self.attn, self.mlp
        y, k, v = self.decode_block(
            x, self.ln_1.weight, self.ln_1.bias, a.c_attn.weight, a.c_attn.bias, a.c_proj.weight, a.c_proj.bias,
            self.ln_2.weight, self.ln_2.bias, m.c_fc.weight, m.c_fc.bias, m.c_proj.weight, m.c_proj.bias,
            cache[0], cache[1], pos, a.attention.scale_t, self.ln_1.eps_t)
        return y, (k, v)

    def linears(self):
        return self.attn.c_attn, self.attn.c_proj, self.mlp.c_fc, self.mlp.c_proj


def fused_version(cell, kernels):
    """The fused replacement of a plain layer (the exact class only: LoRA's subclass of Linear stays), or None."""
    kind = type(cell)
    if kind is Linear and cell.bias is not None:
        return FusedLinear(cell, kernels)
    if kind is QuantLinear:
        return FusedQuantLinear(cell, kernels)
    if kind is LayerNorm and cell.bias is not None:
        return FusedLayerNorm(cell, kernels)
    if kind is MLP and not cell.relu:
        return FusedMLP(cell, kernels)
    if kind is BertIntermediate and not cell.relu:
        return FusedBertIntermediate(cell, kernels)
    if kind is BertTransform and not cell.relu:
        return FusedBertTransform(cell, kernels)
    if kind is Attention:  # a GPT's is CausalSoftmaxAttention by then: replace_cells swaps parents first
        return MaskedSoftmaxAttention(cell, kernels)
    if kind is CausalSelfAttention:
        return FusedCausalSelfAttention(cell, kernels)
    if kind is Block and cell.ln_1.bias is not None:
        return FusedBlock(cell, kernels)
    return None


def decode_kernel_applies(block: FusedBlock) -> bool:
    return all(type(lin) is FusedLinear and lin.compute_dtype == ms.float32 for lin in block.linears()) and \
        type(block.ln_1) is FusedLayerNorm and type(block.ln_2) is FusedLayerNorm
