"""`python -m mindllm.bench`: mindllm's GPT train step and decoding, side by side with a PyTorch reference.

One invocation, one process tree: every measurement runs in a fresh worker process (so peak RSS is that
framework's own), MindSpore and PyTorch workers alternate, and the table reports medians and ratios, never a lone
absolute time: these machines are shared and noisy. Both sides train the same GPT (same shape, parameter count,
batch, AdamW with weight-decay groups, global-norm clipping); the PyTorch side is nanoGPT's model.py in a few
lines (PyTorch is a dev dependency, imported only in its workers).

    python -m mindllm.bench                  # both shapes, JSON + Markdown in bench_out/
    python -m mindllm.bench --quick          # CI smoke: the small shape, a few steps
    python -m mindllm.bench --kernels plain  # mindllm without its fused CPU kernels, to see what they buy
    python -m mindllm.bench --e2e            # the whole default run beside nanoGPT's train.py loop (bench_e2e.py)
    python -m mindllm.bench --finetune       # a MiniLM fine-tuning (or BERT pretraining) step beside PyTorch + transformers
    python -m mindllm.bench --serve runs/week09/full  # load-test `python -m mindllm.serve`: 1 vs 8 clients
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from .errors import ArgumentParser, UserError, cli
from .bench_torch import torch_adamw, torch_gpt
from .workers import median_seconds, peak_rss_mb, spawn, timed

# nanoGPT's CPU shape (its README's shakespeare_char on a laptop) and the 6L/6H/384 shape its GPU run uses
SHAPES = {
    "nanogpt-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "6L-384-256": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16),
}
VOCAB = 65  # shakespeare_char's vocabulary: speed does not depend on which tokens, only on how many
DECODE_PROMPT = 16
DECODE_REPEATS = 3  # generations per worker; the median is reported


def flops_per_step(s: dict, n_params: int) -> float:
    """Training FLOPs of one step (PaLM appendix B, as nanoGPT's estimate_mfu): 6N per token for the weights'
    forward and backward, plus 12·L·T·C per token for attention's two matmuls."""
    T, L, C = s["block_size"], s["n_layer"], s["n_embd"]
    return (6 * n_params + 12 * L * T * C) * T * s["batch_size"]


def _batches(s: dict, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (s["batch_size"], s["block_size"])
    return [(rng.integers(0, VOCAB, shape, dtype=np.int32), rng.integers(0, VOCAB, shape, dtype=np.int32))
            for _ in range(n)]


def _ms_model(s: dict, block_size: int | None = None):
    os.environ.setdefault("GLOG_v", "3")
    from . import device, kernels
    from .config import ContextConfig
    from .models.gpt import GPT, GPTConfig

    device.setup(ContextConfig(device_target="CPU"), seed=0)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=block_size or s["block_size"], n_layer=s["n_layer"],
                    n_head=s["n_head"], n_embd=s["n_embd"])
    return kernels.fuse(GPT(cfg))  # on CPU unless MINDLLM_KERNELS=plain: the layers training would run


def ms_train(s: dict, warmup: int, steps: int) -> dict:
    from mindspore import Tensor

    from .config import TrainConfig
    from .models.layers import cross_entropy
    from .optim import build_optimizer
    from . import kernels
    from .steps import TrainSteps

    model = _ms_model(s)
    model.set_train(True)
    optimizer = build_optimizer(model, TrainConfig(max_iters=warmup + steps + 1, warmup_iters=0))

    def loss_fn(x, y):  # a def, not a lambda: graph mode compiles it
        return cross_entropy(model(x), y)

    step = TrainSteps(loss_fn, optimizer, grad_clip=1.0, clip=kernels.clip_by_global_norm()).step

    def one(x, y):
        return float(step(Tensor(x), Tensor(y))[0].asnumpy())

    t0 = time.perf_counter()
    one(*_batches(s, 1, seed=1)[0])  # the first call compiles the graph
    compile_s = time.perf_counter() - t0
    times, losses = timed(one, _batches(s, 8), warmup, steps)
    return {"step_s": times, "losses": losses, "params": model.num_params(non_embedding=False),
            "compile_s": compile_s, "peak_rss_mb": peak_rss_mb()}


def ms_decode(s: dict, new_tokens: int, kv_cache: bool) -> dict:
    import numpy as np

    from .decoding import generate

    model = _ms_model(s, block_size=DECODE_PROMPT + new_tokens)
    prompt = np.random.default_rng(0).integers(0, VOCAB, (1, DECODE_PROMPT), dtype=np.int32)
    generate(model, prompt, 2, kv_cache=kv_cache)  # compile both graphs
    seconds, out = median_seconds(lambda: generate(model, prompt, new_tokens, kv_cache=kv_cache, seed=0),
                                  DECODE_REPEATS)
    return {"tokens_per_s": new_tokens / seconds, "tokens": out[0, DECODE_PROMPT:].tolist(),
            "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- PyTorch reference (nanoGPT's model.py)

def torch_train(s: dict, warmup: int, steps: int) -> dict:
    import torch
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = torch_gpt(s, vocab=VOCAB)
    params = list(model.parameters())
    opt = torch_adamw(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

    def one(x, y):
        logits, _ = model(torch.from_numpy(x).long())
        loss = F.cross_entropy(logits.view(-1, VOCAB), torch.from_numpy(y).long().view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    one(*_batches(s, 1, seed=1)[0])
    times, losses = timed(one, _batches(s, 8), warmup, steps)
    return {"step_s": times, "losses": losses, "params": sum(p.numel() for p in params), "compile_s": 0.0,
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


def torch_decode(s: dict, new_tokens: int, kv_cache: bool) -> dict:
    """nanoGPT's generate (the sequence grows; no padding), with or without a concatenating KV cache."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = torch_gpt(s, block_size=DECODE_PROMPT + new_tokens, vocab=VOCAB).eval()
    prompt = torch.from_numpy(np.random.default_rng(0).integers(0, VOCAB, (1, DECODE_PROMPT))).long()

    @torch.no_grad()
    def run(n):
        idx, past = prompt, None
        for _ in range(n):
            if kv_cache:
                logits, past = model(idx if past is None else idx[:, -1:], past,
                                     0 if past is None else idx.shape[1] - 1)
            else:
                logits, _ = model(idx)
            p = torch.softmax(logits[:, -1], -1)
            idx = torch.cat([idx, torch.multinomial(p, 1)], 1)
        return idx

    run(2)
    seconds, _ = median_seconds(lambda: run(new_tokens), DECODE_REPEATS)
    return {"tokens_per_s": new_tokens / seconds, "peak_rss_mb": peak_rss_mb()}


def matmul_peak(n: int = 1024, repeats: int = 20) -> dict:
    """This machine's fp32 matmul throughput (PyTorch's BLAS, all its threads): the denominator of MFU."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n ** 3 / best / 1e9, "n": n, "threads": torch.get_num_threads()}


def torch_e2e(r: dict, out_dir: str) -> dict:
    from .bench_e2e import torch_e2e as worker  # nanoGPT train.py's loop, the whole run

    return worker(r, out_dir)


def ms_finetune(r: dict, warmup: int, steps: int) -> dict:
    from .bench_finetune import ms_finetune as worker  # the real MiniLM fine-tuned, mindllm's step

    return worker(r, warmup, steps)


def torch_finetune(r: dict, warmup: int, steps: int) -> dict:
    from .bench_finetune import torch_finetune as worker  # the same, PyTorch + transformers (+ peft)

    return worker(r, warmup, steps)


def quant_decode(run: str, new_tokens: int) -> dict:
    from .quant.measure import decode_worker  # a quantized run from disk, decoded greedily

    return decode_worker(run, new_tokens)


WORKERS = {"ms_train": ms_train, "torch_train": torch_train, "ms_decode": ms_decode, "torch_decode": torch_decode,
           "matmul_peak": matmul_peak, "quant_decode": quant_decode, "torch_e2e": torch_e2e,
           "ms_finetune": ms_finetune, "torch_finetune": torch_finetune}


# ---------------------------------------------------------------- the parent: spawn, alternate, summarise



def machine() -> dict:
    import mindspore
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "mindspore": mindspore.__version__, "numpy": numpy.__version__}
    try:
        from importlib.metadata import version

        versions["torch"] = version("torch")
    except Exception:
        versions["torch"] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), **versions}


def run(shapes, repeats: int, warmup: int, steps: int, new_tokens: int, kernels: str, log=print) -> dict:
    env = {"MINDLLM_KERNELS": kernels}
    peak = spawn("matmul_peak", env)
    log(f"fp32 matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['threads']} threads)")
    result = {"machine": machine(), "matmul_peak_gflops": peak["gflops"], "kernels": kernels, "shapes": {}}
    for name in shapes:
        s = SHAPES[name]
        runs = {"ms": [], "torch": []}
        for r in range(repeats):  # alternate which side goes first: drift in machine load hits both
            for side in (("ms", "torch") if r % 2 == 0 else ("torch", "ms")):
                out = spawn(f"{side}_train", env, s=s, warmup=warmup, steps=steps)
                runs[side].append(out)
                log(f"{name} {side:5s} repeat {r + 1}/{repeats}: median step "
                    f"{statistics.median(out['step_s']) * 1e3:.1f} ms, peak RSS {out['peak_rss_mb']:.0f} MB")
        tokens = s["batch_size"] * s["block_size"]
        row = {"shape": s, "tokens_per_step": tokens}
        for side, outs in runs.items():
            step_s = statistics.median(t for o in outs for t in o["step_s"])
            n = outs[0]["params"]
            row[side] = {"median_step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s, "params": n,
                         "peak_rss_mb": max(o["peak_rss_mb"] for o in outs),
                         "mfu": flops_per_step(s, n) / step_s / (peak["gflops"] * 1e9),
                         "compile_s": statistics.median(o["compile_s"] for o in outs),
                         "first_losses": outs[0]["losses"][:3]}
        if row["ms"]["params"] != row["torch"]["params"]:
            raise RuntimeError(f"the two models differ: {row['ms']['params']} vs {row['torch']['params']} params")
        row["speed_ratio"] = row["ms"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
        row["memory_ratio"] = row["ms"]["peak_rss_mb"] / row["torch"]["peak_rss_mb"]
        row["decode"] = {}
        generated = {}
        for side in ("ms", "torch"):
            for kv in (True, False):
                out = spawn(f"{side}_decode", env, s=s, new_tokens=new_tokens, kv_cache=kv)
                row["decode"][f"{side}_{'kv' if kv else 'nokv'}"] = out["tokens_per_s"]
                generated[(side, kv)] = out.get("tokens")
        # same model, same seed: the cache must not change a single token
        if generated[("ms", True)] != generated[("ms", False)]:
            raise RuntimeError("mindllm's decoding with the KV cache differs from decoding without it")
        row["decode"]["new_tokens"] = new_tokens
        row["decode"]["kv_speedup"] = row["decode"]["ms_kv"] / row["decode"]["ms_nokv"]
        result["shapes"][name] = row
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, MindSpore {m['mindspore']}, "
             f"PyTorch {m['torch']} (eager); fp32 matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s; "
             f"mindllm kernels: {result['kernels']}.", "",
             "| shape | params | framework | median step | tokens/s | MFU | peak RSS | mindllm / PyTorch |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["shapes"].items():
        s = row["shape"]
        label = f"{s['n_layer']}L/{s['n_head']}H/{s['n_embd']}, B{s['batch_size']}×{s['block_size']}"
        for side, fw in (("ms", "mindllm (MindSpore graph)"), ("torch", "PyTorch eager")):
            r = row[side]
            ratio = (f"{row['speed_ratio']:.2f}× tokens/s, {row['memory_ratio']:.2f}× memory" if side == "ms"
                     else "1")
            lines.append(f"| {label} | {r['params'] / 1e6:.2f}M | {fw} | {r['median_step_ms']:.1f} ms | "
                         f"{r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f}% | {r['peak_rss_mb']:,.0f} MB | {ratio} |")
    lines += ["", "| shape | decoding, new tokens | mindllm KV cache | mindllm no cache | speed-up | "
                  "PyTorch KV cache | PyTorch no cache |", "|---|---|---|---|---|---|---|"]
    for name, row in result["shapes"].items():
        d = row["decode"]
        lines.append(f"| {name} | {d['new_tokens']} (prompt {DECODE_PROMPT}) | {d['ms_kv']:,.0f} tok/s | "
                     f"{d['ms_nokv']:,.0f} tok/s | {d['kv_speedup']:.1f}× | {d['torch_kv']:,.0f} tok/s | "
                     f"{d['torch_nokv']:,.0f} tok/s |")
    return "\n".join(lines) + "\n"


def build_parser():
    ap = ArgumentParser(prog="python -m mindllm.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--repeats", type=int,
                    help="worker processes per framework and shape (default 3); with --e2e, runs per side (default 2)")
    ap.add_argument("--steps", type=int, default=20, help="timed train steps per worker")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the compile")
    ap.add_argument("--new-tokens", type=int, default=256, help="decoding length")
    ap.add_argument("--kernels", choices=("auto", "plain"),
                    help="auto: mindllm's fused CPU kernels where they build; plain: pure MindSpore ops "
                         "(default: $MINDLLM_KERNELS, else auto)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: small shape, 1 repeat, 3 steps, 32 tokens")
    ap.add_argument("--out", default="bench_out", help="directory for bench.json and bench.md (serve.* with --serve)")
    ap.add_argument("--serve", metavar="RUN", help="instead: load-test `python -m mindllm.serve RUN` (loadtest.py)")
    ap.add_argument("--speculative", metavar="RUN", help="instead: speculative decoding of RUN against plain decoding "
                                                          "(k = 1..8, each --draft; speculative.py)")
    ap.add_argument("--quant", metavar="RUN", help="instead: RUN's weights quantized by each scheme against float32 "
                                                    "(loss, size, tokens/s, memory; quant/measure.py)")
    ap.add_argument("--e2e", nargs="?", const="", metavar="CONFIG",
                    help="instead: the whole run of `python -m mindllm.train [CONFIG]` beside nanoGPT's train.py "
                         "loop in PyTorch (wall, time outside the steps, CPU, peak RSS; bench_e2e.py)")
    ap.add_argument("--finetune", nargs="?", const="", metavar="CONFIG",
                    help="instead: a fine-tuning step of the real all-MiniLM-L6-v2 as CONFIG takes it (default "
                         "configs/bert_cls_minilm_tweets.yaml; LoRA and prompt tuning too), or a BERT pretraining "
                         "step (configs/bert_mlm_peoples_daily.yaml), mindllm beside PyTorch + transformers + peft "
                         "(step time, peak RSS; bench_finetune.py, bench_pretrain.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--e2e, --finetune: a config override for both sides (repeatable), e.g. --set "
                         "train.max_iters=500")
    ap.add_argument("--draft", action="append", default=[], help="--speculative: a draft run (repeat for several)")
    ap.add_argument("--temperature", type=float, default=0.0, help="--speculative: decoding temperature")
    ap.add_argument("--clients", type=int, default=8, help="--serve: concurrent clients")
    ap.add_argument("--requests", type=int, default=20, help="--serve: streaming requests per client")
    ap.add_argument("--max-tokens", type=int, default=32, help="--serve: max_tokens of each request")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    return ap


@cli
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.e2e is not None else 3
    if args.worker:
        print(json.dumps(WORKERS[args.worker](**json.loads(args.worker_args))))
        return
    if args.serve:
        from . import loadtest

        result = {"machine": machine(), **loadtest.run(args.serve, args.clients, args.requests, args.max_tokens,
                                                       log=lambda msg: print(msg, file=sys.stderr, flush=True))}
        return _write(args.out, "serve", result, loadtest.markdown(result))
    if args.speculative:
        return speculative_bench(args)
    if args.quant:
        return quant_bench(args)
    if args.e2e is not None:
        return e2e_bench(args)
    if args.finetune is not None:
        return finetune_bench(args)
    from . import kernels

    args.kernels = args.kernels or kernels.mode()  # mode() checks $MINDLLM_KERNELS: one line, not a worker's traceback
    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    unknown = [x for x in shapes if x not in SHAPES]
    if unknown:
        raise UserError(f"unknown shape {unknown[0]!r}: use --shapes with any of {', '.join(SHAPES)}")
    for flag in ("repeats", "steps", "new_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("the PyTorch reference needs torch: pip install -r requirements-dev.txt") from None
    if args.quick:
        shapes, args.repeats, args.steps, args.warmup, args.new_tokens = shapes[:1], 1, 3, 1, 32
    result = run(shapes, args.repeats, args.warmup, args.steps, args.new_tokens, args.kernels,
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    _write(args.out, "bench", result, markdown(result))


def speculative_bench(args) -> None:
    from . import device, speculative

    if not args.draft:
        raise UserError("--speculative needs at least one --draft RUN (a smaller run with the same tokenizer)")
    device.setup(device.context_for("CPU"), 0)
    result = {"machine": machine(), **speculative.measure(args.speculative, args.draft, new_tokens=args.new_tokens,
                                                          repeats=args.repeats, temperature=args.temperature,
                                                          log=lambda msg: print(msg, file=sys.stderr, flush=True))}
    _write(args.out, "speculative", result, speculative.markdown(result))


def e2e_bench(args) -> None:
    from . import bench_e2e

    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        raise UserError("--repeats must be >= 1")
    overrides = (bench_e2e.QUICK if args.quick else []) + args.set
    result = bench_e2e.run(args.e2e or None, overrides, repeats,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["machine"] = machine()
    _write(args.out, "e2e", result, bench_e2e.markdown(result, result["machine"]))


def finetune_bench(args) -> None:
    from . import bench_finetune

    repeats, steps, warmup = (1, 2, 1) if args.quick else (args.repeats, args.steps, args.warmup)
    for flag, value in (("repeats", repeats), ("steps", steps)):
        if value < 1:
            raise UserError(f"--{flag} must be >= 1")
    r = bench_finetune.recipe(args.finetune or None, args.set)
    result = bench_finetune.run(r, repeats, warmup, steps, spawn,
                                log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["machine"] = machine()
    _write(args.out, "finetune", result, bench_finetune.markdown(result, result["machine"]))


def quant_bench(args) -> None:
    from . import device
    from .quant import measure

    device.setup(device.context_for("CPU"), 0)
    result = {"machine": machine(), **measure.measure(args.quant, new_tokens=args.new_tokens, repeats=args.repeats,
                                                        log=lambda msg: print(msg, file=sys.stderr, flush=True))}
    _write(args.out, "quant", result, measure.markdown(result))


def _write(out: str, name: str, result: dict, table: str) -> None:
    """OUT/name.json and OUT/name.md, and the table on stdout."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(out, f"{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(table)
    print(table)


if __name__ == "__main__":
    main()
