"""Alignment (对齐), the week after instruction tuning: a course GPT fine-tuned on arithmetic problems whose answers can
be checked (data/arithmetic.py), then aligned with a reward model and PPO (RLHF), DPO and GRPO. Each method is one
file and one task of the training loop (`task: sft | reward_model | ...`, configs/align_*.yaml); its loss is a
plain function checked against an independent computation (tests/test_align_math.py).

- problems.py: the problem set of an SFT run (inherited by the runs that start from it) and greedy scoring.
- rollout.py: many prompts answered at once by sampling with the KV-cache decoder; rows for the losses.
- heads.py: the GPT with a scalar head: the reward model (score), PPO's value head (v_head).
- pairs.py: `python -m mindllm.align.pairs`: preference pairs ranked from the SFT model's own answers.
- sft.py: supervised fine-tuning on the problems (the response-only loss of instruction tuning).
- logprobs.py: per-token log-probabilities of the chosen tokens, entropy, masked means.
- kl.py: Schulman's per-token estimators k1, k2, k3 of KL(pi || pi_ref).
- reward_model.py: the Bradley-Terry loss, its pairwise accuracy, and the reward model's training.
- dpo.py: the DPO loss (Rafailov et al. 2023) and its implicit rewards.
- ppo.py: GAE, KL-penalised rewards, whitening (NumPy, on rollouts) and PPO's clipped policy and value losses.
- grpo.py: group-relative advantages (NumPy) and the GRPO loss (DeepSeekMath).
"""
