"""Certification of critical points on the true population loss, and refinement towards them.

Certificate (docs/saddles.md, "Certification"): the gradient norm and the small end of the Hessian
spectrum of the *true* DLN loss ``L(theta) = 0.5 tr(D S_x D^T) + 0.5 tr S_eps`` -- never the surrogate
energy. Classes, with the tolerances below:

- ``not critical``       ``||grad L|| > tol_grad``;
- ``strict saddle``      critical and ``lambda_min < -tol_eig``;
- ``minimum``            critical, ``lambda_min >= -tol_eig`` and ``L - L_min <= tol_loss``;
- ``non-strict saddle``  critical, ``lambda_min >= -tol_eig`` and ``L - L_min > tol_loss``.

The ``minimum`` rule rests on the landscape theorem for deep linear networks with the square loss:
every local minimum is global (Kawaguchi 2016; Lu & Kawaguchi 2017; Laurent & Brecht 2018), with
``L_min = 0.5 sum_{k > k_cap} sigma_k(M S_x^{1/2})^2 + 0.5 tr S_eps``, ``k_cap = min_l d_l``.
A critical point with a positive semi-definite Hessian above ``L_min`` is therefore a saddle whose
escape direction is of higher order (e.g. the origin for ``L >= 3``).

Tolerances (``eps`` = machine epsilon of the weights' dtype; ``P`` the number of parameters;
defaults ``grad_rtol = loss_rtol = sqrt(eps)``, ``eig_rtol = 10 eps``):

- ``tol_grad = grad_rtol * G`` with ``G = sqrt(sum_l ||A_l||_F^2 ||B_l||_F^2) * ||S_x||_2
  * (||W||_F + ||M||_F)``, an upper bound of ``||grad L||`` over all errors ``||D|| <= ||W|| + ||M||``
  (so the rounding error of the computed gradient is ``O(L eps G)``);
- ``tol_eig = eig_rtol * sqrt(P) * h + sqrt(L) * ||grad L|| / ||theta||`` with the spectral scale
  ``h = max |lambda|``. The first term is the rounding error of a computed eigenvalue: the
  symmetric eigensolver is backward stable, ``|lambda_hat - lambda| <= p(P) eps ||H||_2``
  (Golub & Van Loan, *Matrix Computations*, 4th ed., §8.3.3 and Thm. 8.1.6 (Weyl)), and the
  Hessian formed by forward differentiation of the gradient carries entry errors of a few
  ``eps`` times its scale; rounding errors of ``P`` terms accumulate like ``sqrt(P) eps`` (Higham
  & Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41,
  2019), so ``p(P) = c sqrt(P)``. Measured in float32 against float64 at exact saddles
  (``P = 8 ... 384``, depths 2-4): ``|lambda_hat - lambda| <= 0.5 sqrt(P) eps h``; ``c = 10``
  leaves a factor 20. The old default ``sqrt(eps) h`` was 3e3 times looser in float32 and called
  the strict saddle of spectrum ``(1, 5e-4)`` (``lambda_min = -5e-4``, ``h = 2``) a minimum.
  The second term bounds how far the zero curvature of gauge directions moves at a point that is
  only approximately critical (``t^T H t = -grad L . t'`` along a gauge orbit);
- ``tol_loss = loss_rtol * L0`` with the loss scale ``L0 = 0.5 ||M S_x^{1/2}||_F^2``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import _validation as v
from .._types import Array
from ..core.loss import population_gradient, population_loss
from ..core.products import end_to_end, flatten_weights, partial_products, unflatten_weights
from ..core.task import Task
from .hessian import dense_hessian, flat_hessian_vector_product, hessian_lanczos

NOT_CRITICAL, STRICT_SADDLE, NON_STRICT_SADDLE, MINIMUM = 0, 1, 2, 3
CLASS_NAMES = ("not critical", "strict saddle", "non-strict saddle", "minimum")

DENSE_MAX_PARAMETERS = 2000


EIGENVALUE_ROUNDING = 10.0
"""``c`` in the default ``eig_rtol = c eps`` (``tol_eig = eig_rtol sqrt(P) h + ...``; module
docstring: measured rounding is ``<= 0.5 sqrt(P) eps h``)."""


class Tolerances(NamedTuple):
    """Relative tolerances (module docstring); ``None`` means the dtype's default:
    ``sqrt(eps)`` for ``grad_rtol`` and ``loss_rtol``, ``10 eps`` for ``eig_rtol`` (which
    multiplies ``sqrt(P) h``: ``tol_eig = eig_rtol sqrt(P) h + sqrt(L) ||grad L|| / ||theta||``)."""

    grad_rtol: float | None = None
    eig_rtol: float | None = None
    loss_rtol: float | None = None

    def resolve(self, dtype) -> tuple[float, float, float]:
        """``(grad_rtol, eig_rtol, loss_rtol)`` with the defaults of ``dtype`` filled in."""
        eps = float(jnp.finfo(dtype).eps)
        defaults = {"grad_rtol": math.sqrt(eps), "eig_rtol": EIGENVALUE_ROUNDING * eps,
                    "loss_rtol": math.sqrt(eps)}
        values = []
        for name in self._fields:
            value = getattr(self, name)
            if value is None:
                value = defaults[name]
            v.finite_scalar(name, value, minimum=0.0)
            values.append(float(value))
        return tuple(values)


class Certificate(NamedTuple):
    """Certificate of one point (arrays; a leading axis when vmapped over points).

    ``smallest_eigenvalues`` ``(k,)`` ascending (dense eigenvalues, or Ritz values, which are upper
    bounds of the corresponding eigenvalues); ``eigenvalue_residuals`` ``(k,)`` (0 for dense);
    ``bottom_eigenvector`` ``(P,)`` (unit, for the smallest eigenvalue); ``index`` (dense: exact
    count below ``-tol_eig``; Lanczos: stochastic-Lanczos-quadrature estimate) with
    ``index_standard_error``; ``index_lower_bound`` (number of eigenvalues / Ritz values below
    ``-tol_eig``: by interlacing a rigorous lower bound); ``nullity`` (count within ``tol_eig`` of 0,
    dense exact, Lanczos estimate) with ``nullity_standard_error``; ``classification`` (int code,
    :data:`CLASS_NAMES`).
    """

    loss: Array
    minimum_loss: Array
    gradient_norm: Array
    gradient_tolerance: Array
    smallest_eigenvalues: Array
    eigenvalue_residuals: Array
    bottom_eigenvector: Array
    spectral_scale: Array
    eigenvalue_tolerance: Array
    loss_tolerance: Array
    index: Array
    index_standard_error: Array
    index_lower_bound: Array
    nullity: Array
    nullity_standard_error: Array
    classification: Array


def minimum_loss(task: Task, widths) -> Array:
    """``L_min = 0.5 sum_{k > k_cap} sigma_k(M S_x^{1/2})^2 + 0.5 tr S_eps``, ``k_cap = min(widths)``.

    The global minimum of the population loss over networks of these widths (Eckart-Young on the
    whitened error ``(W - M) S_x^{1/2}``).
    """
    widths = v.widths_tuple("widths", widths)
    m = task.teacher if task.whitened else task.teacher @ task.input_sqrt
    s = jnp.linalg.svd(m, compute_uv=False)
    cap = min(widths)
    tail = jnp.sum(s[cap:] ** 2)
    noise = 0.0 if task.label_covariance is None else jnp.trace(task.label_covariance)
    return 0.5 * tail + 0.5 * noise


def loss_scale(task: Task) -> Array:
    """``L0 = 0.5 ||M S_x^{1/2}||_F^2`` (the loss at the origin above the noise floor)."""
    return 0.5 * jnp.sum(task.teacher * (task.teacher @ task.input_cov()))


def gradient_scale(weights, task: Task) -> Array:
    """``G = sqrt(sum_l ||A_l||_F^2 ||B_l||_F^2) * ||S_x||_2 * (||W||_F + ||M||_F)``."""
    lefts, rights = partial_products(weights)
    factors = sum(jnp.sum(a * a) * jnp.sum(b * b) for a, b in zip(lefts, rights, strict=True))
    sx = 1.0 if task.whitened else jnp.linalg.norm(task.input_covariance, ord=2)
    return jnp.sqrt(factors) * sx * (jnp.linalg.norm(end_to_end(weights)) + jnp.linalg.norm(task.teacher))


def classify(gradient_norm, gradient_tolerance, smallest_eigenvalue, eigenvalue_tolerance,
             loss, minimum_loss_value, loss_tolerance) -> Array:
    """Integer class code (:data:`CLASS_NAMES`) from the certificate's numbers (module docstring)."""
    critical = gradient_norm <= gradient_tolerance
    strict = smallest_eigenvalue < -eigenvalue_tolerance
    at_minimum = loss - minimum_loss_value <= loss_tolerance
    return jnp.where(~critical, NOT_CRITICAL,
                     jnp.where(strict, STRICT_SADDLE,
                               jnp.where(at_minimum, MINIMUM, NON_STRICT_SADDLE))).astype(jnp.int32)


