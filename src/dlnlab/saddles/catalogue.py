"""Catalogue of sampled critical points: sampling, refinement, certification, rank patterns.

``sample_catalogue`` (what ``dlnlab saddles sample`` runs) samples residuals in the normal form of
every requested rank and subset, assembles and refines the weights on the true loss, and returns an
``xarray.Dataset`` with one entry per point. ``certify_catalogue`` (``dlnlab saddles certify``)
adds the certificate of every point and the rank pattern of its partial products. The variables
are listed in docs/saddles.md ("Catalogue variables"). Files are written by the one atomic writer
(:func:`dlnlab.io.atomic_write_dataset`) and read back with :func:`read_catalogue`, which checks
that the file is a catalogue.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import _validation as v
from .._types import Array
from ..core.loss import population_loss
from ..core.products import flatten_weights, unflatten_weights
from ..core.task import Task
from ..io.atomic import read_dataset
from .certify import CLASS_NAMES, Tolerances, certify, choose_method, refine
from .normal_form import (
    assemble_weights,
    exact_residuals,
    normal_form,
    residual_shapes,
    stratum_loss,
    subset_tuple,
)
from .sampler import Prior, sample_residuals

SGLD, EXACT = 0, 1
CONSTRUCTION_NAMES = ("sgld", "exact")


# ------------------------------------------------------------------------------ helpers
def layer_pairs(depth: int) -> tuple[tuple[int, int], ...]:
    """All ``(i, j)`` with ``1 <= i <= j <= L`` in row order: the partial products ``P_ij``."""
    return tuple((i, j) for i in range(1, depth + 1) for j in range(i, depth + 1))


def partial_product_ranks(weights, rank_rtol: float | None = None) -> Array:
    """Numerical ranks of ``P_ij = W_j ... W_i`` for every pair of :func:`layer_pairs` (int array).

    A singular value counts if it exceeds ``rank_rtol * prod_{l=i..j} ||W_l||_2`` (the natural scale
    of the product); default ``rank_rtol = 10 sqrt(eps)``.
    """
    weights = tuple(weights)
    if rank_rtol is None:
        rank_rtol = 10.0 * math.sqrt(float(jnp.finfo(weights[0].dtype).eps))
    norms = [jnp.linalg.norm(w, ord=2) for w in weights]
    ranks = []
    for i, j in layer_pairs(len(weights)):
        product = weights[i - 1]
        scale = norms[i - 1]
        for l in range(i + 1, j + 1):
            product = weights[l - 1] @ product
            scale = scale * norms[l - 1]
        s = jnp.linalg.svd(product, compute_uv=False)
        ranks.append(jnp.sum(s > rank_rtol * scale))
    return jnp.stack(ranks).astype(jnp.int32)


def choose_subsets(task: Task, rank: int, subsets) -> tuple[tuple[int, ...], ...]:
    """``"top"``: the ``r`` largest modes; ``"all"``: every ``r``-subset of the non-zero modes; or
    an explicit sequence of subsets."""
    s = np.asarray(task.spectrum, dtype=np.float64)
    nonzero = [a for a in range(s.size) if s[a] > 0]
    if rank > len(nonzero):
        v.fail("rank", rank, f"exceeds the teacher's rank {len(nonzero)}")
    if subsets == "top":
        return (tuple(nonzero[:rank]),)
    if subsets == "all":
        return tuple(itertools.combinations(nonzero, rank))
    if isinstance(subsets, str):
        v.fail("subsets", subsets, "must be 'top', 'all' or a sequence of index tuples")
    chosen = tuple(subset_tuple(task, x) for x in subsets if len(tuple(x)) == rank)
    if not chosen:
        v.fail("subsets", subsets, f"contains no subset of size {rank}")
    return chosen


@functools.partial(jax.jit, static_argnames=("num_iterations", "rebalance_every", "cg_iterations"))
def _refine_many(stacked, task, *, num_iterations, rebalance_every, cg_iterations):
    def one(weights):
        refined, info = refine(weights, task, num_iterations=num_iterations,
                               rebalance_every=rebalance_every, cg_iterations=cg_iterations)
        return refined, info.gradient_norm[-1]

    return jax.vmap(one)(stacked)


# ------------------------------------------------------------------------------ sampling
def sample_catalogue(key, task: Task, widths: Sequence[int], ranks: Sequence[int], *,
                     subsets="top", num_chains: int = 8, num_exact: int = 4, num_steps: int = 2000,
                     quench_steps: int = 1000, temperature: float = 1e-3, step_size: float = 1e-3,
                     step_decay: float = 0.0, prior: Prior | None = None,
                     init_scale: float = 1.0, refine_iterations: int = 30, rebalance_every: int = 10,
                     cg_iterations: int = 100) -> xr.Dataset:
    """Sample critical points of every rank in ``ranks`` and every subset (:func:`choose_subsets`).

    Per (rank, subset): ``num_chains`` SGLD chains (:mod:`dlnlab.saddles.sampler`, ``num_steps``
    steps at ``temperature`` then ``quench_steps`` at ``T = 0``) and ``num_exact`` points of the
    exact construction (two zero residual blocks, the pair cycling over all layer pairs); all points
    are assembled and refined on the true loss (:func:`dlnlab.saddles.refine`). ``prior`` defaults to
    ``Prior(1, 1, 1)`` (weight decay 1, norm target 1, strength 1). Non-finite chains are
    dropped (counted in ``attrs["dropped_points"]``). Keys: the ``c``-th combination (in the order
    ranks x subsets) uses ``fold_in(key, c)``.
    """
    prior = Prior(1.0, 1.0, 1.0) if prior is None else prior
    widths = v.widths_tuple("widths", widths)
    if widths[0] != task.d_in or widths[-1] != task.d_out:
        v.fail("widths", widths, f"must start at d_in={task.d_in} and end at d_out={task.d_out}")
    if not task.online:
        v.fail("task.data", "set", "the catalogue certifies the population loss: use an online task")
    try:
        ranks = tuple(int(r) for r in ranks)
    except (TypeError, ValueError):
        v.fail("ranks", ranks, "must be a sequence of integers")
    if not ranks:
        v.fail("ranks", ranks, "must list at least one rank")
    if isinstance(num_exact, bool) or not isinstance(num_exact, int) or num_exact < 0:
        v.fail("num_exact", num_exact, "must be an integer >= 0")
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 0:
        v.fail("num_chains", num_chains, "must be an integer >= 0")
    if num_chains + num_exact == 0:
        v.fail("num_chains", num_chains, "num_chains + num_exact must be >= 1")
    num_steps = v.positive_int("num_steps", num_steps)
    if isinstance(quench_steps, bool) or not isinstance(quench_steps, int) or quench_steps < 0:
        v.fail("quench_steps", quench_steps, "must be an integer >= 0")
    for name, value, strict in (("temperature", temperature, False), ("step_size", step_size, True),
                                ("step_decay", step_decay, False), ("init_scale", init_scale, False)):
        v.finite_scalar(name, value, minimum=0.0, strict=strict)
    for name, value in zip(prior._fields, prior, strict=True):
        v.finite_scalar(f"prior.{name}", value, minimum=0.0)
    depth = len(widths) - 1
    dtype = task.dtype
    records = {name: [] for name in ("theta", "rank", "subset", "construction", "chain", "energy",
                                     "loss", "stratum_loss", "gradient_norm")}
    dropped = 0
    combo = 0
    pairs = list(itertools.combinations(range(1, depth + 1), 2))
    for rank in ranks:
        for subset in choose_subsets(task, rank, subsets):
            form = normal_form(task, subset)
            residual_shapes(widths, rank)                                   # validates widths vs rank
            combo_key = jax.random.fold_in(key, combo)
            combo += 1
            stacked, energies, kinds, chains = [], [], [], []
            if num_chains:
                z, info = sample_residuals(
                    combo_key, form, widths, num_chains=num_chains, num_steps=num_steps,
                    temperature=temperature, step_size=step_size, prior=prior, step_decay=step_decay,
                    quench_steps=quench_steps, init_scale=init_scale)
                energy = info.energy[-1]
                stacked.append(jax.vmap(lambda zz, f=form: assemble_weights(f, zz))(z))
                energies.append(np.asarray(energy))
                kinds += [SGLD] * num_chains
                chains += list(range(num_chains))
            if num_exact:
                exact_key = jax.random.fold_in(combo_key, 2)
                zs = [exact_residuals(jax.random.fold_in(exact_key, i), widths, rank,
                                      pairs[i % len(pairs)], init_scale, dtype) for i in range(num_exact)]
                z = tuple(jnp.stack(x) for x in zip(*zs, strict=True))
                stacked.append(jax.vmap(lambda zz, f=form: assemble_weights(f, zz))(z))
                energies.append(np.zeros(num_exact))
                kinds += [EXACT] * num_exact
                chains += list(range(num_exact))
            weights = tuple(jnp.concatenate(layer) for layer in zip(*stacked, strict=True))
            refined, grad_norm = _refine_many(weights, task, num_iterations=refine_iterations,
                                              rebalance_every=rebalance_every, cg_iterations=cg_iterations)
            theta = np.asarray(jax.vmap(flatten_weights)(refined))
            loss = np.asarray(jax.vmap(lambda w: population_loss(w, task))(refined))
            energy = np.concatenate(energies)
            finite = np.all(np.isfinite(theta), axis=1) & np.isfinite(loss) & np.isfinite(energy)
            dropped += int(np.sum(~finite))
            mask = np.zeros(task.num_modes, np.int8)
            mask[list(subset)] = 1
            level = stratum_loss(task, subset)
            for i in np.flatnonzero(finite):
                records["theta"].append(theta[i])
                records["rank"].append(rank)
                records["subset"].append(mask)
                records["construction"].append(kinds[i])
                records["chain"].append(chains[i])
                records["energy"].append(energy[i])
                records["loss"].append(loss[i])
                records["stratum_loss"].append(level)
                records["gradient_norm"].append(float(np.asarray(grad_norm)[i]))
    if not records["theta"]:
        v.fail("sample_catalogue", "no points", "every chain diverged: lower step_size")
    return _points_dataset(task, widths, records, dropped, dict(
        temperature=temperature, step_size=step_size, step_decay=step_decay, num_steps=num_steps,
        quench_steps=quench_steps, weight_decay=float(np.asarray(prior.weight_decay).mean()),
        norm_target=float(np.asarray(prior.norm_target).mean()),
        norm_strength=float(np.asarray(prior.norm_strength).mean()),
        refine_iterations=refine_iterations, rebalance_every=rebalance_every,
        cg_iterations=cg_iterations, init_scale=init_scale))


def _points_dataset(task: Task, widths, records, dropped, settings) -> xr.Dataset:
    n = len(records["theta"])
    data = {
        "theta": (("point", "parameter"), np.stack(records["theta"]),
                  {"long_name": "refined weights, theta = (vec W_1, ..., vec W_L), column-stacking vec"}),
        "rank": (("point",), np.asarray(records["rank"], np.int32), {"long_name": "stratum rank r"}),
        "subset": (("point", "mode"), np.stack(records["subset"]).astype(np.int8),
                   {"long_name": "1 where teacher mode a is in the subset S"}),
        "construction": (("point",), np.asarray(records["construction"], np.int8),
                         {"long_name": "how the residuals were made",
                          "flag_values": np.arange(len(CONSTRUCTION_NAMES), dtype=np.int8),
                          "flag_meanings": " ".join(CONSTRUCTION_NAMES)}),
        "chain": (("point",), np.asarray(records["chain"], np.int32),
                  {"long_name": "chain (sgld) or draw (exact) index within its (rank, subset)"}),
        "sampled_energy": (("point",), np.asarray(records["energy"], np.float64),
                           {"long_name": "constraint energy E(Z) at the end of sampling"}),
        "loss": (("point",), np.asarray(records["loss"], np.float64),
                 {"long_name": "population loss after refinement"}),
        "stratum_loss": (("point",), np.asarray(records["stratum_loss"], np.float64),
                         {"long_name": "theory: loss of W = P_S M, "
                                       "0.5 sum_{q not in S} s_q^2 + 0.5 tr S_eps"}),
        "refined_gradient_norm": (("point",), np.asarray(records["gradient_norm"], np.float64),
                                  {"long_name": "||grad L|| after refinement"}),
        "teacher": (("output", "input"), np.asarray(task.teacher, np.float64),
                    {"long_name": "teacher M"}),
        "spectrum": (("mode",), np.asarray(task.spectrum, np.float64),
                     {"long_name": "teacher singular values s_a"}),
    }
    if task.label_covariance is not None:
        data["label_covariance"] = (("output", "output_copy"),
                                    np.asarray(task.label_covariance, np.float64),
                                    {"long_name": "label-noise covariance S_eps"})
    ds = xr.Dataset(data, coords={"point": np.arange(n)})
    ds.attrs.update({"widths": [int(w) for w in widths], "dtype": str(task.dtype),
                     "dropped_points": dropped, **{k: float(x) for k, x in settings.items()}})
    return ds


def task_from_dataset(ds: xr.Dataset, dtype=None) -> Task:
    """The (whitened, online) task a catalogue was made for, rebuilt from its variables."""
    label = ds["label_covariance"].values if "label_covariance" in ds else None
    return Task(ds["teacher"].values, label_noise=label,
                dtype=dtype or ds.attrs.get("dtype", "float64"))


def stacked_weights(ds: xr.Dataset, dtype=None) -> tuple[Array, ...]:
    """The catalogue's points as weights with a leading point axis."""
    widths = catalogue_widths(ds)
    theta = jnp.asarray(ds["theta"].values, dtype=dtype or ds.attrs.get("dtype", "float64"))
    return jax.vmap(lambda t: unflatten_weights(t, widths))(theta)


