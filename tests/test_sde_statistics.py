"""Statistics of the simulated dynamics against theory (docs/theory.md §6, §9, §10)
and the convergence orders of Euler-Maruyama.

Every comparison is within ``K_SIGMA`` Monte Carlo standard errors estimated from the same
samples (independent runs; time averages per run where a run is sampled repeatedly), and each
test also checks that a deliberately wrong model falls outside the same band. Ensembles compared
with each other use different root keys, so they are independent (the engine gives every method
the same counter-based stream for a given key: a reduced SDE and a full SDE with one key would
share normals).

Sample sizes and horizons are chosen so that the known model errors stay below the Monte Carlo
resolution; each test's docstring gives the size of the model error it tolerates.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import dlnlab as d
from conftest import K_SIGMA, assert_close_mc, assert_rejected_mc, check_covariance_mc
from dlnlab import dynamics as dy
from dlnlab import engine as en
from dlnlab import theory as th


def broadcast_runs(weights, runs):
    """The same single-run weights for every run: ``(runs, d_l, d_{l-1})``."""
    return tuple(jnp.broadcast_to(jnp.asarray(w), (runs,) + jnp.shape(w)) for w in weights)


def moments(samples):
    """Mean and variance over axis 0 (independent runs) with their standard errors."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    mean, var = x.mean(0), x.var(0, ddof=1)
    se_mean = x.std(0, ddof=1) / math.sqrt(n)
    se_var = np.sqrt((((x - mean) ** 2 - var) ** 2).mean(0) / n)
    return mean, var, se_mean, se_var


@jax.jit
def _advance(stepper, keys, state, hparams, num_steps):
    """``num_steps`` (traced) steps of every run, runs on the trailing axes (the engine's
    layout, without its observers: used where raw weights or many configurations are needed)."""
    return jax.lax.fori_loop(0, num_steps, lambda _, s: stepper.step(keys, s, hparams)[0], state)


def weights_at(stepper, weights_lead, hparams, key, steps):
    """Runs-minor states at the increasing ``steps``; run ``i`` uses the engine's key
    ``fold_in(key, i)``. Returns a list of weight tuples with the run axis first."""
    num_runs = weights_lead[0].shape[0]
    keys = en.run_keys(key, num_runs)
    state = stepper.init(tuple(jnp.moveaxis(w, 0, -1) for w in weights_lead))
    out, position = [], 0
    for s in steps:
        state = _advance(stepper, keys, state, hparams, jnp.int32(s - position))
        position = s
        out.append(tuple(np.moveaxis(np.asarray(w), -1, 0) for w in state.weights))
    return out


def flatten_runs(weights):
    """``(runs, P)``: column-stacked ``theta`` per run (``core.products.flatten_weights``)."""
    return np.concatenate([np.swapaxes(w, 1, 2).reshape(w.shape[0], -1) for w in weights], axis=1)


# ---------------------------------------------------------------------------- §10.6
def test_reduced_sde_matches_the_full_sde_from_an_aligned_balanced_start():
    """docs/theory.md §6. From an aligned, balanced state (``init_aligned``), the reduced SDE (§6,
    coupled) and the full anisotropic SDE (EM, same ``h``) have the same ensemble mean and
    variance of the mode amplitudes at t = 0.25 and 0.5 (4000 runs each, L = 2, s = (1, 0.5),
    sigma = 0.5, eta = 0.1). A reduced SDE with the diffusion (and Ito drift) doubled, i.e.
    ``eta -> 2 eta`` in its noise, is rejected.

    The reduced SDE is exact at t = 0 and a closure afterwards (the full SDE leaves the aligned,
    balanced manifold at rate O(eta)): at t = 1 the gap in the mean of mode 2 is 0.0075 (9 SE at
    16000 runs), growing like t^1.6; at t <= 0.5 it is below 1 SE of these ensembles."""
    task = d.Task.from_spectrum(jax.random.key(1), 2, 2, (1.0, 0.5), label_noise=0.5)
    a0, runs, eta, h = np.array([0.2, 0.1]), 4000, 0.1, 0.01
    steps = [0, 10, 20, 30]
    hp = dy.StepSizeHyperparameters(eta, 1.0, step_size=h)
    full = en.simulate(dy.AnisotropicLangevin(task),
                       broadcast_runs(d.init_aligned(task, a0, (2, 2, 2)), runs), hp,
                       jax.random.key(10), steps)
    reduced_sde = dy.ReducedSDE(task, depth=2, coupled=True)
    start = (jnp.broadcast_to(jnp.asarray(a0), (runs, 2)),)
    reduced = en.simulate(reduced_sde, start, hp, jax.random.key(11), steps)
    doubled = en.simulate(reduced_sde, start, hp._replace(learning_rate=2 * eta),
                          jax.random.key(11), steps)
    assert np.all(full.status == "ok") and np.all(reduced.status == "ok")
    np.testing.assert_allclose(full.amplitude.isel(time=0), np.broadcast_to(a0, (runs, 2)),
                               rtol=1e-12)
    np.testing.assert_allclose(full.time, reduced.time)
    mf, vf, smf, svf = moments(full.amplitude.isel(time=slice(1, None)))
    mr, vr, smr, svr = moments(reduced.amplitude.isel(time=slice(1, None)))
    _, vd, _, svd = moments(doubled.amplitude.isel(time=slice(1, None)))
    assert_close_mc(mf, mr, np.hypot(smf, smr), what="mean amplitude, full vs reduced")
    assert_close_mc(vf, vr, np.hypot(svf, svr), what="amplitude variance, full vs reduced")
    assert_rejected_mc(vf, vd, np.hypot(svf, svd), what="reduced SDE with doubled diffusion")


