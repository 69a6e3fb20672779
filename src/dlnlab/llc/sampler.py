"""SGLD estimate of the local learning coefficient (docs/llc.md; Lau, Furman, Wang, Murfet & Wei,
"The local learning coefficient: a singularity-aware complexity measure", AISTATS 2025, Alg. 1).

At a parameter ``w0`` the local learning coefficient is estimated from the localised, tempered
posterior

    p(w) ∝ exp(-n beta L_n(w) - (gamma / 2) ||w - w0||^2)

as ``lambda_hat = n beta (E_p[L_n(w)] - L_n(w0))``; ``n beta = n / log n`` by default (the WBIC
temperature). The expectation is a time average over ``num_draws`` steps after ``num_burnin_steps``
steps of stochastic-gradient Langevin dynamics, in ``num_chains`` independent chains (vmapped)
started at ``w0``:

    w <- w + (epsilon / 2) G g + sqrt(epsilon G) xi,   g = -(n beta grad L_B(w) + gamma (w - w0)),

``xi ~ N(0, I)``, ``L_B`` the loss of one random minibatch (or the exact loss), ``G = I`` for plain
SGLD (the step is blackjax's SGLD Euler step, ``overdamped_langevin``, with its step size
``epsilon / 2``, written out here so that padded entries of a group of networks get no noise,
:mod:`dlnlab.llc.padded`) and
``G = 1 / (delta + sqrt(V))`` for the RMSProp-preconditioned variant (Li, Chen, Carlson & Carin,
AAAI 2016), ``V <- alpha V + (1 - alpha) g^2``.

Diagnostics (all in the returned dataset): the whole-data loss of every chain at every step, the
distance to ``w0``, a Metropolis-adjusted-Langevin acceptance probability of the chain's current
proposal computed every ``diagnostic_every`` steps (near 1: the step size resolves the posterior;
well below 1: the step is too large), each chain's estimate and their spread; chains that diverge,
leave the localisation region or are not stationary are labelled and warned about, and diverged
chains are left out of the estimate (the dataset says how many chains it covers).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from .. import _validation as v
from ..core.products import end_to_end
from .loss_model import LossModel, moment_loss

PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]

ADAPTATION_RATE = 2.0
"""Rate of the burn-in step-size adaptation (``log epsilon += rate x (acceptance - target)``)."""

MAX_SAMPLER_STEPS = 10_000_000
"""Largest ``num_burnin_steps + num_draws`` accepted (a typo guard)."""


class LearningCoefficientWarning(UserWarning):
    """A chain diverged, left the localisation region, is not stationary, or the step is too large."""


class SamplerSettings(BaseModel):
    """Settings of the SGLD learning-coefficient estimator (strict, immutable; docs/llc.md).

    Defaults are the published deep-linear-network protocol (Lau et al. 2025, App. J; Furman & Lau
    2024): ``epsilon = 5e-7``, ``gamma = 1``, ``n beta = n / log n``, 10,000 steps of which 90% are
    burn-in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    step_size: PositiveFloat = 5e-7
    """``epsilon`` (units of the weights squared)."""
    localisation: Annotated[float, Field(ge=0.0)] = 1.0
    """``gamma``, the strength of the Gaussian localisation at ``w0``."""
    inverse_temperature: PositiveFloat | None = None
    """``n beta``; ``None`` means ``n / log n`` with the loss model's ``n``."""
    num_chains: PositiveInt = 4
    num_burnin_steps: Annotated[int, Field(ge=0)] = 9_000
    num_draws: PositiveInt = 1_000
    preconditioner: Literal["none", "rmsprop"] = "none"
    rmsprop_decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    """``alpha`` of the RMSProp average of squared gradients."""
    rmsprop_stabiliser: PositiveFloat = 0.1
    """``delta`` in ``G = 1 / (delta + sqrt(V))``."""
    adapt_step_size: bool = False
    """Adapt each chain's step size during burn-in towards ``target_acceptance`` (after each
    acceptance check: ``epsilon <- epsilon exp(2 (acceptance - target))``); fixed during the draws."""
    target_acceptance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    diagnostic_every: PositiveInt = 100
    """Steps between two acceptance checks; must divide ``num_burnin_steps`` and ``num_draws``."""

    @pydantic.model_validator(mode="after")
    def _blocks(self):
        total = self.num_burnin_steps + self.num_draws
        if total > MAX_SAMPLER_STEPS:
            raise ValueError(f"num_burnin_steps + num_draws={total}: must be at most {MAX_SAMPLER_STEPS}")
        for name in ("num_burnin_steps", "num_draws"):
            value = getattr(self, name)
            if value % self.diagnostic_every:
                raise ValueError(f"{name}={value}: must be a multiple of diagnostic_every="
                                 f"{self.diagnostic_every}")
        return self


