"""The one driver: ``simulate`` runs a stepper over many runs and records observables.

Layout: runs live on the trailing axis inside the compiled loop (see ``dynamics._ops``). One
compiled function advances all runs by ``n`` steps (``n`` is traced: any segment length reuses
the compilation); the randomness of a block of ``block_steps`` steps is drawn in one call
before the block's ``lax.scan``. A host loop walks from record time to record time in segments
of at most ``chunk_steps`` steps: that bounds memory, drives the progress bar and the
checkpoints, and costs one dispatch per segment. The engine knows steppers only through the
step contract: ``init``, ``draw``, ``apply``, ``time_step`` and the observer ``observe``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import _validation as v
from ..dynamics import key_words
from ..dynamics.base import Stepper, check_hyperparameter
from ..dynamics.observers import OBSERVABLE_DIMS
from ..io.atomic import atomic_write_npz
from .options import PRODUCTS, Checkpoint, Layout, Recording, Schedule

DEFAULT_DIVERGENCE_THRESHOLD = 1e8


def run_keys(key, num_runs: int, run_offset: int = 0):
    """Per-run keys ``fold_in(key, run_offset + i)``: run ``i`` is the same whatever the batch."""
    index = jnp.arange(run_offset, run_offset + num_runs)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _batched(state):
    """The state's run-batched part: every field but the step counter."""
    return state._replace(step=None)


def _with_dtype(stepper: Stepper, dtype) -> Stepper:
    """The stepper with its task's floating arrays in ``dtype`` (the weights' dtype sets the
    simulation's precision; a float64 task with float32 weights would otherwise promote)."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    if all(x.dtype == dtype for x in jax.tree_util.tree_leaves(stepper)
           if jnp.issubdtype(x.dtype, jnp.floating)):
        return stepper
    return jax.tree_util.tree_map(cast, stepper)


def family_hyperparameters(stepper: Stepper, hparams):
    """``hparams`` as the stepper family's type. Another NamedTuple is widened when every field
    it has is one of the family's (the missing ones take their defaults: ``Hyperparameters(eta)``
    serves an SDE with ``h = eta``); a field the family does not have is a one-line error."""
    expected = stepper.hyperparameters_type
    fields = getattr(hparams, "_fields", None)
    if fields is None:
        v.fail("hparams", type(hparams).__name__,
               f"must be {expected.__name__}({', '.join(expected._fields)}) for "
               f"{type(stepper).__name__} (stepper.hyperparameters(...) builds it)")
    if not isinstance(hparams, expected):
        defaults = type(hparams)._field_defaults
        foreign = [f for f in fields if f not in expected._fields
                   and not _is_default(getattr(hparams, f), defaults.get(f, _NO_DEFAULT))]
        if foreign:
            v.fail(f"hparams.{foreign[0]}", getattr(hparams, foreign[0]),
                   f"not a hyperparameter of {type(stepper).__name__} "
                   f"(valid: {', '.join(expected._fields)})")
        hparams = expected(**{f: getattr(hparams, f) for f in fields if f in expected._fields})
    for name in stepper.required_hyperparameters:
        if getattr(hparams, name) is None:
            v.fail(f"hparams.{name}", None, f"required by {type(stepper).__name__} (a number or "
                   "one per run)")
    return hparams


_NO_DEFAULT = object()


def _is_default(value, default) -> bool:
    """``value`` is the field's default (``None``, or the same scalar number)."""
    if value is default:
        return True
    if default is _NO_DEFAULT or default is None or value is None:
        return False
    try:
        return bool(np.ndim(value) == 0 and float(value) == float(default))
    except (TypeError, ValueError):
        return False


def _broadcast_hparams(stepper: Stepper, hparams, num_runs: int, dtype):
    """Every leaf as an array of shape ``(num_runs,)`` (runs-minor broadcasting); ``hparams``
    must be the stepper family's type (a one-line error names the expected one) and every value
    obey its rule (:func:`~dlnlab.dynamics.base.check_hyperparameter`), host-side before the
    compiled call (new values never recompile)."""
    hparams = family_hyperparameters(stepper, hparams)
    def leaf(name, x):
        if x is None:
            return None
        arr = check_hyperparameter(name, x, dtype)      # the config's rule, every entry
        if arr.ndim == 0:
            arr = np.full((num_runs,), float(arr))
        if arr.shape != (num_runs,):
            v.fail(f"hparams.{name}", x, f"must be a scalar or have shape ({num_runs},) (one per run)")
        return jnp.asarray(arr, dtype)
    return type(hparams)(*(leaf(n, getattr(hparams, n)) for n in hparams._fields))


