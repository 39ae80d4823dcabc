"""The alignment week's loss functions (mindllm.align) against independent computations: NumPy written out by hand
on small fixed tensors (GAE as the direct sum, not the recursion), in PyNative and compiled with mindspore.jit;
the KL estimators against the exact KL of a 5-token vocabulary by Monte Carlo; gradients of the DPO and
Bradley-Terry losses against float64 central finite differences; Hugging Face TRL's own helpers as a second oracle
where they can be called on tensors without a Trainer."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindllm.align.dpo import dpo_loss
from mindllm.align.grpo import group_advantages, grpo_loss
from mindllm.align.kl import kl_k1, kl_k2, kl_k3
from mindllm.align.logprobs import entropy, masked_mean, token_logprobs
from mindllm.align.ppo import gae, kl_penalised_rewards, ppo_policy_loss, ppo_value_loss, whiten
from mindllm.align.reward_model import bradley_terry_loss, pairwise_accuracy

MODES = pytest.mark.parametrize("graph", [False, True], ids=["pynative", "jit"])


def tensor(a):
    a = np.asarray(a)
    return Tensor(a.astype(np.int32 if a.dtype.kind in "iu" else np.float32))


def run(fn, *arrays, graph, **options):
    """fn(*arrays, **options) on float32/int32 tensors, eagerly or compiled; the outputs as float64 NumPy."""
    def call(*args):
        return fn(*args, **options)

    out = (ms.jit(call) if graph else call)(*[tensor(a) for a in arrays])
    if isinstance(out, tuple):
        return tuple(o.asnumpy().astype(np.float64) for o in out)
    return out.asnumpy().astype(np.float64)


# ---- log-probabilities -------------------------------------------------------------------------------------------
LOGITS = np.array([[[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.0]],
                   [[-0.5, 0.2, 0.1, 2.5], [1.5, 1.5, -3.0, 0.0], [0.3, -0.7, 2.2, -1.1]]])  # (B=2, T=3, V=4)
TARGETS = np.array([[1, 3, 0], [3, 2, 2]])


def np_logprobs_entropy(logits, targets):
    B, T, V = logits.shape
    logp, ent = np.zeros((B, T)), np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            z = logits[b, t]
            p = np.exp(z) / np.exp(z).sum()
            logp[b, t] = math.log(p[targets[b, t]])
            ent[b, t] = -sum(pv * math.log(pv) for pv in p)
    return logp, ent


@MODES
def test_token_logprobs_and_entropy(graph):
    want_logp, want_ent = np_logprobs_entropy(LOGITS, TARGETS)
    np.testing.assert_allclose(run(token_logprobs, LOGITS, TARGETS, graph=graph), want_logp, atol=1e-5)
    np.testing.assert_allclose(run(entropy, LOGITS, graph=graph), want_ent, atol=1e-5)
    # the uniform row by hand: log p = -log 4 for every token, entropy log 4
    assert abs(want_logp[0, 1] + math.log(4)) < 1e-12 and abs(want_ent[0, 1] - math.log(4)) < 1e-12


@MODES
def test_masked_mean(graph):
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    mask = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert run(masked_mean, x, mask, graph=graph) == pytest.approx((1 + 2 + 6) / 3)
    np.testing.assert_allclose(run(masked_mean, x, mask, axis=1, graph=graph), [1.5, 6.0])
    # a row without any masked entry averages to 0 instead of NaN
    np.testing.assert_allclose(run(masked_mean, x, [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], axis=1, graph=graph),
                               [0.0, 5.0])


# ---- KL estimators -----------------------------------------------------------------------------------------------
@MODES
def test_kl_estimators_by_hand(graph):
    logp, ref = np.array([-1.0, -2.0, -0.3]), np.array([-1.5, -1.0, -0.3])
    ratio = np.exp(ref) / np.exp(logp)  # pi_ref / pi
    np.testing.assert_allclose(run(kl_k1, logp, ref, graph=graph), [0.5, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(run(kl_k2, logp, ref, graph=graph), [0.125, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(run(kl_k3, logp, ref, graph=graph), ratio - np.log(ratio) - 1, atol=1e-5)


def test_kl_estimators_against_exact_kl():
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])  # pi
    q = np.array([0.05, 0.1, 0.15, 0.3, 0.4])  # pi_ref
    exact = float((p * np.log(p / q)).sum())
    n = 200_000
    x = np.random.default_rng(0).choice(5, size=n, p=p)  # tokens sampled from pi
    logp, ref = np.log(p[x]), np.log(q[x])
    k = {name: run(fn, logp, ref, graph=False) for name, fn in [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)]}
    se = {name: v.std() / math.sqrt(n) for name, v in k.items()}
    for name in ("k1", "k3"):  # unbiased
        assert abs(k[name].mean() - exact) < 4 * se[name], (name, k[name].mean(), exact)
    assert (k["k3"] >= 0).all() and (k["k1"] < 0).any()  # k3 is never negative, k1 is for some tokens
    assert abs(k["k2"].mean() - exact) > 20 * se["k2"]    # k2 is biased: far off when pi and pi_ref differ
    assert se["k3"] < se["k1"]                              # and k3 has the lower variance here (Schulman's point)


# ---- reward model ------------------------------------------------------------------------------------------------
@MODES
def test_bradley_terry_loss_and_accuracy(graph):
    r_c, r_r = np.array([2.0, 0.0, -1.0, 50.0]), np.array([1.0, 0.0, 1.0, -50.0])
    z = r_c - r_r
    want = np.mean([-math.log(1 / (1 + math.exp(-v))) for v in z])
    assert run(bradley_terry_loss, r_c, r_r, graph=graph) == pytest.approx(want, rel=1e-5)
    assert run(pairwise_accuracy, r_c, r_r, graph=graph) == pytest.approx(0.5)  # the tie counts as wrong
    # a confidently wrong pair: -log sigmoid(-200) = 200 (+ e^-200), finite (log(sigmoid) would be -inf)
    assert run(bradley_terry_loss, [-100.0], [100.0], graph=graph) == pytest.approx(200.0, rel=1e-6)
    assert run(bradley_terry_loss, [0.0], [0.0], graph=graph) == pytest.approx(math.log(2), rel=1e-6)


def np_bt(r_c, r_r):
    return np.mean(np.log1p(np.exp(-(r_c - r_r))))


def central_diff(f, args, i, h=1e-6):
    """d f / d args[i], elementwise, by central differences in float64."""
    g = np.zeros_like(args[i])
    for j in range(args[i].size):
        up = [a.copy() for a in args]
        down = [a.copy() for a in args]
        up[i].flat[j] += h
        down[i].flat[j] -= h
        g.flat[j] = (f(*up) - f(*down)) / (2 * h)
    return g


@MODES
def test_bradley_terry_gradient(graph):
    r_c, r_r = np.array([0.3, -1.2, 2.0]), np.array([0.1, 0.4, -0.5])
    grad = ms.grad(bradley_terry_loss, grad_position=(0, 1))
    got = (ms.jit(grad) if graph else grad)(tensor(r_c), tensor(r_r))
    for i in (0, 1):
        np.testing.assert_allclose(got[i].asnumpy(), central_diff(np_bt, [r_c, r_r], i), rtol=1e-4, atol=1e-7)


# ---- DPO ---------------------------------------------------------------------------------------------------------
DPO_IN = [np.array(v) for v in ([-10.0, -20.0, -5.0], [-12.0, -18.0, -9.0],   # policy chosen, rejected
                                [-11.0, -19.0, -6.0], [-11.0, -19.0, -7.0])]  # reference chosen, rejected
BETA = 0.1


def np_dpo(pc, pr, rc, rr, beta=BETA):
    z = beta * ((pc - rc) - (pr - rr))
    return np.mean(-np.log(1 / (1 + np.exp(-z))))


@MODES
def test_dpo_loss(graph):
    loss, chosen, rejected = run(dpo_loss, *DPO_IN, beta=BETA, graph=graph)
    np.testing.assert_allclose(chosen, [0.1, -0.1, 0.1], atol=1e-6)      # beta (policy - ref), by hand
    np.testing.assert_allclose(rejected, [-0.1, 0.1, -0.2], atol=1e-6)
    assert loss == pytest.approx(np_dpo(*DPO_IN), rel=1e-6)
    # equal policy and reference: every reward 0, the loss log 2
    same = run(dpo_loss, DPO_IN[2], DPO_IN[3], DPO_IN[2], DPO_IN[3], beta=BETA, graph=graph)
    assert same[0] == pytest.approx(math.log(2), rel=1e-6)


def dpo_scalar(pc, pr, rc, rr):
    return dpo_loss(pc, pr, rc, rr, beta=BETA)[0]


@MODES
def test_dpo_gradient(graph):
    grad = ms.grad(dpo_scalar, grad_position=(0, 1))
    g_chosen, g_rejected = (ms.jit(grad) if graph else grad)(*[tensor(a) for a in DPO_IN])
    np.testing.assert_allclose(g_chosen.asnumpy(), central_diff(np_dpo, DPO_IN, 0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_rejected.asnumpy(), central_diff(np_dpo, DPO_IN, 1), rtol=1e-4, atol=1e-7)
    # gradient descent raises the chosen log-prob and lowers the rejected one
    assert (g_chosen.asnumpy() < 0).all() and (g_rejected.asnumpy() > 0).all()


# ---- PPO ---------------------------------------------------------------------------------------------------------
# Row 0: a prompt token, three response tokens, padding; row 1: five response tokens. Numbers outside the mask are
# deliberately large: they must not leak in.
MASK = np.array([[0.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
REWARDS = np.array([[9.0, 0.1, -0.2, 1.0, 7.0], [0.0, 0.5, 0.0, -0.3, 2.0]])
VALUES = np.array([[5.0, 0.4, 0.3, 0.6, 8.0], [0.2, 0.1, -0.4, 0.3, 0.5]])


def np_gae_direct(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the rest of the span, V = 0 after its last token."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        span = np.flatnonzero(mask[b])
        r, v = rewards[b, span], np.append(values[b, span], 0.0)
        delta = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(span))]
        for i, t in enumerate(span):
            adv[b, t] = sum((gamma * lam) ** l * delta[i + l] for l in range(len(span) - i))
    return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.95), (1.0, 1.0), (0.99, 0.0)])
def test_gae_is_the_direct_sum(gamma, lam):
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=gamma, lam=lam)
    want_adv, want_ret = np_gae_direct(REWARDS, VALUES, MASK, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, atol=1e-12)
    np.testing.assert_allclose(ret, want_ret, atol=1e-12)
    assert (adv[MASK == 0] == 0).all() and (ret[MASK == 0] == 0).all()
    if gamma == lam == 1.0:  # Monte Carlo: the return is the sum of the rewards still to come
        np.testing.assert_allclose(ret[0, 1:4], [0.1 - 0.2 + 1.0, -0.2 + 1.0, 1.0], atol=1e-12)
    if lam == 0.0:  # TD(0): A_t = delta_t
        assert adv[0, 3] == pytest.approx(1.0 - 0.6) and adv[0, 2] == pytest.approx(-0.2 + 0.99 * 0.6 - 0.3)


def test_kl_penalised_rewards():
    logp = np.array([[-9.0, -1.0, -2.0, -0.5, -9.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    ref = np.array([[-1.0, -1.5, -1.0, -0.5, -1.0], [-2.0, -1.0, -0.5, -1.0, -3.0]])
    score = np.array([1.0, -2.0])
    got = kl_penalised_rewards(score, logp, ref, MASK, kl_coef=0.1)
    want = np.zeros_like(logp)
    for b in range(2):
        span = np.flatnonzero(MASK[b])
        for t in span:
            want[b, t] = -0.1 * (logp[b, t] - ref[b, t]) + (score[b] if t == span[-1] else 0.0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0, 3] == pytest.approx(1.0) and got[1, 4] == pytest.approx(-0.1 * 2.0 - 2.0)


def test_whiten():
    x = np.array([[100.0, 1.0, 2.0, 4.0, -100.0], [3.0, 0.0, -1.0, 5.0, 2.0]])
    vals = x[MASK == 1]
    got = whiten(x, MASK)
    np.testing.assert_allclose(got[MASK == 1], (vals - vals.mean()) / vals.std(ddof=1), atol=1e-7)
    assert (got[MASK == 0] == 0).all()
    kept = whiten(x, MASK, shift_mean=False)
    assert kept[MASK == 1].mean() == pytest.approx(vals.mean()) and kept[MASK == 1].std(ddof=1) == pytest.approx(1.0)


LOG_RATIO = np.array([[0.5, -0.5, 0.0], [0.1, 0.3, -0.3]])
ADV = np.array([[1.0, 1.0, 3.0], [-1.0, -2.0, 0.5]])
PMASK = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD_LOGP = np.array([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.0]])


@MODES
def test_ppo_policy_loss(graph):
    logp = OLD_LOGP + LOG_RATIO
    loss, clip_fraction, approx_kl = run(ppo_policy_loss, logp, OLD_LOGP, ADV, PMASK, clip=0.2, graph=graph)
    r = np.exp(LOG_RATIO)
    clipped = np.clip(r, 0.8, 1.2)
    objective = np.minimum(r * ADV, clipped * ADV)  # the surrogate to maximise
    on = PMASK == 1
    assert loss == pytest.approx(-objective[on].mean(), rel=1e-5)
    # only token (0, 0) is clipped: ratio e^0.5 > 1.2 with A > 0 (token (1, 1) has A < 0, so its minimum is unclipped)
    assert clip_fraction == pytest.approx(1 / 5)
    assert (objective != r * ADV)[on].sum() == 1
    assert approx_kl == pytest.approx(0.5 * (LOG_RATIO[on] ** 2).mean(), rel=1e-5)


@MODES
def test_ppo_value_loss(graph):
    values = np.array([[0.5, 1.0, -0.2], [2.0, 0.0, 9.0]])
    old = np.array([[0.2, 1.1, -0.2], [1.0, 0.3, 0.0]])
    returns = np.array([[1.0, 0.0, 0.5], [0.0, 0.2, -9.0]])
    got = run(ppo_value_loss, values, old, returns, PMASK, clip=0.2, graph=graph)
    on = PMASK == 1
    want = [max((v - R) ** 2, (min(max(v, o - 0.2), o + 0.2) - R) ** 2)
            for v, o, R in zip(values[on], old[on], returns[on])]
    assert got == pytest.approx(0.5 * np.mean(want), rel=1e-5)


# ---- GRPO --------------------------------------------------------------------------------------------------------
def test_group_advantages():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 0.0])
    got = group_advantages(rewards, group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    np.testing.assert_allclose(got[:4], [a, -a, -a, a], rtol=1e-12)
    assert (got[4:8] == 0).all()          # all rewards equal: no signal
    biased = (rewards[:4] - 0.5) / (rewards[:4].std() + 1e-4)
    assert not np.allclose(got[:4], biased)
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=5)
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=1)


def test_group_advantages_equal_trl():
    torch = pytest.importorskip("torch")
    trl_utils = pytest.importorskip("trl.trainer.utils")
    rewards = np.random.default_rng(1).normal(size=12)
    r = torch.tensor(rewards)
    # GRPOTrainer._generate_and_score_completions with scale_rewards="group", line for line
    mean = torch.nanmean(r.view(-1, 4), dim=1).repeat_interleave(4, dim=0)
    std = trl_utils.nanstd(r.view(-1, 4), dim=1).repeat_interleave(4, dim=0)
    np.testing.assert_allclose(group_advantages(rewards, group_size=4), ((r - mean) / (std + 1e-4)).numpy(),
                               rtol=1e-7)  # nanstd scales the mean square by n/(n-1): rounding differs


G_LOGP = np.array([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, -7.0, -7.0]])
G_OLD = np.array([[-1.4, -0.5, -1.9, -0.3], [-0.2, -1.0, -1.0, -1.0]])
G_REF = np.array([[-1.1, -0.9, -2.5, -0.1], [-0.6, -1.0, -1.0, -1.0]])
G_MASK = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # responses of 4 and 2 tokens
G_ADV = np.array([1.0, -0.5])


def np_grpo_per_token(clip, beta):
    out = np.zeros_like(G_LOGP)
    for b in range(2):
        for t in range(4):
            r = math.exp(G_LOGP[b, t] - G_OLD[b, t])
            r_clip = min(max(r, 1 - clip), 1 + clip)
            q_over_p = math.exp(G_REF[b, t]) / math.exp(G_LOGP[b, t])
            out[b, t] = -min(r * G_ADV[b], r_clip * G_ADV[b]) + beta * (q_over_p - math.log(q_over_p) - 1)
    return out


@MODES
def test_grpo_loss(graph):
    loss, kl = run(grpo_loss, G_LOGP, G_OLD, G_REF, G_ADV, G_MASK, clip=0.2, beta=0.04, graph=graph)
    per_token = np_grpo_per_token(0.2, 0.04)
    row_means = [per_token[b, G_MASK[b] == 1].mean() for b in range(2)]
    assert loss == pytest.approx(np.mean(row_means), rel=1e-5)
    k3 = np_grpo_per_token(0.2, 1.0) - np_grpo_per_token(0.2, 0.0)
    assert kl == pytest.approx(k3[G_MASK == 1].mean(), rel=1e-5)
    # TRL's default "dapo" normalisation (one mean over all 6 tokens) is a different number here
    assert abs(loss - per_token[G_MASK == 1].mean()) > 1e-2
    # without clipping and KL, on-policy (r = 1): the loss is minus the mean advantage
    on_policy = run(grpo_loss, G_LOGP, G_LOGP, G_LOGP, G_ADV, G_MASK, clip=0.2, beta=0.04, graph=graph)
    assert on_policy[0] == pytest.approx(-G_ADV.mean(), abs=1e-6) and on_policy[1] == pytest.approx(0, abs=1e-7)


# ---- TRL's helpers as a second oracle ----------------------------------------------------------------------------
def test_logprobs_and_entropy_equal_trl():
    torch = pytest.importorskip("torch")
    trl_utils = pytest.importorskip("trl.trainer.utils")
    logits = np.random.default_rng(2).normal(0, 3, size=(3, 7, 11)).astype(np.float32)
    targets = np.random.default_rng(3).integers(0, 11, size=(3, 7))
    theirs_logp = trl_utils.selective_log_softmax(torch.tensor(logits), torch.tensor(targets)).numpy()
    theirs_ent = trl_utils.entropy_from_logits(torch.tensor(logits)).numpy()
    np.testing.assert_allclose(run(token_logprobs, logits, targets, graph=False), theirs_logp, atol=1e-5)
    np.testing.assert_allclose(run(entropy, logits, graph=False), theirs_ent, atol=1e-5)
