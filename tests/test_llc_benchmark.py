"""Tests of the learning-coefficient benchmark (dlnlab.llc.benchmark, ``dlnlab llc-benchmark``) and of
the sampler's burn-in step-size adaptation (docs/llc.md).

The benchmark runs here are tiny (2 networks of class 1K, 2 chains, 2% of the published steps): their
estimates are not accurate, so these tests check properties (the random networks, the exact values, the
sharding and resume bookkeeping, the summary statistics, the command line), each against an independent
computation. The step adaptation is tested on the regular Gaussian case of ``test_llc_estimator.py``
(one layer at the teacher, population loss), where the MALA acceptance and the SGLD estimate at a fixed
step have exact laws (derived in :func:`mala_acceptance` and :func:`discrete_stationary_value`).
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab import llc
from dlnlab.cli import main
from dlnlab.io import atomic_write_dataset
from dlnlab.llc import benchmark
from dlnlab.theory import learning_coefficient, parameter_count

TINY = {"classes": ("1K",), "num_networks": 2, "num_chains": 2, "steps_scale": 0.02}
"""2 networks of class 1K, 2 chains, 200 steps: seconds per network (estimates NOT accurate)."""
TINY_CLI = ["--protocol", "published", "--classes", "1K", "--networks", "2", "--chains", "2",
            "--steps-scale", "0.02", "--quiet"]
"""The same benchmark as ``BenchmarkSettings.published(**TINY)`` on the command line."""
TIMING_FIELDS = ("empirical_seconds", "population_seconds")



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One unsharded tiny benchmark written to a folder: ``(folder, dataset)``."""
    folder = tmp_path_factory.mktemp("unsharded")
    ds = benchmark.run_benchmark(benchmark.BenchmarkSettings(**TINY), folder)
    return folder, ds


def without_timing(ds: xr.Dataset) -> xr.Dataset:
    """The dataset without the wall-clock fields (the only fields that differ between two runs)."""
    return ds.drop_vars([name for name in TIMING_FIELDS if name in ds])


