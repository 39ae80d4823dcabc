"""Sequence to sequence: the encoder-decoder Transformer normalises dates ('the 3rd of March, 2021' -> '2021-03-03').
The final test decodes held-out dates greedily: exact match and character BLEU beside two trivial baselines."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ..config import opt
from ..data.dataset import IGNORE, RowBatches
from ..data.dates import CharVocab, all_characters, date_pairs, encode_pairs
from ..errors import UserError
from ..evaluate import corpus_bleu, exact_match
from ..models.layers import cross_entropy
from ..models.transformer import Seq2SeqTransformer, TransformerConfig, greedy_decode
from . import Task
from .common import fixed_batches, loss_line, unigram_loss

ARCHS = ("transformer",)
SAMPLES = False
CLOZE = False
HEADLINE = (("test exact match", "test_exact_match", {"copy the input": "copy_exact_match",
                                                       "most frequent output": "frequent_exact_match"}),
            ("test BLEU (characters)", "test_bleu", {"copy the input": "copy_bleu",
                                                     "most frequent output": "frequent_bleu"}))


@dataclass
class Options:
    train_examples: int = opt(50000, lo=1, doc="generated training pairs")
    test_examples: int = opt(2000, lo=1, doc="held-out dates the final test decodes")
    label_smoothing: float = opt(0.0, lo=0.0, hi=0.5, doc="target distribution (1-e) onehot + e/V")


def check(cfg) -> None:
    if cfg.data.corpus != "dates":
        raise UserError(f"task seq2seq_dates generates its own dates: set data.corpus=dates (got "
                        f"'{cfg.data.corpus}')")


def build(cfg) -> Task:
    model_cfg, opts, batch = cfg.model, cfg.options, cfg.train.batch_size
    src_vocab, tgt_vocab = CharVocab(all_characters()), CharVocab("0123456789-")
    splits = {"train": date_pairs(opts.train_examples, "train", cfg.seed),
              "val": date_pairs(max(cfg.train.eval_iters * batch, 1000), "val", cfg.seed + 1),
              "test": date_pairs(opts.test_examples, "test", cfg.seed + 2)}
    arrays = {k: encode_pairs(v, src_vocab, tgt_vocab, model_cfg.block_size) for k, v in splits.items()}
    model = Seq2SeqTransformer(TransformerConfig(
        src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab), max_len=model_cfg.block_size, n_layer=model_cfg.n_layer,
        n_head=model_cfg.n_head, n_embd=model_cfg.n_embd, ffn_dim=model_cfg.ffn_dim, dropout=model_cfg.dropout,
        norm_first=model_cfg.norm_first, positions=model_cfg.positions))
    train_y, val_y = arrays["train"][2], arrays["val"][2]

    def loss_fn(src, tgt_in, tgt_out):
        return cross_entropy(model(src, tgt_in), tgt_out, label_smoothing=opts.label_smoothing)

    def final_eval(model) -> dict:
        pairs = splits["test"]
        preds = []
        for i in range(0, len(pairs), 500):
            preds += [tgt_vocab.decode(p) for p in greedy_decode(model, arrays["test"][0][i:i + 500])]
        refs = [y for _, y in pairs]
        copy = [x for x, _ in pairs]  # trivial baseline 1: output the input unchanged
        frequent = [Counter(y for _, y in splits["train"]).most_common(1)[0][0]] * len(refs)  # 2: one answer
        return {"test_exact_match": exact_match(preds, refs), "test_bleu": corpus_bleu(preds, refs),
                "copy_exact_match": exact_match(copy, refs), "copy_bleu": corpus_bleu(copy, refs),
                "frequent_exact_match": exact_match(frequent, refs), "frequent_bleu": corpus_bleu(frequent, refs),
                "examples": [[x, p] for (x, _), p in zip(pairs[:8], preds)]}

    return Task(
        model=model, loss_fn=loss_fn, tokenizer=src_vocab, final_eval=final_eval,
        tokens_per_batch=batch * 2 * model_cfg.block_size,
        train_batches=RowBatches(arrays["train"], batch, cfg.seed),
        eval_batches={name: fixed_batches(RowBatches, (arrays[name], batch), cfg.seed + 1, cfg.train.eval_iters)
                      for name in ("train", "val")},
        baselines={"uniform": math.log(len(tgt_vocab)),
                   "unigram": unigram_loss(train_y[train_y != IGNORE], val_y[val_y != IGNORE], len(tgt_vocab))},
        describe=f"Transformer {model.num_params() / 1e6:.2f}M params | {cfg.data.corpus}")


def report(s: dict) -> str:
    return (loss_line(s) +
            f"\ntest exact match {s['test_exact_match']:.1%}, BLEU {s['test_bleu']:.1f} | baselines: copy the "
            f"input {s['copy_exact_match']:.1%}, BLEU {s['copy_bleu']:.1f}; most frequent training output "
            f"{s['frequent_exact_match']:.1%}, BLEU {s['frequent_bleu']:.1f}" +
            "".join(f"\n  {x!r} -> {p!r}" for x, p in s["examples"]))
