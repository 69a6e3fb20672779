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
import numpy as np

from .. import _validation as v
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


# A minibatch's label-noise energy is below this many times its mean except with probability
# <= (normals per step) x P(z^2 > 100) = (normals per step) x 2e-23 (Stepper.divergence_allowance).
MINIBATCH_NOISE_QUANTILE = 100.0


# ------------------------------------------------------------------ hyperparameter rules
# One rule per numeric hyperparameter name, the same as the config's (experiments/config.py and
# the method sections): ``(lower bound, lower strict, upper bound, upper strict, integer)``.
_RULES: dict[str, tuple[float | None, bool, float | None, bool, bool]] = {
    "learning_rate": (0.0, True, None, False, False),
    "batch_size": (1.0, False, None, False, True),
    "step_size": (0.0, True, None, False, False),
    "temperature": (0.0, False, None, False, False),
    "momentum": (0.0, False, 1.0, True, False),
}


def hyperparameter_rule(name: str) -> str:
    """The rule a hyperparameter's values obey, as the error message states it."""
    low, low_strict, high, high_strict, integer = _RULES.get(
        name, (None, False, None, False, False))
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        bounds = f" in {'(' if low_strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_strict else '>='} {low:g}"
    elif high is not None:
        bounds = f" {'<' if high_strict else '<='} {high:g}"
    else:
        bounds = ""
    return f"must be {kind}{bounds} (a scalar or one per run)"


def check_hyperparameter(name: str, value, dtype=None) -> np.ndarray | None:
    """``value`` of hyperparameter ``name`` as a float64 array (scalar or one per run), checked
    host-side with the config's rule (:func:`hyperparameter_rule`): a number or an array of
    numbers (no strings, booleans, ``None`` for a required field is the caller's check), every
    entry finite and within its bounds, and still finite in ``dtype`` (the simulation's
    precision: ``1e300`` overflows float32). Tracers (inside ``jit``) are skipped (returns
    ``None``). Raises ``ValueError`` ``hparams.NAME[=VALUE]: rule``; a per-run array names the
    first bad entry ``hparams.NAME[i]``."""
    if not v.is_concrete(value):
        return None
    label = f"hparams.{name}"
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raw = np.asarray(None)
    if raw.dtype.kind not in "iuf":              # strings, booleans, objects, complex
        kind = type(value).__name__ if raw.ndim == 0 else f"an array of {raw.dtype}"
        v.fail(label, value, f"{hyperparameter_rule(name)}, not {kind}")
    arr = raw.astype(np.float64)
    if arr.ndim > 1:
        v.fail(label, value, hyperparameter_rule(name) + ": a scalar or a 1-D array")
    low, low_strict, high, high_strict, integer = _RULES.get(
        name, (None, False, None, False, False))
    flat = arr.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        in_dtype = flat if dtype is None else flat.astype(np.dtype(dtype)).astype(np.float64)
    bad = ~np.isfinite(in_dtype)
    if low is not None:
        bad |= (flat <= low) if low_strict else (flat < low)
        if low_strict:
            bad |= in_dtype <= low                   # e.g. 1e-300 is 0 in float32
    if high is not None:
        bad |= (flat >= high) if high_strict else (flat > high)
    if integer:
        bad |= np.isfinite(flat) & (flat != np.round(flat))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        where = label if arr.ndim == 0 else f"{label}[{i}]"
        shown = value if arr.ndim == 0 else float(flat[i])
        rule = hyperparameter_rule(name)
        if np.isfinite(flat[i]) and not np.isfinite(in_dtype[i]):
            rule = f"overflows {np.dtype(dtype).name} (the weights' precision); {rule}"
        elif flat[i] != in_dtype[i] and low_strict and in_dtype[i] <= low < flat[i]:
            rule = f"underflows to 0 in {np.dtype(dtype).name} (the weights' precision); {rule}"
        v.fail(where, shown, rule)
    return arr


def check_hyperparameters(hparams, dtype=None):
    """Every numeric field of a hyperparameters NamedTuple checked by
    :func:`check_hyperparameter` (``None`` fields are skipped: defaults or the caller's required
    check). Returns ``hparams`` unchanged."""
    for name in hparams._fields:
        value = getattr(hparams, name)
        if value is not None:
            check_hyperparameter(name, value, dtype)
    return hparams


