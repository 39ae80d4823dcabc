"""Week 8 exercises: LoRA and soft prompts (notebook 08). The references are mindllm.peft: LoRALinear (its forward
pass, its gradients by MindSpore autograd), merge_lora, apply_lora (which layers it adapts, how many numbers it adds)
and PromptEncoder (P-tuning); every check draws fresh random layers of several shapes, ranks and scales."""
from __future__ import annotations

import functools

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from ..models.layers import Linear
from ..peft.lora import LoRALinear, apply_lora, merge_lora
from ..peft.prompt import PromptEncoder
from .core import Mismatch, exercise, expect_close, expect_equal

# d_in, d_out, r, alpha, leading dimensions of x: rank 1, alpha = r (scale 1), a (batch, sequence) input, d_in < d_out
SHAPES = [(8, 6, 1, 2.0, (4,)), (16, 12, 4, 8.0, (3,)), (24, 10, 8, 16.0, (2, 5)), (5, 7, 2, 2.0, (1,)),
          (12, 12, 3, 32.0, (3, 2))]


def _keeps_global_rng(check):
    """mindllm layers draw their initial weights from numpy's global generator: a check restores it afterwards, so
    the notebook's own random numbers are the same whether or not its exercises ran (or were solved)."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        state = np.random.get_state()
        try:
            return check(*args, **kwargs)
        finally:
            np.random.set_state(state)

    return run


def _layer(d_in, d_out, r, alpha, rng, trained=True):
    """(mindllm LoRALinear, W, b, A, B): random W and b, A as apply_lora starts it, B random (as if trained) or 0."""
    base = Linear(d_in, d_out, out_in=True)  # weight stored (out, in), as in BERT
    W = rng.normal(0, 0.3, (d_out, d_in)).astype(np.float32)
    b = rng.normal(0, 0.3, d_out).astype(np.float32)
    base.weight.set_data(Tensor(W))
    base.bias.set_data(Tensor(b))
    layer = LoRALinear(base, r, alpha, rng=np.random.default_rng(int(rng.integers(1 << 30))))
    B = rng.normal(0, 0.5, (d_out, r)).astype(np.float32) if trained else np.zeros((d_out, r), np.float32)
    layer.lora_B.set_data(Tensor(B))
    return layer, W, b, layer.lora_A.asnumpy(), B


def _cases(seed: int):
    """Every shape with a trained B, then the first two again with B = 0 (a fresh adapter)."""
    rng = np.random.default_rng(seed)
    for i, (d_in, d_out, r, alpha, lead) in enumerate(SHAPES + SHAPES[:2]):
        layer, W, b, A, B = _layer(d_in, d_out, r, alpha, rng, trained=i < len(SHAPES))
        x = rng.normal(size=lead + (d_in,)).astype(np.float32)
        yield layer, W, b, A, B, alpha, x


def _describe(x, A, B, alpha) -> str:
    fresh = ", B = 0" if not B.any() else ""
    return f"x of shape {x.shape}, r = {A.shape[0]}, alpha = {alpha:g}{fresh}"


@exercise("week08.lora_forward",
          hint="y = x W^T + b + (alpha / r) (x A^T) B^T with r = A.shape[0]; `@` works on any leading dimensions")
@_keeps_global_rng
def lora_forward(student) -> int:
    n = 0
    for layer, W, b, A, B, alpha, x in _cases(81):
        want = layer(Tensor(x)).asnumpy()
        got = student(x.copy(), W.copy(), b.copy(), A.copy(), B.copy(), alpha)
        expect_close(got, want, f"y for {_describe(x, A, B, alpha)}", rtol=1e-4, atol=1e-5)
        n += 1
    return n


@exercise("week08.lora_gradients",
          hint="with s = alpha / r, and x and G flattened to (n, d_in) and (n, d_out): dL/dB = s G^T (x A^T) and "
               "dL/dA = s (G B)^T x; return (dL/dA, dL/dB)")
@_keeps_global_rng
def lora_gradients(student) -> int:
    n = 0
    rng = np.random.default_rng(82)
    for layer, W, b, A, B, alpha, x in _cases(83):
        G = rng.normal(size=x.shape[:-1] + (W.shape[0],)).astype(np.float32)  # dL/dy
        g = Tensor(G)
        loss = lambda inp: (layer(inp) * g).sum()  # noqa: E731  (its gradient with respect to y is G)
        want_A, want_B = (t.asnumpy() for t in ms.grad(loss, grad_position=None,
                                                        weights=[layer.lora_A, layer.lora_B])(Tensor(x)))
        got = student(x.copy(), G.copy(), A.copy(), B.copy(), alpha)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Mismatch(f"return the pair (dL/dA, dL/dB), got {type(got).__name__} {str(got)[:60]}")
        where = _describe(x, A, B, alpha)
        expect_close(got[0], want_A, f"dL/dA for {where}", rtol=1e-4, atol=1e-5)
        expect_close(got[1], want_B, f"dL/dB for {where}", rtol=1e-4, atol=1e-5)
        n += 1
    return n


@exercise("week08.merge", hint="W + (alpha / r) B A: B is (d_out, r) and A is (r, d_in), so B @ A has W's shape; "
                               "r = A.shape[0]")
@_keeps_global_rng
def merge(student) -> int:
    n = 0
    for layer, W, b, A, B, alpha, x in _cases(84):
        holder = nn.Cell()
        holder.dense = layer
        merge_lora(holder)  # the package writes W + ΔW into the layer's weight
        want = layer.weight.asnumpy()
        got = student(W.copy(), A.copy(), B.copy(), alpha)
        expect_close(got, want, f"merged W ({W.shape[0]} x {W.shape[1]}, r = {A.shape[0]}, alpha = {alpha:g})",
                     rtol=1e-5, atol=1e-6)
        n += 1
    return n


def _model(layers: dict) -> nn.Cell:
    """A model of nested Cells with one mindllm Linear per dotted name, e.g. 'layer.0.attention.query'."""
    model = nn.Cell()
    for name, (d_in, d_out) in layers.items():
        *path, last = name.split(".")
        cell = model
        for part in path:
            if part not in cell._cells:
                cell.insert_child_to_cell(part, nn.Cell())
            cell = cell._cells[part]
        cell.insert_child_to_cell(last, Linear(d_in, d_out, out_in=True))
    return model


def _bert_like(n_layers: int, H: int, ffn: int) -> dict:
    out = {}
    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        out.update({f"{p}.attention.self.query": (H, H), f"{p}.attention.self.key": (H, H),
                    f"{p}.attention.self.value": (H, H), f"{p}.attention.output.dense": (H, H),
                    f"{p}.intermediate.dense": (H, ffn), f"{p}.output.dense": (ffn, H)})
    out["pooler.dense"] = (H, H)
    out["classifier"] = (H, 3)
    return out


COUNT_CASES = [  # (layers, r, targets)
    (_bert_like(2, 8, 32), 1, ("query", "value")),
    (_bert_like(3, 16, 64), 4, ("query", "key", "value")),
    (_bert_like(2, 12, 48), 8, ("dense",)),  # attention output, both feed-forward matrices and the pooler
    ({"proj.query": (6, 6), "proj.query_extra": (6, 10), "head.value": (10, 4)}, 2, ("query", "value")),
    (_bert_like(6, 384, 1536), 8, ("query", "value")),  # MiniLM, the notebook's choice: 73,728
]


@exercise("week08.count_lora",
          hint="each adapted layer adds r (d_in + d_out) numbers; a layer is adapted when the LAST part of its name "
               "is one of the targets ('query' adapts 'x.query', not 'x.query_extra')")
@_keeps_global_rng
def count_lora(student) -> int:
    for layers, r, targets in COUNT_CASES:
        model = _model(layers)
        apply_lora(model, r=r, alpha=2 * r, targets=targets)
        want = sum(int(np.prod(p.shape)) for name, p in model.parameters_and_names() if ".lora_" in name)
        got = student(dict(layers), r, tuple(targets))
        try:
            got = int(got)
        except (TypeError, ValueError):
            raise Mismatch(f"return a whole number, got {type(got).__name__} {str(got)[:60]}") from None
        expect_equal(got, want, f"LoRA numbers for {len(layers)} layers, r = {r}, targets {list(targets)}")
    return len(COUNT_CASES)


PROMPT_SHAPES = [(1, 4, 3), (5, 8, 6), (20, 16, 8), (3, 10, 10)]  # k virtual tokens, hidden H, encoder width


@exercise("week08.prompt_encoder",
          hint="three Linear layers with weights stored (out, in): h = relu(E W0^T + b0), h = relu(h W1^T + b1), "
               "P = h W2^T + b2 (no ReLU after the last one)")
@_keeps_global_rng
def prompt_encoder(student) -> int:
    rng = np.random.default_rng(85)
    for k, H, hidden in PROMPT_SHAPES:
        enc = PromptEncoder(k, H, hidden, seed=int(rng.integers(1 << 30)))
        layers = []
        for lin in enc.mlp_head:  # random weights and biases, large enough that the ReLUs cut
            W = rng.normal(0, 0.5, lin.weight.shape).astype(np.float32)
            b = rng.normal(0, 0.5, lin.bias.shape).astype(np.float32)
            lin.weight.set_data(Tensor(W))
            lin.bias.set_data(Tensor(b))
            layers.append((W, b))
        E = rng.normal(0, 1, (k, H)).astype(np.float32)
        enc.embedding.set_data(Tensor(E))
        want = enc().asnumpy()
        got = student(E.copy(), [(W.copy(), b.copy()) for W, b in layers])
        expect_close(got, want, f"P for k = {k} virtual tokens, H = {H}, encoder width {hidden}", rtol=1e-4,
                     atol=1e-5)
    return len(PROMPT_SHAPES)
