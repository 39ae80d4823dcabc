"""PPO for RLHF (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Ouyang et al. 2022, InstructGPT;
the reference implementation is TRL's former PPOTrainer, whose helpers masked_whiten / masked_var this follows).

On the rollouts, in NumPy (outside the compiled graph): the per-token rewards (KL penalty + the reward model's
score), GAE advantages and returns, whitening. In the training step, in MindSpore: the clipped policy and value
losses. Shapes: B sequences, T token positions; `mask` (B, T) float 0/1 is 1 on the response tokens, one
contiguous span per row (prompt tokens before it and padding after it are 0).

As a task of the training loop (`task: ppo`): the batches are the policy's own rollouts (policy.RolloutBatches),
scored by a reward model run (ppo.reward=model, RLHF) or by the problem's exact answer (a control: a reward that
cannot be fooled), with the per-token KL penalty to the frozen SFT model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from ..config import opt
from ..data import arithmetic
from ..errors import UserError
from ..tasks import Task
from ..tasks.causal_lm import gpt_config
from ..tasks.common import parameter_counts
from . import policy, problems
from .heads import PolicyWithValue, scored_rows
from .logprobs import masked_mean, response_logprobs
from .rollout import RolloutBatches, sample_responses

ARCHS = ("gpt",)
SAMPLES = True
CLOZE = False
HEADLINE = (("exact match", "exact_match", {"SFT": "sft_exact_match", "most frequent answer":
                                            "frequent_answer_exact_match"}),)


def kl_penalised_rewards(score, logp, ref_logp, mask, *, kl_coef):
    """Per-token reward r_t = -kl_coef (logp_t - ref_logp_t) on every response token, plus the sequence's score
    (B,) at its last response token (InstructGPT eq. 2 spread over tokens; k1 estimate of the KL). NumPy, (B, T)."""
    mask = np.asarray(mask, dtype=np.float64)
    rewards = -kl_coef * (np.asarray(logp) - np.asarray(ref_logp)) * mask   # (B, T)
    B, T = mask.shape
    last = T - 1 - np.argmax(mask[:, ::-1], axis=1)                        # (B,) index of the last 1 in each row
    rewards[np.arange(B), last] += np.asarray(score)
    return rewards


def gae(rewards, values, mask, *, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}, returns R_t = A_t + V_t. The episode ends after the last response token, so
    V and A there are 0. NumPy: rewards, values, mask (B, T) -> (advantages, returns) (B, T), 0 outside the mask."""
    mask = np.asarray(mask, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64) * mask
    values = np.asarray(values, dtype=np.float64) * mask
    # with rewards and values 0 outside the mask, every delta after the span is 0: V = A = 0 past the episode's end
    B, T = mask.shape
    advantages = np.zeros((B, T))
    next_value = np.zeros(B)   # V_{t+1}
    next_adv = np.zeros(B)     # A_{t+1}
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = delta + gamma * lam * next_adv
        next_value, next_adv = values[:, t], advantages[:, t]
    advantages *= mask         # the prompt tokens before the span got the span's discounted advantages
    return advantages, (advantages + values) * mask


