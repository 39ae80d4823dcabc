"""Data parallelism on CPU (2 msrun workers == one process with the same global batch), the launcher's failures,
layout validation, Megatron shard strategies and recompute."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from conftest import TINY
from mindllm import parallel
from mindllm.config import load_config
from mindllm.errors import UserError
from test_cli import assert_clean_error, call, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DP2 = ["parallel.parallel_mode=data_parallel", "parallel_config.data_parallel=2"]
DP2_YAML = "configs/gpt_char_shakespeare_dp2.yaml"


def final_weights(out_dir):
    ckpt = os.path.join(out_dir, "ckpt", open(os.path.join(out_dir, "ckpt", "latest")).read().strip())
    return load_file(os.path.join(ckpt, "model.safetensors")), load_file(os.path.join(ckpt, "optimizer.safetensors"))


def launch(*args):
    return subprocess.run([sys.executable, "-m", "mindllm.launch", *args], capture_output=True, text=True,
                          env=dict(os.environ, GLOG_v="3"), timeout=600, cwd=ROOT)


def start_launch(out, *args, code=None):
    """A launcher running in the background; its stdout and stderr go to files next to out (no pipe to fill)."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mindllm.launch"]
    with open(f"{out}.stdout", "w") as o, open(f"{out}.stderr", "w") as e:
        return subprocess.Popen([*cmd, *args], stdout=o, stderr=e, env=dict(os.environ, GLOG_v="3"), cwd=ROOT)


def finish(proc, out, timeout=120):
    """Wait (bounded) for a background launcher; -> (exit status, stdout, stderr). A launcher still running at the
    timeout is stopped as a user would (SIGTERM), then killed."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode, open(f"{out}.stdout").read(), open(f"{out}.stderr").read()


def job_processes(marker):
    """Live processes whose command line holds marker (the test's own out_dir): msrun, scheduler, workers, tail."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(pid) != os.getpid():
            found.append(f"{pid} {cmd[:200]}")
    return found


def worker_pid(marker, rank):
    """The pid of the worker of that rank among the processes of a job (msrun's environment for it names it)."""
    for line in job_processes(marker):
        pid = line.split()[0]
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if b"MS_ROLE=MS_WORKER" in env and f"RANK_ID={rank}".encode() in env:
            return int(pid)
    return None


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)


