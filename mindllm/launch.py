"""`python -m mindllm.launch -n N [--nodes M --node-rank R --master-addr HOST] [--master-port P] [--log-dir D]
[--dry-run] -- CONFIG [key=value ...]`: N workers on this machine (N x M in all).

Checks the config first (a mistake costs one line, not N crashed workers), then runs MindSpore's `msrun`, which
starts a scheduler and N worker processes of `python -m mindllm.train CONFIG ...`. Rank 0's output is shown as it
comes; every rank's full log is in D (default OUT_DIR/logs/worker_K.log). The exit status is the job's: 0, or the
failing worker's (2 for a config/user error), after that worker's last log lines.

    python -m mindllm.launch -n 2 -- configs/gpt_char_shakespeare_dp2.yaml train.max_iters=200

Several machines: the same command on each, with `--nodes M --node-rank R --master-addr HOST --master-port P`: R = 0
on the machine HOST, which also runs the scheduler, and the same P everywhere; machine R runs ranks R*N ... R*N+N-1
(its msrun log is msrun_nodeR.log). `--dry-run` checks a layout for N x M devices of the config's device_target
(e.g. an 8-card Ascend config, on a laptop) and prints the memory estimate.

The launcher owns the job (Linux): msrun only starts the processes, and the launcher, their 'child subreaper',
adopts them and sees how each one ends. The port is tried before anything starts; a scheduler that fails anyway, or
a worker that dies (killed, out of memory), stops the whole job within seconds with one line naming it. Ctrl-C,
SIGTERM and SIGHUP stop it too, with one `interrupted: ...` line and exit status 128 + the signal (130, 143, 129).
Nothing is left running; `resume=true` continues from the last checkpoint.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil  # a dependency of mindspore (msrun uses it)

from . import device, memory, parallel, runs
from .config import load_config
from .errors import Interrupted, UserError, cli
from .train import parse_args as parse_train_args

TAIL_LINES = 15
POLL = 0.5  # seconds between looks at the job
STOP_GRACE = 5  # seconds from SIGTERM to SIGKILL when the launcher stops the job
END_GRACE = 30  # seconds the scheduler may outlive the workers (or they it) before the launcher ends the rest
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_MS_LOG = re.compile(r"\[(INFO|WARNING|DEBUG)\] ")  # MindSpore's own log lines: kept in the files, not echoed
_PORT_TAKEN = "Failed to init the tcp server"  # the scheduler's log when it cannot listen
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_OPTIONS = {"-n": "n", "--nodes": "nodes", "--node-rank": "node_rank", "--master-addr": "master_addr",
            "--master-port": "port", "--log-dir": "log_dir"}


@dataclass
class Options:
    n: int  # workers on this machine
    nodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    port: int | None = None
    log_dir: str | None = None
    dry: bool = False
    train_args: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.n * self.nodes

    @property
    def ranks(self) -> range:
        """The global ranks of this machine's workers (msrun numbers them so)."""
        return range(self.node_rank * self.n, (self.node_rank + 1) * self.n)


def parse_args(argv) -> Options:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if "--" not in argv:
        raise UserError("put the training arguments after '--': python -m mindllm.launch -n 2 -- CONFIG [key=value]")
    cut = argv.index("--")
    opts, train_args = argv[:cut], argv[cut + 1:]
    dry = "--dry-run" in opts
    opts = [o for o in opts if o != "--dry-run"]
    values = {}
    for i in range(0, len(opts), 2):
        if opts[i] not in _OPTIONS or i + 1 >= len(opts):
            raise UserError(f"unknown or incomplete launcher option '{opts[i]}'; use -n N, --master-port P, "
                            f"--log-dir D, --nodes M --node-rank R --master-addr HOST, --dry-run")
        values[_OPTIONS[opts[i]]] = opts[i + 1]
    try:
        values.update({k: int(v) for k, v in values.items() if k in ("n", "nodes", "node_rank", "port")})
    except ValueError:
        raise UserError("-n, --nodes, --node-rank and --master-port take whole numbers") from None
    if values.get("n") is None or values["n"] < 1:
        raise UserError("give the number of workers: -n 2")
    options = Options(dry=dry, train_args=train_args, **values)
    check_options(options)
    return options


