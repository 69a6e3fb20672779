"""fig6: the loss perturbed along the eigenvectors of the SGD weight covariance of a single layer,
and the absence of an inverse variance-flatness relation there (paper Sec. II D 2, eq. 2.35,
Fig. 6; docs/theory.md §10, §12).

For one layer the loss is exactly quadratic around the least-squares solution ``w*``:

    dL(theta v) = L(w* + theta v) - L(w*) = (theta^2 / 2) v^T H v,   H = S_xx ⊗ I   (eq. 2.35)

for any unit direction ``v``. Along the eigenvectors ``v_i`` of the stationary weight covariance
``M`` the curvature ``kappa_i = v_i^T H v_i`` would grow with the variance ``m_i`` if an inverse
variance-flatness relation held (``m ~ kappa^(psi/2)``, ``d log kappa / d log m = 2 / psi``; the
second layer of a two-layer net has ``psi = 2``, slope 1). For one layer ``M`` is nearly
isotropic (``M ≈ (lambda sigma^2 / 2S) I`` for ``P >> N``, eq. 2.34): its eigenvectors are set by
the small anisotropy of the noise and are unrelated to ``H``, so ``kappa_i`` scatters around
``tr(H)/N`` (``sigma_x^2`` for inputs of variance ``sigma_x^2``) like a random direction's
``v^T H v``: mean ``tr H / N``, variance ``2/(N+2) (tr H^2 / N - (tr H / N)^2)`` (uniform ``v`` on
the sphere).

Two settings, as the paper: (a) ``N = 100`` i.i.d. inputs of variance ``1/N``, ``P = 2000``;
(b) ``N = 40`` inputs correlated by a fixed Wishart covariance ``Sigma = A A^T / tr(A A^T)``,
``A`` an ``N x 2N`` matrix of i.i.d. ``N(0, 1)`` entries (seed :data:`WISHART_SEED`; ``tr Sigma
= 1``, i.e. the mean input variance is ``1/N`` as in (a)), ``P = 200``. The paper writes
``Sigma ~ A A^T`` without ``A``'s shape; a square ``A`` makes ``Sigma``'s smallest eigenvalue
``~ 1/N^3`` and the slowest mode's relaxation time ``~ 10^5`` time units, beyond any run here,
and a covariance measured before stationarity would show a spurious variance-curvature relation
(slow, flat modes not yet filled). ``lambda = 0.1``, ``S = 10``, ``sigma_eps^2 = 10^-2``; every
run starts at ``w*`` (``init.at_minimum``) and the covariance is measured over ``t >= start``,
about ``w*``, from the run-averaged time averages (:mod:`.common`).
"""

from __future__ import annotations

import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from ...analysis.claims import claim_row, format_number
from ...core.loss import training_loss
from ...core.products import flatten_weights
from ...experiments.config import validate_config
from ...experiments.run import build_task
from ...experiments.study import Study
from ...plot.panels import COLORS, new_figure
from ...theory.fluctuations import (
    fit_flatness_exponent,
    linearised_fluctuations,
    project_to_minimum,
    transient_covariance,
)
from .common import covariance_error, run_covariances, window_parameters
from .config import CONFIDENCE, FLAT_TOL, single_layer_task, size
from .config import paper_config as _paper_config

LABEL_VARIANCE = 1e-2          # sigma_eps^2
WISHART_SEED = 6               # the fixed draw of A in Sigma = A A^T / tr(A A^T)
WISHART_COLUMNS = 2            # A is N x (WISHART_COLUMNS N)
IVFR_SLOPE = 1.0               # d log kappa / d log m of the two-layer second layer (psi = 2)
THETA = np.linspace(-1.0, 1.0, 41)      # perturbation amplitudes of panel (a)
SHOWN_DIRECTIONS = (1, 10, 25, 50, 75, 100)  # eigenvectors drawn in panel (a) (1-based)
SETTINGS = ("iid", "wishart")
FAMILYWISE = 0.05              # the superposition rule's family-wise error over the N directions
SQUARE_CHECK_TIMES = (3000.0, 9000.0)   # t of the square-A transient check (theory only)
PER_RUN_SETTINGS = ("wishart",)  # settings also averaged over each run's own eigenvectors (b)