def assert_same_records(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Bit-for-bit equal records (values, dtypes, settings), wall-clock fields aside."""
    xr.testing.assert_identical(without_timing(actual), without_timing(expected))
    for name in without_timing(expected).data_vars:   # identical compares NaN == NaN; check the bits too
        if expected[name].dtype.kind == "f":
            np.testing.assert_array_equal(actual[name].values.view(np.int64),
                                          expected[name].values.view(np.int64), err_msg=name)


def network_key(seed: int, class_index: int, index: int):
    """The documented key of network ``index`` of class ``class_index`` (module docstring of
    :mod:`dlnlab.llc.benchmark`), then the ``k_net`` split of :func:`benchmark_network`."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), class_index), index)
    return jax.random.split(key, 5)[0]


# ----------------------------------------------------------------------------- 1. random networks
def check_network(widths, rank, weights, size_class) -> None:
    """Every documented property of one random network, recomputed with NumPy."""
    layers = len(widths) - 1
    assert size_class.min_layers <= layers <= size_class.max_layers
    assert all(size_class.min_width <= w <= size_class.max_width for w in widths), widths
    assert 0 <= rank <= min(widths)
    assert len(weights) == layers
    matrices = [np.asarray(w, dtype=np.float64) for w in weights]
    for l, w in enumerate(matrices):
        assert w.shape == (widths[l + 1], widths[l])
        assert np.linalg.matrix_rank(w, tol=1e-8) == rank, f"layer {l}"
    product = matrices[0]
    for w in matrices[1:]:
        product = w @ product
    singular = np.linalg.svd(product, compute_uv=False)
    assert np.linalg.matrix_rank(product, tol=1e-8) == rank
    assert np.all(singular[:rank] >= 0.5 - 1e-12) and np.all(singular[:rank] <= 1.5 + 1e-12), singular[:rank]
    np.testing.assert_allclose(singular[rank:], 0.0, atol=1e-12)
    for l in range(layers - 1):   # balanced: W_{l+1}^T W_{l+1} = W_l W_l^T
        np.testing.assert_allclose(matrices[l + 1].T @ matrices[l + 1], matrices[l] @ matrices[l].T,
                                   atol=1e-12, err_msg=f"layers {l}, {l + 1} not balanced")


def drawn_sizes(key, size_class) -> tuple[tuple[int, ...], int]:
    """The documented draw of ``(widths, rank)`` alone (no matrices), from the same key splits as
    :func:`random_network`; tied to it in :func:`test_random_network_properties`."""
    k_layers, k_widths, k_rank, _, _ = jax.random.split(key, 5)
    layers = int(jax.random.randint(k_layers, (), size_class.min_layers, size_class.max_layers + 1))
    widths = tuple(int(w) for w in jax.random.randint(k_widths, (layers + 1,), size_class.min_width,
                                                      size_class.max_width + 1))
    return widths, int(jax.random.randint(k_rank, (), 0, min(widths) + 1))


def test_random_network_properties(reference):
    """On the benchmark's two 1K networks (their shapes are already compiled), one more 1K and one
    10K network: depth and widths in the class ranges, rank in ``[0, min width]``, every layer of
    rank exactly ``r``, the end-to-end map of rank ``r`` with singular values in ``[0.5, 1.5]``, a
    balanced factorisation, and the sizes of :func:`drawn_sizes`. (Each new shape costs seconds of
    eager compilation, hence few networks; the size draw is covered over many keys below.)"""
    cases = [(network_key(0, 0, 0), "1K"), (network_key(0, 0, 1), "1K"),
             (jax.random.key(1000), "1K"), (jax.random.key(1001), "10K")]
    ranks = []
    for key, name in cases:
        size_class = benchmark.SIZE_CLASSES[name]
        widths, rank, weights = benchmark.random_network(key, size_class)
        check_network(widths, rank, weights, size_class)
        assert (widths, rank) == drawn_sizes(key, size_class)
        ranks.append(rank)
    assert max(ranks) > 0, "every network of rank 0: the rank checks were not exercised"


@pytest.mark.parametrize(("name", "count"), [("1K", 300), ("10K", 200), ("100K", 200)])
def test_random_network_sizes_cover_the_class_ranges(name, count):
    """Over many keys: depth in ``[min_layers, max_layers]`` with every depth drawn, widths in
    ``[min_width, max_width]`` with both ends drawn, rank in ``[0, min width]`` with both ends drawn
    (a draw stuck at one value fails: e.g. missing one of the 9 depths of class 10K in 200 draws
    has probability ``9 (8/9)^200 < 1e-9``)."""
    size_class = benchmark.SIZE_CLASSES[name]
    depths, all_widths, rank_is_zero, rank_is_full = set(), set(), 0, 0
    for index in range(count):
        widths, rank = drawn_sizes(jax.random.key(index), size_class)
        assert size_class.min_layers <= len(widths) - 1 <= size_class.max_layers
        assert all(size_class.min_width <= w <= size_class.max_width for w in widths), widths
        assert 0 <= rank <= min(widths)
        depths.add(len(widths) - 1)
        all_widths.update(widths)
        rank_is_zero += rank == 0
        rank_is_full += rank == min(widths)
    assert depths == set(range(size_class.min_layers, size_class.max_layers + 1))
    if name == "1K":   # ~1350 width draws over 46 values; rank 0 or full has probability >= 1/51 each
        assert all_widths == set(range(size_class.min_width, size_class.max_width + 1))
        assert rank_is_zero and rank_is_full


def test_random_network_is_a_function_of_the_key(reference):
    """Same key -> the same network (bit for bit); different keys -> different networks."""
    size_class = benchmark.SIZE_CLASSES["1K"]
    first = benchmark.random_network(network_key(0, 0, 0), size_class)
    again = benchmark.random_network(network_key(0, 0, 0), size_class)
    assert first[:2] == again[:2]
    for a, b in zip(first[2], again[2], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = benchmark.random_network(network_key(0, 0, 1), size_class)
    assert other[:2] != first[:2] or any(
        not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first[2], other[2], strict=True))


def test_check_network_rejects_an_unbalanced_or_wrong_rank_network(reference):
    """The checks above can fail: rescaling two layers keeps the product but unbalances the
    factorisation, and a full-rank perturbation changes the rank."""
    size_class = benchmark.SIZE_CLASSES["1K"]
    widths, rank, weights = benchmark.random_network(network_key(0, 0, 1), size_class)
    assert rank > 0 and len(weights) >= 2
    unbalanced = (2.0 * weights[0], 0.5 * weights[1], *weights[2:])   # same product, not balanced
    with pytest.raises(AssertionError, match="not balanced"):
        check_network(widths, rank, unbalanced, size_class)
    noisy = (weights[0] + 1e-3 * jnp.ones_like(weights[0]), *weights[1:])
    with pytest.raises(AssertionError):
        check_network(widths, rank, noisy, size_class)


# ----------------------------------------------------------------------------- 2. exact values
def test_records_hold_the_exact_values_of_their_networks(reference):
    """Each record's ``exact`` is Aoyagi's value recomputed from its stored widths and rank; the
    widths and rank are those of the documented per-network key (independent of the other
    networks); ``num_parameters`` is ``sum d_l d_{l-1}``; the relative error is
    ``(estimate - exact) / exact``; and every value is at most the regular value ``d / 2``."""
    _, ds = reference
    assert ds.sizes["network"] == TINY["num_networks"]
    for i in range(ds.sizes["network"]):
        widths = tuple(int(w) for w in str(ds.widths.values[i]).split(","))
        rank = int(ds["true_rank"].values[i])
        exact = learning_coefficient(widths, rank)
        assert float(ds.exact.values[i]) == float(exact.value)
        assert str(ds.exact_fraction.values[i]) == str(exact.value)
        assert int(ds.multiplicity.values[i]) == exact.multiplicity
        num_parameters = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        assert int(ds.num_parameters.values[i]) == num_parameters == parameter_count(widths)
        assert int(ds.num_layers.values[i]) == len(widths) - 1
        assert float(ds.exact.values[i]) <= num_parameters / 2
        index = int(ds["index"].values[i])
        net_widths, net_rank, _ = benchmark.random_network(network_key(0, 0, index),
                                                           benchmark.SIZE_CLASSES["1K"])
        assert (net_widths, net_rank) == (widths, rank)
        for loss in ("empirical", "population"):
            estimate = float(ds[f"{loss}_estimate"].values[i])
            assert float(ds[f"{loss}_relative_error"].values[i]) == pytest.approx(
                (estimate - float(exact.value)) / float(exact.value), rel=1e-14)
    # the comparison can fail: for some network another rank of the same widths has another value
    # (not for all: with no hidden bottleneck, e.g. widths 12,19,22,5, every rank gives d_in d_out / 2)
    other_values = []
    for i in range(ds.sizes["network"]):
        widths = tuple(int(w) for w in str(ds.widths.values[i]).split(","))
        values = {float(learning_coefficient(widths, r).value) for r in range(min(widths) + 1)}
        other_values.extend(values - {float(ds.exact.values[i])})
    assert other_values


# ----------------------------------------------------------------------------- 3. sharding and resume
def test_shards_merge_to_the_unsharded_run(reference, tmp_path):
    """Shards 0/2 and 1/2 in two folders, merged, give the unsharded records bit for bit; the
    merge is independent of the order of the parts and keeps a repeated network once."""
    _, whole = reference
    settings = benchmark.BenchmarkSettings(**TINY)
    parts = [benchmark.run_benchmark(settings, tmp_path / f"shard{k}", shard=(k, 2)) for k in (0, 1)]
    assert [p.sizes["network"] for p in parts] == [1, 1]
    assert [int(p["index"].values[0]) for p in parts] == [0, 1]
    for k, part in enumerate(parts):   # each shard's folder holds its part
        on_disk = xr.open_dataset(tmp_path / f"shard{k}" / "benchmark.nc").load()
        assert_same_records(on_disk, part)
    merged = benchmark.merge_benchmarks(parts)
    assert_same_records(merged, whole)
    assert_same_records(benchmark.merge_benchmarks(parts[::-1]), whole)
    assert_same_records(benchmark.merge_benchmarks([*parts, whole]), whole)
    # the comparison can fail: the same records with two estimates swapped are rejected
    swapped = merged.copy(deep=True)
    swapped["population_estimate"].values[:] = swapped["population_estimate"].values[::-1]
    with pytest.raises(AssertionError):
        assert_same_records(swapped, whole)


def test_finished_run_resumes_without_work(reference, monkeypatch):
    """A rerun into the folder of a finished run computes nothing and returns the same dataset
    (wall-clock fields included: they are read back, not remeasured)."""
    folder, whole = reference

    def forbidden(*args, **kwargs):
        raise AssertionError("benchmark_group called on a finished run")

    monkeypatch.setattr(benchmark, "benchmark_group", forbidden)
    again = benchmark.run_benchmark(benchmark.BenchmarkSettings(**TINY), folder)
    xr.testing.assert_identical(again, whole)


def test_partial_run_resumes_the_missing_networks(reference, tmp_path, monkeypatch):
    """A folder holding only network 0 (as after an interruption): the rerun computes network 1
    only, and the result equals the uninterrupted run."""
    _, whole = reference
    records = benchmark._records(whole)
    first_only = benchmark._dataset(records[:1], whole.attrs["benchmark_settings"])
    atomic_write_dataset(first_only, tmp_path / "benchmark.nc")
    calls = []
    original = benchmark.benchmark_group

    def counting(networks, size_class, settings, **options):
        calls.append((size_class.name, [index for index, _ in networks]))
        return original(networks, size_class, settings, **options)

    monkeypatch.setattr(benchmark, "benchmark_group", counting)
    resumed = benchmark.run_benchmark(benchmark.BenchmarkSettings(**TINY), tmp_path, group_by="class")
    assert calls == [("1K", [1])]
    assert_same_records(resumed, whole)


def test_grouping_does_not_change_the_results(reference):
    """The two networks (depths 3 and 5) in one compiled program (``group_by="class"``: network 0
    padded to depth 5 with identity layers, both padded to the largest widths) give the records of
    the reference run (one network per program) to floating-point rounding: each network keeps its
    own keys and noise. The plan is printed before running: the group's padded widths, memory and
    work."""
    _, whole = reference
    lines = []
    grouped = benchmark.run_benchmark(benchmark.BenchmarkSettings(**TINY), group_by="class",
                                      progress=lines.append)
    assert [line for line in lines if "plan: group" in line] == [
        line for line in lines if line.startswith("llc-benchmark: plan: group 1/1: 1K 2 networks")]
    plan = next(line for line in lines if "plan: group" in line)
    assert "padded widths (45, 19, 26, 9, 26, 33)" in plan and "device memory" in plan and "TFLOP" in plan
    assert any(line.startswith("llc-benchmark: running group 1/1") for line in lines)
    expected, actual = without_timing(whole), without_timing(grouped)
    assert list(actual.data_vars) == list(expected.data_vars)
    for name in expected.data_vars:
        if expected[name].dtype.kind == "f":
            np.testing.assert_allclose(actual[name].values, expected[name].values, rtol=1e-9, atol=1e-12,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)
    assert actual.attrs == expected.attrs
    # the comparison can fail: the other network's estimate is far from this one's
    first = float(expected.population_estimate.values[0])
    assert abs(float(actual.population_estimate.values[1]) - first) > 1e-3 * max(1.0, abs(first))


def test_random_network_is_the_per_shape_draw():
    """:func:`random_network` draws prefixes of fixed-size arrays and factorises in NumPy; the
    network equals the one drawn with the exact shapes through JAX (``random_orthonormal``, the
    implementation before) to rounding."""
    from dlnlab.core.task import random_orthonormal

    size_class = benchmark.SIZE_CLASSES["1K"]
    key = network_key(0, 0, 1)
    widths, rank, weights = benchmark.random_network(key, size_class)
    assert rank > 0
    _, _, _, k_frames, k_scales = jax.random.split(key, 5)
    frames = [random_orthonormal(k, d, rank, jnp.float64)
              for k, d in zip(jax.random.split(k_frames, len(widths)), widths, strict=True)]
    scales = jax.random.uniform(k_scales, (rank,), jnp.float64, 0.5, 1.5) ** (1.0 / (len(widths) - 1))
    for l, w in enumerate(weights):
        expected = frames[l + 1] @ jnp.diag(scales) @ frames[l].T
        np.testing.assert_allclose(np.asarray(w), np.asarray(expected), rtol=0, atol=1e-14)
    # and it can fail: another key's frames differ
    other = random_orthonormal(jax.random.key(5), widths[1], rank, jnp.float64)
    assert np.abs(np.asarray(other) - np.asarray(frames[1])).max() > 0.1


def test_empirical_model_is_the_empirical_loss_model():
    """The benchmark's NumPy moments equal :func:`dlnlab.llc.empirical_loss_model` of the same inputs
    (drawn with the exact shape), targets and partition key, and :func:`population_loss_model`, to
    rounding."""
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(4, 7))
    key_data, key_batches = jax.random.key(1), jax.random.key(2)
    n = 4 * benchmark.BATCH_SIZE
    model = benchmark._empirical_model(key_data, key_batches, teacher, 1.5, n, 50)
    x = jax.random.uniform(key_data, (n, 7), jnp.float64, -1.5, 1.5)
    reference_model = llc.empirical_loss_model(x, x @ teacher.T, batch_size=benchmark.BATCH_SIZE,
                                               key=key_batches)
    for name in ("input_moment", "cross_moment", "target_moment", "batch_input_moments",
                 "batch_cross_moments"):
        np.testing.assert_allclose(np.asarray(getattr(model, name)),
                                   np.asarray(getattr(reference_model, name)), rtol=1e-12, atol=1e-14,
                                   err_msg=name)
    assert (model.num_samples, model.batch_size) == (reference_model.num_samples, reference_model.batch_size)
    assert model.num_batches == 4
    population = benchmark._population_model(teacher, 0.75, n)
    expected = llc.population_loss_model(teacher, 0.75 * np.eye(7), num_samples=n)
    for name in ("input_moment", "cross_moment", "target_moment"):
        np.testing.assert_allclose(np.asarray(getattr(population, name)), np.asarray(getattr(expected, name)),
                                   rtol=1e-13, err_msg=name)
    assert not population.stochastic and population.num_samples == n
    # and it can fail: another partition key gives other minibatch moments
    shuffled = benchmark._empirical_model(key_data, jax.random.key(3), teacher, 1.5, n, 50)
    difference = np.asarray(shuffled.batch_input_moments) - np.asarray(model.batch_input_moments)
    assert np.abs(difference).max() > 1e-3


