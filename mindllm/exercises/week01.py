"""Week 1 exercises: backpropagation by hand on the three-layer sigmoid network (notebook 01).
The reference is mindllm.backprop.SigmoidNet; every check draws fresh random networks of several sizes."""
from __future__ import annotations

import numpy as np

from ..backprop import SigmoidNet, sigmoid as reference_sigmoid
from .core import Mismatch, exercise, expect_close

SHAPES = [(2, 2, 2, 1), (3, 4, 2, 5), (5, 3, 1, 2), (4, 6, 3, 7)]  # n_in, n_hidden, n_out, batch


def _cases(seed: int):
    """(net, x, target) for each shape: a random network, inputs and targets in (0, 1)."""
    rng = np.random.default_rng(seed)
    for n_in, n_hidden, n_out, batch in SHAPES:
        net = SigmoidNet.random(n_in, n_hidden, n_out, seed=int(rng.integers(1 << 30)))
        yield net, rng.normal(0, 1, (batch, n_in)), rng.uniform(0.05, 0.95, (batch, n_out))


@exercise("week01.sigmoid", hint="f(x) = 1 / (1 + e^(-x)); np.exp works on whole arrays")
def sigmoid(student) -> int:
    rng = np.random.default_rng(11)
    cases = [np.array(0.0), np.array([-2.0, 0.0, 3.0]), rng.normal(0, 4, (3, 5)), np.array([-30.0, 30.0])]
    for x in cases:
        expect_close(student(x), reference_sigmoid(x), f"sigmoid of an array of shape {x.shape}")
    return len(cases)


@exercise("week01.forward", hint="z = x W1 + b1, h = f(z), net_o = h W2 + b2, o = f(net_o)")
def forward(student) -> int:
    n = 0
    for net, x, _ in _cases(12):
        expect_close(student(x, net.W1, net.b1, net.W2, net.b2), net.forward(x),
                     f"o for x of shape {x.shape} and W1 of shape {net.W1.shape}")
        n += 1
    return n


@exercise("week01.output_gradient",
          hint="dE/dW2 = h^T delta_o / n with delta_o = (o - target) * o * (1 - o): the slope of the OUTPUT sigmoid")
def output_gradient(student) -> int:
    n = 0
    for net, x, target in _cases(13):
        want = net.gradients(x, target)["W2"]
        c = net.cache
        expect_close(student(c["h"], c["o"], target), want, f"dE/dW2 (shape {want.shape}) for a batch of {len(x)}")
        n += 1
    return n


@exercise("week01.hidden_gradient",
          hint="the error reaches a hidden unit through every output weight it feeds: delta_h = (delta_o W2^T) * "
               "h * (1 - h), then dE/dW1 = x^T delta_h / n")
def hidden_gradient(student) -> int:
    n = 0
    for net, x, target in _cases(14):
        want = net.gradients(x, target)["W1"]
        c = net.cache
        expect_close(student(x, c["h"], c["o"], target, net.W2), want,
                     f"dE/dW1 (shape {want.shape}) for a batch of {len(x)}")
        n += 1
    return n


@exercise("week01.gradient_step", hint="w+ = w - lr * dE/dw for every parameter; return new arrays")
def gradient_step(student) -> int:
    n = 0
    for lr, (net, x, target) in zip((0.5, 0.1, 2.0, 0.01), _cases(15)):
        params, grads = {k: v.copy() for k, v in net.params().items()}, net.gradients(x, target)
        got = student({k: v.copy() for k, v in params.items()}, grads, lr)
        if not isinstance(got, dict) or set(got) != set(params):
            raise Mismatch(f"return a dict with the keys {sorted(params)}, got {type(got).__name__} "
                           f"{sorted(got) if isinstance(got, dict) else ''}")
        for k in params:
            expect_close(got[k], params[k] - lr * grads[k], f"{k} after one step with lr={lr}")
        n += 1
    return n