def wishart_covariance(num_inputs: int, seed: int = WISHART_SEED,
                       columns: int = WISHART_COLUMNS) -> np.ndarray:
    """``Sigma = A A^T / tr(A A^T)`` with ``A`` ``(N, columns N)`` of i.i.d. ``N(0, 1)`` entries
    drawn by ``numpy.random.default_rng(seed)``: symmetric positive definite, ``tr Sigma = 1``
    (mean input variance ``1/N``), ``(N, N)``. Raises ``ValueError`` for ``num_inputs < 1`` or
    ``columns < 1``."""
    for name, value in (("num_inputs", num_inputs), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer >= 1")
    a = np.random.default_rng(seed).standard_normal((num_inputs, columns * num_inputs))
    sigma = a @ a.T
    sigma = 0.5 * (sigma + sigma.T) / np.trace(sigma)
    return sigma


def _task(name: str) -> dict:
    """The ``[task]`` table of setting ``name``."""
    if name == "iid":
        return single_layer_task(100, 2000, LABEL_VARIANCE)
    return single_layer_task(40, 200, LABEL_VARIANCE, wishart_covariance(40).tolist())


# Runs start at w*; a mode of rate omega reaches 1 - exp(-2 omega t) of its stationary variance
# by t. The slowest rates are ~0.006 (iid) and ~0.0017 (wishart): the window starts when the
# slowest mode is within 3% (iid: 5%) of stationarity, a fixed fraction of the horizon.
START_FRACTION = {"iid": 0.2, "wishart": 1.0 / 3.0}
HORIZON = {"iid": (1500.0, 4000.0), "wishart": (3000.0, 9000.0)}
RUNS = {"iid": (32, 128), "wishart": (32, 128)}
POINTS = {"iid": (301, 801), "wishart": (301, 901)}


def experiments(quick: bool) -> dict:
    out = {}
    for name in SETTINGS:
        out[name] = _paper_config(f"fig6-{name}", runs=size(quick, *RUNS[name]),
                                  horizon=size(quick, *HORIZON[name]),
                                  points=size(quick, *POINTS[name]),
                                  changes={"task": _task(name)})
    return out


def _start(ds: xr.Dataset, name: str) -> float:
    return START_FRACTION[name] * float(ds.time[-1])


def perturbed_loss(task, solution, directions, theta) -> np.ndarray:
    """``L(w* + theta v_i) - L(w*)`` by direct evaluation of the training loss (eq. 2.35's left
    side) for a depth-1 net: ``solution`` ``(d_out, d_in)``, ``directions`` ``(k, P)`` unit
    vectors in ``flatten_weights`` order, ``theta`` ``(T,)``; returns ``(k, T)``."""
    w = jnp.asarray(solution)
    base = training_loss((w,), task)

    def one(vec, amplitude):
        step = jnp.reshape(vec, w.shape[::-1]).T          # column-stacked vec -> (d_out, d_in)
        return training_loss((w + amplitude * step,), task) - base

    grid = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))
    return np.asarray(grid(jnp.asarray(directions), jnp.asarray(theta)), dtype=np.float64)


def _random_direction_std(hessian: np.ndarray) -> float:
    """Std of ``v^T H v`` for ``v`` uniform on the unit sphere of ``R^N``."""
    n = hessian.shape[0]
    mean = np.trace(hessian) / n
    return float(np.sqrt(2.0 / (n + 2) * max(np.trace(hessian @ hessian) / n - mean**2, 0.0)))