def one_line_value_error(call, *names: str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip()
    for name in names:
        assert name in message, message
    return message


def test_other_settings_are_rejected(reference):
    """A folder made with other settings, or merging parts of different settings: one-line errors."""
    folder, whole = reference
    other = benchmark.BenchmarkSettings(**{**TINY, "seed": 1})
    one_line_value_error(lambda: benchmark.run_benchmark(other, folder), "out=", "other settings",
                         "seed 0 there, 1 here")
    changed = whole.copy()
    changed.attrs["benchmark_settings"] = json.dumps(
        {**json.loads(whole.attrs["benchmark_settings"]), "num_chains": 3}, sort_keys=True)
    one_line_value_error(lambda: benchmark.merge_benchmarks([whole, changed]), "parts=", "different")
    one_line_value_error(lambda: benchmark.merge_benchmarks([]), "parts=")
    for shard in ((2, 2), (-1, 2), (0, 0), (0.0, 1), [0, 1], (2, 3)):   # (2, 3): no network of 2
        one_line_value_error(lambda shard=shard: benchmark.run_benchmark(other, shard=shard), "shard=")
    one_line_value_error(lambda: benchmark.run_benchmark(other, group_by="layer"), "group_by=")
    one_line_value_error(lambda: benchmark.run_benchmark(other, networks_per_group=0), "networks_per_group=")


@pytest.mark.parametrize(("fields", "name"), [
    ({"classes": ("1K", "2K")}, "classes="), ({"classes": ()}, "classes="), ({"classes": "1K"}, "classes="),
    ({"classes": ("1K", "1K")}, "classes="), ({"num_networks": 0}, "num_networks="),
    ({"num_chains": 1}, "num_chains="), ({"seed": -1}, "seed="), ({"seed": True}, "seed="),
    ({"steps_scale": 0.0}, "steps_scale="), ({"steps_scale": 0.005}, "at least 100"),
    ({"step_scale": math.nan}, "step_scale="),
    ({"target_acceptance": 1.5}, "target_acceptance="), ({"losses": ("train",)}, "losses="),
    ({"calibrate": 1}, "calibrate="), ({"input_half_width": -1.0}, "input_half_width="),
])
def test_bad_settings_are_one_line_errors(fields, name):
    one_line_value_error(lambda: benchmark.BenchmarkSettings(**{**TINY, **fields}).validate(), name)


# ----------------------------------------------------------------------------- 4. summary table
def synthetic(errors_by_class: dict[str, dict[str, list[float]]]) -> xr.Dataset:
    """A benchmark dataset whose relative errors are the given ones (per class and loss), built
    with the module's own record-to-dataset step; the exact values vary over the networks."""
    records = []
    for name, by_loss in errors_by_class.items():
        count = len(next(iter(by_loss.values())))
        for i in range(count):
            exact = 3.0 + 7.5 * i
            record = {"size_class": name, "exact": exact, "multiplicity": 1, "num_parameters": 100,
                      "true_rank": 1, "index": i}
            for loss, errors in by_loss.items():
                finite = math.isfinite(errors[i])
                record[f"{loss}_estimate"] = exact * (1.0 + errors[i]) if finite else math.nan
            records.append(record)
    return benchmark._dataset(records, "{}")


def errors_with(median: float, percentile_95: float, count: int = 21, seed: int = 0) -> list[float]:
    """``count = 21`` signed errors whose absolute values have the given median (sorted value 10) and
    numpy 95th percentile (sorted value 19, since ``0.95 x 20 = 19``); signs alternate."""
    rng = np.random.default_rng(seed)
    low = np.sort(rng.uniform(0.0, median, 10))
    middle = np.sort(rng.uniform(median, percentile_95, 8))
    absolute = [*low, median, *middle, percentile_95, 0.6]
    signs = np.where(rng.permutation(count) % 2 == 0, 1.0, -1.0)
    return list(signs * np.asarray(absolute))


def test_summary_table_statistics_match_numpy():
    """Per class and loss: the counts, the median and 95th percentile of ``|relative error|`` and the
    median signed error equal NumPy's on the errors computed here; each bootstrap interval holds its
    point estimate and lies within the range of the data; rows come per class in order."""
    rng = np.random.default_rng(3)
    errors = {"10K": {"empirical": list(rng.normal(0.02, 0.1, 30)),
                      "population": list(rng.normal(0, 0.01, 30))},
              "1K": {"empirical": list(rng.normal(-0.05, 0.2, 25)),
                     "population": list(rng.normal(0, 0.02, 25))}}
    ds = synthetic(errors)
    rows = benchmark.summary_table(ds)
    assert [(r["size_class"], r["loss"]) for r in rows] == [
        ("10K", "empirical"), ("10K", "population"), ("1K", "empirical"), ("1K", "population")]
    for row in rows:
        exact = 3.0 + 7.5 * np.arange(len(errors[row["size_class"]][row["loss"]]))
        estimate = exact * (1.0 + np.asarray(errors[row["size_class"]][row["loss"]]))
        relative = (estimate - exact) / exact
        assert row["networks"] == row["finite"] == relative.size
        assert row["median"] == pytest.approx(np.median(np.abs(relative)), rel=1e-12)
        assert row["percentile_95"] == pytest.approx(np.percentile(np.abs(relative), 95), rel=1e-12)
        assert row["median_signed"] == pytest.approx(np.median(relative), rel=1e-12)
        for label in ("median", "percentile_95"):
            low, high = row[f"{label}_interval"]
            assert np.abs(relative).min() <= low <= row[label] <= high <= np.abs(relative).max(), (label, row)
    # the median of the signed errors is not the reported one (the comparison can fail)
    empirical_1k = rows[2]
    assert abs(empirical_1k["median"] - abs(empirical_1k["median_signed"])) > 1e-3


@pytest.mark.parametrize(("median", "percentile_95", "population_median", "met"), [
    (0.049, 0.149, 0.0099, (True, True)),
    (0.051, 0.149, 0.0101, (False, False)),
    (0.049, 0.151, 0.0099, (False, True)),
])
def test_summary_table_targets(median, percentile_95, population_median, met):
    """``met`` follows the issue's thresholds: empirical median <= 5% and 95th percentile <= 15%,
    population median <= 1%; cases just under and just over each threshold (the errors' signs
    alternate, so a rule on signed errors would give other answers)."""
    ds = synthetic({"1K": {"empirical": errors_with(median, percentile_95),
                           "population": errors_with(population_median, 0.5, seed=1)}})
    rows = {r["loss"]: r for r in benchmark.summary_table(ds)}
    assert rows["empirical"]["median"] == pytest.approx(median, rel=1e-9)
    assert rows["empirical"]["percentile_95"] == pytest.approx(percentile_95, rel=1e-9)
    assert rows["population"]["median"] == pytest.approx(population_median, rel=1e-9)
    assert (rows["empirical"]["met"], rows["population"]["met"]) == met


def test_summary_table_all_negative_errors_are_not_met():
    """All errors between -7% and -5.5%: the signed median is below 5%, the absolute one is not:
    not met."""
    negative = list(np.linspace(-0.07, -0.055, 11))
    ds = synthetic({"1K": {"empirical": negative, "population": list(np.linspace(-0.03, -0.015, 11))}})
    rows = {r["loss"]: r for r in benchmark.summary_table(ds)}
    assert rows["empirical"]["median_signed"] == pytest.approx(-0.0625)
    assert rows["empirical"]["median"] == pytest.approx(0.0625)
    assert not rows["empirical"]["met"] and not rows["population"]["met"]


def test_summary_table_nan_estimates_are_counted_and_fail_the_target():
    """A NaN estimate (every chain diverged): ``finite < networks``, the statistics cover the
    finite ones, and the target is not met even though the finite errors meet it."""
    good = errors_with(0.01, 0.05)
    small = list(np.linspace(-0.005, 0.005, 20))
    with_nan = [*good[:-1], math.nan]
    ds = synthetic({"1K": {"empirical": with_nan, "population": [*small, math.nan]}})
    rows = {r["loss"]: r for r in benchmark.summary_table(ds)}
    for row in rows.values():
        assert row["networks"] == 21 and row["finite"] == 20
        assert not row["met"]
    finite = np.abs(np.asarray(good[:-1]))
    assert rows["empirical"]["median"] == pytest.approx(np.median(finite), rel=1e-9)
    table = benchmark.format_table(benchmark.summary_table(ds))
    assert "| 1K | empirical | 20/21 |" in table
    # the same errors without the NaN meet it (the NaN is what fails)
    clean = synthetic({"1K": {"empirical": good[:-1], "population": [0.0] * 20}})
    assert all(r["met"] for r in benchmark.summary_table(clean))


# ----------------------------------------------------------------------------- 5. step adaptation
# the regular Gaussian case of test_llc_estimator.py: one layer W (2 x 3) at the teacher, population
# loss with S_x of eigenvalues 1, 0.5, 0.25, n beta = 100, gamma = 1
D_IN, D_OUT = 3, 2
INVERSE_TEMPERATURE = 100.0
ADAPTED = {"num_chains": 32, "num_burnin_steps": 2000, "num_draws": 4000, "diagnostic_every": 10,
           "localisation": 1.0, "inverse_temperature": INVERSE_TEMPERATURE}
TOO_LARGE_STEP = 1.0
"""``epsilon a_max = 101``: 100x the stable step 0.01 of test_llc_estimator (Euler factor 49.5 per step)."""


def regular_problem():
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D_IN, D_IN)))
    covariance = rotation @ np.diag([1.0, 0.5, 0.25]) @ rotation.T
    teacher = np.random.default_rng(1).normal(size=(D_OUT, D_IN))
    model = llc.population_loss_model(teacher, covariance, num_samples=1000)
    rates = INVERSE_TEMPERATURE * np.linalg.eigvalsh(np.kron(np.eye(D_OUT), covariance)) + 1.0
    return teacher, model, rates


