"""`python -m mindllm.train [CONFIG.yaml] [key=value ...]`: the one training loop of the course.

With no arguments it trains a character-level GPT on Shakespeare on the CPU (configs/gpt_char_shakespeare.yaml):

    python -m mindllm.train
    python -m mindllm.train configs/gpt_char_shakespeare.yaml train.max_iters=200 out_dir=runs/x
    python -m mindllm.train configs/gpt_char_shakespeare.yaml out_dir=runs/x resume=true

Writes to out_dir: config.yaml (resolved), tokenizer.json, metrics.jsonl, loss.png, summary.json, ckpt/.
The loop never names a model or an objective: the config's task (mindllm/tasks/) supplies model, batches, loss and
evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor
from tqdm import tqdm

from . import device, kernels, memory, parallel, runs, tasks
from .checkpoint import clean_partial_saves, latest_checkpoint, load_arrays, optimizer_skip, read_checkpoint, \
    save_checkpoint
from .config import load_config, save_config
from .errors import UserError, cli, ctrl_c, interruption_point
from .models.layers import set_compute_dtype
from .optim import build_optimizer, lr_schedule
from .plot import plot_metrics
from .sample import complete
from .steps import TrainSteps

HELP = __doc__


@dataclasses.dataclass(kw_only=True)
class Run:
    """One training job in progress: what prepare() sets up and the loop and finish() use."""
    cfg: object
    log: object
    target: str
    dist: parallel.Dist
    task: tasks.Task
    optimizer: object
    steps: TrainSteps
    metrics: runs.Metrics
    loss_mean: object = None  # the mean of a scalar over the ranks
    scaler: object = None
    start: int = 0
    saved: str | None = None  # the newest checkpoint verified finite: what a failure names
    t0: float = 0.0  # when train() began: the summary's wall time counts from it
    stopped: str = ""  # why the task ended the run before max_iters (kept in the checkpoints: a resume stays stopped)
    end: int = 0  # the step the run ended at: max_iters, or the evaluation that stopped it

    @property
    def ckpt_dir(self) -> str:
        return runs.ckpt_dir(self.cfg.out_dir)


def train(cfg, log=print) -> dict:
    """Run one training job described by a Config. Returns the summary also written to out_dir/summary.json."""
    t0 = time.perf_counter()
    try:
        target = device.setup(cfg.context, cfg.seed)
        check_runtime(cfg, target)
        dist = parallel.setup(cfg, target)
        os.makedirs(cfg.out_dir, exist_ok=True)
        run = None
        with runs.RunLock(cfg.out_dir) if dist.is_main else contextlib.nullcontext(), \
                ctrl_c(lambda: f"interrupted: {last_good(run) if run else 'no checkpoint was written'}"):
            run = prepare(cfg, log if dist.is_main else _quiet, target, dist)
            run.t0 = t0
            loop(run)
            return finish(run)
    except OSError as e:  # out_dir under a file, a full disk, a read-only directory
        raise UserError(f"{e.strerror or e}: '{str(e.filename or cfg.out_dir)[:200]}'; check out_dir and the free "
                        f"disk space") from None
    finally:
        # MindSpore keeps each compiled model's runtime memory (about 4 GB for MiniLM fine-tuning) until told
        # otherwise: without this, a notebook that trains a few models in one kernel runs out of memory
        gc.collect()
        ms.ms_memory_recycle()


def _quiet(*args, **kwargs):
    """The log of ranks other than 0: they would print the same lines again."""


def check_runtime(cfg, target: str) -> None:
    """Refuse settings this backend cannot honour, with the reason, before any work is done."""
    if cfg.train.amp != "none" and target == "CPU":
        raise UserError(f"train.amp={cfg.train.amp} is for GPU/Ascend: on CPU bfloat16 is unsupported and float16 "
                        f"is slower than float32; use train.amp=none")


def existing_checkpoint(cfg) -> str | None:
    """The checkpoint a resume continues from; refuses to start a fresh run over an existing one."""
    ckpt_dir = runs.ckpt_dir(cfg.out_dir)
    existing = latest_checkpoint(ckpt_dir)
    clean_partial_saves(ckpt_dir)  # what killed saves left, after recovery took what it could
    if cfg.resume and not existing:
        raise UserError(f"resume=true but '{ckpt_dir}' holds no checkpoint; train without resume first")
    if existing and not cfg.resume:
        raise UserError(f"'{cfg.out_dir}' already holds a run; continue it with resume=true, or pick a new "
                        f"out_dir=... (delete the directory to start over)")
    return existing


def build_task(cfg, dist) -> tasks.Task:
    """Rank 0 trains the tokenizer and writes the token cache; the other ranks then read the same files."""
    if not dist.is_main:
        parallel.barrier(dist)
    task = tasks.build(cfg if dist.is_main else dataclasses.replace(cfg, resume=True))
    if dist.is_main:
        parallel.barrier(dist)
    return task


def prepare(cfg, log, target: str, dist) -> Run:
    existing = existing_checkpoint(cfg)
    if existing:
        runs.require_float(existing, "train")  # before the data: int8 weights do not train
    task = build_task(cfg, dist)
    model = kernels.fuse(task.model)  # on CPU: fused kernels in place of some plain layers, same weights
    optimizer = build_optimizer(model, cfg.train)
    start, state = 0, {}
    if existing:
        weights, opt_state, state = read_checkpoint(existing)
        runs.check_same_run(cfg, state["config"], cfg.out_dir)
        runs.verify_files(cfg.out_dir, state, existing)
        load_arrays(model, weights, existing)
        load_arrays(optimizer, opt_state, existing, skip=optimizer_skip(optimizer, weights))
        task.train_batches.set_state(state["data_rng"])
        start = state["step"]
        log(f"resumed from {existing} at step {start}" + (f" (stopped: {state['stopped']})"
                                                           if state.get("stopped") else ""))
    if task.stop is not None and dist.world > 1:  # only rank 0 evaluates: the others would wait for it forever
        raise UserError("this run stops at a target (e.g. sft.stop_at), which needs one process: run it without "
                        "msrun, or set the target to 0")
    place_on_devices(cfg, model, log)
    if dist.is_main:
        save_config(cfg, os.path.join(cfg.out_dir, runs.CONFIG))
    scaler = mixed_precision(cfg, model, state)
    log(f"{task.describe} | device {target}" + (f", {dist.world} workers ({cfg.parallel.parallel_mode})"
                                                 if dist.world > 1 else "") +
        f", {cfg.context.mode} mode | {cfg.train.max_iters} iters x {cfg.train.batch_size * cfg.train.grad_accum} x "
        f"{cfg.model.block_size} tokens")
    log(memory.describe(memory.for_config(cfg, model, dist.world)))
    steps = TrainSteps(task.loss_fn, optimizer, grad_clip=cfg.train.grad_clip, compile_=cfg.context.mode == "graph",
                       scaler=scaler, grad_reducer=parallel.grad_reducer(optimizer.parameters, dist,
                                                                         cfg.parallel.gradients_mean),
                       clip=kernels.clip_by_global_norm())
    return Run(cfg=cfg, log=log, target=target, dist=dist, task=task, optimizer=optimizer, steps=steps,
               metrics=runs.Metrics(cfg.out_dir, start if existing else None, dist.is_main), scaler=scaler,
               loss_mean=parallel.loss_reducer(dist),
               start=start, saved=existing or None, stopped=state.get("stopped", ""))


def place_on_devices(cfg, model, log) -> None:
    """Tensor/pipeline sharding (GPU/Ascend, validated with the config) and recompute."""
    if cfg.parallel.parallel_mode in parallel.SHARDED_MODES:
        if cfg.parallel_config.pipeline_stage > 1:
            raise UserError("parallel_config.pipeline_stage > 1: the layout is validated and its memory estimated, "
                            "but the pipelined step (nn.PipelineCell) is not part of mindllm's loop yet; train "
                            "with pipeline_stage=1 (data_parallel x model_parallel)")
        parallel.shard_gpt(model, cfg.parallel_config)
    if cfg.parallel_config.recompute:
        log(f"recompute: {parallel.apply_recompute(model)} blocks keep only their input for the backward pass")


def mixed_precision(cfg, model, state: dict):
    """Matmuls in half precision, everything else float32 (models/layers.py); the fp16 loss scaler, or None."""
    if cfg.train.amp == "none":
        return None
    set_compute_dtype(model, ms.float16 if cfg.train.amp == "fp16" else ms.bfloat16)
    kernels.fuse(model)  # the one-kernel decoding step reads float32 weights: off under mixed precision
    if cfg.train.amp != "fp16":  # bfloat16 has float32's range and needs no loss scaling
        return None
    scaler = ms.amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=1000)
    if "loss_scale" in state:
        scaler.scale_value.set_data(Tensor(state["loss_scale"], ms.float32))
    return scaler


def evaluate(run: Run, eval_loss) -> dict:
    """Mean loss on the fixed train and val batches, and the task's own metrics."""
    model = run.task.model
    model.set_train(False)
    out = {f"{s}_loss": float(np.mean([eval_loss(*map(Tensor, b)).asnumpy() for b in batches]))
           for s, batches in run.task.eval_batches.items()}
    extra = run.task.eval_metrics(model) if run.task.eval_metrics is not None else {}
    model.set_train(True)
    return {"val_loss": out["val_loss"], "train_loss_eval": out["train_loss"], **extra}


