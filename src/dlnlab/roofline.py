"""``dlnlab bench --scaling``: throughput of the compiled steppers against this machine's roofline.

For every case (method, width ``d``, depth ``L``, batch ``B``, runs) the engine's compiled
advance (:func:`dlnlab.engine.advance_from`, the loop :func:`~dlnlab.engine.simulate` runs) is
timed as ````dlnlab bench`` does: the first call is reported as compile time, the
steps per call are chosen from a short calibration call so one call lasts about
``target_call_seconds``, and the rate is the median of ``repeats`` repetitions of at least
``min_seconds``. Run-steps/s = runs x steps per second.

Each rate is compared with the roofline (Williams, Waterman & Patterson 2009)
``min(P, I x BW)``: ``P`` the float32 matrix-product peak and ``BW`` the memory bandwidth, both
measured in the same run (:func:`measure_machine`), and ``I = FLOP / byte`` the case's
arithmetic intensity from the analytic counts :func:`sgd_flop`, :func:`sde_flop` and
:func:`minimum_bytes`. Problem: square widths ``d`` at every layer, the whitened online task
``Task.from_spectrum(key, d, d, [1, 2/3, 1/3])`` without label noise, float32. docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import _validation as v
from .benchmarks import device_description, load_average, median_rate

WIDTHS = (12, 32, 64, 128, 256)
DEPTHS = (2, 4, 8)
BATCH_SIZES = (1, 32)
RUN_COUNTS = (1, 64, 1024)
METHODS = ("sgd", "sde")
QUICK = dict(widths=(12, 64), depths=(4,), batch_sizes=(1,), run_counts=(64, 1024))
METHOD_LABELS = {"sgd": "online SGD", "sde": "anisotropic SDE"}
BLOCK_STEPS = 64                  # the engine's default Layout.block_steps (noise drawn per block)
SPECTRUM = (1.0, 2 / 3, 1 / 3)




# --------------------------------------------------------------------------- analytic counts
def sgd_flop(width: int, depth: int, batch_size: int) -> int:
    """FLOP of one online-SGD run-step (whitened task, no label noise), from
    ``sgd.online_batch`` and ``_ops.minibatch_updates``, counting ``2 m k n`` per ``(m, k) (k, n)``
    product and one per elementwise operation (``d`` = width, ``L`` = depth, ``B`` = batch):

    - targets ``y = M x``: ``2 d^2 B``;  forward ``L`` products ``W_l a_{l-1}``: ``2 L d^2 B``;
    - error ``e = a_L - y``, loss ``e * e`` and its sum, scaling ``e eta / B``: ``4 d B``;
    - backward ``L - 1`` transposed products ``W_l^T e_l``: ``2 (L - 1) d^2 B``;
    - ``L`` updates ``e_l a_{l-1}^T``: ``2 d^2 B`` each (``B = 1``: an outer product, ``d^2``);
    - ``L`` subtractions ``W_l - U_l``: ``L d^2``.

    Total ``6 L d^2 B + L d^2 + 4 d B`` for ``B > 1`` and ``6 L d^2 + 4 d`` for ``B = 1``. The
    ``d B`` standard normals of ``x`` are counted separately (:func:`normals_per_step`).
    """
    d, L, B = width, depth, batch_size
    if B == 1:
        return 6 * L * d * d + 4 * d
    return 6 * L * d * d * B + L * d * d + 4 * d * B


def sde_flop(width: int, depth: int) -> int:
    """FLOP of one anisotropic-SDE run-step (``AnisotropicLangevin.apply``, whitened online task,
    no label noise), counted as :func:`sgd_flop`:

    - prefix products ``B_l = W_{l-1} ... W_1`` and ``W = W_L B_L`` (``_ops.prefix_products``):
      ``L - 1`` products, ``2 (L - 1) d^3``;
    - ``D = W - M``, the loss ``sum(D * D) / 2``: ``3 d^2``;
    - ``(Z + Z^T) / sqrt 2``: ``2 d^2`` (in ``AnisotropicLangevin.draw``, a block of steps at
      once);  ``R = D (Z + Z^T) / sqrt 2``: ``2 d^3``;
    - ``Q = h D + sqrt(h eta / B) R``: ``3 d^2``;
    - ``A_l^T Q B_l^T`` for every layer (``_ops.layer_maps``): ``L - 1`` products with ``B_l^T``
      and ``L - 1`` with ``W_l^T``, ``4 (L - 1) d^3``;  ``L`` subtractions: ``L d^2``.

    Total ``2 (3 L - 2) d^3 + (L + 8) d^2``; the batch size only scales the noise. The ``d^2``
    normals of ``Z`` are counted separately (:func:`normals_per_step`).
    """
    d, L = width, depth
    return 2 * (3 * L - 2) * d ** 3 + (L + 8) * d * d


def normals_per_step(method: str, width: int, batch_size: int) -> int:
    """Standard normals per run-step: ``d B`` inputs for SGD, ``d^2`` (``Z``) for the SDE."""
    return width * batch_size if method == "sgd" else width * width


def flop_per_step(method: str, width: int, depth: int, batch_size: int) -> int:
    """:func:`sgd_flop` or :func:`sde_flop` by method name (``"sgd"`` / ``"sde"``)."""
    return sgd_flop(width, depth, batch_size) if method == "sgd" else sde_flop(width, depth)


def minimum_bytes(method: str, width: int, depth: int, batch_size: int, itemsize: int = 4) -> int:
    """Least memory traffic of one run-step in bytes: the ``L d^2`` weights read once and written
    once, plus the step's normals written once and read once: ``2 s (L d^2 + n)`` with ``s`` the
    bytes per number (4 in float32) and ``n`` = :func:`normals_per_step`."""
    return 2 * itemsize * (depth * width * width + normals_per_step(method, width, batch_size))


# ------------------------------------------------------------------------- machine limits
@dataclasses.dataclass(frozen=True)
class MachineLimits:
    """Measured ceilings: ``peak_gflop_per_second`` (best float32 matrix product) and
    ``bandwidth_gbyte_per_second`` (best STREAM triad), with what was measured."""
    peak_gflop_per_second: float
    bandwidth_gbyte_per_second: float
    matrix_size: int
    stream_mebibytes: int


def _sharded(shape, devices):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("device",))
    x = jnp.ones((len(devices),) + shape, jnp.float32)
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("device")))


def measure_machine(*, matrix_size: int = 2048, stream_mebibytes: int = 64, min_seconds: float = 0.5,
                    repeats: int = 3) -> MachineLimits:
    """Measure the float32 matrix peak and the memory bandwidth now, in this process.

    Peak: ``jit`` of ``A B`` for ``(n, n)`` float32 matrices (``n = matrix_size``), ``2 n^3`` FLOP
    per product, once on one device and once with one product per host device at the same time
    (how the engine spreads run groups); the better rate, GFLOP/s. Bandwidth: a STREAM triad
    ``a = b + s c`` on float32 arrays of ``stream_mebibytes`` MiB each (far larger than the
    caches), counted as three arrays moved (two read, one written), likewise on one device and
    split over all; the better rate, GB/s (1e9 bytes/s). Each is a median of ``repeats``
    repetitions of at least ``min_seconds``.
    """
    v.positive_int("matrix_size", matrix_size)
    v.positive_int("stream_mebibytes", stream_mebibytes)
    v.finite_scalar("min_seconds", min_seconds, minimum=0.0, strict=True)
    v.positive_int("repeats", repeats)
    devices = jax.devices()
    product = jax.jit(lambda a, b: jnp.einsum("nij,njk->nik", a, b))
    triad = jax.jit(lambda b, c: b + np.float32(3.0) * c)
    length = stream_mebibytes * 2 ** 20 // 4
    peak = bandwidth = 0.0
    for group in ([devices[0]], devices) if len(devices) > 1 else ([devices[0]],):
        a = _sharded((matrix_size, matrix_size), group)
        jax.block_until_ready(product(a, a))
        rate = median_rate(lambda a=a: jax.block_until_ready(product(a, a)),
                            2.0 * matrix_size ** 3 * len(group), min_seconds, repeats)
        peak = max(peak, rate / 1e9)
        del a
        b = _sharded((length // len(group),), group)
        c = b + 1.0
        jax.block_until_ready(triad(b, c))
        rate = median_rate(lambda b=b, c=c: jax.block_until_ready(triad(b, c)),
                            3.0 * 4 * length, min_seconds, repeats)
        bandwidth = max(bandwidth, rate / 1e9)
        del b, c
    return MachineLimits(peak, bandwidth, matrix_size, stream_mebibytes)


def measure_normal_seconds(*, runs: int = 256, steps: int = 16, count: int = 144,
                           min_seconds: float = 0.5, repeats: int = 3) -> tuple[float, str]:
    """Seconds per standard normal of the engine's counter-based draw on the whole machine,
    measured now: ``(seconds, source)``.

    The draw every stepper's noise comes from (``dlnlab.dynamics.counter_normals``: Threefry-2x32 of the
    run's key and the step, then ``jax.random.normal``'s float32 transform; the bits are part of
    the results, docs/theory.md), timed on one device for ``runs`` runs x ``steps`` steps x
    ``count`` normals per call (about 2 MiB of float32 with the defaults, in the caches), as
    XLA compiles it and, where the compiled kernels are available, as the SGD kernel draws it
    (the same bits); the faster of the two, divided by the number of host devices (perfect
    scaling over the cores: a lower bound of what the draw costs when every core draws).
    ``source`` names the faster draw. Raises ``ValueError`` for a count or time out of range.
    """
    from .dynamics import counter_normals, kernels

    for name, value in (("runs", runs), ("steps", steps), ("count", count), ("repeats", repeats)):
        v.positive_int(name, value)
    v.finite_scalar("min_seconds", min_seconds, minimum=0.0, strict=True)
    device = jax.devices()[0]
    words = jax.device_put(jax.random.bits(jax.random.key(5), (2, runs), jnp.uint32), device)
    draws = {"XLA": jax.jit(lambda w, first: counter_normals(
        w, first + jnp.arange(steps, dtype=jnp.int32), (count,), jnp.float32))}
    if kernels.available():
        draws["compiled kernel"] = jax.jit(lambda w, first: kernels.online_normals(
            w, first, steps, count, jnp.float32))
    normals = float(runs * steps * count)
    first, best = jax.device_put(jnp.int32(0), device), {}
    for source, draw in draws.items():
        jax.block_until_ready(draw(words, first))
        rate = median_rate(lambda draw=draw: jax.block_until_ready(draw(words, first)),
                           normals, min_seconds, repeats)
        best[source] = 1.0 / (rate * max(1, len(jax.devices())))
    source = min(best, key=best.get)
    return best[source], source


def step_floor(method: str, width: int, depth: int, batch_size: int, limits: MachineLimits,
               normal_seconds: float) -> float:
    """The most run-steps/s any implementation of one step could reach on this machine:
    ``1 / (n t_z + F / P)``, with ``n`` = :func:`normals_per_step` normals at ``t_z`` seconds
    each (:func:`measure_normal_seconds`: their bits are fixed by the results) and ``F`` =
    :func:`flop_per_step` FLOP at the matrix peak ``P`` (:func:`measure_machine`). Generous on
    purpose: the draw at its best measured cost on every core at once, every FLOP at the peak of
    a 2048-wide product, no memory traffic and no overlap lost. Raises ``ValueError`` for a
    non-positive time or an unknown method."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
    v.finite_scalar("normal_seconds", normal_seconds, minimum=0.0, strict=True)
    seconds = (normals_per_step(method, width, batch_size) * normal_seconds
               + flop_per_step(method, width, depth, batch_size) / (limits.peak_gflop_per_second * 1e9))
    return 1.0 / seconds


