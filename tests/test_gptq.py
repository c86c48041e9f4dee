"""Tests of refquant.algorithms.gptq against an unblocked, column-by-column oracle written here, the
identity-Hessian / round-to-nearest identity, and the loss identity derived in the module
docstring (checked against the reconstruction objective computed directly from W, W_hat and X)."""

import numpy as np
import pytest

import refquant as rq
from refquant.algorithms.gptq import hessian


def _spec(bits=4, granularity="group", group_size=16, symmetric=False):
    return rq.QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity,
                        group_size=group_size if granularity == "group" else None)


def _problem(d_row=12, d_col=40, n=200, seed=0, dead=()):
    """Correlated inputs X [d_col, n] (a random mixing), so GPTQ's error feedback matters."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d_row, d_col))
    X = rng.standard_normal((d_col, d_col)) @ rng.standard_normal((d_col, n)) / np.sqrt(d_col)
    X[list(dead), :] = 0.0
    H = 2.0 * X @ X.T / n
    return W, X, H


def _oracle(W, H, spec, damp=0.01, act_order=False, static_groups=False):
    """Algorithm 1 of Frantar et al. (arXiv:2210.17323) without the lazy batching: quantize one
    column, push its error onto *all* later columns immediately. Hinv from NumPy's inverse and
    Cholesky. Parameters and codes from rq.calibrate / rq.quantize / rq.dequantize."""
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    d_row, d_col = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    col_spec = rq.QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity="channel",
                            axis=0, rounding=spec.rounding)
    gs = spec.group_size if spec.granularity == "group" else None
    fixed = None
    if spec.granularity != "group":
        qp = rq.calibrate(W, spec)
        fixed = lambda c: rq.QParams(np.broadcast_to(qp.scale, (d_row,)).copy(),  # noqa: E731
                                     np.broadcast_to(qp.zero_point, (d_row,)).copy())
    elif static_groups:
        qp = rq.calibrate(W, spec)
        fixed = lambda c: rq.QParams(qp.scale[:, c // gs], qp.zero_point[:, c // gs])  # noqa: E731
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(d_col)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    H += damp * np.mean(np.diag(H)) * np.eye(d_col)
    U = np.linalg.cholesky(np.linalg.inv(H)).T                  # H^-1 = U^T U, U upper
    Q = np.zeros_like(W)
    codes = np.zeros(W.shape, np.int64)
    loss = 0.0
    qp_col = None
    for j in range(d_col):
        if fixed is not None:
            qp_col = fixed(perm[j])
        elif j % gs == 0:
            qp_col = rq.calibrate(W[:, j:j + gs], col_spec)
        c = rq.quantize(W[:, j:j + 1], qp_col, col_spec)
        q = rq.dequantize(c, qp_col, col_spec, dtype=np.float64)[:, 0]
        codes[:, j] = c[:, 0]
        Q[:, j] = q
        err = (W[:, j] - q) / U[j, j]
        loss += float(np.sum(err**2)) / 2
        W[:, j:] -= np.outer(err, U[j, j:])
    inv = np.argsort(perm)
    return codes[:, inv], Q[:, inv], loss, perm


CASES = [
    dict(spec=_spec(4, "group", 16)),
    dict(spec=_spec(3, "group", 12)),                   # 40 = 3*12 + 4: a short last group
    dict(spec=_spec(4, "group", 16), act_order=True),
    dict(spec=_spec(4, "group", 16), static_groups=True),
    dict(spec=_spec(4, "group", 12), act_order=True, static_groups=True),
    dict(spec=_spec(4, "channel")),
    dict(spec=_spec(4, "channel"), act_order=True),
    dict(spec=_spec(8, "channel", symmetric=True)),
    dict(spec=_spec(2, "tensor")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['spec'].granularity}{c['spec'].bits}"
                         f"{'-act' if c.get('act_order') else ''}{'-static' if c.get('static_groups') else ''}")
@pytest.mark.parametrize("block_size", [1, 5, 16, 128])
def test_equals_unblocked_oracle(case, block_size):
    W, X, H = _problem(dead=(3, 17))
    kw = {k: v for k, v in case.items() if k != "spec"}
    res = rq.gptq(W, H, case["spec"], block_size=block_size, dtype=np.float64, **kw)
    codes, Q, loss, perm = _oracle(W, H, case["spec"], **kw)
    np.testing.assert_array_equal(res.perm, perm)
    np.testing.assert_array_equal(res.codes.astype(np.int64), codes)
    np.testing.assert_allclose(res.w_hat, Q.astype(np.float32), rtol=0, atol=0)
    assert res.loss == pytest.approx(loss, rel=1e-9)


@pytest.mark.parametrize("spec", [_spec(4, "group", 16), _spec(4, "group", 7), _spec(8, "channel"),
                                  _spec(4, "channel", symmetric=True), _spec(3, "tensor")])
def test_identity_hessian_is_round_to_nearest(spec):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((9, 50)).astype(np.float32)
    res = rq.gptq(W, np.eye(50), spec, block_size=8)
    qp = rq.calibrate(W, spec, method="minmax")
    np.testing.assert_array_equal(res.codes, rq.quantize(W, qp, spec))
    np.testing.assert_array_equal(res.w_hat, rq.dequantize(rq.quantize(W, qp, spec), qp, spec))
    np.testing.assert_array_equal(res.qparams.scale, qp.scale)
    np.testing.assert_array_equal(res.qparams.zero_point, qp.zero_point)


@pytest.mark.parametrize("dtype, rel", [(np.float64, 1e-5), (np.float32, 1e-3)])
@pytest.mark.parametrize("case", CASES[:6])
def test_loss_is_the_reconstruction_objective(case, dtype, rel):
    """loss = 1/2 tr(dW (H + lam I) dW^T) = ||dW X||^2 / n + lam/2 ||dW||^2 (live columns)."""
    W, X, H = _problem(seed=3)
    n = X.shape[1]
    kw = {k: v for k, v in case.items() if k != "spec"}
    res = rq.gptq(W, H, case["spec"], damp=0.05, dtype=dtype, **kw)
    dW = W - res.w_hat.astype(np.float64)
    lam = 0.05 * np.mean(np.diag(H))
    direct = 0.5 * np.trace(dW @ (H + lam * np.eye(H.shape[0])) @ dW.T)
    via_outputs = np.sum((dW @ X) ** 2) / n + lam / 2 * np.sum(dW**2)
    # w_hat is rounded to float32 on return: compare at float32 resolution (float64 working
    # precision), or at the accumulated rounding of float32 error feedback
    assert res.loss == pytest.approx(direct, rel=rel)
    assert res.loss == pytest.approx(via_outputs, rel=rel)


def test_loss_with_dead_inputs_counts_zeroed_columns():
    W, X, H = _problem(dead=(0, 5, 39), seed=4)
    res = rq.gptq(W, H, _spec(4, "group", 8), dtype=np.float64)
    Hd = H.copy()
    Hd[[0, 5, 39], [0, 5, 39]] = 1.0
    lam = 0.01 * np.mean(np.diag(Hd))
    W0 = W.copy()
    W0[:, [0, 5, 39]] = 0.0
    dW = W0 - res.w_hat
    assert res.loss == pytest.approx(0.5 * np.trace(dW @ (Hd + lam * np.eye(40)) @ dW.T), rel=1e-5)
    np.testing.assert_array_equal(res.w_hat[:, [0, 5, 39]], 0.0)


def test_loss_independent_of_block_size():
    W, X, H = _problem(d_row=20, d_col=96, n=300, seed=5)
    spec = _spec(4, "group", 32)
    results = [rq.gptq(W, H, spec, block_size=b, act_order=True, dtype=np.float64)
               for b in (1, 3, 32, 50, 96, 1000)]
    for r in results[1:]:
        assert r.loss == pytest.approx(results[0].loss, rel=1e-10)
        np.testing.assert_array_equal(r.codes, results[0].codes)


def test_gptq_beats_rtn_on_correlated_inputs():
    W, X, H = _problem(d_row=32, d_col=64, n=400, seed=6)
    spec = _spec(3, "group", 32)
    res = rq.gptq(W, H, spec, damp=0.0001)
    rtn = rq.fake_quantize(W, spec)
    out_err = lambda Wh: np.sum(((W - Wh) @ X) ** 2)  # noqa: E731
    assert out_err(res.w_hat) < 0.8 * out_err(rtn)


def test_act_order_and_static_groups():
    W, X, H = _problem(seed=7)
    H = H * np.linspace(0.5, 3.0, 40)[None, :] * np.linspace(0.5, 3.0, 40)[:, None]  # distinct diag
    spec = _spec(4, "group", 16)
    res = rq.gptq(W, H, spec, act_order=True)
    np.testing.assert_array_equal(res.perm, np.argsort(-np.diag(H)))
    # dynamic groups in processing order: g_idx is the position in perm // group_size
    pos = np.empty(40, int)
    pos[res.perm] = np.arange(40)
    np.testing.assert_array_equal(res.g_idx, pos // 16)
    s, z = res.qparams.scale[:, res.g_idx], res.qparams.zero_point[:, res.g_idx]
    np.testing.assert_allclose(res.w_hat, (s * (res.codes.astype(np.float64) - z)).astype(np.float32), rtol=1e-7)
    # static groups: parameters are min-max of the original W, g_idx the standard i // gs,
    # and the result dequantizes with the plain group spec
    st = rq.gptq(W, H, spec, act_order=True, static_groups=True)
    qp = rq.calibrate(W, spec)
    np.testing.assert_array_equal(st.qparams.scale, qp.scale)
    np.testing.assert_array_equal(st.qparams.zero_point, qp.zero_point)
    np.testing.assert_array_equal(st.g_idx, np.arange(40) // 16)
    np.testing.assert_array_equal(st.w_hat, rq.dequantize(st.codes, st.qparams, spec))
    plain = rq.gptq(W, H, spec)
    np.testing.assert_array_equal(plain.w_hat, rq.dequantize(plain.codes, plain.qparams, spec))


def test_float32_working_precision_close_to_float64():
    W, X, H = _problem(d_row=64, d_col=128, n=500, seed=9)
    spec = _spec(4, "group", 32)
    r32 = rq.gptq(W, H, spec, act_order=True)
    r64 = rq.gptq(W, H, spec, act_order=True, dtype=np.float64)
    assert r32.loss == pytest.approx(r64.loss, rel=2e-3)
    assert np.mean(r32.codes != r64.codes) < 0.01          # rare rounding flips only


def test_input_not_modified():
    W, X, H = _problem(dead=(2,))
    W0, H0 = W.copy(), H.copy()
    rq.gptq(W, H, _spec(), act_order=True)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(H, H0)


def test_hessian_accumulation():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3, 10, 6))
    H, n = hessian(X[0])
    H, n = hessian(X[1:], H, n)
    flat = X.reshape(-1, 6)
    np.testing.assert_allclose(H, 2 * flat.T @ flat / 30, rtol=1e-12)
    assert n == 30


@pytest.mark.parametrize("kwargs, match", [
    (dict(W=np.full((2, 4), np.nan)), "W contains NaN"),
    (dict(W=np.ones(4)), "2-D"),
    (dict(H=np.eye(3)), r"H must have shape \(4, 4\)"),
    (dict(H=np.eye(4) + np.triu(np.ones((4, 4)), 1)), "symmetric"),
    (dict(H=-np.eye(4)), "non-negative diagonal"),
    (dict(H=np.where(np.eye(4) > 0, np.inf, 0.0)), "H contains NaN or Inf"),
    (dict(block_size=0), "block_size"),
    (dict(damp=-0.1), "damp"),
    (dict(damp=float("nan")), "damp"),
    (dict(dtype=np.float16), "dtype"),
    (dict(spec="int4"), "spec must be a QuantSpec"),
    (dict(spec=rq.QuantSpec(bits=4, granularity="channel", axis=1)), "axis=0"),
    (dict(H=np.array([[1., 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), damp=0.0),
     "not positive definite"),
])
def test_bad_input(kwargs, match):
    args = dict(W=np.ones((2, 4)), H=np.eye(4), spec=_spec(4, "group", 2), damp=0.01, block_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rq.gptq(args["W"], args["H"], args["spec"], block_size=args["block_size"], damp=args["damp"],
                dtype=args.get("dtype", np.float32))
