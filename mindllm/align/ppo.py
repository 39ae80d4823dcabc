"""PPO for RLHF (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Ouyang et al. 2022, InstructGPT;
the reference implementation is TRL's former PPOTrainer, whose helpers masked_whiten / masked_var this follows).

On the rollouts, in NumPy (outside the compiled graph): the per-token rewards (KL penalty + the reward model's
score), GAE advantages and returns, whitening. In the training step, in MindSpore: the clipped policy and value
losses. Shapes: B sequences, T token positions; `mask` (B, T) float 0/1 is 1 on the response tokens, one
contiguous span per row (prompt tokens before it and padding after it are 0)."""
import numpy as np
from mindspore import ops

from .logprobs import masked_mean


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