def discrete_stationary_value(step_size: float, rates: np.ndarray) -> float:
    """``sum_i n beta h_i var_i / 2`` with ``var_i = 1 / (a_i (1 - epsilon a_i / 4))``,
    ``a_i = n beta h_i + gamma`` (test_llc_estimator.py module docstring)."""
    h = (rates - 1.0) / INVERSE_TEMPERATURE
    return float(np.sum(INVERSE_TEMPERATURE * h / (rates * (1.0 - step_size * rates / 4.0)))) / 2.0


def mala_acceptance(step_size: float, rates: np.ndarray, num_samples: int = 200_000) -> float:
    """Mean MALA acceptance of an exact-gradient Langevin proposal from the SGLD stationary law, in
    the eigenbasis of the posterior precision ``A`` (rates ``a_i``). With ``c_i = 1 - epsilon a_i / 2``,
    ``y_i = c_i x_i + sqrt(epsilon) xi_i`` and ``x_i ~ N(0, var_i)``, the Metropolis-Hastings log ratio
    of a Gaussian target is exactly ``-sum_i (epsilon a_i^2 / 8) (y_i^2 - x_i^2)`` (the proposal
    densities' quadratic terms cancel to this). Monte Carlo error ~ 1e-4."""
    rng = np.random.default_rng(0)
    variance = 1.0 / (rates * (1.0 - step_size * rates / 4.0))
    x = rng.normal(size=(num_samples, rates.size)) * np.sqrt(variance)
    y = (1.0 - step_size * rates / 2.0) * x + math.sqrt(step_size) * rng.normal(size=x.shape)
    log_ratio = -np.sum(step_size * rates**2 / 8.0 * (y**2 - x**2), axis=1)
    return float(np.exp(np.minimum(log_ratio, 0.0)).mean())


