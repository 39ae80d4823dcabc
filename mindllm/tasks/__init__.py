"""Tasks: what differs between the course's objectives, one file each. `mindllm.train` runs every one of them
through the same loop, and a config names its task with the `task:` key.

    causal_lm       predict the next token of a text corpus (GPT)                      tasks/causal_lm.py
    seq2seq_dates   normalise dates with the encoder-decoder Transformer                tasks/seq2seq_dates.py
    bert_pretrain   BERT's masked LM + next-sentence prediction on a corpus             tasks/bert_pretrain.py
    classify        fine-tune BERT for sentence classification (sentiment)             tasks/classify.py
    instruct        instruction-tune a course GPT on question/answer records           tasks/instruct.py
    sft             fine-tune a course GPT to answer arithmetic problems (alignment)   align/sft.py
    reward_model    a scalar head on the SFT GPT, trained on preference pairs           align/reward_model.py
    dpo             direct preference optimisation of the SFT GPT on the same pairs     align/dpo.py
    ppo             RLHF: PPO against a reward (learned or exact), KL to the SFT GPT    align/ppo.py
    grpo            GRPO: group-normalised rewards, no value head, KL to the SFT GPT    align/grpo.py

A task module holds everything about its objective:
    ARCHS          the model.arch values it trains (the first is the default)
    Options        a dataclass: the task's own config section, written under the task's name
    check(cfg)     the task's checks across config keys, run when the config is loaded
    build(cfg)     -> Task: the model, the batches, the loss and the evaluation
    report(summary) -> str: the lines `python -m mindllm.train` prints at the end
    SAMPLES        whether the trained model generates text (the loop then prints a sample)
    CLOZE          whether `python -m mindllm.eval` can ask it multiple-choice questions from its corpus
    HEADLINE       what `python -m mindllm.eval` reports of final_eval: (label, key, {baseline label: key}), ...
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

NAMES = ("causal_lm", "seq2seq_dates", "bert_pretrain", "classify", "instruct", "sft", "reward_model", "dpo", "ppo", "grpo")
ALIGNMENT = ("sft", "reward_model", "dpo", "ppo", "grpo")  # the alignment week's steps live in mindllm/align/, one file per method
INSTRUCTION_CORPORA = ("instructions_en", "instructions_zh")


def get(name: str):
    """The module of task `name` (imported by name, so a task may itself open the run of another)."""
    package = "mindllm.align" if name in ALIGNMENT else __name__
    return importlib.import_module(f"{package}.{name}")


def infer(arch: str, corpus: str) -> str:
    """The task of a config without a `task:` key (written before it existed, or overrides only), from model.arch
    and data.corpus."""
    if arch in ("gpt", "llama"):
        return "instruct" if corpus in INSTRUCTION_CORPORA else "causal_lm"
    return {"transformer": "seq2seq_dates", "bert": "bert_pretrain", "bert_classifier": "classify"}.get(arch, arch)


@dataclasses.dataclass(kw_only=True)
class Task:
    """One objective, ready to train: a batch is a tuple of arrays and `loss_fn(*batch)` its loss.

    `eval_metrics(model)` adds metrics such as val accuracy to every evaluation, `final_eval(model)` task metrics
    such as test accuracy to the summary, `train_stats()` figures of the latest batches to every logged step. `eval_loss_fn`, if given, is the loss evaluations report (a mixture of
    experts trains on its loss plus a load-balancing term, and reports the loss alone)."""
    model: Any
    loss_fn: Callable
    train_batches: Any  # an object with next(), state(), set_state()
    eval_batches: dict  # {"train": [batch, ...], "val": [...]}, the same batches at every evaluation
    tokenizer: Any
    baselines: dict  # {"uniform": ..., "unigram": ...}: losses of models that know nothing / no context
    tokens_per_batch: int
    describe: str
    eval_metrics: Callable | None = None
    final_eval: Callable | None = None
    eval_loss_fn: Callable | None = None
    # eval_loss_fn runs a compiled forward itself (the one eval_metrics uses): the loop calls it as it is. Each
    # compiled graph holds its own memory, ~230 MB for MiniLM at batch 32, so one forward graph serves both
    eval_loss_compiled: bool = False
    train_stats: Callable | None = None  # () -> {name: float} of the batches just trained on (an RL rollout's reward)
    shown: tuple = ()  # which of train_stats the progress bar shows
    reference: Any = None  # a frozen model the loss measures the trained one against (alignment's SFT model)
    stop: Callable | None = None  # (an evaluation's record) -> why to end before max_iters, or "" (SFT's target)


def build(cfg) -> Task:
    return get(cfg.task).build(cfg)