# ---------------------------------------------------------------------------- §10.8
def test_online_sgd_reaches_the_corrected_stationary_law():
    """docs/theory.md §9 (simulation). Online SGD with label noise on a depth-2 scalar network
    (widths 1-1-1, s = 1, sigma = 1, eta/B = 0.02; the paper's example), started balanced at
    a = s: after t = 4 (8 relaxation times) the time-averaged mean and variance of the mode over
    t in [4, 14] agree with the quadrature law of ``theory.stationary.stationary_moments``
    (mean 0.9896, BELOW s), and the paper's mean above s (the zero of the drift, 1.01) is
    rejected (by ~14 SE). Standard errors from the spread of the per-run time averages over
    1000 independent runs (autocorrelation inside a run is thus accounted for).

    Model error tolerated: discrete SGD's variance exceeds the SDE's by the factor
    ``1 / (1 - eta k / 2) ~ 1 + 0.02`` (AR(1) with relaxation rate ``k = L s^(2-2/L) = 2``;
    measured 0.02104 against 0.02062 at 2000 runs), about 2.3 SE of this ensemble: a 4x larger
    ensemble would resolve it. With d > 1 the transverse directions fluctuate too and lower the
    mean (0.979 at widths 2-2-2): the one-mode law describes the scalar network."""
    depth, s, sigma, eta, runs = 2, 1.0, 1.0, 0.02, 1000
    task = d.Task.from_spectrum(jax.random.key(2), 1, 1, (s,), label_noise=sigma)
    start = broadcast_runs(d.init_aligned(task, [s], (1, 1, 1)), runs)
    burn, every, horizon = 200, 25, 700                         # steps: t = 4, 0.5, 14
    steps = [0] + list(range(burn, horizon + 1, every))
    ds = en.simulate(dy.OnlineSGD(task, batch_size=1), start, dy.Hyperparameters(eta),
                     jax.random.key(12), steps)
    assert np.all(ds.status == "ok")
    samples = np.asarray(ds.amplitude)[:, 1:, 0]                # (runs, records)
    theory = th.stationary_moments([s], depth, eta, 1, sigma)
    mean, variance = float(theory.mean[0]), float(theory.variance[0])
    assert mean < s
    run_means = samples.mean(axis=1)
    se = run_means.std(ddof=1) / math.sqrt(runs)
    assert_close_mc(run_means.mean(), mean, se, what="stationary mean")
    assert_rejected_mc(run_means.mean(), float(theory.drift_zero_first_order[0]), se,
                       what="the paper's mean above s")
    run_vars = ((samples - mean) ** 2).mean(axis=1)
    assert_close_mc(run_vars.mean(), variance, run_vars.std(ddof=1) / math.sqrt(runs),
                    what="stationary variance")


