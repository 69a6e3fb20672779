"""Many networks in one compiled program: the learning-coefficient chains of a group of deep linear
networks, padded to one shape and masked (docs/llc.md, "How the benchmark runs").

A group of networks of widths ``(d_0, ..., d_L)`` (depths may differ) is laid out on padded widths
``(D_0, ..., D_Lmax)``: each network's width vector is extended by repeating its output width up to
depth ``Lmax`` and ``D_l`` is the largest extended ``d_l`` of the group. Network layer ``l <= L``
sits in the top-left ``(d_l, d_{l-1})`` block of padded layer ``l`` (zeros elsewhere); a layer
``l > L`` is the identity on the network's ``d_L`` output coordinates (ones on the first ``d_L``
diagonal entries, zeros elsewhere). The padded end-to-end map is then the network's map in its
top-left ``(d_L, d_0)`` block and zero elsewhere; with the moments padded by zeros
(``S_xx``: ``(D_0, D_0)``, ``S_yx``: ``(D_Lmax, D_0)``, every minibatch's likewise, ``E||y||^2``
unchanged) the padded loss equals the network's loss at every point whose padded entries keep
their values.

A 0/1 mask over the flat padded parameters marks the network's own weights. The chain runner
(:func:`dlnlab.llc.sampler.run_chains`, the one implementation of the chain math; a single network is a
group of one with a mask of ones) multiplies the log-posterior gradient by the mask before any use
and gives masked entries no noise, so they never move: the padded chain is the network's chain
with inert extra coordinates, and its estimate has the same law (``tests/test_llc_padded.py``).

All networks of a group share the sampler settings, the dtype, the kind of loss model (exact or
minibatch gradients) and, with minibatches, the number of minibatches; every network keeps its own
chain keys, moments, ``n beta`` and ``w0``, so a network's result does not depend on which other
networks share its group (to floating-point rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import xarray as xr

from .. import _validation as v
from ..core.products import end_to_end
from .loss_model import LossModel
from .sampler import (
    ChainGroup,
    SamplerSettings,
    _dataset,
    _prepare,
    _Prepared,
    _stack,
    _unflatten,
    run_chains,
)


def padded_widths(widths: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """``(D_0, ..., D_Lmax)`` for networks of the given widths (module docstring): the elementwise
    maximum of the width vectors, each extended by repeating its last (output) width to ``Lmax``.

    Raises:
        ValueError: no networks, or a width vector with fewer than two widths.
    """
    if not widths:
        v.fail("widths", widths, "must hold at least one network's widths")
    for one in widths:
        if len(one) < 2:
            v.fail("widths", tuple(one), "must have at least two widths (d_in, d_out)")
    depth = max(len(one) - 1 for one in widths)
    extended = [tuple(one) + (one[-1],) * (depth + 1 - len(one)) for one in widths]
    return tuple(int(max(column)) for column in zip(*extended, strict=True))


def padded_shapes(padded: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Layer shapes ``(D_l, D_{l-1})`` of the padded widths."""
    return tuple((int(padded[l + 1]), int(padded[l])) for l in range(len(padded) - 1))


