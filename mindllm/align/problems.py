"""The problems every alignment run works on (data/arithmetic.py), fixed once by the SFT run and inherited by the
runs that start from it (reward model, PPO, DPO, GRPO), and how a model's answers to them score.

    score(model, tokenizer, test, reward="exact_match")   # greedy answers -> exact match, mean reward, length
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import runs
from ..config import opt
from ..data import arithmetic
from ..errors import UserError
from ..tasks.instruct import end_of_answer
from .rollout import sample_responses


@dataclass
class ProblemOptions:
    """The problem family of an SFT run (its own section; runs started from it inherit these)."""
    lang: str = opt("en", choices=("en", "zh"), doc="en: '123 plus 456 is 579'; zh: '一百二十三加四百五十六等于五百七十九'")
    digits: int = opt(3, lo=1, hi=4, doc="both numbers have this many digits: the difficulty")
    train_problems: int = opt(20000, lo=10, doc="problems to train on")
    test_problems: int = opt(500, lo=10, doc="held-out problems (no pair of numbers in both splits)")
    reward: str = opt("exact_match", choices=tuple(arithmetic.REWARDS),
                      doc="exact_match: 1 for the right answer; partial_credit: also 0.5 x the share of right digits "
                          "counted from the units")


def sft_run(path: str) -> str:
    """The SFT run a run descends from (itself, for an SFT run): where the problem settings live."""
    seen = set()
    while True:
        if not os.path.isfile(os.path.join(path, runs.CONFIG)):
            raise UserError(f"'{path}' is not a mindllm run directory (no {runs.CONFIG}); train the SFT run first "
                            f"(configs/align_sft.yaml)")
        cfg = runs.read_config(path)
        if cfg.task == "sft":
            return path
        init = getattr(cfg.options, "init", "")
        if cfg.task not in ("reward_model", "ppo", "dpo", "grpo") or not init or path in seen:
            raise UserError(f"'{path}' is a {cfg.task} run, not one of the alignment runs (sft, reward_model, ppo, "
                            f"dpo, grpo): start from an SFT run")
        seen.add(path)
        path = init


def settings(path: str):
    """(ProblemOptions, seed) of the SFT run `path` descends from."""
    cfg = runs.read_config(sft_run(path))
    return cfg.options, cfg.seed


def load(options: ProblemOptions, seed: int) -> tuple[list[dict], list[dict]]:
    return arithmetic.make_problems(options.lang, digits=options.digits, n_train=options.train_problems,
                                    n_test=options.test_problems, seed=seed)


def encode(texts: list[str], tokenizer) -> list[list[int]]:
    """The token ids of problems' prompts or answers; a tokenizer without their characters is refused with the
    reason."""
    try:
        return [tokenizer.encode(t) for t in texts]
    except UserError as e:
        raise UserError(f"the start model's tokenizer cannot write these problems ({e}); start from a character GPT "
                        f"of the same language (English: the Shakespeare run, Chinese: the People's Daily run)"
                        ) from None


def encode_prompts(problems: list[dict], tokenizer) -> list[list[int]]:
    return encode([p["prompt"] for p in problems], tokenizer)


def eos_id(tokenizer) -> tuple[str, int]:
    text = end_of_answer(tokenizer)
    return text, tokenizer.encode(text)[0]


def answer_length(problems: list[dict], tokenizer) -> int:
    """Tokens an answer may take: the longest reference answer's, its end-of-answer token, and a little room."""
    return max(len(tokenizer.encode(p["answer"])) for p in problems) + 3


def score(model, tokenizer, problems: list[dict], *, reward: str, temperature: float = 0.0, seed: int = 0,
          batch_size: int = 100) -> dict:
    """Answers to `problems` (greedy by default) -> exact match, mean reward and mean answer length (characters)."""
    eos_text, eos = eos_id(tokenizer)
    responses = sample_responses(model, encode_prompts(problems, tokenizer), eos=eos, temperature=temperature,
                                 max_new_tokens=answer_length(problems, tokenizer), seed=seed,
                                 batch_size=min(batch_size, len(problems)))
    texts = [tokenizer.decode(r) for r in responses]
    exact = [arithmetic.exact_match(t, p["answer"], eos=eos_text) for t, p in zip(texts, problems)]
    rewards = [arithmetic.REWARDS[reward](t, p["answer"], eos=eos_text) for t, p in zip(texts, problems)]
    return {"exact_match": float(np.mean(exact)), "reward": float(np.mean(rewards)),
            "answer_chars": float(np.mean([len(arithmetic.answer_of(t, eos=eos_text)) for t in texts])),
            "answers": [[p["prompt"], arithmetic.answer_of(t, eos=eos_text), p["answer"]]
                        for t, p in zip(texts[:8], problems[:8])]}


def baselines(train: list[dict], test: list[dict], seed: int) -> dict:
    """What knowing nothing scores: always the most frequent training answer, and a random training answer."""
    return {"frequent_answer_exact_match": arithmetic.most_frequent_answer_accuracy(train, test),
            "random_answer_exact_match": arithmetic.random_answer_accuracy(train, test, seed=seed)}
