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
PRODUCTS = ("broadcast", "batched")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the runs are laid out. In the default ``product="broadcast"`` results never depend on
    the other fields (bit-identical); ``product="batched"`` rounds differently (below).

    - ``block_steps``: steps per pre-drawn noise block (1 is compiled as 2: a one-trip loop is
      inlined by XLA and rounds differently; see ``engine.simulate._block``).
    - ``run_group``: runs advanced together (cache blocking); ``None``: 128 on CPU, all runs
      elsewhere. Runs are padded to a multiple of the groups with copies of the last run.
    - ``parallel``: on CPU, split the run groups over the host devices.
    - ``chunk_steps``: most steps per dispatch (progress and checkpoint granularity).
    - ``product``: how a step's matrix products run over the runs. ``"broadcast"`` (default):
      runs on the trailing axis, broadcast-multiply-and-sum (vector lanes across runs; cache-sized
      run groups); results do not depend on the layout or the number of runs (bit-identical).
      ``"batched"``: runs on the leading axis inside each block of steps, the single-run step mapped
      over them (``jax.vmap``: batched ``dot``); faster where a step is matrix-matrix work (widths
      >= 64, minibatches of 32: docs/performance.md), but it rounds differently (float32 rounding)
      and XLA may round a run differently for different numbers of runs, so a run's bits are not
      guaranteed independent of the batch: an opt-in for throughput, not the default.
    """
    block_steps: int = 64
    run_group: int | None = None
    parallel: bool = True
    chunk_steps: int = 1 << 14
    product: str = "broadcast"

    def __post_init__(self):
        if self.product not in PRODUCTS:
            v.fail("layout.product", self.product, f"must be one of {', '.join(PRODUCTS)}")
        v.positive_int("block_steps", self.block_steps)
        v.positive_int("chunk_steps", self.chunk_steps)
        if self.run_group is not None:
            v.positive_int("run_group", self.run_group)


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
