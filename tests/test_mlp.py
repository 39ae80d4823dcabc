import numpy as np
import pytest
from mindspore import Tensor

from mindllm import device
from mindllm.errors import UserError
from mindllm.mlp import MLPClassifier, fit, layer_grad_norms, load_digits_split, majority_accuracy


@pytest.fixture(scope="module")
def data():
    device.setup(device.context_for("CPU"), seed=0)
    return load_digits_split()


def numpy_mlp(model, x, act):
    """The same forward pass in NumPy from the model's weights."""
    ws = [(layer.weight.asnumpy(), layer.bias.asnumpy()) for layer in model.layers]
    hs = [x]
    for w, b in ws[:-1]:
        hs.append(act(hs[-1] @ w + b))
    return hs, hs[-1] @ ws[-1][0] + ws[-1][1]


@pytest.mark.parametrize("activation, act", [("sigmoid", lambda z: 1 / (1 + np.exp(-z))), ("tanh", np.tanh),
                                             ("relu", lambda z: np.maximum(z, 0))])
def test_forward_equals_numpy(data, activation, act):
    model = MLPClassifier(64, [32, 16], 10, activation=activation, init="xavier", seed=1)
    model.set_train(False)
    x = data["val"][0][:20]
    _, expect = numpy_mlp(model, x, act)
    np.testing.assert_allclose(model(Tensor(x)).asnumpy(), expect, rtol=1e-4, atol=1e-5)


def test_layer_grad_norms_equal_numpy_backprop(data):
    """Softmax cross-entropy backprop written out in NumPy (week 1's chain rule, one layer deeper)."""
    model = MLPClassifier(64, [32, 16], 10, activation="tanh", init="xavier", seed=2)
    x, y = data["train"][0][:50], data["train"][1][:50]
    hs, logits = numpy_mlp(model, x, np.tanh)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = (p - np.eye(10)[y]) / len(y)  # d mean-CE / d logits
    norms = []
    for i in range(len(model.layers) - 1, -1, -1):
        norms.append(np.linalg.norm(hs[i].T @ delta))
        if i:
            delta = (delta @ model.layers[i].weight.asnumpy().T) * (1 - hs[i] ** 2)
    np.testing.assert_allclose(layer_grad_norms(model, x, y), norms[::-1], rtol=1e-4)


def test_deep_sigmoid_gradients_vanish_relu_he_do_not(data):
    x, y = data["train"]
    sig = layer_grad_norms(MLPClassifier(64, [64] * 10, 10, activation="sigmoid", init="default"), x, y)
    relu = layer_grad_norms(MLPClassifier(64, [64] * 10, 10, activation="relu", init="he"), x, y)
    assert sig[0] / sig[-1] < 1e-5  # measured 1.7e-8: each sigmoid layer multiplies by at most 1/4
    assert 0.1 < relu[0] / relu[-1] < 10  # measured 0.42


def test_training_beats_the_majority_baseline(data):
    majority = majority_accuracy(data["train"][1], data["val"][1])
    history = fit(MLPClassifier(64, [64], 10, activation="relu", init="he"), data, optimizer="adam", lr=1e-3, epochs=5)
    assert majority < 0.15 and history["val_acc"][0] < 0.3  # untrained ~ chance
    assert history["val_acc"][-1] > 0.85 and history["train_loss"][-1] < history["train_loss"][0] / 3


def test_digits_split_is_stratified_and_standardized(data):
    x, y = data["train"]
    assert x.shape == (1078, 64) and abs(x.mean()) < 1e-5
    assert len(data["val"][1]) + len(data["test"][1]) == 1797 - 1078
    assert np.bincount(y).min() >= 100  # every digit present in the train split


@pytest.mark.parametrize("kwargs, word", [({"activation": "gelu"}, "activation"), ({"init": "zeros"}, "init"),
                                          ({"norm": "group"}, "norm")])
def test_unknown_options_are_clear_errors(kwargs, word):
    with pytest.raises(UserError, match=f"unknown {word}"):
        MLPClassifier(4, [4], 2, **kwargs)


def test_unknown_optimizer(data):
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop'"):
        fit(MLPClassifier(64, [8], 10), data, optimizer="rmsprop", epochs=1)
