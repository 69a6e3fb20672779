"""PyTorch baselines for ``dlnlab bench --torch``: the loops a researcher would write.

PyTorch is an optional extra (``pip install 'dlnlab[bench-torch]'``) imported inside the functions
only. Three baselines, float32, ``torch.no_grad()`` except for autograd, threads =
``os.cpu_count()`` or one, whichever is faster (:func:`torch_rates`), measured as
``benchmarks.median_rate`` (warm-up, then the median of repetitions of at least ``min_seconds``);
run-steps/s = runs x steps per second:

- :func:`sgd_bmm_step` in a Python loop over steps: runs batched with ``torch.bmm`` (weights
  ``(runs, d_l, d_{l-1})``), fresh ``x ~ N(0, I)`` per step from ``torch.randn``, hand-written
  backpropagation (the math of ``dynamics._ops.minibatch_updates``);
- the naive per-step loop with autograd: one run, ``loss.backward()``, a manual SGD update;
- :func:`sde_bmm_step` in a Python loop: the structured anisotropic-SDE sampler of
  ``AnisotropicLangevin.apply`` for a whitened online task (prefix products, ``G = W - M``,
  ``R = G (Z + Z^T) / sqrt 2``, ``Q = h G + sqrt(h eta / B) R``, ``W_l -= A_l^T Q B_l^T``).
"""

from __future__ import annotations

import math
import os

INSTALL_HINT = "bench --torch: PyTorch is not installed (pip install 'dlnlab[bench-torch]')"


def import_torch():
    """``torch``, with threads = ``os.cpu_count()``; ``ValueError`` (one line) when it is missing."""
    try:
        import torch
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def sgd_bmm_step(weights, teacher, x, learning_rate: float):
    """One online-SGD step of every run, in place: ``W_l <- W_l - (eta / B) sum_i A_l^T e_i
    (B_l x_i)^T`` with ``e_i = W x_i - M x_i``.

    ``weights``: list of tensors ``(runs, d_l, d_{l-1})``; ``teacher`` ``M (d_out, d_in)``;
    ``x (runs, d_in, B)`` the step's inputs. Returns the weights (the same tensors).
    """
    import torch

    batch = x.shape[2]
    y = torch.matmul(teacher, x)                            # (runs, d_out, B)
    acts = [x]
    for w in weights[:-1]:
        acts.append(torch.bmm(w, acts[-1]))
    back = (torch.bmm(weights[-1], acts[-1]) - y) * (learning_rate / batch)
    for index in range(len(weights) - 1, -1, -1):
        update = torch.bmm(back, acts[index].transpose(1, 2))
        if index > 0:
            back = torch.bmm(weights[index].transpose(1, 2), back)
        weights[index].sub_(update)
    return weights


def sde_bmm_step(weights, teacher, z, learning_rate: float, step_size: float, batch_size: float = 1.0):
    """One Euler-Maruyama step of the anisotropic SDE of every run, in place (whitened online task,
    no label noise; docs/theory.md §3): ``W_l <- W_l - A_l^T Q B_l^T`` with ``B_l = W_{l-1}..W_1``,
    ``A_l = W_L..W_{l+1}``, ``G = W_L..W_1 - M``, ``Q = h G + sqrt(h eta / B) G (Z + Z^T) / sqrt 2``.

    ``weights``: list of ``(runs, d, d)`` tensors; ``z (runs, d_in, d_in)`` standard normals.
    """
    import torch

    rights = [None]
    for w in weights[:-1]:
        rights.append(w if rights[-1] is None else torch.bmm(w, rights[-1]))
    end = weights[-1] if rights[-1] is None else torch.bmm(weights[-1], rights[-1])
    g = end - teacher
    symmetric = (z + z.transpose(1, 2)) * math.sqrt(0.5)
    q = step_size * g + math.sqrt(step_size * learning_rate / batch_size) * torch.bmm(g, symmetric)
    back, maps = q, [None] * len(weights)
    for index in range(len(weights) - 1, -1, -1):
        right = rights[index]
        maps[index] = back if right is None else torch.bmm(back, right.transpose(1, 2))
        if index > 0:
            back = torch.bmm(weights[index].transpose(1, 2), back)
    for w, m in zip(weights, maps, strict=True):
        w.sub_(m)
    return weights