def _analyse_setting(name: str, ds: xr.Dataset, width: int) -> dict:
    config = validate_config(tomllib.loads(ds.attrs["config_toml"]))
    task = build_task(config)
    n, p = config.task.d_in, config.task.num_samples
    lr, batch = config.training.learning_rate, config.training.batch_size
    solution = project_to_minimum((jnp.zeros((1, n), jnp.float64),), task)[0]
    lin = linearised_fluctuations((solution,), task, lr, batch, config.training.replacement)
    hessian = lin.drift
    centre = np.asarray(flatten_weights((solution,)), dtype=np.float64)
    start = _start(ds, name)
    samples = window_parameters(ds, "sgd", start)
    per_run = run_covariances(samples, centre)
    pooled = per_run.mean(axis=0)
    variance, vectors = np.linalg.eigh(pooled)
    order = np.argsort(variance)[::-1]
    variance, vectors = variance[order], vectors[:, order]
    curvature = np.einsum("pi,pq,qi->i", vectors, hessian, vectors)
    theory_variance, theory_vectors = np.linalg.eigh(lin.stationary.covariance)
    order = np.argsort(theory_variance)[::-1]
    theory_variance, theory_vectors = theory_variance[order], theory_vectors[:, order]
    theory_curvature = np.einsum("pi,pq,qi->i", theory_vectors, hessian, theory_vectors)
    loss = perturbed_loss(task, solution, vectors.T, THETA)
    identity = float(np.max(np.abs(loss - 0.5 * curvature[:, None] * THETA[None, :] ** 2))
                     / np.max(np.abs(loss)))
    # per run: its own eigenvectors, curvature index by index (the paper's panel (b) average;
    # panel (a) does not use it)
    run_curv = np.full((per_run.shape[0], n), np.nan)
    if name in PER_RUN_SETTINGS:
        for r, m in enumerate(per_run):
            val, vec = np.linalg.eigh(m)
            vec = vec[:, np.argsort(val)[::-1]]
            run_curv[r] = np.einsum("pi,pq,qi->i", vec, hessian, vec)
    fit = fit_flatness_exponent(variance, curvature, confidence_level=CONFIDENCE)
    theory_fit = fit_flatness_exponent(theory_variance, theory_curvature,
                                       confidence_level=CONFIDENCE)
    error = covariance_error(per_run, lin.stationary.covariance)
    input_variance = float(np.trace(np.asarray(config.task.input_covariance_matrix())) / n)

    def pad(x, fill=np.nan):
        out = np.full((width,) + np.shape(x)[1:], fill)
        out[:len(x)] = x
        return out

    return {
        "variance": pad(variance), "curvature": pad(curvature),
        "theory_variance": pad(theory_variance), "theory_curvature": pad(theory_curvature),
        "run_curvature_mean": pad(run_curv.mean(axis=0)),
        "run_curvature_standard_error": pad(run_curv.std(axis=0, ddof=1) / np.sqrt(len(run_curv))),
        "perturbed_loss": pad(loss),
        "iid_curvature": input_variance,
        "hessian_mean_curvature": float(np.trace(hessian) / n),
        "random_direction_std": _random_direction_std(hessian),
        "data_trace_std": float(np.sqrt(2.0 / (n * p)) * input_variance),
        "identity_error": identity,
        "curvature_slope": fit.curvature_slope,
        "curvature_slope_standard_error": fit.curvature_slope_standard_error,
        "curvature_slope_low": fit.curvature_slope_interval[0],
        "curvature_slope_high": fit.curvature_slope_interval[1],
        "flatness_exponent": fit.exponent,
        "theory_curvature_slope": theory_fit.curvature_slope,
        "theory_curvature_slope_low": theory_fit.curvature_slope_interval[0],
        "theory_curvature_slope_high": theory_fit.curvature_slope_interval[1],
        "covariance_error_raw": error["raw"], "covariance_error_monte_carlo": error["monte_carlo"],
        "covariance_error_systematic_upper": error["systematic_upper"],
        "num_inputs": n, "num_samples": p, "num_directions": fit.num_directions,
        "num_runs": samples.shape[0], "num_records": samples.shape[1],
        "window_start": start, "horizon": float(ds.time[-1]),
        "slowest_rate": float(lin.stationary.rates.min()),
        "filled_at_start": float(-np.expm1(-2.0 * lin.stationary.rates.min() * start)),
        "learning_rate": lr, "batch_size": batch,
        "label_variance": float(config.task.label_noise) ** 2,
    }


