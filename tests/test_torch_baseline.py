"""The PyTorch baselines compute the same steps as dlnlab: fed the same normals, the torch ``bmm``
SGD and SDE loops reach the same weights as ``OnlineSGD`` / ``AnisotropicLangevin`` to float32
rounding (both against a float64 dlnlab reference); a wrong update (a missing transpose) does not.
Skipped when PyTorch (the ``bench-torch`` extra) is not installed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlnlab.core import Task
from dlnlab.dynamics import AnisotropicLangevin, Hyperparameters, OnlineSGD, StepSizeHyperparameters
from dlnlab.dynamics.base import State

torch = pytest.importorskip("torch")
from dlnlab import torch_baseline as tb  # noqa: E402

WIDTH, DEPTH, RUNS, STEPS = 6, 3, 5, 3
EPS32 = float(np.finfo(np.float32).eps)
# float32 rounding of a chain of L products of inner dimension d, relative to the largest entry:
# each product adds at most ~d eps per entry (Higham, Accuracy and Stability, §3.5); 16x margin.
TOLERANCE = 16 * EPS32 * DEPTH * WIDTH


def _setup(seed):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((RUNS, WIDTH, WIDTH)) * 0.6 for _ in range(DEPTH)]
    return rng, weights


def _dlnlab_steps(stepper, hparams, weights, normals, dtype):
    """``STEPS`` steps of dlnlab's ``apply`` on runs-minor weights, the given normals per step."""
    ws = tuple(jnp.asarray(np.moveaxis(w, 0, -1), dtype) for w in weights)          # (d, d, runs)
    state = State(ws, jnp.int32(0))
    words = jnp.zeros((2, RUNS), jnp.uint32)
    for z in normals:
        state, _ = stepper.apply(words, jnp.asarray(z, dtype), state, hparams)
    return [np.moveaxis(np.asarray(w, np.float64), -1, 0) for w in state.weights]


def _error(weights, reference):
    scale = max(np.max(np.abs(r)) for r in reference)
    return max(np.max(np.abs(np.asarray(w, np.float64) - r)) for w, r in zip(weights, reference,
                                                                              strict=True)) / scale


def _torch_weights(weights):
    return [torch.tensor(w, dtype=torch.float32) for w in weights]


def _wrong_sgd_step(weights, teacher, x, learning_rate):
    """The bmm SGD step with the backward product missing its transpose (``W_l e`` for ``W_l^T e``)."""
    batch = x.shape[2]
    acts = [x]
    for w in weights[:-1]:
        acts.append(torch.bmm(w, acts[-1]))
    back = (torch.bmm(weights[-1], acts[-1]) - torch.matmul(teacher, x)) * (learning_rate / batch)
    for index in range(len(weights) - 1, -1, -1):
        update = torch.bmm(back, acts[index].transpose(1, 2))
        if index > 0:
            back = torch.bmm(weights[index], back)
        weights[index].sub_(update)
    return weights


@pytest.mark.parametrize("batch", [1, 3])
def test_sgd_bmm_matches_dlnlab(batch):
    lr = 0.3
    rng, weights = _setup(batch)
    normals = [rng.standard_normal((WIDTH * batch, RUNS)) for _ in range(STEPS)]
    tasks = {dt: Task.from_spectrum(jax.random.key(1), WIDTH, WIDTH, [1.0, 0.5], dtype=dt)
             for dt in (jnp.float32, jnp.float64)}
    hp = Hyperparameters(lr, float(batch))
    reference = _dlnlab_steps(OnlineSGD(tasks[jnp.float64], batch_size=batch), hp, weights, normals,
                              jnp.float64)
    ours = _dlnlab_steps(OnlineSGD(tasks[jnp.float32], batch_size=batch), hp, weights, normals,
                         jnp.float32)
    teacher = torch.tensor(np.asarray(tasks[jnp.float32].teacher))

    def run(step):
        ws = _torch_weights(weights)
        with torch.no_grad():
            for z in normals:
                x = torch.tensor(z.reshape(WIDTH, batch, RUNS), dtype=torch.float32).permute(2, 0, 1)
                step(ws, teacher, x.contiguous(), lr)
        return [w.numpy() for w in ws]

    moved = _error([w for w in weights], reference)
    assert moved > 100 * TOLERANCE                        # the steps change the weights visibly
    assert _error(ours, reference) < TOLERANCE
    assert _error(run(tb.sgd_bmm_step), reference) < TOLERANCE
    assert _error(run(_wrong_sgd_step), reference) > 100 * TOLERANCE


