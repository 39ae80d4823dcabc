"""Week 2 exercises: the pieces of a deep network's training, each against mindllm.mlp (notebook 02).

The references are the package's own: `init_std`, MindSpore autograd through `MLPClassifier` (`layer_grads`), the
optimizers `make_optimizer` builds (MindSpore's Adam), the `nn.Dropout` and `nn.LayerNorm` cells an
`MLPClassifier` is made of. Every check draws fresh random cases of several sizes from a seeded generator."""
from __future__ import annotations

import numpy as np

from ..mlp import INITS, MLPClassifier, init_std as reference_init_std, layer_grads, make_optimizer
from .core import Mismatch, exercise, expect_close


@exercise("week02.output_gradient",
          hint="softmax each row of the logits (subtract the row's max first), subtract the one-hot targets, "
               "divide by the batch size N: dE/dW = h^T (p - onehot(y)) / N")
def output_gradient(student) -> int:
    """dE/dW_out of the mean cross-entropy for a one-hidden-layer classifier, against MindSpore autograd."""
    rng = np.random.default_rng(21)
    cases = [(3, 4, 2, 1, "sigmoid", "xavier"), (64, 32, 10, 50, "sigmoid", "default"),
             (5, 8, 3, 7, "relu", "he"), (6, 16, 4, 9, "tanh", "large")]  # n_in, hidden, classes, batch, act, init
    acts = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
    for n_in, n_hidden, n_out, batch, act, init in cases:
        model = MLPClassifier(n_in, [n_hidden], n_out, activation=act, init=init, seed=int(rng.integers(1 << 30)))
        x = rng.normal(0, 1, (batch, n_in)).astype(np.float32)
        y = rng.integers(0, n_out, batch).astype(np.int32)
        (W1, b1), (W2, b2) = [(layer.weight.asnumpy().astype(np.float64), layer.bias.asnumpy().astype(np.float64))
                              for layer in model.layers]
        h = acts[act](x @ W1 + b1)
        logits = h @ W2 + b2
        want = layer_grads(model, x, y)[-1]
        expect_close(student(h, logits, y), want,
                     f"dE/dW_out (shape {want.shape}) for {batch} example(s), {n_out} classes, logits up to "
                     f"{np.abs(logits).max():.0f}", rtol=1e-3, atol=1e-5)
    return len(cases)


@exercise("week02.init_std",
          hint="default 1/sqrt(3 fan_in) (the std of uniform(+-1/sqrt(fan_in))), small 0.01, large 1.0, "
               "xavier sqrt(2/(fan_in+fan_out)), he sqrt(2/fan_in)")
def init_std(student) -> int:
    rng = np.random.default_rng(22)
    shapes = [(1, 1), (64, 64), (784, 10)] + [tuple(int(v) for v in rng.integers(1, 1000, 2)) for _ in range(3)]
    n = 0
    for init in INITS:
        for fan_in, fan_out in shapes:
            got = student(init, fan_in, fan_out)
            expect_close(got, reference_init_std(init, fan_in, fan_out),
                         f"std for init='{init}', fan_in={fan_in}, fan_out={fan_out}")
            n += 1
    return n


@exercise("week02.adam_step",
          hint="m = b1 m + (1-b1) g; s = b2 s + (1-b2) g^2; bias-correct both with 1 - b^t (t counts from 1); "
               "w = w - lr m_hat / (sqrt(s_hat) + eps); return (w, m, s) as new arrays")
def adam_step(student) -> int:
    """Several Adam steps on random weights and gradients, against MindSpore's nn.Adam (make_optimizer('adam'))."""
    import mindspore as ms
    from mindspore import Parameter, Tensor

    rng = np.random.default_rng(23)
    n = 0
    for shape, lr, steps in [((3,), 0.1, 1), ((4, 5), 1e-3, 5), ((2, 3), 0.01, 12), ((16,), 0.5, 3)]:
        w0 = rng.normal(0, 1, shape).astype(np.float32)
        grads = rng.normal(0, 1, (steps, *shape)).astype(np.float32) * rng.choice([0.01, 1, 100])
        grads[:, 0] = 0.0  # a weight that never gets a gradient must not move
        param = Parameter(Tensor(w0.copy()), name=f"w{n}")
        opt = make_optimizer("adam", [param], lr)
        w, m, s = w0.astype(np.float64), np.zeros(shape), np.zeros(shape)
        for t, g in enumerate(grads, 1):
            opt((Tensor(g, ms.float32),))
            got = student(w.copy(), g.astype(np.float64), m.copy(), s.copy(), t, lr)
            if not isinstance(got, tuple) or len(got) != 3:
                raise Mismatch(f"return the tuple (w, m, s), got {type(got).__name__}")
            w, m, s = (np.asarray(v, dtype=np.float64) for v in got)
            expect_close(w, param.asnumpy(), f"w after step {t} (lr {lr}, weights of shape {shape})",
                         rtol=1e-4, atol=1e-5 * max(lr, 1e-2))
        n += 1
    return n