def square_wishart_check(config, times=SQUARE_CHECK_TIMES) -> dict:
    """Theory only, for the paper's literal ``Sigma ~ A A^T`` with a square ``A`` (same seed, same
    N, P and training as ``config``, the Wishart setting): the slowest relaxation rate, and the
    fitted ``d log kappa / d log m`` along the eigenvectors of the exact covariance at ``times``
    after a start at ``w*`` (``transient_covariance``) and at stationarity (eq. 2.30). Shows
    that a covariance measured before the slow modes fill mimics a variance-flatness relation."""
    n = config.task.d_in
    square = single_layer_task(n, config.task.num_samples, float(config.task.label_noise) ** 2,
                               wishart_covariance(n, columns=1).tolist())
    other = _paper_config("fig6-square-check", runs=1, horizon=1.0, points=2,
                          changes={"task": square})
    task = build_task(other)
    solution = project_to_minimum((jnp.zeros((1, n), jnp.float64),), task)[0]
    lin = linearised_fluctuations((solution,), task, config.training.learning_rate,
                                  config.training.batch_size, config.training.replacement)
    covariances = [*transient_covariance(lin.drift, lin.diffusion, config.training.learning_rate,
                                         list(times)), lin.stationary.covariance]
    slopes = []
    for m in covariances:
        val, vec = np.linalg.eigh(m)
        kappa = np.einsum("pi,pq,qi->i", vec, lin.drift, vec)
        slopes.append(fit_flatness_exponent(val, kappa, num_resamples=200).curvature_slope)
    return {"square_slowest_rate": float(lin.stationary.rates.min()),
            "square_transient_slope": np.asarray(slopes[:-1]),
            "square_stationary_slope": float(slopes[-1])}


_DESCRIPTIONS = {
    "variance": ("eigenvalues m_i of the run-averaged SGD weight covariance about w*, descending",
                 "weight^2"),
    "curvature": ("kappa_i = v_i^T H v_i along the SGD covariance eigenvectors "
                  "(= 2 dL(theta v_i) / theta^2, eq. 2.35)", "loss / weight^2"),
    "theory_variance": ("eigenvalues of the stationary covariance M (eq. 2.30, Lyapunov)",
                        "weight^2"),
    "theory_curvature": ("v^T H v along the eigenvectors of M (eq. 2.30)", "loss / weight^2"),
    "run_curvature_mean": ("kappa_i along each run's own covariance eigenvectors, mean over runs "
                           "(NaN for the i.i.d. setting)",
                           "loss / weight^2"),
    "run_curvature_standard_error": ("standard error of run_curvature_mean over runs",
                                     "loss / weight^2"),
    "perturbed_loss": ("dL(theta v_i) = L(w* + theta v_i) - L(w*), direct evaluation", "loss"),
    "iid_curvature": ("sigma_x^2 = tr(S_x) / N: the paper's i.i.d. prediction "
                      "dL / theta^2 = sigma_x^2 / 2 (times 2)", "loss / weight^2"),
    "hessian_mean_curvature": ("tr(H) / N = tr(S_xx) / N", "loss / weight^2"),
    "random_direction_std": ("std of v^T H v for v uniform on the sphere", "loss / weight^2"),
    "data_trace_std": ("std of tr(S_xx)/N over data sets: sqrt(2/(N P)) sigma_x^2",
                       "loss / weight^2"),
    "identity_error": ("max |dL - theta^2 kappa / 2| / max dL (eq. 2.35 vs direct loss)", "1"),
    "curvature_slope": ("fitted d log kappa / d log m (0: no variance-flatness relation; "
                        "1: psi = 2)", "1"),
    "flatness_exponent": ("fitted psi = 2 d log m / d log kappa", "1"),
    "slowest_rate": ("smallest eigenvalue omega_min of H", "1 / time"),
    "filled_at_start": ("1 - exp(-2 omega_min t_start): the slowest mode's share of its stationary "
                        "variance when the window starts (runs start at w*)", "1"),
}


