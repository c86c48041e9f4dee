"""GPTQ on float grids (rq.gptq with a FloatSpec; refquant/algorithms/_gptq_params.py).

Oracles: round-to-nearest on the same grid (rq.fake_quantize with the same scales: GPTQ with an
identity Hessian must equal it); an unbatched transcription of Algorithm 1 written below whose
rounding step is ``ml_dtypes`` (``s * ml_dtypes(clip(w / s, +-x_max))``), independent of
refquant's casts; the loss identity ``1/2 tr(dW (H + lambda I) dW^T)``.
"""

import numpy as np
import pytest

import refquant as rq
from refquant import FloatSpec

ml_dtypes = pytest.importorskip("ml_dtypes")
ML = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e2m3fn": ml_dtypes.float6_e2m3fn, "e3m2fn": ml_dtypes.float6_e3m2fn,
      "e2m1fn": ml_dtypes.float4_e2m1fn}


def _problem(d_row=12, d_col=40, n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d_col, n)) * np.linspace(0.2, 2.0, d_col)[:, None]
    X[1:] += 0.5 * X[:-1]                                           # correlated inputs
    W = rng.standard_normal((d_row, d_col)).astype(np.float32)
    return W, X, 2 * X @ X.T / n


CASES = [
    (FloatSpec("e4m3fn", "channel"), {}),
    (FloatSpec("e5m2", "tensor"), {}),
    (FloatSpec("e2m1fn", "group", group_size=16), {}),               # dynamic groups
    (FloatSpec("e2m1fn", "group", group_size=16), {"static_groups": True}),
    (FloatSpec("e3m2fn", "group", group_size=12), {"static_groups": True, "act_order": True}),
    (FloatSpec("e2m3fn", "block", block_shape=(5, 16)), {"static_groups": True}),
    (FloatSpec("e4m3fn", "block", block_shape=(8, 8)), {"static_groups": True, "act_order": True}),
]
IDS = [f"{s.fmt}-{s.granularity}{'-static' if k.get('static_groups') else ''}"
       f"{'-act' if k.get('act_order') else ''}" for s, k in CASES]


@pytest.mark.parametrize("spec, kw", CASES, ids=IDS)
def test_identity_hessian_is_round_to_nearest(spec, kw):
    """H = I: no error feedback, so GPTQ's codes, scales and w_hat are RTN's on the same grid."""
    W, _, _ = _problem()
    res = rq.gptq(W, np.eye(W.shape[1]), spec, block_size=8, **kw)
    qp = rq.calibrate(W, spec)
    np.testing.assert_array_equal(res.qparams.scale, qp.scale)
    np.testing.assert_array_equal(res.codes, rq.quantize(W, qp, spec))
    np.testing.assert_array_equal(res.w_hat, rq.fake_quantize(W, spec))
    assert res.codes.dtype == np.uint8


def test_given_scales_identity_hessian():
    """The hook for scales chosen elsewhere: power-of-two group scales (as MXFP4's E8M0) given
    as qparams; with H = I GPTQ is RTN with exactly those scales."""
    W, _, _ = _problem(d_col=64)
    spec = FloatSpec("e2m1fn", "group", group_size=32)
    amax = np.abs(W.reshape(12, 2, 32)).max(axis=-1)
    qp = rq.QParams(np.exp2(np.floor(np.log2(amax)) - 2))          # OCP: 2^(floor(log2 amax) - emax)
    res = rq.gptq(W, np.eye(64), spec, qparams=qp)
    np.testing.assert_array_equal(res.qparams.scale, qp.scale)
    np.testing.assert_array_equal(res.w_hat, rq.fake_quantize(W, spec, qparams=qp))


def _oracle(W, H, spec, S, damp=0.01):
    """Algorithm 1 without lazy batching, columns in order, fixed scales ``S`` [d_row, d_col]
    (expanded), rounding by ml_dtypes; returns ``(w_hat, loss)`` in float64."""
    W = W.astype(np.float64).copy()
    H = H.copy()
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T                      # upper, H^-1 = U^T U
    m = spec.format.max_normal
    Q = np.zeros_like(W)
    loss = 0.0
    for j in range(W.shape[1]):
        s = S[:, j]
        q = s * np.clip(W[:, j] / s, -m, m).astype(ML[spec.fmt]).astype(np.float64)
        Q[:, j] = q
        err = (W[:, j] - q) / U[j, j]
        loss += float(np.sum(err**2)) / 2
        W[:, j:] -= np.outer(err, U[j, j:])
    return Q, loss


@pytest.mark.parametrize("block_size", [1, 7, 128])
@pytest.mark.parametrize("spec", [FloatSpec("e4m3fn", "channel"),
                                  FloatSpec("e2m1fn", "group", group_size=8),
                                  FloatSpec("e3m2fn", "block", block_shape=(4, 16))],
                         ids=lambda s: f"{s.fmt}-{s.granularity}")
def test_equals_unbatched_oracle(spec, block_size):
    """Static scales: the lazy-batched pass equals the unbatched Algorithm 1 with ml_dtypes'
    rounding, at every block size (float64 working precision)."""
    W, _, H = _problem(seed=2)
    qp = rq.calibrate(W, spec)
    from refquant.schemes.spec import expand
    S = np.broadcast_to(expand(qp.scale, W.shape, spec).astype(np.float64), W.shape)
    res = rq.gptq(W, H, spec, block_size=block_size, static_groups=True, dtype=np.float64)
    Q, loss = _oracle(W, H, spec, S)
    np.testing.assert_array_equal(res.w_hat, Q.astype(np.float32))
    assert res.loss == pytest.approx(loss, rel=1e-9)


@pytest.mark.parametrize("spec, kw", CASES[:4], ids=IDS[:4])
def test_loss_identity_and_gain(spec, kw):
    """loss = 1/2 tr(dW (H + lambda I) dW^T), and on correlated inputs GPTQ's proxy loss is
    below RTN's on the same grid (fixed seed)."""
    W, X, H = _problem(seed=3)
    res = rq.gptq(W, H, spec, damp=0.05, dtype=np.float64, **kw)
    lam = 0.05 * np.mean(np.diag(H))
    Hd = H + lam * np.eye(H.shape[0])
    dW = W - res.w_hat.astype(np.float64)
    assert res.loss == pytest.approx(0.5 * np.trace(dW @ Hd @ dW.T), rel=1e-5)
    dR = W - rq.fake_quantize(W, spec).astype(np.float64)
    assert res.loss < 0.5 * np.trace(dR @ Hd @ dR.T)


def test_bad_input():
    """Dynamic activation scaling, non-saturating specs, dynamic blocks and ill-shaped given
    scales are refused, naming what is wrong."""
    W, _, H = _problem()
    with pytest.raises(ValueError, match="'token' is dynamic activation scaling"):
        rq.gptq(W, H, FloatSpec("e4m3fn", "token"))
    with pytest.raises(ValueError, match="must saturate"):
        rq.gptq(W, H, FloatSpec("e4m3fn", "channel", saturate=False))
    with pytest.raises(ValueError, match="static_groups=True"):
        rq.gptq(W, H, FloatSpec("e4m3fn", "block", block_shape=(4, 4)))
    with pytest.raises(ValueError, match=r"qparams shape \(12,\) does not match \(12, 3\)"):
        rq.gptq(W, H, FloatSpec("e2m1fn", "group", group_size=16), qparams=rq.QParams(np.ones(12)))
    with pytest.raises(ValueError, match="zero_point == 0"):
        rq.gptq(W, H, FloatSpec("e2m1fn", "channel"), qparams=rq.QParams(np.ones(12), np.ones(12, int)))