def one_step(run: Run) -> tuple[float, object]:
    """One optimizer step over grad_accum micro-batches: (loss on the global batch, pre-clip gradient norm)."""
    schedule, dist, steps = run.cfg.train, run.dist, run.steps

    def batch():
        return map(Tensor, parallel.rows(run.task.train_batches.next(), dist))

    if schedule.grad_accum == 1:
        loss, norm = steps.step(*batch())
        loss = float(loss.asnumpy())
    else:
        acc, losses = None, []
        for _ in range(schedule.grad_accum):
            part, g = steps.grads(*batch())
            acc = g if acc is None else steps.accumulate(acc, g)
            losses.append(float(part.asnumpy()))
        norm = steps.apply(acc, Tensor(1.0 / schedule.grad_accum, ms.float32))
        loss = float(np.mean(losses))
    return loss, norm


def loop(run: Run) -> None:
    cfg, schedule, dist = run.cfg, run.cfg.train, run.dist
    eval_fn = run.task.eval_loss_fn or run.task.loss_fn
    eval_loss = ms.jit(eval_fn) if cfg.context.mode == "graph" and not run.task.eval_loss_compiled else eval_fn
    lrs = lr_schedule(schedule)
    run.task.model.set_train(True)
    run.end = run.start if run.stopped else max(run.start, schedule.max_iters)
    if run.stopped:
        return
    if run.start == 0 and dist.is_main:  # the untrained model: the baseline every later number is read against
        run.metrics.write({"step": 0, "lr": lrs[0], **evaluate(run, eval_loss)})
    bar = tqdm(range(run.start, schedule.max_iters), initial=run.start, total=schedule.max_iters, dynamic_ncols=True,
               file=sys.stderr, desc="train", disable=not (schedule.progress and dist.is_main))
    window = Window()
    for it in bar:
        interruption_point()
        loss, norm = one_step(run)
        done = it + 1
        loss = global_loss(run, loss, done)
        if not math.isfinite(loss) and run.scaler is None:  # with fp16 loss scaling an overflow skips a step
            raise UserError(f"the loss became {loss} at step {done}; lower train.lr or set train.grad_clip "
                            f"({last_good(run, 'and a lower train.lr')})")
        window.losses.append(loss)
        record = None
        is_eval = done % schedule.eval_interval == 0 or done == schedule.max_iters
        if (done % schedule.log_interval == 0 or is_eval) and dist.is_main:  # evaluation too: the weights are equal
            record = log_step(run, window, bar, done, lr=lrs[it], norm=norm,
                              evaluation=eval_loss if is_eval else None)
            if is_eval and run.task.stop is not None:
                run.stopped = run.task.stop(record)
        if (done % schedule.ckpt_interval == 0 or done == schedule.max_iters or run.stopped) and dist.is_main:
            save_verified(run, done, record.get("val_loss") if record else None, eval_loss)
        if run.stopped:
            run.end = done
            bar.close()
            run.log(f"stopped at step {done} of {schedule.max_iters}: {run.stopped}")
            return
    bar.close()
    if dist.split_batches:  # every rank states what it ends with, in its own log: equal on all ranks
        print(f"[rank {dist.rank}/{dist.world}] final weights sha256 {weights_digest(run.task.model)}", flush=True)


