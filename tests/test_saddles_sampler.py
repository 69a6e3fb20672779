"""Boltzmann sampler of the residuals (docs/saddles.md "Sampler").

Independent computation: the target ``exp(-beta E(Z)) pi(Z)`` of a three-parameter normal form,
integrated on a grid (numpy). Monte Carlo tolerance: 5 standard errors of the chain ensemble plus
the discretisation bias of the Langevin step, estimated from a run with twice the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import saddles as sd

S_Q = 1.0            # the unlearned singular value: sigma = s_q e_2^T


def _toy():
    """L = 2, d_in = d_out = 2, r = 1, hidden width 2: Z_1 = (a, b), Z_2 = c, and
    E = 0.5 c^2 (a^2 + b^2) + 0.5 c^2 s^2 + 0.5 s^2 b^2 (mu = c Z_1, dmu_1 = c sigma^T,
    dmu_2 = Z_1 sigma^T)."""
    task = d.Task.from_spectrum(None, 2, 2, [2.0, S_Q], left_basis=np.eye(2), right_basis=np.eye(2))
    return task, sd.normal_form(task, (0,))


def _grid_moments(beta, prior: sd.Prior):
    """E[a^2], E[b^2], E[c^2] under exp(-beta E) pi by a 3-D grid quadrature (spacing 0.04 on
    [-4.5, 4.5]^3; the integrand is smooth and negligible at the edge)."""
    x = np.linspace(-4.5, 4.5, 226)
    a, b, c = np.meshgrid(x, x, x, indexing="ij", sparse=True)
    energy = 0.5 * c**2 * (a**2 + b**2) + 0.5 * c**2 * S_Q**2 + 0.5 * S_Q**2 * b**2
    n1, n2 = a**2 + b**2, c**2
    log_prior = -0.5 * prior.weight_decay * (n1 + n2)
    if prior.norm_target > 0:
        rho2 = prior.norm_target ** 2
        log_prior = log_prior - prior.norm_strength / (8 * rho2) * ((n1 - rho2) ** 2 + (n2 - rho2) ** 2)
    w = np.exp(-beta * energy + log_prior)
    total = w.sum()
    return np.array([(w * a**2).sum(), (w * b**2).sum(), (w * c**2).sum()]) / total


def _sample(beta, prior, step_size, num_chains=1000, num_steps=1000):
    _, form = _toy()
    z, info = sd.sample_residuals(jax.random.key(11), form, (2, 2, 2), num_chains=num_chains,
                                  num_steps=num_steps, temperature=1.0 / beta, step_size=step_size,
                                  prior=prior, init_scale=1.2)
    z1, z2 = (np.asarray(x) for x in z)
    samples = np.stack([z1[:, 0, 0] ** 2, z1[:, 0, 1] ** 2, z2[:, 0, 0] ** 2], axis=1)
    return samples, info


def test_toy_energy_is_the_normal_form_energy():
    """The closed form of E used by the grid reference equals constraint_energy."""
    _, form = _toy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b, c = rng.normal(size=3)
        z = (jnp.array([[a, b]]), jnp.array([[c]]))
        closed = 0.5 * c**2 * (a**2 + b**2) + 0.5 * c**2 * S_Q**2 + 0.5 * S_Q**2 * b**2
        np.testing.assert_allclose(float(sd.constraint_energy(z, form.sigma)), closed, rtol=1e-13)


@pytest.mark.parametrize("prior", [sd.Prior(1.0), sd.Prior(0.5, 1.0, 2.0)],
                         ids=["gaussian", "norm-targeting"])
def test_sgld_samples_the_boltzmann_law(prior):
    """Second moments of 1000 independent chains (1000 steps, beta = 10) against the grid
    quadrature of exp(-beta E) pi: within 5 standard errors + |m(2 eps) - m(eps)| (the O(eps) bias
    of the Langevin discretisation). The law with the prior multiplied by beta (a plausible slip)
    is rejected."""
    beta, eps = 10.0, 0.01
    exact = _grid_moments(beta, prior)
    samples, info = _sample(beta, prior, eps)
    coarse, _ = _sample(beta, prior, 2 * eps)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    bias = np.abs(coarse.mean(axis=0) - mean)
    assert np.all(np.abs(mean - exact) <= 5 * se + bias), (mean, exact, se, bias)
    wrong = _grid_moments(beta, sd.Prior(*(beta * np.asarray(x) if i != 1 else x
                                           for i, x in enumerate(prior))))
    assert np.any(np.abs(mean - wrong) > 5 * se + bias)
    assert info.energy.shape == (1000, 1000)
    np.testing.assert_allclose(np.asarray(info.temperature[0, 0]), 1.0 / beta)


def test_quench_lands_on_the_variety_and_chains_are_reproducible(key):
    """A T = 0 quench after sampling is gradient descent on E: E decreases monotonically, here by
    more than 10x (slowly near the singular variety, hence the true-loss refinement); chain c does not
    depend on how many chains run (keys fold_in(key, c)); same key, same result."""
    _, form = _toy()
    widths = (2, 2, 2)
    options = dict(num_steps=300, temperature=0.05, step_size=1e-2, prior=sd.Prior(1.0, 1.0, 1.0))
    z, info = sd.sample_residuals(key, form, widths, num_chains=4, quench_steps=600, **options)
    energy = np.asarray(info.energy)
    assert np.all(np.isfinite(energy))
    quench = energy[300:]
    assert np.all(np.diff(quench, axis=0) <= 1e-12 * quench[:-1])        # descent at T = 0
    assert np.all(quench[-1] < 0.1 * energy[299])
    z2, _ = sd.sample_residuals(key, form, widths, num_chains=2, quench_steps=600, **options)
    for a, b in zip(z, z2, strict=True):
        np.testing.assert_array_equal(np.asarray(a[:2]), np.asarray(b))


def test_prior_formula_and_schedule():
    z = (jnp.array([[3.0, 4.0]]), jnp.array([[1.0], [0.0]]))              # norms^2: 25 and 1
    prior = sd.Prior(0.5, 2.0, 3.0)
    expected = 0.25 * 26 + 3.0 / 32 * ((25 - 4) ** 2 + (1 - 4) ** 2)
    np.testing.assert_allclose(float(sd.negative_log_prior(z, prior)), expected, rtol=1e-14)
    np.testing.assert_allclose(float(sd.negative_log_prior(z, sd.Prior(1.0))), 13.0, rtol=1e-14)
    np.testing.assert_allclose(float(sd.step_size_schedule(10.0, 0.1, 0.5, 10.0)), 0.1 / np.sqrt(2))
    # Z = 0 is a maximum of the norm-targeting prior: the Hessian of -log pi there is negative
    hess = jax.jit(jax.hessian(lambda v: sd.negative_log_prior((v.reshape(1, 2),), sd.Prior(0.0, 1.0, 1.0))))(
        jnp.zeros(2))
    assert np.all(np.linalg.eigvalsh(np.asarray(hess)) < 0)


def test_sampler_rejects_bad_input():
    _, form = _toy()
    base = dict(num_chains=2, num_steps=10, temperature=0.1, step_size=0.01)
    for change, name in [({"num_chains": 0}, "num_chains="), ({"step_size": 0.0}, "step_size="),
                         ({"temperature": -1.0}, "temperature="), ({"quench_steps": -1}, "quench_steps=")]:
        with pytest.raises(ValueError, match=name):
            sd.sample_residuals(jax.random.key(0), form, (2, 2, 2), **{**base, **change})
    with pytest.raises(ValueError, match="widths="):
        sd.sample_residuals(jax.random.key(0), form, (3, 2, 2), **base)
