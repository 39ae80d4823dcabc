"""Alignment (对齐): the loss functions of RLHF, DPO and GRPO as plain functions, each checked against an
independent computation in tests/test_align_math.py.

- logprobs.py: per-token log-probabilities of the chosen tokens, entropy, masked means.
- kl.py: Schulman's per-token estimators k1, k2, k3 of KL(pi || pi_ref).
- reward_model.py: the Bradley-Terry loss of a reward model and its pairwise accuracy.
- dpo.py: the DPO loss (Rafailov et al. 2023) and its implicit rewards.
- ppo.py: GAE, KL-penalised rewards, whitening (NumPy, on rollouts) and PPO's clipped policy and value losses.
- grpo.py: group-relative advantages (NumPy) and the GRPO loss (DeepSeekMath).
"""
