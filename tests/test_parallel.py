"""The engine spread over host devices (one per core) gives bit-identical results."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from dlnlab.core import Task, init_gaussian
from dlnlab.dynamics import AnisotropicLangevin, OfflineSGD, OnlineSGD
from dlnlab.engine import Layout, run_keys, simulate
assert jax.local_device_count() == 2
task = Task.from_spectrum(jax.random.key(1), 6, 5, [1.0, 0.5], label_noise=0.2, dtype=jnp.float32)
data = task.with_data(jax.random.key(4), 40)
w = jax.vmap(lambda k: init_gaussian(k, (6, 7, 5), 1.0, dtype=jnp.float32))(
    run_keys(jax.random.key(2), 300))
for stepper in (OnlineSGD(task), AnisotropicLangevin(task),
                OfflineSGD(data, batch_size=3, replacement=False)):
    hp = stepper.hyperparameters(learning_rate=0.05, batch_size=1.0,
                                 **({"step_size": 0.01} if stepper.uses_step_size else {}))
    runs = [simulate(stepper, w, hp, jax.random.key(3), [0, 7, 40, 300],
                     layout=Layout(run_group=64, parallel=p, chunk_steps=50))
            for p in (True, False)]
    for name in ("amplitude", "loss", "diffusion"):
        assert np.array_equal(runs[0][name].values, runs[1][name].values), (stepper.name, name)
print("ok")
"""


def test_runs_split_over_two_host_devices_are_bit_identical():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