def sampler_settings(**fields) -> SamplerSettings:
    """:class:`SamplerSettings` from keyword fields; a bad value is one line ``field=value: rule``."""
    try:
        return SamplerSettings(**fields)
    except pydantic.ValidationError as error:
        raise ValueError(_format_error(error, fields)) from None


def _format_error(error: pydantic.ValidationError, fields: dict) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not location:
        return message
    return f"{location}={v.show(fields.get(location, first.get('input')))}: {message}"


def default_inverse_temperature(num_samples: int) -> float:
    """``n beta = n / log n`` (Watanabe's WBIC temperature)."""
    return float(num_samples / math.log(num_samples))


# ----------------------------------------------------------------------------- the chains
def _unflatten(flat, shapes):
    out, offset = [], 0
    for rows, cols in shapes:
        out.append(flat[offset: offset + rows * cols].reshape(rows, cols))
        offset += rows * cols
    return tuple(out)


def _make_chain_runner(num_blocks_burnin: int, blocks_per_call: int, block: int, rmsprop: bool,
                       stochastic: bool, shapes: tuple[tuple[int, int], ...], adapt: bool):
    """A jitted function ``(keys, w0, mask, index, model arrays, hyperparameters, carry, first block) ->
    (carry, traces)`` advancing every chain of every network of a group by ``blocks_per_call``
    blocks of ``block`` steps (the driver calls it until the run is done, reporting progress in
    between). Leading axes: network (every argument but ``first block``), then chain (``keys`` and
    ``carry``). Static structure only (the padded layer shapes, the block sizes, the variant): a new
    step size, localisation, temperature, data set or network of the same padded shape reuses the
    compiled function.

    ``mask`` (network, parameters) is 1 on a network's own weights and 0 on padding
    (:mod:`dlnlab.llc.padded`): the log-posterior gradient is multiplied by it before any use (the
    step, the RMSProp moment, the MALA check) and masked entries get no noise, so they keep their
    value ``w0`` exactly. ``index`` (network, parameters) maps each padded entry to its position
    among the network's own parameters, so the noise of an entry is the same padded or not. A
    single network is a group of one with a mask of ones and ``index = arange``.

    One step evaluates the end-to-end product once: its vector-Jacobian product gives the
    minibatch gradient ``grad L_B = vjp(W S_xx,B - S_yx,B)`` and the same product gives the
    whole-data loss ``L_n(w_t)`` recorded for that step (before the update)."""
    def product(flat):
        return end_to_end(_unflatten(flat, shapes))

    def chain(key, w0, mask, index, model, hyper, carry, first_block):
        initial_step, gamma, nbeta, decay, stabiliser, target = hyper
        sxx, syx, tyy = model["sxx"], model["syx"], model["tyy"]
        key, check_root = jax.random.split(key)
        moves = mask > 0

        def gaussian(noise_key):
            """``xi ~ N(0, I)`` with entry ``j`` the ``index[j]``-th entry of a draw of the network's own
            parameters: with JAX's partitionable threefry an entry's value depends on its position only,
            so a padded network gets the same noise as the network alone."""
            return jax.random.normal(noise_key, w0.shape, w0.dtype)[index]

        def log_posterior_gradient(w, batch_sxx, batch_syx):
            """``(g, L_n(w))`` with ``g = -mask (n beta grad L_B(w) + gamma (w - w0))``."""
            p, pullback = jax.vjp(product, w)
            (grad_fit,) = pullback(p @ batch_sxx - batch_syx)
            return -mask * (nbeta * grad_fit + gamma * (w - w0)), moment_loss(p, sxx, syx, tyy)

        def log_posterior(w):
            p = product(w)
            return -(nbeta * moment_loss(p, sxx, syx, tyy) + 0.5 * gamma * jnp.sum((w - w0) ** 2))

        def minibatch(step_key):
            if not stochastic:
                return sxx, syx
            index = jax.random.randint(step_key, (), 0, model["batch_sxx"].shape[0])
            return model["batch_sxx"][index], model["batch_syx"][index]

        def conditioner(second_moment):
            return 1.0 / (stabiliser + jnp.sqrt(second_moment)) if rmsprop else jnp.ones_like(second_moment)

        def one_step(carry, step):
            w, second_moment, step_size = carry
            step_key, batch_key = jax.random.split(jax.random.fold_in(key, step))
            grad, fit = log_posterior_gradient(w, *minibatch(batch_key))
            distance = jnp.sum((w - w0) ** 2)
            if rmsprop:
                second_moment = decay * second_moment + (1 - decay) * grad * grad
                c = conditioner(second_moment)
                moved = w + 0.5 * step_size * c * grad + jnp.sqrt(step_size * c) * gaussian(step_key)
            else:   # blackjax's SGLD Euler step (overdamped_langevin): w + h g + sqrt(2 h) xi, h = eps / 2
                h = 0.5 * step_size
                moved = w + h * grad + jnp.sqrt(2 * h) * gaussian(step_key)
            w = jnp.where(moves, moved, w)   # no noise on masked entries: they keep w0 exactly
            return (w, second_moment, step_size), (fit, distance)

        def acceptance(w, second_moment, step_size, check_key):
            """MALA acceptance probability of one exact-gradient Langevin proposal from ``w``."""
            c = conditioner(second_moment)
            grad, _ = log_posterior_gradient(w, sxx, syx)
            proposal = (w + 0.5 * step_size * c * grad
                        + mask * jnp.sqrt(step_size * c) * gaussian(check_key))
            grad_new, _ = log_posterior_gradient(proposal, sxx, syx)

            def log_q(to, frm, g):  # log N(to; frm + eps/2 C g, eps C) up to a constant (own weights)
                r = to - frm - 0.5 * step_size * c * g
                return -jnp.sum(r * r / c) / (2 * step_size)

            log_ratio = (log_posterior(proposal) - log_posterior(w) + log_q(w, proposal, grad_new)
                         - log_q(proposal, w, grad))
            return jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)

        def one_block(carry, block_index):
            carry, (fits, distances) = jax.lax.scan(one_step, carry,
                                                    block_index * block + jnp.arange(block))
            w, second_moment, step_size = carry
            accept = acceptance(w, second_moment, step_size, jax.random.fold_in(check_root, block_index))
            if adapt:   # burn-in only: multiplicative Robbins-Monro step towards the target acceptance
                factor = jnp.exp(ADAPTATION_RATE * (accept - target))
                step_size = jnp.where(block_index < num_blocks_burnin, step_size * factor, step_size)
            return (w, second_moment, step_size), (fits, distances, accept, step_size)

        carry, (fits, distances, accept, steps) = jax.lax.scan(
            one_block, carry, first_block + jnp.arange(blocks_per_call))
        return carry, (fits.reshape(-1), distances.reshape(-1), accept)

    chains = jax.vmap(chain, in_axes=(0, None, None, None, None, None, 0, None))
    return jax.jit(jax.vmap(chains, in_axes=(0, 0, 0, 0, 0, 0, 0, None)))


