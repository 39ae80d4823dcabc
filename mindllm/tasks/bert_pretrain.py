"""BERT pretraining (预训练) on a corpus: masked-token prediction (15%, 80/10/10) + next-sentence prediction. The
loss is MLM + NSP; every evaluation also reports masked-token accuracy and NSP accuracy on fixed held-out batches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor

from ..config import opt
from ..data import load_corpus
from ..data.dataset import IGNORE, split_text
from ..data.mlm import PairBatches, split_sentences, tokenize_sentences
from ..errors import UserError
from ..models.bert import BertForPreTraining
from ..models.layers import cross_entropy
from . import Task
from .common import bert_config, compiled, loss_line, run_tokenizer, unigram_loss

ARCHS = ("bert",)
SAMPLES = False
CLOZE = False
HEADLINE = (("masked-token accuracy", "mlm_accuracy", {"always the most frequent token": "frequent_token_accuracy"}),
            ("next-sentence accuracy", "nsp_accuracy", {"majority": "nsp_majority"}))


@dataclass
class Options:
    mask_prob: float = opt(0.15, lo=0.0, hi=0.5, lo_open=True, doc="share of tokens the MLM predicts")


def check(cfg) -> None:
    if cfg.data.tokenizer not in ("hf_wordpiece", "bert_uncased"):
        raise UserError(f"task bert_pretrain needs a WordPiece tokenizer with [CLS]/[SEP]/[MASK]: set "
                        f"data.tokenizer=hf_wordpiece (trained on the corpus) or bert_uncased, not "
                        f"'{cfg.data.tokenizer}'")


def build(cfg) -> Task:
    block, batch = cfg.model.block_size, cfg.train.batch_size
    parts = dict(zip(("train", "val"), split_text(load_corpus(cfg.data.corpus), cfg.data.val_fraction)))
    tokenizer = run_tokenizer(cfg, parts["train"])
    segments = {k: tokenize_sentences(tokenizer, split_sentences(v)) for k, v in parts.items()}
    model = BertForPreTraining(bert_config(cfg, tokenizer.vocab_size, tokenizer.token_to_id("[PAD]")))

    def sampler(split, seed):
        return PairBatches(segments[split], tokenizer, block, batch, seed, cfg.options.mask_prob)

    eval_batches = {k: [s.next() for _ in range(cfg.train.eval_iters)] for k, s in
                    (("train", sampler("train", cfg.seed + 1)), ("val", sampler("val", cfg.seed + 1)))}
    V = tokenizer.vocab_size
    train_ids = np.concatenate(segments["train"])
    val_labels = np.concatenate([b[4][b[4] != IGNORE] for b in eval_batches["val"]])
    frequent = int(np.bincount(train_ids, minlength=V).argmax())

    def loss_of(forward, ids, types, attn, positions, labels, nsp):
        mlm_logits, nsp_logits = forward(ids, types, attn, positions)
        return cross_entropy(mlm_logits, labels) + cross_entropy(nsp_logits, nsp)

    def loss_fn(ids, types, attn, positions, labels, nsp):
        return loss_of(model, ids, types, attn, positions, labels, nsp)

    forward = compiled(model, cfg)  # one forward graph for the evaluation loss and the accuracies

    def eval_loss(*batch):
        return loss_of(forward, *batch)

    eval_metrics = held_out_accuracy(forward, eval_batches["val"], tokenizer.token_to_id("[MASK]"))

    def final_eval(model) -> dict:
        nsp = np.concatenate([b[5] for b in eval_batches["val"]])
        return {**eval_metrics(model), "frequent_token_accuracy": float(np.mean(val_labels == frequent)),
                "frequent_token": tokenizer.decode([frequent]), "nsp_majority": float(max(nsp.mean(), 1 - nsp.mean())),
                "masked_tokens_evaluated": int(len(val_labels))}

    return Task(
        model=model, loss_fn=loss_fn, tokenizer=tokenizer, tokens_per_batch=batch * block,
        train_batches=sampler("train", cfg.seed), eval_batches=eval_batches,
        eval_metrics=eval_metrics, final_eval=final_eval, eval_loss_fn=eval_loss, eval_loss_compiled=True,
        # both heads guess: ln V for the masked token, ln 2 for next-sentence
        baselines={"uniform": math.log(V) + math.log(2),
                   "unigram": unigram_loss(train_ids, val_labels, V) + math.log(2)},
        describe=f"BERT {model.num_params() / 1e6:.2f}M params | MLM + NSP on {cfg.data.corpus} | vocab {V} "
                 f"({cfg.data.tokenizer})")


def held_out_accuracy(forward, batches, mask_id: int):
    """eval_metrics: masked-token accuracy (all scored positions, and where the input shows [MASK]) and NSP."""

    def eval_metrics(model) -> dict:
        hit = n = mask_hit = mask_n = nsp_hit = nsp_n = 0
        for ids, types, attn, pos, labels, nsp in batches:
            mlm_logits, nsp_logits = forward(*map(Tensor, (ids, types, attn, pos)))
            keep = labels != IGNORE
            right = (mlm_logits.asnumpy().argmax(-1) == labels) & keep
            # where the input shows [MASK]: at the 10% unchanged positions the answer is visible and an early
            # model scores by copying it, so the all-positions accuracy flatters it
            hidden = keep & (np.take_along_axis(ids, pos, 1) == mask_id)
            hit, n = hit + int(right.sum()), n + int(keep.sum())
            mask_hit, mask_n = mask_hit + int(right[hidden].sum()), mask_n + int(hidden.sum())
            nsp_hit += int((nsp_logits.asnumpy().argmax(-1) == nsp).sum())
            nsp_n += len(nsp)
        return {"mlm_accuracy": hit / n, "mask_accuracy": mask_hit / max(mask_n, 1), "nsp_accuracy": nsp_hit / nsp_n}

    return eval_metrics


def report(s: dict) -> str:
    return (loss_line(s) +
            f"\nmasked-token accuracy {s['mlm_accuracy']:.1%} on {s['masked_tokens_evaluated']} held-out masked "
            f"tokens ({s['mask_accuracy']:.1%} where the input shows [MASK]) | baseline: always "
            f"{s['frequent_token']!r} {s['frequent_token_accuracy']:.1%}"
            f"\nnext-sentence accuracy {s['nsp_accuracy']:.1%} | baseline: majority {s['nsp_majority']:.1%}")
