"""The second paper's settings, its experiments' sizes and the decision rules its studies share.

“Weight fluctuations in (deep) linear neural networks and a derivation of the inverse-variance
flatness relation”, Phys. Rev. Research 6, 033103 (2024), doi:10.1103/PhysRevResearch.6.033103.
Its symbols in ours: its learning rate ``lambda`` is our ``training.learning_rate``, its minibatch
size ``S`` our ``training.batch_size``, its sample number ``P`` our ``task.num_samples``, its input dimension
``N`` our ``task.d_in``; its inputs have variance ``sigma_x^2 = 1/N`` per component
(``task.input_covariance = [1/N] * N``) and its labels ``y = u^T x + eps`` with ``u_i ~ N(0, 1)``
(a rank-one teacher of singular value ``|u| ~ sqrt(N)``) and label noise ``eps ~ N(0,
sigma_eps^2)`` (``task.label_noise = sigma_eps``).

Minibatches: the paper draws each minibatch as a random subset; we draw ``S`` samples with
replacement (``training.replacement = true``, batch factor ``1/S``), the law every theory curve
here uses (``dlnlab.noise_covariance(..., replacement=True)``). The paper's Table 1 notes that the
stationary properties do not depend on the choice; the batch factor differs by ``(P - S)/(P - 1)``.

The decision rules of the claims are fixed here, before looking at the results
(``docs/fluctuations.md``).
"""

from __future__ import annotations

import copy
import math

from ...experiments.config import ExperimentConfig, set_field, validate_config

N_INPUTS = 100            # the single-layer figures' input dimension N (Figs. 3, 5b)
LEARNING_RATE = 0.1       # lambda
BATCH_SIZE = 10           # S


def single_layer_task(num_inputs: int, num_samples: int, label_variance: float,
                      input_covariance=None) -> dict:
    """The ``[task]`` table of the paper's single-layer teacher-student setting (Sec. II A):
    ``N`` inputs of variance ``1/N`` (or the given ``input_covariance``), one output, a random
    teacher of norm ``sqrt(N)``, label-noise variance ``sigma_eps^2``, ``P`` fixed samples."""
    return {"d_in": num_inputs, "d_out": 1, "hidden": [],
            "spectrum": [math.sqrt(num_inputs)], "label_noise": math.sqrt(label_variance),
            "num_samples": num_samples,
            "input_covariance": (input_covariance if input_covariance is not None
                                 else [1.0 / num_inputs] * num_inputs)}


BASE_CONFIG: dict = {
    "task": single_layer_task(N_INPUTS, 2 * N_INPUTS, 1e-2),
    "init": {"kind": "gaussian", "gamma": 1.0, "at_minimum": True},
    "training": {"learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE, "replacement": True},
    "dtype": "float64",
}

# Decision rules of the claims, fixed before looking at the results (docs/fluctuations.md).
COVARIANCE_TOL = 0.02      # empirical SGD covariance within 2% relative Frobenius error of eq. 2.30
PSI_TOL = 0.05             # fitted second-layer psi within 0.05 of 2
FLAT_TOL = 0.1             # first-layer slope d log curvature / d log variance within 0.1 of 0
Z = 3.0                    # significance: 3 standard errors
CONFIDENCE = 0.95          # bootstrap intervals


def size(quick: bool, small, large):
    """``small`` for the quick run, ``large`` for the full one."""
    return small if quick else large


def paper_config(name: str, *, runs: int, horizon: float, points: int, methods=("sgd",),
                 variables=("loss", "amplitude", "diffusion", "parameters"), seed: int = 0,
                 changes: dict | None = None) -> ExperimentConfig:
    """The paper's single-layer setting with ``changes`` given as dotted field names, the same
    keys as ``dlnlab run --set`` (``{"task.num_samples": 105}``; ``{"task": {...}}`` replaces a
    whole table), validated like any config. Records linearly spaced (stationary statistics)."""
    data = copy.deepcopy(BASE_CONFIG)
    data.update(name=name, seed=seed, runs=runs, methods=list(methods))
    data["training"] = {**data["training"], "horizon": horizon}
    data["record"] = {"points": points, "spacing": "linear", "variables": list(variables)}
    for key, value in (changes or {}).items():
        if "." in key:
            set_field(data, key, value)
        else:
            data[key] = copy.deepcopy(value)
    return validate_config(data)