def one_line(stderr, prefix):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def busy_port():
    """A port on 127.0.0.1 held by a socket (bound, as another program's would be): close it when done."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.slow
@pytest.mark.parametrize("accum, stop", [(1, None), (2, 2)])
def test_two_workers_end_equal_to_one_process(tmp_path, small_corpus, accum, stop):
    """Same seed, data and global batch (8 rows: 4 per worker): the 2-worker run's weights and Adam moments equal
    the one-process run's, and both ranks end bit-identical (same digest in their logs). With accumulation the
    2-worker run is also stopped after `stop` steps and resumed."""
    common = TINY + [f"data.corpus={small_corpus}", "train.batch_size=8", f"train.grad_accum={accum}",
                     "train.log_interval=2", "train.eval_interval=3", "train.lr=3e-3", "train.warmup_iters=0",
                     "train.lr_decay_iters=6", "train.ckpt_interval=2"]
    dp = [*common, *DP2, f"out_dir={tmp_path / 'dp'}"]
    if stop:
        first = launch("-n", "2", "--", *dp, f"train.max_iters={stop}")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    p = launch("-n", "2", "--", *dp, "train.max_iters=6", f"resume={'true' if stop else 'false'}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ("resumed from" in p.stdout) == bool(stop)
    assert "2 workers (data_parallel)" in p.stdout and "memory per device (estimate)" in p.stdout
    one = run("mindllm.train", *common, "train.max_iters=6", f"out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]

    (w2, o2), (w1, o1) = final_weights(tmp_path / "dp"), final_weights(tmp_path / "one")
    assert w2.keys() == w1.keys() and o2.keys() == o1.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=0, atol=1e-5, err_msg=k)
    for k in o1:
        np.testing.assert_allclose(o2[k], o1[k], rtol=1e-4, atol=1e-7, err_msg=k)
    logs = [open(tmp_path / "dp" / "logs" / f"worker_{r}.log", encoding="utf-8").read() for r in (0, 1)]
    digests = [re.findall(r"\[rank \d/2\] final weights sha256 (\w+)", text) for text in logs]
    assert len(digests[0]) == 1 and digests[0] == digests[1]
    # each rank reports its own rows' loss and the same global loss; the global one is what metrics.jsonl holds
    per_rank = [dict((int(s), (float(a), float(g))) for s, a, g in re.findall(
        r"step (\d+): loss ([\d.]+) on its 4 rows, ([\d.]+) on the global batch", text)) for text in logs]
    assert per_rank[0].keys() == per_rank[1].keys() == ({4, 6} if stop else {2, 4, 6})
    for s in per_rank[0]:
        (a0, g0), (a1, g1) = per_rank[0][s], per_rank[1][s]
        assert g0 == g1 and a0 != a1 and abs((a0 + a1) / 2 - g0) < 1e-4
    assert not os.path.exists(tmp_path / "dp" / "rank_1")  # only rank 0 writes


@pytest.mark.slow
def test_a_failing_worker_fails_the_launch_with_its_error(tmp_path):
    p = launch("-n", "2", "--", *TINY, *DP2, "data.corpus=/no/such/corpus.txt", f"out_dir={tmp_path / 'r'}")
    assert p.returncode == 2, p.stderr
    assert "error: unknown corpus '/no/such/corpus.txt'" in p.stderr and "worker_" in p.stderr


def test_master_port_in_use_is_one_line_at_once(tmp_path):
    """A --master-port another program holds is refused before anything starts (it was a silent hang > 390 s)."""
    held = busy_port()
    port = held.getsockname()[1]
    try:
        t0 = time.monotonic()
        p = launch("-n", "2", "--master-port", str(port), "--", *TINY, *DP2, f"out_dir={tmp_path / 'r'}")
        took = time.monotonic() - t0
    finally:
        held.close()
    assert_clean_error(p, f"port {port} on 127.0.0.1 is in use", "--master-port")
    assert took < 60, took
    assert not os.path.exists(tmp_path / "r" / "logs") and not job_processes(str(tmp_path))


SKIP_PORT_CHECK = ("import sys, mindllm.launch as L\n"
                   "L.check_port = lambda host, port: port  # as if another program took the port after the check\n"
                   "L.main(sys.argv[1:])")


@pytest.mark.slow
def test_a_scheduler_that_cannot_listen_ends_the_launch(tmp_path, small_corpus):
    """The port taken after the launcher's check: the scheduler fails at once, and the launcher, watching it, ends
    the job within seconds (msrun alone left the workers waiting for it)."""
    held, out = busy_port(), str(tmp_path / "r")
    port = held.getsockname()[1]
    try:
        t0 = time.monotonic()
        proc = start_launch(out, "-n", "2", "--master-port", str(port), "--", *TINY, *DP2,
                            f"data.corpus={small_corpus}", "train.max_iters=4", f"out_dir={out}", code=SKIP_PORT_CHECK)
        code, _, err = finish(proc, out, timeout=120)
        took = time.monotonic() - t0
    finally:
        held.close()
    assert code == 2 and f"could not listen on 127.0.0.1:{port}" in one_line(err, "error: "), err
    assert took < 60, took
    assert not job_processes(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_whole_job(tmp_path, small_corpus, sig, status):
    """Ctrl-C or SIGTERM to the launcher mid-run: one `interrupted:` line naming the logs, exit 128 + the signal,
    and no process of the job left (SIGTERM used to leave msrun, both workers and two `tail -f` under PID 1; SIGINT
    gave a traceback)."""
    out = str(tmp_path / "r")
    proc = start_launch(out, "-n", "2", "--", *TINY, *DP2, f"data.corpus={small_corpus}", "train.max_iters=100000",
                        "train.log_interval=5", f"out_dir={out}")
    try:
        wait_for(lambda: "step 10:" in read(f"{out}/logs/worker_0.log"), 180, "training")
        proc.send_signal(sig)
    finally:
        code, _, err = finish(proc, out, timeout=60)
    line = one_line(err, f"interrupted: {sig.name} stopped the job; logs in {out}/logs")
    assert code == status, (code, line)
    assert not job_processes(out)


@pytest.mark.slow
def test_a_killed_worker_stops_the_job_and_resume_finishes(tmp_path, small_corpus):
    """SIGKILL to rank 1 of a running job: the launcher stops the job within seconds with one line naming the
    rank, nothing is left behind, and resume=true continues from the last checkpoint on both ranks."""
    out, pids = str(tmp_path / "r"), {}
    args = [*TINY, *DP2, f"data.corpus={small_corpus}", "train.log_interval=5", "train.ckpt_interval=10",
            f"out_dir={out}"]
    proc = start_launch(out, "-n", "2", "--", *args, "train.max_iters=100000")

    def ready():
        pids[1] = worker_pid(out, 1)
        return pids[1] and os.path.exists(f"{out}/ckpt/latest")

    try:
        wait_for(ready, 180, "checkpoint")
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
    finally:
        code, _, err = finish(proc, out, timeout=60)
    took = time.monotonic() - t0
    line = one_line(err, "error: rank 1 was killed by SIGKILL")
    assert code == 2 and "continue from step_" in line and took < 60, (code, took, line)
    assert not job_processes(out)

    step = int(read(f"{out}/ckpt/latest").strip().split("_")[1])
    p = launch("-n", "2", "--", *args, f"train.max_iters={step + 10}", "resume=true")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {out}/ckpt/step_{step:07d} at step {step}" in p.stdout, p.stdout[-3000:]
    digests = [re.findall(r"final weights sha256 (\w+)", read(f"{out}/logs/worker_{r}.log")) for r in (0, 1)]
    assert len(digests[0]) == 1 and digests[0] == digests[1]
    assert not job_processes(out)


@pytest.mark.slow
def test_two_nodes_on_one_machine_equal_one_process(tmp_path, small_corpus):
    """--nodes 2: two launchers (node ranks 0 and 1, one worker each) meeting on loopback end with the weights of one
    process with the same global batch; only rank 0 writes."""
    common = TINY + [f"data.corpus={small_corpus}", "train.batch_size=8", "train.log_interval=2", "train.lr=3e-3",
                     "train.warmup_iters=0", "train.lr_decay_iters=6", "train.max_iters=6"]
    held = busy_port()
    port = held.getsockname()[1]
    held.close()  # a free port, named on both nodes
    out = str(tmp_path / "dp")
    nodes = [start_launch(f"{out}_node{r}", "-n", "1", "--nodes", "2", "--node-rank", str(r), "--master-addr",
                          "127.0.0.1", "--master-port", str(port), "--", *common, *DP2, f"out_dir={out}")
             for r in (0, 1)]
    results = [finish(p, f"{out}_node{r}", timeout=300) for r, p in enumerate(nodes)]
    for code, stdout, err in results:
        assert code == 0, stdout[-3000:] + err[-3000:]
    assert "[rank 0/2] final weights" in results[0][1] and "[rank 1/2] final weights" in results[1][1]
    assert os.path.exists(f"{out}/logs/msrun_node0.log") and os.path.exists(f"{out}/logs/msrun_node1.log")
    assert not job_processes(out)
    one = run("mindllm.train", *common, f"out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    (w2, o2), (w1, o1) = final_weights(out), final_weights(tmp_path / "one")
    assert w2.keys() == w1.keys() and o2.keys() == o1.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=0, atol=1e-5, err_msg=k)
    for k in o1:
        np.testing.assert_allclose(o2[k], o1[k], rtol=1e-4, atol=1e-7, err_msg=k)
    assert not os.path.exists(f"{out}/rank_1")  # only rank 0 writes


def test_failure_report_shows_the_crashed_workers_log_tail(tmp_path):
    from mindllm.launch import failure_report

    (tmp_path / "worker_0.log").write_text("[rank 0/2] step 2: loss 4.1\n")
    (tmp_path / "worker_1.log").write_text(
        "step 1\nTraceback (most recent call last):\n  File \"x.py\"\n[INFO] DISTRIBUTED(1) noise\n"
        "RuntimeError: the device fell over\n")
    status, message = failure_report(str(tmp_path), 2)
    assert status == 1 and "worker 1 failed" in message and message.endswith("RuntimeError: the device fell over")
    assert "[INFO]" not in message


def test_semi_auto_parallel_on_cpu_is_one_clear_line(tmp_path):
    bad = ["parallel.parallel_mode=semi_auto_parallel", "parallel.full_batch=true", f"out_dir={tmp_path / 'r'}"]
    assert_clean_error(call("mindllm.train", *TINY, *bad), "only on GPU/Ascend")
    assert_clean_error(launch("-n", "2", "--", *TINY, *bad), "only on GPU/Ascend")
    assert not os.path.exists(tmp_path / "r" / "logs")  # refused before any worker started


def test_cluster_config_is_checked_on_a_laptop():
    """The 8-card Ascend YAML: its TP x DP layout validates for 8 devices and is refused for 4; its pipeline variant
    (the notebook's estimate example) validates too."""
    ok = launch("-n", "8", "--dry-run", "--", "configs/gpt2_ascend_8p.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "data_parallel 4 x model_parallel 2 x pipeline_stage 1 - layout valid" in ok.stdout
    assert "memory per device (estimate)" in ok.stdout
    pipe = launch("-n", "8", "--dry-run", "--", "configs/gpt2_ascend_8p.yaml", "parallel_config.data_parallel=2",
                  "parallel_config.pipeline_stage=2", "parallel_config.micro_batch_num=4")
    assert "data_parallel 2 x model_parallel 2 x pipeline_stage 2 - layout valid" in pipe.stdout, pipe.stderr
    assert_clean_error(launch("-n", "4", "--dry-run", "--", "configs/gpt2_ascend_8p.yaml"), "= 8, but 4 devices")
    two = launch("-n", "4", "--nodes", "2", "--dry-run", "--", "configs/gpt2_ascend_8p.yaml")  # 4 per machine
    assert two.returncode == 0 and "layout valid" in two.stdout, two.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--", "configs/gpt_char_shakespeare.yaml"], "give the number of workers"),
    (["-n", "2", "configs/gpt_char_shakespeare.yaml"], "after '--'"),
    (["-n", "two", "--", "configs/gpt_char_shakespeare.yaml"], "whole numbers"),
    (["-n", "2", "--", "configs/gpt_char_shakespeare.yaml"], "stand_alone would train 2 independent copies"),
    (["-n", "1", "--nodes", "0", "--", DP2_YAML], "at least 1 machine"),
    (["-n", "1", "--nodes", "2", "--node-rank", "2", "--", DP2_YAML], "--node-rank 2 is outside 0..1"),
    (["-n", "1", "--nodes", "2", "--master-port", "29500", "--", DP2_YAML], "needs --master-addr"),
    (["-n", "1", "--nodes", "2", "--master-addr", "127.0.0.1", "--", DP2_YAML], "needs --master-port"),
    (["-n", "1", "--nodes", "2", "--master-addr", "192.0.2.1", "--master-port", "29500", "--", DP2_YAML],
     "not an address of this machine: run --node-rank 0 on 192.0.2.1"),
    (["-n", "1", "--nodes", "2", "--node-rank", "1", "--master-addr", "no-such-host.invalid", "--master-port",
      "29500", "--", DP2_YAML], "cannot resolve"),
    (["-n", "1", "--nodes", "x", "--", DP2_YAML], "whole numbers"),
])
def test_launcher_mistakes(args, fragment):
    assert_clean_error(call("mindllm.launch", *args), fragment)


