"""Compiled block kernels: a whole block of steps of one stepper in one XLA custom call.

At width 12 a step of the XLA broadcast layout is 16 XLA kernels, each with a fixed cost of about
0.3 us that is half the step (docs/performance.md, "What bounds d = 12 SGD"). A block kernel runs
all the steps of a noise block for a run group in one call of compiled C++ (``dlnlab.dynamics._kernels``,
built at install time from ``src/dlnlab/kernels/*.cc`` and registered through XLA's FFI,
``jax.ffi``), computing the XLA step's own operations with the same fused multiply-adds, every
sum in index order.

Randomness. A kernel draws each step's normals itself from the runs' key words, bit for bit the
stepper's ``draw`` (``_ops.counter_normals``: Threefry-2x32, then jax.random.normal's float32
transform with XLA:CPU's own ``erf_inv``, ``log1p`` and ``log`` operations), so XLA draws
nothing on the CPU (about a third of the step at width 12, docs/performance.md).
:func:`online_normals` and :func:`bits_to_normals` expose the draw for tests, which compare it
with jax on all 2^23 inputs of the transform.

Bits. Where XLA:CPU also sums in index order, which it does for the paper's network and every
case ``tests/test_kernels.py`` compares, a run's results are bit-identical to the XLA step's
(float32 and float64). From width 24 XLA:CPU's fusion and vectorisation of the step change with
the arrays' sizes, and with them which products it rounds and in what order (measured on an
AVX-512 CPU: online SGD and momentum SGD with label noise at widths 24-32, a run alone or among 3
or 4 against 40, run groups of 8 against 40; momentum also at widths (4, 6, 3) and (3, 4, 2) with
5 or 7 runs), so a run's bits depended on how many runs were simulated with it
(docs/architecture.md, "Results never depend on the batching"). The kernel's order never depends
on the group (each run is a vector lane), so with the kernel a run's bits are the same for any
number of runs; against the XLA step they then differ at float rounding.

The engine uses a kernel on CPU when the stepper offers one for the network
(:meth:`~dlnlab.dynamics.Stepper.block_kernel`), the products are ``"broadcast"`` and
``Layout(kernel=True)`` (the default); elsewhere (GPU, ``kernel=False``, a build without the
compiled module) it scans the stepper's ``apply`` as before. Datasets record which ran
(``attrs["step_kernel"]``: ``"compiled"`` or ``"xla"``).

Kernels here (one C++ source, ``src/dlnlab/kernels/online_sgd.cc``): :func:`online_sgd_block`
(:class:`~dlnlab.dynamics.OnlineSGD`) and :func:`online_momentum_block` (online
:class:`~dlnlab.dynamics.MomentumSGD`), both for widths at most :data:`KERNEL_MAX_WIDTH` = 32,
batch size at most :data:`KERNEL_MAX_BATCH` = 32, float32 and float64, on x86-64 CPUs with AVX2
and FMA (:func:`online_sgd_supports`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._ops import BROADCAST_MAX_WIDTH

#: Widest layer the kernels take: the widths at which the XLA step uses broadcast products
#: (:data:`~dlnlab.dynamics._ops.BROADCAST_MAX_WIDTH`); wider networks run batched products.
KERNEL_MAX_WIDTH = BROADCAST_MAX_WIDTH
#: Largest batch size the kernels take: the XLA step's batch sum is an explicit fold up to
#: :data:`~dlnlab.dynamics._ops.BROADCAST_MAX_WIDTH` (``_ops.batch_outer_sum``).
KERNEL_MAX_BATCH = BROADCAST_MAX_WIDTH
#: Most layers a kernel takes.
KERNEL_MAX_LAYERS = 64

#: The compiled handlers: kernel name -> dtype -> XLA custom-call target (each the module's
#: capsule of the target's name without the ``dlnlab_`` prefix).
_TARGETS = {kernel: {jnp.dtype(jnp.float32): f"dlnlab_online_{kernel}_block_f32",
                     jnp.dtype(jnp.float64): f"dlnlab_online_{kernel}_block_f64"}
            for kernel in ("sgd", "momentum")}
#: The kernels' draw alone, for tests: :func:`online_normals` and :func:`bits_to_normals`.
_DRAW_TARGETS = {jnp.dtype(jnp.float32): "dlnlab_online_normals_f32",
                 jnp.dtype(jnp.float64): "dlnlab_online_normals_f64"}
_BITS_TARGET = "dlnlab_bits_to_normals_f32"


def _all_targets() -> list[str]:
    return ([t for targets in _TARGETS.values() for t in targets.values()]
            + list(_DRAW_TARGETS.values()) + [_BITS_TARGET])


@functools.cache
def _registered() -> str:
    """Registers the compiled handlers with XLA once. ``""`` when they can run here, else why
    not (one line): the module was not built (no C++ compiler at install time, not x86-64), the
    CPU lacks AVX2 or FMA, this jax has no ``jax.ffi``, or this jaxlib is older than the one the
    module was built against."""
    try:
        from . import _kernels
    except ImportError:
        return ("dlnlab.dynamics._kernels was not built (the install needs GCC on x86-64; see "
                "the pip install log)")
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "register_ffi_target"):
        return f"jax {jax.__version__} has no jax.ffi"
    import jaxlib
    if not _kernels.usable:
        return "this CPU has no AVX2 or no FMA"
    if _version(jaxlib.__version__) < _version(_kernels.jaxlib_version):
        return (f"built against jaxlib {_kernels.jaxlib_version}, running jaxlib "
                f"{jaxlib.__version__} (older): reinstall dlnlab")
    missing = missing_handlers(_kernels)
    if missing:
        return (f"dlnlab.dynamics._kernels is an older build without {', '.join(missing)}: "
                "reinstall dlnlab")
    for target in _all_targets():
        jax.ffi.register_ffi_target(target, getattr(_kernels, target.removeprefix("dlnlab_")),
                                    platform="cpu")
    return ""


def missing_handlers(module) -> list[str]:
    """The handlers (the kernels of :data:`_TARGETS` and their draw) that the compiled
    ``module`` lacks (an editable install not rebuilt after an update): none may be registered
    then, or a stepper would ask for one that XLA does not know, or call an older handler with
    today's arguments."""
    return [target.removeprefix("dlnlab_") for target in _all_targets()
            if not hasattr(module, target.removeprefix("dlnlab_"))]


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def available() -> bool:
    """Whether the compiled kernels can run here (built at install time and registered)."""
    return _registered() == ""


