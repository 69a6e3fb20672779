"""Benchmark of the SGLD learning-coefficient estimator against the exact values (docs/llc.md).

The published deep-linear-network protocol (Lau, Furman, Wang, Murfet & Wei, AISTATS 2025, App. J;
Furman & Lau 2024, App. E.2): random networks in size classes, a true map of reduced rank, ``n``
inputs uniform in ``[-10, 10]^d_in`` with noiseless targets, minibatches of 500, ``n beta = n / log n``,
``gamma = 1`` and the class's step size and number of steps (90% burn-in). Each network's estimate is
compared with :func:`dlnlab.theory.learning_coefficient` (Aoyagi 2024), on the empirical loss of the
data set (minibatch gradients) and on the population loss (exact gradients).

One deliberate difference: the true parameter is a *balanced minimal-rank factorisation* (every layer
of rank ``r``, ``W_l = Q_l diag(sigma^(1/L)) Q_{l-1}^T`` with Haar frames ``Q_l`` of ``r`` columns and the
true map's singular values ``sigma`` uniform in ``[0.5, 1.5]``): these are the points of the
true-parameter set where the local learning coefficient equals Aoyagi's value (at a generic true
parameter it is larger, docs/theory.md §14), and balanced ones are where gradient flow from a small
initialisation ends.

Randomness: network ``i`` of class ``c`` uses ``fold_in(fold_in(key(seed), class index), i)`` for its
widths, rank, truth, data and chains, so a network's result does not depend on how many others run.

Grouping: the networks of a class are advanced in groups, one compiled program per group and loss
(vmap over networks x chains; networks padded to the group's shape and masked, :mod:`dlnlab.llc.padded`).
By default a group is the networks of one depth (widths padded to the group's largest; no identity
layers); a network's result does not depend on its group (its own keys, and noise tied to its own
parameters), to floating-point rounding. Results are written after every group; a rerun with the
same settings resumes with the networks not yet done.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy import stats

from .. import _validation as v
from ..io import atomic
from ..theory.learning_coefficient import learning_coefficient, parameter_count
from .loss_model import LossModel
from .sampler import SamplerSettings


@dataclass(frozen=True)
class SizeClass:
    """A size class of random networks and its sampler settings (published protocol)."""

    name: str
    min_layers: int
    max_layers: int
    min_width: int
    max_width: int
    step_size: float
    num_steps: int
    num_samples: int


SIZE_CLASSES: dict[str, SizeClass] = {
    "1K": SizeClass("1K", 2, 5, 5, 50, 5e-7, 10_000, 100_000),
    "10K": SizeClass("10K", 2, 10, 5, 100, 5e-7, 10_000, 100_000),
    "100K": SizeClass("100K", 2, 10, 50, 500, 1e-7, 50_000, 1_000_000),
}
"""Furman & Lau (2024) App. E.2; 100K is for an accelerator (about 1e5 parameters)."""

PUBLISHED_INPUT_HALF_WIDTH = 10.0
"""The published protocol's inputs are uniform in ``[-10, 10]^d_in``, so ``S_x = (100/3) I``."""
UNIT_INPUT_HALF_WIDTH = math.sqrt(3.0)
"""Inputs uniform in ``[-sqrt 3, sqrt 3]^d_in`` have ``S_x = I`` (the calibrated protocol)."""
BATCH_SIZE = 500
LOCALISATION = 1.0
BURNIN_FRACTION = 0.9
TARGET_MEDIAN = 0.05
TARGET_PERCENTILE_95 = 0.15
TARGET_POPULATION_MEDIAN = 0.01


