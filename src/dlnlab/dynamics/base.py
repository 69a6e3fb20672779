"""The step contract shared by every stepper: :class:`Stepper`, :class:`State`, :class:`Info`.

``step(key, state, hparams) -> (state, info)``:

- ``key``: the run's PRNG key (typed key array of shape ``R``, or raw words ``(2, *R)``). It is
  the same at every step: the step's randomness is the counter-based stream
  ``threefry(key; state.step, ...)`` (see :mod:`._ops`), so step ``n`` of run ``i`` draws the same
  numbers however the steps are chunked, batched or resumed.
- ``state``: a NamedTuple with ``weights`` (tuple of ``(d_l, d_{l-1}, *R)`` arrays, runs on the
  trailing axes; ``R = ()`` for a single run), ``step`` (int32 steps taken) and the family's own
  typed fields (offline SGD without replacement: ``permutation``; momentum: ``velocity``).
  Every field but ``step`` carries the run axes.
- ``hparams``: the family's hyperparameters NamedTuple (:attr:`Stepper.hyperparameters_type`),
  numeric leaves (scalars, or arrays of shape ``R`` for sweeps over runs).
- ``info``: :class:`Info`, diagnostics never fed back (the loss before the step).

Time: one step advances ``t`` by :meth:`Stepper.time_step`: the learning rate for GD and SGD,
``step_size`` (``h``) for the SDEs and gradient flow (docs/theory.md §1, §4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .._types import Array
from ..core.task import Task
from . import _ops as ops
from .observers import observe_weights


class Hyperparameters(NamedTuple):
    """Hyperparameters of GD and SGD (any leaf a scalar or an array of shape ``R``).

    - ``learning_rate`` ``eta``: the step.
    - ``batch_size`` ``B`` as a number: the SGD noise scale ``eta / B`` that the diffusion
      observables describe (SGD steppers draw their static ``batch_size`` samples; the
      experiment layer keeps the two equal).
    """
    learning_rate: Any
    batch_size: Any = 1.0


class StepSizeHyperparameters(NamedTuple):
    """Hyperparameters of steppers with their own time step ``h`` (gradient flow, the SDEs).

    - ``learning_rate`` ``eta``: sets the SGD noise scale ``eta / B`` the SDEs model.
    - ``batch_size`` ``B`` (a number).
    - ``step_size`` ``h``: time per step (``None``: equal to ``learning_rate``).
    """
    learning_rate: Any
    batch_size: Any = 1.0
    step_size: Any = None


class State(NamedTuple):
    """``weights``: tuple of ``(d_l, d_{l-1}, *R)`` arrays; ``step``: int32 steps taken."""
    weights: tuple
    step: Array


class Info(NamedTuple):
    """``loss`` ``(*R)``: training loss before the step (SGD: the minibatch loss)."""
    loss: Array


def cast(value, dtype):
    """``value`` as an array of ``dtype`` (hyperparameters follow the weights' precision)."""
    return jnp.asarray(value, dtype)


def dtype_of(state) -> Any:
    """The simulation's floating dtype: that of the first weight."""
    return state.weights[0].dtype


@dataclasses.dataclass(frozen=True)
class Stepper:
    """Base class: a static configuration plus the task (its arrays are pytree leaves).

    Subclasses implement :meth:`apply` (and :meth:`draw` when stochastic). Instances are pytrees
    (the task is data, the other fields static), so ``jax.jit`` recompiles only when the
    structure changes. ``replacement`` is the sampling the offline SGD noise is modelled with
    (with replacement: ``1/B``; without: ``(n - B) / (B (n - 1))``): it sets the noise of the
    offline steppers and the offline diffusion observables.
    """
    task: Task
    replacement: bool = True
    name: ClassVar[str] = "stepper"
    uses_step_size: ClassVar[bool] = False
    hyperparameters_type: ClassVar[type] = Hyperparameters
    required_hyperparameters: ClassVar[tuple[str, ...]] = ("learning_rate",)

    def init(self, weights):
        """Initial state from weights ``(d_l, d_{l-1}, *R)``."""
        weights = tuple(jnp.asarray(w) for w in weights)
        return State(weights, jnp.zeros((), jnp.int32))

    def hyperparameters(self, **values):
        """This family's hyperparameters NamedTuple from keyword values (unknown names raise a
        one-line ``ValueError`` listing the valid ones)."""
        fields = self.hyperparameters_type._fields
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise ValueError(f"hparams.{unknown[0]}={values[unknown[0]]!r}: not a hyperparameter of "
                             f"{type(self).__name__} (valid: {', '.join(fields)})")
        missing = [k for k in self.required_hyperparameters if values.get(k) is None]
        if missing:
            raise ValueError(f"hparams.{missing[0]}=None: required by {type(self).__name__} "
                             f"(required: {', '.join(self.required_hyperparameters)})")
        return self.hyperparameters_type(**values)

    def time_step(self, hparams):
        """Continuous time per step: ``h`` for SDE/ODE steppers, else the learning rate."""
        step_size = getattr(hparams, "step_size", None)
        if self.uses_step_size and step_size is not None:
            return step_size
        return hparams.learning_rate

    def draw(self, words, steps, dtype):
        """The randomness of the steps with counters ``steps`` (shape ``C``), drawn in one call:
        a pytree with leading axes ``C`` (``None`` for deterministic steppers). The engine draws
        a block of steps at once (docs/architecture.md: 3x faster than drawing inside the loop)."""
        return None

    def apply(self, words, noise, state, hparams):
        """The step given its drawn randomness ``noise`` (one step's slice of :meth:`draw`)."""
        raise NotImplementedError

    def step(self, key, state, hparams):
        """``step(key, state, hparams) -> (state, info)``: the contract (module docstring)."""
        words = ops.key_words(key)
        return self.apply(words, self.draw(words, state.step, dtype_of(state)), state, hparams)

    def gradient_and_loss(self, weights):
        """Full training gradient (population online, empirical offline) and loss."""
        rights, end = ops.prefix_products(weights)
        g, _, loss = ops.error_and_loss(self.task, self._moments(), end)
        return ops.layer_maps(weights, rights, g), loss

    def _moments(self):
        return None if self.task.online else ops.data_moments(self.task)

    def observe(self, weights, hparams, names, coupled: bool = True) -> dict:
        """The observables ``names`` of one run's state weights (plain matrices, no run axis):
        the observer the engine calls at record times (:mod:`.observers`)."""
        return observe_weights(weights, self.task, hparams.learning_rate, hparams.batch_size,
                               names, self.replacement, coupled)

    def tree_flatten(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        task = fields.pop("task")
        return (task,), tuple(sorted(fields.items()))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], **dict(aux))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node_class(cls)
