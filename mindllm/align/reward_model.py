"""The reward model's pairwise loss: a human preferred `chosen` over `rejected`; under the Bradley-Terry model
P(chosen > rejected) = sigmoid(r_c - r_r), and the loss is its negative log-likelihood (Ouyang et al. 2022,
"Training language models to follow instructions with human feedback", eq. 1; TRL's RewardTrainer).
MindSpore; usable inside mindspore.jit."""
from mindspore import ops


def bradley_terry_loss(r_chosen, r_rejected):
    """mean(-log sigmoid(r_c - r_r)) over the batch; r_chosen, r_rejected (B,) -> scalar.

    -log sigmoid(z) = softplus(-z) = log(1 + e^-z), which stays finite for large |z| (log(sigmoid) would give
    log(0) = -inf once sigmoid underflows)."""
    return ops.softplus(-(r_chosen - r_rejected)).mean()


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs ranked correctly (r_c > r_r strictly; ties count as wrong); (B,) -> scalar."""
    return (r_chosen > r_rejected).astype(r_chosen.dtype).mean()
