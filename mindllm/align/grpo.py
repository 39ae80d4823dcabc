"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", section 4.1): no value model; each prompt
gets `group_size` sampled responses and a response's advantage is its reward standardised within its group
(outcome supervision: the same advantage on every token of the response).

As a task of the training loop (`task: grpo`): each rollout draws rollout_batch / group_size training problems
and samples group_size answers to each, scored by the problem's own reward; the KL to the frozen SFT model is in
the loss (k3), not in the reward.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mindspore import ops

from ..config import opt
from ..data import arithmetic
from ..errors import UserError
from ..tasks import Task
from ..tasks.causal_lm import language_model  # noqa: F401  (runs.load_model: a GRPO run is a GPT)
from ..tasks.common import parameter_counts
from . import policy
from .kl import kl_k3
from .logprobs import masked_mean, response_logprobs
from .rollout import RolloutBatches

ARCHS = ("gpt",)
SAMPLES = True
CLOZE = False
HEADLINE = (("exact match", "exact_match", {"SFT": "sft_exact_match", "most frequent answer":
                                            "frequent_answer_exact_match"}),)


def group_advantages(rewards, *, group_size, eps=1e-4):
    """A_i = (r_i - mean(group)) / (std(group) + eps) for rewards (B,), B = prompts * group_size, consecutive rows
    one group. NumPy (B,) -> (B,).

    std is the UNBIASED sample std (divided by n - 1), as TRL (nanstd, like torch.std's default) and eps = 1e-4 as
    TRL; the paper does not say which. A group whose rewards are all equal gets advantage 0."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"need group_size >= 2 dividing the batch ({rewards.shape[0]}), got {group_size}")
    groups = rewards.reshape(-1, group_size)                 # (prompts, G)
    mean = groups.mean(1, keepdims=True)
    std = groups.std(1, ddof=1, keepdims=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, clip, beta):
    """DeepSeekMath eq. 3 as a loss to minimise: per token -min(r A, clip(r, 1 - clip, 1 + clip) A)
    + beta * k3(logp, ref_logp), with r = exp(logp - old_logp); averaged over each sequence's response tokens
    (1/|o_i|), then over the batch (1/G). logp, old_logp, ref_logp, mask (B, T); advantages (B,).
    MindSpore, usable inside mindspore.jit. Returns (loss, kl): kl = masked mean of k3 over all response tokens
    (TRL's logged "kl"), without gradient.

    This is TRL's loss_type="grpo". TRL's default, "dapo", normalises differently: the sum over all tokens of the
    batch divided by their count, so a long response weighs more than a short one (the per-sequence mean here
    gives every response the same weight, which DAPO and Dr. GRPO criticise as a length bias)."""
    adv = ops.expand_dims(advantages, 1)                                   # (B, 1): one advantage per response
    ratio = ops.exp(logp - old_logp)                                       # (B, T)
    surrogate = ops.minimum(ratio * adv, ops.clip_by_value(ratio, 1.0 - clip, 1.0 + clip) * adv)
    kl = kl_k3(logp, ref_logp)                                             # (B, T)
    per_token = -surrogate + beta * kl
    loss = masked_mean(per_token, mask, axis=1).mean()                     # per sequence, then over the batch
    return loss, ops.stop_gradient(masked_mean(kl, mask))


@dataclass
class Options(policy.RLOptions):
    group_size: int = opt(8, lo=2, doc="answers sampled per problem; each is scored against its group")
    beta: float = opt(0.04, lo=0.0, doc="weight of the KL to the SFT model in the loss (DeepSeekMath: 0.04)")
    reward: str = opt("exact_match", choices=tuple(arithmetic.REWARDS), doc="the problem's own reward")


def check(cfg) -> None:
    o = cfg.options
    if o.rollout_batch % o.group_size:
        raise UserError(f"grpo.rollout_batch={o.rollout_batch} must be a multiple of grpo.group_size={o.group_size}")
    policy.check_rl(cfg)


def build(cfg) -> Task:
    o = cfg.options
    start = policy.Start(cfg, o.init)
    model, reference = start.model(cfg=cfg), start.reference(cfg)

    def collect(rng):
        problems_ = rng.choice(len(start.train), o.rollout_batch // o.group_size, replace=False)
        r = policy.rollout(model, start, [int(i) for i in problems_ for _ in range(o.group_size)],
                           temperature=o.temperature, rng=rng)
        x, y, mask = r["x"], r["y"], r["mask"]
        model.set_train(False)
        old_logp, entropy = policy.logprobs_of(model, x, y, entropy=True)
        ref_logp = policy.logprobs_of(reference, x, y)
        model.set_train(True)
        scores = policy.rewards_of(r, start, o.reward)
        adv = group_advantages(scores, group_size=o.group_size).astype(np.float32)
        stats = policy.rollout_stats(r, start, score=scores, logp=old_logp, ref_logp=ref_logp, entropy=entropy)
        stats["groups_all_same"] = float(np.mean(scores.reshape(-1, o.group_size).std(-1) == 0))  # no signal
        return (x, y, mask, old_logp, ref_logp, adv), stats

    def loss_fn(x, y, mask, old_logp, ref_logp, adv):
        loss, _ = grpo_loss(response_logprobs(model(x), y), old_logp, ref_logp, adv, mask, clip=o.clip, beta=o.beta)
        return loss

    batches = RolloutBatches(collect, minibatch=cfg.train.batch_size, epochs=o.epochs, seed=cfg.seed)
    return Task(model=model, loss_fn=loss_fn, tokenizer=start.tokenizer, train_batches=batches,
                tokens_per_batch=cfg.train.batch_size * start.length, eval_batches=start.answer_batches(cfg),
                eval_loss_fn=policy.answer_nll(model), baselines=start.baselines(),
                eval_metrics=lambda net: policy.eval_metrics(net, start),
                final_eval=lambda net: policy.final_eval(net, start, cfg), train_stats=lambda: batches.stats,
                shown=("reward", "kl"), reference=reference,
                describe=f"GRPO from the SFT run {o.init} ({parameter_counts(model)}) with the {o.reward} reward, "
                         f"beta {o.beta} | {o.rollout_batch // o.group_size} problems x {o.group_size} answers per "
                         f"rollout, {o.epochs} epochs")


def report(s: dict) -> str:
    return policy.report(s, "GRPO")
