"""Tests of the padded, masked multi-network chains (dlnlab.llc.padded; docs/llc.md, "How the
benchmark runs").

Properties checked, each against an independent computation:

1. Layout: a padded network's end-to-end map, loss and masked gradient equal the unpadded ones
   (float64, to rounding), recomputed here with NumPy; without the mask the gradient is not zero on
   the padding (identity layers beyond the depth), so the mask is needed.
2. Dynamics: masked entries never move over a run; a network alone and in a group of three (other
   depths and widths, so it is padded with identity layers) gives the same chains and estimate to
   rounding (its noise is tied to its own parameters, not to the group).
3. Law: on the one-layer quadratic case of ``test_llc_estimator.py`` (exact discrete stationary law
   of SGLD) the padded estimate matches the exact value within 5 standard errors and rejects the
   continuous-time value; with a wrong mask (noise and gradient on the padding) the estimate is
   rejected by the same law.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close_mc, assert_rejected_mc
from dlnlab import llc
from dlnlab.llc import padded
from dlnlab.llc.sampler import _unflatten, run_chains

D_IN, D_OUT = 3, 2
INVERSE_TEMPERATURE = 100.0
PLAIN = {"num_chains": 32, "num_burnin_steps": 200, "num_draws": 2000, "diagnostic_every": 100,
         "localisation": 1.0, "inverse_temperature": INVERSE_TEMPERATURE}


def quadratic_problem():
    """One layer ``W`` (2 x 3) at the teacher, population loss with ``S_x`` of eigenvalues 1, 0.5,
    0.25 (test_llc_estimator.py): ``(teacher, model, rates a_i of the posterior precision)``."""
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D_IN, D_IN)))
    covariance = rotation @ np.diag([1.0, 0.5, 0.25]) @ rotation.T
    teacher = np.random.default_rng(1).normal(size=(D_OUT, D_IN))
    model = llc.population_loss_model(teacher, covariance, num_samples=1000)
    rates = INVERSE_TEMPERATURE * np.linalg.eigvalsh(np.kron(np.eye(D_OUT), covariance)) + 1.0
    return teacher, model, rates


def discrete_stationary_value(step_size, rates) -> float:
    """``sum_i n beta h_i var_i / 2``, ``var_i = 1 / (a_i (1 - eps a_i / 4))`` (test_llc_estimator)."""
    h = (rates - 1.0) / INVERSE_TEMPERATURE
    return float(np.sum(INVERSE_TEMPERATURE * h / (rates * (1.0 - step_size * rates / 4.0)))) / 2.0


def deep_network(seed: int, widths):
    """A random network of ``widths`` and a random-teacher population loss (exact gradients)."""
    rng = np.random.default_rng(seed)
    weights = tuple(0.5 * rng.normal(size=(b, a)) for a, b in zip(widths[:-1], widths[1:], strict=True))
    teacher = rng.normal(size=(widths[-1], widths[0]))
    covariance = np.diag(rng.uniform(0.5, 1.5, widths[0]))
    return weights, llc.population_loss_model(teacher, covariance, num_samples=500)


def product(weights) -> np.ndarray:
    out = np.asarray(weights[0])
    for w in weights[1:]:
        out = np.asarray(w) @ out
    return out


# ----------------------------------------------------------------------------- 1. layout
def test_padded_widths_cover_every_network():
    """``D_l`` is the largest ``d_l`` over the networks, a shallower network's output width
    repeated to the largest depth; errors are one line."""
    assert padded.padded_widths([(3, 2), (4, 6, 5, 1)]) == (4, 6, 5, 2)
    assert padded.padded_widths([(7, 1, 9)]) == (7, 1, 9)
    for bad in ([], [(3,)]):
        with pytest.raises(ValueError, match="widths="):
            padded.padded_widths(bad)


@pytest.mark.parametrize("other", [(5, 4, 6, 3), (2, 7, 2)])
def test_padded_product_loss_and_masked_gradient_equal_the_unpadded_ones(other):
    """Network (3, 4, 2) padded with a deeper (identity layers) or a wider network: the end-to-end
    map is the network's in its top-left block and zero elsewhere, the loss with zero-padded
    moments is the network's, and the masked gradient, read at the network's own entries (through
    ``index``), is the network's gradient (all recomputed with NumPy). Without the mask the
    gradient on the padding is not zero when identity layers are present."""
    widths = (3, 4, 2)
    weights, model = deep_network(0, widths)
    sizes = padded.padded_widths([widths, other])
    w0, mask, index = padded.pad_weights(weights, sizes)
    shapes = padded.padded_shapes(sizes)
    layers = _unflatten(w0, shapes)
    end_to_end = np.array(jax.jit(lambda f: padded.padded_product(f, shapes))(w0))
    expected = product(weights)
    np.testing.assert_allclose(end_to_end[:widths[-1], :widths[0]], expected, rtol=1e-13, atol=1e-15)
    end_to_end[:widths[-1], :widths[0]] = 0.0
    assert np.all(end_to_end == 0.0)
    assert len(layers) == len(sizes) - 1

    moments = padded.pad_moments({"sxx": model.input_moment, "syx": model.cross_moment,
                                  "tyy": model.target_moment}, sizes[0], sizes[-1])
    sxx, syx, tyy = (np.asarray(model.input_moment), np.asarray(model.cross_moment),
                     float(model.target_moment))
    exact_loss = 0.5 * np.trace(expected @ sxx @ expected.T) - np.trace(expected @ syx.T) + 0.5 * tyy

    def padded_loss(flat):
        p = padded.padded_product(flat, shapes)
        return llc.loss_model.moment_loss(p, moments["sxx"], moments["syx"], moments["tyy"])

    assert float(padded_loss(w0)) == pytest.approx(exact_loss, rel=1e-13)
    gradient = np.asarray(jax.grad(padded_loss)(w0))
    own = np.asarray(mask) > 0
    # the network's own gradient by the chain rule in NumPy: dL/dW_l = A_l^T (W S_xx - S_yx) B_l^T
    residual = expected @ sxx - syx
    expected_gradient = []
    for l in range(len(weights)):
        left = product(weights[l + 1:]) if l + 1 < len(weights) else np.eye(widths[-1])
        right = product(weights[:l]) if l > 0 else np.eye(widths[0])
        expected_gradient.append((left.T @ residual @ right.T).ravel())
    expected_gradient = np.concatenate(expected_gradient)
    read = np.zeros_like(expected_gradient)
    read[np.asarray(index)[own]] = gradient[own]
    np.testing.assert_allclose(read, expected_gradient, rtol=1e-12, atol=1e-13)
    assert np.sum(own) == expected_gradient.size
    identity_layers = len(sizes) - len(widths)
    if identity_layers:   # the mask is needed: padding in the identity layers has a gradient
        assert np.abs(gradient[~own]).max() > 1e-3
    else:                 # padding inside a network's own layers gets no gradient anyway
        assert np.abs(gradient[~own]).max() == 0.0


# ----------------------------------------------------------------------------- 2. dynamics
SHORT = {"num_chains": 4, "num_burnin_steps": 300, "num_draws": 300, "diagnostic_every": 100,
         "step_size": 1e-3, "adapt_step_size": True}


def test_padding_never_moves_and_a_network_alone_equals_it_in_a_group():
    """Network (3, 4, 2) alone, and first in a group with a deeper and a wider network (so it is
    padded, with one identity layer): the padded entries of every network keep their initial value
    exactly over the run (0, or 1 on an identity diagonal), the own entries move, and the alone and
    grouped runs give the same traces, acceptances, adapted steps and estimate to rounding."""
    settings = llc.sampler_settings(**SHORT)
    networks = [(*deep_network(0, (3, 4, 2)), jax.random.key(1)),
                (*deep_network(1, (5, 4, 6, 3)), jax.random.key(2)),
                (*deep_network(2, (2, 7, 2)), jax.random.key(3))]
    group, shapes, _ = padded.prepare_group(networks, settings)
    assert shapes == padded.padded_shapes((5, 7, 6, 3))
    _, distances, _, _, positions = run_chains(group, settings, False, shapes)
    for n in range(len(networks)):
        own = np.asarray(group.mask[n]) > 0
        start = np.asarray(group.w0[n])
        assert np.all(positions[n][:, ~own] == start[~own]), f"network {n}: padding moved"
        assert np.all(positions[n][:, own] != start[own]), f"network {n}: own weights did not move"
        assert np.all(distances[n][:, 1:] > 0)
    # network 2, (2, 7, 2) on (5, 7, 6, 3): one identity layer, ones on its 2 output coordinates
    assert np.sum(start[~own] == 1.0) == 2 and np.sum(start[~own] != 0.0) == 2

    grouped = padded.estimate_learning_coefficients(networks, settings, warn=False)
    alone = llc.estimate_learning_coefficient(*networks[0][:2], networks[0][2], settings, warn=False)
    for name in ("loss_trace", "distance_trace", "acceptance", "step_size", "chain_learning_coefficient"):
        np.testing.assert_allclose(grouped[0][name].values, alone[name].values, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    assert float(grouped[0].learning_coefficient) == pytest.approx(float(alone.learning_coefficient),
                                                                   rel=1e-9)
    assert grouped[0].attrs == alone.attrs
    # each grouped network is its own: a different network's estimate differs
    assert abs(float(grouped[1].learning_coefficient) - float(alone.learning_coefficient)) > 1e-3


# ----------------------------------------------------------------------------- 3. law
def test_padded_quadratic_case_matches_the_exact_discrete_law_and_a_wrong_mask_fails():
    """The one-layer quadratic case padded with a deeper, wider network ((3, 2) laid out on
    (4, 5, 6): one identity layer): the estimate matches the exact discrete stationary value within
    5 SE and rejects the continuous-time value (as unpadded in test_llc_estimator.py). With a mask
    of ones (gradient and noise on the padding, so the identity layer moves) the estimate is
    rejected by the same exact law."""
    step = 0.01
    teacher, model, rates = quadratic_problem()
    settings = llc.sampler_settings(step_size=step, **PLAIN)
    other = deep_network(5, (4, 5, 6))   # padded widths (4, 5, 6)
    networks = [((jnp.asarray(teacher),), model, jax.random.key(11)), (*other, jax.random.key(12))]
    first = padded.estimate_learning_coefficients(networks, settings, warn=False)[0]
    chains = first.chain_learning_coefficient.values
    se = chains.std(ddof=1) / math.sqrt(chains.size)
    assert math.isfinite(se) and se > 0
    exact = discrete_stationary_value(step, rates)
    assert_close_mc(float(first.learning_coefficient), exact, se, what="padded estimate vs exact law")
    h = (rates - 1.0) / INVERSE_TEMPERATURE
    continuous = float(np.sum(INVERSE_TEMPERATURE * h / rates)) / 2.0
    assert_rejected_mc(float(first.learning_coefficient), continuous, se, what="continuous-time value")

    group, shapes, _ = padded.prepare_group(networks, settings)
    wrong = group._replace(mask=jnp.ones_like(group.mask))
    fits, *_ = run_chains(wrong, settings, False, shapes)
    initial = float(first.attrs["initial_loss"])   # L(w0): the padding starts as the network
    per_chain = INVERSE_TEMPERATURE * (fits[0][:, settings.num_burnin_steps:].mean(axis=1) - initial)
    # the identity layer's entries are stiff (curvature ~ n beta |M|^2): at this step its chains blow
    # up (NaN), or if finite they miss the law; either way the check that the correct mask passes fails
    finite = bool(np.all(np.isfinite(per_chain)))
    wrong_se = per_chain.std(ddof=1) / math.sqrt(per_chain.size) if finite else math.nan
    passes = finite and abs(per_chain.mean() - exact) <= 5 * max(se, wrong_se)
    assert not passes, "a mask with noise on the padding reproduces the exact law"


def test_group_errors_are_one_line():
    """No networks, a mixed group (exact and minibatch gradients), a bad entry: one-line errors."""
    settings = llc.sampler_settings(**SHORT)
    weights, model = deep_network(0, (3, 4, 2))
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(40, 3))
    stochastic = llc.empirical_loss_model(inputs, inputs @ rng.normal(size=(2, 3)).T, batch_size=10,
                                          key=jax.random.key(0))
    cases = [([], "networks="),
             ([(weights, model, jax.random.key(0)), (weights, stochastic, jax.random.key(1))], "loss_model="),
             ([(weights, model)], "networks[0]="),
             ([(weights, "model", jax.random.key(0))], "loss_model=")]
    for networks, name in cases:
        with pytest.raises(ValueError) as info:
            padded.estimate_learning_coefficients(networks, settings)
        assert "\n" not in str(info.value) and name in str(info.value), str(info.value)
