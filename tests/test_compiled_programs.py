"""The engine drops JAX's compiled programs before a process runs out of memory maps
(``dlnlab.engine.release_compiled_programs``; docs/architecture.md, "Compiled programs")."""

from __future__ import annotations

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnlab
from dlnlab.dynamics import Hyperparameters, OnlineSGD
from dlnlab.engine import memory_map_share, record_steps, release_compiled_programs, simulate

engine_simulate = importlib.import_module("dlnlab.engine.simulate")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _maps() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def _limit() -> int:
    with open("/proc/sys/vm/max_map_count") as f:
        return int(f.read())


@linux
def test_the_share_is_this_process_maps_over_the_kernel_limit():
    share, maps = memory_map_share(), _maps()
    assert share is not None and 0 < share < 1
    assert abs(share * _limit() - maps) <= 50           # the maps of the few lines in between


@linux
def test_releasing_frees_the_maps_of_compiled_programs():
    """Ten new programs hold memory maps (about 8 each on XLA:CPU); above the share they are
    dropped and the maps go back, below it nothing happens."""
    f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)
    before = _maps()
    for n in range(30, 40):
        jax.block_until_ready(f(jnp.ones((n, n))))
    compiled = _maps()
    assert compiled >= before + 10                      # each program holds maps
    assert release_compiled_programs(share=1.0) is False
    assert _maps() >= compiled - 5
    assert release_compiled_programs(share=0.0) is True
    assert _maps() <= compiled - 10
    # the dropped program compiles again and computes the same
    x = jnp.ones((30, 30))
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jnp.sin(x) @ x.T + 1.0))


def _run():
    task = dlnlab.Task.from_spectrum(jax.random.key(1), 4, 4, [1.0, 0.5], label_noise=0.1)
    weights = dlnlab.init_gaussian(jax.random.key(2), (4, 5, 4), 0.5, dtype=jnp.float32)
    batched = tuple(jnp.broadcast_to(w, (3,) + w.shape) + 0 for w in weights)
    return simulate(OnlineSGD(task), batched, Hyperparameters(0.05), jax.random.key(3),
                    record_steps(40, log_points=5))


@pytest.mark.parametrize("door", ["simulate", "advance_from"])
def test_both_doors_release_when_the_maps_run_short_and_results_do_not_change(monkeypatch, door):
    reference = _run()
    cleared = []
    monkeypatch.setattr(engine_simulate, "memory_map_share", lambda: 0.9)
    monkeypatch.setattr(jax, "clear_caches", lambda real=jax.clear_caches: (cleared.append(1), real()))
    if door == "simulate":
        again = _run()
        for name in reference.data_vars:
            np.testing.assert_array_equal(again[name].values, reference[name].values, err_msg=name)
    else:
        task = dlnlab.Task.from_spectrum(jax.random.key(1), 4, 4, [1.0])
        weights = dlnlab.init_gaussian(jax.random.key(2), (4, 4), 0.5, dtype=jnp.float32)
        engine_simulate.advance_from(OnlineSGD(task), (weights[0][None],), Hyperparameters(0.05),
                                     jax.random.key(3))
    assert cleared == [1]
    monkeypatch.setattr(engine_simulate, "memory_map_share", lambda: 0.1)
    _run()
    assert cleared == [1]                                # below the share: nothing dropped