# ------------------------------------------------------------------------------ certification
@functools.partial(jax.jit, static_argnames=("method", "num_eigenvalues", "num_blocks", "block_size",
                                             "tolerances"))
def _certify_many(keys, stacked, task, *, method, num_eigenvalues, num_blocks, block_size, tolerances):
    def one(k, weights):
        cert = certify(k, weights, task, method=method, num_eigenvalues=num_eigenvalues,
                       num_blocks=num_blocks, block_size=block_size, tolerances=tolerances)
        return cert, partial_product_ranks(weights)

    return jax.vmap(one)(keys, stacked)


def certify_catalogue(key, ds: xr.Dataset, *, method: str = "auto", num_eigenvalues: int = 6,
                      num_blocks: int = 40, block_size: int = 8,
                      tolerances: Tolerances | None = None) -> xr.Dataset:
    """Certify every point of a catalogue (:func:`dlnlab.saddles.certify`) and add the rank pattern
    of its partial products; returns a new dataset. Point ``i`` uses ``fold_in(key, i)``."""
    tolerances = Tolerances() if tolerances is None else tolerances
    task = task_from_dataset(ds)
    weights = stacked_weights(ds, task.dtype)
    widths = catalogue_widths(ds)
    p = int(ds.sizes["parameter"])
    method = choose_method(p, method)
    if method == "lanczos":
        block_size = v.positive_int("block_size", block_size)
        if block_size > p:
            v.fail("block_size", block_size, f"must be <= the {p} parameters of the catalogue's "
                   "networks (a Lanczos block spans at most the whole space)")
        num_blocks = min(v.positive_int("num_blocks", num_blocks), p // block_size)
    num_eigenvalues = min(v.positive_int("num_eigenvalues", num_eigenvalues), p)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(ds.sizes["point"]))
    cert, ranks = _certify_many(keys, weights, task, method=method, num_eigenvalues=num_eigenvalues,
                                num_blocks=num_blocks, block_size=block_size, tolerances=tolerances)
    pairs = layer_pairs(len(widths) - 1)
    out = ds.copy()
    scalar = {
        "gradient_norm": "||grad L|| of the population loss",
        "gradient_tolerance": "tol_grad = grad_rtol * G (docs/saddles.md)",
        "minimum_loss": "L_min, global minimum loss for these widths",
        "spectral_scale": "max |Hessian eigenvalue| (Lanczos: max |Ritz value|)",
        "eigenvalue_tolerance": ("tol_eig = eig_rtol * sqrt(P) * spectral_scale"
                                 " + sqrt(L) ||grad L|| / ||theta||"),
        "loss_tolerance": "tol_loss = loss_rtol * 0.5 ||M S_x^1/2||_F^2",
        "index": "number of negative eigenvalues (< -tol_eig); Lanczos: SLQ estimate",
        "index_standard_error": "standard error of the index estimate (0: exact)",
        "index_lower_bound": "eigenvalues / Ritz values below -tol_eig (rigorous lower bound)",
        "nullity": "number of eigenvalues within tol_eig of 0; Lanczos: SLQ estimate",
        "nullity_standard_error": "standard error of the nullity estimate (0: exact)",
    }
    for name, meaning in scalar.items():
        out[name] = (("point",), np.asarray(getattr(cert, name), np.float64), {"long_name": meaning})
    out["smallest_eigenvalues"] = (("point", "eigen"), np.asarray(cert.smallest_eigenvalues, np.float64),
                                   {"long_name": "smallest Hessian eigenvalues, ascending (Lanczos: Ritz "
                                                 "values, upper bounds)"})
    out["eigenvalue_residuals"] = (("point", "eigen"), np.asarray(cert.eigenvalue_residuals, np.float64),
                                   {"long_name": "||H x - theta x|| of each Ritz pair (0 for dense)"})
    out["smallest_eigenvalue"] = (("point",), np.asarray(cert.smallest_eigenvalues[:, 0], np.float64),
                                  {"long_name": "lambda_min of the Hessian"})
    out["bottom_eigenvector"] = (("point", "parameter"), np.asarray(cert.bottom_eigenvector, np.float64),
                                 {"long_name": "unit eigenvector (Ritz vector) of lambda_min"})
    out["classification"] = (("point",), np.asarray(cert.classification, np.int8),
                             {"long_name": "class of the critical point",
                              "flag_values": np.arange(len(CLASS_NAMES), dtype=np.int8),
                              "flag_meanings": " ".join(n.replace(" ", "_") for n in CLASS_NAMES)})
    out["partial_rank"] = (("point", "pair"), np.asarray(ranks, np.int32),
                           {"long_name": "numerical rank of P_ij = W_j ... W_i"})
    out = out.assign_coords(pair_first=("pair", np.asarray([i for i, _ in pairs], np.int32)),
                            pair_last=("pair", np.asarray([j for _, j in pairs], np.int32)))
    grad_rtol, eig_rtol, loss_rtol = tolerances.resolve(task.dtype)
    out.attrs.update({"certification_method": method, "grad_rtol": grad_rtol, "eig_rtol": eig_rtol,
                      "loss_rtol": loss_rtol, "num_blocks": num_blocks if method == "lanczos" else 0,
                      "block_size": block_size if method == "lanczos" else 0})
    return out


