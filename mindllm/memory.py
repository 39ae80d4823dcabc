"""How much memory one device needs to train a Transformer (显存估算), before buying or booking the devices.

Four parts, per device:
- parameters, gradients, optimizer state: bytes per parameter as in the ZeRO paper (Rajbhandari et al. 2020).
  Adam in float32 keeps 4 (weight) + 4 (gradient) + 8 (two moments) = 16 bytes; mixed precision keeps float16
  weights and gradients plus float32 master weights and moments: 2 + 2 + 12 = 16 as well. ZeRO stage 1
  (MindSpore's `enable_parallel_optimizer`) splits the optimizer state over the data-parallel devices, stage 2
  also the gradients, stage 3 also the weights.
- activations kept for the backward pass, per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", eq. 1-2, generalised to any FFN width f and element size): with s tokens, b rows,
  hidden h, a heads, t-way tensor parallelism
      elements = 4sbh + (4sbh + 2sbf + k*a*s^2*b) / t        (k = 2 with attention dropout, else 1)
      + dropout masks, 1 byte each: 2sbh + a*s^2*b / t       (only with dropout)
  which at 16 bits, f = 4h and dropout is the paper's sbh(10 + 24/t) + 5as^2b/t bytes. Full recompute keeps only
  each layer's input (sbh elements). The loss needs the float32 logits of a micro-batch, s*b*V/t numbers.
With pipeline parallelism (1F1B schedule) the first stage holds the token embedding and the activations of up
to `pipeline_stage` micro-batches at once; the last stage holds one micro-batch, the logits and a copy of the
(tied) embedding for the LM head. The estimate is the busier of the two, the device that runs out first; it
ignores framework workspace, fragmentation and the temporary buffers of one layer's backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECISION = {  # bytes per parameter: weight, gradient, optimizer state (Adam); and per activation element
    "fp32": {"weight": 4, "grad": 4, "optimizer": 8, "activation": 4},
    "mixed": {"weight": 2, "grad": 2, "optimizer": 12, "activation": 2},  # fp16/bf16 + fp32 master and moments
}


@dataclass
class Layout:
    data_parallel: int = 1
    model_parallel: int = 1  # tensor parallelism
    pipeline_stage: int = 1
    micro_batch_num: int = 1
    zero: int = 0  # 0 none, 1 optimizer state, 2 + gradients, 3 + weights sharded over data_parallel
    recompute: bool = False


def gpt_layer_params(h: int, f: int, bias: bool = True) -> tuple[int, int]:
    """(parameters a tensor-parallel split divides, parameters every device keeps) of one GPT-2 block."""
    split = 4 * h * h + 2 * h * f + ((3 * h + f) if bias else 0)  # qkv + out proj, fc + proj; column biases
    kept = (2 * h + 4 * h) if bias else 2 * h  # row-parallel output biases, two LayerNorms
    return split, kept


def gpt_params(n_layer: int, n_embd: int, vocab: int, block_size: int, ffn: int | None = None,
               bias: bool = True) -> int:
    """All parameters of a GPT-2-style model with tied embeddings (GPT-2 small: 124,439,808)."""
    h = n_embd
    split, kept = gpt_layer_params(h, ffn or 4 * h, bias)
    return n_layer * (split + kept) + vocab * h + block_size * h + (2 * h if bias else h)


def layer_activation_bytes(s: int, b: int, h: int, a: int, f: int, t: int = 1, elem: int = 4,
                           dropout: bool = False) -> float:
    """Bytes one Transformer layer keeps for its backward pass, for one micro-batch of b rows of s tokens."""
    k = 2 if dropout else 1
    elements = 4 * s * b * h + (4 * s * b * h + 2 * s * b * f + k * a * s * s * b) / t
    masks = (2 * s * b * h + a * s * s * b / t) if dropout else 0
    return elements * elem + masks


def estimate(n_layer: int, n_embd: int, n_head: int, vocab: int, block_size: int, global_batch: int,
             layout: Layout = Layout(), precision: str = "fp32", ffn: int | None = None, bias: bool = True,
             dropout: bool = False) -> dict:
    """Bytes on the busiest device to train a GPT with Adam: {'params', 'grads', 'optimizer', 'activations',
    'total', 'micro_batch', 'stage'}; stage is 'only' without pipelining, else 'first' or 'last'."""
    h, f, L = n_embd, ffn or 4 * n_embd, n_layer
    dp, t, pp, m = layout.data_parallel, layout.model_parallel, layout.pipeline_stage, layout.micro_batch_num
    if global_batch % (dp * m):
        raise ValueError(f"global batch {global_batch} is not divisible by data_parallel x micro_batch_num "
                         f"= {dp * m}")
    if L % pp or n_head % t:
        raise ValueError("n_layer must divide by pipeline_stage and n_head by model_parallel")
    bpp = PRECISION[precision]
    split, kept = gpt_layer_params(h, f, bias)
    layers = (L // pp) * (split / t + kept)  # one stage's blocks: split matrices / t, LayerNorms and row biases whole
    ln_f = 2 * h if bias else h
    shard = {"params": dp if layout.zero >= 3 else 1, "grads": dp if layout.zero >= 2 else 1,
             "optimizer": dp if layout.zero >= 1 else 1}
    b = global_batch // (dp * m)  # rows per micro-batch on one device
    if layout.recompute:
        per_layer = block_size * b * h * bpp["activation"]  # the layer input only
    else:
        per_layer = layer_activation_bytes(block_size, b, h, n_head, f, t, bpp["activation"], dropout)
    logits = block_size * b * vocab / t * 4  # float32, for the loss
    embed = vocab * h / t  # the token embedding, split by vocabulary across the tensor-parallel devices

    def device(n, activations):
        out = {"params": n * bpp["weight"] / shard["params"], "grads": n * bpp["grad"] / shard["grads"],
               "optimizer": n * bpp["optimizer"] / shard["optimizer"], "activations": activations}
        out["total"] = sum(out.values())
        return out

    if pp == 1:
        out = dict(device(layers + embed + block_size * h + ln_f, L * per_layer + logits), stage="only")
    else:
        first = device(layers + embed + block_size * h, (L // pp) * per_layer * min(pp, m))
        last = device(layers + embed + ln_f, (L // pp) * per_layer + logits)
        out = dict(first, stage="first") if first["total"] >= last["total"] else dict(last, stage="last")
    out["micro_batch"] = b
    return out


def gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f} GiB" if x >= 2 ** 30 else f"{x / 2 ** 20:.1f} MiB"


def describe(est: dict) -> str:
    where = "" if est.get("stage", "only") == "only" else f", the {est['stage']} pipeline stage"
    return (f"memory per device (estimate): {gib(est['total'])} = params {gib(est['params'])} + grads "
            f"{gib(est['grads'])} + optimizer {gib(est['optimizer'])} + activations {gib(est['activations'])} "
            f"(micro-batch {est['micro_batch']}{where})")


def model_dims(model) -> dict:
    """Layer shapes of any course model, read from its config: layers, hidden, heads, ffn, vocab of its logits."""
    c = model.config
    if hasattr(c, "num_hidden_layers"):  # BERT (Hugging Face names)
        return dict(layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
                    ffn=c.intermediate_size, vocab=c.vocab_size)
    if hasattr(c, "tgt_vocab"):  # encoder-decoder: count both stacks (cross-attention left out)
        return dict(layers=2 * c.n_layer, hidden=c.n_embd, heads=c.n_head, ffn=c.ffn_dim, vocab=c.tgt_vocab)
    ffn = c.hidden if hasattr(c, "n_kv_head") else 4 * c.n_embd  # Llama's SwiGLU width, GPT's 4C
    return dict(layers=c.n_layer, hidden=c.n_embd, heads=c.n_head, ffn=ffn, vocab=c.vocab_size)


def layout_for(cfg, world: int = 1) -> Layout:
    """The device layout a config describes, for `world` data-parallel workers."""
    split = cfg.parallel_config
    dp = world if cfg.parallel.parallel_mode == "data_parallel" else split.data_parallel
    return Layout(data_parallel=dp, model_parallel=split.model_parallel, pipeline_stage=split.pipeline_stage,
                  micro_batch_num=split.micro_batch_num, zero=int(cfg.parallel.enable_parallel_optimizer),
                  recompute=split.recompute)


def for_config(cfg, model, world: int = 1) -> dict:
    """The estimate printed before training: the layout of the config, the model's real parameter counts (frozen
    parameters get no gradient or optimizer state), activations from its layer shapes."""
    d, layout = model_dims(model), layout_for(cfg, world)
    precision = "mixed" if cfg.train.amp != "none" else "fp32"
    est = estimate(d["layers"], d["hidden"], d["heads"], d["vocab"], cfg.model.block_size, cfg.train.batch_size,
                   layout=layout, precision=precision, ffn=d["ffn"], dropout=cfg.model.dropout > 0)
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    per = PRECISION[precision]
    est.update(params=total * per["weight"], grads=trainable * per["grad"],
               optimizer=trainable * per["optimizer"] / (layout.data_parallel if layout.zero else 1))
    est["total"] = est["params"] + est["grads"] + est["optimizer"] + est["activations"]
    return est