def _block_scan(stepper, words, hparams, carry, length_valid, block_steps, threshold,
                product="broadcast"):
    """One block: draw its randomness, scan ``block_steps`` steps (only ``length_valid`` act).

    ``product="kernel"``: on CPU the stepper's compiled block kernel runs the whole block in one
    call (:meth:`~dlnlab.dynamics.Stepper.block_kernel`; the broadcast scan's operations, every
    sum in index order); on other platforms the broadcast scan. ``product="batched"``: the
    block runs with the runs on the *leading* axis, each step the stepper's single-run
    ``apply`` mapped over them (``jax.vmap``: every matrix product a batched
    ``dot``, which XLA hands to its matrix library); the state and the block's noise are moved
    there once per block and back after it. ``"broadcast"``: runs on the trailing axis, products
    as broadcast-multiply-and-sum (``dynamics._ops``)."""
    state, diverged = carry
    dtype = state.weights[0].dtype

    def draw(st):
        return stepper.draw(words, st.step + jnp.arange(block_steps, dtype=jnp.int32), dtype)

    if product == "batched":
        return _block_scan_batched(stepper, words, hparams, state, diverged, draw(state),
                                   length_valid, block_steps, threshold)
    if product == "kernel":
        kernel = stepper.block_kernel(tuple(w.shape[:2] for w in state.weights), dtype)
        valid = jnp.int32(block_steps) if length_valid is None else length_valid
        # The compiled kernel on CPU (it draws the block's randomness itself, the same bits);
        # the XLA scan of the same step on any other platform.
        return jax.lax.platform_dependent(
            words, state, diverged,
            cpu=lambda k, st, div: kernel(k, st, hparams, st.step, valid, threshold, div),
            default=lambda k, st, div: _scan_broadcast(stepper, k, hparams, st, div, draw(st),
                                                       length_valid, block_steps, threshold))
    return _scan_broadcast(stepper, words, hparams, state, diverged, draw(state), length_valid,
                           block_steps, threshold)


def _scan_broadcast(stepper, words, hparams, state, diverged, noise, length_valid, block_steps,
                    threshold):
    """:func:`_block_scan`'s broadcast layout: ``lax.scan`` of the stepper's ``apply``."""

    def body(c, inputs):
        i, z = inputs
        st, div = c

        def go(args):
            st, div = args
            new, info = stepper.apply(words, z, st, hparams)
            bad = ~(info.loss <= threshold)          # catches NaN and inf
            return new, jnp.where((div < 0) & bad, st.step, div)

        if length_valid is None:
            return go((st, div)), None
        return jax.lax.cond(i < length_valid, go, lambda a: a, (st, div)), None

    xs = (jnp.arange(block_steps), noise)
    return jax.lax.scan(body, (state, diverged), xs)[0]


def _runs_first(x):
    return x if x is None or x.ndim == 0 else jnp.moveaxis(x, -1, 0)


def _runs_last(x):
    return x if x is None or x.ndim == 0 else jnp.moveaxis(x, 0, -1)


def _block_scan_batched(stepper, words, hparams, state, diverged, noise, length_valid, block_steps,
                        threshold):
    """:func:`_block_scan` with the runs on the leading axis inside the block (``vmap`` of the
    single-run step). Same steps, same noise, same divergence rule."""
    batched = jax.tree_util.tree_map(_runs_first, _batched(state))
    run_words = jnp.moveaxis(words, -1, 0)                       # (R, 2)
    run_hparams = jax.tree_util.tree_map(_runs_first, hparams)
    run_noise = None if noise is None else jax.tree_util.tree_map(
        lambda z: jnp.moveaxis(z, -1, 1), noise)                # (steps, R, ...)
    step_axes = jax.tree_util.tree_map(lambda _: 0, batched)._replace(step=None)

    def one_run(w, z, st, hp):
        new, info = stepper.apply(w, z, st, hp)
        return new, info.loss

    mapped = jax.vmap(one_run, in_axes=(0, 0, step_axes, 0), out_axes=(step_axes, 0))

    def body(c, inputs):
        i, z = inputs
        st, div = c

        def go(args):
            st, div = args
            new, loss = mapped(run_words, z, st, run_hparams)
            bad = ~(loss <= threshold)
            return new, jnp.where((div < 0) & bad, st.step, div)

        if length_valid is None:
            return go((st, div)), None
        return jax.lax.cond(i < length_valid, go, lambda a: a, (st, div)), None

    start = batched._replace(step=state.step)
    st, div = jax.lax.scan(body, (start, diverged), (jnp.arange(block_steps), run_noise))[0]
    out = jax.tree_util.tree_map(_runs_last, _batched(st))._replace(step=st.step)
    return out, div


def _advance_runs(stepper, state, diverged, words, hparams, num_steps, block_steps, threshold,
                  product="broadcast"):
    full = num_steps // block_steps
    carry = jax.lax.fori_loop(
        0, full,
        lambda _, c: _block_scan(stepper, words, hparams, c, None, block_steps, threshold, product),
        (state, diverged))
    rest = num_steps - full * block_steps
    return jax.lax.cond(
        rest > 0,
        lambda c: _block_scan(stepper, words, hparams, c, rest, block_steps, threshold, product),
        lambda c: c, carry)