def log_step(run: Run, window, bar, done: int, *, lr: float, norm, evaluation=None) -> dict:
    """The record of a logged step (with an evaluation if `evaluation` is the eval loss), written and shown."""
    record = window.record(done, lr, norm, run.task.tokens_per_batch * run.cfg.train.grad_accum)
    stats = run.task.train_stats() if run.task.train_stats is not None else {}
    record.update(stats)
    if evaluation is not None:
        record.update(evaluate(run, evaluation))
    run.metrics.write(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", **{k: f"{stats[k]:.3f}" for k in run.task.shown},
                    **window.shown(record))
    return record


class Window:
    """The losses since the last logged step, and the clock since then."""

    def __init__(self):
        self.losses, self.t0, self.val = [], time.perf_counter(), None

    def record(self, step: int, lr: float, norm, tokens_per_step: int) -> dict:
        dt = time.perf_counter() - self.t0
        out = {"step": step, "loss": float(np.mean(self.losses)), "lr": lr, "grad_norm": float(norm.asnumpy()),
               "tokens_per_s": len(self.losses) * tokens_per_step / dt}
        self.losses, self.t0 = [], time.perf_counter()
        return out

    def shown(self, record: dict) -> dict:
        """The progress bar's val figure: the latest evaluation's."""
        self.val = record.get("val_loss", self.val)
        return {"val": f"{self.val:.3f}"} if self.val is not None else {}


