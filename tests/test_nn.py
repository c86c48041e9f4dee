"""Tests of refquant.training.nn: every backward pass against central finite differences in float64
(relative error < 1e-5), the optimizers against hand-written update formulas, and bad input.

Oracles: the finite differences and the scalar update loops below are computed in this file,
independently of the code under test (only its forward passes are called).
"""

import math

import numpy as np
import pytest

from refquant.training import nn

H = 1e-6          # central-difference step (float64)
RTOL = 1e-5       # the bound on the relative error


def numeric_grad(f, a: np.ndarray) -> np.ndarray:
    """Central differences of the scalar function f() with respect to every entry of a
    (a is perturbed in place and restored)."""
    g = np.zeros_like(a, dtype=np.float64)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + H
        fp = f()
        a[i] = old - H
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * H)
    return g


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def check_layer(layer, x: np.ndarray, rng):
    """Loss L = sum(R * layer(x)) with a fixed random R: compare dL/dx and dL/dparams."""
    R = rng.standard_normal(layer.forward(x).shape)

    def loss():
        return float(np.sum(R * layer.forward(x)))

    layer.forward(x)
    dx = layer.backward(R)
    assert rel_err(dx, numeric_grad(loss, x)) < RTOL
    for p in layer.parameters():
        layer.forward(x)
        layer.backward(R)
        analytic = p.grad.copy()
        assert rel_err(analytic, numeric_grad(loss, p.value)) < RTOL, p.name


def test_linear_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    layer = nn.Linear.init(5, 4, rng)
    layer.b.value[:] = rng.standard_normal(4)
    check_layer(layer, rng.standard_normal((3, 5)), rng)


def test_linear_gradients_with_leading_batch_axes():
    rng = np.random.default_rng(1)
    layer = nn.Linear(rng.standard_normal((3, 4)), rng.standard_normal(3))
    check_layer(layer, rng.standard_normal((2, 3, 4)), rng)


def test_linear_without_bias():
    rng = np.random.default_rng(2)
    layer = nn.Linear(rng.standard_normal((3, 4)))
    assert [p.name for p in layer.parameters()] == ["W"]
    check_layer(layer, rng.standard_normal((6, 4)), rng)


def test_relu_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-2] = 0.5          # keep every entry away from the kink at 0
    check_layer(nn.ReLU(), x, rng)


def test_gelu_value_and_gradient():
    rng = np.random.default_rng(4)
    x = 3 * rng.standard_normal((4, 6))
    g = nn.GELU()
    # value: x * Phi(x) with math.erf, entry by entry
    expected = np.vectorize(lambda t: t * 0.5 * (1 + math.erf(t / math.sqrt(2))))(x)
    np.testing.assert_allclose(g.forward(x), expected, rtol=1e-14, atol=1e-15)
    check_layer(g, x, rng)


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(5)
    z = 4 * rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    loss, dz = nn.softmax_cross_entropy(z, y)
    # scalar oracle: -mean log(exp(z_y) / sum exp(z))
    ref = -sum(z[n, y[n]] - math.log(sum(math.exp(v) for v in z[n])) for n in range(6)) / 6
    assert loss == pytest.approx(ref, rel=1e-12)
    num = numeric_grad(lambda: nn.softmax_cross_entropy(z, y)[0], z)
    assert rel_err(dz, num) < RTOL


def test_softmax_cross_entropy_is_stable_for_large_logits():
    loss, dz = nn.softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(1000.0) and np.all(np.isfinite(dz))


def test_mlp_end_to_end_gradients():
    """A whole Linear-GELU-Linear-ReLU-Linear + cross-entropy against finite differences."""
    rng = np.random.default_rng(6)
    model = nn.Sequential([nn.Linear.init(6, 8, rng), nn.GELU(), nn.Linear.init(8, 7, rng),
                           nn.ReLU(), nn.Linear.init(7, 3, rng)])
    for p in model.parameters():
        if p.name == "b":
            p.value[:] = 0.1 * rng.standard_normal(p.value.shape)
    x = rng.standard_normal((5, 6))
    y = rng.integers(0, 3, 5)

    def loss():
        return nn.softmax_cross_entropy(model.forward(x), y)[0]

    _, dz = nn.softmax_cross_entropy(model.forward(x), y)
    dx = model.backward(dz)
    grads = [p.grad.copy() for p in model.parameters()]
    assert rel_err(dx, numeric_grad(loss, x)) < RTOL
    for p, g in zip(model.parameters(), grads):
        assert rel_err(g, numeric_grad(loss, p.value)) < RTOL


def test_sgd_momentum_matches_hand_computation():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = nn.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.array([0.5, 1.0])
    opt.step()            # v = g = [0.5, 1]; theta = [1 - 0.05, -2 - 0.1]
    np.testing.assert_allclose(p.value, [0.95, -2.1], rtol=1e-15)
    p.grad = np.array([1.0, 0.0])
    opt.step()            # v = 0.9 * [0.5, 1] + [1, 0] = [1.45, 0.9]
    np.testing.assert_allclose(p.value, [0.95 - 0.145, -2.1 - 0.09], rtol=1e-15)


def test_adam_matches_scalar_formulas():
    p = nn.Parameter(np.array([0.3]))
    opt = nn.Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    theta, m, v = 0.3, 0.0, 0.0
    for t, g in enumerate([2.0, -1.0, 0.5], start=1):
        p.grad = np.array([g])
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta -= 0.01 * (m / (1 - 0.9 ** t)) / (math.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        assert p.value[0] == pytest.approx(theta, rel=1e-13)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_optimizers_reject_bad_learning_rate(lr):
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="learning rate"):
        nn.SGD([p], lr=lr)
    with pytest.raises(ValueError, match="learning rate"):
        nn.Adam([p], lr=lr)


def test_optimizers_reject_bad_momentum_and_betas():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        nn.SGD([p], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="beta2"):
        nn.Adam([p], betas=(0.9, 1.5))


def test_shape_errors_are_value_errors():
    rng = np.random.default_rng(7)
    layer = nn.Linear.init(4, 3, rng)
    with pytest.raises(ValueError, match="does not end in 4 features"):
        layer.forward(np.zeros((2, 5)))
    layer.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="does not match the forward output shape"):
        layer.backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="before forward"):
        nn.ReLU().backward(np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="b shape"):
        nn.Linear(np.zeros((3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="X must be"):
        nn.fit(nn.Sequential([layer]), np.zeros((5, 4)), np.zeros(4, int),
               nn.SGD(layer.parameters(), 0.1), epochs=1, batch_size=2)


def test_fit_stops_on_nan_loss_and_names_the_step():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((64, 4))
    y = rng.integers(0, 3, 64)
    model = nn.Sequential([nn.Linear.init(4, 16, rng), nn.ReLU(), nn.Linear.init(16, 3, rng)])
    opt = nn.SGD(model.parameters(), lr=1e200)          # the first step makes the weights explode
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"at step [1-9]\d* \(epoch 0\)"):
        nn.fit(model, X, y, opt, epochs=2, batch_size=16)


def test_fit_learns_a_separable_problem():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((200, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = nn.Sequential([nn.Linear.init(2, 16, rng), nn.ReLU(), nn.Linear.init(16, 2, rng)])
    before = nn.accuracy(model, X, y)
    res = nn.fit(model, X, y, nn.Adam(model.parameters(), lr=1e-2), epochs=30, batch_size=20)
    assert res.steps == 300 and res.losses.shape == (300,)
    assert res.losses[-10:].mean() < res.losses[:10].mean()
    assert nn.accuracy(model, X, y) > max(before, 0.95)
