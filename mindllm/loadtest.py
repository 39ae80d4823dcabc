"""A bounded load test of `python -m mindllm.serve`: one client alone, then N concurrent clients, same prompts.

    python -m mindllm.bench --serve runs/week09/full --clients 8 --requests 20 --max-tokens 32

The server decodes one request at a time (FIFO), so N clients do not make it faster: they queue. What the table
shows is the price of that design: requests/s stays about the same, the time to first token grows with the queue,
and every answer must still be exactly the one a lone client gets (temperature 0: no cross-talk between requests).

What is measured, client side, per streaming chat completion:
  TTFT      time from sending the request to the first chunk with text (an empty answer: to its finish chunk);
            the server's first chunk (the assistant role, no text) is sent before decoding starts, so it is not it.
  latency   time from sending the request to `data: [DONE]`.
  tokens/s  per request, decode phase: (text chunks - 1) / (last text chunk - first text chunk). The server sends
            one chunk per decoded token, except the end token and partial characters held back, so chunks ~ tokens.
  requests/s and aggregate tokens/s: completed requests, and all their text chunks, / the measurement's wall time.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time

from .errors import UserError
from .serve import running

PROMPTS = ["What is AI?", "Do you like music?", "Tell me a joke.", "What is your name?", "How are you?",
           "Who are you?", "What is a computer?", "Can you help me?"]  # chatterbot-style questions, all different
METRICS = ("ttft", "latency", "tokens_per_s")


def percentile(values, q: float):
    """Linear-interpolated percentile (numpy's default) of the non-None values; None when there are none."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def request(http, url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streaming chat completion, parsed from its server-sent events, with its client-side timings."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    rec = {"ttft_s": None, "latency_s": None, "tokens_per_s": None, "chunks": 0, "text": "", "finish_reason": None,
           "done": False, "completed": False, "error": None}
    first = last = None
    t0 = time.perf_counter()
    try:
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                rec["error"] = f"HTTP {r.status_code}: {r.text[:200]}"
                return rec
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue  # the blank line between events
                if line == "data: [DONE]":
                    rec["done"] = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    rec["error"] = event["error"]["message"]
                    continue
                choice = event["choices"][0]
                if choice["delta"].get("content"):
                    last = time.perf_counter() - t0
                    first = last if first is None else first
                    rec["chunks"] += 1
                    rec["text"] += choice["delta"]["content"]
                if choice["finish_reason"] is not None:
                    rec["finish_reason"] = choice["finish_reason"]
                    first = time.perf_counter() - t0 if first is None else first  # an empty answer's first token
    except Exception as e:  # noqa: BLE001 - a failed request is a result of the load test, not its end
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    rec["latency_s"], rec["ttft_s"] = time.perf_counter() - t0, first
    if rec["chunks"] >= 2 and last > first:
        rec["tokens_per_s"] = (rec["chunks"] - 1) / (last - first)
    rec["completed"] = rec["done"] and rec["finish_reason"] is not None and rec["error"] is None
    return rec


def load(url: str, model: str, clients: int, requests: int, max_tokens: int, prompt_messages: list[list[dict]],
         timeout: float = 300.0) -> dict:
    """`clients` threads, each sending `requests` streaming chat completions one after another. Client c's
    request r asks prompt_messages[(c + r) % len]: concurrent clients ask different prompts, so cross-talk between
    requests would show in their answers. Returns the aggregates and every request's record."""
    import httpx

    records: list[dict] = []
    lock, start = threading.Lock(), threading.Barrier(clients + 1)

    def client(c: int):
        # trust_env=False: a proxy from the environment must not sit between us and a loopback server
        with httpx.Client(timeout=timeout, trust_env=False) as http:
            start.wait()
            for r in range(requests):
                p = (c + r) % len(prompt_messages)
                rec = request(http, url, model, prompt_messages[p], max_tokens)
                with lock:
                    records.append({"client": c, "index": r, "prompt": p, **rec})

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()  # every client has its connection pool ready: they start together
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    records.sort(key=lambda rec: (rec["client"], rec["index"]))
    return {**aggregate(records, wall), "clients": clients, "records": records}


def aggregate(records: list[dict], wall: float) -> dict:
    chunks = sum(r["chunks"] for r in records)
    done = sum(r["completed"] for r in records)
    out = {"requests": len(records), "completed": done, "wall_s": wall, "requests_per_s": done / wall,
           "chunks": chunks, "aggregate_tokens_per_s": chunks / wall}
    for m in METRICS:
        key = m if m == "tokens_per_s" else f"{m}_s"
        for q in (50, 95):
            out[f"{m}_p{q}"] = percentile([r[key] for r in records], q)
    return out


def medians(rounds: list[dict]) -> dict:
    """One measurement repeated: counts summed, every rate and time the median over the rounds."""
    out = {"rounds": rounds, "clients": rounds[0]["clients"]}
    for key, value in rounds[0].items():
        if key in ("requests", "completed", "chunks", "mismatched"):
            out[key] = sum(r[key] for r in rounds)
        elif isinstance(value, float) or value is None:
            vals = [r[key] for r in rounds if r[key] is not None]
            out[key] = statistics.median(vals) if vals else None
    return out


