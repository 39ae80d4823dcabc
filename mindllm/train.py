"""`python -m mindllm.train [CONFIG.yaml] [key=value ...]`: the one training loop of the course.

With no arguments it trains a character-level GPT on Shakespeare on the CPU (configs/gpt_char_shakespeare.yaml):

    python -m mindllm.train
    python -m mindllm.train configs/gpt_char_shakespeare.yaml train.max_iters=200 out_dir=runs/x
    python -m mindllm.train configs/gpt_char_shakespeare.yaml out_dir=runs/x resume=true

Writes to out_dir: config.yaml (resolved), tokenizer.json, metrics.jsonl, loss.png, summary.json, ckpt/.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from .errors import UserError, cli
from .tasks import build_task, unigram_loss  # noqa: F401  (unigram_loss: part of the public API)

HELP = __doc__


def make_steps(loss_fn, optimizer, grad_clip: float, compile_: bool, scaler=None, grad_reducer=None):
    """Build the step functions: `step(x, y)` (forward, backward, clip, update in one graph) and, for gradient
    accumulation, `grads(x, y)` / `accumulate(a, b)` / `apply(grads, scale)`. `step` returns (loss, pre-clip
    global gradient norm), `apply` the norm.

    With a `scaler` (fp16 mixed precision) the loss is multiplied by the loss scale before backward so small
    gradients survive float16; gradients are divided back, and a step whose gradients overflowed is skipped
    while the scaler lowers its scale (dynamic loss scaling).

    Under data parallelism `grad_reducer` averages the gradients across ranks before clipping, so every rank
    clips the same global norm and the replicas stay identical; the returned loss is this rank's own."""
    import mindspore as ms
    from mindspore import nn, ops

    def scaled_loss(*batch):
        loss = loss_fn(*batch)
        return scaler.scale(loss) if scaler is not None else loss

    grad_fn = ms.value_and_grad(scaled_loss, None, optimizer.parameters)
    reduce_grads = grad_reducer if grad_reducer is not None else nn.Identity()  # (graph mode: no lambda here)

    def clip_and_update(grads):
        grads = reduce_grads(grads)
        finite = True
        if scaler is not None:
            grads = scaler.unscale(grads)
            finite = ms.amp.all_finite(grads)
            scaler.adjust(finite)
        norm = ops.sqrt(ops.addn([ops.reduce_sum(g * g) for g in grads]))
        if grad_clip > 0:
            scale = ops.minimum(1.0, grad_clip / (norm + 1e-6))
            grads = tuple(g * scale for g in grads)
        if finite:
            optimizer(grads)
        return norm

    def unscaled(loss):
        return scaler.unscale(loss) if scaler is not None else loss

    def step(*batch):
        loss, grads = grad_fn(*batch)
        return unscaled(loss), clip_and_update(grads)

    def grads(*batch):
        loss, g = grad_fn(*batch)
        return unscaled(loss), g

    def accumulate(a, b):
        return tuple(u + v for u, v in zip(a, b))

    def apply(grads, scale):
        return clip_and_update(tuple(g * scale for g in grads))

    wrap = ms.jit if compile_ else (lambda f: f)
    accumulate_, apply_ = wrap(accumulate), wrap(apply)
    # a tuple of Tensors passed to a compiled function is a constant of the graph unless marked mutable: every new
    # set of gradients recompiled `accumulate` and `apply` (measured: 15 s per accumulated step instead of 0.4 s)
    return (wrap(step), wrap(grads), lambda a, b: accumulate_(ms.mutable(a), ms.mutable(b)),
            lambda g, scale: apply_(ms.mutable(g), scale))


def _quiet(*args, **kwargs):
    """The log of ranks other than 0: they would print the same lines again."""


