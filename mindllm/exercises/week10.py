"""Week 10 exercises. Alignment (notebook 10_alignment): the references are the package's own losses in
`mindllm.align`: the reward model's Bradley-Terry loss, PPO's GAE (NumPy) and clipped surrogate, the DPO loss and
GRPO's group-relative advantages. The MindSpore references get Tensors and give back numpy.
Every check draws fresh random cases from a seeded generator, with the edge cases that break a first attempt:
large score gaps (a naive log(sigmoid) gives -inf), masks with prompt tokens and padding, ratios at the clip
boundaries, groups whose rewards are all equal."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ..align import dpo as align_dpo
from ..align import grpo as align_grpo
from ..align import ppo as align_ppo
from ..align import reward_model as align_rm
from .core import Mismatch, exercise, expect_close


def _t(a) -> Tensor:
    return Tensor(np.asarray(a, dtype=np.float32))


def _scalar(got, what: str) -> float:
    try:
        return float(np.asarray(got, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise Mismatch(f"{what}: return one number (the batch mean), got {type(got).__name__} "
                       f"{str(got)[:60]}") from None


def _gaps(rng, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    return (rng.normal(size=n) * scale).astype(np.float32), (rng.normal(size=n) * scale).astype(np.float32)


@exercise("week10.bradley_terry",
          hint="z = r_chosen - r_rejected; -log sigmoid(z) = log(1 + e^-z) = np.logaddexp(0, -z) stays finite when "
               "z is -100 (np.log(1 / (1 + np.exp(-z))) gives inf); then the mean over the batch")
def bradley_terry(student) -> int:
    rng = np.random.default_rng(101)
    cases = [_gaps(rng, n, s) for n, s in ((1, 1.0), (8, 1.0), (64, 3.0), (5, 0.01))]
    cases.append((np.array([100.0, -100.0, 0.0, 50.0], np.float32), np.array([0.0, 0.0, 0.0, -60.0], np.float32)))
    cases.append((np.array([1.5, 1.5], np.float32), np.array([1.5, 1.5], np.float32)))  # ties: ln 2
    for r_c, r_r in cases:
        want = float(align_rm.bradley_terry_loss(_t(r_c), _t(r_r)).asnumpy())
        what = f"my_bradley_terry_loss of {len(r_c)} pairs (largest |gap| {np.abs(r_c - r_r).max():.3g})"
        got = _scalar(student(r_c.copy(), r_r.copy()), what)
        if not np.isfinite(got):
            raise Mismatch(f"{what} is {got}, expected {want:.6g}: the loss must stay finite for large gaps")
        expect_close(got, want, what, rtol=1e-5, atol=1e-6)
    return len(cases)


def _mask(rng, B: int, T: int) -> np.ndarray:
    """One contiguous answer span per row: prompt tokens (0) before it, padding (0) after it; some rows end at
    the last position (no padding), some start at 0 (no prompt)."""
    mask = np.zeros((B, T))
    for b in range(B):
        start = 0 if b == 1 else int(rng.integers(0, T - 1))
        end = T if b == 0 else int(rng.integers(start + 1, T + 1))
        mask[b, start:end] = 1.0
    return mask


@exercise("week10.gae_advantages",
          hint="per row, walk the answer tokens from the last to the first with next_v = next_a = 0 after the "
               "span: delta = r_t + gamma * next_v - V_t; A_t = delta + gamma * lam * next_a; then next_v = V_t, "
               "next_a = A_t. Returns = A + V on the mask; both 0 elsewhere (ignore r and V outside the mask)")
def gae_advantages(student) -> int:
    rng = np.random.default_rng(102)
    n = 0
    for B, T, gamma, lam in [(1, 4, 1.0, 0.95), (3, 6, 1.0, 0.95), (4, 9, 0.99, 0.9), (5, 12, 0.9, 1.0),
                             (2, 5, 1.0, 0.0), (6, 16, 1.0, 0.95)]:
        mask = _mask(rng, B, T)
        rewards, values = rng.normal(size=(B, T)), rng.normal(size=(B, T))  # junk outside the mask on purpose
        want_adv, want_ret = align_ppo.gae(rewards, values, mask, gamma=gamma, lam=lam)
        got = student(rewards.copy(), values.copy(), mask.copy(), gamma, lam)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch("my_gae must return (advantages, returns)")
        what = f"my_gae on {B}x{T} (gamma {gamma}, lambda {lam}, answer spans {mask.sum(1).astype(int).tolist()})"
        expect_close(got[0], want_adv, what + ", the advantages", rtol=1e-6, atol=1e-9)
        expect_close(got[1], want_ret, what + ", the returns", rtol=1e-6, atol=1e-9)
        n += 1
    return n


def _ppo_reference(logp, old_logp, adv, clip) -> np.ndarray:
    """The package's clipped loss of each token alone (a mask with one 1), negated: the objective per token."""
    out = np.zeros(logp.shape)
    for i in np.ndindex(*logp.shape):
        one = np.zeros(logp.shape, np.float32)
        one[i] = 1.0
        loss, _, _ = align_ppo.ppo_policy_loss(_t(logp), _t(old_logp), _t(adv), Tensor(one), clip=clip)
        out[i] = -float(loss.asnumpy())
    return out


