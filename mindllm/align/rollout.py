"""Rollouts: the policy answers prompts by sampling with the KV-cache decoder (decoding.py), many prompts at once.

The decoder runs a batch of rows that share one prompt length (positions are absolute), so prompts are grouped by
length and each group is cut into batches of one fixed size (the last one filled up with repeats, which are dropped):
one compiled graph serves every batch. A row stops at its end-of-answer token; the batch stops when every row has.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..data.dataset import IGNORE
from ..decoding import tokens


def sample_responses(model, prompts: list[list[int]], *, eos: int, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int, top_p: float = 1.0) -> list[list[int]]:
    """The response token ids of every prompt, in order, each ending at (and including) `eos` when the model wrote
    it within max_new_tokens. Temperature 0 answers greedily."""
    out: list[list[int] | None] = [None] * len(prompts)
    by_length = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    for n, (_, rows) in enumerate(sorted(by_length.items())):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            filled = chunk + [chunk[-1]] * (batch_size - len(chunk))  # the same batch shape: no recompile
            idx = np.array([prompts[i] for i in filled], np.int32)
            answers = _decode(model, idx, eos=eos, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed * 100_003 + n * 1_009 + start)
            for i, a in zip(chunk, answers):
                out[i] = a
    return out


def _decode(model, idx, *, eos, max_new_tokens, temperature, top_p, seed) -> list[list[int]]:
    rows, done = [[] for _ in range(len(idx))], np.zeros(len(idx), bool)
    for nxt in tokens(model, idx, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed):
        for r, t in enumerate(nxt):
            if not done[r]:
                rows[r].append(int(t))
                done[r] = t == eos
        if done.all():
            break
    return rows


def sequences(prompts: list[list[int]], responses: list[list[int]], *, pad: int, length: int):
    """Prompt + response rows for a forward pass: x (N, length) int32 right-padded with `pad`, targets (N, length)
    int32 = x shifted left with IGNORE except where the next token is a response token, and mask (N, length)
    float32 = 1 on exactly those positions (where the response's log-probabilities are read)."""
    x = np.full((len(prompts), length), pad, np.int32)
    y = np.full((len(prompts), length), IGNORE, np.int32)
    for r, (p, a) in enumerate(zip(prompts, responses)):
        ids = (list(p) + list(a))[:length + 1]
        x[r, :len(ids) - 1] = ids[:-1]
        y[r, len(p) - 1:len(ids) - 1] = ids[len(p):]
    return x, y, (y != IGNORE).astype(np.float32)


class RolloutBatches:
    """The loop's batches for on-policy RL (PPO, GRPO): `collect(rng)` has the policy answer a fresh set of prompts
    and returns (arrays, stats); its rows are then served as shuffled minibatches for `epochs` passes (PPO reuses
    each rollout a few times) before the next collect. `stats` describe the latest rollout (reward, KL, ...).

    The state is the Generator's, taken at a rollout boundary (the task makes checkpoints fall there): a resumed run
    draws the same prompts and the same samples from the same weights."""

    def __init__(self, collect, *, minibatch: int, epochs: int, seed: int):
        self.collect, self.minibatch, self.epochs = collect, minibatch, epochs
        self.rng = np.random.default_rng(seed)
        self.queue, self.arrays, self.stats = [], None, {}

    def next(self):
        if not self.queue:
            self.arrays, self.stats = self.collect(self.rng)
            n = len(self.arrays[0])
            for _ in range(self.epochs):
                order = self.rng.permutation(n)
                self.queue += [order[s:s + self.minibatch] for s in range(0, n, self.minibatch)]
        rows = self.queue.pop(0)
        return tuple(a[rows] for a in self.arrays)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
        self.queue = []
