"""Shared test set-up: float64 on, and Monte Carlo tolerance helpers.

Statistical assertions compare an estimate with the exact value within ``K_SIGMA`` standard
errors, where the standard error is estimated from the same samples. Each such test also checks
that a deliberately wrong formula falls *outside* the same band, so the test can fail.
All randomness comes from fixed keys: a run is reproducible, the tolerance is statistical.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import dlnlab as d
from dlnlab.cli import _set_xla_flags

# The CLI's XLA flags (YNNPACK fusion off, one host device per core), set before JAX's backend
# starts, as `dlnlab` sets them at process start. Without this, the first test that calls
# `dlnlab.cli.main` would change os.environ["XLA_FLAGS"] after the backend had started with
# other flags, and the Dask executor, which hands the driver's flags to its workers, would give
# them flags the driver's own numbers were not computed with (1 ulp apart in float32).
_set_xla_flags()
jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Free every compiled program after each test module. Each XLA CPU executable keeps memory
    maps; the whole suite in one process otherwise passes the kernel's limit of 65,530 maps
    (vm.max_map_count), and the next compilation crashes (measured: the learning-coefficient
    benchmark and training tests alone leave about 5,900 maps, 1,700 after clearing)."""
    yield
    jax.clear_caches()

# 5 standard errors: a false alarm has probability ~6e-7 per scalar comparison.
K_SIGMA = 5.0


def assert_close_mc(estimate, exact, standard_error, k: float = K_SIGMA, what: str = ""):
    """``|estimate - exact| <= k * standard_error`` elementwise."""
    estimate, exact, se = (np.asarray(x, dtype=np.float64) for x in (estimate, exact, standard_error))
    err = np.abs(estimate - exact)
    bad = ~(err <= k * se)   # a NaN estimate or standard error fails
    assert not np.any(bad), (
        f"{what}: MC estimate differs from the exact value by more than {k} standard errors; "
        f"worst z = {np.max(err / np.maximum(se, 1e-300)):.2f}")


def assert_rejected_mc(estimate, wrong, standard_error, k: float = K_SIGMA, what: str = ""):
    """The wrong formula must be outside the band for at least one entry (the test can fail)."""
    estimate, wrong, se = (np.asarray(x, dtype=np.float64) for x in (estimate, wrong, standard_error))
    z = np.abs(estimate - wrong) / np.maximum(se, 1e-300)
    assert np.max(z) > k, f"{what}: a wrong formula would pass (max z = {np.max(z):.2f})"


def check_covariance_mc(samples: np.ndarray, exact_cov: np.ndarray, wrong_cov=None,
                       what: str = "", factor: float = 3.0):
    """Empirical covariance of ``samples (N, P)`` (known mean zero) against ``exact_cov``.

    With ``X_ij = g_i g_j`` the estimator's squared Frobenius error has expectation
    ``sum_ij Var(X_ij) / N``, estimated from the samples. A sum over ~P^2 terms concentrates, so
    the realised error exceeds ``factor`` (3) times its root-mean-square value with negligible
    probability. Returns the relative error for reporting.
    """
    g = np.asarray(samples, dtype=np.float64)
    n = g.shape[0]
    emp = g.T @ g / n
    second = (g * g).T @ (g * g) / n                # E[g_i^2 g_j^2]
    var = np.maximum(second - emp**2, 0.0)
    rms = np.sqrt(var.sum() / n)
    err = np.linalg.norm(emp - exact_cov)
    assert err <= factor * rms, (f"{what}: ||emp - exact||_F = {err:.3e} exceeds {factor} x the "
                                 f"Monte Carlo rms error {rms:.3e}")
    if wrong_cov is not None:
        err_wrong = np.linalg.norm(emp - wrong_cov)
        assert err_wrong > factor * rms, (f"{what}: the wrong formula would pass "
                                          f"({err_wrong:.3e} <= {factor} x {rms:.3e})")
    return err / np.linalg.norm(exact_cov)


def random_psd(key, n: int, floor: float = 0.5) -> np.ndarray:
    """A well-conditioned random covariance ``A A^T / n + floor I``."""
    a = np.asarray(jax.random.normal(key, (n, n)))
    return a @ a.T / n + floor * np.eye(n)


def random_state(key, widths, label_noise, whitened, data=None):
    """``(task, weights)``: a task with spectrum 1 ... 0.3 (optionally non-whitened, offline with
    ``data`` samples) and random Gaussian weights — a non-aligned, unbalanced state with O(1)
    error, so every term of the noise formulas matters."""
    k_task, k_w, k_cov, k_data = jax.random.split(key, 4)
    d_in, d_out = widths[0], widths[-1]
    spectrum = np.linspace(1.0, 0.3, min(d_in, d_out))
    cov = None if whitened else random_psd(k_cov, d_in)
    task = d.Task.from_spectrum(k_task, d_in, d_out, spectrum, label_noise=label_noise,
                                input_covariance=cov)
    if data is not None:
        task = task.with_data(k_data, data)
    return task, d.init_gaussian(k_w, widths, 1.0)


@pytest.fixture
def key():
    return jax.random.key(20261123)