def check_options(o: Options) -> None:
    if o.port is not None and not 1024 <= o.port <= 65535:
        raise UserError(f"--master-port {o.port} is outside 1024-65535")
    if o.nodes < 1:
        raise UserError(f"--nodes {o.nodes}: a job needs at least 1 machine")
    if not 0 <= o.node_rank < o.nodes:
        raise UserError(f"--node-rank {o.node_rank} is outside 0..{o.nodes - 1} (--nodes {o.nodes})")
    if o.nodes > 1 and not o.dry and not o.master_addr:
        raise UserError(f"--nodes {o.nodes} needs --master-addr HOST: the machine that runs --node-rank 0 and the "
                        f"scheduler")
    if o.nodes > 1 and not o.dry and o.port is None:
        raise UserError(f"--nodes {o.nodes} needs --master-port P, the same on every machine")


def _address(host: str, port: int):
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"--master-addr {host}: cannot resolve it ({e})") from None
    return family, addr


def check_port(host: str, port: int | None) -> int:
    """The scheduler's address, tried before anything starts (a scheduler that cannot listen says so in its log
    only, while the workers wait for it); no port given: a free one. -> the port."""
    family, addr = _address(host, port or 0)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server: old TIME_WAIT sockets are no clash
            s.bind(addr)
            return s.getsockname()[1]
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another job's scheduler?); pick another --master-port "
                            f"or leave the flag out to use a free port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--master-addr {host} is not an address of this machine: run --node-rank 0 on "
                            f"{host}") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror})") from None


def msrun_command(o: Options, host: str, port: int, log_dir: str) -> list[str]:
    # msrun (with the scheduler on node 0 only, see _msrun.py) runs `python ARGS` for a task named python: the -m
    # form keeps the package's imports intact. No --join: the launcher, not msrun, watches the processes.
    return [sys.executable, "-m", "mindllm._msrun", f"--worker_num={o.total}", f"--local_worker_num={o.n}",
            f"--node_rank={o.node_rank}", f"--master_addr={host}", f"--master_port={port}", "--join=False",
            f"--log_dir={log_dir}", "python", "-m", "mindllm.train", *o.train_args]


def failure_report(log_dir: str, ranks, fallback: str | None = None) -> tuple[int, str]:
    """(exit status, message) for a failed job: a worker's `error:` line if one wrote it (exit 2), else the tail of
    the first log with a traceback (exit 1). ranks: this machine's (an int n: 0..n-1)."""
    ranks = range(ranks) if isinstance(ranks, int) else ranks
    logs = {k: os.path.join(log_dir, f"worker_{k}.log") for k in ranks}
    texts = {}
    for k, path in logs.items():
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts[k] = fh.read()
        except OSError:
            texts[k] = ""
    for k, text in texts.items():
        user = re.findall(r"^error: .*$", text, re.M)
        if user:
            return 2, f"{user[-1]} (worker {k}; log {logs[k]})"
    for k, text in texts.items():
        if "Traceback" in text or "Error" in text:
            lines = [line for line in text.rstrip().splitlines() if not _MS_LOG.match(line)]
            tail = "\n".join(lines[-TAIL_LINES:])
            return 1, f"worker {k} failed; the end of {logs[k]}:\n{tail}"
    return 1, fallback or f"the job failed before any worker reported why; see {log_dir}/scheduler.log and msrun.log"


def resume_hint(out_dir: str) -> str:
    """What resume=true would continue from: the `latest` pointer, read without touching the directory."""
    ckpt = runs.ckpt_dir(out_dir)
    try:
        with open(os.path.join(ckpt, "latest"), encoding="utf-8") as fh:
            name = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    return f"continue from {name} in {ckpt} with resume=true" if name else "no checkpoint was written"


class _Follow:
    """What a growing file gains: rank 0's log, echoed to our stdout; the scheduler's, watched."""

    def __init__(self, path):
        self.path, self.pos = path, 0

    def read(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read(1 << 20)
        except OSError:
            return ""
        self.pos += len(data)
        return data.decode("utf-8", errors="replace")

    def pump(self):
        text = self.read()
        if text:
            try:
                sys.stdout.write("".join(line for line in text.splitlines(keepends=True)
                                         if not _MS_LOG.match(line)))
                sys.stdout.flush()
            except BrokenPipeError:  # `... | head`: stop echoing, let the job finish
                self.path = os.devnull


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the launcher waits, as Ctrl-C's KeyboardInterrupt is."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """While the job runs, Ctrl-C, SIGTERM and SIGHUP interrupt the launcher's wait (which then stops the job)."""

    def handler(signum, frame):
        raise _Signalled(signum)

    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s, h in old.items():
        if h != signal.SIG_IGN:  # what nohup or a shell's `&` ignores stays ignored
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _become_subreaper() -> None:
    """Linux's 'child subreaper': the scheduler and workers outlive msrun (which starts each worker in a session of
    its own) and then become the launcher's children, so it learns how each one ended, and reaps it."""
    try:
        ok = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        raise UserError("python -m mindllm.launch needs Linux (prctl PR_SET_CHILD_SUBREAPER), to own the job's "
                        "processes; elsewhere run msrun yourself")


