import numpy as np
import pytest

from mindllm import device
from mindllm.backprop import (PARAMS, SigmoidNet, finite_difference_gradients, mindspore_gradients, sigmoid,
                              worked_example)


def test_worked_example_reproduces_mazurs_published_numbers():
    """Matt Mazur, "A Step by Step Backpropagation Example" (2015): every printed value to its 9 digits."""
    net, x, t, pub = worked_example()
    o = net.forward(x)
    np.testing.assert_allclose(net.cache["h"][0], pub["h"], atol=5e-10)
    np.testing.assert_allclose(o[0], pub["o"], atol=5e-9)
    assert net.loss(x, t) == pytest.approx(pub["E"], abs=5e-10)
    g = net.gradients(x, t)
    assert g["W2"][0, 0] == pytest.approx(pub["dE/dw5"], abs=5e-10)
    net.step(g, lr=0.5, frozen=("b1", "b2"))  # his update keeps the biases fixed
    np.testing.assert_allclose(net.W2, pub["W2+"], atol=5e-9)
    np.testing.assert_allclose(net.W1, pub["W1+"], atol=5e-9)


def test_worked_example_after_10000_steps():
    net, x, t, pub = worked_example()
    history = net.train(x, t, lr=0.5, steps=10000, frozen=("b1", "b2"))
    # his figure is the error measured at the start of the 10,000th iteration
    assert history[-2] == pytest.approx(pub["E after 10000 steps"], abs=5e-11)


@pytest.mark.parametrize("seed, shape, batch", [(0, (2, 2, 2), 1), (1, (3, 5, 2), 4), (2, (4, 3, 6), 7),
                                                (3, (1, 8, 1), 3)])
def test_hand_gradients_equal_finite_differences_and_mindspore_autograd(seed, shape, batch):
    device.setup(device.context_for("CPU"), seed)
    rng = np.random.default_rng(seed)
    net = SigmoidNet.random(*shape, seed=seed, scale=1.0)
    x = rng.normal(size=(batch, shape[0]))
    t = rng.uniform(size=(batch, shape[2]))
    hand = net.gradients(x, t)
    fd = finite_difference_gradients(net, x, t)
    auto = mindspore_gradients(net, x, t)
    for k in PARAMS:
        assert hand[k].shape == getattr(net, k).shape
        np.testing.assert_allclose(hand[k], fd[k], atol=1e-8, err_msg=f"{k} vs finite differences")
        np.testing.assert_allclose(hand[k], auto[k], atol=1e-12, err_msg=f"{k} vs MindSpore autograd")


def test_small_learning_rate_decreases_loss_monotonically():
    net = SigmoidNet.random(3, 4, 2, seed=5)
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(8, 3)), rng.uniform(size=(8, 2))
    history = net.train(x, t, lr=0.5, steps=300)
    assert all(b < a for a, b in zip(history, history[1:]))
    assert history[-1] < history[0] * 0.95


def test_sigmoid_is_the_logistic_function_not_the_seed_misprint():
    assert sigmoid(0.0) == 0.5 and sigmoid(np.log(3.0)) == pytest.approx(0.75)


def test_shapes_must_chain():
    with pytest.raises(ValueError, match="shapes do not chain"):
        SigmoidNet(np.zeros((2, 3)), np.zeros(2), np.zeros((3, 1)), np.zeros(1))