# ------------------------------------------------------------------------------ files
# Written with dlnlab.io.atomic_write_dataset (the one atomic writer); read with read_catalogue.
POINT_VARIABLES = ("theta", "rank", "subset", "construction", "loss", "stratum_loss", "teacher",
                   "spectrum")
"""Variables every catalogue has (``sample_catalogue``)."""

CERTIFIED_VARIABLES = ("classification", "smallest_eigenvalue", "bottom_eigenvector",
                       "minimum_loss", "gradient_norm")
"""Variables a certified catalogue adds (``certify_catalogue``)."""


def catalogue_widths(ds: xr.Dataset) -> tuple[int, ...]:
    """The layer widths ``(d_0, ..., d_L)`` of a catalogue: ``attrs["widths"]``, a sequence in
    memory and a JSON list in a file (older files: an integer array)."""
    raw = ds.attrs.get("widths")
    if raw is None:
        v.fail("widths", None, "the dataset has no 'widths' attribute: not a saddle catalogue")
    try:
        values = np.atleast_1d(np.asarray(json.loads(raw) if isinstance(raw, str) else raw))
    except (TypeError, ValueError):
        values = np.asarray([None])
    if values.ndim != 1 or values.dtype.kind not in "iu":
        v.fail("widths", raw, "must be a list of integers")
    return tuple(int(w) for w in values)