def global_loss(run: Run, loss: float, step: int) -> float:
    """Under data parallelism this rank saw its rows only: the global batch's loss (its own goes to its log)."""
    dist, schedule = run.dist, run.cfg.train
    if not dist.split_batches:
        return loss
    total = float(run.loss_mean(Tensor(loss, ms.float32)).asnumpy())
    if step % schedule.log_interval == 0:
        rows = schedule.batch_size // dist.world
        print(f"[rank {dist.rank}/{dist.world}] step {step}: loss {loss:.5f} on its {rows} rows, {total:.5f} on the "
              f"global batch", flush=True)
    return total


def last_good(run: Run, change: str = "") -> str:
    if run.saved is None:
        return "no checkpoint was written"
    return (f"the last good checkpoint is {os.path.basename(run.saved)} in {run.ckpt_dir}; continue from it with "
            f"resume=true" + (f" {change}" if change else ""))


def save_verified(run: Run, step: int, val_loss, eval_loss) -> None:
    """Write a checkpoint only of weights that are finite and still give a finite loss (the weights after the
    update that makes the next loss NaN must not become 'the last good checkpoint')."""
    model = run.task.model
    if val_loss is None:  # no evaluation at this step: one held-out batch
        model.set_train(False)
        val_loss = float(eval_loss(*map(Tensor, run.task.eval_batches["val"][0])).asnumpy())
        model.set_train(True)
    finite = math.isfinite(val_loss) and all(np.isfinite(p.asnumpy()).all() for p in model.get_parameters())
    if not finite:
        raise UserError(f"the weights after step {step} give a loss of {val_loss} (not saved); lower train.lr or set "
                        f"train.grad_clip ({last_good(run, 'and a lower train.lr')})")
    state = {"data_rng": run.task.train_batches.state(), "config": run.cfg.to_dict(),
             **runs.tokenizer_fingerprint(run.cfg.out_dir), **({"stopped": run.stopped} if run.stopped else {}),
             **({"loss_scale": float(run.scaler.scale_value.asnumpy())} if run.scaler is not None else {})}
    run.saved = save_checkpoint(run.ckpt_dir, step, model, run.optimizer, state, keep=run.cfg.train.keep_ckpts)


