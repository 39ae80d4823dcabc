"""Supervised fine-tuning (SFT, 有监督微调) of a course GPT on arithmetic problems (data/arithmetic.py): the first
step of InstructGPT's recipe, and the model every later alignment step starts from and is compared with.

The loss scores the answer tokens only (as instruction tuning does, tasks/instruct.py); the prompt is given. Every
evaluation answers held-out problems greedily, so metrics.jsonl holds the exact-match curve beside the loss, and as
many training problems: `sft.stop_at` ends the run once those reach a target. The model learns carrying abruptly, at
a step that depends on the seed, so a fixed step count leaves it anywhere from 7% to 99%; a target leaves every
later method the same room to improve.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass


from .. import runs
from ..config import opt
from ..data.dataset import IGNORE, RowBatches
from ..errors import UserError
from ..models.layers import cross_entropy
from ..tasks import Task
from ..tasks.causal_lm import language_model  # noqa: F401  (runs.load_model builds the GPT from the saved config)
from ..tasks.common import fixed_batches, loss_line, parameter_counts, unigram_loss
from . import problems
from .rollout import sequences

ARCHS = ("gpt",)
SAMPLES = True
CLOZE = False  # its held-out text is problems, scored by their answers
HEADLINE = (("exact match", "exact_match", {"start model": "start_exact_match",
                                             "most frequent answer": "frequent_answer_exact_match",
                                             "random answer": "random_answer_exact_match"}),)


@dataclass
class Options(problems.ProblemOptions):
    init: str = opt("", doc="the out_dir of the causal_lm run to fine-tune (its sizes and tokenizer are used)")
    eval_problems: int = opt(200, lo=1, doc="held-out problems answered greedily at every evaluation (and as many "
                                            "training problems)")
    stop_at: float = opt(0.0, lo=0.0, hi=1.0, doc="end SFT at the first evaluation whose mean reward (exact match "
                                                 "by default) on training problems reaches this (0: train "
                                                 "max_iters); it learns carrying abruptly, at a step that depends on "
                                                 "the seed")


def check(cfg) -> None:
    if not cfg.options.init:
        raise UserError("sft starts from a GPT trained with mindllm: set sft.init to the out_dir of a causal_lm run")


def start_model(cfg, init: str):
    """The model of `init` (a causal_lm run) with its weights; this run's config takes its model section, so the
    saved config.yaml describes the network it holds."""
    if not os.path.isfile(os.path.join(init, runs.CONFIG)):
        raise UserError(f"sft.init='{init}' is not a mindllm run directory (no {runs.CONFIG}); train the GPT first")
    runs.require_float(init, "fine-tune")
    model, tokenizer, init_cfg = runs.load_model(init)
    if init_cfg.model.arch not in ARCHS:
        raise UserError(f"sft.init='{init}' is a {init_cfg.model.arch} model; the alignment week trains a GPT")
    cfg.model = init_cfg.model
    tokenizer.save(os.path.join(cfg.out_dir, runs.TOKENIZER))
    return model, tokenizer


def encode(splits: dict, tokenizer, eos: int, block_size: int) -> tuple[dict, int]:
    """{split: (x, y)} for the response-only loss (y is IGNORE on the prompt and the padding), and the row length:
    the longest problem's."""
    ids = {k: (problems.encode_prompts(v, tokenizer),
               [a + [eos] for a in problems.encode([p["answer"] for p in v], tokenizer)]) for k, v in splits.items()}
    length = max(len(p) + len(a) for prompts, answers in ids.values() for p, a in zip(prompts, answers)) - 1
    if length > block_size:
        raise UserError(f"a problem takes {length + 1} tokens; the model's context is {block_size}")
    return {k: sequences(*v, pad=eos, length=length)[:2] for k, v in ids.items()}, length


def build(cfg) -> Task:
    o = cfg.options
    model, tokenizer = start_model(cfg, o.init)
    train, test = problems.load(o, cfg.seed)
    _, eos = problems.eos_id(tokenizer)
    arrays, length = encode({"train": train, "test": test}, tokenizer, eos, model.config.block_size)
    start = problems.score(model, tokenizer, test, reward=o.reward)

    def loss_fn(x, y):
        return cross_entropy(model(x), y)

    def eval_metrics(net) -> dict:
        s = problems.score(net, tokenizer, test[:o.eval_problems], reward=o.reward)
        seen = problems.score(net, tokenizer, train[:o.eval_problems], reward=o.reward)
        return {"exact_match": s["exact_match"], "reward": s["reward"], "train_exact_match": seen["exact_match"],
                "train_reward": seen["reward"]}

    def stop(record: dict) -> str:
        """The stopping rule looks at training problems only: choosing the step by held-out ones would leak them."""
        if o.stop_at and record["train_reward"] >= o.stop_at:
            return (f"mean reward ({o.reward}) {record['train_reward']:.3f} on {min(o.eval_problems, len(train))} "
                    f"training problems >= sft.stop_at={o.stop_at:g}")
        return ""

    def final_eval(net) -> dict:
        s = problems.score(net, tokenizer, test, reward=o.reward)
        return {**s, "start_exact_match": start["exact_match"], "start_reward": start["reward"],
                "start_answers": start["answers"], "test_problems": len(test),
                **problems.baselines(train, test, cfg.seed)}

    V, batch = tokenizer.vocab_size, cfg.train.batch_size
    answer_ids = [a[a != IGNORE] for a in (arrays["train"][1], arrays["test"][1])]
    return Task(model=model, loss_fn=loss_fn, tokenizer=tokenizer, tokens_per_batch=batch * length,
                train_batches=RowBatches(arrays["train"], batch, cfg.seed),
                eval_batches={name: fixed_batches(RowBatches, (arrays[split], batch), cfg.seed + 1,
                                                  cfg.train.eval_iters)
                              for name, split in (("train", "train"), ("val", "test"))},
                baselines={"uniform": math.log(V), "unigram": unigram_loss(*answer_ids, V)},
                eval_metrics=eval_metrics, final_eval=final_eval, stop=stop if o.stop_at else None,
                describe=f"SFT of the GPT in {o.init} ({parameter_counts(model)}) on {len(train)} train / "
                         f"{len(test)} held-out {o.digits}-digit additions ({o.lang}); before tuning it answers "
                         f"{start['exact_match']:.1%} exactly")


def report(s: dict) -> str:
    lines = [loss_line(s),
             f"held-out problems ({s['test_problems']}), greedy: exact match {s['exact_match']:.1%} after SFT | "
             f"baselines: before SFT {s['start_exact_match']:.1%}, most frequent answer "
             f"{s['frequent_answer_exact_match']:.1%}, random answer {s['random_answer_exact_match']:.1%}"]
    lines += [f"  {q!r} -> {a!r} (right: {r!r})" for q, a, r in s["answers"][:4]]
    return "\n".join(lines)
