"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", eq. 7): the reward model's Bradley-Terry loss with the implicit reward
r(x, y) = beta log(pi(y|x) / pi_ref(y|x)), so no reward model and no sampling are needed.
As a task of the training loop (`task: dpo`): the policy starts from the SFT run, the pairs are those the reward
model trains on (python -m mindllm.align.pairs), and the frozen SFT model's log-probabilities of every pair are
computed once, before the first step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mindspore import ops

from ..config import opt
from ..data.dataset import RowBatches
from ..errors import UserError
from ..tasks import Task
from ..tasks.causal_lm import language_model  # noqa: F401  (runs.load_model: a DPO run is a GPT)
from ..tasks.common import parameter_counts
from . import pairs as pair_files
from . import policy, problems
from .logprobs import response_logprobs
from .rollout import sequences

ARCHS = ("gpt",)
SAMPLES = True
CLOZE = False
HEADLINE = (("exact match", "exact_match", {"SFT": "sft_exact_match", "most frequent answer":
                                            "frequent_answer_exact_match"}),)


def dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, *, beta):
    """-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]), batch mean.

    Inputs are sequence log-probabilities (sums over each response's tokens), (B,) each.
    Returns (loss, chosen_rewards, rejected_rewards): the rewards beta (policy - ref) are (B,), without gradient
    (they are for logging: TRL's loss_type="sigmoid", rewards/chosen and rewards/rejected)."""
    chosen_rewards = beta * (policy_chosen_logp - ref_chosen_logp)        # (B,)
    rejected_rewards = beta * (policy_rejected_logp - ref_rejected_logp)  # (B,)
    loss = ops.softplus(-(chosen_rewards - rejected_rewards)).mean()      # -log sigmoid(z) = softplus(-z)
    return loss, ops.stop_gradient(chosen_rewards), ops.stop_gradient(rejected_rewards)


@dataclass
class Options:
    init: str = opt("", doc="the SFT run: the policy starts from it and it is the frozen reference")
    pairs: str = opt("", doc="the pairs.jsonl written by python -m mindllm.align.pairs from the same SFT run")
    beta: float = opt(0.1, lo=0.0, lo_open=True, doc="how far from the reference the implicit reward lets the "
                                                     "policy go: smaller beta, larger KL")
    nll_weight: float = opt(0.0, lo=0.0, doc="adds this times the NLL of the chosen answers (RPO, Pang et al. 2024; "
                                             "TRL's rpo_alpha): keeps DPO from lowering the chosen answers too")


def check(cfg) -> None:
    if not cfg.options.init or not cfg.options.pairs:
        raise UserError("dpo needs dpo.init (the SFT run) and dpo.pairs (preference pairs from python -m "
                        "mindllm.align.pairs); a DPO run without pairs has nothing to prefer")


def pair_arrays(items: list[dict], start, reference) -> tuple:
    """(x_chosen, y_chosen, x_rejected, y_rejected, ref_logp_chosen, ref_logp_rejected) of the pairs."""
    prompts = problems.encode_prompts(items, start.tokenizer)
    out = []
    for side in ("chosen", "rejected"):
        answers = problems.encode([p[side] for p in items], start.tokenizer)
        x, y, _ = sequences(prompts, answers, pad=start.eos, length=start.length)
        out.append((x, y))
    refs = [policy.logprobs_of(reference, x, y).sum(-1) for x, y in out]
    return (*out[0], *out[1], *refs)


def build(cfg) -> Task:
    o = cfg.options
    start = policy.Start(cfg, o.init)
    model, reference = start.model(cfg=cfg), start.reference(cfg)
    everything = pair_files.read(o.pairs)
    arrays = {s: pair_arrays(pair_files.split(everything, s, o.pairs), start, reference) for s in ("train", "test")}

    def sequence_logp(x, y):
        return response_logprobs(model(x), y).sum(-1)

    def loss_fn(xc, yc, xr, yr, ref_c, ref_r):
        chosen = response_logprobs(model(xc), yc)  # (B, T)
        loss, _, _ = dpo_loss(chosen.sum(-1), sequence_logp(xr, yr), ref_c, ref_r, beta=o.beta)
        if o.nll_weight > 0:  # per chosen token, as the SFT loss
            loss = loss - o.nll_weight * chosen.sum() / ops.maximum((yc >= 0).sum(), 1).astype(chosen.dtype)
        return loss

    def pair_metrics(net) -> dict:
        """The implicit reward beta log(pi / pi_ref) on held-out pairs: does it rank them as the answers do?"""
        xc, yc, xr, yr, ref_c, ref_r = arrays["test"]
        margin = (policy.logprobs_of(net, xc, yc).sum(-1) - ref_c) - (policy.logprobs_of(net, xr, yr).sum(-1) - ref_r)
        # a tie (the policy still equals the reference, at step 0) ranks half right, as a coin would
        return {"pair_accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
                "reward_margin": float(o.beta * margin.mean())}

    def eval_metrics(net) -> dict:
        return {**pair_metrics(net), **policy.eval_metrics(net, start)}

    def final_eval(net) -> dict:
        return {**policy.final_eval(net, start, cfg), **pair_metrics(net), "train_pairs": len(arrays["train"][0])}

    eval_batches = start.answer_batches(cfg)
    batch = cfg.train.batch_size
    return Task(model=model, loss_fn=loss_fn, tokenizer=start.tokenizer, tokens_per_batch=2 * batch * start.length,
                train_batches=RowBatches(arrays["train"], batch, cfg.seed), eval_batches=eval_batches,
                eval_loss_fn=policy.answer_nll(model), baselines=start.baselines(), eval_metrics=eval_metrics,
                final_eval=final_eval, reference=reference,
                describe=f"DPO (beta {o.beta}) from the SFT run {o.init} ({parameter_counts(model)}) on "
                         f"{len(arrays['train'][0])} train / {len(arrays['test'][0])} held-out preference pairs")


def report(s: dict) -> str:
    return (f"held-out pairs ranked right by the implicit reward: {s['pair_accuracy']:.1%} (chance 50%)\n" +
            policy.report(s, "DPO"))
