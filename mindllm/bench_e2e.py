"""`python -m mindllm.bench --e2e [CONFIG]`: the whole run a user starts, beside nanoGPT's train.py loop.

The train-step bench times a step; a user waits for `python -m mindllm.train`: imports, data preparation, compiles,
evaluations, checkpoints, the plot and the sample. This mode runs that command as a user would, and beside it the
same recipe in PyTorch eager driven by nanoGPT's train.py loop (the same text and split, prepare.py's character
vocabulary, get_lr, evaluation of both splits every eval_interval, a checkpoint when val improves, loss.item() every
step), alternating which goes first. Each side is one child process, measured from outside with os.wait4: wall
time, user and system CPU, peak RSS. "Outside the steps" is wall - iterations x the run's median step.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from .errors import UserError

# --quick (CI): a few steps of each side with every phase present (evaluations, checkpoints, the sample)
QUICK = ["train.max_iters=40", "train.eval_interval=20", "train.eval_iters=2", "train.ckpt_interval=20",
         "train.log_interval=5", "sample.max_new_tokens=20"]


def nanogpt_lr(it: int, t: dict) -> float:
    """nanoGPT train.py's get_lr, verbatim but for its globals."""
    if it < t["warmup_iters"]:
        return t["lr"] * (it + 1) / (t["warmup_iters"] + 1)
    if it > t["lr_decay_iters"]:
        return t["min_lr"]
    decay_ratio = (it - t["warmup_iters"]) / (t["lr_decay_iters"] - t["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return t["min_lr"] + coeff * (t["lr"] - t["min_lr"])


def recipe(config: str | None, overrides: list[str]) -> dict:
    """The config's run as plain values for the PyTorch side; configs it cannot mirror are refused in one line."""
    from .config import load_config

    cfg = load_config(config, overrides)
    m, d, t = cfg.model, cfg.data, cfg.train
    why = [f"task={cfg.task} (causal_lm only)" if cfg.task != "causal_lm" else None,
           f"model.arch={m.arch} (gpt only)" if m.arch != "gpt" else None,
           f"data.tokenizer={d.tokenizer} (char only: prepare.py's vocabulary)" if d.tokenizer != "char" else None,
           f"model.dropout={m.dropout} (0 only)" if m.dropout else None,
           "model.bias=false (the reference has biases)" if not m.bias else None,
           f"train.grad_accum={t.grad_accum} (1 only)" if t.grad_accum != 1 else None,
           f"train.amp={t.amp} (none only)" if t.amp != "none" else None,
           f"parallel.parallel_mode={cfg.parallel.parallel_mode} (stand_alone only)"
           if cfg.parallel.parallel_mode != "stand_alone" else None]
    why = [w for w in why if w]
    if why:
        raise UserError(f"--e2e mirrors a character-level GPT run in PyTorch; this config has {why[0]}")
    return {"seed": cfg.seed, "corpus": d.corpus, "val_fraction": d.val_fraction,
            "shape": {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "block_size": m.block_size,
                      "batch_size": t.batch_size},
            "train": {"max_iters": t.max_iters, "lr": t.lr, "min_lr": t.min_lr, "warmup_iters": t.warmup_iters,
                      "lr_decay_iters": t.lr_decay_iters or t.max_iters, "weight_decay": t.weight_decay,
                      "beta1": t.beta1, "beta2": t.beta2, "grad_clip": t.grad_clip,
                      "eval_interval": t.eval_interval, "eval_iters": t.eval_iters}}


# ---------------------------------------------------------------- the PyTorch side (a bench worker process)

def _prepare(r: dict, out_dir: str) -> dict:
    """nanoGPT's data/shakespeare_char/prepare.py on mindllm's text and split: train.bin / val.bin as uint16."""
    import numpy as np

    from .data.corpus import load_corpus
    from .data.dataset import split_text

    text = load_corpus(r["corpus"])
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    paths = {}
    for split, part in zip(("train", "val"), split_text(text, r["val_fraction"])):
        paths[split] = os.path.join(out_dir, f"{split}.bin")
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(paths[split])
    return {"paths": paths, "vocab_size": len(stoi)}


def torch_e2e(r: dict, out_dir: str) -> dict:
    """nanoGPT train.py's loop for r's recipe (without its one extra step after the last evaluation)."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from .bench_torch import torch_adamw, torch_gpt

    t0 = time.perf_counter()
    s, t = r["shape"], r["train"]
    torch.manual_seed(r["seed"])
    data = _prepare(r, out_dir)
    model = torch_gpt(s, vocab=data["vocab_size"])
    params = list(model.parameters())
    opt = torch_adamw(model, lr=t["lr"], betas=(t["beta1"], t["beta2"]), weight_decay=t["weight_decay"])
    T, B = s["block_size"], s["batch_size"]

    def get_batch(split):  # train.py re-opens the memmap for every batch (it avoids a memory leak)
        arr = np.memmap(data["paths"][split], dtype=np.uint16, mode="r")
        ix = torch.randint(len(arr) - T, (B,))
        x = torch.stack([torch.from_numpy(arr[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(arr[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    def loss_of(x, y):
        logits, _ = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {split: float(torch.stack([loss_of(*get_batch(split)) for _ in range(t["eval_iters"])]).mean())
               for split in ("train", "val")}
        model.train()
        return out

    x, y = get_batch("train")
    best, step_s, losses = 1e9, [], {}
    for it in range(t["max_iters"] + 1):
        for g in opt.param_groups:
            g["lr"] = nanogpt_lr(it, t)
        if it % t["eval_interval"] == 0 or it == t["max_iters"]:
            losses = estimate_loss()
            if losses["val"] < best:
                best = losses["val"]
                if it > 0:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": it,
                                "best_val_loss": best}, os.path.join(out_dir, "ckpt.pt"))
        if it == t["max_iters"]:
            break
        t1 = time.perf_counter()
        loss = loss_of(x, y)
        x, y = get_batch("train")  # train.py fetches the next batch while the step is in flight
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        step_s.append(time.perf_counter() - t1)
    return {"step_s": step_s, "val_loss": losses["val"], "train_loss": losses["train"],
            "inside_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the parent: run both, alternating

def measure(cmd: list[str], env: dict, log_path: str) -> dict:
    """Run cmd to completion; wall time and its CPU and peak RSS as the kernel counted them (os.wait4)."""
    with open(log_path, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env})
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path, errors="replace") as fh:
            tail = "".join(fh.readlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}")
    return {"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}


def mindllm_side(config: str | None, overrides: list[str], r: dict, out_dir: str) -> dict:
    cmd = [sys.executable, "-m", "mindllm.train", *([config] if config else []), *overrides, f"out_dir={out_dir}"]
    out = measure(cmd, {}, out_dir + ".log")
    from .runs import Metrics  # here: runs imports MindSpore, which the PyTorch worker importing this file must not

    records = Metrics(out_dir, None, owner=False).read()
    tokens = r["shape"]["batch_size"] * r["shape"]["block_size"]
    # each record's tokens/s covers its log window; windows with an evaluation, and the first (the compile), are
    # not steps
    windows = [rec for rec in records[2:] if "tokens_per_s" in rec and "val_loss" not in rec]
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as fh:
        val = json.load(fh)["val_loss"]
    return {**out, "median_step_s": statistics.median(tokens / rec["tokens_per_s"] for rec in windows),
            "val_loss": val}


def torch_side(r: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "mindllm.bench", "--worker", "torch_e2e",
           "--worker-args", json.dumps({"r": r, "out_dir": out_dir})]
    out = measure(cmd, {}, out_dir + ".log")
    with open(out_dir + ".log", encoding="utf-8") as fh:
        inner = json.loads(fh.read().strip().splitlines()[-1])
    return {**out, "median_step_s": statistics.median(inner["step_s"]), "val_loss": inner["val_loss"],
            "threads": inner["threads"]}


def run(config: str | None, overrides: list[str], repeats: int, log=print) -> dict:
    r = recipe(config, overrides)
    iters = r["train"]["max_iters"]
    runs = {"mindllm": [], "pytorch": []}
    with tempfile.TemporaryDirectory(prefix="mindllm-e2e-") as tmp:
        for k in range(repeats):  # alternate which side goes first: drift in machine load hits both
            for side in (("mindllm", "pytorch") if k % 2 == 0 else ("pytorch", "mindllm")):
                out_dir = os.path.join(tmp, f"{side}-{k}")
                out = (mindllm_side(config, overrides, r, out_dir) if side == "mindllm" else torch_side(r, out_dir))
                out["outside_steps_s"] = out["wall_s"] - iters * out["median_step_s"]
                runs[side].append(out)
                log(f"{side:8s} run {k + 1}/{repeats}: wall {out['wall_s']:.1f} s, median step "
                    f"{out['median_step_s'] * 1e3:.1f} ms, outside steps {out['outside_steps_s']:.1f} s, "
                    f"user {out['user_s']:.0f} s, sys {out['sys_s']:.0f} s, peak RSS {out['peak_rss_mb']:.0f} MB, "
                    f"val {out['val_loss']:.4f}")
    keys = ("wall_s", "outside_steps_s", "median_step_s", "user_s", "sys_s", "peak_rss_mb", "val_loss")
    med = {side: {key: statistics.median(o[key] for o in outs) for key in keys} for side, outs in runs.items()}
    ratio = {key: med["mindllm"][key] / med["pytorch"][key] for key in keys if med["pytorch"][key] > 0}
    return {"config": config or "(default: configs/gpt_char_shakespeare.yaml)", "overrides": overrides,
            "iters": iters, "recipe": r, "runs": runs, "median": med, "ratio": ratio}


def markdown(result: dict, machine: dict) -> str:
    m, med, ratio = machine, result["median"], result["ratio"]
    over = f" with {' '.join(result['overrides'])}" if result["overrides"] else ""
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, MindSpore {m['mindspore']}, "
             f"PyTorch {m['torch']} (eager). Config {result['config']}{over}: {result['iters']} iterations; "
             f"medians of {len(result['runs']['mindllm'])} runs per side, alternating.", "",
             "| | wall | outside the steps | median step | user CPU | system CPU | peak RSS | final val loss |",
             "|---|---|---|---|---|---|---|---|"]

    def cells(r, fmt_ratio=False):
        if fmt_ratio:
            return [f"{r[k]:.2f}×" if k in r else "–" for k in ("wall_s", "outside_steps_s", "median_step_s",
                                                                "user_s", "sys_s", "peak_rss_mb", "val_loss")]
        return [f"{r['wall_s']:.1f} s", f"{r['outside_steps_s']:.1f} s", f"{r['median_step_s'] * 1e3:.1f} ms",
                f"{r['user_s']:.0f} s", f"{r['sys_s']:.1f} s", f"{r['peak_rss_mb']:,.0f} MB", f"{r['val_loss']:.4f}"]

    lines.append("| `python -m mindllm.train` | " + " | ".join(cells(med["mindllm"])) + " |")
    lines.append("| nanoGPT train.py loop, PyTorch eager | " + " | ".join(cells(med["pytorch"])) + " |")
    lines.append("| mindllm / PyTorch | " + " | ".join(cells(ratio, fmt_ratio=True)) + " |")
    return "\n".join(lines) + "\n"
