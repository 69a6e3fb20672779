"""Task construction (docs/theory.md §1) and initialisations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from conftest import assert_close_mc


@pytest.mark.parametrize("d_in,d_out,spectrum", [
    (12, 12, [1.0, 2 / 3, 1 / 3]),         # the paper's task
    (7, 4, [2.0, 2.0, 0.5]),               # degenerate (repeated) values, non-square
    (3, 6, [1.0, 0.9, 0.8]),               # full rank min(d_in, d_out)
])
def test_teacher_from_spectrum(key, d_in, d_out, spectrum):
    task = d.Task.from_spectrum(key, d_in, d_out, spectrum)
    r = min(d_in, d_out)
    u, v, s = (np.asarray(x) for x in (task.left, task.right, task.spectrum))
    np.testing.assert_allclose(u.T @ u, np.eye(r), atol=1e-13)
    np.testing.assert_allclose(v.T @ v, np.eye(r), atol=1e-13)
    np.testing.assert_allclose(s, np.concatenate([spectrum, np.zeros(r - len(spectrum))]))
    np.testing.assert_allclose(task.teacher, (u * s) @ v.T, atol=1e-14)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(task.teacher), compute_uv=False), s, atol=1e-13)
    # Mode amplitudes of the teacher itself are its singular values.
    np.testing.assert_allclose(np.einsum("oa,oi,ia->a", u, np.asarray(task.teacher), v), s, atol=1e-13)


def test_explicit_teacher_and_given_bases(key):
    m = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    task = d.Task(teacher=m, label_noise=0.1)
    np.testing.assert_allclose(task.spectrum, [3.0, 2.0])
    np.testing.assert_allclose(d.mode_amplitudes((jnp.asarray(m),), task), [3.0, 2.0], atol=1e-14)
    u = np.eye(4)[:, ::-1]
    v = np.eye(3)
    given = d.Task.from_spectrum(None, 3, 4, [1.0, 0.5], left_basis=u, right_basis=v)
    np.testing.assert_allclose(given.teacher, (u[:, :3] * [1.0, 0.5, 0.0]) @ v.T)


def test_spectrum_helpers():
    np.testing.assert_allclose(d.arithmetic_spectrum(3), [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(d.power_law_spectrum(4, 2.0, 1.0), [2.0, 1.0, 2 / 3, 0.5])


def test_same_key_same_teacher_in_either_precision(key):
    """Bases are drawn in float32 and re-orthonormalised in float64: one key, one teacher."""
    t64 = d.Task.from_spectrum(key, 6, 5, [1.0, 0.5])
    t32 = d.Task.from_spectrum(key, 6, 5, [1.0, 0.5], dtype=jnp.float32)
    assert t32.teacher.dtype == jnp.float32 and t64.teacher.dtype == jnp.float64
    np.testing.assert_allclose(t32.teacher, t64.teacher, atol=1e-6)


def test_data_set_distribution(key):
    """x ~ N(0, S_x), y = M x + eps with Cov(eps) = S_eps (Monte Carlo of the moments)."""
    s_x = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
    s_eps = np.array([[0.3, 0.1], [0.1, 0.2]])
    task = d.Task.from_spectrum(key, 3, 2, [1.0, 0.4], label_noise=s_eps, input_covariance=s_x)
    n = 200_000
    data = task.with_data(jax.random.fold_in(key, 1), n).data
    x, y = (np.asarray(a) for a in data)
    eps = y - x @ np.asarray(task.teacher).T
    for sample, cov, name in ((x, s_x, "S_x"), (eps, s_eps, "S_eps")):
        prods = sample[:, :, None] * sample[:, None, :]
        assert_close_mc(prods.mean(0), cov, prods.std(0) / np.sqrt(n), what=name)
    cross = (x[:, :, None] * eps[:, None, :])
    assert_close_mc(cross.mean(0), 0.0, cross.std(0) / np.sqrt(n), what="x independent of eps")


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_gaussian_init_variance_is_fan_in_power(key, gamma):
    widths = (40, 30, 20)
    weights = d.init_gaussian(key, widths, gamma)
    for w, fan_in in zip(weights, widths[:-1], strict=True):
        x = np.asarray(w).ravel() ** 2
        assert_close_mc(x.mean(), fan_in ** (-gamma), x.std() / np.sqrt(x.size), what="variance")
    assert [w.shape for w in weights] == [(30, 40), (20, 30)]


def test_balanced_init_is_balanced_with_the_gaussian_product(key):
    widths = (6, 8, 5, 7, 4)
    balanced = d.init_balanced(key, widths, 1.5)
    for w_l, w_next in zip(balanced[:-1], balanced[1:], strict=True):
        np.testing.assert_allclose(w_next.T @ w_next, w_l @ w_l.T, atol=1e-12)
    gaussian = d.init_gaussian(jax.random.split(key)[0], widths, 1.5, dtype=jnp.float32)
    np.testing.assert_allclose(d.end_to_end(balanced), d.end_to_end(gaussian), rtol=1e-4,
                               atol=1e-6 * float(jnp.abs(d.end_to_end(balanced)).max()))
    # The Gaussian init itself is far from balanced: the comparison is meaningful.
    w1, w2 = gaussian[:2]
    assert float(jnp.linalg.norm(w2.T @ w2 - w1 @ w1.T)) > 0.1 * float(jnp.linalg.norm(w1 @ w1.T))


def test_balanced_factorization_rejects_too_high_rank(key):
    with pytest.raises(ValueError, match="end_to_end_map.*rank exceeds the narrowest width 2"):
        d.balanced_factorization(key, np.eye(4), (4, 2, 4))


def test_partial_products_identities(key):
    weights = d.init_gaussian(key, (3, 5, 4, 2), 1.0)
    lefts, rights = d.partial_products(weights)
    w = d.end_to_end(weights)
    for a, wl, b in zip(lefts, weights, rights, strict=True):
        np.testing.assert_allclose(a @ wl @ b, w, atol=1e-13)
    theta = d.flatten_weights(weights)
    assert theta.shape == (d.num_parameters(weights),)
    for x, y in zip(d.unflatten_weights(theta, d.layer_widths(weights)), weights, strict=True):
        np.testing.assert_array_equal(x, y)
    # Column stacking: the first entries of theta are the first column of W_1.
    np.testing.assert_array_equal(theta[:5], weights[0][:, 0])