def _blocks_per_call(total_blocks: int) -> int:
    """The largest divisor of ``total_blocks`` that is at most ``total_blocks / 20`` (about 20 calls,
    so progress is reported about 20 times)."""
    limit = max(1, total_blocks // 20)
    return max(d for d in range(1, limit + 1) if total_blocks % d == 0)


def _runner(settings: SamplerSettings, stochastic: bool, shapes):
    """The compiled chains for this structure and the blocks per call (one compilation per
    structure, cached by ``functools.lru_cache`` on the static signature)."""
    block = settings.diagnostic_every
    total = (settings.num_burnin_steps + settings.num_draws) // block
    per_call = _blocks_per_call(total)
    return _compiled_runner(settings.num_burnin_steps // block, per_call, block,
                            settings.preconditioner == "rmsprop", stochastic, shapes,
                            settings.adapt_step_size), per_call, total


_compiled_runner = functools.lru_cache(maxsize=32)(_make_chain_runner)


# ----------------------------------------------------------------------------- the estimate
def estimate_learning_coefficient(weights, loss_model: LossModel, key,
                                  settings: SamplerSettings | None = None, *,
                                  warn: bool = True,
                                  progress: Callable[[int, int], None] | None = None) -> xr.Dataset:
    """SGLD estimate of the local learning coefficient at ``weights`` (module docstring).

    Args:
        weights: ``w0``, a tuple ``(W_1, ..., W_L)`` with ``W_l`` of shape ``(d_l, d_{l-1})``.
        loss_model: the loss ``L_n`` (:mod:`dlnlab.llc.loss_model`), whose ``d_in``, ``d_out``
            match the weights.
        key: PRNG key of the chains.
        settings: :class:`SamplerSettings` (default: the published protocol).
        warn: emit :class:`LearningCoefficientWarning` for unhealthy chains.
        progress: called as ``progress(steps done, total steps)`` about 20 times during the run
            (e.g. an ``update`` of :func:`dlnlab.experiments.runner.line_progress_factory`).

    Returns:
        ``xr.Dataset`` with ``learning_coefficient`` (mean over the chains that did not diverge),
        ``learning_coefficient_standard_error`` (their spread / sqrt(count); NaN with one chain),
        ``chain_learning_coefficient`` (chain), ``loss_trace`` and ``distance_trace`` (chain,
        step; whole-data loss and ``||w - w0||^2``), ``acceptance`` (chain, check), per-chain
        flags ``diverged``, ``left_localisation``, ``not_stationary``, and attributes with every
        setting, ``n``, ``n beta``, ``L_n(w0)``, the number of parameters and of chains used.

    Raises:
        ValueError: mismatched weights and loss model, non-finite weights, bad settings.
    """
    settings = settings if settings is not None else SamplerSettings()
    if not isinstance(settings, SamplerSettings):
        v.fail("settings", type(settings).__name__, "must be a dlnlab.llc.SamplerSettings")
    if not isinstance(loss_model, LossModel):
        v.fail("loss_model", type(loss_model).__name__, "must be a dlnlab.llc.LossModel "
                                                       "(population_loss_model, empirical_loss_model)")
    prepared = _prepare(weights, loss_model, key, settings)
    group = _stack([prepared])
    fits, distances, accept, final_step, _ = run_chains(group, settings, loss_model.stochastic,
                                                        prepared.shapes, progress=progress)
    return _dataset(fits[0], distances[0], accept[0], final_step[0], float(fits[0, 0, 0]),
                    prepared.inverse_temperature, settings, loss_model, prepared.widths, warn)


class _Prepared(NamedTuple):
    """One validated network (NumPy arrays): flat ``w0`` (parameters), ``mask`` (ones) and ``index``
    (``arange``), the moments, the chain keys (chain,), the hyperparameters ``(epsilon, gamma, n beta,
    alpha, delta, target)``."""

    widths: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]
    w0: jax.Array
    mask: jax.Array
    index: jax.Array
    model: dict
    keys: jax.Array
    hyper: tuple
    inverse_temperature: float