def test_sde_bmm_matches_dlnlab():
    lr, h, batch = 0.5, 0.2, 4.0
    rng, weights = _setup(7)
    normals = [rng.standard_normal((WIDTH * WIDTH, RUNS)) for _ in range(STEPS)]
    tasks = {dt: Task.from_spectrum(jax.random.key(1), WIDTH, WIDTH, [1.0, 0.5], dtype=dt)
             for dt in (jnp.float32, jnp.float64)}
    hp = StepSizeHyperparameters(lr, batch, h)
    # dlnlab's apply takes the noise as AnisotropicLangevin.draw gives it: (Z + Z^T) / sqrt 2
    square = [z.reshape(WIDTH, WIDTH, RUNS) for z in normals]
    drawn = [((z + z.transpose(1, 0, 2)) * np.sqrt(0.5)).reshape(WIDTH * WIDTH, RUNS) for z in square]
    reference = _dlnlab_steps(AnisotropicLangevin(tasks[jnp.float64]), hp, weights, drawn, jnp.float64)
    ours = _dlnlab_steps(AnisotropicLangevin(tasks[jnp.float32]), hp, weights, drawn, jnp.float32)
    teacher = torch.tensor(np.asarray(tasks[jnp.float32].teacher))

    def run(step):
        ws = _torch_weights(weights)
        with torch.no_grad():
            for z in normals:
                zt = torch.tensor(z.reshape(WIDTH, WIDTH, RUNS), dtype=torch.float32).permute(2, 0, 1)
                step(ws, teacher, zt.contiguous(), lr, h, batch)
        return [w.numpy() for w in ws]

    assert _error(weights, reference) > 100 * TOLERANCE
    assert _error(ours, reference) < TOLERANCE
    assert _error(run(tb.sde_bmm_step), reference) < TOLERANCE
    assert _error(run(_wrong_sde_step), reference) > 100 * TOLERANCE


def _wrong_sde_step(weights, teacher, z, learning_rate, step_size, batch_size):
    """The bmm SDE step with ``B_l`` for ``B_l^T`` in the layer maps ``A_l^T Q B_l^T``."""
    rights = [None]
    for w in weights[:-1]:
        rights.append(w if rights[-1] is None else torch.bmm(w, rights[-1]))
    g = torch.bmm(weights[-1], rights[-1]) - teacher
    symmetric = (z + z.transpose(1, 2)) * np.sqrt(0.5)
    q = step_size * g + np.sqrt(step_size * learning_rate / batch_size) * torch.bmm(g, symmetric)
    back, maps = q, [None] * len(weights)
    for index in range(len(weights) - 1, -1, -1):
        maps[index] = back if rights[index] is None else torch.bmm(back, rights[index])
        if index > 0:
            back = torch.bmm(weights[index].transpose(1, 2), back)
    for w, m in zip(weights, maps, strict=True):
        w.sub_(m)
    return weights


def test_torch_rates_small():
    rates = tb.torch_rates(runs=8, min_seconds=0.02, repeats=1)
    for name in ("sgd_bmm", "sgd_autograd", "sde_bmm"):
        assert np.isfinite(rates[name]) and rates[name] > 0
        # the faster of os.cpu_count() threads and one thread is the one reported
        threads = rates[f"{name}_threads"]
        assert rates[name] == rates[f"{name}_{threads}_threads"]
        assert rates[name] >= rates[f"{name}_1_threads"]


def test_torch_comparison_rows():
    plain = [dict(name="online_sgd", config="L=4, d=12, B=1, float32, 8 runs", run_steps_per_s=1e6,
                  device="cpu", compile_s=1.0),
             dict(name="anisotropic_sde", config="L=4, d=12, B=1, float32, 8 runs, h=0.001",
                  run_steps_per_s=1e5, device="cpu", compile_s=1.0)]
    rows = tb.torch_comparison(plain, runs=8, min_seconds=0.02, progress=False)
    assert [r["name"] for r in rows] == ["online_sgd_vs_torch", "sde_vs_torch", "torch_bmm_vs_autograd"]
    for row in rows:
        assert row["baseline_run_steps_per_s"] > 0
        assert np.isclose(row["ratio"], row["run_steps_per_s"] / row["baseline_run_steps_per_s"])
    assert rows[0]["run_steps_per_s"] == 1e6 and rows[1]["run_steps_per_s"] == 1e5
    # with the plain bench's floor row: the floor against the same PyTorch SDE loop
    plain.append(dict(name="anisotropic_sde_floor", config=plain[1]["config"], run_steps_per_s=3e6,
                      device="cpu", compile_s=float("nan")))
    rows = tb.torch_comparison(plain, runs=8, min_seconds=0.02, progress=False)
    assert [r["name"] for r in rows][-1] == "sde_floor_vs_torch"
    assert rows[-1]["run_steps_per_s"] == 3e6
    assert rows[-1]["baseline_run_steps_per_s"] == rows[1]["baseline_run_steps_per_s"]
