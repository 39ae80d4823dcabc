"""Week 1: backpropagation (反向传播) by hand on a three-layer sigmoid network.

    x (n_in) --W1,b1--> z --sigmoid--> h (n_hidden) --W2,b2--> net_o --sigmoid--> o (n_out)
    E = 1/2 * sum_k (o_k - target_k)^2            (averaged over the examples of a batch)

The gradients are written out the way the lesson derives them with the chain rule, in NumPy float64, and
checked two independent ways: central finite differences, and MindSpore autograd on the same network.

    net = SigmoidNet(W1, b1, W2, b2)      # W1 (n_in, n_hidden), b1 (n_hidden,), W2 (n_hidden, n_out), b2 (n_out,)
    net.forward(x); net.gradients(x, target); net.step(grads, lr); net.train(x, target, lr, steps)
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

PARAMS = ("W1", "b1", "W2", "b2")


def sigmoid(x):
    """f(x) = 1 / (1 + e^{-x}). (Seed 001 prints 1/(1+x^{-1}), a misprint: the exponent belongs on e.)"""
    return 1.0 / (1.0 + np.exp(-x))


class SigmoidNet:
    def __init__(self, W1, b1, W2, b2):
        self.W1, self.b1, self.W2, self.b2 = (np.array(a, dtype=np.float64) for a in (W1, b1, W2, b2))
        n_in, n_hidden = self.W1.shape
        if self.b1.shape != (n_hidden,) or self.W2.shape[0] != n_hidden or self.b2.shape != (self.W2.shape[1],):
            raise ValueError(f"shapes do not chain: W1 {self.W1.shape}, b1 {self.b1.shape}, "
                             f"W2 {self.W2.shape}, b2 {self.b2.shape}")
        self.cache = {}

    @classmethod
    def random(cls, n_in, n_hidden, n_out, seed=0, scale=0.5):
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0, scale, (n_in, n_hidden)), rng.normal(0, scale, n_hidden),
                   rng.normal(0, scale, (n_hidden, n_out)), rng.normal(0, scale, n_out))

    def params(self) -> dict:
        return {k: getattr(self, k) for k in PARAMS}

    def forward(self, x):
        """Output o; every intermediate is kept in `self.cache` (x, z, h, net_o, o) for display."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        z = x @ self.W1 + self.b1  # hidden pre-activation, z_1 = x_1 w_1 + x_2 w_2 + b_1
        h = sigmoid(z)  # hidden output f(z)
        net_o = h @ self.W2 + self.b2  # output pre-activation (the seed's i_1)
        o = sigmoid(net_o)
        self.cache = dict(x=x, z=z, h=h, net_o=net_o, o=o)
        return o

    def loss(self, x, target) -> float:
        o = self.forward(x)
        t = np.atleast_2d(target)
        return float(0.5 * ((o - t) ** 2).sum(axis=1).mean())

    def gradients(self, x, target) -> dict:
        """dE/dparam by the chain rule, layer by layer from the output back."""
        o = self.forward(x)
        c, t = self.cache, np.atleast_2d(target)
        n = c["x"].shape[0]
        # dE/dnet_o = dE/do * do/dnet_o = (o - t) * o (1 - o); sigmoid' = f (1 - f) of the *output* unit
        delta_o = (o - t) * o * (1.0 - o)
        dW2 = c["h"].T @ delta_o / n  # dnet_o/dW2 = h: each output weight's input
        db2 = delta_o.mean(axis=0)
        # the error reaches each hidden unit through every output weight it feeds, then through its sigmoid
        delta_h = (delta_o @ self.W2.T) * c["h"] * (1.0 - c["h"])
        dW1 = c["x"].T @ delta_h / n
        db1 = delta_h.mean(axis=0)
        return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

    def step(self, grads: dict, lr: float, frozen=()) -> None:
        """Gradient descent: w+ = w - lr * dE/dw, for every parameter not in `frozen`."""
        for k in PARAMS:
            if k not in frozen:
                setattr(self, k, getattr(self, k) - lr * grads[k])

    def train(self, x, target, lr: float, steps: int, frozen=()) -> list[float]:
        """`steps` full-batch updates; returns the loss before each update and after the last."""
        history = []
        for _ in range(steps):
            history.append(self.loss(x, target))
            self.step(self.gradients(x, target), lr, frozen)
        history.append(self.loss(x, target))
        return history


def finite_difference_gradients(net: SigmoidNet, x, target, eps: float = 1e-6) -> dict:
    """Central differences (E(w + eps) - E(w - eps)) / 2 eps, one parameter entry at a time: slow, and
    independent of any derivation, which is the point."""
    grads = {}
    for k in PARAMS:
        p = getattr(net, k)
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = net.loss(x, target)
            p[i] = old - eps
            down = net.loss(x, target)
            p[i] = old
            g[i] = (up - down) / (2 * eps)
        grads[k] = g
    return grads


def mindspore_gradients(net: SigmoidNet, x, target) -> dict:
    """The same network as a MindSpore Cell in float64, differentiated by `mindspore.value_and_grad`."""
    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            for k in PARAMS:
                setattr(self, k, Parameter(Tensor(getattr(net, k).copy()), name=k))

        def construct(self, x, t):
            h = ops.sigmoid(ops.matmul(x, self.W1) + self.b1)
            o = ops.sigmoid(ops.matmul(h, self.W2) + self.b2)
            return 0.5 * ((o - t) ** 2).sum(axis=1).mean()

    cell = Net()
    params = [getattr(cell, k) for k in PARAMS]
    x = Tensor(np.atleast_2d(np.asarray(x, dtype=np.float64)))
    t = Tensor(np.atleast_2d(np.asarray(target, dtype=np.float64)))
    _, grads = ms.value_and_grad(cell, None, params)(x, t)
    return {k: g.asnumpy() for k, g in zip(PARAMS, grads)}


def worked_example():
    """Matt Mazur's "A Step by Step Backpropagation Example" (2015), the example most courses use:
    inputs (0.05, 0.10), targets (0.01, 0.99), weights 0.15..0.55, biases 0.35 and 0.60 shared within a layer.
    His w1, w2 feed hidden unit 1 from inputs 1 and 2, so W1 = [[w1, w3], [w2, w4]] in (n_in, n_hidden) layout.

    Returns (net, x, target, published) where `published` holds his printed numbers."""
    net = SigmoidNet(W1=[[0.15, 0.25], [0.20, 0.30]], b1=[0.35, 0.35],
                     W2=[[0.40, 0.50], [0.45, 0.55]], b2=[0.60, 0.60])
    published = {
        "h": [0.593269992, 0.596884378], "o": [0.75136507, 0.772928465], "E": 0.298371109,
        "dE/dw5": 0.082167041,
        # after one update with lr 0.5, biases not trained (his convention)
        "W2+": [[0.35891648, 0.511301270], [0.408666186, 0.561370121]],
        "W1+": [[0.149780716, 0.24975114], [0.19956143, 0.29950229]],
        "E after 10000 steps": 0.0000351085,
    }
    return net, np.array([0.05, 0.10]), np.array([0.01, 0.99]), published