def adapted_run(target: float, seed: int):
    teacher, model, rates = regular_problem()
    sampler = llc.sampler_settings(step_size=TOO_LARGE_STEP, adapt_step_size=True, target_acceptance=target,
                                   **ADAPTED)
    data = llc.estimate_learning_coefficient((jnp.asarray(teacher),), model, jax.random.key(seed), sampler,
                                             warn=False)
    return data, rates


@pytest.mark.parametrize(("target", "other_target"), [(0.99, 0.9), (0.9, 0.99)])
def test_step_adaptation_from_a_too_large_step(target, other_target):
    """From a step 100x too large (acceptance 0, the Euler scheme unstable), adaptation during
    burn-in brings every chain back (none diverged) to a stable step, and:

    * during the draws each chain's acceptance is the exact MALA acceptance at its reported final
      step (so the step is fixed during the draws; the differences over the 32 independent chains
      are within 5 standard errors), and the law at half the reported step is rejected;
    * the exact acceptance at the adapted steps averages to ``target_acceptance`` within 5 standard
      errors of its spread over the chains (the final step of a Robbins-Monro recursion fluctuates
      around the root), and is rejected as matching the other target;
    * each chain's estimate is the exact discrete stationary value at its own step (mean difference
      within 5 standard errors); at target 0.9 (the larger step) the continuous-time value
      ``sum_i n beta h_i / (2 a_i)`` is rejected.
    """
    data, rates = adapted_run(target, seed=3)
    chains = data.sizes["chain"]
    assert not data.diverged.values.any() and data.attrs["num_chains_used"] == chains
    steps = data.step_size.values
    assert np.all(steps * rates.max() < 4.0), "adapted step still unstable"
    assert np.all(steps < TOO_LARGE_STEP / 10)

    draws = ADAPTED["num_burnin_steps"] // ADAPTED["diagnostic_every"]
    observed = data.acceptance.values[:, draws:].mean(axis=1)
    exact = np.array([mala_acceptance(s, rates) for s in steps])
    difference = observed - exact
    se = difference.std(ddof=1) / math.sqrt(chains)
    assert_close_mc(difference.mean(), 0.0, se, what="draws acceptance vs MALA law at the final step")
    at_half_step = np.array([mala_acceptance(s / 2, rates) for s in steps])
    assert_rejected_mc(difference.mean(), (at_half_step - exact).mean(), se,
                       what="acceptance at half the reported step")

    spread = exact.std(ddof=1) / math.sqrt(chains)
    assert_close_mc(exact.mean(), target, spread, what="adapted acceptance vs target")
    assert_rejected_mc(exact.mean(), other_target, spread, what="the other target")

    per_chain = data.chain_learning_coefficient.values
    difference = per_chain - np.array([discrete_stationary_value(s, rates) for s in steps])
    se = difference.std(ddof=1) / math.sqrt(chains)
    assert_close_mc(difference.mean(), 0.0, se, what="chain estimates vs discrete value at their steps")
    if target == 0.9:
        h = (rates - 1.0) / INVERSE_TEMPERATURE
        continuous = float(np.sum(INVERSE_TEMPERATURE * h / rates)) / 2.0
        assert_rejected_mc(per_chain.mean(), continuous, se, what="continuous-time value")


