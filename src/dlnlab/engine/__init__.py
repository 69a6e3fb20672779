"""The simulation driver: ``simulate`` (scan over steps, runs batched), its option objects,
record schedules. Observables are supplied by the steppers (:mod:`dlnlab.dynamics.observers`)."""

from ..dynamics.observers import OBSERVABLE_DIMS, balance, observe_amplitudes, observe_weights
from .options import Checkpoint, Layout, Recording, Schedule
from .schedule import record_steps, steps_for_times
from .simulate import (
    DEFAULT_DIVERGENCE_THRESHOLD,
    advance_from,
    initial_state,
    memory_map_share,
    release_compiled_programs,
    resolve_kernel,
    resolve_product,
    run_keys,
    simulate,
)

__all__ = [
    "DEFAULT_DIVERGENCE_THRESHOLD",
    "OBSERVABLE_DIMS",
    "Checkpoint",
    "Layout",
    "Recording",
    "Schedule",
    "advance_from",
    "balance",
    "initial_state",
    "memory_map_share",
    "observe_amplitudes",
    "observe_weights",
    "record_steps",
    "release_compiled_programs",
    "resolve_kernel",
    "resolve_product",
    "run_keys",
    "simulate",
    "steps_for_times",
]