def choose_method(num_parameters: int, method: str = "auto", dense_max: int = DENSE_MAX_PARAMETERS) -> str:
    """``"dense"`` for ``P <= dense_max`` under ``"auto"``; else ``"lanczos"``."""
    if method not in ("auto", "dense", "lanczos"):
        v.fail("method", method, "must be 'auto', 'dense' or 'lanczos'")
    if method == "auto":
        return "dense" if num_parameters <= dense_max else "lanczos"
    return method


def certify(key, weights, task: Task, *, method: str = "auto", num_eigenvalues: int = 6,
            num_blocks: int = 40, block_size: int = 8, tolerances: Tolerances | None = None,
            dense_max: int = DENSE_MAX_PARAMETERS) -> Certificate:
    """Certify one point: gradient norm, smallest Hessian eigenvalues, index, nullity, class.

    ``method``: ``"dense"`` (``eigh`` of the ``P x P`` Hessian), ``"lanczos"`` (block Lanczos,
    ``num_blocks`` blocks of ``block_size`` Hessian-vector products; ``key`` draws the start block)
    or ``"auto"`` (dense for ``P <= dense_max``). Pure and jit/vmap-able for a fixed method.
    """
    widths = v.check_weights(weights, task.d_in, task.d_out)
    p = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    method = choose_method(p, method, dense_max)
    num_eigenvalues = v.positive_int("num_eigenvalues", num_eigenvalues)
    if method == "lanczos":
        if key is None:
            v.fail("key", key, "the Lanczos method needs a PRNG key for its start block")
        num_blocks = v.positive_int("num_blocks", num_blocks)
        block_size = v.positive_int("block_size", block_size)
        if num_blocks * block_size > p:
            v.fail("num_blocks", num_blocks, f"num_blocks * block_size = {num_blocks * block_size} "
                   f"exceeds P = {p}")
        num_eigenvalues = min(num_eigenvalues, num_blocks * block_size)
    else:
        num_eigenvalues = min(num_eigenvalues, p)
    tolerances = Tolerances() if tolerances is None else tolerances
    grad_rtol, eig_rtol, loss_rtol = tolerances.resolve(weights[0].dtype)
    weights = tuple(weights)
    theta = flatten_weights(weights)
    loss = population_loss(weights, task)
    grad_norm = jnp.linalg.norm(flatten_weights(population_gradient(weights, task)))
    grad_tol = grad_rtol * gradient_scale(weights, task)
    theta_norm = jnp.linalg.norm(theta)
    gauge_term = jnp.where(theta_norm > 0, math.sqrt(len(weights)) * grad_norm
                           / jnp.where(theta_norm > 0, theta_norm, 1.0), 0.0)
    l_min = minimum_loss(task, widths)
    loss_tol = loss_rtol * loss_scale(task)
    dtype = theta.dtype
    if method == "dense":
        evals, evecs = jnp.linalg.eigh(dense_hessian(weights, task))
        scale = jnp.max(jnp.abs(evals))
        eig_tol = eig_rtol * math.sqrt(p) * scale + gauge_term
        smallest = evals[:num_eigenvalues]
        residuals = jnp.zeros_like(smallest)
        bottom = evecs[:, 0]
        index = jnp.sum(evals < -eig_tol).astype(dtype)
        nullity = jnp.sum(jnp.abs(evals) <= eig_tol).astype(dtype)
        index_low, index_se, nullity_se = index, jnp.zeros((), dtype), jnp.zeros((), dtype)
    else:
        lanczos = hessian_lanczos(key, weights, task, num_blocks, block_size)
        ritz = lanczos.ritz_values
        scale = jnp.max(jnp.abs(ritz))
        eig_tol = eig_rtol * math.sqrt(p) * scale + gauge_term
        smallest = ritz[:num_eigenvalues]
        residuals = lanczos.ritz_residuals[:num_eigenvalues]
        bottom = lanczos.basis @ lanczos.ritz_coefficients[:, 0]
        bottom = bottom / jnp.linalg.norm(bottom)
        index_low = jnp.sum(ritz < -eig_tol).astype(dtype)
        # stochastic Lanczos quadrature: per probe column j, P * sum_k f(theta_k) (q_j . x_k)^2.
        # A node counts as zero when its Ritz residual cannot exclude 0 (|theta_k| <= max(tol, r_k)):
        # the interior zero cluster (gauge directions) converges slowly.
        band = jnp.maximum(eig_tol, lanczos.ritz_residuals)
        per_probe_index = p * lanczos.probe_weights @ (ritz < -band).astype(dtype)
        per_probe_null = p * lanczos.probe_weights @ (jnp.abs(ritz) <= band).astype(dtype)
        index, index_se = _mean_and_error(per_probe_index)
        nullity, nullity_se = _mean_and_error(per_probe_null)
    classification = classify(grad_norm, grad_tol, smallest[0], eig_tol, loss, l_min, loss_tol)
    return Certificate(loss, l_min, grad_norm, grad_tol, smallest, residuals, bottom, scale, eig_tol,
                       loss_tol, index, index_se, index_low, nullity, nullity_se, classification)


