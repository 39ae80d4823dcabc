"""The GPT with a scalar head: a reward model reads it at an answer's last token, PPO's value head at every token.

Parameter names follow Hugging Face: a reward model is GPT2ForSequenceClassification with one label
(`transformer.*`, `score.weight`); the policy with a value head is TRL's (`v_head.summary.weight/bias`), the
policy's own names unchanged, so `python -m mindllm.sample` opens a PPO run as any GPT.
"""
from __future__ import annotations

import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from ..models.gpt import GPT


class RewardModel(GPT):
    """r(prompt, answer): the score head on the hidden state of the answer's last token (its end-of-answer token,
    which has read the whole answer)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.score = nn.Dense(cfg.n_embd, 1, has_bias=False, weight_init=Normal(1.0 / np.sqrt(cfg.n_embd + 1)))

    def construct(self, idx, last):
        """idx (B, T) int32, last (B,) int32: the position of each row's last token -> rewards (B,)."""
        h, _ = self.features(idx)  # (B, T, C)
        h_last = ops.gather_elements(h, 1, last.reshape(-1, 1, 1).broadcast_to((h.shape[0], 1, h.shape[2])))
        return self.score(h_last.squeeze(1)).squeeze(-1)  # (B,)


class ValueHead(nn.Cell):
    """TRL's value head: one Linear from the hidden state to a scalar."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.summary = nn.Dense(n_embd, 1, weight_init="zeros", bias_init="zeros")  # V = 0 at first: no bias

    def construct(self, h):
        return self.summary(h).squeeze(-1)


class PolicyWithValue(GPT):
    """The PPO policy: a GPT whose value head estimates the return at every position (the critic shares the body)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.v_head = ValueHead(cfg.n_embd)

    def policy_and_value(self, idx):
        """idx (B, T) -> logits (B, T, V), values (B, T)."""
        h, _ = self.features(idx)
        return self._logits(h), self.v_head(h)


def scored_rows(prompts: list[list[int]], responses: list[list[int]], *, pad: int, length: int):
    """What a reward model reads: x (N, length) int32 = prompt + whole answer (its end-of-answer token included),
    right-padded, and last (N,) int32 = the position of each row's final token."""
    x = np.full((len(prompts), length), pad, np.int32)
    last = np.zeros(len(prompts), np.int32)
    for r, (p, a) in enumerate(zip(prompts, responses)):
        ids = (list(p) + list(a))[:length]
        x[r, :len(ids)] = ids
        last[r] = len(ids) - 1
    return x, last
