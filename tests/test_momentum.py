"""SGD with heavy-ball momentum (``dynamics/momentum.py``): the limits that pin it to SGD and
heavy-ball GD, and its stationary variance on a one-dimensional quadratic with noise.

The registry-driven conformance suite (``test_dynamics_conformance.py``) covers its contract
(shapes, vmap, jit without retracing, keys, draw-then-apply); here:

- momentum 0 is plain SGD bit for bit (online, offline with and without replacement), through
  the engine with the same key;
- a full batch without replacement is heavy-ball GD, written here in NumPy (float64);
- the stationary variance of ``w`` for depth 1, ``d = 1`` (``L(w) = E (w x - y)^2 / 2`` with
  ``x ~ N(0, 1)``, ``y = s x + eps``) against the exact second-moment recursion of heavy-ball
  SGD (below), with a tolerance from the Monte Carlo standard error over independent runs; the
  additive-noise formula (which ignores the multiplicative noise ``(x^2 - 1) e``) is rejected.

Exact stationary variance. With ``e = w - s``, ``c = mean_i x_i^2`` over the batch and
``A = 1 + mu - eta c``: ``e' = A e - mu e_prev + eta mean_i eps_i x_i``. With ``P = E e^2`` and
``C = E e e_prev``: ``C = E[A] P / (1 + mu)`` and
``P (1 - E[A^2] - mu^2 + 2 mu E[A]^2 / (1 + mu)) = eta^2 sigma^2 / B``, where
``E[A] = 1 + mu - eta`` and ``E[A^2] = (1 + mu)^2 - 2 eta (1 + mu) + eta^2 (1 + 2 / B)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab as d
from conftest import assert_close_mc, assert_rejected_mc
from dlnlab import dynamics as dy
from dlnlab import engine as en

ROOT = jax.random.key(11)


def _weights(runs, widths, seed=0, dtype=jnp.float32):
    keys = en.run_keys(jax.random.key(seed), runs)
    return jax.vmap(lambda k: d.init_gaussian(k, widths, 1.0, dtype=dtype))(keys)


@pytest.mark.parametrize("regime", ["online", "offline_replacement", "offline_epochs"])
def test_momentum_zero_is_sgd_bit_for_bit(regime):
    task = d.Task.from_spectrum(jax.random.key(1), 4, 3, [1.0, 0.5], label_noise=0.3,
                                dtype=jnp.float32)
    replacement = regime != "offline_epochs"
    if regime != "online":
        task = task.with_data(jax.random.key(2), 10)
    sgd = (dy.OnlineSGD(task, batch_size=2) if task.online
           else dy.OfflineSGD(task, batch_size=2, replacement=replacement))
    momentum = dy.MomentumSGD(task, batch_size=2, replacement=replacement)
    weights = _weights(5, (4, 5, 3))
    steps = [0, 1, 7, 40]
    plain = en.simulate(sgd, weights, dy.Hyperparameters(0.05, 2.0), ROOT, steps)
    heavy = en.simulate(momentum, weights, dy.MomentumHyperparameters(0.05, 2.0, 0.0), ROOT, steps)
    for name in ("loss", "amplitude", "cross_amplitude", "singular_value"):
        np.testing.assert_array_equal(plain[name].values, heavy[name].values, err_msg=name)
    # and the momentum matters: mu = 0.5 moves away from SGD
    moved = en.simulate(momentum, weights, dy.MomentumHyperparameters(0.05, 2.0, 0.5), ROOT, steps)
    assert not np.allclose(moved.amplitude.values[:, -1], plain.amplitude.values[:, -1])


def test_full_batch_momentum_is_heavy_ball_gd():
    """B = n without replacement: every step uses the whole data set, so the method is
    ``v <- mu v - eta grad L_n``, ``w <- w + v`` (NumPy, float64, per-run learning rates and
    momenta), up to the summation order of the batch."""
    jax.config.update("jax_enable_x64", True)
    n, widths = 6, (3, 4, 2)
    task = d.Task.from_spectrum(jax.random.key(1), 3, 2, [1.0, 0.5], label_noise=0.3,
                                dtype=jnp.float64).with_data(jax.random.key(2), n)
    stepper = dy.MomentumSGD(task, batch_size=n, replacement=False)
    runs, num_steps = 3, 25
    lrs, mus = np.array([0.1, 0.05, 0.2]), np.array([0.5, 0.9, 0.0])
    weights = _weights(runs, widths, dtype=jnp.float64)
    state = en.initial_state(stepper, weights)
    hp = dy.MomentumHyperparameters(jnp.asarray(lrs), float(n), jnp.asarray(mus))
    step = jax.jit(lambda st: stepper.step(en.run_keys(ROOT, runs), st, hp)[0])
    for _ in range(num_steps):
        state = step(state)
    x, y = (np.asarray(a, dtype=np.float64) for a in task.data)
    for r in range(runs):
        ws = [np.asarray(w[r], dtype=np.float64) for w in weights]
        vel = [np.zeros_like(w) for w in ws]
        for _ in range(num_steps):
            grads = _full_batch_gradient(ws, x, y)
            vel = [mus[r] * v - lrs[r] * g for v, g in zip(vel, grads, strict=True)]
            ws = [w + v for w, v in zip(ws, vel, strict=True)]
        for got, want in zip(state.weights, ws, strict=True):
            np.testing.assert_allclose(np.asarray(got)[..., r], want, rtol=0,
                                       atol=1e-12 * np.abs(want).max())
        # and it is not plain GD: the velocity matters when mu > 0
        if mus[r] > 0:
            plain = [np.asarray(w[r], dtype=np.float64) for w in weights]
            for _ in range(num_steps):
                plain = [w - lrs[r] * g for w, g in
                         zip(plain, _full_batch_gradient(plain, x, y), strict=True)]
            assert not np.allclose(plain[0], ws[0])


def _full_batch_gradient(ws, x, y):
    """Gradient of ``mean_i |W_L ... W_1 x_i - y_i|^2 / 2`` by hand (backpropagation)."""
    acts = [x.T]                                               # (d_in, n)
    for w in ws[:-1]:
        acts.append(w @ acts[-1])
    err = (ws[-1] @ acts[-1] - y.T) / x.shape[0]
    grads = [None] * len(ws)
    for index in range(len(ws) - 1, -1, -1):
        grads[index] = err @ acts[index].T
        err = ws[index].T @ err
    return grads


def heavy_ball_variance(learning_rate, momentum, batch_size, label_noise):
    """Exact stationary ``E (w - s)^2`` of heavy-ball SGD on the 1-D problem (module docstring)."""
    eta, mu, b, sigma2 = learning_rate, momentum, batch_size, label_noise**2
    mean_a = 1 + mu - eta
    mean_a2 = (1 + mu) ** 2 - 2 * eta * (1 + mu) + eta**2 * (1 + 2 / b)
    return eta**2 * sigma2 / b / (1 - mean_a2 - mu**2 + 2 * mu * mean_a**2 / (1 + mu))


def additive_noise_variance(learning_rate, momentum, batch_size, label_noise):
    """The textbook formula for a quadratic with additive noise of variance ``sigma^2 / B``
    (curvature 1): ``eta sigma^2 (1 + mu) / (B (1 - mu) (2 (1 + mu) - eta))`` -- wrong here."""
    eta, mu = learning_rate, momentum
    return eta * label_noise**2 * (1 + mu) / (batch_size * (1 - mu) * (2 * (1 + mu) - eta))


@pytest.mark.parametrize("momentum,batch_size", [(0.5, 1), (0.8, 2), (0.0, 1)])
def test_stationary_variance_on_a_quadratic_matches_the_exact_recursion(momentum, batch_size):
    jax.config.update("jax_enable_x64", True)
    eta, sigma, runs = 0.1, 1.0, 1024
    task = d.Task.from_spectrum(jax.random.key(3), 1, 1, [1.0], label_noise=sigma,
                                dtype=jnp.float64)
    teacher = float(np.asarray(task.teacher)[0, 0])                 # +-1
    weights = (jnp.full((runs, 1, 1), teacher, jnp.float64),)      # start at the minimum
    burn, every, num_steps = 500, 10, 20_500
    steps = np.arange(burn, num_steps + 1, every)
    ds = en.simulate(dy.MomentumSGD(task, batch_size=batch_size), weights,
                     dy.MomentumHyperparameters(eta, float(batch_size), momentum), ROOT,
                     en.Recording(steps, observables=["amplitude"]))
    # d = 1: the mode amplitude u w v is w in the teacher's sign convention, s = 1
    # (not the singular value |w|: w < 0 happens at this noise and |w| would fold it)
    e = ds.amplitude.isel(mode=0).values - 1.0                            # (runs, time)
    per_run = np.mean(e**2, axis=1)                                        # independent runs
    estimate, se = per_run.mean(), per_run.std(ddof=1) / np.sqrt(runs)
    exact = heavy_ball_variance(eta, momentum, batch_size, sigma)
    assert_close_mc(estimate, exact, se, what=f"mu={momentum}, B={batch_size}")
    assert_rejected_mc(estimate, additive_noise_variance(eta, momentum, batch_size, sigma), se,
                       what="additive-noise formula")