def _advance(stepper, state, diverged, words, hparams, num_steps, block_steps, run_group,
             threshold, product="broadcast"):
    """Advance every run by ``num_steps``, ``run_group`` runs at a time.

    Cache blocking: a group's weights (64 runs x 576 parameters x 4 bytes = 0.15 MB at
    L = 4, d = 12) stay in the core's cache for a whole block of steps; all 1024 runs at once
    stream 2.4 MB per step through memory. Measured 3x faster (``dlnlab bench``).
    """
    runs = diverged.shape[0]
    if run_group >= runs:
        return _advance_runs(stepper, state, diverged, words, hparams, num_steps, block_steps,
                             threshold, product)
    groups = runs // run_group

    def split(x):
        return jnp.moveaxis(x.reshape(x.shape[:-1] + (groups, run_group)), -2, 0)

    def merge(x):
        return jnp.moveaxis(x, 0, -2).reshape(x.shape[1:-1] + (runs,))

    grouped = jax.tree_util.tree_map(split, (_batched(state), diverged, words, hparams))

    def one(args):
        batched, div, wd, hp = args
        st, div = _advance_runs(stepper, batched._replace(step=state.step), div, wd, hp,
                                num_steps, block_steps, threshold, product)
        return _batched(st), div

    batched, div = jax.lax.map(one, grouped)
    batched, div = jax.tree_util.tree_map(merge, (batched, div))
    return batched._replace(step=state.step + num_steps), div


_advance_jit = jax.jit(_advance, static_argnames=("block_steps", "run_group", "product"))


def _advance_on_device(stepper, batched, diverged, words, hparams, step, num_steps,
                       threshold, block_steps, run_group, product):
    st, div = _advance(stepper, batched._replace(step=step), diverged, words, hparams, num_steps,
                       block_steps, run_group, threshold, product)
    return _batched(st), div


# Host devices as parallel workers: each advances its share of the run groups on one core.
_advance_pmap = jax.pmap(_advance_on_device, in_axes=(None, 0, 0, 0, 0, None, None, None),
                         static_broadcasted_argnums=(8, 9, 10))


def _advance_parallel(stepper, state, diverged, words, hparams, num_steps, *, block_steps,
                      run_group, threshold, num_devices, product="broadcast"):
    """``_advance`` with the runs split over ``num_devices`` host devices (CPU cores); the
    counter-based randomness makes the result identical to one device."""
    if num_devices == 1:
        return _advance_jit(stepper, state, diverged, words, hparams, num_steps,
                            block_steps=block_steps, run_group=run_group, threshold=threshold,
                            product=product)
    runs = diverged.shape[0]
    share = runs // num_devices

    def split(x):
        # Through host memory: pmap reshards uncommitted (NumPy) inputs, not committed arrays.
        x = np.asarray(x)
        return np.moveaxis(x.reshape(x.shape[:-1] + (num_devices, share)), -2, 0)

    def merge(x):
        x = np.asarray(x)
        return jnp.asarray(np.moveaxis(x, 0, -2).reshape(x.shape[1:-1] + (runs,)))

    batched, div, wd, hp = jax.tree_util.tree_map(
        split, (_batched(state), diverged, words, hparams))
    batched, div = _advance_pmap(stepper, batched, div, wd, hp, state.step,
                                 num_steps, threshold, block_steps, run_group, product)
    batched, div = jax.tree_util.tree_map(merge, (batched, div))
    return batched._replace(step=state.step + num_steps), div