def test_fixed_too_large_step_diverges():
    """Without adaptation the same too-large step blows up every chain: labelled ``diverged``,
    NaN estimate, 0 chains used, and a warning in the dataset (not an exception)."""
    teacher, model, _ = regular_problem()
    sampler = llc.sampler_settings(step_size=TOO_LARGE_STEP, adapt_step_size=False, target_acceptance=0.99,
                                   **ADAPTED)
    data = llc.estimate_learning_coefficient((jnp.asarray(teacher),), model, jax.random.key(3), sampler,
                                             warn=False)
    assert data.diverged.values.all()
    assert data.attrs["num_chains_used"] == 0
    assert math.isnan(float(data.learning_coefficient))
    assert "diverged" in data.attrs["warnings"]
    assert np.all(data.step_size.values == TOO_LARGE_STEP)


# ----------------------------------------------------------------------------- 6. command line
def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["llc-benchmark", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_benchmark_and_merges_shards(reference, tmp_path, capsys):
    """A tiny run writes benchmark.nc (the same records as the Python API), table.md (the table
    of :func:`summary_table`, one row per loss of the class) and calibration.png/.pdf; two shard
    folders merged with ``--merge`` give the same records again."""
    _, whole = reference
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "--out", str(out), *TINY_CLI)
    assert code == 0, err
    ds = xr.open_dataset(out / "benchmark.nc").load()
    assert_same_records(ds, whole)
    text = (out / "table.md").read_text()
    context, table = text.split("\n\n", 1)
    assert context.startswith("Settings: ") and "steps_scale = 0.02" in context
    assert context.endswith("2 networks.")
    assert table.strip() == benchmark.format_table(benchmark.summary_table(whole)).strip()
    for loss in ("empirical", "population"):
        assert f"| 1K | {loss} | 2/2 |" in table
    assert table.strip() in stdout
    for suffix, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        path = out / f"calibration.{suffix}"
        assert path.read_bytes()[:4] == magic and os.path.getsize(path) > 1000

    # a rerun of the finished benchmark resumes without work and leaves the figures byte for byte
    stamps = {suffix: (out / f"calibration.{suffix}").stat().st_mtime_ns for suffix in ("png", "pdf")}
    pdf = (out / "calibration.pdf").read_bytes()
    code, again, err = run_cli(capsys, "--out", str(out), *TINY_CLI)
    assert code == 0, err
    assert table.strip() in again
    assert {suffix: (out / f"calibration.{suffix}").stat().st_mtime_ns for suffix in ("png", "pdf")} == stamps
    assert (out / "calibration.pdf").read_bytes() == pdf

    for k in (0, 1):
        code, _, err = run_cli(capsys, "--out", str(tmp_path / f"shard{k}"), *TINY_CLI, "--shard", f"{k}/2")
        assert code == 0, err
    merged = tmp_path / "merged"
    code, stdout, err = run_cli(capsys, "--out", str(merged), "--merge", str(tmp_path / "shard0"),
                                "--merge", str(tmp_path / "shard1"))
    assert code == 0, err
    assert_same_records(xr.open_dataset(merged / "benchmark.nc").load(), whole)
    assert (merged / "table.md").read_text() == text
    assert (merged / "calibration.png").is_file() and (merged / "calibration.pdf").is_file()