class Metrics:
    """out_dir/metrics.jsonl, one JSON object per logged step; a resumed run first drops records after its
    checkpoint so the file reads like one uninterrupted run. Only the writing rank (`owner`) touches the file."""

    def __init__(self, path: str, resume_step: int | None, owner: bool = True):
        self.path = path
        if not owner:
            return
        kept = []
        if resume_step is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                kept = [line for line in fh if line.strip() and json.loads(line)["step"] <= resume_step]
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def check_runtime(cfg, target: str) -> None:
    """Refuse settings this backend cannot honour, with the reason, before any work is done."""
    if cfg.train.amp != "none" and target == "CPU":
        raise UserError(f"train.amp={cfg.train.amp} is for GPU/Ascend: on CPU bfloat16 is unsupported and float16 "
                        f"is slower than float32; use train.amp=none")


def train(cfg, log=print) -> dict:
    """Run one training job described by a Config. Returns the summary also written to out_dir/summary.json."""
    try:
        return _train(cfg, log)
    finally:
        # MindSpore keeps each compiled model's runtime memory (about 4 GB for MiniLM fine-tuning) until told
        # otherwise: without this, a notebook that trains a few models in one kernel runs out of memory
        import gc

        import mindspore as ms

        gc.collect()
        ms.ms_memory_recycle()


