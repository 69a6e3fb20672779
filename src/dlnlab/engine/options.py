"""The engine's options as objects: what to record, how to lay out the runs, checkpoints and the
noise schedule (``simulate(stepper, weights, hparams, key, recording, *, layout=...,
checkpoint=..., progress=..., schedule=...)``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _validation as v
from ..dynamics.observers import observable_names


@dataclasses.dataclass(frozen=True)
class Recording:
    """What to record: the steps, the observables and the SGD noise model they describe.

    - ``steps``: sorted distinct step indices ``>= 0`` (:func:`~dlnlab.engine.record_steps`);
      the last one is the horizon (``t = step x h``).
    - ``observables``: names (keys of :data:`~dlnlab.dynamics.OBSERVABLE_DIMS`), ``None`` for
      every observable, ``False`` for ``loss`` only; ``loss`` is always recorded. Observables not
      requested are never computed.
    - ``coupled``: the reduced Ito drift observable (``reduced_ito_drift``) with (default) or
      without the cross-mode coupling.
    """
    steps: Any
    observables: Any = None
    coupled: bool = True

    def __post_init__(self):
        try:
            given = np.asarray(self.steps).ravel()
        except (TypeError, ValueError):
            given = np.asarray([np.nan])
        if given.dtype == bool or not np.issubdtype(given.dtype, np.number) or np.any(
                ~np.isfinite(given.astype(np.float64))) or np.any(given != np.round(given)):
            v.fail("record_steps", self.steps, "must be whole numbers of steps (integers)")
        steps = given.astype(np.int64)
        if steps.size == 0 or np.any(np.diff(steps) <= 0) or steps[0] < 0:
            v.fail("record_steps", self.steps, "must be a non-empty increasing list of steps >= 0")
        if steps[-1] >= 2**31 - 1:
            v.fail("record_steps", int(steps[-1]), "must be below 2^31 - 1")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "observables", observable_names(self.observables))


#: The ways a step's matrix products can run over the runs (``Layout.product``).
PRODUCTS = ("auto", "broadcast", "batched")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the runs are laid out. Results never depend on ``block_steps``, ``run_group``,
    ``parallel``, ``chunk_steps`` or the number of runs (bit-identical); ``product`` picks one of
    two ways of computing a step, and ``kernel`` one of two implementations of the broadcast
    step, which can round differently (float rounding).

    - ``block_steps``: steps per pre-drawn noise block (1 is compiled as 2: a one-trip loop is
      inlined by XLA and rounds differently; see ``engine.simulate._block``).
    - ``run_group``: runs advanced together (cache blocking); ``None``: on CPU equal groups of
      at most 64 runs (32 for batched products), or one group per host device when there are
      fewer runs per device (at least 32 runs for broadcast products, 2 for batched);
      all runs elsewhere. Runs are padded to a multiple of the groups with copies of the last run.
      A stepper's ``minimum_broadcast_group`` raises a smaller group of its XLA broadcast step
      (2: a lone run is padded with a copy; momentum SGD: 16 runs), an explicit ``run_group``
      too.
    - ``parallel``: on CPU, split the run groups over the host devices.
    - ``chunk_steps``: most steps per dispatch (progress and checkpoint granularity).
    - ``product``: how a step's matrix products run over the runs.

      - ``"broadcast"``: runs on the trailing axis, broadcast-multiply-and-sum (vector lanes
        across runs; cache-sized run groups). Fastest for narrow networks (width 12: 2-5x).
      - ``"batched"``: runs on the leading axis inside each block of steps, the single-run step
        mapped over them (``jax.vmap``: batched ``dot``). Fastest from width 16-32 on with many
        runs (1.2-27x, docs/performance.md). A run group then holds at least 2 runs (a lone run is padded with
        a copy): XLA computes a batch of one as a plain product, which rounds differently, while
        batches of 2 or more give a run the same bits whatever their size (tested).
      - ``"auto"`` (default): ``"batched"`` when the network's largest width is at least the
        stepper's :meth:`~dlnlab.dynamics.Stepper.batched_product_width` (32; 16 for the
        anisotropic SDE; never for steppers not measured), else ``"broadcast"``
        (:func:`~dlnlab.engine.resolve_product`). The choice depends on the network's shape
        only, never on the number of runs, so results stay independent of it; the dataset
        records it (``attrs["layout_product"]``).
    - ``kernel``: on CPU, run whole blocks of steps in the stepper's compiled block kernel where
      it has one for the network (online SGD and online momentum SGD with broadcast products,
      widths and batch size at most 32, x86-64 CPUs with AVX2 and FMA:
      :mod:`dlnlab.dynamics.kernels`). It sums in index order, as the XLA step does for the
      paper's network (bit-identical there), and in every run group alike; from width 24 (measured
      on a Zen 4 CPU with label noise, widths 24-32) XLA:CPU's SGD step rounded a run
      differently with the number of runs beside it, the two differ at float rounding, and only
      the kernel kept a run's bits independent of the number of runs. Checkpoints record which one wrote
      them. 1.2-1.9x the XLA step's speed at width 12 (docs/performance.md). ``False``: always
      the XLA step (experiment configs: ``kernel = false``). The dataset records which ran
      (``attrs["step_kernel"]``: ``"compiled"`` or ``"xla"``).
    """
    block_steps: int = 64
    run_group: int | None = None
    parallel: bool = True
    chunk_steps: int = 1 << 14
    product: str = "auto"
    kernel: bool = True

    def __post_init__(self):
        if self.product not in PRODUCTS:
            v.fail("layout.product", self.product, f"must be one of {', '.join(PRODUCTS)}")
        v.positive_int("layout.block_steps", self.block_steps)
        v.positive_int("layout.chunk_steps", self.chunk_steps)
        if self.run_group is not None:
            v.positive_int("layout.run_group", self.run_group)
        if not isinstance(self.parallel, bool):
            v.fail("layout.parallel", self.parallel, "must be true or false")
        if not isinstance(self.kernel, bool):
            v.fail("layout.kernel", self.kernel, "must be true or false")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """An atomic checkpoint file written every ``every_seconds``; a matching one is resumed
    from (bit-identical results), and it is deleted when the run completes."""
    path: str | os.PathLike
    every_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A noise schedule: ``switches = ((step, stepper, hparams), ...)`` with increasing steps;
    from ``step`` on the runs continue with that stepper and hparams (e.g. a batch-size switch;
    the state keeps its structure and the time step must not change)."""
    switches: Sequence = ()