class State(NamedTuple):
    """``weights``: tuple of ``(d_l, d_{l-1}, *R)`` arrays; ``step``: int32 steps taken."""
    weights: tuple
    step: Array


class Info(NamedTuple):
    """``loss`` ``(*R)``: training loss before the step (SGD: the minibatch loss); the engine's
    divergence test compares it with the threshold plus :meth:`Stepper.divergence_allowance`."""
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
    offline steppers and the offline diffusion observables. ``reports_minibatch_loss``: the
    :class:`Info` loss is that of the step's minibatch (SGD families), not the full training loss;
    it sets the noise allowance of the divergence test (:meth:`divergence_allowance`).
    """
    task: Task
    replacement: bool = True
    name: ClassVar[str] = "stepper"
    uses_step_size: ClassVar[bool] = False
    reports_minibatch_loss: ClassVar[bool] = False
    hyperparameters_type: ClassVar[type] = Hyperparameters
    required_hyperparameters: ClassVar[tuple[str, ...]] = ("learning_rate",)

    minimum_broadcast_group: ClassVar[int] = 2
    """Fewest runs in one broadcast run group of this stepper's XLA step: the engine pads a
    smaller group with copies of its last run (``dlnlab.engine.simulate``'s layout). 2: a lone
    run is padded with a copy (offline GD and offline isotropic Langevin rounded a lone run
    differently from the same run among others, widths 3-24, float32 and float64). Momentum
    SGD sets 16: its XLA step rounded a run differently in groups of 1-8 runs than in groups of
    16 or more (docs/architecture.md, "Results never depend on the batching")."""

    batched_from_width: ClassVar[int | None] = None
    """Under ``Layout(product="auto")`` the engine computes this stepper's products batched over
    the runs when the network's largest width is at least this; ``None``: always broadcast."""

    def batched_product_width(self) -> int | None:
        """The smallest largest-width at which ``Layout(product="auto")`` runs this stepper with
        batched products (:func:`dlnlab.engine.resolve_product`); ``None``: never.

        Set from measurements on a 2-core CPU, float32, 64-1,024 runs (docs/performance.md,
        "Which product"): batched is 1.2-17.6x faster from width 32 on (16 for the anisotropic
        SDE, whose step is matrix-matrix work) and 2-5x slower at width 12 on online tasks;
        offline (50 samples, 64 runs, width 32) 2.1-3.5x faster for SGD, momentum, GD and
        isotropic Langevin, 16.6x for the anisotropic SDE (1.7x at width 20, 3.3x at 24, 0.72x
        at 16), and a broadcast group of the offline SDE rounded a run by the group's size at
        width 24 where batched groups did not. The same widths hold online and offline.
        Steppers whose layouts were not measured (the reduced SDE, gradient flow:
        ``batched_from_width = None``) give ``None``."""
        return self.batched_from_width

    def init(self, weights):
        """Initial state from weights ``(d_l, d_{l-1}, *R)``."""
        weights = tuple(jnp.asarray(w) for w in weights)
        return State(weights, jnp.zeros((), jnp.int32))

    def hyperparameters(self, **values):
        """This family's hyperparameters NamedTuple from keyword values.

        Each value is a scalar or one per run, checked with the config's rules (learning rate
        and step size finite and ``> 0``, batch size an integer ``>= 1``, temperature finite and
        ``>= 0``, momentum in ``[0, 1)``: :func:`check_hyperparameter`). Raises a one-line
        ``ValueError`` ``hparams.NAME=VALUE: rule`` for an unknown name (listing the valid ones),
        a missing required one or a bad value; tracers are not checked."""
        fields = self.hyperparameters_type._fields
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise ValueError(f"hparams.{unknown[0]}={values[unknown[0]]!r}: not a hyperparameter of "
                             f"{type(self).__name__} (valid: {', '.join(fields)})")
        missing = [k for k in self.required_hyperparameters if values.get(k) is None]
        if missing:
            raise ValueError(f"hparams.{missing[0]}=None: required by {type(self).__name__} "
                             f"(required: {', '.join(self.required_hyperparameters)})")
        return check_hyperparameters(self.hyperparameters_type(**values))

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

    def block_kernel(self, shapes, dtype):
        """A compiled kernel that runs a whole block of steps on CPU, or ``None`` (the engine then
        scans :meth:`apply`). ``shapes``: the layer shapes ``(d_l, d_{l-1})``; ``dtype``: the
        weights' dtype. The kernel is called as ``kernel(words, state, hparams, first_step,
        valid_steps, threshold, diverged) -> (state, diverged)`` with runs on the trailing axis
        (``words``: the runs' key words ``(2, R)``; the kernel draws the block's randomness
        itself, the same as :meth:`draw`) and must give exactly the scan's results
        (:mod:`dlnlab.dynamics.kernels`)."""
        return None

    def step(self, key, state, hparams):
        """``step(key, state, hparams) -> (state, info)``: the contract (module docstring)."""
        words = ops.key_words(key)
        return self.apply(words, self.draw(words, state.step, dtype_of(state)), state, hparams)

    def divergence_allowance(self) -> float:
        """The part of :attr:`Info.loss` that noise alone can give a run that is not diverging
        (host-side float64, from the task). The engine labels a run diverged when its loss is
        non-finite or ``loss > threshold + allowance``: the threshold bounds the *excess* loss,
        so a large irreducible noise floor is never mistaken for a divergence.

        - Full-batch losses (GD, gradient flow, the SDEs, online: the population loss; offline:
          the empirical loss): the floor no weights go below, exactly. Online
          ``0.5 tr S_eps``; offline the least-squares residual ``0.5 mean_i |y_i - W* x_i|^2``
          (``W*`` the best linear map: ``L_emp(W) = floor + 0.5 mean_i |(W - W*) x_i|^2``).
        - Minibatch losses (:attr:`reports_minibatch_loss`: SGD and momentum SGD), with
          ``0.5 |a + b|^2 <= |a|^2 + |b|^2``: online the label-noise part
          ``(1/B) sum_i |eps_i|^2`` (mean ``2 x 0.5 tr S_eps``) is below ``K`` times its mean
          except with probability ``<= d_out B P(z^2 > K)`` (``K = 100``: ``2e-23`` per
          normal), so ``2 K x 0.5 tr S_eps``; offline ``max_i |y_i - W* x_i|^2`` (a bound).

        0 without label noise online (the threshold is then the loss itself, as before).
        Source: docs/theory.md §1 (the loss and its noise floor).
        """
        task = self.task
        if task.online:
            if task.label_covariance is None:
                return 0.0
            floor = 0.5 * float(np.trace(np.asarray(task.label_covariance, dtype=np.float64)))
            return 2.0 * MINIBATCH_NOISE_QUANTILE * floor if self.reports_minibatch_loss else floor
        x = np.asarray(task.data.inputs, dtype=np.float64)
        y = np.asarray(task.data.targets, dtype=np.float64)
        best, *_ = np.linalg.lstsq(x, y, rcond=None)                 # (d_in, d_out) = W*^T
        residual = np.sum((y - x @ best) ** 2, axis=1)               # |y_i - W* x_i|^2
        if self.reports_minibatch_loss:
            return float(np.max(residual))
        return 0.5 * float(np.mean(residual))

    def gradient_and_loss(self, weights):
        """Full training gradient (population online, empirical offline) and loss."""
        grads, loss, _ = self.sequenced_gradient_and_loss(weights)
        return grads, loss

    def sequenced_gradient_and_loss(self, weights):
        """``(grads, loss, sequenced)``: the gradient ``dL/dW_l = A_l^T G B_l^T`` (a tuple over
        the layers, each shaped as ``W_l``), the loss per run (shape ``R``) and the weights
        sequenced after their last read (the same values, ``_ops.after``): a step ``W_l - U_l``
        computed from these lets XLA update the weights in place instead of copying them first
        (docs/architecture.md, "In-place updates")."""
        rights, end = ops.prefix_products(weights)
        g, _, loss = ops.error_and_loss(self.task, self._moments(), end)
        grads, sequenced = ops.layer_maps_sequenced(weights, rights, g)
        return grads, loss, sequenced

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
