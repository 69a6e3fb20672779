"""The :class:`Method` record: everything the layers above need to know about one method.

A method is a stepper family plus how to build it from a task and an experiment's settings,
its time step, its start state, its config section and the conformance cases every registered
method is tested with. :mod:`.registry` lists the records; the experiment config, labels,
colours, escape experiments and the conformance suite derive from that list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..core.task import Task


class Section(BaseModel):
    """Base of a method's config section (a TOML table named after the method): closed (an
    unknown key is an error), strict (``"0.01"`` is not a number, ``true`` not an integer; an
    integer is a valid float) and finite (``inf``/``nan`` are errors), like every config model.
    Give every field a ``description``: ``docs/config.md`` is generated from them."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """What an experiment fixes for a method: the SGD it models and the network's widths.

    ``section`` is the method's own config section (an instance of :attr:`Method.section`, or
    ``None`` for methods without one); ``step_size`` the resolved time per step ``h``.
    """
    learning_rate: float
    batch_size: int
    replacement: bool
    widths: tuple[int, ...]
    section: Any = None
    step_size: float | None = None

    @property
    def depth(self) -> int:
        return len(self.widths) - 1


@dataclasses.dataclass(frozen=True)
class ConformanceCase:
    """One case of the conformance suite (``tests/test_dynamics_conformance.py``).

    ``regime``: the test task (``white``, ``white_noise``, ``colored``, ``colored_noise``,
    ``offline``); ``make(task)`` builds the stepper; ``hparams`` are keyword values of the
    stepper's hyperparameters type; ``stochastic``: whether the step draws randomness.
    """
    name: str
    regime: str
    make: Callable[[Task], Any]
    hparams: dict
    stochastic: bool = True


def _learning_rate_step(settings: MethodSettings) -> float:
    return settings.learning_rate


def _no_preparation(weights, task, settings) -> dict:
    return {}


def _same_start(weights, task):
    return weights


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered method.

    - ``name``: the config / CLI name; ``label``: for tables and figures; ``colour``: matplotlib.
    - ``build(task, settings) -> Stepper``.
    - ``hyperparameters(settings, prepared) -> NamedTuple`` of the stepper's family
      (``prepared``: what :attr:`prepare` returned).
    - ``section``: the pydantic model of its config section (``None``: no section).
    - ``step_size(settings) -> h``: time per step (default: the learning rate).
    - ``prepare(weights, task, settings) -> dict``: host-side preparation from the runs' initial
      weights (e.g. the matched isotropic temperature).
    - ``start(weights, task) -> weights``: the stepper's initial state from the shared initial
      weights ``(runs, d_l, d_{l-1})`` (the reduced SDE starts from mode amplitudes).
    - ``state``: ``"weights"`` (acts on the network) or ``"amplitudes"``.
    - ``online_only``: needs an online task.
    - ``minibatch``: draws minibatches (its batch size is a shape, static under ``jit``).
    - ``conformance``: its cases in the conformance suite (at least one).
    """
    name: str
    label: str
    colour: str
    build: Callable[[Task, MethodSettings], Any]
    hyperparameters: Callable[[MethodSettings, dict], Any]
    conformance: tuple[ConformanceCase, ...]
    section: type[Section] | None = None
    step_size: Callable[[MethodSettings], float] = _learning_rate_step
    prepare: Callable[[Any, Task, MethodSettings], dict] = _no_preparation
    start: Callable[[Any, Task], Any] = _same_start
    state: str = "weights"
    online_only: bool = False
    minibatch: bool = False

    @property
    def needs_preparation(self) -> bool:
        """Whether :attr:`prepare` does host-side work from the runs' initial weights."""
        return self.prepare is not _no_preparation


def section_step_size(default_factor: float):
    """``step_size(settings)``: the section's ``step_size``, else ``default_factor x`` the
    learning rate."""
    def step_size(settings: MethodSettings) -> float:
        h = getattr(settings.section, "step_size", None)
        return h if h is not None else settings.learning_rate * default_factor
    return step_size