# ---------------------------------------------------------------------------- EM orders
def _gls_slope(x, samples):
    """Slope of ``log e`` against ``x`` where ``e_j`` is the mean over paths of ``samples[:, j]``
    (correlated across j: same paths), by generalised least squares with the Monte Carlo
    covariance of ``log e`` (delta method). Returns the slope and its standard error, inflated
    by ``sqrt(chi^2 / dof)`` when the points scatter more than that covariance allows."""
    e = samples.mean(0)
    cov = np.cov(samples, rowvar=False) / samples.shape[0] / np.outer(e, e)
    design = np.stack([np.ones_like(x), x], axis=1)
    inv = np.linalg.inv(cov)
    fisher = np.linalg.inv(design.T @ inv @ design)
    beta = fisher @ design.T @ inv @ np.log(np.abs(e))
    r = np.log(np.abs(e)) - design @ beta
    chi2_dof = float(r @ inv @ r) / (len(x) - 2)
    return beta[1], math.sqrt(fisher[1, 1]) * math.sqrt(max(1.0, chi2_dof))


def _em_levels(task, widths, gamma, eta, horizon, fine_steps, substeps, runs, key):
    """The anisotropic SDE on one Brownian path per run at several step sizes: step
    ``h = m horizon / fine_steps`` with ``path_substeps = m`` sums the same fine increments.
    Returns ``{m: weights at the horizon}`` (m = 1 is the reference)."""
    start = broadcast_runs(d.init_gaussian(jax.random.key(5), widths, gamma), runs)
    out = {}
    for m in (1,) + tuple(substeps):
        stepper = dy.AnisotropicLangevin(task, path_substeps=m)
        hp = dy.StepSizeHyperparameters(eta, 1.0, step_size=m * horizon / fine_steps)
        (out[m],) = weights_at(stepper, start, hp, key, [fine_steps // m])
        assert all(np.all(np.isfinite(w)) for w in out[m])
    return out


def test_euler_maruyama_strong_order_one_half():
    """Strong order 1/2 of EM for the anisotropic SDE (multiplicative noise) on a shared Brownian
    path: L = 2 (widths 2-3-2, small init gamma = 3), eta = 0.1, no label noise (all noise
    multiplicative), t = 0.25, reference h_f = t / 4096, h = 16 .. 256 h_f, 1000 paths. For
    nested Brownian increments ``E|X_h - X_ref|^2 = c (h - h_f)`` at leading order (the coarse
    step's ``(dW^2 - h) / 2`` minus the fine steps' is a sum of ``dW_i dW_j``, i < j, of
    variance ``h (h - h_f) / 2`` per unit time), so the slope of ``log RMS`` against
    ``log(h - h_f)`` is the strong order: 0.5 within K standard errors of the regression, and
    order 1 (additive noise, or Milstein) is rejected. (The drift's O(h) error tilts the slope
    up by ~0.01; with other seeds the slope is 0.500 .. 0.516 at SE 0.007 .. 0.013. Larger
    initial weights give heavy-tailed errors: the noise is cubic in the weights.)"""
    task = d.Task.from_spectrum(jax.random.key(1), 2, 2, (1.0, 0.5))
    horizon, fine = 0.25, 4096
    substeps = (16, 32, 64, 128, 256)
    levels = _em_levels(task, (2, 3, 2), 3.0, 0.1, horizon, fine, substeps, 1000,
                        jax.random.key(13))
    ref = flatten_runs(levels[1])
    squared = np.stack([np.sum((flatten_runs(levels[m]) - ref) ** 2, axis=1) for m in substeps],
                       axis=1)
    h_fine = horizon / fine
    x = np.log(np.array(substeps) * h_fine - h_fine)
    slope, se = _gls_slope(x, squared)
    slope, se = slope / 2, se / 2                     # RMS = sqrt(mean square)
    assert abs(slope - 0.5) <= K_SIGMA * se, f"strong order {slope:.3f} +- {se:.3f}"
    assert abs(slope - 1.0) > K_SIGMA * se, f"order 1 not rejected: {slope:.3f} +- {se:.3f}"


def test_euler_maruyama_weak_order_one():
    """Weak order 1 of EM on a shared Brownian path: the mean amplitude ``E a_1`` of the leading
    mode (a smooth functional) at t = 1, while it grows from a small init (gamma = 3), L = 2,
    eta = 0.05, reference h_f = 1/512, h = 4 .. 64 h_f, 4000 paths. The weak error against the
    reference is ``C (h - h_f)`` at leading order, so the slope of ``log |error|`` against
    ``log(h - h_f)`` is 1 within K standard errors of the regression (correlated points: same
    paths), and order 1/2 is rejected. (With other seeds: 0.98 .. 1.02 at SE 0.01 .. 0.03. The
    second mode, early in its growth, has a weak error too small to resolve for some seeds.)"""
    task = d.Task.from_spectrum(jax.random.key(1), 2, 2, (1.0, 0.5))
    horizon, fine = 1.0, 512
    substeps = (4, 8, 16, 32, 64)
    levels = _em_levels(task, (2, 3, 2), 3.0, 0.05, horizon, fine, substeps, 4000,
                        jax.random.key(14))
    u, v = np.asarray(task.left)[:, 0], np.asarray(task.right)[:, 0]

    def leading_amplitude(weights):
        return np.einsum("o,noi,i->n", u, weights[1] @ weights[0], v)

    ref = leading_amplitude(levels[1])
    diffs = np.stack([leading_amplitude(levels[m]) - ref for m in substeps], axis=1)
    h_fine = horizon / fine
    slope, se = _gls_slope(np.log(np.array(substeps) * h_fine - h_fine), diffs)
    assert abs(slope - 1.0) <= K_SIGMA * se, f"weak order {slope:.3f} +- {se:.3f}"
    assert abs(slope - 0.5) > K_SIGMA * se, f"order 1/2 not rejected: {slope:.3f} +- {se:.3f}"


# ---------------------------------------------------------------------------- SGD vs SDE
def test_sgd_and_the_anisotropic_sde_agree_in_matched_time():
    """Online SGD (B = 1, eta = 0.02) and the anisotropic SDE (EM with h = eta, noise eta / B)
    from the same small initialisation (L = 2, widths 3-4-2, s = (1, 0.5), sigma = 0.3): ensemble
    mean and variance of the mode amplitudes at t = step * eta = 1, 2, 4 (during and after
    learning) agree within standard error (2000 independent runs each). The SDE with its noise
    doubled (eta -> 2 eta in the noise only) is rejected.

    With h = eta, EM's increments have SGD's mean and covariance exactly; they differ in higher
    moments, an O(eta^2) effect on the law (a 1-2% gap in a variance is ~1 SE here)."""
    task = d.Task.from_spectrum(jax.random.key(3), 3, 2, (1.0, 0.5), label_noise=0.3)
    eta, runs = 0.02, 2000
    start = broadcast_runs(d.init_gaussian(jax.random.key(5), (3, 4, 2), 2.0), runs)
    steps = [0, 50, 100, 200]
    sgd = en.simulate(dy.OnlineSGD(task), start, dy.Hyperparameters(eta), jax.random.key(15),
                      steps)
    sde_stepper = dy.AnisotropicLangevin(task)
    sde = en.simulate(sde_stepper, start, dy.StepSizeHyperparameters(eta, step_size=eta),
                      jax.random.key(16), steps)
    loud = en.simulate(sde_stepper, start, dy.StepSizeHyperparameters(2 * eta, step_size=eta),
                       jax.random.key(16), steps)
    np.testing.assert_allclose(sgd.time, sde.time)
    np.testing.assert_allclose(sgd.time, [0.0, 1.0, 2.0, 4.0])
    a_sgd, a_sde, a_loud = (np.asarray(x.amplitude)[:, 1:] for x in (sgd, sde, loud))
    assert np.all(a_sgd.mean(0)[-1] > 0.4)                    # both modes were learned
    m1, v1, sm1, sv1 = moments(a_sgd)
    m2, v2, sm2, sv2 = moments(a_sde)
    _, v3, _, sv3 = moments(a_loud)
    assert_close_mc(m1, m2, np.hypot(sm1, sm2), what="mean amplitude, SGD vs SDE")
    assert_close_mc(v1, v2, np.hypot(sv1, sv2), what="amplitude variance, SGD vs SDE")
    assert_rejected_mc(v1, v3, np.hypot(sv1, sv3), what="SDE with doubled noise")


# ---------------------------------------------------------------------------- §10.9
def _stationary_deviations(stepper, task, solution, eta, runs, burn, gap, samples, key):
    """``(runs * samples, P)`` deviations ``theta - theta*`` of single-layer SGD started at the
    solution, sampled after ``burn`` steps and then every ``gap`` steps (independent samples
    when ``gap`` is several relaxation times)."""
    start = broadcast_runs((solution,), runs)
    steps = [burn + gap * k for k in range(samples)]
    states = weights_at(stepper, start, dy.Hyperparameters(eta), key, steps)
    star = np.asarray(d.flatten_weights((jnp.asarray(solution),)))
    return np.concatenate([flatten_runs(w) - star for w in states], axis=0)


def test_single_layer_sgd_covariance_is_the_lyapunov_solution_online():
    """docs/theory.md §10, online: single-layer SGD (L = 1, d_in = 3, d_out = 2, correlated inputs with
    eigenvalues 0.5 .. 1.6, label noise sigma = 0.5, eta = 0.01, B = 1) fluctuates around
    ``w* = M`` with the covariance M solving ``H M + M H = eta C``
    (``theory.linear_regression.single_layer_fluctuations``; here ``eta sigma^2 / (2B) I``),
    not ``(eta/2) C`` (the Hessian left out). 4000 runs x 4 samples 5 time units apart
    (> 5 relaxation times of the products: independent). Model error tolerated: O(eta lambda)
    ~ 1% from discrete time and the state-dependent part of the noise."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 3))
    task = d.Task.from_spectrum(jax.random.key(4), 3, 2, (1.0, 0.5), label_noise=0.5,
                                input_covariance=a @ a.T / 3 + 0.5 * np.eye(3))
    eta = 0.01
    theory = th.linear_regression.single_layer_fluctuations(task, eta, 1)
    dev = _stationary_deviations(dy.OnlineSGD(task), task, np.asarray(theory.solution), eta,
                                 4000, 500, 500, 4, jax.random.key(17))
    check_covariance_mc(dev, np.asarray(theory.covariance),
                        wrong_cov=0.5 * eta * np.asarray(theory.noise_covariance),
                        what="online single-layer SGD")


def test_single_layer_lyapunov_solution_with_anisotropic_label_noise():
    """docs/theory.md §10: with anisotropic label noise ``S_eps`` and correlated inputs, the online
    Lyapunov solution is ``(eta / 2B) I (x) S_eps`` (H = S_x (x) I and C = S_x (x) S_eps / B
    commute), and single-layer SGD's stationary covariance is it; the isotropic formula with
    ``sigma^2 = tr(S_eps) / d_out`` is rejected."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((2, 2))
    label_cov = 0.25 * (b @ b.T / 2 + 0.5 * np.eye(2))
    task = d.Task.from_spectrum(jax.random.key(4), 3, 2, (1.0, 0.5), label_noise=label_cov,
                                input_covariance=a @ a.T / 3 + 0.5 * np.eye(3))
    eta = 0.01
    theory = th.linear_regression.single_layer_fluctuations(task, eta, 1)
    expected = 0.5 * eta * np.kron(np.eye(3), label_cov)
    np.testing.assert_allclose(theory.covariance, expected, atol=1e-15)
    dev = _stationary_deviations(dy.OnlineSGD(task), task, np.asarray(theory.solution), eta,
                                 4000, 500, 500, 4, jax.random.key(18))
    iso = 0.5 * eta * np.trace(label_cov) / 2 * np.eye(6)
    check_covariance_mc(dev, expected, wrong_cov=iso, what="anisotropic label noise")


def test_single_layer_sgd_covariance_breaks_detailed_balance_offline():
    """docs/theory.md §10, offline (n = 4 samples, d_in = 2, d_out = 1, label noise 0.5, eta = 0.01,
    with replacement): H = S_xx and the finite-data noise C at w* do not commute, so the
    Lyapunov solution M differs from the detailed-balance form ``(eta/2) H^-1 C`` (by 40% here);
    SGD's stationary covariance is M and the detailed-balance form is rejected. 4000 runs x 4
    samples 10 time units apart (slowest relaxation rate 0.26)."""
    task = d.Task.from_spectrum(jax.random.key(1), 2, 1, (1.0,), label_noise=0.5)
    task = task.with_data(jax.random.key(4), 4)
    eta = 0.01
    theory = th.linear_regression.single_layer_fluctuations(task, eta, 1)
    m, m_db = np.asarray(theory.covariance), np.asarray(theory.detailed_balance)
    assert np.linalg.norm(m - m_db) > 0.3 * np.linalg.norm(m)
    dev = _stationary_deviations(dy.OfflineSGD(task, batch_size=1), task,
                                 np.asarray(theory.solution), eta, 4000, 1000, 1000, 4,
                                 jax.random.key(19))
    check_covariance_mc(dev, m, wrong_cov=m_db, what="offline single-layer SGD")
