"""What several tasks share: baselines, fixed evaluation batches, the run's tokenizer, the summary's first line."""
from __future__ import annotations

import os

import numpy as np
import mindspore as ms

from ..data import load_tokenizer, train_tokenizer
from ..models.bert import BertConfig


def unigram_loss(train_ids, val_ids, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the val tokens under the train split's add-one-smoothed token frequencies:
    the loss of a model that ignores context entirely."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val_ids)].mean())


def fixed_batches(sampler_cls, args, seed: int, n: int) -> list:
    """n batches from a sampler with its own seed: the same every evaluation, and no draw from the train RNG."""
    sampler = sampler_cls(*args, seed=seed)
    return [sampler.next() for _ in range(n)]


def compiled(model, cfg):
    """The model's forward pass, compiled in graph mode (for evaluation metrics)."""
    return ms.jit(model) if cfg.context.mode == "graph" else model


def run_tokenizer(cfg, fit_text: str):
    """The run's tokenizer: reloaded on resume (the exact vocabulary of the checkpoint), else trained on
    `fit_text` (or loaded, for the fixed vocabularies) and saved in out_dir."""
    path = os.path.join(cfg.out_dir, "tokenizer.json")
    if cfg.resume and os.path.exists(path):
        return load_tokenizer(path)
    tokenizer = train_tokenizer(cfg.data.tokenizer, fit_text, cfg.data.vocab_size)
    tokenizer.save(path)
    return tokenizer


def bert_config(cfg, vocab_size: int, pad_id: int, num_labels: int = 2) -> BertConfig:
    """A BertConfig (Hugging Face's field names) from the course config's model section."""
    model = cfg.model
    return BertConfig(vocab_size=vocab_size, hidden_size=model.n_embd, num_hidden_layers=model.n_layer,
                      num_attention_heads=model.n_head, intermediate_size=model.ffn_dim,
                      max_position_embeddings=model.block_size, hidden_dropout_prob=model.dropout,
                      attention_probs_dropout_prob=model.dropout, pad_token_id=pad_id, num_labels=num_labels)


def trainable(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.trainable_params())


def parameter_counts(model) -> str:
    """'0.998M params, 0.066M trainable': both numbers count every parameter (the position embedding and any
    adapters included), so they are equal when every weight trains."""
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    return f"{total / 1e6:.3f}M params, {trainable(model) / 1e6:.3f}M trainable"


def loss_line(summary: dict, perplexity: bool = True) -> str:
    """The summary's first line: the final val loss beside the untrained model's, uniform and unigram."""
    s = summary
    untrained = f"{s['untrained_val_loss']:.3f}" if s["untrained_val_loss"] is not None else "n/a"
    ppl = f" (perplexity {s['val_perplexity']:.2f})" if perplexity else ""
    return (f"val loss {s['val_loss']:.3f}{ppl} after {s['steps']} steps | baselines: untrained {untrained}, "
            f"uniform ln(V) {s['uniform_loss']:.3f}, unigram {s['unigram_val_loss']:.3f}")