def test_data_parallel_without_the_launcher():
    assert_clean_error(call("mindllm.train", "configs/gpt_char_shakespeare_dp2.yaml"), "python -m mindllm.launch")


@pytest.mark.parametrize("overrides, world, fragment", [
    (["parallel.parallel_mode=data_parallel", "train.batch_size=5"], 2, "must divide evenly among the 2"),
    (["parallel.parallel_mode=data_parallel", "parallel_config.model_parallel=2"], 2, "semi_auto_parallel"),
    (["parallel.parallel_mode=data_parallel", "parallel_config.data_parallel=4"], 2, "4 but 2 workers"),
    (["parallel.parallel_mode=semi_auto_parallel"], 2, "full_batch=true"),
    (["parallel.parallel_mode=semi_auto_parallel", "parallel.full_batch=true", "parallel_config.model_parallel=3",
      "parallel_config.data_parallel=2", "model.n_head=4"], 6, "n_head=4 must be divisible"),
    (["parallel.parallel_mode=semi_auto_parallel", "parallel.full_batch=true", "parallel_config.pipeline_stage=2",
      "model.n_layer=3"], 2, "n_layer=3 must be divisible"),
    (["parallel.parallel_mode=semi_auto_parallel", "parallel.full_batch=true", "parallel_config.pipeline_stage=2",
      "model.n_layer=4"], 2, "micro_batch_num=1 < pipeline_stage=2"),
])
def test_layout_validation(overrides, world, fragment):
    cfg = load_config(None, overrides)
    with pytest.raises(UserError, match=re.escape(fragment)):
        parallel.validate(cfg, "GPU", world)


