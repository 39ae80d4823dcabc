import os

os.environ.setdefault("GLOG_v", "3")

import pytest  # noqa: E402

from mindllm.config import load_config  # noqa: E402
from mindllm.data import load_corpus  # noqa: E402
from mindllm import device  # noqa: E402

# The device is chosen once, before any test runs a kernel (MindSpore refuses to switch afterwards).
device.setup(device.context_for("CPU"), seed=0)



def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per core, at most one per 4 GB of available memory (a notebook
    fine-tuning MiniLM peaks near 3 GB) and at most 4 (each MindSpore process runs threads on every core)."""
    import psutil  # a dependency of mindspore

    return max(1, min(os.cpu_count() or 1, int(psutil.virtual_memory().available / 4e9), 4))


TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=16", "train.batch_size=4",
        "train.eval_iters=2", "train.progress=false", "sample.max_new_tokens=0", "context.device_target=CPU"]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The first 300k characters of the real Shakespeare corpus, as a text file (fast to tokenize)."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_head.txt"
    path.write_text(load_corpus("shakespeare")[:300_000], encoding="utf-8")
    return str(path)


def train_tiny(corpus: str, out, *overrides) -> str:
    """Train a TINY GPT (plus `overrides`) on `corpus` into `out`, quietly; returns the run directory."""
    from mindllm.train import train

    train(load_config(None, TINY + [f"data.corpus={corpus}", f"out_dir={out}", *overrides]), log=lambda *a: None)
    return str(out)


@pytest.fixture
def tiny_cfg(tmp_path, small_corpus):
    """A tiny GPT config on the small corpus; pass extra key=value overrides."""

    def make(*overrides, out="run"):
        return load_config(None, TINY + [f"data.corpus={small_corpus}", f"out_dir={tmp_path / out}",
                                         *overrides])

    return make
