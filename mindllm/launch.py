"""`python -m mindllm.launch -n N [--master-port P] [--log-dir D] [--dry-run] -- CONFIG [key=value ...]`: N workers.

Checks the config first (a mistake costs one line, not N crashed workers), then runs MindSpore's `msrun`, which
starts a scheduler and N worker processes of `python -m mindllm.train CONFIG ...` on this machine. Rank 0's
output is shown as it comes; every rank's full log is in D (default OUT_DIR/logs/worker_K.log). The exit status
is the job's: 0, or the failing worker's (2 for a config/user error), after that worker's last log lines.

    python -m mindllm.launch -n 2 -- configs/gpt_char_shakespeare_dp2.yaml train.max_iters=200

On a cluster, `msrun` itself (or the MS_ROLE / MS_SCHED_HOST / MS_SCHED_PORT / MS_WORKER_NUM environment) starts
the same command on every node; this launcher is the one-machine convenience. `--dry-run` checks a layout for N
devices of the config's device_target (e.g. an 8-card Ascend config, on a laptop) and prints the memory estimate.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

from . import device, memory, parallel
from .config import load_config
from .errors import UserError, cli
from .train import parse_args as parse_train_args

TAIL_LINES = 15
_MS_LOG = re.compile(r"\[(INFO|WARNING|DEBUG)\] ")  # MindSpore's own log lines: kept in the files, not echoed


def parse_args(argv):
    """-> (workers, master port or None, log dir or None, dry run?, train args)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if "--" not in argv:
        raise UserError("put the training arguments after '--': python -m mindllm.launch -n 2 -- CONFIG [key=value]")
    cut = argv.index("--")
    opts, train_args = argv[:cut], argv[cut + 1:]
    values = {"-n": None, "--master-port": None, "--log-dir": None}
    dry = "--dry-run" in opts
    opts = [o for o in opts if o != "--dry-run"]
    i = 0
    while i < len(opts):
        key = opts[i]
        if key not in values or i + 1 >= len(opts):
            raise UserError(f"unknown or incomplete launcher option '{key}'; use -n N, --master-port P, --log-dir D")
        values[key] = opts[i + 1]
        i += 2
    try:
        n = int(values["-n"]) if values["-n"] is not None else None
        port = int(values["--master-port"]) if values["--master-port"] is not None else None
    except ValueError:
        raise UserError("-n and --master-port take whole numbers") from None
    if n is None or n < 1:
        raise UserError("give the number of workers: -n 2")
    if port is not None and not 1024 <= port <= 65535:
        raise UserError(f"--master-port {port} is outside 1024-65535")
    return n, port, values["--log-dir"], dry, train_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(n: int, port: int, log_dir: str, train_args) -> list[str]:
    # msrun runs `python ARGS` for a task named python: the -m form keeps the package's imports intact
    return [sys.executable, "-m", "mindspore.parallel.cluster.run", f"--worker_num={n}", f"--local_worker_num={n}",
            f"--master_port={port}", "--join=True", f"--log_dir={log_dir}", "python", "-m", "mindllm.train",
            *train_args]


def failure_report(log_dir: str, n: int) -> tuple[int, str]:
    """(exit status, message) for a failed job: a worker's `error:` line if one wrote it (exit 2), else the tail of
    the first log with a traceback (exit 1)."""
    logs = [os.path.join(log_dir, f"worker_{k}.log") for k in range(n)]
    texts = []
    for path in logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
        except OSError:
            texts.append("")
    for k, text in enumerate(texts):
        user = re.findall(r"^error: .*$", text, re.M)
        if user:
            return 2, f"{user[-1]} (worker {k}; log {logs[k]})"
    for k, text in enumerate(texts):
        if "Traceback" in text or "Error" in text:
            lines = [line for line in text.rstrip().splitlines() if not _MS_LOG.match(line)]
            tail = "\n".join(lines[-TAIL_LINES:])
            return 1, f"worker {k} failed; the end of {logs[k]}:\n{tail}"
    return 1, f"the job failed before any worker reported why; see {log_dir}/scheduler.log and msrun.log"


class _Follow:
    """Print what a growing file gains (rank 0's log) to our stdout."""

    def __init__(self, path):
        self.path, self.pos = path, 0

    def pump(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        if data:
            self.pos += len(data)
            text = data.decode("utf-8", errors="replace")
            try:
                sys.stdout.write("".join(line for line in text.splitlines(keepends=True)
                                         if not _MS_LOG.match(line)))
                sys.stdout.flush()
            except BrokenPipeError:  # `... | head`: stop echoing, let the job finish
                self.path = os.devnull


def launch(n: int, train_args, port: int | None = None, log_dir: str | None = None, echo: bool = True) -> int:
    """Validate, run the job, return its exit status (raises UserError for a config mistake)."""
    path, overrides = parse_train_args(list(train_args))
    cfg = load_config(path, overrides)
    target = device.resolve_target(cfg.context.device_target)
    parallel.validate(cfg, target, n)
    log_dir = log_dir or os.path.join(cfg.out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for k in range(n):  # a previous job's logs would be mistaken for this one's
        stale = os.path.join(log_dir, f"worker_{k}.log")
        if os.path.exists(stale):
            os.remove(stale)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # msrun calls `python`
    env.setdefault("GLOG_v", "3")  # MindSpore's C++ logging: errors only
    env["PYTHONUNBUFFERED"] = "1"  # rank 0's lines appear as they are printed, not at exit
    cmd = msrun_command(n, port or free_port(), log_dir, train_args)
    follow = _Follow(os.path.join(log_dir, "worker_0.log"))
    with open(os.path.join(log_dir, "msrun.log"), "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if echo:
                    follow.pump()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # msrun stops every worker
            proc.wait()
            raise
    if echo:
        follow.pump()
    if proc.returncode == 0:
        return 0
    status, message = failure_report(log_dir, n)
    print(f"error: {message}", file=sys.stderr)
    return status


def dry_run(n: int, train_args) -> str:
    """Validate the layout for n devices of the configured target without needing them; the memory estimate."""
    cfg = load_config(*parse_train_args(list(train_args)))
    target = cfg.context.device_target if cfg.context.device_target != "auto" else "CPU"
    parallel.validate(cfg, target, n)
    if cfg.parallel.parallel_mode in parallel.SHARDED_MODES:
        parallel.check_layout(cfg)
    model, layout = cfg.model, memory.layout_for(cfg, n)
    # the vocabulary is known before training only for fixed tokenizers; a character vocabulary is small
    vocab = {"gpt2": 50257, "bert_uncased": 30522, "bpe": cfg.data.vocab_size, "hf_bpe": cfg.data.vocab_size,
             "hf_wordpiece": cfg.data.vocab_size}.get(cfg.data.tokenizer, 256)
    est = memory.estimate(model.n_layer, model.n_embd, model.n_head, vocab, model.block_size, cfg.train.batch_size,
                          layout=layout, precision="mixed" if cfg.train.amp != "none" else "fp32",
                          ffn=None if model.arch == "gpt" else model.ffn_dim, bias=model.bias,
                          dropout=model.dropout > 0)
    return (f"{n} x {target}, {cfg.parallel.parallel_mode}: data_parallel {layout.data_parallel} x model_parallel "
            f"{layout.model_parallel} x pipeline_stage {layout.pipeline_stage} - layout valid\n{memory.describe(est)}")


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    n, port, log_dir, dry, train_args = parse_args(argv)
    if dry:
        print(dry_run(n, train_args))
        return
    sys.exit(launch(n, train_args, port, log_dir))


if __name__ == "__main__":
    main()