@dataclass(frozen=True)
class BenchmarkSettings:
    """What a benchmark run covers. ``step_scale`` and ``steps_scale`` multiply each class's published
    step size and number of steps. With ``calibrate`` each chain's step size is adapted during burn-in
    towards ``target_acceptance`` from the class's (scaled) step (``SamplerSettings.adapt_step_size``).
    Inputs are uniform in ``[-input_half_width, input_half_width]^d_in``.

    Two named settings: :meth:`published` (the published protocol: fixed step, 10,000 steps, inputs
    in ``[-10, 10]``) and :meth:`calibrated` (unit-variance inputs, step adapted to 0.99 acceptance,
    10x the steps, 16 chains; docs/llc.md explains why).
    """

    classes: tuple[str, ...] = ("1K", "10K")
    num_networks: int = 100
    num_chains: int = 4
    seed: int = 0
    step_scale: float = 1.0
    steps_scale: float = 1.0
    losses: tuple[str, ...] = ("empirical", "population")
    calibrate: bool = False
    target_acceptance: float = 0.99
    input_half_width: float = PUBLISHED_INPUT_HALF_WIDTH

    @classmethod
    def published(cls, **fields) -> BenchmarkSettings:
        return cls(**fields)

    @classmethod
    def calibrated(cls, **fields) -> BenchmarkSettings:
        base = {"num_chains": 16, "steps_scale": 10.0, "calibrate": True,
                "input_half_width": UNIT_INPUT_HALF_WIDTH}
        return cls(**{**base, **fields})

    def validate(self) -> BenchmarkSettings:
        if not self.classes or isinstance(self.classes, str):
            v.fail("classes", self.classes, f"must be a non-empty list of {', '.join(SIZE_CLASSES)}")
        for name in self.classes:
            if name not in SIZE_CLASSES:
                v.fail("classes", name, f"must be one of {', '.join(SIZE_CLASSES)}")
        if len(set(self.classes)) != len(self.classes):
            v.fail("classes", self.classes, "must not repeat a class")
        v.positive_int("num_networks", self.num_networks)
        v.positive_int("num_chains", self.num_chains)
        if self.num_chains < 2:
            v.fail("num_chains", self.num_chains, "must be >= 2 (the standard error needs two chains)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            v.fail("seed", self.seed, "must be an integer >= 0")
        v.finite_scalar("step_scale", self.step_scale, minimum=0.0, strict=True)
        v.finite_scalar("steps_scale", self.steps_scale, minimum=0.0, strict=True)
        if not isinstance(self.calibrate, bool):
            v.fail("calibrate", self.calibrate, "must be true or false")
        v.finite_scalar("target_acceptance", self.target_acceptance, minimum=0.0, strict=True, maximum=1.0)
        v.finite_scalar("input_half_width", self.input_half_width, minimum=0.0, strict=True)
        if not self.losses or any(loss not in ("empirical", "population") for loss in self.losses):
            v.fail("losses", self.losses, "must list 'empirical' and/or 'population'")
        for name in self.classes:
            if SIZE_CLASSES[name].num_steps * self.steps_scale < 100:
                v.fail("steps_scale", self.steps_scale,
                       f"gives {SIZE_CLASSES[name].num_steps * self.steps_scale:.3g} steps for class "
                       f"{name}; must give at least 100 (the sampler's checks run every 100 steps)")
        return self

    def sampler(self, size_class: SizeClass) -> SamplerSettings:
        steps = max(100, int(round(size_class.num_steps * self.steps_scale / 100)) * 100)
        draws = int(round(steps * (1 - BURNIN_FRACTION) / 100)) * 100 or 100
        return SamplerSettings(step_size=size_class.step_size * self.step_scale, localisation=LOCALISATION,
                               num_chains=self.num_chains, num_burnin_steps=steps - draws,
                               num_draws=draws, diagnostic_every=100, adapt_step_size=self.calibrate,
                               target_acceptance=self.target_acceptance)


def random_network(key, size_class: SizeClass, dtype=jnp.float64):
    """``(widths, rank, weights)`` of one random network of ``size_class`` (module docstring).

    ``widths = (d_0, ..., d_L)`` with ``L`` uniform in ``[min_layers, max_layers]`` and each width
    uniform in ``[min_width, max_width]``; ``rank`` uniform in ``[0, min(widths)]``; ``weights`` the
    balanced minimal-rank factorisation of a rank-``rank`` map with singular values uniform in
    ``[0.5, 1.5]`` (module docstring).

    Fast: every random array is the prefix of one draw of the class's largest size (JAX's
    partitionable threefry, the default since JAX 0.5, gives element ``i`` of a draw the same bits
    whatever the draw's size, so the numbers are those of a draw of the exact shape) and the QR
    factorisations and products run in NumPy, so a new shape compiles nothing (before: about 4 s of
    compilation per network). The widths, rank and random numbers are those of the per-shape draw;
    the weights agree with it to rounding (LAPACK through NumPy instead of XLA).
    """
    if not jax.config.jax_threefry_partitionable:
        v.fail("jax_threefry_partitionable", False, "the benchmark's networks are prefixes of "
               "fixed-size draws, which needs JAX's partitionable threefry (the default)")
    k_layers, k_widths, k_rank, k_frames, k_scales = jax.random.split(key, 5)
    top = size_class.max_width
    layers = int(jax.random.randint(k_layers, (), size_class.min_layers, size_class.max_layers + 1))
    widths = tuple(int(w) for w in _prefix(jax.random.randint(k_widths, (size_class.max_layers + 1,),
                                                              size_class.min_width, top + 1), layers + 1))
    rank = int(jax.random.randint(k_rank, (), 0, min(widths) + 1))
    frames = [_orthonormal(k, d, rank, dtype) for k, d in zip(jax.random.split(k_frames, len(widths)), widths,
                                                              strict=True)]
    scales = _prefix(jax.random.uniform(k_scales, (top + 1,), dtype, 0.5, 1.5), rank) ** (1.0 / layers)
    weights = tuple(jnp.asarray((frames[l + 1] * scales) @ frames[l].T if rank
                                else np.zeros((widths[l + 1], widths[l])), dtype) for l in range(layers))
    return widths, rank, weights


def _prefix(draw, count: int) -> np.ndarray:
    return np.asarray(draw)[:count]


def _orthonormal(key, rows: int, cols: int, dtype) -> np.ndarray:
    """:func:`dlnlab.core.task.random_orthonormal` (Haar, QR with R's diagonal signs moved into Q)
    from a prefix of one fixed-size Gaussian draw, factorised in NumPy."""
    if cols == 0:
        return np.zeros((rows, 0))
    gaussian = _prefix(jax.random.normal(key, (_LARGEST_DRAW,), dtype), rows * cols).reshape(rows, cols)
    q, r = np.linalg.qr(gaussian.astype(np.float64))
    signs = np.sign(np.diagonal(r))
    return q * np.where(signs == 0, 1.0, signs)[None, :]


_LARGEST_DRAW = max(c.max_width for c in SIZE_CLASSES.values()) ** 2
"""Every frame is a prefix of one Gaussian draw of this size (the widest class's width squared)."""
_LARGEST_INPUT_DRAW = 20_000_000
"""Inputs are a prefix of one draw of ``n x max_width`` numbers up to this size (160 MB in float64);
larger classes (100K) draw the exact shape."""


def _empirical_model(key_data, key_batches, teacher: np.ndarray, input_half_width: float,
                     num_samples: int, max_width: int) -> LossModel:
    """:func:`dlnlab.llc.empirical_loss_model` of ``n`` inputs uniform in ``[-h, h]^d_in`` with
    noiseless targets ``y = M x``, minibatches of :data:`BATCH_SIZE` from a random partition, with the
    moments computed in NumPy (float64) and the inputs the prefix of one fixed-size draw (module
    docstring of :func:`random_network`): no compilation per input width."""
    d_in = teacher.shape[1]
    n = num_samples
    if n * max_width <= _LARGEST_INPUT_DRAW:
        x = _prefix(jax.random.uniform(key_data, (n * max_width,), jnp.float64, -input_half_width,
                                       input_half_width), n * d_in).reshape(n, d_in)
    else:
        x = np.asarray(jax.random.uniform(key_data, (n, d_in), jnp.float64, -input_half_width,
                                          input_half_width))
    y = x @ teacher.T
    batches = n // BATCH_SIZE
    order = np.asarray(jax.random.permutation(key_batches, n))[: batches * BATCH_SIZE].reshape(batches,
                                                                                           BATCH_SIZE)
    xb, yb = x[order], y[order]
    batch_sxx = np.matmul(xb.transpose(0, 2, 1), xb) / BATCH_SIZE
    batch_syx = np.matmul(yb.transpose(0, 2, 1), xb) / BATCH_SIZE
    return LossModel(x.T @ x / n, y.T @ x / n, np.asarray(np.sum(y * y) / n), batch_sxx, batch_syx, n,
                     BATCH_SIZE)


def _population_model(teacher: np.ndarray, input_variance: float, num_samples: int) -> LossModel:
    """:func:`dlnlab.llc.population_loss_model` of ``teacher`` with ``S_x = input_variance I`` and no
    label noise, in NumPy (no compilation per shape): ``S_yx = M S_x``, ``E||y||^2 = tr(M S_x M^T)``."""
    sxx = input_variance * np.eye(teacher.shape[1])
    cross = teacher @ sxx
    return LossModel(sxx, cross, np.asarray(np.sum(cross * teacher)), None, None, num_samples)


GROUP_BY = ("depth", "class", "network")
"""How :func:`run_benchmark` groups the networks of a class into one compiled program: ``depth``
(the networks of one depth, widths padded to the group's largest), ``class`` (all, padded to the
class's largest depth and widths), ``network`` (one network per program: no padding)."""


def benchmark_group(networks: Sequence[tuple[int, object]], size_class: SizeClass,
                    settings: BenchmarkSettings, *, progress_factory: Callable | None = None,
                    label: str = "") -> list[dict]:
    """Estimate the learning coefficient of several random networks of ``size_class`` with each
    loss, all networks of one loss in one compiled program (:mod:`dlnlab.llc.padded`); returns one
    record per network, in order (the fields of :func:`benchmark_network` plus ``index``).

    Args:
        networks: ``(index, key)`` pairs, ``key`` the network's own key (module docstring); the
            result of a network depends on its key only, not on the others in the group.
        progress_factory: ``progress_factory(label, total) -> update(done, total)`` reports each
            loss's steps. ``*_seconds`` is the group's wall time per loss divided by its networks.
    """
    from .padded import estimate_learning_coefficients

    sampler = settings.sampler(size_class)
    n = size_class.num_samples
    records, drawn = [], []
    for index, key in networks:
        k_net, k_data, k_batches, k_empirical, k_population = jax.random.split(key, 5)
        widths, rank, weights = random_network(k_net, size_class)
        teacher = np.asarray(weights[0], dtype=np.float64)
        for w in weights[1:]:
            teacher = np.asarray(w, dtype=np.float64) @ teacher
        exact = learning_coefficient(widths, rank)
        record = {"size_class": size_class.name, "num_layers": len(widths) - 1,
                  "widths": ",".join(map(str, widths)), "true_rank": rank,
                  "num_parameters": parameter_count(widths), "exact": float(exact.value),
                  "exact_fraction": str(exact.value), "multiplicity": exact.multiplicity}
        if index is not None:
            record["index"] = index
        records.append(record)
        drawn.append((widths, weights, teacher, k_data, k_batches, k_empirical, k_population))
    for loss_kind in settings.losses:
        start = time.perf_counter()
        group = []
        for _, weights, teacher, k_data, k_batches, k_empirical, k_population in drawn:
            if loss_kind == "empirical":
                model = _empirical_model(k_data, k_batches, teacher, settings.input_half_width, n,
                                         size_class.max_width)
                group.append((weights, model, k_empirical))
            else:
                model = _population_model(teacher, settings.input_half_width ** 2 / 3.0, n)
                group.append((weights, model, k_population))
        update = (None if progress_factory is None else progress_factory(
            f"{size_class.name} {label}{loss_kind} loss".replace("  ", " "),
            sampler.num_burnin_steps + sampler.num_draws))
        datasets = estimate_learning_coefficients(group, sampler, warn=False, progress=update)
        seconds = (time.perf_counter() - start) / len(datasets)
        for record, ds in zip(records, datasets, strict=True):
            record[f"{loss_kind}_step_size"] = float(np.exp(np.log(ds.step_size.values).mean()))
            record[f"{loss_kind}_estimate"] = float(ds.learning_coefficient)
            record[f"{loss_kind}_standard_error"] = float(ds.learning_coefficient_standard_error)
            record[f"{loss_kind}_chain_spread"] = float(ds.chain_learning_coefficient.std(ddof=1))
            record[f"{loss_kind}_mean_acceptance"] = float(ds.mean_acceptance.mean())
            record[f"{loss_kind}_chains_used"] = int(ds.attrs["num_chains_used"])
            record[f"{loss_kind}_warnings"] = ds.attrs["warnings"]
            record[f"{loss_kind}_seconds"] = seconds
    return records


def benchmark_network(key, size_class: SizeClass, settings: BenchmarkSettings, *,
                      progress_factory: Callable | None = None) -> dict:
    """Estimate the learning coefficient of one random network with each loss; returns a record
    (:func:`benchmark_group` with a group of one).
    ``progress_factory(label, total) -> update(done, total)`` reports each estimate's steps."""
    return benchmark_group([(None, key)], size_class, settings, progress_factory=progress_factory)[0]


VARIABLE_ATTRS = {
    "exact": {"long_name": "exact learning coefficient (Aoyagi 2024)", "units": "1"},
    "multiplicity": {"long_name": "multiplicity m", "units": "1"},
    "num_parameters": {"units": "1"},
    "true_rank": {"long_name": "rank of the true map", "units": "1"},
}


LOSS_VARIABLE_ATTRS = {
    "estimate": {"long_name": "SGLD estimate of the learning coefficient, {loss} loss", "units": "1"},
    "standard_error": {"long_name": "standard error over the chains, {loss} loss", "units": "1"},
    "chain_spread": {"long_name": "standard deviation of the chains' estimates, {loss} loss",
                     "units": "1"},
    "mean_acceptance": {"long_name": "mean MALA acceptance over chains and checks, {loss} loss",
                        "units": "1"},
    "chains_used": {"long_name": "chains in the estimate (diverged ones left out), {loss} loss",
                    "units": "1"},
    "warnings": {"long_name": "the estimator's warnings, {loss} loss"},
    "seconds": {"long_name": "wall time of the estimate, {loss} loss", "units": "s"},
    "step_size": {"long_name": "geometric mean over chains of the step size of the draws, {loss} loss",
                  "units": "weight^2"},
}


def benchmark_plan(settings: BenchmarkSettings, *, shard: tuple[int, int] = (0, 1), group_by: str = "depth",
                   networks_per_group: int | None = None, finished=frozenset()) -> list[dict]:
    """The groups :func:`run_benchmark` will run (module docstring, "Grouping"), without running them.

    Returns one dict per group: ``size_class``, ``label``, ``members`` (``(index, key)`` pairs),
    ``widths`` (each member's), ``padded_widths``, ``flops`` (both losses' floating-point operations,
    :func:`dlnlab.llc.padded.group_cost`), ``memory`` (device bytes of one loss's program) and
    ``host_memory`` (bytes of its traces). Networks in ``finished`` (``(class, index)``) are left out.
    """
    from .padded import group_cost

    root = jax.random.key(settings.seed)
    plan = []
    with jax.enable_x64(True):
        for class_index, name in enumerate(settings.classes):
            size_class = SIZE_CLASSES[name]
            sampler = settings.sampler(size_class)
            batches = size_class.num_samples // BATCH_SIZE if "empirical" in settings.losses else 0
            class_key = jax.random.fold_in(root, class_index)
            buckets: dict[object, list] = {}
            for index in range(shard[0], settings.num_networks, shard[1]):
                if (name, index) in finished:
                    continue
                key = jax.random.fold_in(class_key, index)
                widths = random_network(jax.random.split(key, 5)[0], size_class)[0]
                bucket = {"depth": len(widths) - 1, "class": None, "network": index}[group_by]
                buckets.setdefault(bucket, []).append((index, key, widths))
            for bucket, members in buckets.items():
                size = networks_per_group or len(members)
                if size < len(members):   # chunks of similar sizes pad less (elementwise widths)
                    members = sorted(members, key=lambda member: (max(member[2]), sum(member[2]), member[0]))
                for first in range(0, len(members), size):
                    chunk = members[first: first + size]
                    all_widths = [w for _, _, w in chunk]
                    cost = group_cost(all_widths, sampler, batches)
                    label = f"depth {bucket} " if group_by == "depth" else ""
                    plan.append({"size_class": name, "label": label,
                                 "members": [(i, k) for i, k, _ in chunk], "widths": all_widths,
                                 "padded_widths": cost["padded_widths"],
                                 "flops": cost["flops"] * len(settings.losses), "memory": cost["memory"],
                                 "host_memory": cost["host_memory"], "chains": sampler.num_chains,
                                 "steps": sampler.num_burnin_steps + sampler.num_draws,
                                 "losses": len(settings.losses)})
    return plan


def plan_lines(plan: Sequence[dict]) -> list[str]:
    """One progress line per group of :func:`benchmark_plan` and a total line."""
    lines = []
    for number, g in enumerate(plan, 1):
        members = g["members"]
        indices = [index for index, _ in members]
        lines.append(f"llc-benchmark: plan: group {number}/{len(plan)}: {g['size_class']} {g['label']}"
                     f"{len(members)} networks (indices {min(indices)}..{max(indices)}), padded widths "
                     f"{g['padded_widths']}, {g['chains']} chains x {g['steps']} steps x {g['losses']} "
                     f"losses; device memory ~{g['memory'] / 2**20:.0f} MiB, host "
                     f"~{g['host_memory'] / 2**20:.0f} MiB, {g['flops'] / 1e12:.3g} TFLOP")
    total = sum(g["flops"] for g in plan)
    rate, where = PLAN_RATES[jax.default_backend() == "cpu"]
    lines.append(f"llc-benchmark: plan: {len(plan)} groups, {sum(len(g['members']) for g in plan)} networks, "
                 f"{total / 1e12:.3g} TFLOP in all (float64; at {where}: "
                 f"~{_duration(total / rate)} of arithmetic, plus compilation and per-step latency)")
    return lines


PLAN_RATES = {True: (1e10, "10 GFLOP/s, the rate measured on a 2-core CPU"),
              False: (1e13, "10 TFLOP/s, about an H200's float64 rate")}
"""The rate the plan's time estimate assumes, by whether JAX runs on the CPU (docs/llc.md)."""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_benchmark(settings: BenchmarkSettings, out: str | Path | None = None, *,
                  progress: Callable[[str], None] | None = None,
                  shard: tuple[int, int] = (0, 1),
                  progress_factory: Callable | None = None,
                  group_by: str = "depth",
                  networks_per_group: int | None = None) -> xr.Dataset:
    """Run the benchmark; with ``out`` write ``benchmark.nc`` after each group of networks and
    resume from it (a rerun computes only the networks not yet in it).

    The networks of a class are run in groups, each group one compiled program over networks x
    chains (:mod:`dlnlab.llc.padded`): ``group_by`` is ``"depth"`` (default: one group per depth,
    widths padded to the group's largest), ``"class"`` (one group, padded to the class's largest
    depth and widths) or ``"network"`` (one network per program, no padding);
    ``networks_per_group`` splits each group into chunks of at most that many networks (``None``:
    no limit), which bounds the memory of one program. Networks keep their own keys, so a
    network's result does not depend on the grouping (to floating-point rounding) or on the shard.

    ``progress`` receives one line per group before it runs (its networks, padded widths, an
    estimate of its device memory and work, and of its time once a group has run) and one line
    per finished network; ``progress_factory(label, total) -> update(done, total)`` reports the
    steps within each group. ``shard = (k, N)`` runs only the networks whose index is ``k``
    modulo ``N`` (to spread one benchmark over processes or machines; :func:`merge_benchmarks`
    joins the parts).

    Returns the dataset (dim ``network``, ordered by class and index; one variable per record field,
    relative errors ``*_relative_error = (estimate - exact) / exact``), summary statistics in
    :func:`summary_table`.

    Raises:
        ValueError: bad settings, shard, ``group_by`` or ``networks_per_group``; an existing
            ``benchmark.nc`` made with other settings.
    """
    settings = settings.validate()
    if (not isinstance(shard, tuple) or len(shard) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in shard)
            or not 0 <= shard[0] < shard[1]):
        v.fail("shard", shard, "must be (k, N) with integers 0 <= k < N")
    if group_by not in GROUP_BY:
        v.fail("group_by", group_by, f"must be one of {', '.join(GROUP_BY)}")
    if networks_per_group is not None:
        v.positive_int("networks_per_group", networks_per_group)
    path = None if out is None else Path(out) / "benchmark.nc"
    fingerprint = json.dumps(asdict(settings), sort_keys=True)
    done = saved_records(settings, out)
    finished = {(r["size_class"], int(r["index"])) for r in done}
    total = len(settings.classes) * len(range(shard[0], settings.num_networks, shard[1]))
    if total == 0:
        v.fail("shard", f"{shard[0]}/{shard[1]}",
               f"holds none of the {settings.num_networks} networks per class")
    plan = benchmark_plan(settings, shard=shard, group_by=group_by, networks_per_group=networks_per_group,
                          finished=finished)
    costs = [group["flops"] for group in plan]
    with jax.enable_x64(True):
        if progress is not None:
            for line in plan_lines(plan):
                progress(line)
        plan = [(g["size_class"], g["label"], g["members"], g["widths"]) for g in plan]
        start = time.perf_counter()
        flops_done, seconds_done = 0.0, 0.0
        for number, (name, label, members, _) in enumerate(plan, 1):
            size_class = SIZE_CLASSES[name]
            work = costs[number - 1]
            if progress is not None:
                eta = (f": ~{work * seconds_done / flops_done:.0f} s at the rate so far, all left "
                       f"~{sum(costs[number - 1:]) * seconds_done / flops_done:.0f} s"
                       if flops_done > 0 else " (the first group also compiles)")
                progress(f"llc-benchmark: running group {number}/{len(plan)} ({name} {label}{len(members)} "
                         f"networks){eta}")
            group_start = time.perf_counter()
            records = benchmark_group(members, size_class, settings, progress_factory=progress_factory,
                                      label=f"group {number}/{len(plan)} {label}")
            flops_done += work
            seconds_done += time.perf_counter() - group_start
            done.extend(records)
            done.sort(key=lambda r: (settings.classes.index(r["size_class"]), int(r["index"])))
            if path is not None:
                atomic.atomic_write_dataset(_dataset(done, fingerprint), path)
            if progress is not None:
                elapsed = time.perf_counter() - start
                count = len(done)
                left = sum(costs[number:]) * seconds_done / flops_done if flops_done > 0 else math.nan
                for record in records:
                    progress(f"llc-benchmark: {name} network {record['index']} ({record['widths']} rank "
                             f"{record['true_rank']}: exact {record['exact']:.1f}, "
                             + ", ".join(f"{k} {record[f'{k}_estimate']:.1f}" for k in settings.losses)
                             + ")")
                    for k in settings.losses:
                        if record[f"{k}_warnings"]:
                            progress(f"llc-benchmark: {name} network {record['index']}, {k} loss: "
                                     f"warning: {record[f'{k}_warnings']}")
                progress(f"llc-benchmark: {count}/{total} networks, {elapsed:.0f} s elapsed, "
                         f"~{left:.0f} s left")
    return _dataset(done, fingerprint)


