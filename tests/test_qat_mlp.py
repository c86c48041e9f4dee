"""Tests of refquant.training.qat_mlp: the hand-written SwiGLU backward against central finite
differences (float64, relative error < 1e-5), the forward against a per-token loop, bad input,
and a short QAT run on a synthetic MLP that must lower the held-out output error below its
MSE-calibrated round-to-nearest starting point.
"""

import math

import numpy as np
import pytest

import refquant as rq
from refquant.training.qat_mlp import qat_swiglu_mlp, relative_error, swiglu_mlp, swiglu_mlp_backward

from test_nn import RTOL, numeric_grad, rel_err


def small_mlp(rng, d=4, F=6):
    return (rng.standard_normal((F, d)), rng.standard_normal((F, d)), rng.standard_normal((d, F)))


def test_swiglu_forward_against_per_token_loop():
    rng = np.random.default_rng(0)
    W_g, W_u, W_d = small_mlp(rng)
    X = rng.standard_normal((3, 4))
    Y = swiglu_mlp(X, W_g, W_u, W_d)
    for n in range(3):
        z = []
        for f in range(6):
            a = sum(X[n, k] * W_g[f, k] for k in range(4))
            b = sum(X[n, k] * W_u[f, k] for k in range(4))
            z.append(a / (1 + math.exp(-a)) * b)
        for j in range(4):
            assert Y[n, j] == pytest.approx(sum(z[f] * W_d[j, f] for f in range(6)), rel=1e-12)


def test_swiglu_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    W_g, W_u, W_d = small_mlp(rng)
    X = 2 * rng.standard_normal((5, 4))
    R = rng.standard_normal((5, 4))

    def loss():
        return float(np.sum(R * swiglu_mlp(X, W_g, W_u, W_d)))

    grads = swiglu_mlp_backward(R, X, W_g, W_u, W_d)
    for a, g in zip((X, W_g, W_u, W_d), grads):
        assert rel_err(g, numeric_grad(loss, a)) < RTOL


def synthetic(seed=0, d=32, F=80, N=2048):
    rng = np.random.default_rng(seed)
    W = {"gate": rng.standard_normal((F, d)) / 6, "up": rng.standard_normal((F, d)) / 6,
         "down": rng.standard_normal((d, F)) / 9}
    W = {k: v.astype(np.float32) for k, v in W.items()}
    X = (rng.standard_normal((N, d)) * np.linspace(0.2, 3, d)).astype(np.float32)
    return W, X, swiglu_mlp(X, W["gate"], W["up"], W["down"])


def test_short_qat_lowers_held_out_error_below_rtn():
    """Measured when written: RTN (MSE calibration) 0.0558, QAT 0.0530 relative error."""
    W, X, Y = synthetic()
    spec = rq.QuantSpec(bits=3, symmetric=False, granularity="group", group_size=16)
    qp = {n: rq.calibrate(W[n], spec, method="mse") for n in W}
    rtn = {n: rq.fake_quantize(W[n], spec, qparams=qp[n]) for n in W}
    cal, held = slice(0, 1024), slice(1024, None)
    err_rtn = relative_error(swiglu_mlp(X[held], rtn["gate"], rtn["up"], rtn["down"]), Y[held])
    res = qat_swiglu_mlp(X[cal], Y[cal], W, qp, spec, steps=150, batch_size=256, lr=1e-5,
                         lr_step=1e-5, seed=0)
    err_qat = relative_error(swiglu_mlp(X[held], res.w_hat["gate"], res.w_hat["up"],
                                        res.w_hat["down"]), Y[held])
    assert res.losses.shape == (150,)
    assert res.losses[-30:].mean() < res.losses[:30].mean()
    assert err_qat < 0.97 * err_rtn, (err_qat, err_rtn)
    # the result is on the grid of its own parameters
    for n in W:
        np.testing.assert_allclose(rq.fake_quantize(res.w_hat[n], spec, qparams=res.qparams[n]),
                                   res.w_hat[n], rtol=0, atol=1e-6)


def test_bad_input():
    W, X, Y = synthetic(N=64)
    spec = rq.QuantSpec(bits=3, granularity="channel")
    qp = {n: rq.calibrate(W[n], spec) for n in W}
    with pytest.raises(ValueError, match="learning rate"):
        qat_swiglu_mlp(X, Y, W, qp, spec, lr=0.0, steps=1)
    with pytest.raises(ValueError, match="learning rate"):
        qat_swiglu_mlp(X, Y, W, qp, spec, lr_step=-1.0, steps=1)
    with pytest.raises(ValueError, match="X must be"):
        qat_swiglu_mlp(X[:, :5], Y, W, qp, spec, steps=1)
    with pytest.raises(ValueError, match="do not form a SwiGLU MLP"):
        qat_swiglu_mlp(X, Y, {**W, "down": W["down"].T}, qp, spec, steps=1)
    with pytest.raises(ValueError, match="missing 'up'"):
        qat_swiglu_mlp(X, Y, {"gate": W["gate"], "down": W["down"]}, qp, spec, steps=1)
    Xn = X.copy()
    Xn[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qat_swiglu_mlp(Xn, Y, W, qp, spec, steps=1)
    with pytest.raises(ValueError, match="steps"):
        qat_swiglu_mlp(X, Y, W, qp, spec, steps=0)


def test_divergence_names_the_step():
    W, X, Y = synthetic(N=64)
    spec = rq.QuantSpec(bits=3, granularity="channel")
    qp = {n: rq.calibrate(W[n], spec) for n in W}
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"step \d+"):
        qat_swiglu_mlp(X, 1e30 * Y, W, qp, spec, steps=50, batch_size=32, lr=1e30,
                       learn_step=False)