@pytest.mark.parametrize(("args", "name"), [
    (["--protocol", "nope"], "protocol="),
    (["--classes", "1K,2K"], "--classes="),
    (["--networks", "0"], "--networks="),
    (["--chains", "1"], "--chains="),
    (["--group-by", "layer"], "--group-by="),
    (["--networks-per-group", "0"], "--networks-per-group="),
    (["--networks", "1", "--shard", "1/2"], "shard="),
    (["--shard", "2/2"], "shard="),
    (["--shard", "x"], "shard="),
    (["--networks", "x"], "--networks"),
])
def test_cli_bad_input_exits_2_with_one_error_line(tmp_path, capsys, args, name):
    code, out, err = run_cli(capsys, "--out", str(tmp_path / "out"), "--quiet", *args)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert name in lines[0]
    assert not (tmp_path / "out" / "benchmark.nc").exists()


def test_cli_bad_folders_exit_2_with_one_error_line(tmp_path, capsys):
    """``--out`` a file, and ``--merge`` a folder without benchmark.nc."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, name in ((["--out", str(a_file)], "out="),
                       (["--out", str(tmp_path / "m"), "--merge", str(empty)], "merge=")):
        code, out, err = run_cli(capsys, *args, "--quiet")
        assert code == 2 and out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err


def test_llc_run_beyond_the_configs_runs_is_refused(tmp_path, capsys):
    """``dlnlab llc --at end --run 99`` with the default 4 runs: one error line naming the flag (it
    used to train 100 runs silently); ``--run 3``, the last run, passes this check (not run here)."""
    code = main(["llc", "--at", "end", "--run", "99", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --run=99: must be below the config's number of runs (4")
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_cli_plan_prints_the_groups_and_writes_nothing(tmp_path, capsys):
    """``--plan``: one line per group (the two tiny networks have depths 3 and 5: two groups by
    depth, one with ``--group-by class``, padded to the elementwise largest widths) and a total,
    and no output folder."""
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--out", str(out), *TINY_CLI, "--plan")
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("llc-benchmark: plan: 2 groups, 2 networks")
    assert "at 10 GFLOP/s, the rate measured on a 2-core CPU" in lines[-1]
    assert "1K depth 3 1 networks" in lines[0] and "padded widths (12, 19, 22, 5)" in lines[0]
    code, stdout, err = run_cli(capsys, "--out", str(out), *TINY_CLI, "--plan", "--group-by", "class")
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 2 and "padded widths (45, 19, 26, 9, 26, 33)" in lines[0]
    # chunks of one network: two groups, each at its own widths (no padding)
    code, stdout, err = run_cli(capsys, "--out", str(out), *TINY_CLI, "--plan", "--group-by", "class",
                                "--networks-per-group", "1")
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert {"padded widths (12, 19, 22, 5)" in lines[0], "padded widths (12, 19, 22, 5)" in lines[1]} == {
        True, False}
    assert not out.exists()


def test_cli_plan_leaves_out_the_networks_already_saved(reference, capsys):
    """``--plan`` on a folder that holds finished networks plans only the rest (as a rerun runs)."""
    folder, _ = reference
    code, stdout, err = run_cli(capsys, "--out", str(folder), *TINY_CLI, "--plan")
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("llc-benchmark: plan: 2 networks already in") and "left out" in lines[0]
    assert lines[-1].startswith("llc-benchmark: plan: 0 groups, 0 networks")
    code, stdout, err = run_cli(capsys, "--out", str(folder), *TINY_CLI[:-1], "--seed", "3", "--quiet",
                                "--plan")
    assert code == 2 and err.startswith("error: --out=") and "seed 0 there, 3 here" in err