def test_valid_layouts_pass():
    cfg = load_config("configs/gpt2_ascend_8p.yaml", [])
    parallel.validate(cfg, "Ascend", 8)
    parallel.validate(load_config("configs/gpt_char_shakespeare_dp2.yaml", []), "CPU", 2)


def test_megatron_shard_strategies():
    from mindllm.memory import Layout
    from mindllm.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=50, n_layer=4, n_head=4, n_embd=32))
    parallel.shard_gpt(model, Layout(data_parallel=2, model_parallel=2, pipeline_stage=2))
    b = model.transformer.h[0]
    assert b.attn.c_attn.matmul.in_strategy == ((2, 1), (1, 2))  # column parallel: output features split
    assert b.mlp.c_fc.matmul.in_strategy == ((2, 1), (1, 2))
    assert b.attn.c_proj.matmul.in_strategy == ((2, 2), (2, 1))  # row parallel: input features split
    assert b.mlp.c_proj.matmul.in_strategy == ((2, 2), (2, 1))
    assert b.attn.attention.qk.in_strategy == ((4, 1, 1), (4, 1, 1))
    assert [blk.pipeline_stage for blk in model.transformer.h] == [0, 0, 1, 1]


def test_megatron_split_is_the_same_mlp():
    """What the strategies mean, in numpy: column-split W1, row-split W2, summed partial outputs (the AllReduce)
    = the unsplit MLP."""
    from mindllm.models.layers import gelu

    rng = np.random.default_rng(0)
    x, w1, w2 = rng.normal(size=(6, 8)), rng.normal(size=(8, 32)), rng.normal(size=(32, 8))

    def g(a):
        return gelu(Tensor(a.astype(np.float32))).asnumpy().astype(np.float64)

    full = g(x @ w1) @ w2
    parts = sum(g(x @ w1[:, i * 16:(i + 1) * 16]) @ w2[i * 16:(i + 1) * 16] for i in range(2))
    np.testing.assert_allclose(parts, full, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_recompute_changes_memory_not_results(tiny_cfg):
    from mindllm.train import train

    out, lines = {}, []
    for flag in ("false", "true"):
        cfg = tiny_cfg("train.max_iters=4", "train.log_interval=1", f"parallel_config.recompute={flag}",
                       out=f"r_{flag}")
        train(cfg, log=lines.append)
        out[flag] = final_weights(cfg.out_dir)[0]
    assert any(line.startswith("recompute: 2 blocks") for line in lines)
    for k in out["false"]:
        np.testing.assert_allclose(out["true"][k], out["false"][k], rtol=0, atol=1e-6, err_msg=k)