def _prepare(weights, loss_model: LossModel, key, settings: SamplerSettings) -> _Prepared:
    """Validate one estimate's inputs (one-line ``ValueError``) and lay them out for the chains."""
    key_dtype = getattr(key, "dtype", None)
    if not (key_dtype is not None and (jax.dtypes.issubdtype(key_dtype, jax.dtypes.prng_key)
                                       or (key_dtype == np.uint32 and getattr(key, "shape", None) == (2,)))):
        v.fail("key", key, "must be a JAX PRNG key (jax.random.key(seed))")
    widths = v.check_weights(weights, loss_model.d_in, loss_model.d_out)
    dtype = jnp.result_type(*[jnp.asarray(w).dtype for w in weights])
    if not jnp.issubdtype(dtype, jnp.floating):
        v.fail("weights dtype", str(dtype), "must be a floating-point dtype (float32 or float64)")
    # NumPy here, and the initial loss from the compiled chains (the loss of w_0 is their first
    # trace entry): eager JAX operations would compile once per new network shape
    layers = tuple(np.asarray(w, dtype=dtype) for w in weights)
    for index, w in enumerate(layers):
        v.finite_array(f"weights[{index}]", w)
    shapes = tuple((int(w.shape[0]), int(w.shape[1])) for w in layers)
    w0 = np.concatenate([w.ravel() for w in layers])
    nbeta = (settings.inverse_temperature if settings.inverse_temperature is not None
             else default_inverse_temperature(loss_model.num_samples))
    model = {"sxx": np.asarray(loss_model.input_moment, dtype),
             "syx": np.asarray(loss_model.cross_moment, dtype),
             "tyy": np.asarray(loss_model.target_moment, dtype)}
    if loss_model.stochastic:
        model["batch_sxx"] = np.asarray(loss_model.batch_input_moments, dtype)
        model["batch_syx"] = np.asarray(loss_model.batch_cross_moments, dtype)
    hyper = tuple(np.asarray(x, dtype) for x in (settings.step_size, settings.localisation, nbeta,
                                                 settings.rmsprop_decay, settings.rmsprop_stabiliser,
                                                 settings.target_acceptance))
    return _Prepared(tuple(widths), shapes, w0, np.ones_like(w0), np.arange(w0.shape[0], dtype=np.int32),
                     model, jax.random.split(key, settings.num_chains), hyper, float(nbeta))


