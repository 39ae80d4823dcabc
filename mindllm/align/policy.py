"""What the methods that train the policy share (DPO, PPO, GRPO): the policy and its frozen reference, both loaded
from the SFT run; the policy's own rollouts served as the loop's batches; the evaluation every method reports the
same way (exact match, reward, KL from the SFT model, answer length) on the SFT run's held-out problems.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor

from .. import kernels, runs
from ..checkpoint import load_arrays, named_arrays
from ..config import opt
from ..data import arithmetic
from ..data.dataset import IGNORE, RowBatches
from ..errors import UserError
from ..models.gpt import GPT
from ..models.layers import cross_entropy
from ..tasks.causal_lm import gpt_config
from ..tasks.common import fixed_batches, unigram_loss
from . import problems, sft
from .rollout import sample_responses, sequences


class Start:
    """The SFT run a method starts from: its problems, tokenizer, end-of-answer token, and weights."""

    def __init__(self, cfg, init: str):
        problems.sft_run(init)  # refuses what is not an alignment run, with the reason
        runs.require_float(init, "align")
        model, self.tokenizer, init_cfg = runs.load_model(init)
        if init_cfg.task == "reward_model":
            raise UserError(f"'{init}' is a reward model; a policy starts from an SFT run")
        cfg.model = init_cfg.model  # the saved config.yaml then describes the network this run holds
        self.weights = {k: v.copy() for k, v in named_arrays(model).items()}  # asnumpy() shares memory: copy
        self.options, self.seed = problems.settings(init)
        self.train, self.test = problems.load(self.options, self.seed)
        self.eos_text, self.eos = problems.eos_id(self.tokenizer)
        self.max_new = problems.answer_length(self.train + self.test, self.tokenizer)
        self.prompts = problems.encode_prompts(self.train, self.tokenizer)
        self.length = max(len(p) for p in self.prompts + problems.encode_prompts(self.test, self.tokenizer)) + \
            self.max_new
        self.tokenizer.save(os.path.join(cfg.out_dir, runs.TOKENIZER))
        self._reference = None

    def model(self, cls=GPT, cfg=None):
        """A fresh `cls` (GPT or a subclass with a head) holding the SFT weights; a head starts as it initialises."""
        net = cls(gpt_config(cfg, self.tokenizer.vocab_size))
        names = {n for n, _ in net.parameters_and_names()}
        # a head the start run lacks starts as it initialises; one it has and `cls` lacks (a PPO run's value head,
        # when a method starts from it) stays behind
        load_arrays(net, {k: v for k, v in self.weights.items() if k in names}, "the start run",
                    skip=tuple(names - set(self.weights)))
        return net

    def reference(self, cfg):
        """The frozen SFT model (one per run): never handed to the optimizer, so its weights stay bit-identical."""
        if self._reference is None:
            ref = kernels.fuse(self.model(GPT, cfg))  # the same kernels as the policy: equal weights, equal numbers
            ref.set_train(False)
            for p in ref.get_parameters():
                p.requires_grad = False
            self._reference = ref
        return self._reference

    def answer_batches(self, cfg) -> dict:
        """Fixed batches of the held-out problems with their right answers: what evaluations report as "val loss"
        (the policy's NLL of correct answers; a policy that drifts away from them shows it here)."""
        arrays, _ = sft.encode({"train": self.train, "test": self.test}, self.tokenizer, self.eos,
                               cfg.model.block_size)
        self.answer_ids = [a[a != IGNORE] for a in (arrays["train"][1], arrays["test"][1])]
        return {name: fixed_batches(RowBatches, (arrays[split], cfg.train.batch_size), cfg.seed + 1,
                                    cfg.train.eval_iters) for name, split in (("train", "train"), ("val", "test"))}

    def baselines(self) -> dict:
        """The answers' loss under a uniform and a unigram model (after answer_batches)."""
        V = self.tokenizer.vocab_size
        return {"uniform": math.log(V), "unigram": unigram_loss(*self.answer_ids, V)}


def answer_nll(model):
    def eval_loss_fn(x, y):
        return cross_entropy(model(x), y)
    return eval_loss_fn


def logprobs_of(net, x: np.ndarray, y: np.ndarray, *, entropy: bool = False, chunk: int = 256):
    """(N, T) log-probabilities of the targets y under `net` (0 where y is IGNORE), in eval mode, in numpy; with
    `entropy`, also the (N, T) entropy of each next-token distribution."""
    logps, entropies = [], []
    for s in range(0, len(x), chunk):
        logits = net(Tensor(x[s:s + chunk])).asnumpy().astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))  # (n, T, V)
        t = y[s:s + chunk]
        logps.append(np.take_along_axis(logp, np.maximum(t, 0)[..., None], -1)[..., 0] * (t >= 0))
        entropies.append(-(np.exp(logp) * logp).sum(-1))
    logp = np.concatenate(logps).astype(np.float32)
    return (logp, np.concatenate(entropies).astype(np.float32)) if entropy else logp


