"""Stationary weight statistics from recorded runs, shared by the second paper's studies.

Runs record the flattened weights (observable ``parameters``, ``theta = flatten_weights(W)``) at
linearly spaced times. A study keeps the records at ``t >= start`` (the stationary window),
estimates each run's covariance there by a time average, and averages over the ``R``
independent runs. The runs give the Monte Carlo error honestly, whatever the time correlation
within a run: the spread of the per-run estimates.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..._validation import fail


def window_parameters(ds: xr.Dataset, method: str = "sgd", start: float = 0.0) -> np.ndarray:
    """The recorded ``parameters`` of ``method`` at ``t >= start``, float64, shape
    ``(runs, times, P)``, for runs whose status is ``ok`` (diverged runs are labelled in the
    dataset and left out here; the caller reports how many remain). Raises ``ValueError`` when
    the dataset has no ``parameters`` or no record in the window."""
    if "parameters" not in ds:
        fail("record.variables", "no 'parameters'", "the fluctuation studies need the weights")
    part = ds["parameters"].sel(method_name=method)
    part = part.where(part.time >= start, drop=True)
    if part.sizes["time"] == 0:
        fail("start", start, f"no record at t >= start (horizon {float(ds.time[-1]):g})")
    ok = (ds["status"].sel(method_name=method) == "ok").values
    return np.asarray(part.values, dtype=np.float64)[ok]


def run_covariances(samples: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Per-run time-averaged second moments ``(1/T) sum_t (theta_t - c)(theta_t - c)^T``,
    ``(runs, P, P)``, about ``centre`` (``(P,)`` or ``(runs, P)``; e.g. the known solution
    ``theta*``), or about each run's own time mean when None (the ``T/(T-1)`` correction is then
    applied)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 3:
        fail("samples.shape", x.shape, "must be (runs, times, P)")
    if centre is None:
        d = x - x.mean(axis=1, keepdims=True)
        scale = 1.0 / max(x.shape[1] - 1, 1)
    else:
        c = np.asarray(centre, dtype=np.float64)
        d = x - (c[:, None, :] if c.ndim == 2 else c[None, None, :])
        scale = 1.0 / x.shape[1]
    return np.einsum("rtp,rtq->rpq", d, d) * scale


def covariance_error(per_run: np.ndarray, theory: np.ndarray) -> dict:
    """Relative Frobenius error of the run-averaged covariance against ``theory`` ``(P, P)``,
    with its Monte Carlo part separated.

    ``M_hat = mean_r M_r`` over ``R >= 3`` independent runs. ``E|M_hat - M|_F^2 = |b|^2 +
    sum_ij Var(M_hat_ij)`` with the systematic part ``b = E M_hat - M``; ``Var`` is estimated by
    the across-run variance ``/ R``, so ``D = |M_hat - M|^2 - sum s_ij^2 / R`` is an unbiased
    estimate of ``|b|^2`` (its standard error by the jackknife over runs). Returns
    ``raw`` = ``|M_hat - M| / |M|`` (what the eye sees), ``monte_carlo`` =
    ``sqrt(sum s^2 / R) / |M|`` (the raw error expected from sampling alone), ``systematic`` =
    ``sqrt(max(D, 0)) / |M|``, ``systematic_upper`` = ``sqrt(max(D + Z SE_D, 0)) / |M|`` at
    ``Z = 1.645`` (one-sided 95%), ``bias_z`` = ``D / SE_D`` (a systematic difference is
    detected when it exceeds the study's ``Z``; negative when sampling noise dominates), and
    ``runs``.
    """
    m_r = np.asarray(per_run, dtype=np.float64)
    theory = np.asarray(theory, dtype=np.float64)
    runs = m_r.shape[0]
    if runs < 3:
        fail("runs", runs, "the error estimate needs >= 3 independent runs")
    norm = float(np.linalg.norm(theory))
    if not norm > 0:
        fail("theory", "zero matrix", "a relative error needs a non-zero reference")

    # D and its leave-one-out values from sums (the jackknife without R copies of the sample):
    # with X_i the per-run matrices, S1 = sum X_i, S2 = sum X_i^2 (elementwise) and k = R - 1,
    # leaving run i out gives mean_i = (S1 - X_i)/k and sum var_i = (sum S2 - |X_i|^2 - k
    # |mean_i|^2)/(k - 1), so every D_i needs only the scalars <X_i, X_i>, <X_i, S1>, <X_i, M>.
    k = runs - 1
    s1 = m_r.sum(axis=0)
    total_square = float(np.sum(m_r * m_r))
    x_x = np.einsum("rpq,rpq->r", m_r, m_r)
    x_s1 = np.einsum("rpq,pq->r", m_r, s1)
    x_m = np.einsum("rpq,pq->r", m_r, theory)
    s1_s1, s1_m, m_m = float(np.sum(s1 * s1)), float(np.sum(s1 * theory)), norm**2
    mean_square_i = (s1_s1 - 2 * x_s1 + x_x) / k**2                    # |mean_i|^2
    distance_i = mean_square_i - 2 * (s1_m - x_m) / k + m_m             # |mean_i - M|^2
    variance_i = (total_square - x_x - k * mean_square_i) / (k - 1)     # sum of var_i (ddof 1)
    leave_one = distance_i - variance_i / k
    mean_square = s1_s1 / runs**2
    variance = (total_square - runs * mean_square) / k
    d = float(mean_square - 2 * s1_m / runs + m_m - variance / runs)
    se = float(np.sqrt(k / runs * np.sum((leave_one - leave_one.mean()) ** 2)))
    mean = m_r.mean(axis=0)
    return {"raw": float(np.linalg.norm(mean - theory)) / norm,
            "monte_carlo": float(np.sqrt(max(variance, 0.0) / runs)) / norm,
            "systematic": float(np.sqrt(max(d, 0.0))) / norm,
            "systematic_upper": float(np.sqrt(max(d + 1.645 * se, 0.0))) / norm,
            "bias_z": d / se if se > 0 else (np.inf if d > 0 else 0.0),
            "runs": runs}


def least_squares_residuals(inputs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``r = (Pi - 1) eps`` ``(..., P)`` for inputs ``(..., P, N)`` and label noise ``(..., P)``:
    the residuals ``X w* - y`` of the least-squares solution (the teacher cancels)."""
    x = np.asarray(inputs, dtype=np.float64)
    e = np.asarray(noise, dtype=np.float64)
    xt = np.swapaxes(x, -1, -2)
    coef = np.linalg.solve(xt @ x, xt @ e[..., None])
    return (x @ coef)[..., 0] - e
