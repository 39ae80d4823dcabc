"""Week 7 exercises: the arithmetic of training at scale (notebook 07). The references are mindllm's own:
`memory.gpt_params`, `memory.estimate` (bytes per device under ZeRO), `memory.layer_activation_bytes`
(Korthikanti et al.), `parallel.rows` (a data-parallel rank's share) and the GPT's `MLP` cell (Megatron's split must
add up to it); every check draws fresh random shapes."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ..memory import Layout, estimate, gpt_params as reference_params, layer_activation_bytes
from ..models.layers import MLP
from ..parallel import Dist, rows
from .core import Mismatch, exercise, expect_close, expect_equal


def _shapes(seed: int, n: int = 5):
    """(n_layer, n_embd, n_head, vocab, block_size): GPT-2 small, then random models."""
    rng = np.random.default_rng(seed)
    yield 12, 768, 12, 50257, 1024
    for _ in range(n - 1):
        n_head = int(rng.choice([1, 2, 4, 8]))
        yield (int(rng.integers(1, 13)), n_head * int(rng.integers(2, 33)) * 2, n_head, int(rng.integers(10, 60000)),
               int(rng.choice([16, 64, 256, 1024])))


@exercise("week07.gpt_params",
          hint="one block: q, k, v and the output projection (4h² + 4h), the MLP (8h² + 5h), two LayerNorms (4h): "
               "12h² + 13h; then token and position embeddings (Vh + Th) and the final LayerNorm (2h); the LM head "
               "is tied to the token embedding")
def gpt_params(student) -> int:
    n = 0
    for L, h, _, V, T in _shapes(31):
        expect_equal(int(student(L, h, V, T)), reference_params(L, h, V, T),
                     f"parameters of a GPT with n_layer={L}, n_embd={h}, vocab={V}, block_size={T}")
        n += 1
    return n


@exercise("week07.training_bytes",
          hint="bytes per parameter: fp32 4 + 4 + 8, mixed 2 + 2 + 12 (weight, gradient, Adam state); ZeRO stage 1 "
               "divides the optimizer state by data_parallel, stage 2 also the gradients, stage 3 also the weights")
def training_bytes(student) -> int:
    rng = np.random.default_rng(32)
    n = 0
    for L, h, a, V, T in _shapes(32, 4):
        n_params = reference_params(L, h, V, T)
        for precision in ("fp32", "mixed"):
            dp = int(rng.choice([1, 2, 4, 8]))
            for zero in (0, 1, 2, 3):
                want = estimate(L, h, a, V, T, dp, Layout(data_parallel=dp, zero=zero), precision)
                got = student(n_params, precision, dp, zero)
                if not isinstance(got, (tuple, list)) or len(got) != 3:
                    raise Mismatch(f"return (weights, gradients, optimizer) in bytes, got {type(got).__name__} "
                                   f"{str(got)[:60]}")
                for part, value in zip(("params", "grads", "optimizer"), got):
                    what = "weights" if part == "params" else part
                    expect_close(value, want[part], f"{what} for {n_params:,} parameters, {precision}, "
                                                    f"data_parallel={dp}, ZeRO stage {zero}")
                n += 1
    return n


@exercise("week07.activation_bytes",
          hint="Korthikanti et al. at 16 bits with dropout: s·b·h·(10 + 24/t) + 5·a·s²·b/t bytes; the 10sbh "
               "(LayerNorm and dropout inputs) are not split by tensor parallelism, the rest is")
def activation_bytes(student) -> int:
    rng = np.random.default_rng(33)
    cases = [(1024, 8, 768, 12, 1), (1024, 8, 768, 12, 4), (2048, 1, 1600, 25, 5)]
    for _ in range(5):
        a = int(rng.choice([2, 4, 8, 16]))
        cases.append((int(rng.choice([64, 128, 512, 2048])), int(rng.integers(1, 17)), a * int(rng.integers(8, 129)),
                      a, int(rng.choice([t for t in (1, 2, 4, 8) if a % t == 0]))))
    for s, b, h, a, t in cases:
        expect_close(student(s, b, h, a, t), layer_activation_bytes(s, b, h, a, 4 * h, t=t, elem=2, dropout=True),
                     f"bytes of one layer for s={s}, b={b}, h={h}, a={a}, t={t}", rtol=1e-9)
    return len(cases)


@exercise("week07.shard_rows",
          hint="with B rows and N ranks, rank r takes rows r·B/N up to (r+1)·B/N (not included) of EVERY array")
def shard_rows(student) -> int:
    rng = np.random.default_rng(34)
    n = 0
    for B, world, width in [(8, 2, 16), (12, 3, 5), (6, 6, 4), (4, 1, 3), (32, 8, 7)]:
        x = rng.integers(0, 100, (B, width)).astype(np.int32)
        y = rng.normal(size=(B, width))
        for rank in range(world):
            got = student((x, y), rank, world)
            want = rows((x, y), Dist(rank, world, True))
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise Mismatch(f"return a tuple with one share per array (2 here), got {type(got).__name__}")
            for name, g, w in zip(("x", "y"), got, want):
                expect_equal(np.asarray(g), w, f"rank {rank} of {world}, its share of {name} ({B} rows)")
            n += 1
    return n


def _mlp(W1, b1, W2, b2):
    """The package's MLP (GELU, GPT-2's tanh form) holding these weights."""
    mlp = MLP(W1.shape[0], hidden=W1.shape[1])
    for p, value in ((mlp.c_fc.weight, W1), (mlp.c_fc.bias, b1), (mlp.c_proj.weight, W2), (mlp.c_proj.bias, b2)):
        p.set_data(Tensor(value.astype(np.float32)))
    mlp.set_train(False)
    return mlp


@exercise("week07.megatron_mlp",
          hint="device d takes the d-th block of W1's COLUMNS (and of b1) and the same block of W2's ROWS: "
               "partial_d = GELU(X W1[:, cols] + b1[cols]) W2[cols, :]; b2 is added once, after the sum")
def megatron_mlp(student) -> int:
    rng = np.random.default_rng(35)
    n = 0
    for rows_, h, devices in [(3, 8, 2), (5, 16, 4), (4, 12, 3), (2, 8, 1)]:
        f = 4 * h
        X = rng.normal(size=(rows_, h))
        W1, b1 = rng.normal(size=(h, f)) * 0.3, rng.normal(size=f) * 0.1
        W2, b2 = rng.normal(size=(f, h)) * 0.3, rng.normal(size=h) * 0.1
        got = student(X.copy(), W1.copy(), b1.copy(), W2.copy(), b2.copy(), devices)
        if not isinstance(got, (tuple, list)) or len(got) != devices:
            raise Mismatch(f"return a list of {devices} partial outputs (one per device), got "
                           f"{type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '?'}")
        cols = f // devices
        for d in range(devices):  # device d's part is the package's MLP on d's shard, without b2
            part = slice(d * cols, (d + 1) * cols)
            want = _mlp(W1[:, part], b1[part], W2[part], np.zeros(h))(Tensor(X.astype(np.float32))).asnumpy()
            expect_close(got[d], want, f"device {d} of {devices} (MLP {h} -> {f} -> {h}, {rows_} rows)",
                         rtol=1e-4, atol=1e-5)
        full = _mlp(W1, b1, W2, b2)(Tensor(X.astype(np.float32))).asnumpy()
        expect_close(np.sum([np.asarray(g, dtype=np.float64) for g in got], 0) + b2, full,
                     f"the sum of the {devices} partial outputs + b2 against the whole MLP", rtol=1e-4, atol=1e-5)
        n += 1
    return n