def _train(cfg, log):
    from .config import save_config
    from . import device, parallel

    target = device.setup(cfg.context, cfg.seed)
    check_runtime(cfg, target)
    dist = parallel.setup(cfg, target)
    if not dist.is_main:
        log = _quiet
    import mindspore as ms
    from mindspore import Tensor

    from . import memory
    from .checkpoint import latest_checkpoint, load_arrays, optimizer_skip, read_checkpoint, save_checkpoint
    from .optim import build_optimizer, lr_schedule
    from .plot import plot_metrics

    ckpt_dir = os.path.join(cfg.out_dir, "ckpt")
    existing = os.path.exists(ckpt_dir) and latest_checkpoint(ckpt_dir)
    if cfg.resume and not existing:
        raise UserError(f"resume=true but '{ckpt_dir}' holds no checkpoint; train without resume first")
    if existing and not cfg.resume:
        raise UserError(f"'{cfg.out_dir}' already holds a run; continue it with resume=true, or pick a new "
                        f"out_dir=... (delete the directory to start over)")
    os.makedirs(cfg.out_dir, exist_ok=True)

    # rank 0 trains the tokenizer and writes the token cache; the other ranks then read the same files
    if not dist.is_main:
        parallel.barrier(dist)
    task = build_task(cfg if dist.is_main else dataclasses.replace(cfg, resume=True))
    if dist.is_main:
        parallel.barrier(dist)
    model, t = task.model, cfg.train
    optimizer = build_optimizer(model, t)
    start = 0
    if cfg.resume:
        weights, opt_state, state = read_checkpoint(existing)
        load_arrays(model, weights, existing)
        load_arrays(optimizer, opt_state, existing, skip=optimizer_skip(optimizer, weights))
        task.train_batches.set_state(state["data_rng"])
        start = state["step"]
        log(f"resumed from {existing} at step {start}")
    if cfg.parallel.parallel_mode in parallel.SHARDED_MODES:  # GPU/Ascend only (validated above)
        if cfg.parallel_config.pipeline_stage > 1:
            raise UserError("parallel_config.pipeline_stage > 1: the layout is validated and its memory estimated, "
                            "but the pipelined step (nn.PipelineCell) is not part of mindllm's loop yet; train "
                            "with pipeline_stage=1 (data_parallel x model_parallel)")
        parallel.shard_gpt(model, cfg.parallel_config)
    if cfg.parallel_config.recompute:
        log(f"recompute: {parallel.apply_recompute(model)} blocks keep only their input for the backward pass")
    if dist.is_main:
        save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    metrics = Metrics(os.path.join(cfg.out_dir, "metrics.jsonl"), start if cfg.resume else None, dist.is_main)

    scaler = None
    if t.amp != "none":  # matmuls in half precision, everything else float32 (see models/layers.py)
        from .models.layers import set_compute_dtype

        set_compute_dtype(model, ms.float16 if t.amp == "fp16" else ms.bfloat16)
        if t.amp == "fp16":  # bfloat16 has float32's range and needs no loss scaling
            scaler = ms.amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=1000)
            if cfg.resume and "loss_scale" in state:
                scaler.scale_value.set_data(Tensor(state["loss_scale"], ms.float32))

    n_params = model.num_params()
    workers = f", {dist.world} workers ({cfg.parallel.parallel_mode})" if dist.world > 1 else ""
    log(f"{task.describe} | device {target}{workers}, {cfg.context.mode} mode | {t.max_iters} iters x "
        f"{t.batch_size * t.grad_accum} x {cfg.model.block_size} tokens")
    log(memory.describe(memory.for_config(cfg, model, dist.world)))
    step, grads, accumulate, apply = make_steps(task.loss_fn, optimizer, t.grad_clip, cfg.context.mode == "graph",
                                                scaler, parallel.grad_reducer(optimizer.parameters, dist,
                                                                              cfg.parallel.gradients_mean))
    mean_over_ranks = parallel.loss_reducer(dist)
    eval_loss = ms.jit(task.loss_fn) if cfg.context.mode == "graph" else task.loss_fn
    lrs = lr_schedule(t)

    def evaluate() -> dict:
        model.set_train(False)
        out = {f"{s}_loss": float(np.mean([eval_loss(*map(Tensor, b)).asnumpy() for b in batches]))
               for s, batches in task.eval_batches.items()}
        extra = task.eval_metrics(model) if task.eval_metrics is not None else {}
        model.set_train(True)
        return {"val_loss": out["val_loss"], "train_loss_eval": out["train_loss"], **extra}

    def run_state() -> dict:
        """Everything besides weights and optimizer moments that an exact resume needs."""
        extra = {"loss_scale": float(scaler.scale_value.asnumpy())} if scaler is not None else {}
        return {"data_rng": task.train_batches.state(), "config": cfg.to_dict(), **extra}

    model.set_train(True)
    if start == 0 and dist.is_main:  # the untrained model: the baseline every later number is read against
        metrics.write({"step": 0, "lr": lrs[0], **evaluate()})

    tokens_per_step = task.tokens_per_batch * t.grad_accum
    from tqdm import tqdm

    bar = tqdm(range(start, t.max_iters), initial=start, total=t.max_iters,
               dynamic_ncols=True, file=sys.stderr, desc="train", disable=not (t.progress and dist.is_main))
    window_loss, window_t, window_n, last_val = [], time.perf_counter(), 0, None
    for it in bar:
        if t.grad_accum == 1:
            loss, norm = step(*map(Tensor, parallel.rows(task.train_batches.next(), dist)))
            loss = float(loss.asnumpy())
        else:
            acc, losses = None, []
            for _ in range(t.grad_accum):
                l, g = grads(*map(Tensor, parallel.rows(task.train_batches.next(), dist)))
                acc = g if acc is None else accumulate(acc, g)
                losses.append(float(l.asnumpy()))
            norm = apply(acc, Tensor(1.0 / t.grad_accum, ms.float32))
            loss = float(np.mean(losses))
        if dist.split_batches:  # this rank saw only its rows: report the global batch's loss, keep its own per rank
            local, loss = loss, float(mean_over_ranks(Tensor(loss, ms.float32)).asnumpy())
            if (it + 1) % t.log_interval == 0:
                print(f"[rank {dist.rank}/{dist.world}] step {it + 1}: loss {local:.5f} on its "
                      f"{t.batch_size // dist.world} rows, {loss:.5f} on the global batch", flush=True)
        if not math.isfinite(loss) and scaler is None:  # with fp16 loss scaling an overflow just skips a step
            raise UserError(f"the loss became {loss} at step {it + 1}; lower train.lr or set train.grad_clip "
                            f"(the last good checkpoint is in {ckpt_dir})")
        window_loss.append(loss)
        window_n += 1
        done = it + 1
        is_eval = done % t.eval_interval == 0 or done == t.max_iters
        if (done % t.log_interval == 0 or is_eval) and dist.is_main:  # evaluation too: the weights are equal
            dt = time.perf_counter() - window_t
            record = {"step": done, "loss": float(np.mean(window_loss)), "lr": lrs[it],
                      "grad_norm": float(norm.asnumpy()), "tokens_per_s": window_n * tokens_per_step / dt}
            if is_eval:
                record.update(evaluate())
                last_val = record["val_loss"]
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}",
                            **({"val": f"{last_val:.3f}"} if last_val is not None else {}))
            window_loss, window_t, window_n = [], time.perf_counter(), 0
        if (done % t.ckpt_interval == 0 or done == t.max_iters) and dist.is_main:
            save_checkpoint(ckpt_dir, done, model, optimizer, run_state(), keep=t.keep_ckpts)
    bar.close()
    if dist.split_batches:  # every rank states what it ends with, in its own log: equal on all ranks
        print(f"[rank {dist.rank}/{dist.world}] final weights sha256 {weights_digest(model)}", flush=True)
    if not dist.is_main:
        return {"rank": dist.rank, "steps": t.max_iters}
    if t.max_iters == 0 or start >= t.max_iters:
        save_checkpoint(ckpt_dir, max(start, t.max_iters), model, optimizer, run_state(), keep=t.keep_ckpts)

    records = metrics.read()
    plot_metrics(records, task.baselines, os.path.join(cfg.out_dir, "loss.png"))
    evals = [r for r in records if "val_loss" in r]
    summary = {"steps": t.max_iters, "params": n_params,
               "trainable_params": sum(int(np.prod(p.shape)) for p in model.trainable_params()),
               "vocab_size": task.tokenizer.vocab_size,
               "val_loss": evals[-1]["val_loss"], "val_perplexity": math.exp(evals[-1]["val_loss"]),
               "untrained_val_loss": evals[0]["val_loss"] if evals[0]["step"] == 0 else None,
               "uniform_loss": task.baselines["uniform"], "unigram_val_loss": task.baselines["unigram"],
               "device": target}
    if task.final_eval is not None:
        model.set_train(False)
        summary.update(task.final_eval(model))
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    log(report(summary))
    return summary