def saved_records(settings: BenchmarkSettings, out: str | Path | None) -> list[dict]:
    """The networks already in ``out/benchmark.nc`` (one record each; ``[]`` without one): what a
    rerun skips and ``--plan`` leaves out. Raises ``ValueError`` when that file was made with other
    settings."""
    path = None if out is None else Path(out) / "benchmark.nc"
    if path is None or not path.exists():
        return []
    previous = atomic.read_dataset(path, what="benchmark")
    if previous.attrs.get("benchmark_settings") != json.dumps(asdict(settings), sort_keys=True):
        try:
            there = json.loads(previous.attrs.get("benchmark_settings", "{}"))
        except json.JSONDecodeError:
            there = {}
        here = json.loads(json.dumps(asdict(settings)))
        differ = [f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in sorted(set(there) | set(here))
                  if there.get(k) != here.get(k)]
        v.fail("out", str(out), "holds a benchmark made with other settings ("
               + ("; ".join(differ) or "unreadable settings") + "); choose another --out")
    return _records(previous)


def _dataset(records: list[dict], fingerprint: str) -> xr.Dataset:
    keys = list(records[0])
    data = {}
    for key in keys:
        values = [r.get(key) for r in records]
        if isinstance(values[0], str):
            data[key] = ("network", np.asarray(values, dtype=object))
        else:
            data[key] = ("network", np.asarray(values))
    ds = xr.Dataset(data, coords={"network": np.arange(len(records))})
    for loss_kind in ("empirical", "population"):
        if f"{loss_kind}_estimate" in ds:
            relative = (ds[f"{loss_kind}_estimate"] - ds.exact) / ds.exact
            ds[f"{loss_kind}_relative_error"] = relative.assign_attrs(
                long_name=f"(estimate - exact) / exact, {loss_kind} loss", units="1")
    for key, attrs in VARIABLE_ATTRS.items():
        ds[key].attrs.update(attrs)
    for loss_kind in ("empirical", "population"):
        for suffix, attrs in LOSS_VARIABLE_ATTRS.items():
            name = f"{loss_kind}_{suffix}"
            if name in ds:
                ds[name].attrs.update({key: value.format(loss=loss_kind) for key, value in attrs.items()})
    ds.attrs.update(benchmark_settings=fingerprint,
                    batch_size=BATCH_SIZE, localisation=LOCALISATION,
                    source="Lau et al. (AISTATS 2025) App. J; Furman & Lau (2024) App. E.2; docs/llc.md")
    return ds