def _check_threshold(threshold) -> float:
    """The divergence threshold: a finite number ``>= 0`` (one-line error otherwise)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.integer | np.floating):
        v.fail("divergence_threshold", threshold, "must be a finite number >= 0")
    v.finite_scalar("divergence_threshold", threshold, minimum=0.0)
    return float(threshold)


def _loss_limit(stepper: Stepper, threshold: float, dtype):
    """The loss above which a run of ``stepper`` is labelled diverged: the threshold on the
    excess loss plus the stepper's noise allowance (:meth:`Stepper.divergence_allowance`; 0
    without label noise online, so the limit is then the threshold itself)."""
    return jnp.asarray(threshold + stepper.divergence_allowance(), dtype)


def _block(block_steps: int) -> int:
    """The compiled block length: ``block_steps``, at least 2.

    A one-step block is a ``lax.scan`` of one trip, which XLA inlines into the enclosing loop;
    the inlined step is fused (and its multiply-adds contracted into FMAs) differently, and the
    anisotropic SDE then rounded differently in float32 (1 ulp after a few steps). Two steps
    per block keep one loop structure for every ``block_steps``; the results are bit-identical
    (``tests/test_engine_trust.py``) and the extra pre-drawn step costs nothing measurable.
    """
    return max(2, int(block_steps))


def resolve_product(stepper: Stepper, weights, product: str = "auto") -> str:
    """The product layout a simulation uses: ``product`` itself unless it is ``"auto"``, then
    ``"batched"`` when the network's largest width (over the weight shapes
    ``(num_runs, d_l, d_{l-1})``, or ``(d_l, d_{l-1})``) is at least
    ``stepper.batched_product_width()``, else ``"broadcast"`` (:class:`~dlnlab.engine.Layout`).
    Depends on the network's shape only, never on the number of runs.

    Raises ``ValueError`` (one line) for an unknown ``product`` or weights without a layer
    matrix."""
    if product not in PRODUCTS:
        v.fail("layout.product", product, f"must be one of {', '.join(PRODUCTS)}")
    if product != "auto":
        return product
    weights = tuple(weights) if isinstance(weights, tuple | list) else (weights,)
    if not weights or any(np.ndim(w) < 2 for w in weights):
        v.fail("weights", f"{len(weights)} arrays of shapes {[np.shape(w) for w in weights]}",
               "must be one or more layer matrices (d_l, d_{l-1}), with or without a leading run axis")
    threshold = stepper.batched_product_width()
    widest = max(max(np.shape(w)[-2:]) for w in weights)
    return "batched" if threshold is not None and widest >= threshold else "broadcast"


def resolve_kernel(stepper: Stepper, weights, product: str, kernel: bool) -> str:
    """The internal product: ``"kernel"`` where the resolved ``product`` is ``"broadcast"``,
    ``kernel`` (``Layout.kernel``) is on and the stepper has a compiled block kernel for these
    weights (``(num_runs, d_l, d_{l-1})`` or ``(d_l, d_{l-1})``; runs on CPU only, the XLA scan
    elsewhere), else ``product`` itself."""
    if not kernel or product != "broadcast":
        return product
    weights = tuple(weights) if isinstance(weights, tuple | list) else (weights,)
    shapes = tuple(tuple(np.shape(w)[-2:]) for w in weights)
    dtype = jnp.asarray(weights[0]).dtype
    return "kernel" if stepper.block_kernel(shapes, dtype) is not None else product


def _step_kernel(products) -> str:
    """``attrs["step_kernel"]``: ``"compiled"`` where a compiled block kernel ran (on CPU),
    else ``"xla"``; one entry per distinct phase setting, comma-separated."""
    cpu = jax.default_backend() == "cpu"
    return ", ".join(dict.fromkeys("compiled" if (p == "kernel" and cpu) else "xla"
                                   for p in products))


def _public_product(product: str) -> str:
    return "broadcast" if product == "kernel" else product


#: Fewest runs a batched run group holds: XLA computes a batch of one as a plain product, which
#: rounds differently (batches of 2 to 200 runs were bit-identical on an AVX-512 CPU; on an AVX2
#: CPU too, once online SGD's matrix-vector products and products with fewer than 16 columns were
#: written as multiply-and-sum: XLA's batched ``dot`` rounded a run by its place in the batch
#: there, ``_ops.DOT_MIN_COLUMNS``). Broadcast groups are padded only to their steppers'
#: ``minimum_broadcast_group`` (2, a lone run with a copy; momentum SGD: 16; docs/architecture.md,
#: "Results never depend on the batching"): padding every stepper's groups to 32 runs made
#: 1-31 runs bit-identical to 32+ runs in float32 but cost 7-26x for a few runs.
BATCHED_MIN_GROUP = 2
#: Smallest broadcast group the default layout splits runs into to use every host device: with
#: XLA's YNNPACK fusion on, broadcast groups below 32 runs rounded differently from 32 or more.
BROADCAST_SPREAD_GROUP = 32
#: Default batched run group on CPU: batched matrix products gain nothing from larger groups
#: (32-run groups were 1.07-1.3x faster than 128-run groups at d = 32-256, 256-1024 runs, load
#: 1.5-2), and their bits do not depend on the group size.
BATCHED_GROUP = 32
#: Default broadcast run group on CPU, the most runs of a group (groups are balanced, a multiple
#: of the devices in number): a group's state and intermediates stay in the core's L2 cache. At
#: d = 12, L = 4, 1024 runs, 64-run groups were 1.08x (online SGD), 1.18x (anisotropic SDE),
#: 1.06x (GD) and 1.01x (reduced SDE) the speed of 128-run groups, 32 and 256 slower (load 1.4).
BROADCAST_GROUP = 64


def _layout(num_runs: int, run_group: int | None, parallel: bool,
            batched: bool = False, broadcast_minimum: int = 1) -> tuple[int, int, int]:
    """``(run_group, num_devices, padded_runs)``. On CPU: equal groups (cache blocking) of at
    most :data:`BROADCAST_GROUP` runs for broadcast products, :data:`BATCHED_GROUP` for batched
    ones, a multiple of the devices in number, spread over the host devices; with fewer than
    :data:`BROADCAST_GROUP` broadcast runs per device, one group per device (a 64-run simulation
    on 2 cores: two groups of 32, 1.1-2.2x faster than one group on one core) of at least
    :data:`BROADCAST_SPREAD_GROUP` runs; elsewhere (GPU) all runs at once on one device.
    Every group holds at least ``broadcast_minimum`` runs (:func:`_broadcast_minimum` of the
    phases that run the XLA broadcast step; 1 when none asks for more), and with batched
    products (``batched``) at least :data:`BATCHED_MIN_GROUP`. Runs are padded with copies of
    the last run."""
    cpu = jax.default_backend() == "cpu"
    minimum_group = max(BATCHED_MIN_GROUP if batched else 1, broadcast_minimum)
    available = jax.local_device_count() if (cpu and parallel) else 1
    if run_group is None:
        if not cpu:
            run_group = num_runs
        elif batched or num_runs >= BROADCAST_GROUP * available:
            # balanced groups of at most BATCHED_GROUP / BROADCAST_GROUP runs on every device
            most = BATCHED_GROUP if batched else BROADCAST_GROUP
            groups = available * math.ceil(num_runs / (most * available))
            run_group = max(minimum_group, math.ceil(num_runs / groups))
        else:                      # fewer broadcast runs than a group per device: one per device
            run_group = max(BROADCAST_SPREAD_GROUP, math.ceil(num_runs / available))
    run_group = max(v.positive_int("layout.run_group", run_group), minimum_group)
    if num_runs <= run_group:
        group = max(num_runs, minimum_group)
        return group, 1, group
    devices = max(1, min(available, -(-num_runs // run_group)))
    unit = run_group * devices
    return run_group, devices, -(-num_runs // unit) * unit


def _broadcast_minimum(phases, products) -> int:
    """The fewest runs of a broadcast run group: the largest
    :attr:`~dlnlab.dynamics.Stepper.minimum_broadcast_group` of the phases whose steppers run
    the XLA broadcast step (the compiled kernels, which run on CPU only, and batched products
    need none)."""
    xla = ("broadcast",) if jax.default_backend() == "cpu" else ("broadcast", "kernel")
    return max([st.minimum_broadcast_group
                for (_, st, _), product in zip(phases, products, strict=True)
                if product in xla], default=1)


#: Runs the observer evaluates at once (``vmap``), in a ``lax.map`` over groups of this size.
OBSERVE_GROUP = 32


def _observe(stepper, state, hparams, names, coupled):
    """The stepper's observer on every run: arrays with a leading run axis.

    The runs are padded to a multiple of :data:`OBSERVE_GROUP` (copies of the last run), and to
    at least two groups, and observed a group at a time: XLA vectorises a ``vmap`` of small
    matrix products differently for different batch sizes (1 ulp apart), so a fixed group size
    keeps run ``i``'s records the same bits for any number of runs (a sweep's chunking,
    ``tests/test_sweep.py``); and XLA inlines a one-trip ``lax.map``, which then rounds
    differently (``ito_drift`` of up to 32 runs against more, float32: 3e-5 relative at width 24,
    1e-7 for the reduced SDE at width 12; ``tests/test_engine_trust.py``), so the loop always
    has two trips or more (the same rule as a one-step block, compiled as two).
    """
    front = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, -1, 0), state.weights)
    runs = front[0].shape[0]
    padded = max(-(-runs // OBSERVE_GROUP), 2) * OBSERVE_GROUP

    def group(x):
        if x is None or x.ndim == 0:
            return x
        if padded > runs:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], padded - runs, axis=0)])
        return x.reshape((padded // OBSERVE_GROUP, OBSERVE_GROUP) + x.shape[1:])

    grouped = jax.tree_util.tree_map(group, (front, hparams))
    out = jax.lax.map(
        lambda args: jax.vmap(lambda w, hp: stepper.observe(w, hp, names, coupled))(*args),
        grouped)
    return jax.tree_util.tree_map(lambda x: x.reshape((padded,) + x.shape[2:])[:runs], out)


_observe_jit = jax.jit(_observe, static_argnames=("names", "coupled"))


def _fingerprint(phases, weights, hparams, words, steps, threshold, settings) -> str:
    h = hashlib.sha256()
    h.update(repr(settings).encode())
    h.update(repr([(at, jax.tree_util.tree_structure(st)) for at, st, _ in phases]).encode())
    for leaf in jax.tree_util.tree_leaves((phases, weights, hparams, words)):
        h.update(np.asarray(leaf).tobytes())
    h.update(np.asarray(steps).tobytes())
    h.update(repr(threshold).encode())
    return h.hexdigest()


def _save_checkpoint(path: Path, fingerprint, state, diverged, position, index, records):
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays.update({f"record_{k}": r for k, r in records.items()})
    atomic_write_npz(path, fingerprint=np.asarray(fingerprint), diverged=np.asarray(diverged),
                     position=np.asarray(position), index=np.asarray(index), **arrays)


def _load_checkpoint(path: Path, fingerprint, state, records):
    with np.load(path) as data:
        if str(data["fingerprint"]) != fingerprint:
            return None
        if any(f"record_{k}" not in data.files for k in records):
            return None
        structure = jax.tree_util.tree_structure(state)
        leaves = [jnp.asarray(data[f"state_{i}"]) for i in range(structure.num_leaves)]
        for k in records:
            records[k][...] = data[f"record_{k}"]
        return (jax.tree_util.tree_unflatten(structure, leaves), jnp.asarray(data["diverged"]),
                int(data["position"]), int(data["index"]))


def _phases(stepper, hp, schedule: Schedule, num_runs, dtype, state):
    phases = [(0, stepper, hp)]
    structure = jax.tree_util.tree_structure(state)
    for entry in schedule.switches:
        if not isinstance(entry, tuple | list) or len(entry) != 3:
            v.fail("schedule", entry, "each switch is (step, stepper, hparams)")
        at, st, hps = entry
        if not isinstance(st, Stepper):
            v.fail("schedule", type(st).__name__, "a switch's stepper must be a dlnlab Stepper")
        if jax.tree_util.tree_structure(jax.eval_shape(st.init, state.weights)) != structure:
            v.fail("schedule", type(st).__name__,
                   f"a switch must keep the state's structure ({type(stepper).__name__} -> "
                   f"{type(st).__name__} changes it)")
        at = int(at)
        if at <= phases[-1][0]:
            v.fail("switches", at, "switch steps must be increasing and > 0")
        st = _with_dtype(st, dtype)
        hps = _broadcast_hparams(st, hps, num_runs, dtype)
        if not np.allclose(np.asarray(st.time_step(hps)), np.asarray(stepper.time_step(hp))):
            v.fail("switches", at, "a switch must keep the time step (t = step * h)")
        phases.append((at, st, hps))
    return phases


#: Share of the kernel's per-process memory-map limit (Linux ``vm.max_map_count``, 65,530 by
#: default) above which :func:`simulate` and :func:`advance_from` drop JAX's compiled programs
#: before compiling theirs (:func:`release_compiled_programs`).
MEMORY_MAP_SHARE = 0.5


def memory_map_share() -> float | None:
    """The share of the per-process memory-map limit this process uses: the lines of
    ``/proc/self/maps`` over ``/proc/sys/vm/max_map_count`` (Linux); None where either cannot be
    read (other systems)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return None
    return used / limit if limit > 0 else None