def weights_digest(model) -> str:
    """SHA-256 over every parameter's name and bytes: equal digests mean bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.parameters_and_names():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.asnumpy()).tobytes())
    return h.hexdigest()[:16]


def load_trained(out_dir: str, cfg=None):
    """(task, config) of a finished run, the model holding the latest checkpoint's weights (for notebooks and
    evaluation). Rebuilds the task from the run's own config.yaml."""
    from .checkpoint import latest_checkpoint, load_arrays, read_checkpoint
    from .config import load_config

    cfg = cfg or load_config(os.path.join(out_dir, "config.yaml"), [])
    cfg.out_dir = out_dir  # the saved out_dir may be relative to another working directory
    ckpt = latest_checkpoint(os.path.join(out_dir, "ckpt"))
    if not ckpt:
        raise UserError(f"'{out_dir}' holds no checkpoint")
    cfg.resume = True  # reuse the run's tokenizer file instead of training a new one
    task = build_task(cfg)
    load_arrays(task.model, read_checkpoint(ckpt)[0], ckpt)
    task.model.set_train(False)
    return task, cfg


def _classification_report(s: dict) -> str:
    cm = s["test_confusion"]
    width = max(len(c) for c in s["classes"]) + 2
    rows = "".join(f"\n  {c:>{width}} " + " ".join(f"{v:>7}" for v in row) for c, row in zip(s["classes"], cm))
    return (f"\ntest accuracy {s['test_accuracy']:.1%}, macro F1 {s['test_f1']:.3f} (precision "
            f"{s['test_precision']:.3f}, recall {s['test_recall']:.3f}) on {s['test_examples']} examples | baseline: "
            f"always '{s['majority_class']}' {s['majority_accuracy']:.1%}, macro F1 {s['majority_f1']:.3f}"
            f"\n  confusion (rows true, columns predicted: {', '.join(s['classes'])}){rows}")