def merge_benchmarks(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Join benchmark datasets of one setting (shards, or resumed runs) into one, ordered by class
    and network index; a network present twice is kept once.

    Raises:
        ValueError: no parts, or parts made with different settings.
    """
    if not parts:
        v.fail("parts", parts, "must hold at least one benchmark dataset")
    settings = [json.loads(part.attrs.get("benchmark_settings", "{}")) for part in parts]
    classes = list(dict.fromkeys(name for one in settings for name in one.get("classes", [])))
    common = [{k: value for k, value in one.items() if k != "classes"} for one in settings]
    if any(one != common[0] for one in common):
        v.fail("parts", len(parts), "were made with different benchmark settings (other than the classes)")
    records = {}
    for part in parts:
        for record in _records(part):
            records.setdefault((record["size_class"], int(record["index"])), record)
    order = sorted(records, key=lambda k: (classes.index(k[0]), k[1]))
    fingerprint = json.dumps({**common[0], "classes": classes}, sort_keys=True)
    return _dataset([records[k] for k in order], fingerprint)


def _records(ds: xr.Dataset) -> list[dict]:
    names = [k for k in ds.data_vars if not k.endswith("_relative_error")]
    out = []
    for i in range(ds.sizes["network"]):
        record = {}
        for k in names:
            value = ds[k].values[i]
            record[k] = value.item() if hasattr(value, "item") else value
        out.append(record)
    return out


def summary_table(ds: xr.Dataset, *, confidence_level: float = 0.95, key=None) -> list[dict]:
    """Per class and loss: networks, median and 95th percentile of ``|relative error|`` with
    ``scipy.stats.bootstrap`` percentile intervals, the median signed error, and whether the issue's
    targets are met (median <= 5%, 95th percentile <= 15%; population median <= 1%)."""
    rng = np.random.default_rng(0 if key is None else key)
    rows = []
    for name in dict.fromkeys(ds.size_class.values.tolist()):
        selected = ds.where(ds.size_class == name, drop=True)
        for loss_kind in ("empirical", "population"):
            variable = f"{loss_kind}_relative_error"
            if variable not in selected:
                continue
            errors = np.asarray(selected[variable].values, dtype=np.float64)
            finite = errors[np.isfinite(errors)]
            row = {"size_class": name, "loss": loss_kind, "networks": int(errors.size),
                   "finite": int(finite.size)}
            absolute = np.abs(finite)
            row["median"] = float(np.median(absolute)) if finite.size else math.nan
            row["percentile_95"] = float(np.percentile(absolute, 95)) if finite.size else math.nan
            row["median_signed"] = float(np.median(finite)) if finite.size else math.nan
            for stat, label in ((np.median, "median"),
                                (lambda x, axis: np.percentile(x, 95, axis=axis), "percentile_95")):
                if finite.size >= 3:
                    interval = stats.bootstrap((absolute,), stat, confidence_level=confidence_level,
                                               method="percentile", n_resamples=2000, random_state=rng)
                    row[f"{label}_interval"] = (float(interval.confidence_interval.low),
                                                float(interval.confidence_interval.high))
                else:
                    row[f"{label}_interval"] = (math.nan, math.nan)
            if loss_kind == "population":
                row["target"] = f"median <= {TARGET_POPULATION_MEDIAN:.0%}"
                row["met"] = bool(row["median"] <= TARGET_POPULATION_MEDIAN and finite.size == errors.size)
            else:
                row["target"] = f"median <= {TARGET_MEDIAN:.0%}, 95th <= {TARGET_PERCENTILE_95:.0%}"
                row["met"] = bool(row["median"] <= TARGET_MEDIAN
                                  and row["percentile_95"] <= TARGET_PERCENTILE_95
                                  and finite.size == errors.size)
            rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`summary_table` rows."""
    def interval(low: float, high: float) -> str:
        finite = math.isfinite(low) and math.isfinite(high)
        return f"[{low:.1%}, {high:.1%}]" if finite else "[n/a: < 3 networks]"

    lines = ["| class | loss | networks | median abs. rel. error [95% CI] | 95th percentile [95% CI] | "
             "median signed error | target | met |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["median_interval"]
        plo, phi = r["percentile_95_interval"]
        lines.append(f"| {r['size_class']} | {r['loss']} | {r['finite']}/{r['networks']} | "
                     f"{r['median']:.1%} {interval(lo, hi)} | "
                     f"{r['percentile_95']:.1%} {interval(plo, phi)} | "
                     f"{r['median_signed']:+.1%} | {r['target']} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)
