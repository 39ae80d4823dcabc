"""Measurements in fresh worker processes (so peak memory is the measured thing's own): the worker registry lives in
`mindllm.bench` (`python -m mindllm.bench --worker NAME`); these helpers start workers and time inside them."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def median_seconds(fn, repeats: int = 3):
    """(median wall time of `repeats` calls of fn, the last call's result)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def timed(step, batches, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Run `warmup` untimed steps (graph compile, allocator warm-up), then `steps` timed ones; step(*batch) returns
    a Python float (the loss), so the step has finished. -> (timed seconds, every loss)."""
    losses, times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = step(*batches[i % len(batches)])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss)
    return times, losses


def first_then_timed(step, data, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(the first call's seconds: mindllm's compile, PyTorch's allocator warm-up; the timed steps' seconds), the
    first call on data[0], the timed ones from data[1] on."""
    t0 = time.perf_counter()
    step(*data[0])
    first = time.perf_counter() - t0
    return first, timed(step, data[1:] + data[:1], warmup, steps)[0]


def spawn(name: str, env: dict, **kwargs) -> dict:
    """Run bench's worker `name` with `kwargs` in a new process; its last stdout line is its JSON result."""
    cmd = [sys.executable, "-m", "mindllm.bench", "--worker", name, "--worker-args", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench worker {name} {kwargs} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