def kl_from(policy, reference, start: Start, items: list[dict], *, seed: int, batch_size: int = 100) -> dict:
    """KL(policy || SFT) per answer, estimated on the policy's own samples (temperature 1) as the mean of
    sum_t log pi(a_t) - log pi_ref(a_t) (unbiased: the samples come from the policy), and their entropy proxy:
    the answers' mean negative log-probability."""
    prompts = problems.encode_prompts(items, start.tokenizer)
    responses = sample_responses(policy, prompts, eos=start.eos, max_new_tokens=start.max_new, temperature=1.0,
                                 seed=seed, batch_size=min(batch_size, len(items)))
    x, y, mask = sequences(prompts, responses, pad=start.eos, length=start.length)
    lp, ref = logprobs_of(policy, x, y), logprobs_of(reference, x, y)
    return {"kl_from_sft": float(((lp - ref) * mask).sum(-1).mean()),
            "sampled_nll": float(-(lp * mask).sum(-1).mean())}


EVAL_PROBLEMS = 200  # held-out problems answered at every evaluation (all of them at the end)


def eval_metrics(net, start: Start) -> dict:
    """Every evaluation: greedy exact match and reward on the first held-out problems (the curve of the run)."""
    s = problems.score(net, start.tokenizer, start.test[:EVAL_PROBLEMS], reward=start.options.reward)
    return {"exact_match": s["exact_match"], "reward_greedy": s["reward"]}


def final_eval(policy, start: Start, cfg) -> dict:
    """The alignment table's row: greedy exact match and reward on every held-out problem, KL from the SFT model and
    answer length, beside the SFT model's own figures and the trivial answers."""
    reference = start.reference(cfg)
    policy.set_train(False)
    ours = problems.score(policy, start.tokenizer, start.test, reward=start.options.reward)
    base = problems.score(reference, start.tokenizer, start.test, reward=start.options.reward)
    return {**ours, **kl_from(policy, reference, start, start.test, seed=cfg.seed),
            "sft_exact_match": base["exact_match"], "sft_reward": base["reward"],
            "sft_answer_chars": base["answer_chars"], "test_problems": len(start.test),
            **problems.baselines(start.train, start.test, start.seed)}


def report(s: dict, method: str) -> str:
    lines = [f"held-out problems ({s['test_problems']}), greedy: exact match {s['exact_match']:.1%} after {method} | "
             f"baselines: SFT {s['sft_exact_match']:.1%}, most frequent answer {s['frequent_answer_exact_match']:.1%}"
             f", random answer {s['random_answer_exact_match']:.1%}",
             f"mean reward {s['reward']:.3f} (SFT {s['sft_reward']:.3f}); KL from the SFT model {s['kl_from_sft']:.3f} "
             f"nats per answer; answers {s['answer_chars']:.2f} characters long (SFT {s['sft_answer_chars']:.2f})"]
    lines += [f"  {q!r} -> {a!r} (right: {r!r})" for q, a, r in s["answers"][:4]]
    return "\n".join(lines)