def analyse(data):
    width = max(int(validate_config(tomllib.loads(data[k].attrs["config_toml"])).task.d_in)
                for k in SETTINGS)
    rows = {name: _analyse_setting(name, data[name], width) for name in SETTINGS}
    variables = {}
    for key in rows["iid"]:
        values = np.asarray([rows[s][key] for s in SETTINGS])
        dims = ("setting",) + (("direction",) if values.ndim >= 2 else ()) + \
            (("theta",) if values.ndim == 3 else ())
        variables[key] = (dims, values)
    out = xr.Dataset(variables, coords={"setting": list(SETTINGS),
                                        "direction": np.arange(1, width + 1),
                                        "theta": THETA})
    for key, (text, units) in _DESCRIPTIONS.items():
        out[key].attrs.update(long_name=text, units=units)
    out["theta"].attrs.update(long_name="perturbation amplitude theta along a unit direction",
                              units="weight")
    square = square_wishart_check(validate_config(tomllib.loads(data["wishart"].attrs["config_toml"])))
    out["square_slowest_rate"] = ((), square["square_slowest_rate"], {
        "long_name": "omega_min for the paper's literal square A (same seed), theory", "units": "1 / time"})
    out["square_transient_slope"] = (("check_time",), square["square_transient_slope"], {
        "long_name": "d log kappa / d log m of the exact covariance at check_time after a start at "
                     "w*, square A (theory: a transient mimics a variance-flatness relation)",
        "units": "1"})
    out["square_stationary_slope"] = ((), square["square_stationary_slope"], {
        "long_name": "d log kappa / d log m of the stationary M (eq. 2.30), square A", "units": "1"})
    out = out.assign_coords(check_time=list(SQUARE_CHECK_TIMES))
    out["check_time"].attrs.update(long_name="time since the start at w*", units="t = step x lambda")
    out.attrs.update(confidence_level=CONFIDENCE, wishart_seed=WISHART_SEED,
                     wishart_columns=WISHART_COLUMNS,
                     source="Gross et al. 2024, Sec. II D 2, eq. 2.35, Fig. 6; docs/theory.md §10")
    return out


def _row(ds, s):
    part = ds.sel(setting=s)
    return {k: float(part[k]) for k in part.data_vars if part[k].ndim == 0}


def numbers(ds):
    rows = []
    for s in SETTINGS:
        r = _row(ds, s)
        n = int(r["num_inputs"])
        curv = ds.curvature.sel(setting=s).values[:n]
        rows.append({
            "setting": s, "N": n, "P": int(r["num_samples"]), "runs": int(r["num_runs"]),
            "records_per_run": int(r["num_records"]),
            "window": f"{r['window_start']:g}-{r['horizon']:g}",
            "slowest_mode_filled_at_start": r["filled_at_start"],
            "variance_max_over_min": float(np.nanmax(ds.variance.sel(setting=s)) /
                                           np.nanmin(ds.variance.sel(setting=s))),
            "curvature_over_sigma_x2_min": float(curv.min() / r["iid_curvature"]),
            "curvature_over_sigma_x2_max": float(curv.max() / r["iid_curvature"]),
            "curvature_slope": r["curvature_slope"],
            "curvature_slope_interval": f"[{r['curvature_slope_low']:.3f}, "
                                        f"{r['curvature_slope_high']:.3f}]",
            "theory_curvature_slope": r["theory_curvature_slope"],
            "psi": r["flatness_exponent"],
            "eq_2_35_identity_error": r["identity_error"],
            "covariance_error_vs_eq_2_30": r["covariance_error_raw"],
            "covariance_error_monte_carlo": r["covariance_error_monte_carlo"],
        })
    rows.append({"setting": "wishart, square A (theory only)", "N": rows[-1]["N"],
                 "P": rows[-1]["P"], "slowest_rate": float(ds.square_slowest_rate),
                 **{f"curvature_slope_at_t{t:g}": float(x) for t, x in
                    zip(ds.check_time.values, ds.square_transient_slope.values, strict=True)},
                 "theory_curvature_slope": float(ds.square_stationary_slope)})
    return rows


def _superposition_tolerance(r) -> tuple[float, float]:
    """(z, tolerance): every kappa_i within z * sqrt(random-direction variance + data-set
    variance of tr(S_xx)/N) of sigma_x^2, z Bonferroni-corrected over the N directions."""
    n = int(r["num_inputs"])
    z = float(scipy.stats.norm.ppf(1.0 - FAMILYWISE / (2 * n)))
    return z, z * float(np.hypot(r["random_direction_std"], r["data_trace_std"]))


