"""Escape experiments (docs/saddles.md "Escape").

Independent computations: the exact one-dimensional reduction of GD near the depth-2 strict saddle
(``L = L* - s xi^2 / 2 + xi^4 / 8`` along the invariant direction), the linearised escape time with a
derived bound on its nonlinear correction, and the linear growth rate ``log(1 + eta |lambda|)``
between two start amplitudes at a depth-3 saddle.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import saddles as sd

SPECTRUM = (3.0, 2.0, 1.0)


def _depth_two_saddle():
    """W = P_S M with S = {0} at widths (3, 2, 3): one free hidden unit h = 1 (0-based), teacher
    with identity bases; unit eigenvector of lambda = -s_2 = -2: (e_h v_2^T, u_2 e_h^T) / sqrt 2."""
    task = d.Task.from_spectrum(None, 3, 3, SPECTRUM, left_basis=np.eye(3), right_basis=np.eye(3))
    form = sd.normal_form(task, (0,))
    weights = sd.assemble_weights(form, sd.zero_residuals((3, 2, 3), 1))
    v1 = jnp.zeros((2, 3)).at[1, 1].set(1.0)
    v2 = jnp.zeros((3, 2)).at[1, 1].set(1.0)
    direction = (v1 / math.sqrt(2), v2 / math.sqrt(2))
    return task, weights, direction


def _stack(weights):
    return tuple(w[None] for w in weights)


def _flat(direction):
    return jnp.concatenate([u.T.reshape(-1) for u in direction])[None]


# shared by the depth-2 escape calls, so that each method compiles once
RUNS = dict(num_steps=2000, num_runs=2)


def test_gd_escape_matches_the_exact_reduction_and_the_linearisation():
    """Along u = (e_h v_q^T, u_q e_h^T)/sqrt 2 the network stays on a line (W = P_S M + x^2 u_q v_q^T,
    xi = sqrt 2 x), where L = L* - s xi^2 / 2 + xi^4 / 8 and GD is xi <- xi + eta (s xi - xi^3 / 2):
    the full-network escape step must equal that scalar map's exactly. The linearised time
    t_lin = eta log(2 delta / (s rho^2)) / (2 log(1 + eta s)) is a lower bound; the quartic terms
    delay escape by at most (D1 + D2) / log(1 + eta s) steps with D1 = eta xi_e^2 / (2 (1 + eta s)
    (1 - (1 + eta s)^-2)) (slower growth) and D2 = xi_e^2 / (8 s) (the threshold needs a larger
    xi), xi_e^2 = 2 delta / s; we allow twice that plus one step."""
    task, weights, direction = _depth_two_saddle()
    s, eta, rho, fraction = SPECTRUM[1], 0.01, 1e-6, 1e-3
    hv = sd.hessian_vector_product(weights, task, direction)
    for h, u in zip(hv, direction, strict=True):                       # u is an eigenvector of -s
        np.testing.assert_allclose(np.asarray(h), -s * np.asarray(u), atol=1e-13)
    times, _ = sd.escape_times(jax.random.key(0), _stack(weights), task, method="gd", learning_rate=eta,
                               perturbation=rho, drop_fraction=fraction, directions=_flat(direction),
                               **RUNS)
    assert times[0, 0] == times[0, 1]                                     # GD is deterministic
    loss = float(d.population_loss(weights, task))
    delta = fraction * (loss - float(sd.minimum_loss(task, (3, 2, 3))))
    xi, step = rho, 0
    while -s * xi**2 / 2 + xi**4 / 8 > -delta:
        xi, step = xi + eta * (s * xi - xi**3 / 2), step + 1
    np.testing.assert_allclose(times[0, 0], step * eta, rtol=1e-12)
    t_lin = float(sd.linearised_escape_time(-s, rho, delta, eta))
    growth = math.log1p(eta * s)
    xi_e2 = 2 * delta / s
    delay = (eta * xi_e2 / (2 * (1 + eta * s) * (1 - (1 + eta * s) ** -2)) + xi_e2 / (8 * s)) / growth
    assert t_lin <= times[0, 0] <= t_lin + eta * (1 + 2 * delay)


def test_gd_escape_time_grows_by_the_linear_rate_between_amplitudes(key):
    """At a depth-3 exact saddle, GD started along the bottom eigenvector at rho_1 and rho_2 escapes
    log(rho_1 / rho_2) / log(1 + eta |lambda|) steps apart: the run from rho_2 passes amplitude rho_1
    on the same linear path (deviations O(rho_1)), so only the step quantisation (+-1) remains."""
    task = d.Task.from_spectrum(key, 3, 3, SPECTRUM)
    form = sd.normal_form(task, (0,))
    z = sd.exact_residuals(jax.random.fold_in(key, 1), (3, 4, 4, 3), 1, (1, 3))
    weights = sd.assemble_weights(form, z)
    cert = sd.certify(None, weights, task)
    lam = float(cert.smallest_eigenvalues[0])
    assert int(cert.classification) == sd.STRICT_SADDLE and lam < -0.1
    eta, rho_1, rho_2 = 0.02, 1e-5, 1e-8
    stacked = tuple(jnp.stack([w, w]) for w in weights)
    directions = jnp.stack([cert.bottom_eigenvector] * 2)
    steps = []
    for rho in (rho_1, rho_2):
        t, _ = sd.escape_times(key, stacked, task, method="gd", learning_rate=eta, num_steps=3000,
                               perturbation=rho, drop_fraction=0.05, directions=directions)
        steps.append(t[0, 0] / eta)
    expected = math.log(rho_1 / rho_2) / math.log1p(eta * abs(lam))
    assert abs((steps[1] - steps[0]) - expected) <= 1.0 + 1e-9, (steps, expected)


def test_sgd_noise_escapes_where_gd_stays(key):
    """Unperturbed exact saddle W = P_S M with S = {1} at widths (3, 2, 3): the signal unit carries
    the smaller mode, so its block [[1, -s_1], [-s_1, s_2^2]] is unstable, and there the noise
    A_l^T R B_l^T acts (it vanishes on the free unit). GD never moves (grad L = 0, no escape:
    NaN), while the SGD gradient noise (non-zero since D != 0) and the anisotropic SDE escape. Same
    key, same times (reproducible). With B -> infinity the SDE is GD with step h (noise scale
    sqrt(h eta / B))."""
    task, _, _ = _depth_two_saddle()
    swapped = sd.assemble_weights(sd.normal_form(task, (1,)), sd.zero_residuals((3, 2, 3), 1))
    # free unit h = 1 and the unlearned mode 0: eigenvector of -s_0 = -3
    direction = (jnp.zeros((2, 3)).at[1, 0].set(1.0) / math.sqrt(2),
                 jnp.zeros((3, 2)).at[0, 1].set(1.0) / math.sqrt(2))
    assert sd.two_layer_saddle_spectrum(SPECTRUM, (1,), 3, 3, 1)[0] < -0.5   # the signal block alone
    stacked = _stack(swapped)
    common = dict(learning_rate=0.05, perturbation=0.0, drop_fraction=0.1, directions=_flat(direction),
                  **RUNS)
    gd, _ = sd.escape_times(key, stacked, task, method="gd", **common)
    assert np.all(np.isnan(gd))
    for method in ("sgd", "sde"):
        times, final = sd.escape_times(key, stacked, task, method=method, **common)
        assert np.all(np.isfinite(times)) and times.shape == (1, 2)
        again, _ = sd.escape_times(key, stacked, task, method=method, **common)
        np.testing.assert_array_equal(times, again)
        assert np.all(final < float(d.population_loss(swapped, task)))
    # B = 2^62: the SDE noise sqrt(h eta / B) xi ~ 1e-11 is negligible next to the start offset
    # 1e-3 along the free unit's eigenvector (which the noise does not reach at linear order): the
    # SDE escapes at GD's steps
    options = {**common, "perturbation": 1e-3}
    gd, _ = sd.escape_times(key, stacked, task, method="gd", **options)
    sde, _ = sd.escape_times(key, stacked, task, method="sde", batch_size=2**62, **options)
    assert np.all(np.isfinite(gd))
    np.testing.assert_array_equal(gd, sde)


def test_escape_rejects_bad_input(key):
    task, weights, _ = _depth_two_saddle()
    with pytest.raises(ValueError, match="method="):
        sd.escape_times(key, _stack(weights), task, method="adam", learning_rate=0.1, num_steps=10)
    with pytest.raises(ValueError, match="drop_fraction="):
        sd.escape_times(key, _stack(weights), task, method="gd", learning_rate=0.1, num_steps=10,
                        drop_fraction=2.0)
    with pytest.raises(ValueError, match="directions.shape="):
        sd.escape_times(key, _stack(weights), task, method="gd", learning_rate=0.1, num_steps=10,
                        directions=jnp.ones((1, 3)))