def _problem(width: int, depth: int, runs: int):
    """``benchmarks``' problem (whitened ``Task.from_spectrum(key(1), d, d, [1, 2/3, 1/3])``,
    ``init_gaussian(key(2), gamma = 2)``) as float32 torch tensors, the weights copied per run."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .core import Task, init_gaussian

    torch = import_torch()
    task = Task.from_spectrum(jax.random.key(1), width, width, [1.0, 2 / 3, 1 / 3], dtype=jnp.float32)
    weights = init_gaussian(jax.random.key(2), (width,) * (depth + 1), 2.0, dtype=jnp.float32)
    teacher = torch.tensor(np.asarray(task.teacher), dtype=torch.float32)
    ws = [torch.tensor(np.asarray(w), dtype=torch.float32).expand(runs, -1, -1).contiguous()
          for w in weights]
    return torch, teacher, ws


def torch_rates(*, width: int = 12, depth: int = 4, runs: int = 1024, min_seconds: float = 2.0,
                repeats: int = 3, learning_rate: float = 0.01, step_size: float = 0.001) -> dict:
    """Run-steps/s of the three baselines on the ``dlnlab bench`` problem (d = 12, L = 4, float32):
    ``{"sgd_bmm": ..., "sgd_autograd": ..., "sde_bmm": ...}`` (the autograd loop has one run).

    Each is measured with ``torch.set_num_threads(os.cpu_count())`` and with one thread, and the
    faster is kept (``NAME_threads`` says which; ``NAME_N_threads`` holds each rate): on a shared
    machine PyTorch's OpenMP threads can be 20x slower than one thread (measured here at load 6
    on 2 cores: 13k against 325k run-steps/s), and the baseline should be the best a user gets.
    Raises ``ValueError`` (one line) when PyTorch is not installed."""
    from .roofline import median_rate

    torch, teacher, ws = _problem(width, depth, runs)
    results = {}
    generator = torch.Generator().manual_seed(0)

    def sgd_steps(n=64):
        for _ in range(n):
            x = torch.randn(runs, width, 1, generator=generator)
            sgd_bmm_step(ws, teacher, x, learning_rate)

    def sde_steps(n=16):
        for _ in range(n):
            z = torch.randn(runs, width, width, generator=generator)
            sde_bmm_step(sde_ws, teacher, z, learning_rate, step_size)

    one = [w[0].clone().requires_grad_(True) for w in ws]

    def autograd_steps(n=64):
        for _ in range(n):
            x = torch.randn(width, 1, generator=generator)
            out = x
            for w in one:
                out = w @ out
            loss = 0.5 * torch.sum((out - teacher @ x) ** 2)
            loss.backward()
            with torch.no_grad():
                for w in one:
                    w -= learning_rate * w.grad
                    w.grad = None

    sde_ws = [w.clone() for w in ws]
    counts = sorted({os.cpu_count() or 1, 1}, reverse=True)
    for threads in counts:
        torch.set_num_threads(threads)
        with torch.no_grad():
            sgd_steps(4)
            results[f"sgd_bmm_{threads}_threads"] = median_rate(sgd_steps, runs * 64, min_seconds, repeats)
            sde_steps(2)
            results[f"sde_bmm_{threads}_threads"] = median_rate(sde_steps, runs * 16, min_seconds, repeats)
        autograd_steps(4)
        results[f"sgd_autograd_{threads}_threads"] = median_rate(autograd_steps, 64, min_seconds, repeats)
    torch.set_num_threads(counts[0])
    for name in ("sgd_bmm", "sde_bmm", "sgd_autograd"):
        best = max(counts, key=lambda t, name=name: results[f"{name}_{t}_threads"])
        results[name], results[f"{name}_threads"] = results[f"{name}_{best}_threads"], best
    results["torch_version"] = torch.__version__
    return results


def torch_comparison(results: list[dict], *, runs: int = 1024, quick: bool = False,
                     min_seconds: float | None = None, progress: bool = True) -> list[dict]:
    """Rows for ``dlnlab bench --torch``: dlnlab's online SGD and anisotropic SDE (from the plain
    bench ``results`` of ``benchmarks.run_benchmarks``, measured in the same process) against the
    torch ``bmm`` loops (ratio dlnlab / torch-bmm), and the torch autograd loop against the bmm loop;
    where ``results`` has the SDE's floor row (``anisotropic_sde_floor``), that floor against the
    torch SDE loop too (``sde_floor_vs_torch``: the most any implementation of the step could gain
    over PyTorch on this machine). Same problem: d = 12, L = 4, B = 1, float32, ``runs`` runs
    (the bench's)."""
    if min_seconds is None:
        min_seconds = 1.0 if quick else 2.0
    by_name = {r["name"]: r for r in results}
    sgd, sde = by_name["online_sgd"], by_name["anisotropic_sde"]
    if progress:
        print("  ... PyTorch baselines (bmm loops over runs, autograd loop)", flush=True)
    rates = torch_rates(runs=runs, min_seconds=min_seconds)
    device = sgd["device"]
    note = f"torch {rates['torch_version']}"

    def threads(name):
        return f"{rates[name + '_threads']} thread" + ("s" if rates[name + "_threads"] != 1 else "")
    floor_rows = []
    if "anisotropic_sde_floor" in by_name:
        floor = by_name["anisotropic_sde_floor"]
        floor_rows.append(dict(
            name="sde_floor_vs_torch", config=sde["config"], run_steps_per_s=floor["run_steps_per_s"],
            baseline_run_steps_per_s=rates["sde_bmm"], ratio=floor["run_steps_per_s"] / rates["sde_bmm"],
            device=device, compile_s=float("nan"),
            baseline=f"PyTorch bmm structured sampler ({note}, {threads('sde_bmm')}): the most any "
                     "implementation of the SDE step could gain over it here (the floor row)"))
    return [
        dict(name="online_sgd_vs_torch", config=sgd["config"], run_steps_per_s=sgd["run_steps_per_s"],
             baseline_run_steps_per_s=rates["sgd_bmm"], ratio=sgd["run_steps_per_s"] / rates["sgd_bmm"],
             device=device, compile_s=sgd["compile_s"],
             baseline=f"PyTorch bmm over runs, Python loop over steps ({note}, {threads('sgd_bmm')})"),
        dict(name="sde_vs_torch", config=sde["config"], run_steps_per_s=sde["run_steps_per_s"],
             baseline_run_steps_per_s=rates["sde_bmm"], ratio=sde["run_steps_per_s"] / rates["sde_bmm"],
             device=device, compile_s=sde["compile_s"],
             baseline=f"PyTorch bmm structured sampler, Python loop ({note}, {threads('sde_bmm')})"),
        dict(name="torch_bmm_vs_autograd", config="L=4, d=12, B=1, float32: bmm loop "
             f"({runs} runs) against the per-step autograd loop (1 run)",
             run_steps_per_s=rates["sgd_bmm"], baseline_run_steps_per_s=rates["sgd_autograd"],
             ratio=rates["sgd_bmm"] / rates["sgd_autograd"], device=device, compile_s=float("nan"),
             baseline=f"PyTorch per-step loop with autograd ({note}, {threads('sgd_autograd')})"),
    ] + floor_rows