@exercise("week02.dropout",
          hint="keep each entry with probability 1-p: mask = rng.random(h.shape) >= p, then h * mask / (1-p); "
               "draw the mask from the rng you are given")
def dropout(student) -> int:
    """Training-mode (inverted) dropout: every entry is 0 or h/(1-p), as MindSpore's nn.Dropout (the MLPClassifier's
    dropout) scales it; the share of zeros is p within sampling error; the mask comes from the given generator."""
    from mindspore import Tensor, nn

    rng = np.random.default_rng(24)
    cases = [(0.5, (200, 100)), (0.1, (50, 400)), (0.9, (300, 100)), (0.0, (7, 3)), (0.3, (1, 5))]
    for p, shape in cases:
        h = rng.normal(0, 1, shape)
        h[h == 0] = 1.0
        cell = nn.Dropout(p=p)
        cell.set_train(True)
        ref = cell(Tensor(h.astype(np.float32))).asnumpy()
        kept = ref != 0
        scale = float(np.median(ref[kept] / h[kept].astype(np.float32))) if kept.any() else 1.0 / (1 - p)
        got = np.asarray(student(h.copy(), p, np.random.default_rng(5)), dtype=np.float64)
        if got.shape != h.shape:
            raise Mismatch(f"p={p}: shape {got.shape}, expected {h.shape}")
        zero = got == 0
        wrong = ~zero & ~np.isclose(got, h * scale, rtol=1e-6)
        if wrong.any():
            i = tuple(int(k) for k in np.argwhere(wrong)[0])
            raise Mismatch(f"p={p}: entry {list(i)} is {got[i]:.6g}; a kept entry must be h/(1-p) = {h[i] * scale:.6g} "
                           f"(the scale MindSpore's nn.Dropout uses: {scale:.6g}), a dropped one 0")
        share, sd = zero.mean(), np.sqrt(p * (1 - p) / zero.size)
        if abs(share - p) > 5 * sd + 1e-12:
            raise Mismatch(f"p={p}: {share:.1%} of {zero.size} entries are zero, expected about {p:.0%} "
                           f"(±{5 * sd:.1%})")
        again = np.asarray(student(h.copy(), p, np.random.default_rng(5)), dtype=np.float64)
        if not np.array_equal(again, got):
            raise Mismatch(f"p={p}: two calls with the same generator seed gave different masks: draw the mask from "
                           f"the `rng` argument, not from np.random")
    return len(cases)


@exercise("week02.layer_norm",
          hint="over the LAST axis of each example: mu = mean, var = mean((h - mu)^2) (not the n-1 variance); "
               "(h - mu) / sqrt(var + eps) * gamma + beta")
def layer_norm(student) -> int:
    """Against the nn.LayerNorm cells of MLPClassifier(norm='layer'), with random gamma and beta."""
    from mindspore import Tensor

    rng = np.random.default_rng(25)
    cases = [(4, 8, 1.0), (1, 64, 1.0), (6, 3, 100.0), (5, 1, 1.0), (3, 10, 0.0)]  # batch, features, spread
    for batch, n, spread in cases:
        ln = MLPClassifier(2, [n], 2, norm="layer").norms[0]
        gamma, beta = rng.normal(1, 0.5, n).astype(np.float32), rng.normal(0, 0.5, n).astype(np.float32)
        ln.gamma.set_data(Tensor(gamma))
        ln.beta.set_data(Tensor(beta))
        offset = rng.normal(0, 3, (batch, 1))
        if spread == 0:
            offset = np.round(offset)  # a constant row whose mean float32 computes exactly
        h = (rng.normal(0, 1, (batch, n)) * spread + offset).astype(np.float32)
        ln.set_train(False)
        want = ln(Tensor(h)).asnumpy()
        what = f"layer norm of a ({batch}, {n}) batch" + (" whose rows are constant" if spread == 0 or n == 1 else "")
        expect_close(student(h.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), ln.epsilon),
                     want, what, rtol=1e-3, atol=1e-4)
    return len(cases)