def unavailable_reason() -> str:
    """Why the compiled kernels cannot run here (one line), or ``""`` when they can."""
    return _registered()


def online_sgd_supports(task, batch_size: int, shapes, dtype) -> bool:
    """Whether :func:`online_sgd_block` and :func:`online_momentum_block` take this problem:
    weights ``shapes`` ``(d_l, d_{l-1}, ...)`` at most :data:`KERNEL_MAX_WIDTH` wide, at most
    :data:`KERNEL_MAX_LAYERS` layers, ``batch_size <=`` :data:`KERNEL_MAX_BATCH`, an online task,
    float32 or float64, and a built module."""
    return (available() and task.online and jnp.dtype(dtype) in _TARGETS["sgd"]
            and 1 <= len(shapes) <= KERNEL_MAX_LAYERS and 1 <= batch_size <= KERNEL_MAX_BATCH
            and all(max(s[0], s[1]) <= KERNEL_MAX_WIDTH for s in shapes))


def online_sgd_block(task, batch_size: int, weights, words, learning_rate, threshold, first_step,
                     valid_steps, diverged):
    """``(weights, diverged)`` after the first ``valid_steps`` steps of a block of online SGD.

    ``OnlineSGD.apply`` scanned over the block with the engine's divergence rule
    (``diverged[r]``: the first step whose minibatch loss is not ``<= threshold``, else kept),
    runs on the trailing axis:

    - ``weights``: tuple of ``(d_l, d_{l-1}, R)``; ``words``: ``(2, R)`` uint32, the runs' key
      words (``_ops.key_words``). The kernel draws each step's normals itself, bit for bit those
      of ``OnlineSGD.draw`` (``_ops.counter_normals`` with counter ``first_step + s``, stream 0:
      ``n_x = d_in B`` inputs, then ``n_e = d_out B`` label-noise normals, 0 without label noise);
    - ``learning_rate``: ``(R,)``; ``threshold``: scalar; ``first_step``, ``valid_steps``: int32
      scalars (the block's first step counter and how many steps act);
      ``diverged``: ``(R,)`` int32.

    Call only where :func:`online_sgd_supports` holds, inside a computation compiled for the CPU
    (the engine does it through ``jax.lax.platform_dependent``)."""
    return _online_block("sgd", task, batch_size, tuple(weights), words, learning_rate, None,
                         threshold, first_step, valid_steps, diverged)