def read_catalogue(path, *, certified: bool = False) -> xr.Dataset:
    """Load a catalogue file (``points.nc`` or, with ``certified=True``, ``catalogue.nc``).

    Raises one ``ValueError`` line when the file is missing or not readable NetCDF
    (:func:`dlnlab.io.read_dataset`), when it is not a saddle catalogue (a variable of
    :data:`POINT_VARIABLES` or the ``widths`` attribute missing, or ``theta`` not of the size the
    widths give), or, with ``certified``, when it was not certified (:data:`CERTIFIED_VARIABLES`).
    """
    name = repr(os.fspath(path))
    ds = read_dataset(path, what="catalogue")
    missing = [x for x in POINT_VARIABLES if x not in ds.variables]
    if missing:
        raise ValueError(f"catalogue={name}: not a saddle catalogue (missing variables: "
                         f"{', '.join(missing)})")
    try:
        widths = catalogue_widths(ds)
    except ValueError as error:
        raise ValueError(f"catalogue={name}: not a saddle catalogue ({error})") from None
    size = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))
    if len(widths) < 3 or ds["theta"].dims != ("point", "parameter") or ds.sizes["parameter"] != size:
        raise ValueError(f"catalogue={name}: not a saddle catalogue (theta {dict(ds['theta'].sizes)} "
                         f"does not match widths {list(widths)})")
    if certified:
        missing = [x for x in CERTIFIED_VARIABLES if x not in ds.variables]
        if missing:
            raise ValueError(f"catalogue={name}: not certified (missing variables: "
                             f"{', '.join(missing)}): run dlnlab saddles certify first")
    return ds
