"""Boltzmann sampling of normal-form residuals by stochastic-gradient Langevin dynamics.

Target (docs/saddles.md, experiment notes §2):
``p_beta(Z) ∝ exp(-beta E(Z)) pi(Z)`` with the constraint energy
``E`` (:func:`dlnlab.saddles.constraint_energy`) and a prior

    -log pi(Z) = (alpha / 2) sum_l ||Z_l||_F^2 + sum_l kappa / (8 rho^2) (||Z_l||_F^2 - rho^2)^2

(Gaussian / weight decay ``alpha``; the norm-targeting term, ``~ (kappa/2)(||Z_l|| - rho)^2`` near
``||Z_l|| = rho``, makes ``Z_l = 0`` a maximum of the prior so the chains stay away from the trivial
solutions). With the temperature ``T = 1 / beta`` one step is the blackjax SGLD kernel
(``blackjax.sgld``, Welling & Teh 2011) with log-density ``-E + T log pi`` at temperature ``T``::

    Z <- Z - eps_t grad( E(Z) - T log pi(Z) ) + sqrt(2 eps_t T) xi,      xi ~ N(0, I),

whose stationary law (for ``eps -> 0``) is exactly ``p_beta``; the drift does not grow with ``beta``,
so the stable step size depends on ``E`` only. The gradient of ``E`` is exact here (the population
``sigma``), so the kernel is the unadjusted Langevin algorithm. Step schedule
``eps_t = eps_0 (1 + t / t_0)^(-gamma)`` (``gamma = 0``: constant). An optional quench of
``quench_steps`` steps at ``T = 0`` (plain gradient descent on ``E``) follows, to land on ``E ~ 0``.

Chains are vectorised with ``vmap``; steps run in one ``lax.scan``. Chain ``c`` uses the keys
``fold_in(key, c)`` whatever the number of chains.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from .normal_form import NormalForm, Residuals, constraint_energy, random_residuals, residual_shapes


class Prior(NamedTuple):
    """Prior on the residuals: weight decay ``alpha`` and norm targeting (``rho``, ``kappa``).

    ``Prior()`` is the standard Gaussian (``alpha = 1``); ``norm_target = 0`` turns the norm term
    off. ``norm_target`` may be a per-layer array ``(L,)``. Numeric leaves: vmappable.
    """

    weight_decay: float | Array = 1.0
    norm_target: float | Array = 0.0
    norm_strength: float | Array = 0.0


def negative_log_prior(residuals: Residuals, prior: Prior) -> Array:
    """``-log pi(Z) = (alpha/2) sum ||Z_l||^2 + sum_l kappa/(8 rho_l^2) (||Z_l||^2 - rho_l^2)^2``."""
    squares = jnp.stack([jnp.sum(z * z) for z in residuals])
    rho = jnp.broadcast_to(jnp.asarray(prior.norm_target, squares.dtype), squares.shape)
    on = rho > 0
    rho2 = jnp.where(on, rho * rho, 1.0)
    target = jnp.where(on, prior.norm_strength / (8.0 * rho2) * (squares - rho2) ** 2, 0.0)
    return 0.5 * prior.weight_decay * jnp.sum(squares) + jnp.sum(target)


class SamplerState(NamedTuple):
    """State of one chain: the residuals ``position`` and the step counter."""

    position: Residuals
    step: Array


class SamplerInfo(NamedTuple):
    """Per-step diagnostics (never fed back): energy and ``-log pi`` after the step, the step
    size and temperature used."""

    energy: Array
    negative_log_prior: Array
    step_size: Array
    temperature: Array


def step_size_schedule(step, step_size, step_decay=0.0, decay_offset=1000.0) -> Array:
    """``eps_t = eps_0 (1 + t / t_0)^(-gamma)`` (Welling & Teh 2011 use ``gamma`` in (0.5, 1])."""
    return step_size * (1.0 + step / decay_offset) ** (-step_decay)


def sgld_step(key, state: SamplerState, sigma: Array, prior: Prior, step_size,
              temperature) -> tuple[SamplerState, SamplerInfo]:
    """One SGLD step (module docstring) with the blackjax kernel; ``temperature = 1 / beta``.

    ``(key, state, ...) -> (state, info)``: the step contract of the project.
    """
    def grad_log_density(position, _minibatch):
        return jax.grad(lambda z: -constraint_energy(z, sigma)
                        - temperature * negative_log_prior(z, prior))(position)

    # Imported here: importing blackjax starts JAX's backend, after which the XLA flags that the
    # CLI sets at process start would be ignored.
    import blackjax

    kernel = blackjax.sgld(grad_log_density)
    position = kernel.step(key, state.position, None, step_size, temperature)
    # blackjax's noise helper promotes float32 positions to float64 when x64 is on: keep the dtype
    position = jax.tree.map(lambda new, old: new.astype(old.dtype), position, state.position)
    info = SamplerInfo(constraint_energy(position, sigma), negative_log_prior(position, prior),
                       jnp.asarray(step_size), jnp.asarray(temperature))
    return SamplerState(position, state.step + 1), info


def sample_residuals(key, form: NormalForm, widths: Sequence[int], *, num_chains: int,
                     num_steps: int, temperature: float, step_size: float, prior: Prior | None = None,
                     step_decay: float = 0.0, decay_offset: float | None = None,
                     quench_steps: int = 0, init_scale: float = 1.0,
                     init: Residuals | None = None) -> tuple[Residuals, SamplerInfo]:
    """Run ``num_chains`` SGLD chains for ``num_steps`` steps (+ ``quench_steps`` at ``T = 0``).

    ``init``: residuals with a leading chain axis, or ``None`` for Gaussian residuals with entries
    ``N(0, init_scale^2 / fan_in)`` (keys ``fold_in(fold_in(key, 0), c)``). Returns the final
    residuals (leading axis ``num_chains``) and :class:`SamplerInfo` with arrays of shape
    ``(num_steps + quench_steps, num_chains)``. A chain that diverges shows non-finite energy.
    """
    prior = Prior() if prior is None else prior
    widths = v.widths_tuple("widths", widths)
    shapes = residual_shapes(widths, form.rank)
    if widths[0] != form.d_in or widths[-1] != form.d_out:
        v.fail("widths", widths, f"must start at d_in={form.d_in} and end at d_out={form.d_out}")
    num_chains = v.positive_int("num_chains", num_chains)
    num_steps = v.positive_int("num_steps", num_steps)
    if isinstance(quench_steps, bool) or not isinstance(quench_steps, int) or quench_steps < 0:
        v.fail("quench_steps", quench_steps, "must be an integer >= 0")
    v.finite_scalar("temperature", temperature, minimum=0.0)
    v.finite_scalar("step_size", step_size, minimum=0.0, strict=True)
    v.finite_scalar("step_decay", step_decay, minimum=0.0)
    v.finite_scalar("init_scale", init_scale, minimum=0.0)
    for name, value in zip(prior._fields, prior, strict=True):
        v.finite_scalar(f"prior.{name}", value, minimum=0.0)
    if decay_offset is None:
        decay_offset = max(num_steps / 10.0, 1.0)
    v.finite_scalar("decay_offset", decay_offset, minimum=0.0, strict=True)
    dtype = form.sigma.dtype
    if init is not None:
        init = tuple(jnp.asarray(z, dtype) for z in init)
        if len(init) != len(shapes):
            v.fail("init", len(init), f"must hold {len(shapes)} residual blocks")
        for index, (z, shape) in enumerate(zip(init, shapes, strict=True)):
            if z.shape != (num_chains, *shape):
                v.fail(f"init[{index}].shape", z.shape, f"must be ({num_chains}, {shape[0]}, {shape[1]})")
    settings = tuple(jnp.asarray(x, dtype) for x in (temperature, step_size, step_decay, decay_offset,
                                                     init_scale))
    prior = Prior(*(jnp.asarray(x, dtype) for x in prior))
    return _run_chains(key, form, prior, settings, init, num_chains=num_chains, num_steps=num_steps,
                       quench_steps=quench_steps, widths=widths)


@functools.partial(jax.jit, static_argnames=("num_chains", "num_steps", "quench_steps", "widths"))
def _run_chains(key, form, prior, settings, init, *, num_chains, num_steps, quench_steps, widths):
    """Compiled body of :func:`sample_residuals` (one compilation per shape and step count)."""
    temperature, step_size, step_decay, decay_offset, init_scale = settings
    dtype = form.sigma.dtype
    k_init, k_run = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    chain_ids = jnp.arange(num_chains)
    if init is None:
        init = jax.vmap(lambda c: random_residuals(jax.random.fold_in(k_init, c), widths, form.rank,
                                                   1.0, dtype))(chain_ids)
        init = tuple(z * init_scale for z in init)
    total = num_steps + quench_steps
    steps = jnp.arange(total)
    sizes = jnp.where(steps < num_steps,
                      step_size_schedule(steps, step_size, step_decay, decay_offset),
                      step_size_schedule(num_steps, step_size, step_decay, decay_offset)).astype(dtype)
    temps = jnp.where(steps < num_steps, temperature, 0.0).astype(dtype)

    def run_chain(chain, position):
        chain_key = jax.random.fold_in(k_run, chain)

        def body(state, inputs):
            t, size, temp = inputs
            return sgld_step(jax.random.fold_in(chain_key, t), state, form.sigma, prior, size, temp)

        state = SamplerState(position, jnp.zeros((), jnp.int32))
        state, info = jax.lax.scan(body, state, (steps, sizes, temps))
        return state.position, info

    positions, info = jax.vmap(run_chain)(chain_ids, init)
    info = SamplerInfo(*(jnp.swapaxes(x, 0, 1) for x in info))
    return positions, info