def release_compiled_programs(share: float = MEMORY_MAP_SHARE) -> bool:
    """Drop every compiled JAX program of this process (``jax.clear_caches()``) when its memory
    maps exceed ``share`` of the kernel's limit; whether it did.

    Each XLA:CPU executable holds about 8 memory maps and JAX keeps every one it compiled; a
    simulation of a new structure (widths, depth, method, dtype, layout) compiles about 30, so a
    process that simulates a few hundred structures (a sweep over widths, a survey of layouts)
    reached the limit and LLVM failed with "Cannot allocate memory". Dropped programs are
    compiled again when next called; results do not change. docs/architecture.md ("Compiled
    programs")."""
    used = memory_map_share()
    if used is None or used < share:
        return False
    jax.clear_caches()
    return True


def simulate(stepper: Stepper, weights, hparams, key, recording, *, layout: Layout | None = None,
             checkpoint: Checkpoint | str | Path | None = None,
             progress: Callable[[int, int], None] | None = None,
             schedule: Schedule | None = None, run_offset: int = 0,
             divergence_threshold: float = DEFAULT_DIVERGENCE_THRESHOLD) -> xr.Dataset:
    """Run ``stepper`` from ``weights`` for every run and record what ``recording`` asks.

    Args:
      stepper: a :class:`~dlnlab.dynamics.Stepper` (its task is shared by the runs).
      weights: tuple of ``(num_runs, d_l, d_{l-1})`` arrays (reduced SDE: ``(num_runs, r)``
        amplitudes, or a 1-tuple of it). Their dtype is the simulation's dtype.
      hparams: the stepper family's hyperparameters (``stepper.hyperparameters(...)``); each
        leaf a scalar or ``(num_runs,)``; finite.
      key: root PRNG key; run ``i`` uses ``fold_in(key, run_offset + i)`` (the same stream for
        every method, so paired methods share e.g. SGD samples where their draws coincide).
        Or one key per run, a key array of shape ``(num_runs,)``: run ``i`` then uses
        ``key[i]`` as is (``run_offset`` only numbers the runs), so ``key=run_keys(root, n)``
        gives exactly the result of ``key=root``; a sweep derives each run's key from its point
        (docs/sweeps.md).
      recording: a :class:`~dlnlab.engine.Recording` (steps, observables), or just the sorted
        steps to record (:func:`~dlnlab.engine.record_steps`; every observable).
      layout: :class:`~dlnlab.engine.Layout` (block, run group, host devices, chunk, product);
        results do not depend on it, except through the product (broadcast or batched, which
        round differently; ``"auto"`` picks one from the network's widths, recorded in
        ``attrs["layout_product"]``).
      checkpoint: a :class:`~dlnlab.engine.Checkpoint` or a file path: the state and records
        are saved there atomically every ``every_seconds``, and a matching checkpoint is resumed
        from (bit-identical result: the randomness is counter-based). Deleted at the end.
      progress: ``progress(done_steps, total_steps)`` after each dispatch.
      schedule: a :class:`~dlnlab.engine.Schedule` of switches (or a sequence of them).
      run_offset: index of the first run (for keys and the ``run`` coordinate).
      divergence_threshold: a run whose loss is non-finite or whose *excess* loss (the loss
        minus the stepper's noise allowance, :meth:`~dlnlab.dynamics.Stepper.divergence_allowance`:
        the task's noise floor ``0.5 tr S_eps`` for full-batch losses) is above this is
        labelled diverged at that step; the others are unaffected. A finite number ``>= 0``.

    Returns an ``xarray.Dataset`` with dims ``run``, ``time`` and the observables' own dims;
    ``time = step * h`` (``h`` the stepper's time step; a data variable ``elapsed`` per run when
    ``h`` differs across runs), variables ``diverged_step`` (-1 if ok) and ``status``.

    Raises ``ValueError`` (one line naming the argument) for bad steps, hyperparameters (each
    value checked with the config's rule, e.g. ``hparams.learning_rate=-0.1: must be a finite
    number > 0``; host-side, before anything is compiled), threshold, layout or switches.
    """
    release_compiled_programs()
    recording = recording if isinstance(recording, Recording) else Recording(recording)
    layout = Layout() if layout is None else layout
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    if schedule is not None and not isinstance(schedule, Schedule):
        schedule = Schedule(tuple(schedule))
    schedule = Schedule() if schedule is None else schedule
    if not isinstance(stepper, Stepper):
        v.fail("stepper", type(stepper).__name__, "must be a dlnlab.dynamics.Stepper")
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.ndim <= 1):
        v.fail("key", key, "must be one JAX PRNG key (jax.random.key(seed)) or one per run "
               "(a key array of shape (num_runs,))")
    if isinstance(run_offset, bool) or not isinstance(run_offset, int | np.integer) \
            or run_offset < 0:
        v.fail("run_offset", run_offset, "must be an integer >= 0")
    if checkpoint is not None and Path(checkpoint.path).is_dir():
        v.fail("checkpoint", str(checkpoint.path), "is a folder; give a file path (e.g. run.npz)")
    weights = tuple(weights) if isinstance(weights, tuple | list) else (weights,)
    weights = tuple(jnp.asarray(w) for w in weights)
    num_runs = int(weights[0].shape[0])
    dtype = weights[0].dtype
    steps = recording.steps
    stepper = _with_dtype(stepper, dtype)
    hp = _broadcast_hparams(stepper, hparams, num_runs, dtype)
    if key.ndim == 1 and key.shape != (num_runs,):
        v.fail("key.shape", key.shape, f"one key per run must have shape ({num_runs},) "
               "(num_runs)")
    keys = key if key.ndim == 1 else run_keys(key, num_runs, run_offset)
    words = key_words(keys)                                           # (2, R)
    state = initial_state(stepper, weights)
    phases = _phases(stepper, hp, schedule, num_runs, dtype, state)
    products = [resolve_kernel(st, weights, resolve_product(st, weights, layout.product),
                               layout.kernel) for _, st, _ in phases]
    broadcast_minimum = _broadcast_minimum(phases, products)
    run_group, num_devices, padded = _layout(num_runs, layout.run_group, layout.parallel,
                                             "batched" in products, broadcast_minimum)
    divergence_threshold = _check_threshold(divergence_threshold)
    limits = [_loss_limit(st, divergence_threshold, dtype) for _, st, _ in phases]
    block_steps = _block(layout.block_steps)
    diverged = jnp.full((num_runs,), -1, jnp.int32)
    pad = _padder(num_runs, padded)

    names = recording.observables
    # Shapes of the records from one abstract evaluation of the observer.
    shapes = jax.eval_shape(lambda s: _observe(stepper, s, hp, names, recording.coupled), state)
    records = {k: np.full((num_runs, steps.size) + shapes[k].shape[1:], np.nan,
                          dtype=np.dtype(shapes[k].dtype)) for k in names}
    settings = (names, recording.coupled, str(dtype))
    if "batched" in products:       # broadcast-only checkpoints keep their earlier fingerprint
        settings += (tuple(_public_product(p) for p in products),)
    if "kernel" in products:        # the two implementations can round differently: never mixed
        settings += (("step_kernel", _step_kernel(products)),)
    if broadcast_minimum > 1:       # padded groups (0.3.0) can round otherwise than before
        settings += (("minimum_broadcast_group", broadcast_minimum),)
    fingerprint = _fingerprint(phases, weights, hp, words, steps, divergence_threshold, settings)
    ckpt = Path(checkpoint.path) if checkpoint is not None else None
    position, index = 0, 0
    if ckpt is not None and ckpt.exists():
        loaded = _load_checkpoint(ckpt, fingerprint, state, records)
        if loaded is not None:
            state, diverged, position, index = loaded

    total = int(steps[-1])
    compile_s, run_s = 0.0, 0.0
    last_save = time.perf_counter()
    first_call = True
    while index < steps.size:
        target = int(steps[index])
        while position < target:
            phase = max(i for i, p in enumerate(phases) if p[0] <= position)
            _, active, active_hp = phases[phase]
            n = min(target - position, layout.chunk_steps)
            if phase + 1 < len(phases):
                n = min(n, phases[phase + 1][0] - position)
            t0 = time.perf_counter()
            state, diverged = pad.unpad(_advance_parallel(
                active, *pad.pad((state, diverged, words, active_hp)), jnp.int32(n),
                block_steps=block_steps, run_group=run_group, num_devices=num_devices,
                product=products[phase], threshold=limits[phase]))
            jax.block_until_ready(diverged)
            elapsed = time.perf_counter() - t0
            if first_call:
                compile_s += elapsed
                first_call = False
            else:
                run_s += elapsed
            position += n
            if progress is not None:
                progress(position, total)
            if ckpt is not None and time.perf_counter() - last_save > checkpoint.every_seconds:
                _save_checkpoint(ckpt, fingerprint, state, diverged, position, index, records)
                last_save = time.perf_counter()
        _, active, active_hp = [p for p in phases if p[0] <= position][-1]
        out = _observe_jit(active, state, active_hp, names, recording.coupled)
        for k in names:
            records[k][:, index] = np.asarray(out[k])
        index += 1
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    ds = _to_dataset(stepper, records, steps, hp, np.asarray(diverged), run_offset,
                     dict(compile_s=compile_s, run_s=run_s))
    ds.attrs["layout_product"] = ", ".join(dict.fromkeys(_public_product(p) for p in products))
    ds.attrs["step_kernel"] = _step_kernel(products)
    return ds


