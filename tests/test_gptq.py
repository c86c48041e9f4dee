"""Tests of refquant.algorithms.gptq against two oracles written in tests/: the unblocked,
column-by-column Algorithm 1 here (``_oracle``, the paper's group rule ``group_params="updated"``)
and the NumPy transcription of the authors' code in ``gptq_reference.py`` (the default
``group_params="reference"``); the identity-Hessian / round-to-nearest identity, the loss
identity derived in the module docstring (checked against the reconstruction objective computed
directly from W, W_hat and X), and the speed helpers of ``_gptq_fast`` against their plain
versions."""

import numpy as np
import pytest
from gptq_reference import fasterquant

import refquant as rq
from refquant.algorithms._gptq_fast import (_SUB, _feed_error_forward_, _inverse_hessian_factor,
                                            _sub_product_)
from refquant.algorithms.gptq import HessianNotPositiveDefinite, hessian


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
    """Oracle: ``_oracle`` (Algorithm 1 unbatched); the paper's group rule at every block size."""
    W, X, H = _problem(dead=(3, 17))
    kw = {k: v for k, v in case.items() if k != "spec"}
    res = rq.gptq(W, H, case["spec"], block_size=block_size, dtype=np.float64, group_params="updated", **kw)
    codes, Q, loss, perm = _oracle(W, H, case["spec"], **kw)
    np.testing.assert_array_equal(res.perm, perm)
    np.testing.assert_array_equal(res.codes.astype(np.int64), codes)
    np.testing.assert_allclose(res.w_hat, Q.astype(np.float32), rtol=0, atol=0)
    assert res.loss == pytest.approx(loss, rel=1e-9)


def _layer(d_row=24, d_col=320, n=600, seed=11):
    """A layer of 2.5 lazy blocks of 128 with correlated inputs and a distinct diag H."""
    W, X, H = _problem(d_row=d_row, d_col=d_col, n=n, seed=seed)
    scale = np.linspace(0.5, 2.0, d_col)
    return W, H * scale[:, None] * scale[None, :]


