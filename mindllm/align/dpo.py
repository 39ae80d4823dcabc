"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", eq. 7): the reward model's Bradley-Terry loss with the implicit reward
r(x, y) = beta log(pi(y|x) / pi_ref(y|x)), so no reward model and no sampling are needed.
MindSpore; usable inside mindspore.jit."""
from mindspore import ops


def dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, *, beta):
    """-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]), batch mean.

    Inputs are sequence log-probabilities (sums over each response's tokens), (B,) each.
    Returns (loss, chosen_rewards, rejected_rewards): the rewards beta (policy - ref) are (B,), without gradient
    (they are for logging: TRL's loss_type="sigmoid", rewards/chosen and rewards/rejected)."""
    chosen_rewards = beta * (policy_chosen_logp - ref_chosen_logp)        # (B,)
    rejected_rewards = beta * (policy_rejected_logp - ref_rejected_logp)  # (B,)
    loss = ops.softplus(-(chosen_rewards - rejected_rewards)).mean()      # -log sigmoid(z) = softplus(-z)
    return loss, ops.stop_gradient(chosen_rewards), ops.stop_gradient(rejected_rewards)
