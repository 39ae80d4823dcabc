"""Sentence classification (文本分类): fine-tune BERT on sentiment (reviews_zh, tweets_en) with cross-entropy on the
pooled [CLS] vector, from random weights, the real all-MiniLM-L6-v2, a Hugging Face directory or a course BERT
pretraining run; fully, with frozen parts, or parameter-efficiently (peft:). The final test scores the whole test
split beside the majority-class baseline."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor

from .. import runs
from ..checkpoint import load_arrays
from ..config import opt
from ..convert import from_hf
from ..data.dataset import RowBatches
from ..data.sentiment import DATASETS, load_labelled, split
from ..data.tokenizer import minilm_dir, tokenizer_from_dir
from ..errors import UserError
from ..evaluate import classification_metrics
from ..models.bert import BertForPreTraining, BertForSequenceClassification
from ..models.layers import cross_entropy
from ..peft import add_peft, save_adapter
from . import Task
from .common import bert_config, compiled, fixed_batches, loss_line, run_tokenizer, trainable

ARCHS = ("bert_classifier",)
SAMPLES = False
CLOZE = False
HEADLINE = (("test accuracy", "test_accuracy", {"always the majority class": "majority_accuracy"}),
            ("test macro F1", "test_f1", {"always the majority class": "majority_f1"}))


@dataclass
class Options:
    init: str = opt("", doc="'' (random weights), 'minilm' (the real all-MiniLM-L6-v2), a Hugging Face directory, "
                            "or the out_dir of a bert_pretrain run")
    freeze: str = opt("none", choices=("none", "embeddings", "encoder"), doc="parameters not trained")
    freeze_layers: int = opt(0, lo=0, doc="also freeze the embeddings and the first k encoder layers")
    test_examples: int = opt(0, lo=0, doc="score the first N of the test split (0: all of it)")


def check(cfg) -> None:
    opts = cfg.options
    if cfg.data.corpus not in DATASETS:
        raise UserError(f"task classify reads a labelled corpus: data.corpus={' or '.join(DATASETS)}, not "
                        f"'{cfg.data.corpus}'")
    if opts.freeze_layers and opts.freeze == "encoder":
        raise UserError("classify.freeze=encoder already freezes every layer; leave classify.freeze_layers=0")
    if cfg.peft.method != "none" and (opts.freeze != "none" or opts.freeze_layers):
        raise UserError(f"peft.method={cfg.peft.method} freezes the pretrained model itself; leave "
                        f"classify.freeze=none and classify.freeze_layers=0")


def _from_run(cfg, n_classes: int):
    runs.require_float(cfg.options.init, "fine-tune")
    pre, _ = runs.load_trained(cfg.options.init)
    if not isinstance(pre.model, BertForPreTraining):
        raise UserError(f"classify.init='{cfg.options.init}' is a {type(pre.model).__name__} run; fine-tuning "
                        f"starts from a BERT pretraining run (task bert_pretrain)")
    src = pre.model.config
    model = BertForSequenceClassification(type(src)(**{**src.__dict__, "num_labels": n_classes,
                                                       "hidden_dropout_prob": cfg.model.dropout,
                                                       "attention_probs_dropout_prob": cfg.model.dropout}))
    bert = {n: p.asnumpy() for n, p in pre.model.parameters_and_names() if n.startswith("bert.")}
    load_arrays(model, bert, cfg.options.init, skip={n for n, _ in model.parameters_and_names() if n not in bert})
    return model, pre.tokenizer


def initial_model(cfg, n_classes: int, train_texts):
    """(model, tokenizer, where from) for fine-tuning, from classify.init."""
    init = cfg.options.init
    if not init:
        tokenizer = run_tokenizer(cfg, "\n".join(train_texts))
        return BertForSequenceClassification(bert_config(cfg, tokenizer.vocab_size, tokenizer.token_to_id("[PAD]"),
                                                         n_classes)), tokenizer, "random weights"
    path = minilm_dir() if init == "minilm" else init
    if os.path.isfile(os.path.join(path, "config.json")):  # a Hugging Face checkpoint
        model, tokenizer = from_hf(path, arch="BertForSequenceClassification", num_labels=n_classes), \
            tokenizer_from_dir(path)
        where = f"the pretrained {init}"
    elif os.path.isfile(os.path.join(path, runs.CONFIG)):  # a mindllm pretraining run
        (model, tokenizer), where = _from_run(cfg, n_classes), f"the BERT pretrained in {init}"
    else:
        raise UserError(f"classify.init='{init}' is neither 'minilm', a Hugging Face directory (config.json) nor "
                        f"a mindllm run directory (config.yaml)")
    tokenizer.save(os.path.join(cfg.out_dir, runs.TOKENIZER))
    return model, tokenizer, where


def freeze(model, what: str, layers: int) -> None:
    """Stop gradients to the embeddings, the first `layers` encoder layers, or the whole encoder (then only the
    pooler and classifier learn)."""
    prefixes = {"none": (), "embeddings": ("bert.embeddings.",), "encoder": ("bert.embeddings.", "bert.encoder.")}
    frozen = prefixes[what] + tuple(f"bert.encoder.layer.{i}." for i in range(layers))
    if layers:
        frozen += ("bert.embeddings.",)
    for name, p in model.parameters_and_names():
        if name.startswith(frozen):
            p.requires_grad = False


def _prepare(cfg):
    """(labelled data, its train/val/test parts, model, tokenizer, where from, peft method)."""
    opts = cfg.options
    data = load_labelled(cfg.data.corpus)
    parts = {p: split(data, p) for p in ("train", "val", "test")}
    if opts.test_examples:  # the test split is already a random permutation: its head is a random subset
        test = parts["test"]
        parts["test"] = type(test)(test.texts[:opts.test_examples], test.labels[:opts.test_examples], test.classes)
    model, tokenizer, origin = initial_model(cfg, len(data.classes), parts["train"].texts)
    positions, layers = model.config.max_position_embeddings, model.config.num_hidden_layers
    if cfg.model.block_size > positions:
        raise UserError(f"model.block_size={cfg.model.block_size} exceeds the model's {positions} positions")
    if opts.freeze_layers > layers:
        raise UserError(f"classify.freeze_layers={opts.freeze_layers} but the model has {layers} layers")
    freeze(model, opts.freeze, opts.freeze_layers)
    method = add_peft(cfg, model, head=("classifier.",))
    return data, parts, model, tokenizer, origin, method


def build(cfg) -> Task:
    data, parts, model, tokenizer, origin, method = _prepare(cfg)
    block, batch, n_classes = cfg.model.block_size, cfg.train.batch_size, len(data.classes)

    def encode(part):
        b = tokenizer.batch(part.texts, max_length=block, padding="max_length")
        return b["input_ids"], b["token_type_ids"], b["attention_mask"], part.labels.astype(np.int32)

    arrays = {k: encode(v) for k, v in parts.items()}
    eval_batches = {name: fixed_batches(RowBatches, (arrays[name], batch), cfg.seed + 1, cfg.train.eval_iters)
                    for name in ("train", "val")}
    majority = parts["train"].majority()
    counts = np.bincount(parts["train"].labels, minlength=n_classes) + 1.0

    def loss_fn(ids, types, attn, y):
        return cross_entropy(model(ids, types, attn), y)

    forward = compiled(model, cfg)  # one forward graph for the evaluation loss and the predictions
    predict = predictor(forward, batch)

    def eval_loss(ids, types, attn, y):
        return cross_entropy(forward(ids, types, attn), y)

    def eval_metrics(model) -> dict:
        ids, types, attn, y = (np.concatenate(a) for a in zip(*eval_batches["val"]))
        return {"val_accuracy": float(np.mean(predict(ids, types, attn) == y))}

    def final_eval(model) -> dict:
        ids, types, attn, y = arrays["test"]
        ours = classification_metrics(predict(ids, types, attn), y, n_classes)
        base = classification_metrics(np.full_like(y, majority), y, n_classes)
        extra = {}
        if method != "none":  # what one would ship: the trained tensors only
            extra["adapter_bytes"] = save_adapter(model, os.path.join(cfg.out_dir, "adapter.safetensors"))
        return {**extra, **{f"test_{k}": v for k, v in ours.items()},
                **{f"majority_{k}": v for k, v in base.items() if k != "confusion"},
                "classes": data.classes, "majority_class": data.classes[majority], "test_examples": int(len(y))}

    opts, total = cfg.options, model.num_params()
    how = method if method != "none" else f"freeze={opts.freeze}, freeze_layers={opts.freeze_layers}"
    return Task(
        model=model, loss_fn=loss_fn, tokenizer=tokenizer, tokens_per_batch=batch * block,
        train_batches=RowBatches(arrays["train"], batch, cfg.seed), eval_batches=eval_batches,
        eval_metrics=eval_metrics, final_eval=final_eval, eval_loss_fn=eval_loss, eval_loss_compiled=True,
        # "unigram" here is the class prior: the train label frequencies
        baselines={"uniform": math.log(n_classes),
                   "unigram": float(-np.log(counts / counts.sum())[parts["val"].labels].mean())},
        describe=f"BERT classifier {total / 1e6:.2f}M params, {trainable(model) / 1e6:.4f}M trainable "
                 f"({trainable(model) / total:.2%}; {how}) | {cfg.data.corpus} ({n_classes} classes, "
                 f"{len(parts['train'].texts)} train) | from {origin}")


def predictor(forward, batch: int):
    """Class predictions for whole arrays, in batches of one compiled shape (the last one padded)."""

    def predict(ids, types, attn):
        preds = []
        for i in range(0, len(ids), batch):
            chunk = [np.resize(a[i:i + batch], (batch,) + a.shape[1:]) for a in (ids, types, attn)]
            preds.append(forward(*map(Tensor, chunk)).asnumpy().argmax(-1)[:min(batch, len(ids) - i)])
        return np.concatenate(preds)

    return predict


def report(s: dict) -> str:
    cm = s["test_confusion"]
    width = max(len(c) for c in s["classes"]) + 2
    rows = "".join(f"\n  {c:>{width}} " + " ".join(f"{v:>7}" for v in row) for c, row in zip(s["classes"], cm))
    return (loss_line(s, perplexity=False) +
            f"\ntest accuracy {s['test_accuracy']:.1%}, macro F1 {s['test_f1']:.3f} (precision "
            f"{s['test_precision']:.3f}, recall {s['test_recall']:.3f}) on {s['test_examples']} examples | baseline: "
            f"always '{s['majority_class']}' {s['majority_accuracy']:.1%}, macro F1 {s['majority_f1']:.3f}"
            f"\n  confusion (rows true, columns predicted: {', '.join(s['classes'])}){rows}")
