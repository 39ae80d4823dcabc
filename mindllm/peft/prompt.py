"""Soft prompts (软提示): train k vectors put before the input, the whole pretrained model frozen.

- Prompt tuning (Lester et al. 2021): the k vectors are free parameters, (k, H).
- P-tuning (Liu et al. 2021, "GPT Understands, Too"): the vectors come out of a small prompt encoder, an MLP over
  k learned inputs, which makes them easier to optimise than free vectors; after training only its output is
  needed.

Both go into BertForSequenceClassification's `prompt` slot (models/bert.py puts the vectors before the token
embeddings, at positions 0..k-1, as Hugging Face peft does); parameter names follow peft's
(`prompt.embedding`, `prompt.mlp_head.0.weight`, ...).
"""
from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..errors import UserError
from ..models.layers import Linear


class SoftPrompt(nn.Cell):
    """Prompt tuning: k trainable vectors, initialised from the embeddings of real tokens (`init`, (k, H)) or
    at random."""

    def __init__(self, k: int, hidden: int, init=None, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        start = np.asarray(init, np.float32) if init is not None else rng.normal(0, 0.02, (k, hidden))
        self.embedding = Parameter(Tensor(start.astype(np.float32)))

    def construct(self):
        return self.embedding


class PromptEncoder(nn.Cell):
    """P-tuning: vectors = MLP(embedding), the MLP Linear(H, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, H)
    (peft's MLP reparameterisation)."""

    def __init__(self, k: int, hidden: int, encoder_hidden: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embedding = Parameter(Tensor(rng.normal(0, 0.02, (k, hidden)).astype(np.float32)))
        self.mlp_head = nn.CellList([Linear(hidden, encoder_hidden, out_in=True),
                                     Linear(encoder_hidden, encoder_hidden, out_in=True),
                                     Linear(encoder_hidden, hidden, out_in=True)])

    def construct(self):
        h = ops.relu(self.mlp_head[0](self.embedding))
        h = ops.relu(self.mlp_head[1](h))
        return self.mlp_head[2](h)


def apply_prompt(model, method: str, k: int, encoder_hidden: int = 128, init_ids=None, train_also=(),
                 seed: int = 0) -> None:
    """Give a BertForSequenceClassification a soft prompt of k vectors ('prompt': prompt tuning, 'ptuning':
    P-tuning) and freeze everything else except names starting with `train_also` (e.g. 'classifier.').
    `init_ids`: k token ids whose embeddings start the prompt-tuning vectors."""
    if not hasattr(model, "prompt"):
        raise UserError(f"soft prompts are written for BertForSequenceClassification, not {type(model).__name__}")
    H = model.config.hidden_size
    if k >= model.config.max_position_embeddings:
        raise UserError(f"{k} virtual tokens do not fit in {model.config.max_position_embeddings} positions")
    if method == "prompt":
        init = None
        if init_ids is not None:
            init = model.bert.embeddings.word_embeddings.weight.asnumpy()[np.asarray(init_ids)[:k]]
        model.prompt = SoftPrompt(k, H, init, seed)
    elif method == "ptuning":
        model.prompt = PromptEncoder(k, H, encoder_hidden, seed)
    else:
        raise UserError(f"unknown soft-prompt method '{method}': use prompt or ptuning")
    for full, p in model.parameters_and_names():
        p.name = full
        p.requires_grad = full.startswith(("prompt.",) + tuple(train_also))