def online_momentum_block(task, batch_size: int, weights, velocity, words, learning_rate,
                          momentum, threshold, first_step, valid_steps, diverged):
    """``(weights, velocity, diverged)`` after the first ``valid_steps`` steps of a block of
    online heavy-ball momentum SGD (``MomentumSGD.apply``: ``v <- mu v - U``, ``theta <- (theta
    - U) + mu v`` with ``U`` the SGD update; docs/theory.md), with the arguments of
    :func:`online_sgd_block` and ``velocity`` (like ``weights``) and ``momentum`` ``(R,)``.
    Where :func:`online_sgd_supports` holds."""
    layers = len(weights)
    out, diverged = _online_block("momentum", task, batch_size, tuple(weights) + tuple(velocity),
                                  words, learning_rate, momentum, threshold, first_step,
                                  valid_steps, diverged)
    return out[:layers], out[layers:], diverged


def _online_block(kernel, task, batch_size, state, words, learning_rate, momentum, threshold,
                  first_step, valid_steps, diverged):
    """The custom call of one of the compiled online kernels: ``(state, diverged)``, ``state``
    the layers' weights (then their velocities, with momentum) updated in place."""
    dtype = jnp.dtype(state[0].dtype)
    runs = diverged.shape[0]
    one = jnp.zeros((1, 1), dtype)
    input_sqrt = one if task.whitened else jnp.asarray(task.input_sqrt, dtype)
    label = task.label_covariance is not None
    label_sqrt = jnp.asarray(task.label_sqrt, dtype) if label else one
    rate = jnp.broadcast_to(jnp.asarray(learning_rate, dtype), (runs,))
    mu = (jnp.zeros((1,), dtype) if momentum is None
          else jnp.broadcast_to(jnp.asarray(momentum, dtype), (runs,)))
    outputs = (jax.ShapeDtypeStruct((runs,), jnp.int32),) + tuple(
        jax.ShapeDtypeStruct(w.shape, dtype) for w in state)
    first = 10                              # positional inputs before the state
    call = jax.ffi.ffi_call(_TARGETS[kernel][dtype], outputs, vmap_method="sequential",
                            input_output_aliases={first - 1 + i: i for i in range(len(state) + 1)})
    out = call(jnp.asarray(task.teacher, dtype), input_sqrt, label_sqrt,
               jnp.asarray(words, jnp.uint32), rate, mu,
               jnp.reshape(jnp.asarray(threshold, dtype), (1,)),
               jnp.reshape(jnp.asarray(first_step, jnp.int32), (1,)),
               jnp.reshape(jnp.asarray(valid_steps, jnp.int32), (1,)),
               diverged.astype(jnp.int32), *state,
               batch=np.int64(batch_size), whitened=bool(task.whitened), label_noise=label,
               stream=np.int64(0))
    return tuple(out[1:]), out[0]


def online_normals(words, first_step, steps: int, count: int, dtype, stream: int = 0):
    """The normals the kernels draw, ``(steps, count, R)`` of ``dtype`` (float32 or float64), for
    key words ``(2, R)`` and the counters ``first_step, first_step + 1, ...``: bit for bit
    ``_ops.counter_normals(words, first_step + arange(steps), (count,), dtype, stream)``
    (``tests/test_kernels.py``). Where :func:`available` holds, on the CPU."""
    dtype = jnp.dtype(dtype)
    words = jnp.asarray(words, jnp.uint32)
    call = jax.ffi.ffi_call(_DRAW_TARGETS[dtype],
                            jax.ShapeDtypeStruct((steps, count, words.shape[1]), dtype))
    return call(words, jnp.reshape(jnp.asarray(first_step, jnp.int32), (1,)),
                count=np.int64(count), stream=np.int64(stream))


def bits_to_normals(bits):
    """The kernels' float32 normal of each uint32 word (``_ops._bits_to_normal``'s transform of
    jax.random.normal), for tests: any shape. Where :func:`available` holds, on the CPU."""
    bits = jnp.asarray(bits, jnp.uint32)
    call = jax.ffi.ffi_call(_BITS_TARGET, jax.ShapeDtypeStruct(bits.shape, jnp.float32))
    return call(bits)