# ---------------------------------------------------------------------------------- cases
def _total_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):   # not available on every platform
        return 8 * 2 ** 30


def memory_estimate(method: str, width: int, depth: int, batch_size: int, runs: int,
                    itemsize: int = 4) -> int:
    """Bytes a case holds at once: the state twice (read and written: ``2 runs L d^2 s``) and one
    pre-drawn noise block (``runs x 64 steps x`` :func:`normals_per_step` ``x s``)."""
    state = runs * depth * width * width * itemsize
    noise = runs * BLOCK_STEPS * normals_per_step(method, width, batch_size) * itemsize
    return 2 * state + noise


def _progress(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _check_grid(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, list | tuple) else (values,)
    if not values:
        v.fail(name, values, "must name at least one value")
    for value in values:
        v.positive_int(name, value)
    if len(set(values)) != len(values):
        v.fail(name, values, "must not repeat a value")
    return tuple(int(x) for x in values)


def _time_case(stepper, weights, hparams, runs: int, target_call_seconds: float, min_seconds: float,
               repeats: int, product: str = "auto"):
    """``(compile_s, steps_per_call, run_steps_per_s, diverged_runs)`` of the engine's advance."""
    from .engine import Layout, advance_from

    batched = tuple(jnp.broadcast_to(w[None], (runs,) + w.shape) + 0 for w in weights)
    advance = advance_from(stepper, batched, hparams, jax.random.key(3), layout=Layout(product=product))

    def call(n):
        return jax.block_until_ready(advance(n))

    t0 = time.perf_counter()
    call(1)                                   # compiles (one step of run time is negligible)
    compile_s = time.perf_counter() - t0
    # Every call draws whole 64-step noise blocks and pays a fixed dispatch cost: a timed call of
    # fewer steps would charge a block's randomness and the dispatch to a few steps (seen: 4-50x
    # too slow at d >= 64 with many runs). So a timed call holds whole blocks, at least one.
    steps = BLOCK_STEPS
    while True:                               # calibrate: a call of at least 0.05 s
        t0 = time.perf_counter()
        call(steps)
        elapsed = time.perf_counter() - t0
        if elapsed >= 0.05 or steps >= 2 ** 22:
            break
        steps *= 4
    steps = max(BLOCK_STEPS, int(steps * target_call_seconds / elapsed) // BLOCK_STEPS * BLOCK_STEPS)
    _, diverged = call(steps)
    rate = median_rate(lambda: call(steps), runs * steps, min_seconds, repeats)
    return compile_s, steps, rate, int(np.sum(np.asarray(diverged) >= 0))


def run_scaling(*, quick: bool = False, widths: Sequence[int] | None = None,
                depths: Sequence[int] | None = None, batch_sizes: Sequence[int] | None = None,
                run_counts: Sequence[int] | None = None, methods: Sequence[str] = METHODS,
                memory_cap_gib: float | None = None, max_step_seconds: float = 0.05,
                target_call_seconds: float = 0.4, min_seconds: float = 0.3, repeats: int = 3,
                machine: MachineLimits | None = None, progress: bool = True,
                product: str = "auto") -> xr.Dataset:
    """Time every case of the grid and compare it with the roofline measured in the same run.

    Grid (defaults; ``quick``: d in {12, 64}, L = 4, B = 1, runs in {64, 1024}): ``widths`` d in
    {12, 32, 64, 128, 256}, ``depths`` L in {2, 4, 8}, ``batch_sizes`` B in {1, 32}, ``run_counts``
    in {1, 64, 1024}, ``methods`` ``"sgd"`` (``OnlineSGD(task, batch_size=B)``, learning rate
    ``eta = 0.1 / (d L)``) and ``"sde"`` (``AnisotropicLangevin(task)``, ``h = eta / 10``).

    A case is skipped, with its reason in ``skipped``, when :func:`memory_estimate` exceeds
    ``memory_cap_gib`` (default: a quarter of this machine's memory), when one step of all its
    runs would take more than ``max_step_seconds`` even at the roofline (a timed call holds at
    least one 64-step noise block), or for the SDE at ``B > 1`` (the batch size only scales the
    noise: the same computation as ``B = 1``).

    Returns a Dataset with dims ``(method, width, depth, batch_size, runs)`` and variables
    ``run_steps_per_second``, ``gflop_per_second``, ``gbyte_per_second`` (at the minimum bytes),
    ``roofline_fraction`` (achieved / ``min(P, I BW)``), ``roofline_gflop_per_second``,
    ``bound`` (``"memory"`` / ``"compute"``), ``product`` (the engine's product layout for the
    case, ``Layout(product=product)`` resolved: ``"auto"`` picks batched from width 32, 16 for
    the SDE), ``flop_per_step``, ``normals_per_step``,
    ``bytes_per_step``, ``arithmetic_intensity`` (FLOP/byte), ``compile_seconds``,
    ``steps_per_call``, ``diverged_runs``, ``memory_estimate_bytes``, ``skipped`` (``""`` when
    measured; NaN rates then; select with a dict, ``ds.sel({"method": "sgd"})``, as
    ``Dataset.sel`` has its own ``method`` argument). Attributes: the measured ``peak_gflop_per_second`` and
    ``bandwidth_gbyte_per_second``, ``device``, ``load_average_start``/``_end`` (1/5/15 min),
    ``dtype``, timing settings. Raises ``ValueError`` (one line) for a bad option.
    """
    from .core import Task, init_gaussian
    from .dynamics import AnisotropicLangevin, Hyperparameters, OnlineSGD, StepSizeHyperparameters
    from .engine import resolve_product

    base = QUICK if quick else dict(widths=WIDTHS, depths=DEPTHS, batch_sizes=BATCH_SIZES,
                                    run_counts=RUN_COUNTS)
    widths = _check_grid("widths", base["widths"] if widths is None else widths)
    depths = _check_grid("depths", base["depths"] if depths is None else depths)
    batch_sizes = _check_grid("batch_sizes", base["batch_sizes"] if batch_sizes is None else batch_sizes)
    run_counts = _check_grid("run_counts", base["run_counts"] if run_counts is None else run_counts)
    methods = tuple(methods) if isinstance(methods, list | tuple) else (methods,)
    if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        v.fail("methods", methods, f"must be distinct names among {', '.join(METHODS)}")
    from .engine.options import PRODUCTS
    if product not in PRODUCTS:
        v.fail("product", product, f"must be one of {', '.join(PRODUCTS)}")
    if memory_cap_gib is not None:
        v.finite_scalar("memory_cap_gib", memory_cap_gib, minimum=0.0, strict=True)
    v.finite_scalar("max_step_seconds", max_step_seconds, minimum=0.0, strict=True)
    v.finite_scalar("target_call_seconds", target_call_seconds, minimum=0.0, strict=True)
    v.finite_scalar("min_seconds", min_seconds, minimum=0.0, strict=True)
    v.positive_int("repeats", repeats)
    cap = (_total_memory_bytes() / 4 if memory_cap_gib is None else memory_cap_gib * 2 ** 30)

    load_start = load_average()
    device = device_description()
    if machine is None:
        _progress("measuring the machine: float32 matrix peak and STREAM triad bandwidth", progress)
        machine = measure_machine()
    peak, bandwidth = machine.peak_gflop_per_second, machine.bandwidth_gbyte_per_second
    _progress(f"peak {peak:.1f} GFLOP/s, bandwidth {bandwidth:.1f} GB/s, load {load_start}", progress)

    dims = ("method", "width", "depth", "batch_size", "runs")
    shape = (len(methods), len(widths), len(depths), len(batch_sizes), len(run_counts))
    numbers = {name: np.full(shape, np.nan) for name in (
        "run_steps_per_second", "gflop_per_second", "gbyte_per_second", "roofline_fraction",
        "roofline_gflop_per_second", "flop_per_step", "normals_per_step", "bytes_per_step",
        "arithmetic_intensity", "compile_seconds", "steps_per_call", "diverged_runs",
        "memory_estimate_bytes")}
    skipped = np.full(shape, "", dtype=object)
    bound = np.full(shape, "", dtype=object)
    products = np.full(shape, "", dtype=object)
    cases = [(i, j, k, m, n) for i in range(shape[0]) for j in range(shape[1])
             for k in range(shape[2]) for m in range(shape[3]) for n in range(shape[4])]
    tasks = {}
    for number, index in enumerate(cases, start=1):
        i, j, k, m, n = index
        method, d, L, B, runs = methods[i], widths[j], depths[k], batch_sizes[m], run_counts[n]
        flop, normals = flop_per_step(method, d, L, B), normals_per_step(method, d, B)
        nbytes = minimum_bytes(method, d, L, B)
        intensity = flop / nbytes
        roof = min(peak, intensity * bandwidth)
        memory = memory_estimate(method, d, L, B, runs)
        step_seconds = runs * max(flop / (peak * 1e9), nbytes / (bandwidth * 1e9))
        for name, value in (("flop_per_step", flop), ("normals_per_step", normals),
                            ("bytes_per_step", nbytes), ("arithmetic_intensity", intensity),
                            ("roofline_gflop_per_second", roof), ("memory_estimate_bytes", memory)):
            numbers[name][index] = value
        bound[index] = "compute" if peak <= intensity * bandwidth else "memory"
        label = f"[{number}/{len(cases)}] {method} d={d} L={L} B={B} runs={runs}"
        if method == "sde" and B > 1:
            skipped[index] = "same computation as B=1 (the batch size only scales the SDE noise)"
        elif memory > cap:
            skipped[index] = (f"memory: state x 2 + one noise block = {memory / 2 ** 30:.1f} GiB "
                              f"> cap {cap / 2 ** 30:.1f} GiB")
        elif step_seconds > max_step_seconds:
            skipped[index] = (f"time: one step of all runs takes >= {step_seconds:.3g} s even at the "
                              f"roofline > max_step_seconds={max_step_seconds:g}")
        if skipped[index]:
            _progress(f"{label}: skipped ({skipped[index]})", progress)
            continue
        if d not in tasks:
            tasks[d] = Task.from_spectrum(jax.random.key(1), d, d, list(SPECTRUM), dtype=jnp.float32)
        task = tasks[d]
        weights = init_gaussian(jax.random.key(2), (d,) * (L + 1), 2.0, dtype=jnp.float32)
        lr = 0.1 / (d * L)
        if method == "sgd":
            stepper, hparams = OnlineSGD(task, batch_size=B), Hyperparameters(lr, float(B))
        else:
            stepper, hparams = AnisotropicLangevin(task), StepSizeHyperparameters(lr, float(B), lr / 10)
        products[index] = resolve_product(stepper, weights, product)
        compile_s, steps, rate, diverged = _time_case(stepper, weights, hparams, runs,
                                                      target_call_seconds, min_seconds, repeats, product)
        achieved = rate * flop / 1e9
        for name, value in (("run_steps_per_second", rate), ("gflop_per_second", achieved),
                            ("gbyte_per_second", rate * nbytes / 1e9),
                            ("roofline_fraction", achieved / roof), ("compile_seconds", compile_s),
                            ("steps_per_call", steps), ("diverged_runs", diverged)):
            numbers[name][index] = value
        _progress(f"{label} ({products[index]}): {rate:.3g} run-steps/s, {achieved:.3g} GFLOP/s, "
                  f"{achieved / roof:.1%} of the {bound[index]} roofline"
                  + (f", {diverged} runs diverged" if diverged else ""), progress)

    coords = dict(method=list(methods), width=list(widths), depth=list(depths),
                  batch_size=list(batch_sizes), runs=list(run_counts))
    data = {name: (dims, values) for name, values in numbers.items()}
    data["skipped"] = (dims, skipped.astype(str))
    data["bound"] = (dims, bound.astype(str))
    data["product"] = (dims, products.astype(str))
    ds = xr.Dataset(data, coords=coords)
    units = dict(run_steps_per_second="run-steps/s", gflop_per_second="GFLOP/s",
                 gbyte_per_second="GB/s", roofline_gflop_per_second="GFLOP/s",
                 flop_per_step="FLOP per run-step", normals_per_step="normals per run-step",
                 bytes_per_step="bytes per run-step", arithmetic_intensity="FLOP/byte",
                 compile_seconds="s", steps_per_call="steps", diverged_runs="runs",
                 memory_estimate_bytes="bytes", roofline_fraction="1")
    for name, unit in units.items():
        ds[name].attrs["units"] = unit
    ds.attrs.update(
        title="dlnlab bench --scaling: throughput against the measured roofline",
        peak_gflop_per_second=peak, bandwidth_gbyte_per_second=bandwidth,
        matrix_size=machine.matrix_size, stream_mebibytes=machine.stream_mebibytes,
        device=device, load_average_start=load_start, load_average_end=load_average(),
        dtype="float32", task="whitened online Task.from_spectrum(d, d, [1, 2/3, 1/3]), no label noise",
        memory_cap_bytes=float(cap), max_step_seconds=max_step_seconds,
        target_call_seconds=target_call_seconds, min_seconds=min_seconds, repeats=repeats,
        xla_flags=os.environ.get("XLA_FLAGS", ""), jax_version=jax.__version__,
        source="docs/performance.md")
    return ds


# ---------------------------------------------------------------------------------- output
def _cases(ds: xr.Dataset):
    """Every case of the grid as a 0-d Dataset, in (method, width, depth, batch_size, runs) order."""
    dims = ("method", "width", "depth", "batch_size", "runs")
    for index in np.ndindex(*(ds.sizes[d] for d in dims)):
        yield ds.isel(dict(zip(dims, index, strict=True)))


def scaling_table(ds: xr.Dataset) -> str:
    """A Markdown report of :func:`run_scaling`'s Dataset: the machine, the measured cases and the
    skipped ones with their reasons."""
    lines = [
        "# dlnlab bench --scaling",
        "",
        f"- device: {ds.attrs['device']}; float32; {ds.attrs.get('task', '')}",
        f"- measured in this run: float32 matrix peak {ds.attrs['peak_gflop_per_second']:.1f} GFLOP/s "
        f"({ds.attrs['matrix_size']}^2 jnp.dot), STREAM-triad bandwidth "
        f"{ds.attrs['bandwidth_gbyte_per_second']:.1f} GB/s ({ds.attrs['stream_mebibytes']} MiB arrays)",
        f"- load average (1/5/15 min) at start {ds.attrs['load_average_start']}, "
        f"at end {ds.attrs['load_average_end']}",
        f"- timing: median of {ds.attrs['repeats']} repetitions of >= {ds.attrs['min_seconds']} s, "
        f"calls of ~{ds.attrs['target_call_seconds']} s; XLA_FLAGS=`{ds.attrs['xla_flags']}`",
        "- FLOP and bytes per run-step: analytic counts (`dlnlab.roofline.sgd_flop`, `sde_flop`, "
        "`minimum_bytes`); roofline = min(peak, intensity x bandwidth). The bytes are the least "
        "traffic to memory: a fraction above 100% means the working set stays in the caches (the "
        "memory bandwidth is then not what bounds the case)",
        "",
        "| method | d | L | B | runs | product | run-steps/s | GFLOP/s | GB/s | FLOP/byte | bound "
        "| fraction of roofline | compile s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    skipped, same = [], []
    for case in _cases(ds):
        key = (f"{case.method.item()} | {case.width.item()} | {case.depth.item()} | "
               f"{case.batch_size.item()} | {case.runs.item()}")
        if str(case.skipped.item()).startswith("same computation"):
            same.append(case)
            continue
        if str(case.skipped.item()):
            skipped.append(f"- {key.replace(' | ', ' ')}: {case.skipped.item()}")
            continue
        lines.append(
            f"| {key} | {case.product.item() if 'product' in case else ''} "
            f"| {float(case.run_steps_per_second):.3g} | {float(case.gflop_per_second):.3g} "
            f"| {float(case.gbyte_per_second):.3g} | {float(case.arithmetic_intensity):.3g} "
            f"| {case.bound.item()} | {float(case.roofline_fraction):.1%} "
            f"| {float(case.compile_seconds):.2f} |")
    if same:
        batches = sorted({int(c.batch_size) for c in same})
        skipped.append(f"- sde at B = {', '.join(map(str, batches))} ({len(same)} cases): same "
                       "computation as B = 1 (the batch size only scales the SDE noise)")
    if skipped:
        lines += ["", f"Skipped cases ({len(skipped) - bool(same) + len(same)}: method d L B runs):",
                  ""] + skipped
    return "\n".join(lines) + "\n"


def write_scaling(ds: xr.Dataset, out: str | os.PathLike) -> list:
    """Write ``scaling.nc``, ``scaling.md`` and ``roofline.png``/``.pdf`` into ``out`` (created)
    through :mod:`dlnlab.io.atomic`; returns the paths."""
    from pathlib import Path

    import matplotlib

    from .io.atomic import atomic_save_figure, atomic_write_dataset, atomic_write_text
    from .plot.roofline import roofline_figure

    out = Path(out)
    if out.exists() and not out.is_dir():
        v.fail("out", str(out), "must be a folder (a file of that name exists)")
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_dataset(ds, out / "scaling.nc"),
             atomic_write_text(scaling_table(ds), out / "scaling.md")]
    with matplotlib.rc_context({"backend": "agg"}):
        fig = roofline_figure(ds)
        paths += [atomic_save_figure(fig, out / name) for name in ("roofline.png", "roofline.pdf")]
    return paths


def scaling_records(ds: xr.Dataset) -> dict:
    """JSON-ready summary: the machine attributes and one record per case."""
    from .io.atomic import strict_json

    records = []
    for case in _cases(ds):
        record = {name: case[name].item() for name in ("method", "width", "depth", "batch_size", "runs")}
        for name in ds.data_vars:
            value = case[name].item()
            record[name] = value if isinstance(value, str) else float(value)
        records.append(record)
    return strict_json(dict(attrs=dict(ds.attrs), cases=records))