def padded_product(flat, shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """The end-to-end map ``W_Lmax ... W_1`` of flat padded parameters, shape ``(D_Lmax, D_0)``."""
    return end_to_end(_unflatten(flat, tuple(shapes)))


def pad_weights(weights, padded: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w0, mask, index)``: the flat padded parameters (layers row-major, in order), the 0/1 mask
    of the network's own weights (module docstring), and for each padded entry its position among the
    network's own flat parameters (0 on padding); each of shape ``(sum_l D_l D_{l-1},)``. NumPy (no
    compilation per shape)."""
    layers = [np.asarray(w) for w in weights]
    dtype = np.result_type(*layers)
    d_out = int(layers[-1].shape[0])
    flat, mask, index = [], [], []
    offset = 0
    for l, (rows, cols) in enumerate(padded_shapes(padded)):
        block = np.zeros((rows, cols), dtype)
        own = np.zeros((rows, cols), dtype)
        position = np.zeros((rows, cols), dtype=np.int32)
        if l < len(layers):
            w = layers[l]
            block[: w.shape[0], : w.shape[1]] = w
            own[: w.shape[0], : w.shape[1]] = 1.0
            position[: w.shape[0], : w.shape[1]] = offset + np.arange(w.size).reshape(w.shape)
            offset += w.size
        else:   # beyond the network's depth: the identity on its output coordinates, never moved
            block[np.arange(d_out), np.arange(d_out)] = 1.0
        flat.append(block.ravel())
        mask.append(own.ravel())
        index.append(position.ravel())
    return np.concatenate(flat), np.concatenate(mask), np.concatenate(index)


def pad_moments(model: dict, d_in: int, d_out: int) -> dict:
    """The moments of :func:`dlnlab.llc.sampler._prepare` padded with zeros to ``S_xx``: ``(d_in,
    d_in)``, ``S_yx``: ``(d_out, d_in)`` (and each minibatch's); ``E||y||^2`` unchanged. NumPy."""
    def pad(array, rows, cols):
        array = np.asarray(array)
        widths = [(0, 0)] * (array.ndim - 2) + [(0, rows - array.shape[-2]), (0, cols - array.shape[-1])]
        return np.pad(array, widths)

    out = {"sxx": pad(model["sxx"], d_in, d_in), "syx": pad(model["syx"], d_out, d_in), "tyy": model["tyy"]}
    if "batch_sxx" in model:
        out["batch_sxx"] = pad(model["batch_sxx"], d_in, d_in)
        out["batch_syx"] = pad(model["batch_syx"], d_out, d_in)
    return out


def prepare_group(networks: Sequence[tuple], settings: SamplerSettings
                  ) -> tuple[ChainGroup, tuple[tuple[int, int], ...], list[_Prepared]]:
    """Validate ``networks`` (each ``(weights, loss_model, key)``), pad and stack them:
    ``(group, padded layer shapes, the per-network preparations)``.

    Raises:
        ValueError: no networks; a bad network (as :func:`estimate_learning_coefficient`); networks
            of different dtypes, loss-model kinds or numbers of minibatches.
    """
    if not isinstance(settings, SamplerSettings):
        v.fail("settings", type(settings).__name__, "must be a dlnlab.llc.SamplerSettings")
    if not networks:
        v.fail("networks", len(networks), "must hold at least one (weights, loss_model, key)")
    prepared = []
    for index, network in enumerate(networks):
        if not isinstance(network, tuple | list) or len(network) != 3:
            v.fail(f"networks[{index}]", type(network).__name__, "must be (weights, loss_model, key)")
        weights, loss_model, key = network
        if not isinstance(loss_model, LossModel):
            v.fail(f"networks[{index}] loss_model", type(loss_model).__name__,
                   "must be a dlnlab.llc.LossModel (population_loss_model, empirical_loss_model)")
        prepared.append(_prepare(weights, loss_model, key, settings))
    first_model = networks[0][1]
    for index, (one, (_, loss_model, _)) in enumerate(zip(prepared, networks, strict=True)):
        if one.w0.dtype != prepared[0].w0.dtype:
            v.fail(f"networks[{index}] dtype", str(one.w0.dtype), f"must match the group's "
                                                                   f"{prepared[0].w0.dtype}")
        if (loss_model.stochastic != first_model.stochastic
                or loss_model.num_batches != first_model.num_batches):
            v.fail(f"networks[{index}] loss_model", f"{loss_model.num_batches} minibatches",
                   f"must match the group's first network ({first_model.num_batches} minibatches)")
    padded = padded_widths([one.widths for one in prepared])
    laid_out = []
    for one in prepared:
        if padded_shapes(padded) == one.shapes:
            laid_out.append(one)
            continue
        layers, offset = [], 0
        for rows, cols in one.shapes:
            layers.append(one.w0[offset: offset + rows * cols].reshape(rows, cols))
            offset += rows * cols
        w0, mask, index = pad_weights(layers, padded)
        laid_out.append(one._replace(w0=w0, mask=mask, index=index,
                                     model=pad_moments(one.model, padded[0], padded[-1])))
    return _stack(laid_out), padded_shapes(padded), prepared


def estimate_learning_coefficients(networks: Sequence[tuple], settings: SamplerSettings | None = None, *,
                                   warn: bool = True,
                                   progress: Callable[[int, int], None] | None = None) -> list[xr.Dataset]:
    """:func:`dlnlab.llc.estimate_learning_coefficient` for several networks at once: padded to one
    shape, masked, and advanced by one compiled program (vmap over networks and chains; module
    docstring).

    Args:
        networks: a sequence of ``(weights, loss_model, key)``, each as the single-network estimate
            takes it; all share ``settings``, the dtype and the loss model's kind (exact or
            minibatch gradients, the same number of minibatches).
        settings: :class:`SamplerSettings` (default: the published protocol).
        warn: emit :class:`dlnlab.llc.LearningCoefficientWarning` for unhealthy chains.
        progress: ``progress(steps done, total steps)`` about 20 times during the run.

    Returns:
        One dataset per network, in order, each exactly as
        :func:`~dlnlab.llc.estimate_learning_coefficient` returns it for that network alone (the
        same law; the same numbers to floating-point rounding).

    Raises:
        ValueError: see :func:`prepare_group`.
    """
    settings = settings if settings is not None else SamplerSettings()
    group, shapes, prepared = prepare_group(networks, settings)
    fits, distances, accept, final_step, _ = run_chains(group, settings, networks[0][1].stochastic, shapes,
                                                        progress=progress)
    return [_dataset(fits[i], distances[i], accept[i], final_step[i], float(fits[i, 0, 0]),
                     one.inverse_temperature, settings, networks[i][1], one.widths, warn)
            for i, one in enumerate(prepared)]


def group_cost(widths: Sequence[Sequence[int]], settings: SamplerSettings, num_batches: int = 0,
               dtype=np.float64) -> dict:
    """Rough size of one group's program: padded widths, floating-point operations of the whole run
    (``flops``; per chain step: the end-to-end product, twice that for its vector-Jacobian product,
    and ``W S_xx``), and device memory in bytes (``memory``: moments, carries, one call's traces)."""
    padded = padded_widths(widths)
    networks, chains = len(widths), settings.num_chains
    d_in, d_out = padded[0], padded[-1]
    forward = sum(2 * padded[l + 1] * padded[l] * d_in for l in range(len(padded) - 1))
    per_step = 3 * forward + 4 * d_out * d_in * d_in
    steps = settings.num_burnin_steps + settings.num_draws
    checks = steps // settings.diagnostic_every
    flops = networks * chains * (per_step * steps + 3 * per_step * checks)
    parameters = sum(a * b for a, b in zip(padded[:-1], padded[1:], strict=True))
    item = np.dtype(dtype).itemsize
    moments = networks * (1 + num_batches) * (d_in * d_in + d_out * d_in) * item
    carries = 3 * networks * chains * parameters * item
    from .sampler import _blocks_per_call
    per_call = _blocks_per_call(checks) * settings.diagnostic_every
    traces = 2 * networks * chains * per_call * item
    return {"padded_widths": padded, "flops": float(flops), "memory": int(moments + carries + traces),
            "host_memory": int(2 * networks * chains * steps * 8)}