def claims(ds):
    out = []
    r = _row(ds, "iid")
    n = int(r["num_inputs"])
    curv = ds.curvature.sel(setting="iid").values[:n]
    z, tol = _superposition_tolerance(r)
    worst = float(np.max(np.abs(curv - r["iid_curvature"])))
    ok = worst <= tol
    out.append(claim_row(
        "fig6-superposition",
        "For i.i.d. inputs the loss perturbed along every eigenvector of the SGD weight "
        "covariance superimposes on theta^2 sigma_x^2 / 2.",
        "Sec. II D 2, eq. 2.35, Fig. 6(a)", "fig6",
        f"N = {n}, P = {int(r['num_samples'])}, {int(r['num_runs'])} runs: kappa_i / sigma_x^2 in "
        f"[{curv.min() / r['iid_curvature']:.3f}, {curv.max() / r['iid_curvature']:.3f}] "
        f"(theory 1); largest |kappa_i - sigma_x^2| = {worst / r['iid_curvature']:.3f} sigma_x^2 "
        f"against the tolerance {tol / r['iid_curvature']:.3f} sigma_x^2 "
        f"(random-direction spread {r['random_direction_std'] / r['iid_curvature']:.3f} sigma_x^2, "
        f"z = {z:.2f}); direct loss = theta^2 kappa / 2 to {r['identity_error']:.1e}",
        {"worst_relative_deviation": worst / r["iid_curvature"],
         "tolerance_relative": tol / r["iid_curvature"], "z": z, "runs": int(r["num_runs"]),
         "identity_error": r["identity_error"]},
        "every |kappa_i - sigma_x^2| <= z sqrt(s_rand^2 + 2 sigma_x^4 / (N P)), s_rand the spread of "
        "v^T H v over random unit directions, z Bonferroni over the N directions at 5% family-wise",
        "supported" if ok else "refuted"))
    for s, label in (("iid", "i.i.d."), ("wishart", "Wishart-correlated")):
        r = _row(ds, s)
        low, high = r["curvature_slope_low"], r["curvature_slope_high"]
        flat = low <= FLAT_TOL and high >= -FLAT_TOL
        not_ivfr = not (low <= IVFR_SLOPE <= high)
        out.append(claim_row(
            f"fig6-no-ivfr-{s}",
            f"No inverse variance-flatness relation for a single layer ({label} inputs): the "
            "curvature along the covariance eigenvectors does not follow their variance.",
            "Sec. II D 2, Fig. 6" + ("(a)" if s == "iid" else "(b)"), "fig6",
            f"N = {int(r['num_inputs'])}, P = {int(r['num_samples'])}, {int(r['num_runs'])} runs, "
            f"{int(r['num_directions'])} directions: d log kappa / d log m = "
            f"{format_number(r['curvature_slope'])} +- "
            f"{format_number(r['curvature_slope_standard_error'])}, "
            f"{CONFIDENCE:.0%} bootstrap interval [{low:.3f}, {high:.3f}] (theory from eq. 2.30: "
            f"{format_number(r['theory_curvature_slope'])}; a two-layer second layer: "
            f"{IVFR_SLOPE:g}, psi = 2)",
            {"curvature_slope": r["curvature_slope"], "interval": [low, high],
             "standard_error": r["curvature_slope_standard_error"],
             "theory_curvature_slope": r["theory_curvature_slope"], "runs": int(r["num_runs"]),
             "directions": int(r["num_directions"])},
            f"the {CONFIDENCE:.0%} interval of d log kappa / d log m overlaps [-{FLAT_TOL:g}, "
            f"{FLAT_TOL:g}] and excludes {IVFR_SLOPE:g} (psi = 2)",
            "supported" if flat and not_ivfr else "refuted"))
    return out