def _role(proc):
    """'scheduler', a worker's global rank, or None (not yet known: msrun's environment for it tells)."""
    try:
        env = proc.environ()
    except psutil.Error:  # ended, or not yet exec'd
        return None
    if env.get("MS_ROLE") == "MS_SCHED":
        return "scheduler"
    if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID", "").isdigit():
        return int(env["RANK_ID"])
    return None


class Job:
    """The processes msrun starts for this machine, adopted and watched: how each ended, and an end to all."""

    def __init__(self, log_dir: str, ranks, out_dir: str, where: str, scheduler: bool):
        self.log_dir, self.ranks, self.out_dir, self.where = log_dir, list(ranks), out_dir, where
        self.expect_scheduler = scheduler  # node 0 runs it
        self.msrun = self.msrun_log = None
        self.roles = {}  # pid -> 'scheduler', a worker's rank, or None (unknown yet)
        self.ended = {}  # pid -> exit code (negative: killed by that signal)
        self.port_taken = False
        self.sched_log = _Follow(os.path.join(log_dir, "scheduler.log"))
        self.since = None  # when the workers or the scheduler ended and the others did not (yet)

    def start(self, cmd, env, log_name: str):
        _become_subreaper()
        self.msrun_log = os.path.join(self.log_dir, log_name)
        with open(self.msrun_log, "w", encoding="utf-8") as out:
            # a session of its own: a terminal's Ctrl-C reaches the launcher only, which then stops the whole job
            self.msrun = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

    def poll(self) -> None:
        """Learn the job's processes (msrun's children; ours once msrun has exited) and reap those that ended."""
        self.msrun.poll()
        me = psutil.Process()
        try:
            kids = me.children() + (psutil.Process(self.msrun.pid).children() if self.msrun.returncode is None
                                    else [])
        except psutil.Error:  # msrun exited meanwhile: its children are ours at the next look
            kids = me.children()
        for p in kids:
            if p.pid != self.msrun.pid and self.roles.get(p.pid) is None and p.pid not in self.ended:
                role = _role(p)
                self.roles[p.pid] = None if role in self.roles.values() else role
        for pid in self.roles:
            if pid not in self.ended:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # still msrun's, or msrun reaped it
                    if not psutil.pid_exists(pid):  # gone: it ended as msrun's child (else the job waits forever)
                        self.ended[pid] = 0 if self.msrun.returncode in (None, 0) else self.msrun.returncode
                    continue
                if done:
                    self.ended[pid] = os.waitstatus_to_exitcode(status)
        if self.expect_scheduler:
            self.port_taken = self.port_taken or _PORT_TAKEN in self.sched_log.read()

    def verdict(self):
        """None while the job runs; else (exit status, error message or '')."""
        if self.msrun.returncode not in (None, 0):
            return 2, f"msrun failed (exit {self.msrun.returncode}); see {self.msrun_log}"
        failed = sorted((code >= 0, pid) for pid, code in self.ended.items() if code != 0)
        if failed:  # a worker killed by a signal is the cause; the others' errors follow from it
            return self.failure(failed[0][1])
        if self.port_taken:
            return self.failure(None)
        if self.msrun.returncode is None:  # still starting the processes
            return None
        if not self.roles:
            return 2, f"msrun started no process; see {self.msrun_log}"
        left = {self.roles[pid] for pid in self.roles if pid not in self.ended}
        if not left:
            return 0, ""
        workers_left = None in left or any(isinstance(r, int) for r in left)  # an unknown one may be either
        if workers_left and (not self.expect_scheduler or None in left or "scheduler" in left):
            return None
        # the workers ended and the scheduler did not, or the other way round: they should follow within seconds
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since <= END_GRACE:
            return None
        if workers_left:
            return 2, f"the scheduler ended but the workers did not within {END_GRACE} s; see {self.log_dir}"
        return 0, ""

    def failure(self, pid) -> tuple[int, str]:
        role, code = self.roles.get(pid), self.ended.get(pid)
        stopped = f"the launcher stopped the job; {resume_hint(self.out_dir)}"
        if role == "scheduler" or pid is None:
            return 2, self.scheduler_failure(stopped)
        what = f"rank {role}" if role is not None else f"a process of the job (pid {pid})"
        log = os.path.join(self.log_dir, f"worker_{role}.log") if role is not None else self.msrun_log
        if code < 0:
            return 2, f"{what} was killed by {signal.Signals(-code).name} (log {log}); {stopped}"
        return failure_report(self.log_dir, self.ranks, f"{what} exited with status {code} (log {log}); {stopped}")

    def scheduler_failure(self, stopped: str) -> str:
        if self.port_taken:
            return (f"the scheduler could not listen on {self.where} (port in use?): pick another --master-port or "
                    f"leave the flag out; {stopped}")
        try:
            with open(self.sched_log.path, encoding="utf-8", errors="replace") as fh:
                errors = re.findall(r"^\w*Error: (.+)$", fh.read(), re.M)
        except OSError:
            errors = []
        why = errors[-1][:300] if errors else "see its log"
        return f"the scheduler failed: {why} ({self.sched_log.path}); {stopped}"

    def stop(self) -> None:
        """End every process of the job: SIGTERM to each one's process group, SIGKILL to what is left after
        STOP_GRACE s; reap them all. Signals are held off meanwhile: a second Ctrl-C cannot cut this short."""
        if self.msrun is None:
            return
        old = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
        try:
            deadline, sent = time.monotonic() + STOP_GRACE, set()
            while True:
                self.poll()  # reaps what ended
                alive = [p for p in psutil.Process().children(recursive=True) if _running(p)]
                if not alive or time.monotonic() > deadline + STOP_GRACE:  # past SIGKILL: stuck in the kernel
                    break
                sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
                for p in alive:
                    _signal_group(p, sig, sent)
                time.sleep(0.1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.msrun.wait(timeout=STOP_GRACE)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def run(self, cmd, env, log_name: str, echo: bool) -> int:
        follow = _Follow(os.path.join(self.log_dir, f"worker_{self.ranks[0]}.log"))
        with _signals_raise():
            try:
                self.start(cmd, env, log_name)
                while (outcome := self.verdict()) is None:
                    time.sleep(POLL)
                    if echo:
                        follow.pump()
                    self.poll()
            except KeyboardInterrupt as e:
                signum = signal.Signals(getattr(e, "signum", signal.SIGINT))
                raise Interrupted(f"interrupted: {signum.name} stopped the job; logs in {self.log_dir}; "
                                  f"{resume_hint(self.out_dir)}", 128 + signum.value) from None
            finally:
                self.stop()
        if echo:
            follow.pump()
        status, message = outcome
        if message:
            print(f"error: {message}", file=sys.stderr)
        return status


def _running(p) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_group(p, sig, sent: set) -> None:
    """sig to p's process group, once (msrun and the scheduler share one, each worker has its own)."""
    try:
        group = os.getpgid(p.pid)
        if (group, sig) in sent:
            return
        sent.add((group, sig))
        if group == os.getpgrp():  # never ours
            p.send_signal(sig)
        else:
            os.killpg(group, sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # msrun calls `python`
    env.setdefault("GLOG_v", "3")  # MindSpore's C++ logging: errors only
    env["PYTHONUNBUFFERED"] = "1"  # rank 0's lines appear as they are printed, not at exit
    return env


def launch(o: Options, echo: bool = True) -> int:
    """Validate, run the job, return its exit status (raises UserError for a mistake, Interrupted for a signal)."""
    path, overrides = parse_train_args(list(o.train_args))
    cfg = load_config(path, overrides)
    parallel.validate(cfg, device.resolve_target(cfg.context.device_target), o.total)
    host = o.master_addr or "127.0.0.1"
    if o.node_rank == 0:  # this machine runs the scheduler
        port = check_port(host, o.port)
    else:
        port = o.port
        _address(host, port)
    log_dir = o.log_dir or os.path.join(cfg.out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    stale = [f"worker_{k}.log" for k in o.ranks] + (["scheduler.log"] if o.node_rank == 0 else [])
    for name in stale:  # a previous job's logs would be mistaken for this one's
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(log_dir, name))
    job = Job(log_dir, o.ranks, cfg.out_dir, f"{host}:{port}", scheduler=o.node_rank == 0)
    log_name = "msrun.log" if o.nodes == 1 else f"msrun_node{o.node_rank}.log"
    return job.run(msrun_command(o, host, port, log_dir), _env(), log_name, echo)


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
    o = parse_args(sys.argv[1:] if argv is None else argv)
    if o.dry:
        print(dry_run(o.total, o.train_args))
        return
    sys.exit(launch(o))


if __name__ == "__main__":
    main()
