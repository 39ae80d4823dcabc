"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", section 4.1): no value model; each prompt
gets `group_size` sampled responses and a response's advantage is its reward standardised within its group
(outcome supervision: the same advantage on every token of the response)."""
import numpy as np
from mindspore import ops

from .kl import kl_k3
from .logprobs import masked_mean


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
