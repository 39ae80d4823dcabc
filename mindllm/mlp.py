"""Week 2: the week-1 network grown deep — an MLP with a choice of activation, initialization, dropout and
normalization, and the measurements the lesson makes with it (per-layer gradient norms, training curves).

    data = load_digits_split()
    model = MLPClassifier(64, [128, 128], 10, activation="relu", init="he")
    history = fit(model, data, optimizer="adam", lr=1e-3, epochs=20)
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .errors import UserError
from .models.layers import Linear

ACTIVATIONS = {"sigmoid": ops.sigmoid, "tanh": ops.tanh, "relu": ops.relu}
INITS = ("default", "small", "xavier", "he", "large")
NORMS = (None, "layer", "batch")
OPTIMIZERS = ("sgd", "momentum", "adam")


def _choice(name, value, choices):
    if value not in choices:
        raise UserError(f"unknown {name} '{value}': use one of {', '.join(map(str, choices))}")


def init_std(init: str, fan_in: int, fan_out: int) -> float:
    """Standard deviation of the normal initialization (参数初始化) of a fan_in -> fan_out weight matrix."""
    return {"default": 1.0 / np.sqrt(3 * fan_in),  # uniform(+-1/sqrt(fan_in)) has this std (PyTorch's default)
            "small": 0.01, "large": 1.0,
            "xavier": np.sqrt(2.0 / (fan_in + fan_out)),  # keeps the variance of tanh/sigmoid layers
            "he": np.sqrt(2.0 / fan_in)}[init]  # keeps it for ReLU, which zeroes half the inputs


class MLPClassifier(nn.Cell):
    """Linear -> [norm] -> activation -> [dropout], per hidden layer, then a linear output layer (logits)."""

    def __init__(self, n_in, hidden, n_out, activation="relu", init="default", dropout=0.0, norm=None, seed=0):
        super().__init__()
        _choice("activation", activation, tuple(ACTIVATIONS))
        _choice("init", init, INITS)
        _choice("norm", norm, NORMS)
        rng = np.random.default_rng(seed)
        sizes = [n_in, *hidden, n_out]
        self.layers = nn.CellList([Linear(a, b, std=init_std(init, a, b), rng=rng) for a, b in zip(sizes, sizes[1:])])
        norm_cls = {"layer": lambda n: nn.LayerNorm((n,)), "batch": lambda n: nn.BatchNorm1d(n)}.get(norm)
        self.norms = nn.CellList([norm_cls(n) for n in hidden]) if norm_cls else None
        self.act = ACTIVATIONS[activation]
        self.drop = nn.Dropout(p=dropout)

    def construct(self, x):
        for i in range(len(self.layers) - 1):
            x = self.layers[i](x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.drop(self.act(x))
        return self.layers[-1](x)


def layer_grads(model: MLPClassifier, x, y) -> list[np.ndarray]:
    """dLoss/dW (mean cross-entropy over the batch) for each layer's weight matrix, input layer first, by MindSpore
    autograd in evaluation mode (no dropout)."""
    weights = [layer.weight for layer in model.layers]

    def loss_fn(x, y):
        return ops.cross_entropy(model(x), y)

    model.set_train(False)
    _, grads = ms.value_and_grad(loss_fn, None, weights)(Tensor(x, ms.float32), Tensor(y, ms.int32))
    return [g.asnumpy() for g in grads]


def layer_grad_norms(model: MLPClassifier, x, y) -> list[float]:
    """||dLoss/dW|| for each layer's weight matrix, input layer first: where gradients vanish or explode."""
    return [float(np.linalg.norm(g)) for g in layer_grads(model, x, y)]


def load_digits_split(seed: int = 0, train_size: float = 0.6):
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; offline): stratified
    train/val/test = 60/20/20, standardized with the train split's statistics."""
    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int32)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, train_size=train_size, stratify=y, random_state=seed)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    return {"train": ((x_tr - mean) / std, y_tr), "val": ((x_va - mean) / std, y_va),
            "test": ((x_te - mean) / std, y_te)}


def majority_accuracy(y_train, y_eval) -> float:
    """Accuracy of always predicting the most common training label: the floor every model must beat."""
    return float((y_eval == np.bincount(y_train).argmax()).mean())


def make_optimizer(name: str, params, lr: float):
    _choice("optimizer", name, OPTIMIZERS)
    if name == "sgd":
        return nn.SGD(params, learning_rate=lr)
    if name == "momentum":
        return nn.Momentum(params, learning_rate=lr, momentum=0.9)
    return nn.Adam(params, learning_rate=lr)


def evaluate(model: MLPClassifier, x, y) -> tuple[float, float]:
    model.set_train(False)
    logits = model(Tensor(x, ms.float32))
    loss = float(ops.cross_entropy(logits, Tensor(y, ms.int32)).asnumpy())
    return loss, float((logits.asnumpy().argmax(-1) == y).mean())


def fit(model: MLPClassifier, data: dict, optimizer: str = "adam", lr: float = 1e-3, epochs: int = 20,
        batch_size: int = 64, seed: int = 0, n_train: int | None = None) -> dict:
    """Mini-batch training; returns per-epoch lists train_loss, val_loss, train_acc, val_acc (epoch 0 is the
    untrained model). `n_train` keeps only the first n training examples (to provoke overfitting)."""
    x_tr, y_tr = data["train"]
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    opt = make_optimizer(optimizer, model.trainable_params(), lr)

    def loss_fn(x, y):
        return ops.cross_entropy(model(x), y)

    grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        opt(grads)
        return loss

    rng = np.random.default_rng(seed)
    history = {k: [] for k in ("train_loss", "val_loss", "train_acc", "val_acc")}

    def record():
        for split, (x, y) in (("train", (x_tr, y_tr)), ("val", data["val"])):
            loss, acc = evaluate(model, x, y)
            history[f"{split}_loss"].append(loss)
            history[f"{split}_acc"].append(acc)

    record()
    for _ in range(epochs):
        model.set_train(True)
        order = rng.permutation(len(x_tr))
        for i in range(0, len(order) - batch_size + 1, batch_size):  # equal batches: one compiled shape
            idx = order[i:i + batch_size]
            step(Tensor(x_tr[idx]), Tensor(y_tr[idx]))
        record()
    return history
