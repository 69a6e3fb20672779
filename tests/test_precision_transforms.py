"""Precision and JAX transformations across the public API.

For a representative set of public functions, in every regime that applies (online whitened,
online with correlated inputs and anisotropic label noise, offline with a data set) and at
depths 1, 2, 3 with non-square layers:

(i)   float32 inputs give float32 outputs, float64 inputs float64 outputs;
(ii)  float32 results agree with float64 results on the same (float32-representable) inputs to a
      tolerance derived from float32 rounding (see ``F32_RTOL``);
(iii) ``jax.jit`` agrees with eager execution (float64, ``<= 1e-12`` relative);
(iv)  ``jax.vmap`` over a leading axis of 3 stacked weight sets (amplitudes for the theory
      functions) equals a Python loop;
(v)   a jitted function called again with new numbers of the same shapes does not retrace;
(vi)  online and offline tasks both run under ``jit`` (the regimes of (iii)/(v)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab
from dlnlab import theory

D_IN, D_OUT = 5, 4
NUM_MODES = min(D_IN, D_OUT)
WIDTHS = {1: (D_IN, D_OUT), 2: (D_IN, 6, D_OUT), 3: (D_IN, 6, 3, D_OUT)}
DEPTHS = tuple(WIDTHS)
NUM_DATA = 7
SPECTRUM = (1.0, 0.6, 0.3)           # rank 3 of r = 4 modes: one zero singular value
LABEL_NOISE = 0.5
CURVE_STEPS = 64                     # explicit RK4 steps for gradient_flow_curve under jit
VMAP_BATCH = 3

# (ii) Tolerance of float32 against float64 on identical inputs, relative to the output's scale
# (max |entry| of the float64 result, per output array). Unit roundoff u = 2^-24 ~ 6.0e-8.
# Every function here is a short chain of matrix products and elementwise maps: at most ~L + 4
# dependent products with inner dimensions <= 7 (products, D = W - M, R, the layer maps, a
# covariance or Kronecker contraction), each adding at most ~(inner dim) u relative to the size
# of its terms. The inputs are O(1) (LeCun-scale weights, teacher norm ~1, sigma = 0.5), so no
# step cancels much, and the accumulated error is bounded by roughly 10 x 7 x u ~ 4e-6; we allow
# 1e-5 (~170 ulps). Random summation orders make the typical error far smaller (~1e-7).
F32_RTOL = 1e-5
# gradient_flow_curve integrates CURVE_STEPS RK4 steps: rounding adds up over the steps, a few u
# per step in the worst case, plus exp/log/sigmoid (a few ulps each): 64 x ~5 u ~ 2e-5.
F32_RTOL_CURVE = 3e-5
# (iii)/(iv) float64 transformed against untransformed: XLA may reorder sums and fuse, changing
# results at the level of a few ulps of float64 (1.1e-16 each) per operation.
F64_RTOL = 1e-12


# ---------------------------------------------------------------------------- inputs
def make_task(seed: int, regime: str, dtype) -> dlnlab.Task:
    """``online``/``offline``: ``Task.from_spectrum`` (whitened); ``colored``: ``Task(teacher,
    ...)`` with an input covariance and anisotropic label noise (online)."""
    key = jax.random.key(seed)
    if regime == "colored":
        rng = np.random.default_rng(seed)
        teacher = rng.standard_normal((D_OUT, D_IN)) / np.sqrt(D_IN)
        a = rng.standard_normal((D_IN, D_IN))
        b = rng.standard_normal((D_OUT, D_OUT))
        return dlnlab.Task(teacher, label_noise=0.25 * (b @ b.T / D_OUT + 0.5 * np.eye(D_OUT)),
                           input_covariance=a @ a.T / D_IN + 0.5 * np.eye(D_IN), dtype=dtype)
    task = dlnlab.Task.from_spectrum(key, D_IN, D_OUT, SPECTRUM, label_noise=LABEL_NOISE,
                                     dtype=dtype)
    if regime == "offline":
        task = task.with_data(jax.random.fold_in(key, 1), NUM_DATA)
    return task


def make_args(seed: int, regime: str, depth: int, dtype) -> dict:
    """Every input any case needs, in ``dtype``; different ``seed``s give different numbers."""
    key = jax.random.key(1000 + seed)
    k_w, k_noise, k_normals, k_x, k_batch, k_amp, k_init, k_lr = jax.random.split(key, 8)
    task = make_task(seed, regime, dtype)
    inputs, targets = dlnlab.sample_batch(k_batch, task.online_task(), NUM_DATA)
    spectrum = jnp.asarray(SPECTRUM + (0.0,) * (NUM_MODES - len(SPECTRUM)), dtype)
    curve_spectrum = jnp.asarray(SPECTRUM, dtype)
    return {
        "task": task,
        "weights": dlnlab.init_gaussian(k_w, WIDTHS[depth], 1.0, dtype=dtype),
        "key": k_noise,
        "normals": dlnlab.draw_noise_normals(k_normals, task),
        "x": jax.random.normal(k_x, (D_OUT, D_IN), dtype),
        "inputs": inputs,
        "targets": targets,
        # a Python float: weakly typed, so it neither promotes float32 nor retraces under jit
        "lr": float(jax.random.uniform(k_lr, (), minval=0.01, maxval=0.1)),
        "amplitudes": jax.random.uniform(k_amp, (NUM_MODES,), dtype, -0.4, 1.2),
        "spectrum": spectrum,
        "curve_spectrum": curve_spectrum,
        "initial": curve_spectrum * jax.random.uniform(k_init, (len(SPECTRUM),), dtype, 0.02, 0.5),
        "times": jnp.linspace(0.0, 6.0, 7, dtype=dtype),
    }


def upcast(tree):
    """The same numbers in float64 (PRNG keys and Python floats unchanged)."""
    def cast(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(jnp.float64)
        return x
    return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable                     # fn(args, depth) -> pytree of arrays
    regimes: tuple[str, ...] = ("online", "colored", "offline")
    batched: str = "weights"         # the argument stacked for (iv)
    f32_rtol: float = F32_RTOL


NO_TASK = ("online",)                # functions without a task: the regime is irrelevant

CASES = [
    Case("end_to_end", lambda a, L: dlnlab.end_to_end(a["weights"]), NO_TASK),
    Case("partial_products", lambda a, L: dlnlab.partial_products(a["weights"]), NO_TASK),
    Case("per_sample_gradients",
         lambda a, L: dlnlab.per_sample_gradients(a["weights"], a["inputs"], a["targets"]),
         NO_TASK),
    Case("ntk_operator", lambda a, L: dlnlab.ntk_operator(a["weights"], a["x"]), NO_TASK),
    Case("population_loss", lambda a, L: dlnlab.population_loss(a["weights"], a["task"])),
    Case("gradient", lambda a, L: dlnlab.gradient(a["weights"], a["task"])),
    Case("noise_covariance", lambda a, L: dlnlab.noise_covariance(a["weights"], a["task"])),
    Case("sample_noise", lambda a, L: dlnlab.sample_noise(a["key"], a["weights"], a["task"], 2)),
    Case("noise_from_normals",
         lambda a, L: dlnlab.noise_from_normals(a["weights"], a["task"], a["normals"])),
    Case("mode_amplitudes", lambda a, L: dlnlab.mode_amplitudes(a["weights"], a["task"])),
    Case("cross_mode_amplitudes",
         lambda a, L: dlnlab.cross_mode_amplitudes(a["weights"], a["task"])),
    Case("modewise_diffusion",
         lambda a, L: dlnlab.modewise_diffusion(a["weights"], a["task"], a["lr"])),
    Case("mode_covariation",
         lambda a, L: dlnlab.mode_covariation(a["weights"], a["task"], a["lr"])),
    Case("ito_drift", lambda a, L: dlnlab.ito_drift(a["weights"], a["task"], a["lr"])),
    Case("gradient_flow_mode_drift",
         lambda a, L: dlnlab.gradient_flow_mode_drift(a["weights"], a["task"])),
    Case("theory.reduced_drift",
         lambda a, L: theory.reduced_drift(a["amplitudes"], a["spectrum"], L, a["lr"], 1,
                                           LABEL_NOISE),
         NO_TASK, batched="amplitudes"),
    Case("theory.reduced_diffusion",
         lambda a, L: theory.reduced_diffusion(a["amplitudes"], a["spectrum"], L, a["lr"], 1,
                                               LABEL_NOISE),
         NO_TASK, batched="amplitudes"),
    Case("theory.gradient_flow_curve",
         lambda a, L: theory.gradient_flow_curve(a["times"], a["curve_spectrum"], L, a["initial"],
                                                 num_steps=CURVE_STEPS),
         NO_TASK, batched="initial", f32_rtol=F32_RTOL_CURVE),
]

PARAMS = [pytest.param(case, regime, depth, id=f"{case.name}-{regime}-L{depth}")
          for case in CASES for regime in case.regimes for depth in DEPTHS]


def leaves(tree) -> list[np.ndarray]:
    out = jax.tree.leaves(tree)
    assert out, "no output"
    return out


def assert_close(actual, expected, rtol: float, what: str) -> None:
    """Per output array: ``max |actual - expected| <= rtol * max |expected|``."""
    got, want = leaves(actual), leaves(expected)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, f"{what}[{i}]: shape {g.shape} != {w.shape}"
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(w)), f"{what}[{i}]: non-finite"
        scale = max(np.abs(w).max(initial=0.0), np.finfo(np.float64).tiny)
        err = np.abs(g - w).max(initial=0.0) / scale
        assert err <= rtol, f"{what}[{i}]: relative error {err:.2e} > {rtol:.0e}"


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("case", "regime", "depth"), PARAMS)
def test_output_dtype_follows_input_dtype(case, regime, depth):
    """(i) Inputs built in float32 (``Task(dtype=)``, ``init_gaussian(dtype=)``) give float32."""
    for dtype in (jnp.float32, jnp.float64):
        out = case.fn(make_args(1, regime, depth, dtype), depth)
        dtypes = [x.dtype for x in leaves(out)]
        assert all(dt == jnp.dtype(dtype) for dt in dtypes), (
            f"{case.name}: {jnp.dtype(dtype).name} inputs gave {dtypes}")


@pytest.mark.parametrize(("case", "regime", "depth"), PARAMS)
def test_float32_agrees_with_float64(case, regime, depth):
    """(ii) The same float32 numbers computed in float64: differences are rounding-sized."""
    args32 = make_args(1, regime, depth, jnp.float32)
    out32 = case.fn(args32, depth)
    out64 = case.fn(upcast(args32), depth)
    assert all(x.dtype == jnp.float64 for x in leaves(out64))
    assert_close(out32, out64, case.f32_rtol, f"{case.name} float32 vs float64")


def test_sample_noise_is_noise_from_normals_of_its_draws():
    """(ii) for ``sample_noise``'s own draws: it maps ``draw_noise_normals(key, task, n)`` (the
    documented normals of ``noise_from_normals``), so float32 ``sample_noise`` is compared with
    the float64 map of the same float32 normals."""
    for regime in ("online", "colored", "offline"):
        args = make_args(1, regime, 3, jnp.float32)
        samples = dlnlab.sample_noise(args["key"], args["weights"], args["task"], 2)
        normals = upcast(dlnlab.draw_noise_normals(args["key"], args["task"], 2))
        w64, task64 = upcast(args["weights"]), upcast(args["task"])
        for i in range(2):
            want = dlnlab.noise_from_normals(w64, task64, tuple(z[i] for z in normals))
            assert_close(tuple(s[i] for s in samples), want, F32_RTOL,
                         f"sample_noise[{i}] ({regime})")


@pytest.mark.parametrize(("case", "regime", "depth"), PARAMS)
def test_jit_matches_eager_and_does_not_retrace(case, regime, depth):
    """(iii) jit == eager in float64; (v) new numbers, same shapes: no retrace; (vi) every
    regime, offline included, under jit."""
    traces = 0

    def traced(args):
        nonlocal traces
        traces += 1                  # Python side effect: runs only while tracing
        return case.fn(args, depth)

    jitted = jax.jit(traced)
    first = make_args(1, regime, depth, jnp.float64)
    second = make_args(2, regime, depth, jnp.float64)
    out_first = jitted(first)
    assert all(x.dtype == jnp.float64 for x in leaves(out_first))
    assert_close(out_first, case.fn(first, depth), F64_RTOL, f"{case.name} jit vs eager")
    out_second = jitted(second)
    assert traces == 1, f"{case.name}: retraced for new numbers of the same shapes"
    eager_second = case.fn(second, depth)
    assert_close(out_second, eager_second, F64_RTOL, f"{case.name} jit vs eager (2nd call)")
    # the second call used the new numbers (not a stale result)
    assert any(not np.allclose(a, b) for a, b in
               zip(leaves(out_first), leaves(eager_second), strict=True)), case.name


@pytest.mark.parametrize(("case", "regime", "depth"), PARAMS)
def test_vmap_matches_python_loop(case, regime, depth):
    """(iv) ``jax.vmap`` over 3 stacked weight sets (amplitudes for theory) == a loop."""
    base = make_args(1, regime, depth, jnp.float64)
    items = [make_args(seed, regime, depth, jnp.float64)[case.batched]
             for seed in range(1, 1 + VMAP_BATCH)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *items)

    def call(item):
        return case.fn({**base, case.batched: item}, depth)

    batched = jax.vmap(call)(stacked)
    for i, item in enumerate(items):
        assert_close(jax.tree.map(lambda x, i=i: x[i], batched), call(item), F64_RTOL,
                     f"{case.name} vmap[{i}] vs loop")
