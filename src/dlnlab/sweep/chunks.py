"""Chunks: a memory-bounded set of runs of one group, simulated together and stored in one file.

A :class:`ChunkSpec` is plain, picklable data (each covered point's resolved config as canonical
JSON and its run range, plus the code version); its :attr:`~ChunkSpec.chunk_id` is the sha256 of
that content, so a chunk's file name says exactly what it holds. :func:`run_chunk` is the one
function an executor calls (in this process or on a Dask worker): it simulates the chunk, writes
``chunks/<chunk_id>.nc`` atomically and returns a small :class:`ChunkOutcome`.

Inside a chunk, the runs of every point whose stepper has the same structure and the same task
(a learning-rate, momentum, temperature or init-scale axis: per-run hyperparameters and initial
weights) and whose step count lies in the same power-of-two band go into ONE ``simulate`` call,
run to the largest step count among them (at most twice a point's own) and recorded at the union
of their record steps; each point keeps only its own record times (its ``training.horizon`` and
``record`` settings, exactly as ``dlnlab run`` would record it). Points with another task (seed,
label noise) or band share the compiled program but not the call.

Keys (docs/sweeps.md, "Keys"): a point's root key is the first 64 bits of
:func:`~dlnlab.sweep.config.point_identity` (sha256 of its resolved config without the fields
of :data:`~dlnlab.sweep.config.IDENTITY_EXCLUDED`); run ``i`` starts from the initial weights
of ``fold_in(fold_in(root, 1), i)`` and draws its noise from ``fold_in(fold_in(root, 2), i)``:
``dlnlab run``'s derivation with the point's root in place of ``key(seed)`` (the teacher still
comes from ``seed``). A run is therefore the same bits however
the grid grows or is chunked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import traceback
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__

#: Sub-keys of a point's root key (as ``experiments.run``: init stream 1, noise stream 2).
INIT_STREAM, NOISE_STREAM = 1, 2

#: Per-run statuses in chunk files and the combined dataset.
STATUSES = ("ok", "diverged", "failed", "pending")


@dataclasses.dataclass(frozen=True)
class ChunkEntry:
    """The runs ``run_start <= i < run_stop`` of point ``point`` (flat index in the sweep),
    whose resolved config is ``config`` (canonical JSON of the ``ExperimentConfig``)."""
    point: int
    config: str
    run_start: int
    run_stop: int

    @property
    def num_runs(self) -> int:
        return self.run_stop - self.run_start


@dataclasses.dataclass(frozen=True)
class ChunkSpec:
    """What a chunk simulates: its group (one compiled program), its entries, the methods (the
    group's ``methods``) and the code version."""
    group: int
    entries: tuple[ChunkEntry, ...]
    methods: tuple[str, ...]
    version: str = __version__

    @property
    def chunk_id(self) -> str:
        """sha256 of the canonical JSON of the entries (configs and run indices), the methods
        and the dlnlab version: the chunk's file name."""
        content = {"version": self.version, "methods": list(self.methods),
                   "entries": [[e.point, e.config, e.run_start, e.run_stop] for e in self.entries]}
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def num_runs(self) -> int:
        return sum(e.num_runs for e in self.entries)


@dataclasses.dataclass(frozen=True)
class ChunkOutcome:
    """What comes back from :func:`run_chunk` (small and picklable): ``status`` ``"ok"`` (every
    run simulated; some may be labelled diverged) or ``"failed"`` (a simulation raised: its runs
    are labelled ``failed`` in the file, ``message`` says why); ``content_hash`` the sha256 of
    the written file; ``records`` the chunk's record count; ``schema`` each variable's dims and
    sizes (``slot`` and ``record`` included) and dtype; ``run_steps`` runs x steps simulated."""
    chunk_id: str
    path: str
    status: str
    message: str
    content_hash: str
    seconds: float
    run_steps: int
    records: int = 0
    schema: dict = dataclasses.field(default_factory=dict)


def file_hash(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_hash(arrays: dict) -> str:
    """sha256 of named arrays (sorted by name: the name, shape and values; strings as UTF-8,
    numbers in native byte order): a chunk file's content fingerprint, stored in its
    ``data_hash`` attribute (over the variables named in ``hashed_variables``) and recomputed
    from the file on resume (:func:`dlnlab.sweep.store.verify_chunk`)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        values = np.asarray(arrays[name])
        h.update(name.encode() + b"\x00" + repr(values.shape).encode())
        if values.dtype.kind in "OUS":
            h.update("\x00".join(x.decode() if isinstance(x, bytes) else str(x)
                                 for x in values.ravel()).encode())
        else:
            native = values.astype(values.dtype.newbyteorder("="), copy=False)
            h.update(str(native.dtype).encode())
            h.update(np.ascontiguousarray(native).tobytes())
    return h.hexdigest()


def hashed_arrays(ds: xr.Dataset) -> dict:
    """The arrays a chunk's ``data_hash`` covers: every variable and coordinate (not the bare
    dimensions)."""
    return {name: ds.variables[name].values for name in ds.variables}


# ------------------------------------------------------------------ keys and weights
def point_key(identity: str):
    """A point's root PRNG key (threefry) from the first 64 bits of its identity hash."""
    import jax

    words = np.frombuffer(bytes.fromhex(identity[:16]), dtype=">u4").astype(np.uint32)
    return jax.random.wrap_key_data(words, impl="threefry2x32")


def point_run_keys(identity: str, stream: int, start: int, stop: int):
    """Keys of runs ``start..stop-1`` of a point for ``stream`` (:data:`INIT_STREAM`,
    :data:`NOISE_STREAM`): ``fold_in(fold_in(root, stream), i)``, shape ``(stop - start,)``."""
    import jax

    from ..engine import run_keys

    return run_keys(jax.random.fold_in(point_key(identity), stream), stop - start, start)


def initial_weights_for_keys(config, keys, task=None):
    """Initial weights of the runs with init ``keys`` ``(R,)``: exactly
    :func:`dlnlab.experiments.run.initial_weights_for_keys` (one rule for both doors)."""
    from ..experiments.run import initial_weights_for_keys as rule

    return rule(config, keys, task)


# ------------------------------------------------------------------ simulation
@dataclasses.dataclass
class _Prepared:
    """One entry's host-side preparation for one method."""
    entry: int
    stepper: object
    start: object
    hparams: object
    steps: np.ndarray
    switches: list
    call_key: tuple


def _leaf_digest(tree) -> str:
    import jax

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        h.update(str(arr.dtype).encode() + repr(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _per_run(hparams, runs: int):
    """Every leaf of a hyperparameters NamedTuple broadcast to ``(runs,)`` (NumPy), None kept."""
    return type(hparams)(*(None if x is None else np.broadcast_to(np.asarray(x), (runs,))
                           for x in hparams))


def _concat(hparams_list):
    first = hparams_list[0]
    fields = []
    for i in range(len(first)):
        leaves = [h[i] for h in hparams_list]
        fields.append(None if leaves[0] is None else np.concatenate(leaves))
    return type(first)(*fields)


def _prepare_method(method: str, config, task, weights, times, entry_index: int) -> _Prepared:
    import jax

    from ..dynamics.registry import get_method
    from ..engine import steps_for_times

    record = get_method(method)
    settings = config.settings(method)
    prepared = record.prepare(weights, task, settings)
    h = settings.step_size
    steps = steps_for_times(times, h)
    runs = int(weights[0].shape[0])
    hp = _per_run(record.hyperparameters(settings, prepared), runs)
    stepper = record.build(task, settings)
    switches = []
    lr = config.training.learning_rate
    for switch in config.training.schedule:
        at = int(steps_for_times([switch.time], lr)[0] * round(lr / h))
        switched = config.settings(method, batch_size=switch.batch_size)
        st = record.build(task, switched)
        switches.append((at, st, _per_run(record.hyperparameters(switched, prepared), runs)))
    call_key = (str(jax.tree_util.tree_structure(stepper)), _leaf_digest(stepper),
                float(config.divergence_threshold),
                tuple((at, str(jax.tree_util.tree_structure(st)), _leaf_digest(st))
                      for at, st, _ in switches),
                tuple(config.record.variables or ()),
                getattr(config, "reduced", None) is None or config.reduced.coupled,
                _step_band(int(steps[-1])), config.product, config.kernel)
    return _Prepared(entry_index, stepper, record.start(weights, task), hp, steps, switches,
                     call_key)


def _step_band(num_steps: int) -> int:
    """Points of one call take at most twice the steps of the shortest: a call runs every run to
    its largest step count, so points are banded by ``floor(log2(steps))`` (the same compiled
    program: the step count is traced)."""
    return max(int(num_steps), 1).bit_length()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


def _simulate_call(method: str, members: list[_Prepared], noise_keys: list):
    """One ``simulate`` call for the entries ``members`` (same stepper structure and task):
    per-run hyperparameters, initial weights and keys concatenated along the runs."""
    import jax.numpy as jnp

    from ..engine import Layout, Recording, Schedule, simulate

    first = members[0]
    union = np.unique(np.concatenate([m.steps for m in members]))
    weights = tuple(jnp.concatenate([jnp.asarray(m.start[i]) for m in members])
                    for i in range(len(first.start)))
    hp = _concat([m.hparams for m in members])
    keys = jnp.concatenate([noise_keys[m.entry] for m in members])
    switches = tuple((at, st, _concat([m.switches[j][2] for m in members]))
                     for j, (at, st, _) in enumerate(first.switches))
    variables, coupled = first.call_key[4], first.call_key[5]
    recording = Recording(union, observables=list(variables) or None, coupled=coupled)
    ds = simulate(first.stepper, weights, hp, keys, recording,
                  divergence_threshold=first.call_key[2], schedule=Schedule(switches),
                  layout=Layout(product=first.call_key[7], kernel=first.call_key[8]))
    return ds, union


def run_chunk(spec: ChunkSpec, path: str | Path) -> ChunkOutcome:
    """Simulate every run of ``spec`` and write the chunk's dataset to ``path`` atomically.

    The file (``chunks/<chunk_id>.nc``) has dims ``method_name``, ``slot`` (one per run of the
    chunk: coordinates ``point``, the point's flat index, and ``run``), ``record`` and the
    observables' own dims; variables: every recorded observable ``(method_name, slot, record,
    ...)``, ``time`` ``(slot, record)`` (t = step x learning rate, NaN past a point's last
    record), ``step``, ``diverged_step`` (-1: not diverged by the point's last step) and
    ``status`` (``ok`` / ``diverged`` / ``failed``) and ``layout_product`` (``broadcast`` /
    ``batched``: how the engine ran the point's matrix products, the config's ``product``
    resolved; ``""`` for a failed run) and ``step_kernel`` (``compiled`` / ``xla``: whether the
    compiled block kernel ran the steps, ``dlnlab.dynamics.kernels``) per run, ``final_loss`` (the loss at the
    point's last record), ``censor_time`` (the last record time, or the divergence time) and, when
    the amplitudes are recorded, ``t_half`` / ``t_90`` ``(method_name, slot, mode)``: first time
    ``a >= 0.5 s`` / ``0.9 s`` (:func:`dlnlab.analysis.events.crossing_times`, NaN: not
    reached; always NaN for a diverged run, which is censored at its divergence time) and the
    teacher's ``spectrum`` ``(slot, mode)`` (zeros past its rank).
    Every variable has ``long_name`` and, where they apply, ``units`` (time-like ones: ``t =
    step x learning rate``; :mod:`dlnlab.sweep.attributes`). Attributes ``chunk_id``,
    ``data_hash`` (:func:`data_hash`), ``dlnlab_version`` and
    ``messages`` (JSON: point -> error, for failed points).

    Never raises for a failing simulation: its runs are labelled ``failed`` (NaN data) and the
    outcome's status is ``"failed"`` with a one-line message. Raises only if the file cannot be
    written (``OSError``, one line) — an executor reports that through ``on_done``.
    """
    import jax

    from ..analysis.events import crossing_times
    from ..experiments import build_task, record_times, validate_config
    from ..io.atomic import atomic_write_dataset
    from .config import point_identity

    t0 = time.perf_counter()
    entries = spec.entries
    methods = list(spec.methods)
    slots = sum(e.num_runs for e in entries)
    failed: dict[int, str] = {}                         # entry index -> message
    configs, tasks, times, weights, noise_keys = [], [], [], [], []
    for i, entry in enumerate(entries):
        configs.append(None)
        tasks.append(None)
        times.append(np.zeros(1))
        weights.append(None)
        noise_keys.append(None)
        try:
            config = validate_config(json.loads(entry.config))
            if config.dtype == "float64" and not jax.config.jax_enable_x64:
                raise ValueError("dtype='float64': enable x64 first (jax.config.update("
                                 "'jax_enable_x64', True)); the dlnlab CLI does it")
            identity = point_identity(config)
            configs[i] = config
            tasks[i] = build_task(config)
            times[i] = np.asarray(record_times(config, tasks[i]), dtype=np.float64)
            weights[i] = initial_weights_for_keys(
                config, point_run_keys(identity, INIT_STREAM, entry.run_start, entry.run_stop),
                tasks[i])
            noise_keys[i] = point_run_keys(identity, NOISE_STREAM, entry.run_start, entry.run_stop)
        except Exception as error:  # noqa: BLE001 - labelled, never fatal for the sweep
            failed[i] = _one_line(error)
    records = max(t.size for t in times)
    offsets = np.cumsum([0] + [e.num_runs for e in entries])
    results: dict[tuple[int, int], tuple[xr.Dataset, np.ndarray, np.ndarray]] = {}
    run_steps = 0
    for mi, method in enumerate(methods):
        prepared: list[_Prepared] = []
        for i in range(len(entries)):
            if i in failed:
                continue
            try:
                prepared.append(_prepare_method(method, configs[i], tasks[i], weights[i],
                                                times[i], i))
            except Exception as error:  # noqa: BLE001
                failed[i] = _one_line(error)
        calls: dict[tuple, list[_Prepared]] = {}
        for p in prepared:
            calls.setdefault(p.call_key, []).append(p)
        for members in calls.values():
            try:
                ds, union = _simulate_call(method, members, noise_keys)
            except Exception as error:  # noqa: BLE001
                message = _one_line(error)
                if not isinstance(error, ValueError):
                    message += " | " + " ".join(traceback.format_exc().split())[-200:]
                for m in members:
                    failed.setdefault(m.entry, message)
                continue
            run_steps += int(ds.sizes["run"]) * int(union[-1])
            start = 0
            for m in members:
                n = entries[m.entry].num_runs
                results[(mi, m.entry)] = (ds.isel(run=slice(start, start + n)), union, m.steps)
                start += n
    data = _assemble(spec, methods, records, slots, offsets, configs, times, results, failed,
                     crossing_times)
    data.attrs.update(chunk_id=spec.chunk_id, dlnlab_version=spec.version,
                      messages=json.dumps({str(entries[i].point): m for i, m in failed.items()}))
    arrays = hashed_arrays(data)
    data.attrs["hashed_variables"] = ",".join(sorted(arrays))
    data.attrs["data_hash"] = data_hash(arrays)
    atomic_write_dataset(data, path)
    schema = {name: {"dims": list(var.dims), "shape": [int(s) for s in var.shape],
                     "dtype": "str" if var.dtype.kind in "OUS" else str(var.dtype)}
              for name, var in data.variables.items() if name not in data.dims}
    message = "; ".join(f"point {entries[i].point}: {m}" for i, m in sorted(failed.items()))
    return ChunkOutcome(chunk_id=spec.chunk_id, path=str(path),
                        status="failed" if failed else "ok", message=message[:2000],
                        content_hash=file_hash(path), seconds=time.perf_counter() - t0,
                        run_steps=run_steps, records=int(records), schema=schema)


def _assemble(spec, methods, records, slots, offsets, configs, times, results, failed,
              crossing_times) -> xr.Dataset:
    """The chunk's dataset from the per-(method, entry) simulations (NaN and ``failed`` where a
    simulation raised)."""
    from ..dynamics.observers import OBSERVABLE_DIMS

    entries = spec.entries
    nm = len(methods)
    # observable shapes: the largest over the simulations (methods may differ)
    obs_shapes: dict[str, list[int]] = {}
    obs_dtypes: dict[str, np.dtype] = {}
    for ds, _, _ in results.values():
        for name in ds.data_vars:
            if name not in OBSERVABLE_DIMS:
                continue
            shape = list(ds[name].shape[2:])
            old = obs_shapes.get(name)
            obs_shapes[name] = shape if old is None else [max(a, b) for a, b in zip(old, shape,
                                                                                    strict=True)]
            obs_dtypes[name] = ds[name].dtype
    arrays = {name: np.full((nm, slots, records, *shape), np.nan, dtype=obs_dtypes[name])
              for name, shape in obs_shapes.items()}
    time_values = np.full((slots, records), np.nan)
    step = np.full((nm, slots, records), -1, dtype=np.int64)
    diverged = np.full((nm, slots), -1, dtype=np.int64)
    status = np.full((nm, slots), "failed", dtype=object)
    product = np.full((nm, slots), "", dtype=object)
    kernel = np.full((nm, slots), "", dtype=object)
    point = np.zeros(slots, dtype=np.int64)
    run = np.zeros(slots, dtype=np.int64)
    censor = np.full((nm, slots), np.nan)
    for i, entry in enumerate(entries):
        s0, s1 = offsets[i], offsets[i + 1]
        point[s0:s1] = entry.point
        run[s0:s1] = np.arange(entry.run_start, entry.run_stop)
        if configs[i] is not None:
            time_values[s0:s1, :times[i].size] = times[i]
    for (mi, i), (ds, union, own) in results.items():
        if i in failed:
            continue
        s0, s1 = offsets[i], offsets[i + 1]
        pos = np.searchsorted(union, own)
        k = own.size
        for name in obs_shapes:
            if name not in ds:
                continue
            values = ds[name].transpose("run", "time", ...).values[:, pos]
            index = (mi, slice(s0, s1), slice(0, k)) + tuple(slice(0, n) for n in values.shape[2:])
            arrays[name][index] = values
        step[mi, s0:s1, :k] = own
        div = ds.diverged_step.values.astype(np.int64)
        div = np.where((div >= 0) & (div <= own[-1]), div, -1)    # past its horizon: not counted
        diverged[mi, s0:s1] = div
        status[mi, s0:s1] = np.where(div >= 0, "diverged", "ok")
        product[mi, s0:s1] = str(ds.attrs.get("layout_product", ""))
        kernel[mi, s0:s1] = str(ds.attrs.get("step_kernel", ""))
        h = times[i][-1] / own[-1] if own[-1] > 0 else 0.0
        censor[mi, s0:s1] = np.where(div >= 0, div * h, times[i][-1])
    for i in failed:
        status[:, offsets[i]:offsets[i + 1]] = "failed"
        product[:, offsets[i]:offsets[i + 1]] = ""
        kernel[:, offsets[i]:offsets[i + 1]] = ""
        for name in arrays:
            arrays[name][:, offsets[i]:offsets[i + 1]] = np.nan
    dims = {name: ("method_name", "slot", "record", *OBSERVABLE_DIMS[name]) for name in arrays}
    data = {name: (dims[name], arr) for name, arr in arrays.items()}
    data.update(time=(("slot", "record"), time_values), step=(("method_name", "slot", "record"), step),
                diverged_step=(("method_name", "slot"), diverged),
                status=(("method_name", "slot"), status.astype(str)),
                layout_product=(("method_name", "slot"), product.astype(str)),
                step_kernel=(("method_name", "slot"), kernel.astype(str)),
                censor_time=(("method_name", "slot"), censor))
    if "loss" in arrays:
        last = np.array([max(times[i].size, 1) - 1 for i in range(len(entries))
                         for _ in range(entries[i].num_runs)])
        data["final_loss"] = (("method_name", "slot"),
                              arrays["loss"][:, np.arange(slots), last].astype(np.float64))
    if "amplitude" in arrays and "mode" in dims["amplitude"]:
        spectra = np.zeros((slots, arrays["amplitude"].shape[3]))
        amp = arrays["amplitude"].astype(np.float64)        # (m, slot, record, mode)
        modes = amp.shape[3]
        t_half = np.full((nm, slots, modes), np.nan)
        t_90 = np.full((nm, slots, modes), np.nan)
        for i in range(len(entries)):
            if configs[i] is None or i in failed:
                continue
            s0, s1, k = offsets[i], offsets[i + 1], times[i].size
            spectrum = np.zeros(modes)
            given = np.asarray(configs[i].task.spectrum, dtype=np.float64)[:modes]
            spectrum[:given.size] = given
            spectra[s0:s1] = spectrum
            series = np.moveaxis(amp[:, s0:s1, :k], 2, -1)          # (m, runs, mode, time)
            for frac, out in ((0.5, t_half), (0.9, t_90)):
                level = np.where(spectrum > 0, frac * spectrum, np.inf)
                out[:, s0:s1] = crossing_times(times[i], series, level)
            # a diverged run learned nothing: an amplitude passing a level on its way to
            # infinity is no crossing (NaN: censored at its divergence time, censor_time)
            gone = diverged[:, s0:s1] >= 0                              # (m, runs)
            t_half[:, s0:s1][gone] = np.nan
            t_90[:, s0:s1][gone] = np.nan
        data["t_half"] = (("method_name", "slot", "mode"), t_half)
        data["t_90"] = (("method_name", "slot", "mode"), t_90)
        data["spectrum"] = (("slot", "mode"), spectra)
    from .attributes import annotate

    coords = {"method_name": methods, "point": ("slot", point), "run": ("slot", run)}
    ds = xr.Dataset(data, coords=coords)
    annotate(ds)
    return ds