def whiten(x, mask, *, shift_mean=True, eps=1e-8):
    """(x - mean) / sqrt(var + eps) over the masked entries, as TRL's masked_whiten: var is the unbiased masked
    variance (divided by n - 1). shift_mean=False adds the mean back (TRL's option, used for rewards).
    NumPy (B, T) -> (B, T); entries outside the mask are set to 0 (TRL leaves them, unused, unchanged)."""
    x = np.asarray(x, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    out = (x - mean) / np.sqrt(var + eps)
    if not shift_mean:
        out += mean
    return out * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, *, clip):
    """PPO's clipped surrogate, as a loss to minimise: masked mean of max(-A r, -A clip(r, 1 - clip, 1 + clip)),
    r = pi(a) / pi_old(a) = exp(logp - old_logp). All (B, T); MindSpore, usable inside mindspore.jit.

    Returns (loss, clip_fraction, approx_kl): clip_fraction is the share of tokens where the clipped term is the
    larger one, approx_kl = masked mean of (logp - old_logp)^2 / 2 (k2; TRL's approxkl); both without gradient."""
    log_ratio = logp - old_logp
    ratio = ops.exp(log_ratio)                                             # (B, T)
    pg1 = -advantages * ratio
    pg2 = -advantages * ops.clip_by_value(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(ops.maximum(pg1, pg2), mask)                        # pessimistic: the larger loss
    clip_fraction = masked_mean((pg2 > pg1).astype(logp.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio ** 2, mask)
    return loss, ops.stop_gradient(clip_fraction), ops.stop_gradient(approx_kl)


def ppo_value_loss(values, old_values, returns, mask, *, clip):
    """The value head's clipped loss: 0.5 * masked mean of max((v - R)^2, (v_clip - R)^2), where
    v_clip = clip(v, old_v - clip, old_v + clip) keeps one update from moving the value far. All (B, T) -> scalar."""
    v_clipped = old_values + ops.clip_by_value(values - old_values, -clip, clip)
    return 0.5 * masked_mean(ops.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


@dataclass
class Options(policy.RLOptions):
    reward: str = opt("model", choices=("model",) + tuple(arithmetic.REWARDS),
                      doc="model: the reward model run in ppo.reward_model (RLHF); exact_match / partial_credit: "
                          "the problem's own answer (the control)")
    reward_model: str = opt("", doc="the reward_model run that scores the answers (ppo.reward=model)")
    kl_coef: float = opt(0.05, lo=0.0, doc="the per-token KL penalty to the SFT model (InstructGPT's beta)")
    vf_coef: float = opt(0.5, lo=0.0, doc="weight of the value loss")
    value_clip: float = opt(0.2, lo=0.0, lo_open=True, doc="how far a value may move from the rollout's")
    gamma: float = opt(1.0, lo=0.0, hi=1.0)
    lam: float = opt(0.95, lo=0.0, hi=1.0, doc="GAE's lambda")


def check(cfg) -> None:
    policy.check_rl(cfg)
    o = cfg.options
    if (o.reward == "model") != bool(o.reward_model):
        raise UserError("ppo.reward=model scores answers with ppo.reward_model (a reward_model run); the other "
                        "rewards (exact_match, partial_credit) take no reward model")


def language_model(cfg, tokenizer):
    """The policy and its value head, untrained (a checkpoint fills them): sampling reads the policy's logits."""
    return PolicyWithValue(gpt_config(cfg, tokenizer.vocab_size))


def scorer(o, start):
    """score(rollout) -> (N,) rewards: the reward model's, or the problem's own."""
    if o.reward != "model":
        return lambda r: policy.rewards_of(r, start, o.reward)
    from .reward_model import load_reward_model  # a reward model run opens through the loop's own task
    rm, tokenizer = load_reward_model(o.reward_model)
    if tokenizer.vocab_size != start.tokenizer.vocab_size:
        raise UserError(f"ppo.reward_model='{o.reward_model}' has another tokenizer than the SFT run")
    net = ms.jit(rm)

    def score(r):
        x, last = scored_rows(r["prompts"], r["responses"], pad=start.eos, length=start.length)
        return net(Tensor(x), Tensor(last)).asnumpy()
    return score


def greedy_score(net, start, score) -> float:
    """The reward model's mean score of `net`'s greedy answers to the held-out problems."""
    prompts = problems.encode_prompts(start.test, start.tokenizer)
    responses = sample_responses(net, prompts, eos=start.eos, max_new_tokens=start.max_new, temperature=0.0,
                                 seed=0, batch_size=min(policy.DECODE_ROWS, len(prompts)))
    return float(np.mean(score({"prompts": prompts, "responses": responses})))


def build(cfg) -> Task:
    o = cfg.options
    start = policy.Start(cfg, o.init)
    model, reference = start.model(PolicyWithValue, cfg), start.reference(cfg)
    score = scorer(o, start)

    def values_of(x):
        return model.policy_and_value(x)[1]
    values_fn = ms.jit(values_of) if cfg.context.mode == "graph" else values_of

    def collect(rng):
        r = policy.rollout(model, start, list(rng.choice(len(start.train), o.rollout_batch, replace=False)),
                           temperature=o.temperature, rng=rng)
        x, y, mask = r["x"], r["y"], r["mask"]
        model.set_train(False)
        old_logp, entropy = policy.logprobs_of(model, x, y, entropy=True)
        old_values = values_fn(Tensor(x)).asnumpy() * mask
        ref_logp, scores = policy.logprobs_of(reference, x, y), score(r)
        model.set_train(True)
        rewards = kl_penalised_rewards(scores, old_logp, ref_logp, mask, kl_coef=o.kl_coef)
        adv, returns = gae(rewards, old_values, mask, gamma=o.gamma, lam=o.lam)
        stats = policy.rollout_stats(r, start, score=scores, logp=old_logp, ref_logp=ref_logp, entropy=entropy)
        return (x, y, mask, old_logp, old_values, whiten(adv, mask), returns), stats

    def loss_fn(x, y, mask, old_logp, old_values, adv, returns):
        logits, values = model.policy_and_value(x)
        pg, _, _ = ppo_policy_loss(response_logprobs(logits, y), old_logp, adv, mask, clip=o.clip)
        return pg + o.vf_coef * ppo_value_loss(values, old_values, returns, mask, clip=o.value_clip)

    def final_eval(net) -> dict:
        out = policy.final_eval(net, start, cfg)
        if o.reward == "model":  # what the policy optimised, beside what it was meant to: hacking shows here
            out.update(reward_model_score=greedy_score(net, start, score),
                       sft_reward_model_score=greedy_score(reference, start, score))
        return out

    batches = RolloutBatches(collect, minibatch=cfg.train.batch_size, epochs=o.epochs, seed=cfg.seed)
    reward = f"the reward model {o.reward_model}" if o.reward == "model" else f"the {o.reward} reward"
    return Task(model=model, loss_fn=loss_fn, tokenizer=start.tokenizer, train_batches=batches,
                tokens_per_batch=cfg.train.batch_size * start.length, eval_batches=start.answer_batches(cfg),
                eval_loss_fn=policy.answer_nll(model), baselines=start.baselines(),
                eval_metrics=lambda net: policy.eval_metrics(net, start), final_eval=final_eval,
                train_stats=lambda: batches.stats, shown=("reward", "kl"), reference=reference,
                describe=f"PPO from the SFT run {o.init} ({parameter_counts(model)}) against {reward}, KL "
                         f"coefficient {o.kl_coef} | {o.rollout_batch} answers per rollout, {o.epochs} epochs")


def report(s: dict) -> str:
    learned = (f"\nthe reward model's mean score of the greedy held-out answers: {s['reward_model_score']:.3f} (SFT "
               f"{s['sft_reward_model_score']:.3f})") if "reward_model_score" in s else ""
    return policy.report(s, "PPO") + learned
