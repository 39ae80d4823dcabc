"""What quantization costs and buys on a trained language model, each scheme beside float32:
validation loss and perplexity, weight bytes, checkpoint size, decoding tokens/s and the decoding process's peak
memory. For `python -m mindllm.bench --quant RUN` and notebook 11_inference.

Loss comes from the run's own validation batches. Speed and memory come from fresh worker processes that load the
quantized run from disk and decode (bench.py's workers), alternating float and quantized, medians of the repeats.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from mindspore import Tensor

from .. import runs
from ..data.dataset import IGNORE
from ..workers import median_seconds, peak_rss_mb, spawn
from .files import size, write_run
from .layers import quantize_weights

# the schemes compared by default: (label, spec)
DEFAULT = (("int8 per tensor", {"bits": 8, "scheme": "per_tensor", "symmetric": True}),
           ("int8 per channel", {"bits": 8, "scheme": "per_channel", "symmetric": True}),
           ("int8 per channel, zero point", {"bits": 8, "scheme": "per_channel", "symmetric": False}),
           ("int4 groups of 32", {"bits": 4, "scheme": "group", "group_size": 32, "symmetric": True}))


def lm_loss(model, batches) -> float:
    """Mean next-token cross-entropy (nats) of a language model over (x, y) batches; IGNORE labels skipped."""
    total, count = 0.0, 0
    for x, y, *_ in batches:
        logits = model(Tensor(np.asarray(x, np.int32))).asnumpy().astype(np.float64)  # (B, T, V)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        y = np.asarray(y)
        keep = y != IGNORE
        total -= np.take_along_axis(logp, np.where(keep, y, 0)[..., None], -1)[..., 0][keep].sum()
        count += keep.sum()
    return total / max(count, 1)


def weight_bytes(model) -> int:
    return sum(int(np.prod(p.shape)) * p.data.itemsize for p in model.get_parameters())


def quality(run: str, schemes=DEFAULT) -> list[dict]:
    """Validation loss, perplexity and weight bytes of the float model and of each scheme (quantized in memory)."""
    task, _ = runs.load_trained(run)
    batches = task.eval_batches["val"]
    rows = []
    for label, spec in (("float32", None),) + tuple(schemes):
        model = runs.load_model(run)[0]
        stats = quantize_weights(model, spec) if spec else {}
        loss = lm_loss(model, batches)
        rows.append({"scheme": label, "spec": spec, "val_loss": loss, "perplexity": float(np.exp(loss)),
                     "weight_bytes": weight_bytes(model),
                     "max_rel_weight_error": max((s["rel_error"] for s in stats.values()), default=0.0)})
    return rows


def speed(run: str, rows: list[dict], new_tokens: int = 200, repeats: int = 3, log=print) -> None:
    """Add tokens/s, peak RSS and checkpoint size to each row: its quantized run written to a temporary directory,
    timed in worker processes, float and quantized alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for r in rows:
            if r["spec"] is None:
                paths[r["scheme"]] = run
                continue
            model = runs.load_model(run)[0]
            quantize_weights(model, r["spec"])
            paths[r["scheme"]] = os.path.join(tmp, f"q{len(paths)}")
            write_run(paths[r["scheme"]], runs.locate(run)[0], model, {"quant": r["spec"]})
        samples = {r["scheme"]: [] for r in rows}
        for i in range(repeats):
            for r in rows:
                samples[r["scheme"]].append(spawn("quant_decode", {}, run=paths[r["scheme"]], new_tokens=new_tokens))
            log(f"repeat {i + 1}/{repeats} done")
        for r in rows:
            s = samples[r["scheme"]]
            r["checkpoint_bytes"] = size(runs.locate(paths[r["scheme"]])[1])
            r["tokens_per_s"] = float(np.median([x["tokens_per_s"] for x in s]))
            r["peak_rss_mb"] = float(np.median([x["peak_rss_mb"] for x in s]))
            r["greedy_tokens"] = s[0]["tokens"]


def decode_worker(run: str, new_tokens: int) -> dict:
    """In a fresh process: load a run, decode greedily with the KV cache, time it (bench.py's worker)."""
    from ..decoding import generate

    model, tok, _ = runs.load_model(run)
    prompt = np.array([tok.encode("\n")], np.int32)
    generate(model, prompt, 2, temperature=0)  # compile both graphs
    seconds, out = median_seconds(lambda: generate(model, prompt, new_tokens, temperature=0))
    return {"tokens_per_s": new_tokens / seconds, "tokens": out[0, 1:].tolist(), "peak_rss_mb": peak_rss_mb()}


def measure(run: str, schemes=DEFAULT, new_tokens: int = 200, repeats: int = 3, log=print) -> dict:
    rows = quality(run, schemes)
    speed(run, rows, new_tokens=new_tokens, repeats=repeats, log=log)
    base = rows[0]["greedy_tokens"]
    for r in rows:
        r["same_greedy_tokens"] = sum(a == b for a, b in zip(r.pop("greedy_tokens"), base)) / len(base)
    return {"run": run, "new_tokens": new_tokens, "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    f = result["rows"][0]
    lines = [f"Run `{result['run']}`: validation loss on its own val batches; {result['new_tokens']} greedy tokens "
             f"with the KV cache, median of {result['repeats']} alternating worker processes.", "",
             "| weights | val loss | perplexity | weights (MiB) | checkpoint (MiB) | tokens/s | vs float | peak RSS (MiB) "
             "| same greedy tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scheme']} | {r['val_loss']:.4f} | {r['perplexity']:.3f} | {r['weight_bytes'] / 2**20:.2f} "
                     f"| {r['checkpoint_bytes'] / 2**20:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / f['tokens_per_s']:.2f}× | {r['peak_rss_mb']:.0f} | "
                     f"{r['same_greedy_tokens']:.0%} |")
    return "\n".join(lines) + "\n"