def advance_from(stepper: Stepper, weights, hparams, key, *, layout: Layout | None = None,
                 divergence_threshold: float = DEFAULT_DIVERGENCE_THRESHOLD):
    """The compiled advance ``simulate`` uses, without recording: returns ``advance(n)`` that
    runs every run ``n`` steps from ``weights`` and returns ``(state, diverged_step)`` (runs on
    the trailing axis). For benchmarks and custom drivers; same layout and numbers as
    :func:`simulate` (``weights``: tuple of ``(num_runs, d_l, d_{l-1})``)."""
    release_compiled_programs()
    layout = Layout() if layout is None else layout
    weights = tuple(jnp.asarray(w) for w in (weights if isinstance(weights, tuple | list)
                                              else (weights,)))
    num_runs, dtype = int(weights[0].shape[0]), weights[0].dtype
    stepper = _with_dtype(stepper, dtype)
    product = resolve_kernel(stepper, weights, resolve_product(stepper, weights, layout.product),
                             layout.kernel)
    run_group, num_devices, padded = _layout(num_runs, layout.run_group, layout.parallel,
                                             product == "batched",
                                             _broadcast_minimum([(None, stepper, None)], [product]))
    hp = _broadcast_hparams(stepper, hparams, num_runs, dtype)
    words = key_words(run_keys(key, num_runs))
    pad = _padder(num_runs, padded)
    start = pad.pad((initial_state(stepper, weights), jnp.full((num_runs,), -1, jnp.int32), words,
                     hp))
    threshold = _loss_limit(stepper, _check_threshold(divergence_threshold), dtype)
    block_steps = _block(layout.block_steps)

    def advance(n: int):
        return pad.unpad(_advance_parallel(stepper, *start, jnp.int32(n),
                                           block_steps=block_steps, run_group=run_group,
                                           num_devices=num_devices, threshold=threshold,
                                           product=product))
    return advance