def peak_rss_mb(pid: int):
    """The process's high-water-mark RSS so far (Linux VmHWM: a true peak, not a sample); None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def run(run_dir: str, clients: int, requests: int, max_tokens: int, port: int | None = None, rounds: int = 2,
        prompts: list[str] | None = None, timeout: float = 300.0, log=print) -> dict:
    """Start a server on run_dir; answer every prompt once alone (the reference answers, and a warm-up); then
    `rounds` times, alternating which goes first: 1 client × `requests`, and `clients` clients × `requests`.
    Every answer is compared to its prompt's reference. The server is stopped whatever happens."""
    for name, value in (("clients", clients), ("requests", requests), ("rounds", rounds)):
        if value < 1:
            raise UserError(f"--{name} must be >= 1; got {value}")
    if not 1 <= max_tokens <= 512:
        raise UserError(f"--max-tokens must be in 1..512 (the server's default limit); got {max_tokens}")
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory {run_dir!r}: give a trained run (e.g. runs/week09/full)")
    prompts = prompts or PROMPTS
    messages = [[{"role": "user", "content": p}] for p in prompts]
    with running(run_dir, timeout=timeout) as server:
        url, model = server.url, server.model
        log(f"server {url} (pid {server.pid}) serves '{model}'; reference answers for {len(prompts)} prompts")
        ref = load(url, model, 1, len(prompts), max_tokens, messages, timeout)
        reference = [r["text"] for r in ref["records"]]
        runs = {1: [], clients: []} if clients > 1 else {1: []}
        for i in range(rounds):
            for n in (runs if i % 2 == 0 else reversed(runs)):  # alternate: drift in load hits both
                out = load(url, model, n, requests, max_tokens, messages, timeout)
                out["mismatched"] = sum(r["text"] != reference[r["prompt"]] for r in out["records"])
                runs[n].append(out)
                log(f"round {i + 1}/{rounds}, {n} client(s): {out['completed']}/{out['requests']} completed, "
                    f"{out['requests_per_s']:.2f} req/s, TTFT p50 {(out['ttft_p50'] or 0) * 1e3:.0f} ms")
        rss = peak_rss_mb(server.pid)
    summary = {n: medians(r) for n, r in runs.items()}
    ok = ref["completed"] == len(prompts) and all(s["completed"] == s["requests"] and s["mismatched"] == 0
                                                  for s in summary.values())
    return {"run": os.path.abspath(run_dir), "model": model, "max_tokens": max_tokens,
            "clients": clients, "requests_per_client": requests, "rounds": rounds, "prompts": prompts,
            "reference": reference, "reference_completed": ref["completed"] == len(prompts),
            "distinct_answers": len(set(reference)),  # 1: every prompt gets the same answer, cross-talk cannot show
            "server_peak_rss_mb": rss, "all_completed_and_equal": ok,
            "baseline": summary[1], "concurrent": summary[clients]}


def markdown(result: dict) -> str:
    """The table; result["machine"] (bench.machine(), added by python -m mindllm.bench) describes the machine."""
    m = result.get("machine")

    def ms(v):
        return "–" if v is None else f"{v * 1e3:,.0f} ms"

    def tps(v):
        return "–" if v is None else f"{v:,.1f} tok/s"

    rss = result["server_peak_rss_mb"]
    where = f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, MindSpore {m['mindspore']}. " if m else ""
    head = (f"{where}Server: `python -m mindllm.serve {result['run']}` (model '{result['model']}', one request decoded "
            f"at a time, FIFO){f', peak RSS {rss:,.0f} MB' if rss else ''}. Streaming chat completions, "
            f"temperature 0, max_tokens {result['max_tokens']}, {result['requests_per_client']} requests per "
            f"client, medians of {result['rounds']} alternating rounds. Every answer completed and equal to a lone "
            f"client's: {'yes' if result['all_completed_and_equal'] else 'NO (see serve.json)'} "
            f"({result['distinct_answers']} distinct answers to {len(result['prompts'])} prompts).")
    columns = ("clients", "completed", "requests/s", "TTFT p50", "TTFT p95", "latency p50", "latency p95",
               "decode tokens/s p50", "decode tokens/s p95", "aggregate tokens/s")
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows = [result["baseline"]] + ([result["concurrent"]] if result["clients"] > 1 else [])
    for s in rows:
        lines.append(f"| {s['clients']} | {s['completed']}/{s['requests']} | {s['requests_per_s']:.2f} req/s | "
                     f"{ms(s['ttft_p50'])} | {ms(s['ttft_p95'])} | {ms(s['latency_p50'])} | "
                     f"{ms(s['latency_p95'])} | {tps(s['tokens_per_s_p50'])} | {tps(s['tokens_per_s_p95'])} | "
                     f"{tps(s['aggregate_tokens_per_s'])} |")
    return "\n".join(lines) + "\n"
