"""Normal form and constraint energy (docs/saddles.md "Normal form", "Energy").

Independent computations: the true population gradient (``dlnlab.gradient``, the analytic
``A_l^T D B_l^T``) at the assembled weights, the end-to-end product, central differences.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from dlnlab import saddles as sd

SPECTRUM = [3.0, 2.0, 1.5, 1.0]


def _task(key, d_in=5, d_out=4):
    return d.Task.from_spectrum(key, d_in, d_out, SPECTRUM[:min(d_in, d_out)])


@jax.jit
def _grad_sq_jit(weights, task):
    return sum(jnp.sum(g * g) for g in d.gradient(weights, task))


def _grad_sq(weights, task):
    """||grad L||_F^2 of the true population loss (the analytic A_l^T D B_l^T)."""
    return float(_grad_sq_jit(weights, task))


_product = jax.jit(d.end_to_end)


CASES = [  # (widths, subset): depth 2 and 4, non-square teacher, a narrow (r + 1) hidden layer
    ((5, 6, 4), (1,)),
    ((5, 4, 3, 5, 4), (0, 2)),
]


@pytest.mark.parametrize("widths, subset", CASES)
def test_normal_form_product_and_energy_gradient_equivalence(key, widths, subset):
    """(1) W = W_L ... W_1 = P_S M + U_Q mu(Z) with the normal-form shapes;
    (2) on the fibre mu = 0: ||grad L||^2 = 2 E(Z) exactly, so E = 0 <=> grad L = 0 (both ways):
    feasible Z (two zero blocks, every pair) give E = 0 and grad L = 0; infeasible Z with mu = 0
    (one zero block, so a cyclic product survives) give equal non-zero values;
    (3) generic Z (no zero block): E > 0 and grad L != 0.
    The gradient is the true one (analytic A_l^T D B_l^T); tolerance: 1e-12 relative (float64).
    """
    task = _task(key)
    form = sd.normal_form(task, subset)
    r = len(subset)
    depth = len(widths) - 1
    z = sd.random_residuals(jax.random.fold_in(key, 1), widths, r)
    weights = sd.assemble_weights(form, z)
    assert d.layer_widths(weights) == widths
    u = np.asarray(task.left)[:, list(subset)]
    mu, _ = sd.constraint_residuals(z, form.sigma)
    expected = u @ u.T @ np.asarray(task.teacher) + np.asarray(form.complement) @ np.asarray(mu)
    np.testing.assert_allclose(np.asarray(_product(weights)), expected, atol=1e-12)
    q = np.asarray(form.complement)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-13)
    np.testing.assert_allclose(q.T @ u, 0.0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(form.sigma), q.T @ np.asarray(task.teacher), atol=1e-13)
    # (3) generic residuals: neither vanishes
    assert float(sd.constraint_energy(z, form.sigma)) > 1e-3
    assert _grad_sq(weights, task) > 1e-3
    # (2) feasible: every pair of zero blocks
    for i, pair in enumerate(itertools.combinations(range(1, depth + 1), 2)):
        zf = sd.exact_residuals(jax.random.fold_in(key, 10 + i), widths, r, pair)
        assert float(sd.constraint_energy(zf, form.sigma)) == 0.0
        assert _grad_sq(sd.assemble_weights(form, zf), task) < 1e-26
    # (2) on the fibre but infeasible: one zero block
    checked = 0
    for zero in range(1, depth + 1):
        zi = tuple(jnp.zeros_like(x) if l == zero else x for l, x in enumerate(z, start=1))
        mu, _ = sd.constraint_residuals(zi, form.sigma)
        assert float(jnp.max(jnp.abs(mu))) == 0.0
        energy = float(sd.constraint_energy(zi, form.sigma))
        np.testing.assert_allclose(_grad_sq(sd.assemble_weights(form, zi), task), 2.0 * energy,
                                   rtol=1e-12, atol=1e-28)
        checked += energy > 1e-6
    assert checked >= 1, "no infeasible point with mu = 0 was tested"


def test_critical_point_of_a_larger_stratum_has_positive_energy():
    """grad L = 0 does not imply E = 0 when mu != 0: residuals that learn an extra mode q give a
    critical point of rank r + 1 (W = P_{S+q} M) with E = 0.5 ||mu||^2 + ... > 0. The energy
    characterises the rank-r stratum: E = 0 <=> (grad L = 0 and rank W = r)."""
    task = d.Task.from_spectrum(None, 3, 3, [3.0, 2.0, 1.0], left_basis=np.eye(3), right_basis=np.eye(3))
    form = sd.normal_form(task, (0,))                       # U_Q = [u_2, u_3]: sigma = diag(2, 1) rows
    s_q = 2.0
    z1 = jnp.zeros((1, 3)).at[0, 1].set(np.sqrt(s_q))       # reads v_2
    z2 = jnp.zeros((2, 1)).at[0, 0].set(np.sqrt(s_q))       # writes u_2 (first column of U_Q)
    weights = sd.assemble_weights(form, (z1, z2))
    assert _grad_sq(weights, task) < 1e-26
    assert np.linalg.matrix_rank(np.asarray(d.end_to_end(weights))) == 2
    assert float(sd.constraint_energy((z1, z2), form.sigma)) > 1.0


def test_energy_gradient_matches_central_differences(key):
    """Autodiff grad E against a central difference along a random direction. E is a polynomial of
    degree 2L in Z, so the error is (h^2 / 6) E'''(0) + O(h^4) + rounding eps E / h; with
    h = 1e-5 and E, E''' = O(10) that is below 1e-8 relative."""
    task = _task(key)
    widths, subset = CASES[0]
    form = sd.normal_form(task, subset)
    z = sd.random_residuals(key, widths, len(subset), scale=0.7)
    direction = sd.random_residuals(jax.random.fold_in(key, 1), widths, len(subset))
    h = 1e-5
    plus = tuple(x + h * u for x, u in zip(z, direction, strict=True))
    minus = tuple(x - h * u for x, u in zip(z, direction, strict=True))
    fd = (sd.constraint_energy(plus, form.sigma) - sd.constraint_energy(minus, form.sigma)) / (2 * h)
    grads = sd.energy_gradient(z, form.sigma)
    exact = sum(jnp.sum(g * u) for g, u in zip(grads, direction, strict=True))
    np.testing.assert_allclose(float(fd), float(exact), rtol=1e-8)


def test_stratum_loss_is_the_loss_of_every_exact_point(key):
    task = d.Task.from_spectrum(key, 4, 4, [3.0, 2.0, 1.0, 0.5], label_noise=0.3)
    for subset in [(1, 3)]:
        form = sd.normal_form(task, subset)
        z = sd.exact_residuals(key, (4, 5, 5, 4), len(subset), (1, 3))
        loss = float(jax.jit(d.population_loss)(sd.assemble_weights(form, z), task))
        rest = [a for a in range(4) if a not in subset]
        expected = 0.5 * sum(np.asarray(task.spectrum)[rest] ** 2) + 0.5 * 4 * 0.3 ** 2
        np.testing.assert_allclose(loss, expected, rtol=1e-12)
        np.testing.assert_allclose(sd.stratum_loss(task, subset), expected, rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda t: sd.normal_form(t, (0, 0)), "subset="),
    (lambda t: sd.normal_form(t, (7,)), "subset="),
    (lambda t: sd.residual_shapes((4, 1, 4), 2), "widths="),
    (lambda t: sd.residual_shapes((4, 4), 1), "widths="),
    (lambda t: sd.exact_residuals(jax.random.key(0), (4, 5, 4), 1, (1, 1)), "zero_layers="),
    (lambda t: sd.normal_form(t.replace(input_covariance=jnp.eye(4), input_sqrt=jnp.eye(4)), (0,)),
     "task.input_covariance="),
])
def test_bad_input_fails_with_one_line(key, call, message):
    task = d.Task.from_spectrum(key, 4, 4, [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=message):
        call(task)


def test_subset_of_a_zero_singular_value_is_rejected(key):
    task = d.Task.from_spectrum(key, 4, 4, [3.0, 2.0])
    with pytest.raises(ValueError, match="non-zero singular values"):
        sd.normal_form(task, (2,))