def _mean_and_error(samples: Array) -> tuple[Array, Array]:
    n = samples.shape[0]
    mean = jnp.mean(samples)
    if n < 2:
        return mean, jnp.full((), jnp.nan, samples.dtype)
    return mean, jnp.std(samples, ddof=1) / math.sqrt(n)


# ------------------------------------------------------------------------------- refinement
def rebalance(weights) -> tuple[Array, ...]:
    """Equalise layer Frobenius norms by scalars ``c_l`` with ``prod c_l = 1`` (a gauge move).

    ``W_l -> c_l W_l``, ``c_l = (prod_m ||W_m||_F)^{1/L} / ||W_l||_F``; the end-to-end map, the loss
    and criticality are unchanged (``grad_l -> grad_l / c_l``). No-op if a layer is zero.
    """
    norms = jnp.stack([jnp.linalg.norm(w) for w in weights])
    positive = jnp.all(norms > 0)
    safe = jnp.where(positive, norms, 1.0)
    geometric = jnp.exp(jnp.mean(jnp.log(safe)))
    factors = jnp.where(positive, geometric / safe, 1.0)
    return tuple(w * f for w, f in zip(weights, factors, strict=True))


class RefineInfo(NamedTuple):
    """Per-iteration diagnostics of :func:`refine`: gradient norm after the iteration, damping,
    whether the Levenberg-Marquardt step was accepted."""

    gradient_norm: Array
    damping: Array
    accepted: Array