GROUP_CASES = [(3, 32), (4, 64)]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits, group_size", GROUP_CASES + [(4, 128)])
def test_reference_rule_equals_authors_code(bits, group_size, act_order):
    """Oracle: ``gptq_reference.fasterquant`` (the IST-DASLab / AutoGPTQ code transcribed to
    float64 NumPy). Block 128: dynamic groups shorter than the block take their parameters
    from W as it stood at the block's start; codes, zero points and g_idx are equal, scales
    are the oracle's float64 scales rounded to float32."""
    W, H = _layer()
    spec = _spec(bits, "group", group_size)
    res = rq.gptq(W, H, spec, block_size=128, act_order=act_order, dtype=np.float64)
    codes, Q, scale, zero, g_idx = fasterquant(W, H, bits, group_size, 128, actorder=act_order)
    np.testing.assert_array_equal(res.codes.astype(np.int64), codes)
    np.testing.assert_array_equal(res.qparams.zero_point, zero.astype(np.int32))
    np.testing.assert_array_equal(res.g_idx, g_idx)
    # refquant feeds back the error of w_hat made with the stored float32 scale, the oracle that
    # of its float64 scale: later columns differ by ~1e-8 (relative), so a later group's float64
    # scale may round to the float32 neighbour (1 ulp = 1.2e-7)
    np.testing.assert_allclose(res.qparams.scale, scale, rtol=1.2e-7, atol=0)
    np.testing.assert_array_equal(res.qparams.scale[:, 0], scale[:, 0].astype(np.float32))
    np.testing.assert_allclose(res.w_hat, Q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits, group_size", GROUP_CASES)
def test_updated_rule_equals_unbatched_algorithm(bits, group_size, act_order):
    """Oracle: ``_oracle`` (Algorithm 1 unbatched). With groups shorter than the block the two
    rules differ, each equal to its own oracle."""
    W, H = _layer()
    spec = _spec(bits, "group", group_size)
    upd = rq.gptq(W, H, spec, block_size=128, act_order=act_order, dtype=np.float64, group_params="updated")
    codes, Q, loss, perm = _oracle(W, H, spec, act_order=act_order)
    np.testing.assert_array_equal(upd.codes.astype(np.int64), codes)
    np.testing.assert_array_equal(upd.w_hat, Q.astype(np.float32))
    ref = rq.gptq(W, H, spec, block_size=128, act_order=act_order, dtype=np.float64)
    assert np.mean(ref.codes != upd.codes) > 0.1                # the rules really differ here


@pytest.mark.parametrize("group_size, block_size", [(128, 128), (128, 64), (64, 32), (32, 1)])
@pytest.mark.parametrize("act_order", [False, True])
def test_rules_agree_when_every_group_starts_a_block(group_size, block_size, act_order):
    """Oracle: ``_oracle``. Where block_size divides group_size (g128 with block 128 as
    shipped), both rules read the same weights: identical results, equal to the unbatched
    algorithm (and so to refquant's results before the reference rule became the default)."""
    W, H = _layer()
    spec = _spec(4, "group", group_size)
    kw = dict(block_size=block_size, act_order=act_order)
    ref = rq.gptq(W, H, spec, **kw)
    upd = rq.gptq(W, H, spec, group_params="updated", **kw)
    np.testing.assert_array_equal(ref.codes, upd.codes)
    np.testing.assert_array_equal(ref.w_hat, upd.w_hat)
    np.testing.assert_array_equal(ref.qparams.scale, upd.qparams.scale)
    np.testing.assert_array_equal(ref.qparams.zero_point, upd.qparams.zero_point)
    codes, _, _, _ = _oracle(W, H, spec, act_order=act_order)
    r64 = rq.gptq(W, H, spec, dtype=np.float64, **kw)
    np.testing.assert_array_equal(r64.codes.astype(np.int64), codes)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits, group_size", GROUP_CASES)
def test_static_groups_ignore_the_group_rule(bits, group_size, act_order):
    """Oracles: ``gptq_reference.fasterquant(static_groups=True)`` and ``_oracle``; static
    groups are computed before the pass, so group_params changes nothing."""
    W, H = _layer()
    spec = _spec(bits, "group", group_size)
    kw = dict(block_size=128, act_order=act_order, static_groups=True, dtype=np.float64)
    ref = rq.gptq(W, H, spec, **kw)
    upd = rq.gptq(W, H, spec, group_params="updated", **kw)
    np.testing.assert_array_equal(ref.codes, upd.codes)
    np.testing.assert_array_equal(ref.w_hat, upd.w_hat)
    codes, _, scale, zero, g_idx = fasterquant(W, H, bits, group_size, 128, actorder=act_order,
                                               static_groups=True)
    np.testing.assert_array_equal(ref.codes.astype(np.int64), codes)
    np.testing.assert_array_equal(ref.qparams.zero_point, zero.astype(np.int32))
    np.testing.assert_array_equal(ref.g_idx, g_idx)
    np.testing.assert_array_equal(ref.codes.astype(np.int64),
                                  _oracle(W, H, spec, act_order=act_order, static_groups=True)[0])


def _symmetric_rows():
    """Rows whose range is exactly symmetric (max == -min): by hand, at 4 bits
    s = (0.25 + 0.25) / 15 = 1/30 and -min / s = 0.25 * 30 = 7.5 exactly in float64 (checked
    below), a tie that half-to-even sends to 8; the float32 scale fl32(1/30) > 1/30 gives
    7.4999996 (7). The zero row is the reference's zero-range case: [-1, 1], z = round(7.5)."""
    rng = np.random.default_rng(12)
    W = rng.uniform(-1.0, 1.0, (3, 16)) * np.array([[0.2], [0.08], [0.0]])
    W[0, [2, 9]] = [-0.25, 0.25]
    W[1, [0, 15]] = [0.1, -0.1]                                 # -0.1 / (0.2 / 15) = 7.5 as well
    return W


def test_zero_point_at_exactly_symmetric_range():
    """Oracle: the hand calculation in ``_symmetric_rows`` and ``gptq_reference.fasterquant``."""
    assert 0.25 / ((0.25 + 0.25) / 15) == 7.5 and 0.1 / ((0.1 + 0.1) / 15) == 7.5
    assert 0.25 / float(np.float32((0.25 + 0.25) / 15)) < 7.5
    W = _symmetric_rows()
    spec = _spec(4, "channel")
    rng = np.random.default_rng(13)
    X = rng.standard_normal((16, 64))
    H = 2 * X @ X.T / 64
    res = rq.gptq(W, H, spec, block_size=8, dtype=np.float64)
    np.testing.assert_array_equal(res.qparams.zero_point, [8, 8, 8])
    np.testing.assert_array_equal(res.qparams.scale, np.float32([1 / 30, 0.2 / 15, 2 / 15]))
    np.testing.assert_array_equal(rq.calibrate(W, spec).zero_point[:2], [7, 7])   # the float32 route
    codes, Q, scale, zero, _ = fasterquant(W, H, 4, blocksize=8)
    np.testing.assert_array_equal(res.codes.astype(np.int64), codes)
    np.testing.assert_array_equal(res.qparams.zero_point, zero[:, 0])
    np.testing.assert_array_equal(res.codes[2], 8)              # the zero row: codes 8, w_hat 0
    np.testing.assert_array_equal(res.w_hat[2], 0.0)
    # the same rows as groups (4 bits, g16 inside a block of 32)
    Wg = np.concatenate([W, _symmetric_rows()[:, ::-1]], axis=1)
    Xg = rng.standard_normal((32, 100))
    Hg = 2 * Xg @ Xg.T / 100
    rg = rq.gptq(Wg, Hg, _spec(4, "group", 16), block_size=32, dtype=np.float64)
    codes, _, _, zero, _ = fasterquant(Wg, Hg, 4, 16, 32)
    np.testing.assert_array_equal(rg.codes.astype(np.int64), codes)
    np.testing.assert_array_equal(rg.qparams.zero_point, zero.astype(np.int32))


def test_sub_product_is_the_plain_update():
    """Oracle: the plain NumPy ``C - A @ B``, also for an empty C (the last block)."""
    rng = np.random.default_rng(14)
    for dtype in (np.float32, np.float64):
        C = np.asfortranarray(rng.standard_normal((7, 9)), dtype)
        A, B = rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal((5, 9)).astype(dtype)
        want = C - A @ B
        _sub_product_(C, A, B)
        np.testing.assert_allclose(C, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    E = np.zeros((7, 0), order="F")
    _sub_product_(E, A, np.zeros((5, 0)))
    assert E.shape == (7, 0)


@pytest.mark.parametrize("count", [1, _SUB - 1, _SUB, 2 * _SUB + 3])
def test_feed_error_forward_is_the_plain_update(count):
    """Oracle: Algorithm 1's update ``W1[:, i:] -= err ⊗ Hinv1[i, i:]`` applied in full at
    every column. The sub-blocked version agrees on every column the next step reads, and on
    the whole block after its last column."""
    rng = np.random.default_rng(15)
    W1 = np.asfortranarray(rng.standard_normal((6, count)))
    Hinv1 = np.triu(rng.standard_normal((count, count)))
    plain, Err1 = W1.copy(), np.zeros_like(W1)
    for i in range(count):
        Err1[:, i] = rng.standard_normal(6)
        plain[:, i:] -= np.outer(Err1[:, i], Hinv1[i, i:])
        _feed_error_forward_(W1, Err1, Hinv1, i)
        s2 = min(i - i % _SUB + _SUB, count)
        np.testing.assert_allclose(W1[:, :s2], plain[:, :s2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(W1, plain, rtol=1e-12, atol=1e-12)


def test_inverse_hessian_factor_is_the_plain_factor():
    """Oracle: ``numpy.linalg.cholesky(inv(H)).T``, the factor as Algorithm 1 states it."""
    rng = np.random.default_rng(16)
    A = rng.standard_normal((30, 60))
    H = A @ A.T / 60 + 0.01 * np.eye(30)
    U = _inverse_hessian_factor(H)
    np.testing.assert_allclose(U, np.linalg.cholesky(np.linalg.inv(H)).T, rtol=1e-9, atol=1e-12)
    assert U.flags.f_contiguous


def test_inverse_hessian_factor_ignores_blas_threads():
    """The factor is bit-identical with 1 and 2 BLAS threads (OpenBLAS's threaded potrf/trtri
    would not be: its blocking depends on the thread count). Oracle: the 1-thread factor."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(18)
    X = rng.standard_normal((1200, 600)).astype(np.float32)
    H = X.T @ X / 1200 + 0.01 * np.eye(600, dtype=np.float32)
    factors = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            factors.append(_inverse_hessian_factor(H.copy()))
    assert np.array_equal(factors[0], factors[1])


def _indefinite(off):
    """diag 1, off-diagonal ``off``: eigenvalues 1 - off and 1 + off, mean diag 1, so
    H + damp I is positive definite exactly when damp > off - 1 (hand calculation)."""
    return np.array([[1.0, off, 0, 0], [off, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def test_damping_retries_with_10x():
    """Oracle: the eigenvalues of ``_indefinite`` (hand calculation): 1.05 needs damp > 0.05."""
    W = np.random.default_rng(17).standard_normal((3, 4))
    spec = _spec(4, "channel")
    ok = rq.gptq(W, np.eye(4), spec)
    assert (ok.damp, ok.damp_retries) == (0.01, 0)
    res = rq.gptq(W, _indefinite(1.05), spec)                    # 0.01 fails, 0.1 holds
    assert res.damp == pytest.approx(0.1) and res.damp_retries == 1
    with pytest.raises(HessianNotPositiveDefinite, match=r"damp = 0\.01 \(lambda=0\.01\)") as exc:
        rq.gptq(W, _indefinite(1.05), spec, damp_retries=0)
    assert exc.value.damps == (0.01,)
    with pytest.raises(HessianNotPositiveDefinite) as exc:
        rq.gptq(W, _indefinite(3.0), spec)                       # needs damp > 2: 0.01, 0.1, 1.0 fail
    assert exc.value.damps == pytest.approx((0.01, 0.1, 1.0))
    assert exc.value.lambdas == pytest.approx((0.01, 0.1, 1.0))
    assert isinstance(exc.value, ValueError)
    with pytest.raises(HessianNotPositiveDefinite) as exc:       # 10 x 0 = 0: no retry
        rq.gptq(W, _indefinite(1.0), spec, damp=0.0)
    assert exc.value.damps == (0.0,)


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
    """The paper's group rule ("updated") does not depend on the lazy-batch size."""
    W, X, H = _problem(d_row=20, d_col=96, n=300, seed=5)
    spec = _spec(4, "group", 32)
    results = [rq.gptq(W, H, spec, block_size=b, act_order=True, dtype=np.float64, group_params="updated")
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
    (dict(group_params="paper"), "group_params must be one of"),
    (dict(damp_retries=-1), "damp_retries"),
    (dict(H=np.array([[1., 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), damp=0.0),
     "not positive definite"),
])
def test_bad_input(kwargs, match):
    args = dict(W=np.ones((2, 4)), H=np.eye(4), spec=_spec(4, "group", 2), damp=0.01, block_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rq.gptq(args["W"], args["H"], args["spec"], block_size=args["block_size"], damp=args["damp"],
                dtype=args.get("dtype", np.float32), group_params=args.get("group_params", "reference"),
                damp_retries=args.get("damp_retries", 2))


@pytest.mark.parametrize("spec,kw", [
    (_spec(4, "channel"), {}),
    (_spec(3, "channel", symmetric=True), dict(act_order=True)),
    (_spec(8, "tensor"), {}),
    (_spec(4, "group", 16), dict(static_groups=True, act_order=True)),
    (_spec(2, "group", 12), dict(static_groups=True)),
    (rq.QuantSpec(bits=4, symmetric=False, granularity="channel", rounding="half_away"), {}),
    (_spec(4, "group", 16), dict(static_groups=True, dtype=np.float64, block_size=24)),
])
@pytest.mark.parametrize("d_row,d_col", [(12, 40), (33, 150)])
def test_numba_columns_are_the_plain_loop(monkeypatch, spec, kw, d_row, d_col):
    """Oracle: gptq's plain per-column NumPy loop (``NUMBA_COLUMNS = False``). With parameters
    fixed before the pass the Numba column pass gives the same codes, w_hat and loss bit for
    bit (lazy blocks that are not a multiple of the sub-block, act order, half-away rounding,
    float64 working precision, a dead input, tie-heavy weights on a grid of half steps)."""
    from refquant.algorithms import _gptq_fast
    W, _, H = _problem(d_row, d_col, n=300, seed=d_col, dead=(3,))
    W[:, ::5] = np.round(W[:, ::5] * 4) / 4                     # values on a coarse grid: ties
    assert _gptq_fast.fixed_columns_apply(spec, object(), None)
    fast = rq.gptq(W, H, spec, **kw)
    monkeypatch.setattr(_gptq_fast, "NUMBA_COLUMNS", False)
    plain = rq.gptq(W, H, spec, **kw)
    np.testing.assert_array_equal(fast.codes, plain.codes)
    np.testing.assert_array_equal(fast.w_hat, plain.w_hat)
    assert fast.loss == plain.loss
    assert fast.codes.dtype == plain.codes.dtype and fast.codes.flags.f_contiguous
