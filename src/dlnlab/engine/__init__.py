"""The simulation driver: ``simulate`` (scan over steps, runs batched), schedules, observables."""

from .observables import OBSERVABLE_DIMS, balance, observe_amplitudes, observe_weights
from .schedule import record_steps, steps_for_times
from .simulate import DEFAULT_DIVERGENCE_THRESHOLD, initial_state, run_keys, simulate

__all__ = [
    "DEFAULT_DIVERGENCE_THRESHOLD",
    "OBSERVABLE_DIMS",
    "balance",
    "initial_state",
    "observe_amplitudes",
    "observe_weights",
    "record_steps",
    "run_keys",
    "simulate",
    "steps_for_times",
]