@exercise("week10.ppo_clip_objective",
          hint="rho = exp(logp - old_logp); return np.minimum(rho * A, np.clip(rho, 1 - clip, 1 + clip) * A) per "
               "token: with A > 0 the gain stops at rho = 1 + clip, with A < 0 at rho = 1 - clip; min, not max")
def ppo_clip_objective(student) -> int:
    rng = np.random.default_rng(103)
    n = 0
    for B, T, clip, spread in [(1, 3, 0.2, 0.1), (2, 5, 0.2, 0.5), (3, 4, 0.1, 1.0), (4, 6, 0.3, 0.3)]:
        old = rng.normal(-1.5, 0.5, size=(B, T)).astype(np.float32)
        logp = (old + rng.normal(0, spread, size=(B, T))).astype(np.float32)
        adv = rng.normal(size=(B, T)).astype(np.float32)
        adv[0, 0] = 0.0                                                   # no advantage, no gain
        want = _ppo_reference(logp, old, adv, clip)
        got = student(logp.copy(), old.copy(), adv.copy(), clip)
        expect_close(got, want, f"my_ppo_clip_objective on {B}x{T} (clip {clip}, |log ratio| up to "
                                f"{np.abs(logp - old).max():.2f})", rtol=1e-4, atol=1e-6)
        n += 1
    # signs and sides of the clip: ratios 0.5, 1, 1.5 against advantages +1 and -1
    old = np.zeros((2, 3), np.float32)
    logp = np.log(np.array([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]], np.float32))
    adv = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], np.float32)
    want = _ppo_reference(logp, old, adv, 0.2)
    expect_close(student(logp.copy(), old.copy(), adv.copy(), 0.2), want, "my_ppo_clip_objective for ratios "
                 "(0.5, 1, 1.5) with A = +1 (row 0) and A = -1 (row 1), clip 0.2", rtol=1e-5, atol=1e-6)
    return n + 1


@exercise("week10.dpo",
          hint="z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)); the loss is the mean "
               "of -log sigmoid(z) = np.logaddexp(0, -z), which stays finite when z is -300")
def dpo(student) -> int:
    rng = np.random.default_rng(104)
    n = 0
    for size, beta, scale in [(1, 0.1, 2.0), (16, 0.1, 2.0), (64, 0.5, 5.0), (8, 1.0, 100.0), (4, 0.05, 0.5)]:
        pc, pr, rc, rr = (rng.normal(-20, scale, size=size).astype(np.float32) for _ in range(4))
        if scale >= 100:                            # a huge margin either way: log(sigmoid) would underflow
            pc[0], pr[0] = rc[0] - 300.0, rr[0] + 300.0
        want = float(align_dpo.dpo_loss(_t(pc), _t(pr), _t(rc), _t(rr), beta=beta)[0].asnumpy())
        what = f"my_dpo_loss of {size} pairs (beta {beta})"
        got = _scalar(student(pc.copy(), pr.copy(), rc.copy(), rr.copy(), beta), what)
        if not np.isfinite(got):
            raise Mismatch(f"{what} is {got}, expected {want:.6g}: the loss must stay finite for large margins")
        expect_close(got, want, what, rtol=1e-5, atol=1e-6)
        n += 1
    same = np.full(3, -5.0, np.float32)             # the policy is the reference: the loss is ln 2
    expect_close(_scalar(student(same, same, same, same, 0.1), "my_dpo_loss"), np.log(2.0),
                 "my_dpo_loss when the policy equals the reference (ln 2)", rtol=1e-6)
    return n + 1


@exercise("week10.grpo_advantages",
          hint="reshape to (problems, group_size); A = (r - mean) / (std + 1e-4) per group with the UNBIASED std "
               "(np.std(..., ddof=1)); a group of equal rewards has std 0 and gets A = 0 (not nan)")
def grpo_advantages(student) -> int:
    rng = np.random.default_rng(105)
    n = 0
    for prompts, group in [(1, 2), (2, 4), (4, 8), (3, 16), (8, 8)]:
        rewards = rng.integers(0, 2, size=prompts * group).astype(np.float64)     # exact match: 0 or 1
        if prompts > 1:
            rewards[:group] = 1.0                                                 # a group all right
            rewards[group:2 * group] = 0.0 if prompts > 2 else rewards[group:2 * group]
        if n % 2:
            rewards = rewards * 0.5 + rng.random(rewards.shape) * 0.5 * (rng.random(rewards.shape) < 0.3)  # partial
        want = align_grpo.group_advantages(rewards, group_size=group)
        got = student(rewards.copy(), group)
        expect_close(got, want, f"my_group_advantages of {prompts} problem(s) x {group} answers (rewards "
                                f"{np.round(rewards[:group], 2).tolist()}...)", rtol=1e-6, atol=1e-9)
        n += 1
    return n