class ChainGroup(NamedTuple):
    """Networks laid out for one compiled program (leading axis: network): ``w0`` and ``mask``
    (network, parameters), ``model`` moments (network, ...), chain ``keys`` (network, chain) and the
    hyperparameters, each (network,)."""

    w0: jax.Array
    mask: jax.Array
    index: jax.Array
    model: dict
    keys: jax.Array
    hyper: tuple


def _stack(prepared) -> ChainGroup:
    return ChainGroup(jnp.asarray(np.stack([p.w0 for p in prepared])),
                      jnp.asarray(np.stack([p.mask for p in prepared])),
                      jnp.asarray(np.stack([p.index for p in prepared])),
                      {name: jnp.asarray(np.stack([np.asarray(p.model[name]) for p in prepared]))
                       for name in prepared[0].model},
                      jnp.stack([p.keys for p in prepared]),
                      tuple(jnp.asarray(np.stack([p.hyper[i] for p in prepared])) for i in range(6)))


def run_chains(group: ChainGroup, settings: SamplerSettings, stochastic: bool,
               shapes: tuple[tuple[int, int], ...], *,
               progress: Callable[[int, int], None] | None = None):
    """Run every chain of every network of ``group`` (one compiled program, about 20 calls).

    Returns NumPy float64 arrays ``fits`` and ``distances`` (network, chain, step: the whole-data
    loss and ``||w - w0||^2`` of the state ``w_t``), ``acceptance`` (network, chain, check), the
    draws' ``step_size`` (network, chain) and the final ``positions`` (network, chain, padded
    parameters). ``progress(steps done, total steps)`` after each call."""
    runner, per_call, total = _runner(settings, stochastic, shapes)
    networks, chains = group.keys.shape[:2]
    dtype = group.w0.dtype
    carry = (jnp.broadcast_to(group.w0[:, None, :], (networks, chains, group.w0.shape[1])),
             jnp.zeros((networks, chains, group.w0.shape[1]), dtype),
             jnp.broadcast_to(group.hyper[0][:, None], (networks, chains)))
    parts = []
    block = settings.diagnostic_every
    for first in range(0, total, per_call):
        carry, traces = runner(group.keys, group.w0, group.mask, group.index, group.model, group.hyper,
                               carry, jnp.asarray(first, jnp.int32))
        parts.append(traces)
        if progress is not None:
            jax.block_until_ready(carry)
            progress((first + per_call) * block, total * block)
    fits, distances, accept = (np.concatenate([np.asarray(part[i], dtype=np.float64) for part in parts],
                                              axis=2) for i in range(3))
    return fits, distances, accept, np.asarray(carry[2], dtype=np.float64), np.asarray(carry[0])


