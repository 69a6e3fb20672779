"""Hessian products, Lanczos, closed forms and certification (docs/saddles.md "Certification",
"Depth two: the closed form").

Independent computations: central differences of the analytic gradient with the exact truncation
error (nested jvp), dense ``eigh`` of the ``jax.jacfwd`` Hessian, the closed-form depth-2 spectrum,
the exactly zero Hessian at the origin for L >= 3.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import jet

import dlnlab as d
from dlnlab import saddles as sd

EPS = float(jnp.finfo(jnp.float64).eps)


@functools.partial(jax.jit,
                   static_argnames=("method", "num_blocks", "block_size", "num_eigenvalues"))
def _certify(key, weights, task, method="dense", num_blocks=40, block_size=8, num_eigenvalues=6):
    return sd.certify(key, weights, task, method=method, num_blocks=num_blocks, block_size=block_size,
                      num_eigenvalues=num_eigenvalues)


_hessian = jax.jit(sd.dense_hessian)


def _exact_saddle(key, widths, subset, zero_layers, spectrum=(3.0, 2.0, 1.0, 0.5)):
    task = d.Task.from_spectrum(key, widths[0], widths[-1], spectrum[:min(widths[0], widths[-1])])
    form = sd.normal_form(task, subset)
    z = sd.exact_residuals(jax.random.fold_in(key, 7), widths, len(subset), zero_layers)
    return task, sd.assemble_weights(form, z)


def test_hessian_vector_product_matches_central_differences(key):
    """(g(e) - g(-e)) / 2e with g(e) = grad L(theta + e v) is, for the polynomial loss, exactly
    H v + e^2 g'''/3! + e^4 g^(5)/5! (degree 2L - 1 = 5 at L = 3); the derivatives come from
    Taylor-mode autodiff (jax.experimental.jet). So |fd - Hv - truncation| must be within
    rounding, bounded by 8 L eps G / e with G the gradient scale (an upper bound of every
    computed gradient entry's magnitude). Without the truncation term the check fails at the
    larger step (the test can fail)."""
    task = d.Task.from_spectrum(key, 4, 3, [2.0, 1.0, 0.5])
    weights = d.init_gaussian(jax.random.fold_in(key, 1), (4, 5, 4, 3), 1.0)
    direction = tuple(jax.random.normal(jax.random.fold_in(key, 2 + i), w.shape)
                      for i, w in enumerate(weights))
    hv = d.flatten_weights(sd.hessian_vector_product(weights, task, direction))

    def g(e):
        return d.flatten_weights(d.population_gradient(
            tuple(w + e * u for w, u in zip(weights, direction, strict=True)), task))

    # Taylor coefficients of g along e (jet convention: series[k - 1] = d^k g / de^k at e = 0)
    _, series = jax.jit(lambda: jet.jet(g, (0.0,), ((1.0, 0.0, 0.0, 0.0, 0.0),)))()
    g1, g3, g5 = series[0], series[2], series[4]
    np.testing.assert_allclose(np.asarray(g1), np.asarray(hv), rtol=1e-13, atol=1e-13)
    g = jax.jit(g)
    scale = float(sd.gradient_scale(weights, task)) * (1.0 + 1.0)    # weights moved by e |v| < 1
    for e in (1e-2, 1e-4):
        fd = (g(e) - g(-e)) / (2 * e)
        truncation = e ** 2 * g3 / 6.0 + e ** 4 * g5 / 120.0
        bound = 8 * 3 * EPS * scale / e
        assert float(jnp.max(jnp.abs(fd - hv - truncation))) <= bound
        if e == 1e-2:
            assert float(jnp.max(jnp.abs(fd - hv))) > bound, "truncation too small to matter"


@pytest.mark.parametrize("d_in, d_out, hidden, spectrum, subset", [
    (4, 3, 3, [3.0, 2.0, 1.0], (0,)),          # two free hidden units: lambda_min = -s_2
    (5, 5, 2, [3.0, 2.0, 1.0, 0.5], (0, 2)),   # no free unit, wrong subset: lambda_-(s_3, s_2) < 0
    (3, 5, 2, [3.0, 2.0, 1.0], (1, 2)),        # d_out > d_in: outputs outside the teacher
])
def test_depth_two_spectrum_matches_the_closed_form(key, d_in, d_out, hidden, spectrum, subset):
    """Every eigenvalue of the dense Hessian at the depth-2 normal-form point W = P_S M equals the
    closed form (docs/saddles.md); eigh is backward stable, so |error| <= 10 P eps ||H||. The
    certificate counts the index and nullity of the closed form."""
    task = d.Task.from_spectrum(key, d_in, d_out, spectrum)
    form = sd.normal_form(task, subset)
    weights = sd.assemble_weights(form, sd.zero_residuals((d_in, hidden, d_out), len(subset)))
    evals = np.linalg.eigvalsh(np.asarray(_hessian(weights, task)))
    closed = sd.two_layer_saddle_spectrum(spectrum, subset, d_in, d_out, hidden)
    norm = np.abs(evals).max()
    np.testing.assert_allclose(evals, closed, atol=10 * evals.size * EPS * norm)
    lam = sd.two_layer_smallest_eigenvalue(spectrum, subset, hidden)
    assert lam < 0
    np.testing.assert_allclose(evals[0], lam, atol=10 * evals.size * EPS * norm)
    if d_in > d_out:                                              # certify one case (compile time)
        cert = _certify(None, weights, task)
        assert int(cert.classification) == sd.STRICT_SADDLE
        assert float(cert.gradient_norm) <= float(cert.gradient_tolerance)
        assert int(cert.index) == int(np.sum(closed < -float(cert.eigenvalue_tolerance)))
        assert int(cert.nullity) == int(np.sum(np.abs(closed) <= float(cert.eigenvalue_tolerance)))


def test_depth_two_minimum_and_origin(key):
    """(a) d_1 = r and S = the r largest modes: W = P_S M is the global minimum of the width-r
    network (closed form: every eigenvalue >= 0, nullity r^2 = 4 from the gauge): a minimum.
    (b) The depth-2 origin: eigenvalues +- s_a (closed form with r = 0): a strict saddle."""
    spectrum = [3.0, 2.0, 1.0, 0.5]
    task = d.Task.from_spectrum(key, 5, 5, spectrum)
    weights = sd.assemble_weights(sd.normal_form(task, (0, 1)), sd.zero_residuals((5, 2, 5), 2))
    cert = _certify(None, weights, task)
    closed = sd.two_layer_saddle_spectrum(spectrum, (0, 1), 5, 5, 2)
    assert closed.min() == 0.0 and np.sum(closed == 0.0) == 4
    assert int(cert.classification) == sd.MINIMUM
    assert int(cert.index) == 0 and int(cert.nullity) == 4
    np.testing.assert_allclose(float(cert.loss), float(cert.minimum_loss), rtol=1e-12)
    origin = sd.assemble_weights(sd.normal_form(task, ()), sd.zero_residuals((5, 2, 5), 0))
    cert = _certify(None, origin, task)
    assert int(cert.classification) == sd.STRICT_SADDLE
    np.testing.assert_allclose(float(cert.smallest_eigenvalues[0]), -3.0, rtol=1e-12)
    np.testing.assert_allclose(sd.two_layer_saddle_spectrum(spectrum, (), 5, 5, 2)[0], -3.0)


SHARED = (6, 8, 8, 8, 6)      # depth 4, P = 240: one compilation shared by the tests below


def test_origin_is_a_non_strict_saddle_for_depth_three_and_more(key):
    """At theta = 0 with L >= 3 every second derivative contains another (zero) layer: the dense
    Hessian is exactly 0 (L = 3 and 4), the gradient is 0 and L(0) > L_min: a non-strict saddle."""
    task = d.Task.from_spectrum(key, 6, 6, [2.0, 1.0])
    for widths in ((6, 4, 4, 6), SHARED):
        weights = sd.assemble_weights(sd.normal_form(task, ()), sd.zero_residuals(widths, 0))
        assert all(float(jnp.max(jnp.abs(w))) == 0.0 for w in weights)
        assert float(jnp.max(jnp.abs(_hessian(weights, task)))) == 0.0
    cert = _certify(None, weights, task)
    assert int(cert.classification) == sd.NON_STRICT_SADDLE
    assert float(cert.smallest_eigenvalues[0]) == 0.0
    assert float(cert.loss) > float(cert.minimum_loss) + float(cert.loss_tolerance)


def test_lanczos_agrees_with_dense_eigh(key):
    """Block Lanczos (16 blocks of 8 = 128 vectors for P = 240) against dense eigh at a depth-4
    exact saddle and at a generic non-critical point. Interlacing: theta_i >= lambda_i (up to
    rounding); each Ritz value is within its residual norm of an eigenvalue, here the i-th:
    |theta_i - lambda_i| <= r_i + 100 eps ||H||. The class agrees; the Ritz count below -tol is a
    lower bound of the index; the stochastic-Lanczos-quadrature estimates of index and nullity are
    within 5 standard errors (+1) of the dense counts at the saddle."""
    task, saddle = _exact_saddle(key, SHARED, (0, 1), (1, 3))
    generic = d.init_gaussian(jax.random.fold_in(key, 3), SHARED, 1.0)
    for weights in (saddle, generic):
        dense = _certify(None, weights, task)
        lanczos = _certify(jax.random.fold_in(key, 9), weights, task, method="lanczos", num_blocks=16)
        evals = np.asarray(dense.smallest_eigenvalues)
        ritz = np.asarray(lanczos.smallest_eigenvalues)
        residual = np.asarray(lanczos.eigenvalue_residuals)
        floor = 100 * EPS * float(dense.spectral_scale)
        assert np.all(ritz >= evals - floor)
        assert np.all(np.abs(ritz - evals) <= residual + floor)
        assert residual[0] < 1e-6 * float(dense.spectral_scale)
        assert int(lanczos.classification) == int(dense.classification)
        assert float(lanczos.index_lower_bound) <= float(dense.index)
        if weights is saddle:
            assert int(dense.classification) == sd.STRICT_SADDLE
            for name in ("index", "nullity"):
                estimate, exact = float(getattr(lanczos, name)), float(getattr(dense, name))
                error = float(getattr(lanczos, f"{name}_standard_error"))
                assert abs(estimate - exact) <= 5 * error + 1, (name, estimate, exact, error)
    assert int(dense.classification) == sd.NOT_CRITICAL


def test_refine_reaches_a_critical_point_of_the_same_stratum(key):
    """Levenberg-Marquardt on the true gradient from an exact saddle perturbed by 1e-3: ||grad L||
    falls below tol_grad, the loss returns to the stratum level (1e-8) and W stays (numerically)
    of rank r; re-balancing equalises the layer norms without changing the product."""
    task, weights = _exact_saddle(key, SHARED, (0, 1), (2, 4))
    noise = tuple(1e-3 * jax.random.normal(jax.random.fold_in(key, i), w.shape)
                  for i, w in enumerate(weights))
    start = tuple(w + n for w, n in zip(weights, noise, strict=True))
    refine = functools.partial(sd.refine, task=task, num_iterations=20, rebalance_every=5)
    refined, info = jax.jit(refine)(start)
    assert float(info.gradient_norm[-1]) < 1e-3 * float(info.gradient_norm[0])
    cert = _certify(None, refined, task)
    assert float(cert.gradient_norm) <= float(cert.gradient_tolerance)
    assert int(cert.classification) == sd.STRICT_SADDLE
    np.testing.assert_allclose(float(cert.loss), sd.stratum_loss(task, (0, 1)), rtol=1e-8)
    # rank r up to the start's higher-order components (the perturbation enters the product only
    # through products of >= 2 small blocks; LM shrinks flat directions only polynomially)
    s = np.linalg.svd(np.asarray(d.end_to_end(refined)), compute_uv=False)
    assert s[1] > 1.0 and s[2] < 1e-4 * s[0]
    balanced = sd.rebalance(weights)
    norms = [float(jnp.linalg.norm(w)) for w in balanced]
    np.testing.assert_allclose(norms, norms[0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d.end_to_end(balanced)), np.asarray(d.end_to_end(weights)),
                               atol=1e-12)


def test_certify_rejects_bad_input(key):
    task, weights = _exact_saddle(key, (4, 5, 4), (0,), (1, 2))
    with pytest.raises(ValueError, match="method="):
        sd.certify(None, weights, task, method="qr")
    with pytest.raises(ValueError, match="key="):
        sd.certify(None, weights, task, method="lanczos", num_blocks=2)
    with pytest.raises(ValueError, match="num_blocks="):
        sd.certify(key, weights, task, method="lanczos", num_blocks=100)


def test_float32_points_keep_their_dtype_and_looser_tolerances(key):
    """A float32 point is certified in float32, with tolerances scaled by eps_float32
    (``tol_eig = 10 eps sqrt(P) h + sqrt(L) ||grad L|| / ||theta||``); the SGLD step keeps
    float32 positions (blackjax's noise would promote them under x64)."""
    spectrum = [3.0, 2.0, 1.0]
    task = d.Task.from_spectrum(key, 4, 3, spectrum, dtype=jnp.float32)
    form = sd.normal_form(task, (0,))
    weights = sd.assemble_weights(form, sd.zero_residuals((4, 3, 3), 1, dtype=jnp.float32))
    cert = _certify(None, weights, task)
    assert cert.smallest_eigenvalues.dtype == jnp.float32
    assert int(cert.classification) == sd.STRICT_SADDLE
    np.testing.assert_allclose(float(cert.smallest_eigenvalues[0]), -2.0, rtol=1e-5)
    eps32 = float(jnp.finfo(jnp.float32).eps)
    p = 4 * 3 + 3 * 3
    gauge = np.sqrt(2) * float(cert.gradient_norm) / float(d.flatten_weights(weights).astype(jnp.float64)
                                                           @ d.flatten_weights(weights)) ** 0.5
    np.testing.assert_allclose(float(cert.eigenvalue_tolerance),
                               10 * eps32 * np.sqrt(p) * float(cert.spectral_scale) + gauge, rtol=1e-3)
    z = sd.random_residuals(key, (4, 3, 3), 1, dtype=jnp.float32)
    state, info = jax.jit(sd.sgld_step)(key, sd.SamplerState(z, jnp.zeros((), jnp.int32)), form.sigma,
                                        sd.Prior(), jnp.float32(1e-3), jnp.float32(1e-2))
    assert all(x.dtype == jnp.float32 for x in state.position)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_small_negative_curvature_is_a_strict_saddle_in_both_precisions(key, dtype):
    """Teacher spectrum (1, 5e-4), widths (2, 2, 2), mode 1 learned (subset (0,)): the closed form
    (docs/saddles.md §6) has lambda_min = -s_2 = -5e-4 at spectral scale h = 2 with one free hidden
    unit. Certified a strict saddle of index 1 in float32 and float64 (tol_eig = 10 eps sqrt(P) h
    + gauge term, far below 5e-4). The old default tol_eig = sqrt(eps) h (7e-4 in float32) called
    it a minimum: reproduced with eig_rtol = sqrt(eps) / sqrt(P). The true minimum (both modes
    learned) stays a minimum of index 0 with the closed form's nullity in both precisions."""
    spectrum = [1.0, 5e-4]
    widths = (2, 2, 2)
    p = 8
    eps = float(jnp.finfo(dtype).eps)
    task = d.Task.from_spectrum(key, 2, 2, spectrum, dtype=dtype)
    saddle = sd.assemble_weights(sd.normal_form(task, (0,)), sd.zero_residuals(widths, 1, dtype=dtype))
    closed = sd.two_layer_saddle_spectrum(spectrum, (0,), 2, 2, 2)
    assert closed.min() == pytest.approx(-5e-4) and int(np.sum(closed < 0)) == 1
    cert = sd.certify(None, saddle, task)
    assert cert.smallest_eigenvalues.dtype == dtype
    assert int(cert.classification) == sd.STRICT_SADDLE
    assert int(cert.index) == 1
    np.testing.assert_allclose(float(cert.smallest_eigenvalues[0]), -5e-4, rtol=1e-3)
    assert float(cert.eigenvalue_tolerance) < 0.1 * 5e-4
    old = sd.certify(None, saddle, task, tolerances=sd.Tolerances(eig_rtol=np.sqrt(eps) / np.sqrt(p)))
    np.testing.assert_allclose(float(old.eigenvalue_tolerance) - float(cert.eigenvalue_tolerance),
                               (np.sqrt(eps) - 10 * eps * np.sqrt(p)) * float(cert.spectral_scale),
                               rtol=1e-5)
    if dtype == jnp.float32:
        assert int(old.classification) == sd.MINIMUM           # the bug: a strict saddle missed
    minimum = sd.assemble_weights(sd.normal_form(task, (0, 1)), sd.zero_residuals(widths, 2, dtype=dtype))
    closed_min = sd.two_layer_saddle_spectrum(spectrum, (0, 1), 2, 2, 2)
    assert closed_min.min() == 0.0
    cert = sd.certify(None, minimum, task)
    assert int(cert.classification) == sd.MINIMUM
    assert int(cert.index) == 0 and int(cert.nullity) == int(np.sum(closed_min == 0.0))