class _padder:
    """Pads trailing run axes to a multiple of the run group (copies of the last run)."""

    def __init__(self, runs: int, padded: int):
        self.runs, self.padded = runs, padded

    def pad(self, tree):
        if self.padded == self.runs:
            return tree
        extra = self.padded - self.runs

        def one(x):
            if x is None or x.ndim == 0 or x.shape[-1] != self.runs:
                return x
            tail = jnp.repeat(x[..., -1:], extra, axis=-1)
            return jnp.concatenate([x, tail], axis=-1)
        state, diverged, words, hp = tree
        state = jax.tree_util.tree_map(one, _batched(state))._replace(step=state.step)
        return state, one(diverged), one(words), jax.tree_util.tree_map(one, hp)

    def unpad(self, tree):
        if self.padded == self.runs:
            return tree
        state, diverged = tree
        cut = lambda x: x[..., :self.runs]                                   # noqa: E731
        return jax.tree_util.tree_map(cut, _batched(state))._replace(step=state.step), cut(diverged)


def _to_dataset(stepper, records, steps, hp, diverged, run_offset, timing) -> xr.Dataset:
    num_runs = diverged.shape[0]
    h = np.asarray(stepper.time_step(hp), dtype=np.float64)
    data = {}
    for k, arr in records.items():
        data[k] = (("run", "time") + OBSERVABLE_DIMS[k], arr)
    coords = {"run": np.arange(run_offset, run_offset + num_runs), "step": ("time", steps)}
    for k, arr in records.items():   # modes are numbered from 1, as in the papers and figures
        for axis, dim in enumerate(OBSERVABLE_DIMS[k], start=2):
            if dim in ("mode", "mode2"):
                coords.setdefault(dim, np.arange(1, arr.shape[axis] + 1))
    if np.allclose(h, h[0], rtol=1e-12, atol=0):
        coords["time"] = steps * float(h[0])
    else:
        coords["time"] = np.arange(steps.size)
        data["elapsed"] = (("run", "time"), h[:, None] * steps[None, :])
    data["diverged_step"] = ("run", diverged.astype(np.int64))
    data["status"] = ("run", np.where(diverged >= 0, "diverged", "ok").astype(object))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(method=stepper.name, compile_seconds=timing["compile_s"],
                    run_seconds=timing["run_s"],
                    run_steps_per_second=(num_runs * int(steps[-1]) / timing["run_s"]
                                          if timing["run_s"] > 0 else float("nan")))
    return ds


def initial_state(stepper: Stepper, weights):
    """The runs-minor :class:`State` the engine starts from (for custom loops and tests)."""
    weights = tuple(weights) if isinstance(weights, tuple | list) else (weights,)
    return stepper.init(tuple(jnp.moveaxis(jnp.asarray(w), 0, -1) for w in weights))