@dataclass
class RLOptions:
    """What PPO and GRPO share: where they start, how much they sample, how often they reuse it."""
    init: str = opt("", doc="the SFT run: the policy starts from it and it is the frozen reference")
    rollout_batch: int = opt(64, lo=1, doc="answers sampled per rollout (GRPO: prompts x group_size)")
    epochs: int = opt(2, lo=1, doc="passes over each rollout before the next (sample reuse; the clip bounds it)")
    clip: float = opt(0.2, lo=0.0, lo_open=True, doc="the ratio pi/pi_old is clipped to [1 - clip, 1 + clip]")
    temperature: float = opt(1.0, lo=0.0, lo_open=True, doc="sampling temperature of the rollouts")


def steps_per_rollout(cfg) -> int:
    return cfg.options.epochs * cfg.options.rollout_batch // cfg.train.batch_size


def check_rl(cfg) -> None:
    """Refuse settings that cannot run, or could not resume exactly, with the reason."""
    o, t = cfg.options, cfg.train
    if not o.init:
        raise UserError(f"{cfg.task} starts from an SFT run: set {cfg.task}.init to its out_dir")
    if o.rollout_batch % t.batch_size:
        raise UserError(f"{cfg.task}.rollout_batch={o.rollout_batch} must be a multiple of train.batch_size="
                        f"{t.batch_size} (each rollout is cut into minibatches of train.batch_size)")
    per = steps_per_rollout(cfg)
    for key in ("max_iters", "ckpt_interval"):
        if getattr(t, key) % per:
            raise UserError(f"train.{key}={getattr(t, key)} must be a multiple of the {per} steps one rollout "
                            f"takes ({cfg.task}.epochs x rollout_batch / train.batch_size), so checkpoints fall "
                            f"between rollouts and a resumed run repeats the same ones")


DECODE_ROWS = 128  # rows the decoder runs at once: prompts of one length fill batches of this size (one graph)


def rollout(net, start: Start, rows: list[int], *, temperature: float, rng) -> dict:
    """The policy's answers to the training problems `rows`: tokens, texts and the rows of the loss."""
    items = [start.train[i] for i in rows]
    prompts = [start.prompts[i] for i in rows]
    responses = sample_responses(net, prompts, eos=start.eos, max_new_tokens=start.max_new, temperature=temperature,
                                 seed=int(rng.integers(2 ** 31)), batch_size=min(len(rows), DECODE_ROWS))
    net.set_train(True)  # the decoder left it in eval mode
    x, y, mask = sequences(prompts, responses, pad=start.eos, length=start.length)
    texts = [start.tokenizer.decode(r) for r in responses]
    return {"items": items, "prompts": prompts, "responses": responses, "texts": texts, "x": x, "y": y,
            "mask": mask}


def rewards_of(r: dict, start: Start, name: str) -> np.ndarray:
    """(N,) the problem's own reward of each answer: exact_match or partial_credit."""
    return np.array([arithmetic.REWARDS[name](t, p["answer"], eos=start.eos_text)
                     for t, p in zip(r["texts"], r["items"])], np.float32)


def rollout_stats(r: dict, start: Start, *, score, logp, ref_logp, entropy) -> dict:
    """What the progress bar and metrics.jsonl show of a rollout."""
    mask = r["mask"]
    return {"reward": float(np.mean(score)), "sample_exact_match": float(rewards_of(r, start, "exact_match").mean()),
            "kl": float(((logp - ref_logp) * mask).sum(-1).mean()),
            "entropy": float((entropy * mask).sum() / max(mask.sum(), 1.0)),
            "answer_chars": float(np.mean([len(arithmetic.answer_of(t, eos=start.eos_text)) for t in r["texts"]]))}
