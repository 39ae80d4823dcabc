"""The reward model (奖励模型) of RLHF: the SFT GPT with a scalar head, trained on preference pairs with the
Bradley–Terry loss -log σ(r(chosen) - r(rejected)) (InstructGPT, Ouyang et al. 2022), so that it ranks answers as
the pairs do. Held-out pairs (from problems it never saw) measure it: pairwise accuracy beside 50% chance.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor, ops

from .. import kernels, runs
from ..checkpoint import named_arrays, load_arrays
from ..config import opt
from ..data import load_tokenizer
from ..data.dataset import RowBatches
from ..errors import UserError
from ..tasks import Task
from ..tasks.causal_lm import gpt_config
from ..tasks.common import compiled, fixed_batches, parameter_counts
from . import pairs as pair_files
from . import problems
from .heads import RewardModel, scored_rows


def bradley_terry_loss(r_chosen, r_rejected):
    """mean(-log sigmoid(r_c - r_r)) over the batch; r_chosen, r_rejected (B,) -> scalar.

    -log sigmoid(z) = softplus(-z) = log(1 + e^-z), which stays finite for large |z| (log(sigmoid) would give
    log(0) = -inf once sigmoid underflows)."""
    return ops.softplus(-(r_chosen - r_rejected)).mean()


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs ranked correctly (r_c > r_r strictly; ties count as wrong); (B,) -> scalar."""
    return (r_chosen > r_rejected).astype(r_chosen.dtype).mean()


ARCHS = ("gpt",)
SAMPLES = False  # it scores text, it does not write any
CLOZE = False
HEADLINE = (("held-out pairwise accuracy", "pair_accuracy", {"chance": "chance_accuracy",
                                                              "longer answer preferred": "longer_accuracy"}),)


@dataclass
class Options:
    init: str = opt("", doc="the SFT run the reward model starts from (its body; the score head starts afresh)")
    pairs: str = opt("", doc="the pairs.jsonl written by python -m mindllm.align.pairs from the same SFT run")


def check(cfg) -> None:
    if not cfg.options.init or not cfg.options.pairs:
        raise UserError("reward_model needs reward_model.init (an SFT run) and reward_model.pairs (its pairs.jsonl, "
                        "from python -m mindllm.align.pairs)")


def load_reward_model(path: str):
    """(model, tokenizer) of a trained reward-model run, in eval mode: PPO's learned reward. Built from the run's
    own config and checkpoint alone (its SFT run and pairs file may have moved since)."""
    out_dir, ckpt = runs.locate(path)
    cfg = runs.read_config(out_dir)
    if cfg.task != "reward_model":
        raise UserError(f"'{path}' is a {cfg.task} run, not a reward model (train one with "
                        f"configs/align_reward_model.yaml)")
    tokenizer = load_tokenizer(os.path.join(out_dir, runs.TOKENIZER))
    model = RewardModel(gpt_config(cfg, tokenizer.vocab_size))
    runs.restore(model, out_dir, ckpt)
    kernels.fuse(model)  # as it was trained (on CPU)
    model.set_train(False)
    return model, tokenizer


def from_sft(cfg, init: str):
    """A RewardModel holding the SFT run's body; this run's config takes the SFT run's model section."""
    problems.sft_run(init)
    model, tokenizer, init_cfg = runs.load_model(init)
    cfg.model = init_cfg.model
    rm = RewardModel(gpt_config(cfg, tokenizer.vocab_size))
    load_arrays(rm, named_arrays(model), init, skip=("score.weight",))
    tokenizer.save(os.path.join(cfg.out_dir, runs.TOKENIZER))
    return rm, tokenizer


def encode(items: list[dict], tokenizer, pad: int, length: int):
    prompts = problems.encode_prompts(items, tokenizer)
    chosen = scored_rows(prompts, [tokenizer.encode(p["chosen"]) for p in items], pad=pad, length=length)
    rejected = scored_rows(prompts, [tokenizer.encode(p["rejected"]) for p in items], pad=pad, length=length)
    return (*chosen, *rejected)


def build(cfg) -> Task:
    o = cfg.options
    model, tokenizer = from_sft(cfg, o.init)
    everything = pair_files.read(o.pairs)
    train, test = (pair_files.split(everything, s, o.pairs) for s in ("train", "test"))
    _, eos = problems.eos_id(tokenizer)
    length = min(model.config.block_size,
                 max(len(tokenizer.encode(p["prompt"] + max(p["chosen"], p["rejected"], key=len)))
                     for p in everything))
    arrays = {"train": encode(train, tokenizer, eos, length), "test": encode(test, tokenizer, eos, length)}

    def loss_fn(xc, lc, xr, lr):
        return bradley_terry_loss(model(xc, lc), model(xr, lr))

    def accuracy(net, split) -> dict:
        score = compiled(net, cfg)
        xc, lc, xr, lr = (Tensor(a) for a in arrays[split])
        rc, rr = score(xc, lc).asnumpy(), score(xr, lr).asnumpy()
        return {"pair_accuracy" if split == "test" else "train_pair_accuracy": float(np.mean(rc > rr)),
                **({"margin": float(np.mean(rc - rr))} if split == "test" else {})}

    def final_eval(net) -> dict:
        # the length heuristic: the longer answer wins, a tie is a coin toss
        longer = np.mean([np.sign(len(p["chosen"]) - len(p["rejected"])) * 0.5 + 0.5 for p in test])
        return {**accuracy(net, "test"), **accuracy(net, "train"), "chance_accuracy": 0.5,
                "longer_accuracy": float(longer), "test_pairs": len(test), "train_pairs": len(train)}

    batch = cfg.train.batch_size
    return Task(model=model, loss_fn=loss_fn, tokenizer=tokenizer, tokens_per_batch=2 * batch * length,
                train_batches=RowBatches(arrays["train"], batch, cfg.seed),
                eval_batches={name: fixed_batches(RowBatches, (arrays[split], batch), cfg.seed + 1,
                                                  cfg.train.eval_iters)
                              for name, split in (("train", "train"), ("val", "test"))},
                # a reward that ranks nothing (equal scores) has loss ln 2; so does a coin
                baselines={"uniform": math.log(2), "unigram": math.log(2)},
                eval_metrics=lambda net: accuracy(net, "test"), final_eval=final_eval,
                describe=f"reward model from the SFT run {o.init} ({parameter_counts(model)}) on {len(train)} "
                         f"train / {len(test)} held-out preference pairs ({o.pairs})")


def report(s: dict) -> str:
    return (f"Bradley-Terry loss {s['val_loss']:.3f} on held-out pairs after {s['steps']} steps (ln 2 = 0.693 ranks "
            f"nothing)\nheld-out pairwise accuracy {s['pair_accuracy']:.1%} on {s['test_pairs']} pairs (train "
            f"{s['train_pair_accuracy']:.1%}) | baselines: chance 50.0%, longer answer preferred "
            f"{s['longer_accuracy']:.1%}")
