"""Faults lose nothing: a save killed at any moment leaves a loadable `latest`, a diverging run never names a
checkpoint it did not verify, a run directory has one writer, and a resume cannot silently train something else."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from conftest import TINY
from mindllm import checkpoint, errors
from mindllm.checkpoint import clean_partial_saves, latest_checkpoint, read_checkpoint, save_checkpoint
from mindllm.config import TrainConfig
from mindllm.errors import UserError
from mindllm.models.gpt import GPT, GPTConfig
from mindllm.optim import build_optimizer
from test_cli import assert_clean_error, call, run

CFG = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture
def model_opt():
    model = GPT(CFG)
    return model, build_optimizer(model, TrainConfig(max_iters=10))


class Crash(Exception):
    """Stands for the process dying at this point."""


def crash_at(monkeypatch, k):
    """Make the k-th file operation of a save (write, rename, removal, fsync) 'kill' the process."""
    count = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                raise Crash
            return fn(*args, **kwargs)
        return inner

    for name in ("save_file", "write_text_atomic", "fsync"):
        monkeypatch.setattr(checkpoint, name, wrap(getattr(checkpoint, name)))
    for name in ("replace", "makedirs"):
        monkeypatch.setattr(checkpoint.os, name, wrap(getattr(os, name)))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", wrap(checkpoint.shutil.rmtree))
    return count


@pytest.mark.parametrize("damage", [False, True])
def test_a_save_interrupted_at_every_point_keeps_a_loadable_latest(tmp_path, model_opt, monkeypatch, damage):
    """Re-saving step 2 over itself (the copy on disk complete, or damaged and replaced): a crash after any file
    operation of the save leaves `latest` naming a checkpoint that loads, of step 2 or the one before."""
    model, opt = model_opt
    k = 1
    while True:
        d = tmp_path / f"k{k}"
        save_checkpoint(str(d), 1, model, opt, {"data_rng": 1})
        save_checkpoint(str(d), 2, model, opt, {"data_rng": 2})
        if damage:  # a flipped byte: the re-save must replace this copy, never lose both
            f = d / "step_0000002" / "model.safetensors"
            data = bytearray(f.read_bytes())
            data[-3] ^= 0xFF
            f.write_bytes(bytes(data))
        with monkeypatch.context() as m:
            count = crash_at(m, k)
            try:
                save_checkpoint(str(d), 2, model, opt, {"data_rng": 2})
                finished = True
            except Crash:
                finished = False
        path = latest_checkpoint(str(d))
        try:
            assert read_checkpoint(path)[2]["step"] == 2, (k, path)
        except UserError:  # still the damaged copy (the crash came before its replacement): step 1 is intact
            assert damage and path.endswith("step_0000002") and not finished, k
            read_checkpoint(str(d / "step_0000001"))
        clean_partial_saves(str(d))
        assert not [x for x in os.listdir(d) if x.startswith(".")]
        if finished:
            break
        k += 1
    assert k == count[0] + 1 and k > (8 if damage else 2)  # every file operation of the save was a crash point


def test_latest_naming_a_missing_step_recovers_a_complete_temporary_copy(tmp_path, model_opt, capsys):
    model, opt = model_opt
    save_checkpoint(str(tmp_path), 59, model, opt, {})
    save_checkpoint(str(tmp_path), 60, model, opt, {})
    os.rename(tmp_path / "step_0000060", tmp_path / ".tmp_step_0000060")  # killed between rmtree and rename
    assert latest_checkpoint(str(tmp_path)).endswith("step_0000060")
    assert "recovered the newest complete checkpoint, step_0000060" in capsys.readouterr().err
    assert (tmp_path / "step_0000060").is_dir() and read_checkpoint(str(tmp_path / "step_0000060"))
    for pointer in ("", "step_9999999\n", "garbage\x00"):  # empty, missing, nonsense: the newest complete step
        (tmp_path / "latest").write_text(pointer)
        assert latest_checkpoint(str(tmp_path)).endswith("step_0000060")
        assert (tmp_path / "latest").read_text() == "step_0000060\n"


@pytest.mark.parametrize("files", [[], {}, {"model.safetensors": 3}])
def test_state_json_without_files_is_one_clear_error(tmp_path, model_opt, files):
    model, opt = model_opt
    path = save_checkpoint(str(tmp_path), 1, model, opt, {})
    state = json.load(open(os.path.join(path, "state.json")))
    json.dump(dict(state, files=files), open(os.path.join(path, "state.json"), "w"))
    with pytest.raises(UserError, match="corrupt or incomplete"):
        read_checkpoint(path)


def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_temporary_files(tmp_path, model_opt, monkeypatch):
    model, opt = model_opt
    save_checkpoint(str(tmp_path), 1, model, opt, {})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint(str(tmp_path), 2, model, opt, {})
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_0000001"]


def test_a_diverging_run_names_only_a_verified_checkpoint(tiny_cfg):
    """lr=1e4 with a checkpoint every step: the run stops at the first non-finite loss, and the checkpoint it names
    as the last good one holds finite weights that give a finite loss."""
    from mindllm.runs import load_trained
    from mindllm.train import train

    cfg = tiny_cfg("train.ckpt_interval=1", "train.lr=1e4", "train.min_lr=0", "train.warmup_iters=0",
                   "train.max_iters=300", "train.eval_interval=1000")
    with pytest.raises(UserError) as e:
        train(cfg, log=lambda *_: None)
    message = str(e.value)
    assert "lower train.lr" in message and "resume=true" in message, message
    named = message.split("the last good checkpoint is ")[1].split(" ")[0]
    assert os.path.basename(latest_checkpoint(os.path.join(cfg.out_dir, "ckpt"))) == named
    weights = load_file(os.path.join(cfg.out_dir, "ckpt", named, "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())
    task, _ = load_trained(cfg.out_dir)
    assert np.isfinite(float(task.loss_fn(*map(Tensor, task.eval_batches["val"][0])).asnumpy()))


def test_a_fresh_run_that_diverges_at_once_says_no_checkpoint_was_written(tiny_cfg):
    from mindllm.train import train

    cfg = tiny_cfg("train.lr=1e4", "train.min_lr=0", "train.warmup_iters=0", "train.max_iters=300",
                   "train.ckpt_interval=1000", "train.eval_interval=1000")
    with pytest.raises(UserError, match="no checkpoint was written"):
        train(cfg, log=lambda *_: None)
    assert not os.path.exists(os.path.join(cfg.out_dir, "ckpt", "latest"))


@pytest.mark.slow
def test_resume_refuses_settings_that_change_the_run(tiny_cfg):
    from mindllm.train import train

    train(tiny_cfg("train.max_iters=2"), log=lambda *_: None)
    for change, key in (("data.tokenizer=bpe", "data.tokenizer"), ("model.n_embd=64", "model.n_embd"),
                        ("seed=5", None)):
        cfg = tiny_cfg("train.max_iters=4", "resume=true", change)
        if key is None:  # not part of what the run is: a resume may change it
            continue
        with pytest.raises(UserError, match=f"resume=true: {key}="):
            train(cfg, log=lambda *_: None)
    train(tiny_cfg("train.max_iters=4", "resume=true", "train.lr=1e-4"), log=lambda *_: None)  # training knobs may


@pytest.mark.slow
def test_a_tampered_tokenizer_is_refused(tiny, tmp_path):
    p = run("mindllm.train", *tiny)
    assert p.returncode == 0, p.stderr[-2000:]
    tok = tmp_path / "run" / "tokenizer.json"
    data = json.loads(tok.read_text())
    tok.write_text(json.dumps(dict(data, chars=data["chars"][::-1])))
    assert_clean_error(run("mindllm.sample", "--ckpt", str(tmp_path / "run"), "--max-new-tokens", "3"),
                       "is not the tokenizer")
    tok.write_text(json.dumps({"type": "char"}))
    assert_clean_error(run("mindllm.sample", "--ckpt", str(tmp_path / "run")), "damaged")


@pytest.fixture
def tiny(tmp_path, small_corpus):
    return TINY + [f"data.corpus={small_corpus}", f"out_dir={tmp_path / 'run'}", "train.max_iters=2"]


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  lr: 0.1\ntrain:\n  lr: 0.2\n", "duplicate key 'train'"),
    ("model:\n  n_layer: 2\n  n_layer: 3\n", "duplicate key 'n_layer'"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, fragment):
    from mindllm.config import load_config

    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_config(str(f))


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=inf", "model.dropout=nan", "train.grad_clip=nan",
                                      "train.min_lr=-inf"])
def test_non_finite_numbers_are_refused(override):
    from mindllm.config import load_config

    with pytest.raises(UserError, match="finite number|must be"):
        load_config(None, [override])


@pytest.mark.slow
def test_a_second_training_into_the_same_run_is_refused_and_a_killed_ones_lock_is_taken_over(tiny):
    first = subprocess.Popen([sys.executable, "-m", "mindllm.train", *tiny[:-1], "train.max_iters=100000",
                              "train.ckpt_interval=5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=dict(os.environ, GLOG_v="3"))
    out_dir = [a for a in tiny if a.startswith("out_dir=")][0].split("=", 1)[1]
    deadline = time.time() + 180
    while not latest_checkpoint(os.path.join(out_dir, "ckpt")) and time.time() < deadline:  # training, saved once
        time.sleep(0.2)
    try:
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        second = run("mindllm.train", *tiny, "resume=true")
        assert_clean_error(second, "is in use by a training run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run's lock is released by the kernel: resuming it works
    again = run("mindllm.train", *tiny[:-1], "train.max_iters=6", "resume=true")
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_killing_a_saving_process_at_random_moments_never_loses_latest(tmp_path):
    """A process that saves checkpoints in a loop (new steps, the same step again, a damaged copy replaced) is
    SIGKILLed at 25 random moments; after each, `latest` loads and names a step it completed."""
    code = ("import sys, os, json\n"
            "from mindllm.checkpoint import save_checkpoint\n"
            "from mindllm.config import TrainConfig\nfrom mindllm.models.gpt import GPT, GPTConfig\n"
            "from mindllm.optim import build_optimizer\n"
            "m = GPT(GPTConfig(vocab_size=500, block_size=64, n_layer=2, n_head=2, n_embd=128))\n"
            "o = build_optimizer(m, TrainConfig(max_iters=10))\n"
            "d, start = sys.argv[1], int(sys.argv[2])\n"
            "print('ready', flush=True)\n"
            "for step in range(start, start + 10**6):\n"
            "    for s in (step, step, step - 1):\n"
            "        if s > 0: save_checkpoint(d, s, m, o, {'data_rng': s}, keep=3)\n"
            "    with open(os.path.join(d, 'done.tmp'), 'w') as fh: fh.write(str(step))\n"
            "    os.replace(os.path.join(d, 'done.tmp'), os.path.join(d, 'done'))\n")  # a kill never leaves it empty
    rng, d, start = random.Random(0), str(tmp_path / "ckpt"), 1
    for kill in range(25):
        proc = subprocess.Popen([sys.executable, "-c", code, d, str(start)], stdout=subprocess.PIPE,
                                env=dict(os.environ, GLOG_v="3"))
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        path = latest_checkpoint(d)
        if path is None:  # killed before its first save completed
            continue
        _, _, state = read_checkpoint(path)
        done = int(open(os.path.join(d, "done")).read()) if os.path.exists(os.path.join(d, "done")) else 0
        assert state["step"] >= done - 1, (kill, state["step"], done)
        clean_partial_saves(d)
        start = state["step"] + 1
    assert start > 10  # the loop got far enough to have killed many saves


def _anchor_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML whose value is 9**9 strings once expanded (a 'billion laughs')."""
    names = [chr(97 + i) for i in range(levels)]
    parts = ["&a [" + ", ".join(["lol"] * 9) + "]"]
    parts += [f"&{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return "train:\n  lr: [" + ", ".join(parts) + "]\n"


ANCHOR_BOMB = _anchor_bomb()


@pytest.mark.parametrize("name, content, fragment", [
    ("bomb.yaml", ANCHOR_BOMB, "train.lr must be a number"),
    ("big.yaml", "train:\n  lr: [" + "1, " * 3_000_000 + "1]\n", "a config is a few KB"),
    ("binary.yaml", bytes(range(256)) * 4, "not UTF-8 text"),
])
def test_hostile_config_files_are_one_short_line(tmp_path, name, content, fragment):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = call("mindllm.train", str(f))
    assert_clean_error(p, fragment)
    assert len(p.stderr) < 400, len(p.stderr)


def test_bad_out_dirs_and_seeds_are_one_line(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    base = [a for a in tiny if not a.startswith("out_dir=")]
    assert_clean_error(call("mindllm.train", *base, f"out_dir={tmp_path / 'afile' / 'run'}"), "afile")
    assert_clean_error(call("mindllm.train", *base, f"out_dir={tmp_path / 'afile'}"), "afile")
    (tmp_path / "long.yaml").write_text("out_dir: " + "x" * 900_000 + "\n")  # a 10 MB one: the file-size limit
    long_name = call("mindllm.train", *base, "out_dir=" + "x" * 100_000)
    for p in (long_name, call("mindllm.train", str(tmp_path / "long.yaml"))):
        assert_clean_error(p, "characters long")
        assert len(p.stderr) < 400
    assert_clean_error(call("mindllm.train", *base, f"out_dir={tmp_path / 'r'}", "seed=4294967296"), "seed must be <=")


def test_a_one_character_corpus_is_one_line(tiny, tmp_path):
    (tmp_path / "one.txt").write_text("a")
    args = [a for a in tiny if not a.startswith("data.corpus=")]
    assert_clean_error(call("mindllm.train", *args, f"data.corpus={tmp_path / 'one.txt'}"), "corpus is too small")


def test_a_full_disk_while_writing_the_token_cache(tiny_cfg, monkeypatch):
    from mindllm.train import train

    replace = os.replace

    def full(src, dst, *args, **kwargs):  # the token file was (partly) written, then the disk is full
        if str(dst).endswith(".bin"):
            raise OSError(28, "No space left on device", dst)
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    cfg = tiny_cfg("train.max_iters=1")
    with pytest.raises(UserError, match="No space left on device"):
        train(cfg, log=lambda *_: None)
    assert not [f for f in os.listdir(os.path.join(cfg.out_dir, "data")) if f.endswith(".tmp")]


def test_clean_checks_its_paths_before_cleaning(tmp_path):
    (tmp_path / "in.txt").write_text("one paragraph of text that is long enough\n\nanother one, also long enough")
    assert_clean_error(call("mindllm.data.clean", str(tmp_path)), "is a directory")
    assert_clean_error(call("mindllm.data.clean", str(tmp_path / "in.txt"), "--out", str(tmp_path / "no" / "x.txt")),
                       "does not exist or cannot be written")
    assert_clean_error(call("mindllm.data.clean", str(tmp_path / "in.txt"), "--out", str(tmp_path)), "is a directory")


def test_slides_out_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_clean_error(call("mindllm.slides", "notebooks/01_backprop_by_hand.ipynb", "--out",
                           str(tmp_path / "afile" / "decks")), "cannot be made a folder")


@pytest.mark.slow
def test_sampling_a_billion_tokens_is_refused(tiny):
    p = run("mindllm.train", *tiny)
    assert p.returncode == 0, p.stderr[-2000:]
    out_dir = [a for a in tiny if a.startswith("out_dir=")][0].split("=", 1)[1]
    assert_clean_error(run("mindllm.sample", "--ckpt", out_dir, "--max-new-tokens", "1000000000"), "100,000")
    assert_clean_error(run("mindllm.sample", "--ckpt", out_dir, "--max-new-tokens", "lots"), "invalid int value")


def _interrupt(cmd, wait_for, timeout=120, delay=0.0, cwd=None):
    """Start `cmd`, wait until its stdout or stderr shows `wait_for`, then `delay` s, send SIGINT; (returncode,
    stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, GLOG_v="3"),
                            cwd=cwd)
    os.set_blocking(proc.stdout.fileno(), False)
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.time() + timeout
    while wait_for.encode() not in seen and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        seen += (proc.stdout.read() or b"") + (proc.stderr.read() or b"")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    os.set_blocking(proc.stdout.fileno(), True)
    os.set_blocking(proc.stderr.fileno(), True)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, seen.decode(errors="replace") + out.decode(errors="replace"), err.decode()


@pytest.mark.slow
def test_ctrl_c_stops_training_and_sampling_with_one_line(tiny, tmp_path):
    """MindSpore answers SIGINT with its own handler (the process ended as 'Terminated', exit 143, nothing
    said): training names its last checkpoint, sampling keeps what it printed. Sampling is interrupted at a few
    moments of its compile and generation: one that lands inside MindSpore's compile used to print pages of
    analyze_fail.ir into the log and the working directory, or be swallowed (sampling went on)."""
    out_dir = [a for a in tiny if a.startswith("out_dir=")][0].split("=", 1)[1]
    code, _, err = _interrupt([sys.executable, "-m", "mindllm.train", *tiny[:-1], "train.max_iters=100000",
                               "train.ckpt_interval=20", "train.log_interval=20", "train.progress=true"],
                              "40/100000")
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    assert "the last good checkpoint is step_" in lines[0] and "resume=true" in lines[0]
    read_checkpoint(latest_checkpoint(os.path.join(out_dir, "ckpt")))
    for delay in (0.0, 0.4, 0.8, 1.6):
        code, out, err = _interrupt([sys.executable, "-m", "mindllm.sample", "--ckpt", out_dir, "--prompt", "ROMEO:",
                                     "--max-new-tokens", "90000"], "ROMEO:", timeout=60, delay=delay, cwd=tmp_path)
        assert code == 130 and "interrupted after" in err, (delay, code, err[-2000:])
        assert "Traceback" not in err and "analyze_fail" not in err, (delay, err[-2000:])
        assert out.startswith("ROMEO:")
    assert not (tmp_path / "rank_0").exists()  # no analyze_fail.ir left behind


def _mindspore_frame(body):
    """`body` run by a function whose code belongs to MindSpore's package, as a compile's callback does."""
    scope = {"body": body}
    exec(compile("def call():\n    return body()\n", errors._MINDSPORE + "fake_callback.py", "exec"), scope)
    return scope["call"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_mindspore_call_is_raised_after_it(sig):
    """Inside MindSpore's Python the signal is held (raising there goes through MindSpore's C++); it is raised
    in mindllm's code when sent again, or at the loop's next interruption point."""
    finished = []

    def long_call():
        os.kill(os.getpid(), sig)
        time.sleep(0.3)  # several resends land here, inside MindSpore, and are held too
        finished.append(True)

    with pytest.raises(errors.Interrupted, match="stopped at 1"):
        with errors.ctrl_c(lambda: f"stopped at {len(finished)}"):
            _mindspore_frame(long_call)()
            time.sleep(5)  # the resend arrives here
    assert finished
    with pytest.raises(errors.Interrupted):
        with errors.ctrl_c(lambda: "stopped", retry=60):  # no resend in time: the loop's check raises it
            _mindspore_frame(lambda: os.kill(os.getpid(), sig) or time.sleep(0.1))()
            errors.interruption_point()
    errors.interruption_point()  # nothing pending outside the block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
