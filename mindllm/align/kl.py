"""Per-token estimators of KL(pi || pi_ref) from tokens x sampled from pi (J. Schulman, "Approximating KL
divergence", 2020, http://joschu.net/blog/kl-approx.html). With log-ratio d = log pi_ref(x) - log pi(x):

    k1 = -d                 unbiased, high variance, negative for some tokens
    k2 = d^2 / 2            biased (low bias when pi ~ pi_ref), always >= 0
    k3 = e^d - d - 1        unbiased (E_pi[e^d] = 1), always >= 0 since e^d >= 1 + d; the one GRPO uses

Each takes logp = log pi(x), ref_logp = log pi_ref(x) of any equal shapes and returns that shape. The true KL is
the mean over the sampled tokens. MindSpore; usable inside mindspore.jit."""
from mindspore import ops


def kl_k1(logp, ref_logp):
    """k1 = log pi(x) - log pi_ref(x)."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """k2 = 0.5 (log pi(x) - log pi_ref(x))^2."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp, ref_logp):
    """k3 = exp(ref - logp) - (ref - logp) - 1 (DeepSeekMath eq. 4; TRL's GRPO per_token_kl)."""
    d = ref_logp - logp
    return ops.exp(d) - d - 1
