"""One run's report card as a dict: the trained model and the same config freshly initialised through every
part, each number as a metric beside its baselines. Which parts apply comes from the task module (cfg.task)."""
from __future__ import annotations

import math
import os
import sys

from tqdm import tqdm

from .. import device, kernels, runs, tasks
from ..checkpoint import read_state
from . import choice, cloze, lm


def metric(name: str, value, better: str, **baselines) -> dict:
    """One line of the card: `better` is 'higher' or 'lower'; baselines with value None are left out."""
    return {"name": name, "value": value, "better": better,
            "baselines": {k: v for k, v in baselines.items() if v is not None}}


def untrained_task(run_dir: str):
    """The run's task rebuilt from its config without its checkpoint, seeded: the weights training started from
    (for a fine-tuning run, the model it fine-tuned)."""
    cfg = runs.read_config(run_dir)
    cfg.resume = True  # reuse the run's tokenizer.json instead of training (and writing) a new one
    device.seed_everything(cfg.seed)
    task = tasks.build(cfg)
    kernels.fuse(task.model)  # the same computation as the trained model's (load_trained fuses too)
    task.model.set_train(False)
    return task


def bar(desc: str, total: int):
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=1.0, disable=total < 2)


def perplexity_part(trained, fresh, language_model: bool) -> list[dict]:
    """Held-out loss for every task; perplexity and bits per byte for language models."""
    n = len(trained.eval_batches["val"])
    with bar("held-out loss", 2 * n) as b:
        score = lm.language_scores if language_model else lm.held_out_loss
        ours, before = score(trained, progress=b.update), score(fresh, progress=b.update)
    base = trained.baselines
    out = [metric("val loss (nats/token)", ours["val_loss"], "lower", untrained=before["val_loss"],
                  uniform=base["uniform"], unigram=base["unigram"])]
    if language_model:
        out += [metric("val perplexity", ours["perplexity"], "lower", untrained=before["perplexity"],
                       uniform=math.exp(base["uniform"]), unigram=math.exp(base["unigram"])),
                metric("val bits per byte", ours["bits_per_byte"], "lower", untrained=before["bits_per_byte"],
                       uniform=lm.per_byte(base["uniform"], ours), unigram=lm.per_byte(base["unigram"], ours))]
    return out


def cloze_part(trained, fresh, cfg, limit: int) -> tuple[list[dict], dict]:
    items = cloze.build_items(cfg, trained.tokenizer, limit)
    if not items:  # a held-out text without a blank to ask about
        return [], {"items": 0}
    rows = sum(len(it.options) for it in items)
    with bar("cloze", 2 * rows) as b:
        ours = choice.accuracy(trained.model, trained.tokenizer, items, progress=b.update)
        before = choice.accuracy(fresh.model, fresh.tokenizer, items, progress=b.update)
    chance = 1 / cloze.N_OPTIONS
    lines = [metric(f"cloze accuracy ({len(items)} items)", ours["acc"], "higher", untrained=before["acc"],
                    chance=chance),
             metric(f"cloze accuracy, length-normalised ({len(items)} items)", ours["acc_norm"], "higher",
                    untrained=before["acc_norm"], chance=chance)]
    example = items[0] if items else None
    detail = {"items": len(items), "options": cloze.N_OPTIONS,
              "example": None if example is None else {"context": example.context[-120:],
                                                       "options": example.options, "answer": example.answer}}
    return lines, detail


def task_part(trained, module) -> tuple[list[dict], dict]:
    """The task's own final test (its module's HEADLINE says which numbers and their baselines)."""
    if trained.final_eval is None or not module.HEADLINE:
        return [], {}
    summary = trained.final_eval(trained.model)
    lines = [metric(label, summary[key], "higher", **{b: summary[k] for b, k in baselines.items()})
             for label, key, baselines in module.HEADLINE]
    return lines, summary


def evaluate_run(path: str, parts, limit: int) -> dict:
    """The card of one run (out_dir or ckpt/step_* directory)."""
    trained, cfg = runs.load_trained(path)
    module = tasks.get(cfg.task)
    fresh = untrained_task(cfg.out_dir)
    ckpt = runs.locate(path)[1]
    quant = read_state(ckpt).get("quant")  # a run written by python -m mindllm.quant says how
    weights = f"{quant['bits']}-bit {quant['scheme']} weights" if quant else "float32 weights"
    card = {"run": cfg.out_dir, "checkpoint": os.path.basename(ckpt), "task": cfg.task,
            "describe": f"{trained.describe} | {weights}", "quant": quant, "metrics": [], "details": {}}
    if "perplexity" in parts:
        card["metrics"] += perplexity_part(trained, fresh, language_model=module.SAMPLES)
    if "cloze" in parts and module.CLOZE:
        lines, card["details"]["cloze"] = cloze_part(trained, fresh, cfg, limit)
        card["metrics"] += lines
    if "task" in parts:
        lines, card["details"]["task"] = task_part(trained, module)
        card["metrics"] += lines
    return card