def figure(ds):
    fig, axes = new_figure(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    part = ds.sel(setting="iid")
    n = int(part.num_inputs)
    sigma2 = float(part.iid_curvature)
    theta = ds.theta.values
    for k, i in enumerate(i for i in SHOWN_DIRECTIONS if i <= n):
        ax.plot(theta, part.perturbed_loss.sel(direction=i).values * 1e3, color=COLORS[k % 10],
                lw=1.2, label=f"$v_{{{i}}}$")
    ax.plot(theta, 0.5 * theta**2 * sigma2 * 1e3, "k--", lw=1.5,
            label="$\\theta^2\\sigma_x^2/2$ (eq. 2.35)")
    ax.set(xlabel="$\\theta$", ylabel="$\\delta L(\\theta v_i)$ × $10^3$",
           title=f"(a) i.i.d. inputs, N = {n}, P = {int(part.num_samples)}")
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    inset = ax.inset_axes([0.36, 0.42, 0.3, 0.26])
    _eigen_inset(inset, part, n)

    ax = axes[1]
    part = ds.sel(setting="wishart")
    n = int(part.num_inputs)
    idx = np.arange(1, n + 1)
    mean = part.run_curvature_mean.values[:n] / 2
    se = part.run_curvature_standard_error.values[:n] / 2
    ax.errorbar(idx, mean, yerr=se, fmt="o-", ms=3, lw=1, color=COLORS[0],
                label=f"SGD, per-run eigenvectors (mean ± SE, {int(part.num_runs)} runs)")
    ax.plot(idx, part.curvature.values[:n] / 2, "s", ms=3, color=COLORS[1],
            label="SGD, pooled covariance")
    ax.plot(idx, part.theory_curvature.values[:n] / 2, "x", ms=4, color=COLORS[2],
            label="eigenvectors of M (eq. 2.30)")
    ax.axhline(float(part.iid_curvature) / 2, color="k", ls="--",
               label="i.i.d. prediction $\\sigma_x^2/2$")
    top = float(np.nanmax(part.curvature.values[:n])) / 2
    ax.set(xlabel="mode index i (descending variance)",
           ylabel="$\\delta L(\\theta v_i)/\\theta^2$", ylim=(0, 1.9 * top),
           title=f"(b) Wishart-correlated inputs, N = {n}, P = {int(part.num_samples)}")
    ax.legend(fontsize=7, loc="upper left")
    inset = ax.inset_axes([0.68, 0.6, 0.3, 0.25])
    _eigen_inset(inset, part, n)

    ax = axes[2]
    for k, s in enumerate(SETTINGS):
        part = ds.sel(setting=s)
        n = int(part.num_inputs)
        ax.loglog(part.variance.values[:n], part.curvature.values[:n], "o", ms=3,
                  color=COLORS[k],
                  label=f"{s}: slope {float(part.curvature_slope):.3f} "
                        f"[{float(part.curvature_slope_low):.3f}, "
                        f"{float(part.curvature_slope_high):.3f}]")
        v = part.variance.values[:n]
        grid = np.geomspace(np.nanmin(v), np.nanmax(v), 10)
        centre = np.exp(np.nanmean(np.log(part.curvature.values[:n])))
        ax.loglog(grid, centre * (grid / np.exp(np.nanmean(np.log(v)))) ** IVFR_SLOPE, ":",
                  color=COLORS[k], lw=1)
    ax.set(xlabel="variance $m_i$ along $v_i$ (weight$^2$)", ylabel="curvature $\\kappa_i$",
           title="(c) curvature vs variance (dotted: slope 1, psi = 2)")
    ax.legend(fontsize=8, title=f"fitted d log κ / d log m, {CONFIDENCE:.0%} CI",
              title_fontsize=8)
    fig.suptitle("Fig. 6 — loss perturbed along SGD covariance eigenvectors: no inverse "
                 "variance-flatness relation for one layer (λ = "
                 f"{float(ds.learning_rate[0]):g}, S = {int(ds.batch_size[0])})")
    fig.tight_layout()
    return fig


def _eigen_inset(inset, part, n):
    idx = np.arange(1, n + 1)
    inset.plot(idx, part.variance.values[:n] * 1e5, "-", color=COLORS[0], lw=1, label="SGD")
    inset.plot(idx, part.theory_variance.values[:n] * 1e5, "--", color="k", lw=1,
               label="eq. 2.30")
    inset.set_title("cov. eigenvalues × $10^5$", fontsize=7)
    inset.tick_params(labelsize=6)
    inset.set_ylim(bottom=0)
    inset.legend(fontsize=6)


STUDY = Study("fig6", "Loss perturbed along covariance eigenvectors: no inverse variance-flatness "
              "relation for one layer", "Fig. 6, Sec. II D 2, eq. 2.35", experiments, analyse,
              numbers, claims, figure)
