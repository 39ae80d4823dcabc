"""`python -m mindllm.bench --finetune configs/bert_mlm_peoples_daily.yaml`: one BERT pretraining step (week 5:
masked LM + next-sentence prediction, from scratch) by mindllm beside PyTorch + Hugging Face `transformers`.

Both sides build a BertForPreTraining of CONFIG's shape with fresh weights and take its step: masked-LM logits at
the masked positions only (as the original BERT and mindllm do; Hugging Face's forward would score every position,
so the reference calls its own `bert`, `cls.predictions` and `cls.seq_relationship` modules the same way),
cross-entropy of both heads summed, dropout on, global-norm clipping, AdamW with weight decay on the matrices.
The batches are random ids with BERT's shape: [CLS] A [SEP] B [SEP] rows of 8 to block_size tokens, segment ids,
padding, round(0.15 × block_size) masked positions per row (a step's cost does not depend on which tokens).
`bench_finetune.run` spawns and alternates the workers.
"""
from __future__ import annotations


def recipe(cfg, path: str, overrides: list[str]) -> dict:
    """What both sides need from a bert_pretrain config."""
    from .tasks.common import bert_config

    m, t = cfg.model, cfg.train
    bert = vars(bert_config(cfg, cfg.data.vocab_size, 0))
    return {"task": "bert_pretrain", "short": "BERT pretraining", "config": path, "overrides": overrides,
            "what": f"BERT {m.n_layer}L/{m.n_head}H/{m.n_embd} from scratch, masked LM + NSP, vocabulary "
                    f"{cfg.data.vocab_size:,}",
            "bert": bert, "batch_size": t.batch_size, "seq_len": m.block_size,
            "predictions": max(1, round(m.block_size * cfg.options.mask_prob)), "lr": t.lr,
            "betas": [t.beta1, t.beta2], "weight_decay": t.weight_decay, "grad_clip": t.grad_clip}


def batches(r: dict, n: int, seed: int = 0) -> list[tuple]:
    """n batches of (input_ids, token_type_ids, attention_mask, positions, labels, nsp), int32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T, P, V = r["batch_size"], r["seq_len"], r["predictions"], r["bert"]["vocab_size"]
    out = []
    for _ in range(n):
        lengths = rng.integers(8, T + 1, B)
        mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
        types = ((np.arange(T)[None, :] >= (lengths // 2)[:, None]) * mask).astype(np.int32)  # B's half
        positions = np.stack([rng.choice(np.arange(1, n_ - 1), min(P, n_ - 2), replace=False).tolist() +
                              [0] * (P - min(P, n_ - 2)) for n_ in lengths]).astype(np.int32)
        out.append(((rng.integers(5, V, (B, T)) * mask).astype(np.int32), types, mask, positions,
                    rng.integers(5, V, (B, P)).astype(np.int32), rng.integers(0, 2, B).astype(np.int32)))
    return out


def ms_pretrain(r: dict, warmup: int, steps: int) -> dict:
    """mindllm: models.bert's BertForPreTraining, the task's loss, fused kernels on CPU, the compiled TrainSteps."""
    import os

    os.environ.setdefault("GLOG_v", "3")
    from mindspore import Tensor

    from . import device, kernels
    from .config import ContextConfig, load_config
    from .models.bert import BertConfig, BertForPreTraining
    from .models.layers import cross_entropy
    from .optim import build_optimizer
    from .steps import TrainSteps
    from .workers import first_then_timed, peak_rss_mb

    cfg = load_config(r["config"], r["overrides"])
    device.setup(ContextConfig(device_target="CPU"), seed=0)
    model = kernels.fuse(BertForPreTraining(BertConfig(**r["bert"])))
    model.set_train(True)

    def loss_fn(ids, types, attn, positions, labels, nsp):  # tasks/bert_pretrain.py's
        mlm_logits, nsp_logits = model(ids, types, attn, positions)
        return cross_entropy(mlm_logits, labels) + cross_entropy(nsp_logits, nsp)

    step = TrainSteps(loss_fn, build_optimizer(model, cfg.train), grad_clip=r["grad_clip"],
                      clip=kernels.clip_by_global_norm()).step

    def one(*batch):
        return float(step(*(Tensor(a) for a in batch))[0].asnumpy())

    first, times = first_then_timed(one, batches(r, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "trainable": sum(int(p.size) for p in model.trainable_params())}


def torch_pretrain(r: dict, warmup: int, steps: int) -> dict:
    """PyTorch eager + transformers: Hugging Face's BertForPreTraining, its modules called as mindllm's forward
    calls its own (masked positions only)."""
    import torch
    from torch.nn import functional as F
    from transformers import BertConfig, BertForPreTraining

    from .bench_torch import torch_adamw
    from .workers import first_then_timed, peak_rss_mb

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**r["bert"])).train()
    opt = torch_adamw(model, lr=r["lr"], betas=tuple(r["betas"]), weight_decay=r["weight_decay"])
    params = list(model.parameters())

    def one(ids, types, mask, positions, labels, nsp):
        ids, types, mask, positions, labels, nsp = (torch.from_numpy(a).long()
                                                    for a in (ids, types, mask, positions, labels, nsp))
        h, pooled = model.bert(input_ids=ids, token_type_ids=types, attention_mask=mask, return_dict=False)[:2]
        picked = torch.gather(h, 1, positions[..., None].expand(-1, -1, h.shape[-1]))
        loss = F.cross_entropy(model.cls.predictions(picked).flatten(0, 1), labels.flatten()) + \
            F.cross_entropy(model.cls.seq_relationship(pooled), nsp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r["grad_clip"])
        opt.step()
        return loss.item()

    first, times = first_then_timed(one, batches(r, 4), warmup, steps)
    return {"step_s": times, "first_s": first, "peak_rss_mb": peak_rss_mb(),
            "trainable": sum(p.numel() for p in params), "threads": torch.get_num_threads()}
