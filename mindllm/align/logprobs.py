"""Log-probabilities of the tokens a sequence actually contains, the entropy of the next-token distribution, and
the masked mean every loss of this package averages with. MindSpore; usable inside mindspore.jit."""
from mindspore import ops


def token_logprobs(logits, targets):
    """log p(target) at every position: log_softmax(logits)[b, t, targets[b, t]].

    logits (B, T, V) float32, targets (B, T) int32 -> (B, T). (TRL: selective_log_softmax.)"""
    logp = ops.log_softmax(logits, -1)                                    # (B, T, V)
    return ops.gather_elements(logp, 2, ops.expand_dims(targets, -1)).squeeze(-1)  # (B, T)


def entropy(logits):
    """Entropy in nats of the distribution softmax(logits) at every position: H = -sum_v p_v log p_v.

    logits (B, T, V) -> (B, T). (TRL: entropy_from_logits.)"""
    logp = ops.log_softmax(logits, -1)       # (B, T, V)
    return -(ops.exp(logp) * logp).sum(-1)   # (B, T)


def masked_mean(x, mask, axis=None):
    """Mean of x over the entries where mask is 1: sum(x * mask) / sum(mask), over `axis` (all axes if None).

    mask is float 0/1 with x's shape. An all-zero mask gives 0, not NaN (the count is clamped to 1, as TRL does),
    so a row without response tokens contributes nothing instead of poisoning the batch."""
    return (x * mask).sum(axis) / ops.maximum(mask.sum(axis), 1.0)


def response_logprobs(logits, targets):
    """log p of each response token (B, T), and 0 wherever `targets` is IGNORE (-100: the prompt, the padding), so
    a row's sum is its answer's log-probability."""
    keep = (targets >= 0).astype(logits.dtype)
    return token_logprobs(logits, ops.maximum(targets, 0)) * keep