def report(s: dict) -> str:
    untrained = f"{s['untrained_val_loss']:.3f}" if s["untrained_val_loss"] is not None else "n/a"
    ppl = "" if "test_accuracy" in s else f" (perplexity {s['val_perplexity']:.2f})"
    text = (f"val loss {s['val_loss']:.3f}{ppl} after {s['steps']} steps | "
            f"baselines: untrained {untrained}, uniform ln(V) {s['uniform_loss']:.3f}, "
            f"unigram {s['unigram_val_loss']:.3f}")
    if "test_exact_match" in s:
        text += (f"\ntest exact match {s['test_exact_match']:.1%}, BLEU {s['test_bleu']:.1f} | baselines: copy the "
                 f"input {s['copy_exact_match']:.1%}, BLEU {s['copy_bleu']:.1f}; most frequent training output "
                 f"{s['frequent_exact_match']:.1%}, BLEU {s['frequent_bleu']:.1f}")
        text += "".join(f"\n  {x!r} -> {p!r}" for x, p in s["examples"])
    if "mlm_accuracy" in s:
        text += (f"\nmasked-token accuracy {s['mlm_accuracy']:.1%} on {s['masked_tokens_evaluated']} held-out masked "
                 f"tokens ({s['mask_accuracy']:.1%} where the input shows [MASK]) | baseline: always "
                 f"{s['frequent_token']!r} {s['frequent_token_accuracy']:.1%}"
                 f"\nnext-sentence accuracy {s['nsp_accuracy']:.1%} | baseline: majority {s['nsp_majority']:.1%}")
    if "test_accuracy" in s:
        text += _classification_report(s)
    if "answer_f1" in s:
        text += (f"\nheld-out questions ({s['questions_answered']}), greedy answers, word F1 against the reference: "
                 f"{s['answer_f1']:.3f} after tuning | baselines: before tuning {s['pretrained_answer_f1']:.3f}, "
                 f"always the most frequent training answer {s['frequent_answer_f1']:.3f}")
        text += "".join(f"\n  Q: {q!r}\n     before: {b!r}\n     after:  {a!r}" for q, b, a in s["answers"][:4])
    return text


def parse_args(argv):
    """[CONFIG.yaml] [key=value ...] -> (config path or None, overrides)."""
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        sys.exit(0)
    path = argv[0] if argv and "=" not in argv[0] else None
    rest = argv[1:] if path else argv
    for a in rest:
        if "=" not in a:
            raise UserError(f"unexpected argument '{a}': give at most one config file, then key=value overrides")
    return path, rest


@cli
def main(argv=None):
    from .config import load_config

    argv = sys.argv[1:] if argv is None else argv
    path, overrides = parse_args(argv)
    cfg = load_config(path, overrides)
    summary = train(cfg)
    if "rank" in summary:  # a data-parallel worker other than rank 0: rank 0 reports
        return summary
    if cfg.sample.max_new_tokens and cfg.model.arch == "gpt":
        from .sample import complete

        text = complete(*_sampling_model(cfg), cfg.sample.prompt, cfg.sample.max_new_tokens,
                        temperature=cfg.sample.temperature, top_k=cfg.sample.top_k, top_p=cfg.sample.top_p,
                        seed=cfg.seed)[0]
        print(f"--- sample (temperature {cfg.sample.temperature}) ---\n{cfg.sample.prompt}{text}\n---")
    more = f"; sample more with python -m mindllm.sample --ckpt {cfg.out_dir}" if cfg.model.arch == "gpt" else ""
    print(f"outputs in {cfg.out_dir}/: metrics.jsonl, loss.png, summary.json, ckpt/{more}")
    return summary


def _sampling_model(cfg):
    from .sample import load_run

    model, tokenizer, _ = load_run(cfg.out_dir)
    return model, tokenizer


if __name__ == "__main__":
    main()