def _dataset(fits, distances, accept, final_step, initial, nbeta, settings, loss_model, widths,
             warn) -> xr.Dataset:
    burn = settings.num_burnin_steps
    draws = fits[:, burn:]
    num_parameters = int(sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)))
    per_chain = nbeta * (draws.mean(axis=1) - initial)
    # the maximum over num_draws draws: a Bonferroni level keeps the false-alarm rate of a chain that
    # samples exactly the localisation prior below 0.1%
    region = (float(stats.chi2.isf(1e-3 / settings.num_draws, num_parameters) / settings.localisation)
              if settings.localisation > 0 else math.inf)
    diverged = ~np.all(np.isfinite(fits), axis=1) | ~np.all(np.isfinite(distances), axis=1)
    with np.errstate(invalid="ignore"):
        far = np.max(np.where(np.isfinite(distances[:, burn:]), distances[:, burn:], 0.0), axis=1)
    left = ~diverged & (far > region)
    half = settings.num_draws // 2
    not_stationary = np.zeros_like(diverged)
    if half >= 10:
        first, second = draws[:, :half], draws[:, half: 2 * half]
        se = np.sqrt(_batch_means_variance(first) / half + _batch_means_variance(second) / half)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(second.mean(axis=1) - first.mean(axis=1)) / se
        not_stationary = ~diverged & (z > 4.0)
    used = ~diverged
    count = int(used.sum())
    estimate = float(per_chain[used].mean()) if count else math.nan
    spread = float(per_chain[used].std(ddof=1)) if count > 1 else math.nan
    standard_error = spread / math.sqrt(count) if count > 1 else math.nan
    mean_acceptance = np.nanmean(accept, axis=1)
    steps = np.arange(fits.shape[1])   # the state w_t before update t (w_0 = the centre)
    checks = np.arange(1, accept.shape[1] + 1) * settings.diagnostic_every
    dataset = xr.Dataset(
        {
            "learning_coefficient": ((), estimate, {
                "long_name": "local learning coefficient estimate", "units": "1",
                "description": f"n beta (mean whole-data loss over the draws - L_n(w0)), mean over "
                               f"{count} of {settings.num_chains} chains (diverged chains left out)"}),
            "learning_coefficient_standard_error": ((), standard_error, {
                "units": "1", "description": "standard deviation over the chains / sqrt(chains used)"}),
            "chain_learning_coefficient": (("chain",), per_chain, {
                "long_name": "each chain's estimate n beta (mean L_n over its draws - L_n(w0))",
                "units": "1"}),
            "loss_trace": (("chain", "step"), fits, {
                "long_name": "whole-data loss L_n(w_t)", "units": "loss",
                "description": f"state w_t before update t; the draws are steps >= {burn}"}),
            "distance_trace": (("chain", "step"), distances, {
                "long_name": "squared distance to w0", "units": "weight^2"}),
            "acceptance": (("chain", "check_step"), accept, {
                "long_name": "MALA acceptance probability of an exact-gradient Langevin proposal",
                "units": "1"}),
            "mean_acceptance": (("chain",), mean_acceptance, {
                "long_name": "mean MALA acceptance probability over the checks", "units": "1"}),
            "step_size": (("chain",), final_step, {
                "long_name": "step size epsilon of the draws (adapted during burn-in when "
                             "adapt_step_size)", "units": "weight^2"}),
            "diverged": (("chain",), diverged, {
                "description": "a non-finite loss or distance: left out of the estimate"}),
            "left_localisation": (("chain",), left, {
                "description": f"max ||w - w0||^2 over the draws exceeded the (1 - 0.001 / num_draws) "
                               f"quantile of the localisation prior ({region:.4g})"}),
            "not_stationary": (("chain",), not_stationary, {
                "description": "the two halves of the draws differ by more than 4 standard errors "
                               "(batch means)"}),
        },
        coords={"chain": ("chain", np.arange(settings.num_chains), {"long_name": "chain index"}),
                "step": ("step", steps, {"long_name": "sampler step (burn-in, then draws)"}),
                "check_step": ("check_step", checks, {"long_name": "step of the acceptance check"})},
        attrs={
            "num_samples": loss_model.num_samples, "inverse_temperature": nbeta,
            "initial_loss": initial, "num_parameters": num_parameters, "widths": list(widths),
            "num_chains_used": count, "stochastic_gradients": int(loss_model.stochastic),
            "batch_size": loss_model.batch_size or 0,
            **{f"sampler_{name}": ("none" if value is None else value)
               for name, value in settings.model_dump().items()},
            "source": "Lau et al. (AISTATS 2025) Alg. 1; docs/llc.md",
        },
    )
    messages = []
    if diverged.any():
        messages.append(f"{int(diverged.sum())} of {settings.num_chains} chains diverged "
                        "(left out of the estimate)")
    if left.any():
        messages.append(f"{_chains(int(left.sum()))} left the localisation region")
    if not_stationary.any():
        count = int(not_stationary.sum())
        messages.append(f"{_chains(count)} {'is' if count == 1 else 'are'} not stationary over the draws "
                        "(more burn-in steps or a larger step size)")
    finite_acceptance = mean_acceptance[np.isfinite(mean_acceptance)]
    if finite_acceptance.size and finite_acceptance.min() < 0.5:
        messages.append(f"mean acceptance {finite_acceptance.min():.2f} < 0.5: the step size is too large "
                        "for this posterior")
    elif finite_acceptance.size and finite_acceptance.mean() < 0.9:
        messages.append(f"mean acceptance {finite_acceptance.mean():.2f} < 0.9: the step size may bias the "
                        "estimate (Euler discretisation); try a smaller step size or adapt_step_size=True")
    dataset.attrs["warnings"] = "; ".join(messages)
    if warn and messages:
        warnings.warn("learning coefficient: " + "; ".join(messages), LearningCoefficientWarning,
                      stacklevel=3)
    return dataset


def _chains(count: int) -> str:
    return f"{count} chain" if count == 1 else f"{count} chains"


def _batch_means_variance(chains: np.ndarray, num_batches: int = 10) -> np.ndarray:
    """Per-chain variance of the mean estimate times the length (batch means; autocorrelation-aware)."""
    length = chains.shape[1] // num_batches * num_batches
    means = chains[:, :length].reshape(chains.shape[0], num_batches, -1).mean(axis=2)
    return means.var(axis=1, ddof=1) * (length // num_batches)