def refine(weights, task: Task, *, num_iterations: int = 30, rebalance_every: int = 10,
           cg_iterations: int = 100, damping: float = 1.0):
    """Drive ``grad L -> 0`` on the true loss by Levenberg-Marquardt on the gradient equation.

    Solves ``min_d ||g + H d||^2 + mu ||d||^2`` (``g = grad L``, ``H`` the Hessian), i.e.
    ``(H^2 + mu I) d = -H g``, matrix-free by conjugate gradients with Hessian-vector products
    (``cg_iterations`` at most); ``mu = damping * ||g||`` (Fan & Yuan 2005), the damping factor
    divided by 3 after an accepted step and multiplied by 10 after a rejected one (a step is
    accepted iff it lowers ``||grad L||``). Converges to saddles as well as minima (it never uses
    the sign of the curvature). Every ``rebalance_every`` iterations (0: never) the layer norms are
    re-balanced (:func:`rebalance`). Returns ``(weights, RefineInfo)`` with ``(num_iterations,)``
    diagnostics. Pure and jit-able.
    """
    widths = v.check_weights(weights, task.d_in, task.d_out)
    num_iterations = v.positive_int("num_iterations", num_iterations)
    cg_iterations = v.positive_int("cg_iterations", cg_iterations)
    if isinstance(rebalance_every, bool) or not isinstance(rebalance_every, int) or rebalance_every < 0:
        v.fail("rebalance_every", rebalance_every, "must be an integer >= 0 (0: never)")
    v.finite_scalar("damping", damping, minimum=0.0, strict=True)
    widths = tuple(widths)

    def grad(theta):
        return flatten_weights(population_gradient(unflatten_weights(theta, widths), task))

    def body(carry, i):
        theta, factor = carry
        if rebalance_every:
            theta = jax.lax.cond(
                (i % rebalance_every == 0) & (i > 0),
                lambda t: flatten_weights(rebalance(unflatten_weights(t, widths))),
                lambda t: t, theta)
        g = grad(theta)
        g_norm = jnp.linalg.norm(g)
        mu = factor * g_norm

        def normal_operator(x):
            return flat_hessian_vector_product(theta, widths, task,
                                               flat_hessian_vector_product(theta, widths, task, x)) + mu * x

        rhs = -flat_hessian_vector_product(theta, widths, task, g)
        step, _ = jax.scipy.sparse.linalg.cg(normal_operator, rhs, maxiter=cg_iterations)
        candidate = theta + step
        new_norm = jnp.linalg.norm(grad(candidate))
        accept = jnp.isfinite(new_norm) & (new_norm < g_norm)
        theta = jnp.where(accept, candidate, theta)
        factor = jnp.where(accept, jnp.maximum(factor / 3.0, 1e-12), jnp.minimum(factor * 10.0, 1e12))
        return (theta, factor), RefineInfo(jnp.where(accept, new_norm, g_norm), mu, accept)

    theta0 = flatten_weights(tuple(weights))
    init = (theta0, jnp.asarray(damping, theta0.dtype))
    (theta, _), info = jax.lax.scan(body, init, jnp.arange(num_iterations))
    return unflatten_weights(theta, widths), info
