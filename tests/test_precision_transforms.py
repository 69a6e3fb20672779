"""Precision and JAX transformations across the public API.

For a representative set of public functions (``CASES``), with non-square layers at depths 1-3
and in every regime that applies (online whitened, online with correlated inputs and anisotropic
label noise, offline with a data set):

(i)   float32 inputs give float32 outputs, float64 inputs float64 outputs;
(ii)  float32 results agree with float64 results on the same (float32-representable) inputs to a
      tolerance derived from float32 rounding (see ``F32_RTOL``);
(iii) ``jax.jit`` agrees with eager execution (float64, ``<= 1e-12`` relative);
(iv)  ``jax.vmap`` over a leading axis of 3 stacked weight sets (amplitudes for the theory
      functions) equals a Python loop over them;
(v)   a jitted function called again with new numbers of the same shapes does not retrace;
(vi)  online and offline tasks both run under ``jit`` (the regimes of (iii)-(v)).

Cost: compiling is what takes the time here (XLA:CPU, and eager mode compiles every primitive
for every new shape). So (ii)-(v) evaluate all cases of one (regime, depth) combination in one
jitted function (``bundle``), computed once and shared by the per-case tests; a case that fails
to trace is recorded and re-raised by its own tests only. (i) needs no compilation
(``jax.eval_shape``) and runs on the full grid of regimes and depths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

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
REGIMES = ("online", "colored", "offline")
NUM_DATA = 7
SPECTRUM = (1.0, 0.6, 0.3)           # rank 3 of r = 4 modes: one zero singular value
LABEL_NOISE = 0.5
CURVE_STEPS = 64                     # explicit RK4 steps for gradient_flow_curve under jit
VMAP_BATCH = 3

# (ii) Tolerance of float32 against float64 on identical inputs, relative to the output's scale
# (max |entry| of the float64 result, per output array). Unit roundoff u = 2^-24 ~ 6.0e-8.
# Every function here is a short chain of matrix products and elementwise maps. A length-n dot
# product is computed to n u times the sum of its |terms| (first order); along a chain the bounds
# add. Here the chains have at most ~L + 4 products of inner length 3-20 (widths <= 6, n = 7
# samples, d_out d_in = 20 in the dense covariance): n summed over a chain is <= ~100, so the
# worst case is ~100 u ~ 6e-6 of the terms' scale. The inputs are O(1) (LeCun-scale weights,
# teacher norm ~1, sigma = 0.5) and the states are far from any cancellation (W is not close to
# M), so the terms' scale is the output's scale. We allow 1e-5 (~170 ulps); random rounding
# makes the observed errors much smaller (<= 7e-7 with these inputs).
F32_RTOL = 1e-5
# gradient_flow_curve integrates CURVE_STEPS RK4 steps: rounding adds up over the steps, a few u
# per step in the worst case, plus exp/log/sigmoid (a few ulps each): 64 x ~5 u ~ 2e-5.
F32_RTOL_CURVE = 3e-5
# (iii)/(iv) float64 transformed against untransformed: XLA may reorder sums and fuse, changing
# results at the level of a few ulps of float64 (1.1e-16 each) per operation.
F64_RTOL = 1e-12


# ---------------------------------------------------------------------------- inputs
def make_task(seed: int, regime: str, dtype, abstract: bool = False) -> dlnlab.Task:
    """``online``/``offline``: ``Task.from_spectrum`` (whitened); ``colored``: ``Task(teacher,
    ...)`` with an input covariance and anisotropic label noise (online). ``abstract``: the
    offline data set only as shapes and dtypes (``jax.eval_shape``: nothing is compiled)."""
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
        data_key = jax.random.fold_in(key, 1)
        if abstract:
            return jax.eval_shape(lambda k: task.with_data(k, NUM_DATA), data_key)
        task = task.with_data(data_key, NUM_DATA)
    return task


@functools.cache
def make_args(seed: int, regime: str, depth: int, dtype, abstract: bool = False) -> dict:
    """Every input any case needs, in ``dtype``; different ``seed``s give different numbers.

    The task and the weights come from the library (``Task(..., dtype=)``,
    ``Task.from_spectrum(..., dtype=)``, ``task.with_data``, ``init_gaussian(..., dtype=)``); the
    other inputs from NumPy, which avoids compiling a JAX random kernel for every shape (slow on
    this machine). ``abstract``: the weights and data set as shapes and dtypes only (for
    ``jax.eval_shape``). Cached: treat the result as read-only (arrays and tasks are immutable).
    """
    rng = np.random.default_rng(1000 + seed)
    task = make_task(seed, regime, dtype, abstract)
    weight_key = jax.random.key(2000 + seed)
    init = functools.partial(dlnlab.init_gaussian, widths=WIDTHS[depth], gamma=1.0, dtype=dtype)
    weights = jax.eval_shape(init, weight_key) if abstract else init(weight_key)
    num = NUM_DATA

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    normals = ((normal(D_IN, D_IN), normal(D_OUT, D_IN)) if regime != "offline"
               else (normal(num),))
    curve_spectrum = jnp.asarray(SPECTRUM, dtype)
    return {
        "task": task,
        "weights": weights,
        "key": jax.random.key(3000 + seed),
        "normals": normals,
        "x": normal(D_OUT, D_IN),
        "inputs": normal(num, D_IN),
        "targets": normal(num, D_OUT),
        # a Python float: weakly typed, so it neither promotes float32 nor retraces under jit
        "lr": float(rng.uniform(0.01, 0.1)),
        "amplitudes": jnp.asarray(rng.uniform(-0.4, 1.2, NUM_MODES), dtype),
        "spectrum": jnp.asarray(SPECTRUM + (0.0,) * (NUM_MODES - len(SPECTRUM)), dtype),
        "curve_spectrum": curve_spectrum,
        "initial": curve_spectrum * jnp.asarray(rng.uniform(0.02, 0.5, len(SPECTRUM)), dtype),
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
    uses_task: bool = True
    batched: str = "weights"         # the argument stacked for (iv)
    f32_rtol: float | None = F32_RTOL  # None: (ii) is checked by a dedicated test
    compiled: tuple | None = None    # (regime, depth) combinations for (ii)-(v), if not default

    def __repr__(self) -> str:
        return self.name


CASES = [
    Case("end_to_end", lambda a, L: dlnlab.end_to_end(a["weights"]), uses_task=False),
    Case("partial_products", lambda a, L: dlnlab.partial_products(a["weights"]), uses_task=False),
    Case("per_sample_gradients",
         lambda a, L: dlnlab.per_sample_gradients(a["weights"], a["inputs"], a["targets"]),
         uses_task=False),
    Case("ntk_operator", lambda a, L: dlnlab.ntk_operator(a["weights"], a["x"]), uses_task=False),
    Case("population_loss", lambda a, L: dlnlab.population_loss(a["weights"], a["task"])),
    Case("gradient", lambda a, L: dlnlab.gradient(a["weights"], a["task"])),
    Case("noise_covariance", lambda a, L: dlnlab.noise_covariance(a["weights"], a["task"])),
    # float32 and float64 draw different normals from one key: (ii) has a dedicated test. Its
    # random draws are the slowest thing here to compile, so it is compiled in two regimes only
    # (the correlated-input map is noise_from_normals, checked in every regime).
    Case("sample_noise", lambda a, L: dlnlab.sample_noise(a["key"], a["weights"], a["task"], 2),
         f32_rtol=None, compiled=(("online", 3), ("offline", 2))),
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
         uses_task=False, batched="amplitudes"),
    Case("theory.reduced_diffusion",
         lambda a, L: theory.reduced_diffusion(a["amplitudes"], a["spectrum"], L, a["lr"], 1,
                                               LABEL_NOISE),
         uses_task=False, batched="amplitudes"),
    Case("theory.gradient_flow_curve",
         lambda a, L: theory.gradient_flow_curve(a["times"], a["curve_spectrum"], L, a["initial"],
                                                 num_steps=CURVE_STEPS),
         uses_task=False, batched="initial", f32_rtol=F32_RTOL_CURVE),
]

# (ii)-(v): combinations compiled (each costs seconds of XLA compilation on this machine, most of
# it for the eager reference, which compiles every primitive for every new shape): every regime
# once and every depth once for the functions of a task (depth 3 online is the general case:
# the Ito drift's span products C_ml are not identities); functions without a task at every
# depth (the regime does not matter to them; gradient_flow_curve has closed forms at depth 1
# and 2). (i) runs on the full grid of regimes and depths.
TASK_COMBOS = (("online", 3), ("offline", 2), ("colored", 1))
NO_TASK_COMBOS = tuple(("online", depth) for depth in DEPTHS)


def combos(case: Case, full: bool = False) -> tuple[tuple[str, int], ...]:
    if not case.uses_task:
        return NO_TASK_COMBOS
    if full:
        return tuple((r, d) for r in REGIMES for d in DEPTHS)
    return case.compiled or TASK_COMBOS


def params(full: bool = False, select=lambda case: True):
    return [pytest.param(case, regime, depth, id=f"{case.name}-{regime}-L{depth}")
            for case in CASES if select(case) for regime, depth in combos(case, full)]


# ---------------------------------------------------------------------------- bundles
@dataclass
class Bundle:
    """Results of every case at one (regime, depth), float64 unless named otherwise."""

    errors: dict = field(default_factory=dict)     # (stage, case name) -> exception
    traces: int = 0                                # traces of the jitted float64 function
    traces_after_second_call: int = 0
    jit_first: dict = field(default_factory=dict)
    jit_second: dict = field(default_factory=dict)
    eager_first: dict = field(default_factory=dict)
    eager_second: dict = field(default_factory=dict)
    jit_f32: dict = field(default_factory=dict)
    jit_f32_upcast: dict = field(default_factory=dict)  # float64 on the float32 numbers
    vmapped: dict = field(default_factory=dict)
    looped: list = field(default_factory=list)     # one dict per stacked item

    def get(self, stage: str, results: dict, name: str):
        if (stage, name) in self.errors:
            raise self.errors[(stage, name)]
        return results[name]


def _run_cases(cases, args, depth, errors: dict, stage: str) -> dict:
    """Every case on ``args``; a case that raises is recorded, not fatal to the others."""
    out = {}
    for case in cases:
        try:
            out[case.name] = case.fn(args, depth)
        except Exception as exc:  # noqa: BLE001 - re-raised by that case's own test
            errors.setdefault((stage, case.name), exc)
    return out


@functools.cache
def bundle(regime: str, depth: int) -> Bundle:
    cases = [c for c in CASES if (regime, depth) in combos(c)]
    b = Bundle()

    def all_cases(args):
        b.traces += 1                # Python side effect: runs only while tracing
        return _run_cases(cases, args, depth, b.errors, "jit")

    jitted = jax.jit(all_cases)
    first = make_args(1, regime, depth, jnp.float64)
    second = make_args(2, regime, depth, jnp.float64)
    args32 = make_args(1, regime, depth, jnp.float32)
    b.jit_first = jitted(first)
    b.jit_second = jitted(second)                  # new numbers, same shapes: no retrace
    b.traces_after_second_call = b.traces
    b.jit_f32_upcast = jitted(upcast(args32))      # same shapes and dtypes again
    b.eager_first = _run_cases(cases, first, depth, b.errors, "eager")
    b.eager_second = _run_cases(cases, second, depth, b.errors, "eager")
    cases32 = [c for c in cases if c.f32_rtol is not None]
    b.jit_f32 = jax.jit(lambda a: _run_cases(cases32, a, depth, b.errors, "jit_f32"))(args32)

    # (iv): every batched argument stacked at once; each case reads only its own.
    names = sorted({c.batched for c in cases})
    items = [{n: make_args(seed, regime, depth, jnp.float64)[n] for n in names}
             for seed in range(1, 1 + VMAP_BATCH)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *items)
    vmapped = jax.jit(jax.vmap(
        lambda item: _run_cases(cases, {**first, **item}, depth, b.errors, "vmap")))
    b.vmapped = vmapped(stacked)
    b.looped = [jitted({**first, **item}) for item in items]
    return b


# ---------------------------------------------------------------------------- checks
def leaves(tree) -> list:
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


def assert_dtype(tree, dtype, what: str) -> None:
    dtypes = [x.dtype for x in leaves(tree)]
    assert all(dt == jnp.dtype(dtype) for dt in dtypes), (
        f"{what}: {jnp.dtype(dtype).name} inputs gave {[dt.name for dt in dtypes]}")


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("case", "regime", "depth"), params(full=True))
def test_output_dtype_follows_input_dtype(case, regime, depth):
    """(i) Inputs built in float32 (``Task(dtype=)``, ``init_gaussian(dtype=)``) give float32
    outputs, float64 inputs float64. Abstract evaluation (the dtype rules of eager and jit, with
    nothing compiled) on the full grid; (ii) and (iii) check the dtypes of computed results."""
    for dtype in (jnp.float32, jnp.float64):
        out = jax.eval_shape(lambda a: case.fn(a, depth),
                             make_args(1, regime, depth, dtype, abstract=True))
        assert_dtype(out, dtype, case.name)


@pytest.mark.parametrize(("case", "regime", "depth"),
                         params(select=lambda case: case.f32_rtol is not None))
def test_float32_agrees_with_float64(case, regime, depth):
    """(ii) The same float32 numbers computed in float64: differences are rounding-sized."""
    b = bundle(regime, depth)
    out32 = b.get("jit_f32", b.jit_f32, case.name)
    assert_dtype(out32, jnp.float32, case.name)
    assert_close(out32, b.get("jit", b.jit_f32_upcast, case.name), case.f32_rtol,
                 f"{case.name} float32 vs float64")


@pytest.mark.parametrize("regime", ["online", "offline"])   # the two ways normals are drawn
def test_sample_noise_is_noise_from_normals_of_its_draws(regime):
    """(ii) for ``sample_noise``. From one key, float32 and float64 draw different normals, so
    the two precisions of ``sample_noise`` are not comparable sample by sample. As implemented,
    ``sample_noise(key, ..., n)`` maps ``draw_noise_normals(key, task, n)`` (the normals that
    ``noise_from_normals`` consumes), so float32 ``sample_noise`` is compared with the float64
    map of the same float32 normals. (A change of ``sample_noise``'s random stream would need
    this test to change with it; it says nothing about the law.)"""
    depth, num = 2, 2
    args = make_args(1, regime, depth, jnp.float32)

    @jax.jit
    def both(key, weights, task):
        samples = dlnlab.sample_noise(key, weights, task, num)
        normals = upcast(dlnlab.draw_noise_normals(key, task, num))
        exact = jax.vmap(lambda z: dlnlab.noise_from_normals(upcast(weights), upcast(task), z))(
            normals)
        return samples, exact

    samples, exact = both(args["key"], args["weights"], args["task"])
    assert_dtype(samples, jnp.float32, "sample_noise")
    assert_dtype(exact, jnp.float64, "noise_from_normals")
    for i in range(num):
        assert_close(tuple(s[i] for s in samples), tuple(e[i] for e in exact), F32_RTOL,
                     f"sample_noise[{i}] ({regime})")


@pytest.mark.parametrize(("case", "regime", "depth"), params())
def test_jit_matches_eager_and_does_not_retrace(case, regime, depth):
    """(iii) jit == eager in float64; (v) new numbers, same shapes: no retrace; (vi) online,
    correlated-input and offline tasks under jit."""
    b = bundle(regime, depth)
    for jit_results, eager_results, label in ((b.jit_first, b.eager_first, "1st call"),
                                              (b.jit_second, b.eager_second, "2nd call")):
        eager = b.get("eager", eager_results, case.name)
        assert_dtype(eager, jnp.float64, f"{case.name} eager")
        out = b.get("jit", jit_results, case.name)
        assert_dtype(out, jnp.float64, f"{case.name} jit")
        assert_close(out, eager, F64_RTOL, f"{case.name} jit vs eager ({label})")
    assert b.traces_after_second_call == 1, (
        f"{case.name}: retraced for new numbers of the same shapes")
    assert b.traces == 1, f"{case.name}: retraced when called again (float32 numbers, vmap items)"


@pytest.mark.parametrize(("case", "regime", "depth"), params())
def test_vmap_matches_python_loop(case, regime, depth):
    """(iv) ``jax.vmap`` over 3 stacked weight sets (amplitudes for theory) == a Python loop."""
    b = bundle(regime, depth)
    batched = b.get("vmap", b.vmapped, case.name)
    for i, looped in enumerate(b.looped):
        assert_close(jax.tree.map(lambda x, i=i: x[i], batched),
                     b.get("jit", looped, case.name), F64_RTOL, f"{case.name} vmap[{i}] vs loop")