def finish(run: Run) -> dict:
    cfg, model = run.cfg, run.task.model
    if not run.dist.is_main:
        return {"rank": run.dist.rank, "steps": run.end}
    if run.saved is None or os.path.basename(run.saved) != f"step_{run.end:07d}":  # nothing trained: the start
        save_verified(run, run.end, None, run.task.eval_loss_fn or run.task.loss_fn)
    records = run.metrics.read()
    plot_metrics(records, run.task.baselines, os.path.join(cfg.out_dir, "loss.png"))
    evals = [r for r in records if "val_loss" in r]
    summary = {"steps": run.end, **({"stopped": run.stopped} if run.stopped else {}), "params": model.num_params(),
               "trainable_params": sum(int(np.prod(p.shape)) for p in model.trainable_params()),
               "vocab_size": run.task.tokenizer.vocab_size,
               "val_loss": evals[-1]["val_loss"], "val_perplexity": math.exp(evals[-1]["val_loss"]),
               "untrained_val_loss": evals[0]["val_loss"] if evals[0]["step"] == 0 else None,
               "uniform_loss": run.task.baselines["uniform"], "unigram_val_loss": run.task.baselines["unigram"],
               "device": run.target}
    if run.task.final_eval is not None:
        model.set_train(False)
        summary.update(run.task.final_eval(model))
    summary["wall_seconds"] = time.perf_counter() - run.t0  # data, compiles, steps, evaluations, final evaluation
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    run.log(tasks.get(cfg.task).report(summary))
    return summary


def weights_digest(model) -> str:
    """SHA-256 over every parameter's name and bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in model.parameters_and_names():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.asnumpy()).tobytes())
    return h.hexdigest()[:16]


def parse_args(argv):
    """[CONFIG.yaml] [key=value ...] -> (config path or None, overrides)."""
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        sys.exit(0)
    path = argv[0] if argv and "=" not in argv[0] else None
    rest = argv[1:] if path else argv
    for a in rest:
        if "=" not in a:
            raise UserError(f"unexpected argument '{a[:200]}': give at most one config file, then key=value "
                            f"overrides")
    return path, rest


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path, overrides = parse_args(argv)
    cfg = load_config(path, overrides)
    summary = train(cfg)
    if "rank" in summary:  # a data-parallel worker other than rank 0: rank 0 reports
        return summary
    samples = tasks.get(cfg.task).SAMPLES
    if cfg.sample.max_new_tokens and samples:
        model, tokenizer, _ = runs.load_model(cfg.out_dir)
        text = complete(model, tokenizer, cfg.sample.prompt, cfg.sample.max_new_tokens,
                        temperature=cfg.sample.temperature, top_k=cfg.sample.top_k, top_p=cfg.sample.top_p,
                        seed=cfg.seed)[0]
        print(f"--- sample (temperature {cfg.sample.temperature}) ---\n{cfg.sample.prompt}{text}\n---")
    more = f"; sample more with python -m mindllm.sample --ckpt {cfg.out_dir}" if samples else ""
    print(f"outputs in {cfg.out_dir}/: metrics.jsonl, loss.png, summary.json, ckpt/{more}")
    return summary


if __name__ == "__main__":
    main()
