"""The stationary mean shift of each teacher mode from the second-order expansion of the loss
(docs/theory.md §13; beyond the second seed paper, Phys. Rev. Research 6, 033103).

Near a global minimum ``theta*`` (``delta = theta - theta*``), SGD with learning rate ``eta`` and
batch size ``B`` satisfies *exactly*, online and with replacement,
``E[theta_{k+1}] = E[theta_k] - eta E[grad L(theta_k)]`` (the minibatch gradient is unbiased), so at
stationarity ``E[grad L(theta)] = 0``. Expanding to second order in ``delta``,

    H mu + ½ T:Sigma = 0,      (T:Sigma)_i = sum_jk T_ijk Sigma_jk = d_i tr(Hess L(theta) Sigma),

with ``H`` the Hessian, ``T`` the third derivative of the training loss at ``theta*``,
``mu = E[delta]`` and ``Sigma = E[delta delta^T]`` (``O(eta)``, the linearised stationary
covariance of docs/theory.md §12). On the range of ``H``, ``mu = -½ H^+ (T:Sigma)``; the kernel
part of ``T:Sigma`` (``kernel_force_fraction``) is a slow drift along the manifold of minima,
to which a gauge-invariant quantity is blind. The amplitude of teacher mode ``alpha``,
``a_alpha(theta) = u_alpha^T W_L ... W_1 v_alpha``, then has

    E[a_alpha] - s_alpha = grad a_alpha . mu + ½ tr(Hess a_alpha Sigma) + O(eta^2).

Both terms are ``O(eta)``. The noise's dependence on the state does not enter the mean equation
(it is exact for any noise of mean zero); it enters only through ``Sigma`` at the next order.
The ``O(eta)`` relative corrections of the discrete dynamics are carried by using the discrete
covariance (``Sigma`` of ``discrete_stationary_covariance``) instead of the continuous ``M``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from ..core.loss import training_loss
from ..core.products import flatten_weights, unflatten_weights
from ..core.task import Task
from .fluctuations import linearised_fluctuations

_COVARIANCES = ("discrete", "continuous", "sgd")


class MeanShift(NamedTuple):
    """Second-order stationary mean of every teacher mode (docs/theory.md §13).

    Per-mode arrays have the trailing mode axis of ``dlnlab.mode_amplitudes`` (``r = min(d_in,
    d_out)`` modes, teacher modes first; the zero modes beyond the teacher's rank included).
    """

    shift: np.ndarray            # (r,) E[a] - s = linear + curvature
    linear: np.ndarray           # (r,) grad a . mu: the shift of the mean weights
    curvature: np.ndarray        # (r,) ½ tr(Hess a Sigma): the fluctuations seen through a's curvature
    mean_displacement: np.ndarray  # mu (P,) on the range of H
    force: np.ndarray            # ½ T:Sigma (P,)
    kernel_force_fraction: float  # |Pi_ker ½ T:Sigma| / |½ T:Sigma|: drift along the minima
    covariance: np.ndarray       # Sigma (P, P) used (discrete or continuous)


def _eigen(covariance, size: int) -> tuple[np.ndarray, np.ndarray]:
    sigma = np.asarray(covariance, dtype=np.float64)
    if sigma.shape != (size, size):
        v.fail("covariance.shape", sigma.shape, f"must be (P, P) = ({size}, {size})")
    v.finite_array("covariance", sigma)
    lam, vec = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return lam, vec.T                                   # all P eigenpairs: one compiled shape


@partial(jax.jit, static_argnames=("widths",))
def _contract_third(theta, directions, weights, task, widths):
    def loss(t):
        return training_loss(unflatten_weights(t, widths), task)

    grad = jax.grad(loss)

    def second(direction):
        def hvp(t):
            return jax.jvp(grad, (t,), (direction,))[1]
        return jax.jvp(hvp, (theta,), (direction,))[1]

    return weights @ jax.lax.map(second, directions, batch_size=64)


def third_derivative_contraction(weights, task: Task, covariance) -> np.ndarray:
    """``(T:Sigma)_i = sum_jk d^3 L / d theta_i d theta_j d theta_k Sigma_jk`` at ``weights``, (P,).

    Computed as ``sum_k lambda_k D^2 grad L [e_k, e_k]`` over the eigenpairs of the symmetric
    ``Sigma`` (forward-over-forward-over-reverse JAX derivatives of the training loss, compiled
    once per widths; in the weights' dtype: use float64). Equals
    ``grad_theta tr(Hess L(theta) Sigma)``. Units: loss / theta. Source: docs/theory.md §13.
    Raises ``ValueError`` for mismatched shapes or a non-finite ``Sigma``.
    """
    widths = v.check_weights(weights, task.d_in, task.d_out)
    theta = flatten_weights(weights)
    lam, vec = covariance if isinstance(covariance, tuple) else _eigen(covariance, theta.shape[0])
    out = _contract_third(theta, jnp.asarray(vec, theta.dtype), jnp.asarray(lam, theta.dtype),
                          task, tuple(widths))
    return np.asarray(out, dtype=np.float64)


def _amplitudes(theta, left, right, widths):
    w = unflatten_weights(theta, widths)
    product = w[0]
    for layer in w[1:]:
        product = layer @ product
    return jnp.einsum("oa,oi,ia->a", left, product, right)


@partial(jax.jit, static_argnames=("widths",))
def _amplitude_derivatives(theta, directions, weights, left, right, widths):
    def amplitudes(t):
        return _amplitudes(t, left, right, widths)

    def second(direction):
        def first(t):
            return jax.jvp(amplitudes, (t,), (direction,))[1]
        return jax.jvp(first, (theta,), (direction,))[1]

    jac = jax.jacfwd(amplitudes)(theta)
    return jac, 0.5 * weights @ jax.lax.map(second, directions, batch_size=64)


def mode_amplitude_expansion(weights, task: Task, covariance) -> tuple[np.ndarray, np.ndarray]:
    """Gradient ``(r, P)`` of the mode amplitudes ``a_alpha = u_alpha^T W v_alpha`` at ``weights``
    and ``½ tr(Hess a_alpha Sigma)`` ``(r,)`` for the covariance ``Sigma`` ``(P, P)`` (JAX
    forward derivatives, compiled once per widths). Source: docs/theory.md §13."""
    widths = v.check_weights(weights, task.d_in, task.d_out)
    theta = flatten_weights(weights)
    lam, vec = covariance if isinstance(covariance, tuple) else _eigen(covariance, theta.shape[0])
    jac, curvature = _amplitude_derivatives(
        theta, jnp.asarray(vec, theta.dtype), jnp.asarray(lam, theta.dtype),
        jnp.asarray(task.left, theta.dtype), jnp.asarray(task.right, theta.dtype), tuple(widths))
    return np.asarray(jac, dtype=np.float64), np.asarray(curvature, dtype=np.float64)


def _end_to_end_flat(theta, widths):
    w = unflatten_weights(theta, widths)
    product = w[0]
    for layer in w[1:]:
        product = layer @ product
    return product.T.reshape(-1)                  # column-stacked vec W


@partial(jax.jit, static_argnames=("widths",))
def _residual_term(theta, directions, weights, widths):
    """``sum_{a,i} R_ai Sigma R_ai`` with ``R_ai`` the Hessian of ``<e_a e_i^T, W(theta)>``:
    ``sum_k lambda_k Y_k^T Y_k`` with ``Y_k = d/dtheta vec(DW(theta)[e_k])``."""
    def directional(t, e):
        return jax.jvp(lambda x: _end_to_end_flat(x, widths), (t,), (e,))[1]

    def body(total, pair):
        e, lam = pair
        y = jax.jacfwd(directional)(theta, e)                   # (d_out d_in, P)
        return total + lam * (y.T @ y), None

    size = theta.shape[0]
    total, _ = jax.lax.scan(body, jnp.zeros((size, size), theta.dtype), (directions, weights))
    return total


def _isotropic_online(task: Task) -> float:
    if not task.online or not task.whitened:
        v.fail("task", "offline or correlated inputs", "the multiplicative covariance is "
               "implemented for online tasks with whitened inputs")
    if task.label_covariance is None:
        return 0.0
    label = np.asarray(task.label_covariance, dtype=np.float64)
    sigma2 = float(label[0, 0])
    if not np.allclose(label, sigma2 * np.eye(label.shape[0]), rtol=1e-12, atol=0.0):
        v.fail("task.label_covariance", label, "must be isotropic (sigma^2 I) here")
    return sigma2


def _hessian_excess(covariance, jac, theta, widths, sigma2, d_in, d_out) -> np.ndarray:
    s_w = (jac @ covariance @ jac.T).reshape(d_in, d_out, d_in, d_out)     # [i, a, j, b]
    swapped = np.transpose(s_w, (2, 1, 0, 3))                              # S_W[(a,j),(b,i)]
    trace = np.einsum("kakb->ab", s_w)
    extra = swapped + np.einsum("ij,ab->iajb", np.eye(d_in), trace)
    extra = jac.T @ extra.reshape(d_in * d_out, d_in * d_out) @ jac
    if sigma2 > 0 and len(widths) > 2:
        lam, vec = _eigen(covariance, covariance.shape[0])
        extra = extra + sigma2 * np.asarray(_residual_term(
            theta, jnp.asarray(vec, theta.dtype), jnp.asarray(lam, theta.dtype), widths))
    return extra


def per_sample_hessian_excess(weights, task: Task, covariance) -> np.ndarray:
    """``E[h Sigma h] - H Sigma H`` ``(P, P)`` over one fresh sample ``(x, eps)`` at a minimum,
    ``h`` the per-sample Hessian of ``½|W(theta) x - y|^2`` (Isserlis for whitened Gaussian
    inputs plus the label-noise part ``sigma^2 sum_{a,i} R_ai Sigma R_ai``; docs/theory.md §13).
    Raises ``ValueError`` unless the task is online, whitened, with isotropic label noise."""
    sigma2 = _isotropic_online(task)
    widths = tuple(v.check_weights(weights, task.d_in, task.d_out))
    theta = flatten_weights(weights)
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (theta.shape[0],) * 2:
        v.fail("covariance.shape", cov.shape, f"must be (P, P) = ({theta.shape[0]}, {theta.shape[0]})")
    jac = np.asarray(jax.jacfwd(lambda t: _end_to_end_flat(t, widths))(theta), np.float64)
    return _hessian_excess(cov, jac, theta, widths, sigma2, task.d_in, task.d_out)


def sgd_discrete_covariance(weights, task: Task, learning_rate, batch_size=1, *,
                            rank_rtol: float = 1e-9, rtol: float = 1e-4,
                            max_iterations: int = 50) -> np.ndarray:
    """Stationary covariance of online SGD linearised at a minimum, with its random Hessian.

    One step of online SGD with ``B`` fresh samples, linearised at ``theta*``, is
    ``delta' = delta - eta (g_B + H_B delta)`` with the batch gradient ``g_B`` (covariance ``C``)
    and the batch Hessian ``H_B`` (mean ``H``), so

        Sigma = E[(I - eta H_B) Sigma (I - eta H_B)] + eta^2 C
              = (I - eta H) Sigma (I - eta H) + eta^2 (C + (E[h Sigma h] - H Sigma H) / B),

    ``h`` the per-sample Hessian ``J^T (x x^T ⊗ I) J - R(eps x^T)`` (docs/theory.md §13). For
    whitened Gaussian inputs (Isserlis) ``E[h Sigma h] - H Sigma H = J^T K J + sigma^2 sum_{a,i}
    R_ai Sigma R_ai`` with ``K[(a,i),(b,j)] = S_W[(a,j),(b,i)] + delta_ij sum_k S_W[(a,k),(b,k)]``,
    ``S_W = J Sigma J^T``. Solved on the range of ``H`` by iterating the discrete Lyapunov solve
    from §12's additive ``Sigma`` until the relative change is below ``rtol``; the part of the
    multiplicative noise in the kernel of ``H`` (a diffusion along the minima) is left out.
    ``(P, P)``, units theta^2. Raises ``ValueError`` unless the task is online with whitened
    inputs and isotropic (or no) label noise, for weights that are not a minimum, and when the
    iteration does not converge (``eta`` too large).
    """
    sigma2 = _isotropic_online(task)
    v.positive_int("max_iterations", max_iterations)
    fl = linearised_fluctuations(weights, task, learning_rate, batch_size, rank_rtol=rank_rtol)
    eta = float(learning_rate)
    basis, omega = fl.stationary.basis, fl.stationary.rates
    if not np.all(np.isfinite(fl.discrete_covariance)):
        v.fail("learning_rate", learning_rate, "eta * omega_max >= 2: no stationary law")
    widths = tuple(v.check_weights(weights, task.d_in, task.d_out))
    theta = flatten_weights(weights)
    jac = np.asarray(jax.jacfwd(lambda t: _end_to_end_flat(t, widths))(theta), np.float64)
    d_out, d_in = task.d_out, task.d_in
    denominator = omega[:, None] + omega[None, :] - eta * omega[:, None] * omega[None, :]
    current = fl.discrete_covariance
    for _ in range(max_iterations):
        extra = _hessian_excess(current, jac, theta, widths, sigma2, d_in, d_out)
        noise = fl.diffusion + extra / int(batch_size)
        tilde = eta * (basis.T @ noise @ basis) / denominator
        updated = basis @ tilde @ basis.T
        change = np.linalg.norm(updated - current) / max(np.linalg.norm(updated), 1e-300)
        current = 0.5 * (updated + updated.T)
        if change <= rtol:
            return current
        if not np.isfinite(change) or change > 1e6:
            break
    v.fail("learning_rate", learning_rate, f"the multiplicative covariance did not converge in "
           f"{max_iterations} iterations (eta too large)")


def stationary_mean_shift(weights, task: Task, learning_rate, batch_size=1,
                          replacement: bool = True, *, covariance: str = "discrete",
                          rank_rtol: float = 1e-9) -> MeanShift:
    """Second-order stationary mean of every mode's amplitude near the minimum ``weights``.

    ``E[a_alpha] - s_alpha = grad a_alpha . mu + ½ tr(Hess a_alpha Sigma)`` with
    ``mu = -½ H^+ (T:Sigma)`` (docs/theory.md §13): ``H``, ``C`` and the stationary covariance
    from :func:`~dlnlab.theory.linearised_fluctuations` (``covariance="discrete"``: ``Sigma`` of
    discrete SGD on the quadratic, ``(I - eta H) Sigma (I - eta H) + eta^2 C``; ``"continuous"``:
    the Lyapunov ``M``, ``H M + M H = eta C``; ``"sgd"``: :func:`sgd_discrete_covariance`, which
    adds the random per-sample Hessian of online SGD, the leading ``O(eta)`` correction at large
    input dimension). Units: amplitudes (the teacher's), ``eta`` per
    step with ``t = step * eta``. ``weights`` must be a minimum of the training loss (the
    balanced, aligned factorisation of the teacher is the one SGD reaches from a small start).

    Raises ``ValueError`` for bad inputs, weights that are not a minimum, an unknown
    ``covariance`` and (discrete) ``eta omega_max >= 2``.
    """
    if covariance not in _COVARIANCES:
        v.fail("covariance", covariance, f"must be one of {', '.join(_COVARIANCES)}")
    fl = linearised_fluctuations(weights, task, learning_rate, batch_size, replacement,
                                 rank_rtol=rank_rtol)
    if covariance == "sgd":
        sigma = sgd_discrete_covariance(weights, task, learning_rate, batch_size,
                                        rank_rtol=rank_rtol)
    else:
        sigma = fl.discrete_covariance if covariance == "discrete" else fl.stationary.covariance
    if not np.all(np.isfinite(sigma)):
        v.fail("learning_rate", learning_rate, "eta * omega_max >= 2: discrete SGD has no "
               "stationary law on the quadratic")
    eigen = _eigen(sigma, sigma.shape[0])            # shared by both contractions
    force = 0.5 * third_derivative_contraction(weights, task, eigen)
    basis, omega = fl.stationary.basis, fl.stationary.rates
    along = basis.T @ force
    mu = -basis @ (along / omega)
    norm = float(np.linalg.norm(force))
    kernel = float(np.linalg.norm(force - basis @ along)) / norm if norm > 0 else 0.0
    jac, curvature = mode_amplitude_expansion(weights, task, eigen)
    linear = jac @ mu
    return MeanShift(linear + curvature, linear, curvature, mu, force, kernel, sigma)


def solution_weights(task: Task, widths, key=None, layer_scales=None) -> tuple:
    """An aligned global minimum of the online loss: ``W_l = O_l diag(c_l) O_{l-1}^T`` over the
    teacher's ``k`` non-zero modes (``O_0 = V``, ``O_L = U``, the teacher's bases; hidden bases
    the first ``k`` coordinates, or Haar from ``key``); modes beyond the teacher's rank are zero
    in every layer (idle hidden units). Float64 numpy arrays ``(d_l, d_{l-1})``.

    ``layer_scales`` None: balanced, ``c_{l,alpha} = s_alpha^(1/L)`` (the minimum gradient flow
    reaches from a vanishing start). Otherwise positive ``(L,)`` or ``(L, k)`` factors ``f``,
    ``c_{l,alpha} = s_alpha^(1/L) f_{l,alpha} / (prod_m f_{m,alpha})^(1/L)``: the same end-to-end
    map with layer scales in the ratios ``f`` (the unbalanced points the noise drifts to,
    docs/theory.md §13). Raises ``ValueError`` for a teacher without a positive singular value,
    widths that do not fit, or non-positive scales.
    """
    from ..core.weights import init_aligned

    widths = v.widths_tuple("widths", widths)
    depth = len(widths) - 1
    s = np.asarray(task.spectrum, dtype=np.float64)
    rank = int(np.sum(s > 0))
    if rank == 0:
        v.fail("task.spectrum", s, "needs at least one positive singular value")
    weights = [np.asarray(w, dtype=np.float64)
               for w in init_aligned(task, s[:rank], widths, key=key, dtype=jnp.float64)]
    if layer_scales is None:
        return tuple(weights)
    f = np.asarray(layer_scales, dtype=np.float64)
    if f.ndim == 1:
        f = np.repeat(f[:, None], rank, axis=1)
    if f.shape != (depth, rank):
        v.fail("layer_scales.shape", f.shape, f"must be (L,) or (L, k) = ({depth}, {rank})")
    v.finite_array("layer_scales", f)
    if np.any(f <= 0):
        v.fail("layer_scales", f, "must be > 0")
    f = f / np.exp(np.mean(np.log(f), axis=0))          # product one per mode
    bases = _layer_bases(weights, task, rank)
    return tuple(w + (bases[l + 1] * (f[l] - 1.0) * np.diag(bases[l + 1].T @ w @ bases[l]))
                 @ bases[l].T for l, w in enumerate(weights))


def _layer_bases(weights, task: Task, rank: int) -> list[np.ndarray]:
    """Unit vectors ``o_{l,alpha}`` ``(d_l, k)`` that carry mode ``alpha`` through an aligned net."""
    vectors = np.asarray(task.right, dtype=np.float64)[:, :rank]
    bases = [vectors]
    for w in weights:
        vectors = w @ vectors
        vectors = vectors / np.linalg.norm(vectors, axis=0, keepdims=True)
        bases.append(vectors)
    return bases


def mode_layer_scales(weights, task: Task, rank: int) -> np.ndarray:
    """Per-layer scale of each mode, ``(..., L, k)``: ``c_{l,alpha} = |W_l o_{l-1,alpha}|`` with
    ``o_{0,alpha} = v_alpha`` and ``o_{l,alpha} = W_l o_{l-1,alpha} / c_{l,alpha}`` (the mode's
    path through the layers). At an aligned point ``prod_l c_{l,alpha} = a_alpha``; the ratios
    locate the point on the manifold of minima (balanced: all ``s_alpha^(1/L)``). ``weights``:
    layers ``(..., d_l, d_{l-1})`` (leading run/time axes allowed)."""
    vectors = np.asarray(task.right, dtype=np.float64)[:, :rank]
    vectors = np.broadcast_to(vectors, np.shape(weights[0])[:-2] + vectors.shape)
    scales = []
    for w in weights:
        vectors = np.asarray(w, dtype=np.float64) @ vectors
        norm = np.linalg.norm(vectors, axis=-2)
        scales.append(norm)
        vectors = vectors / norm[..., None, :]
    return np.stack(scales, axis=-2)


def rank_one_mean_shift(singular_value, depth: int, d_in: int, d_out: int, learning_rate,
                        batch_size=1, label_noise=0.0):
    """Closed form of the transverse theory at the balanced minimum of a rank-one teacher
    (online, whitened inputs, label noise ``sigma^2 I``, continuous-time covariance):

        E[a] - s = -(eta sigma^2 (L - 1) / 2B) s^(1 - 2/L) [1 + (d_in + d_out - 2) / L].

    The ``1`` is the one-mode law of docs/theory.md §9; each of the ``d_in - 1`` input and
    ``d_out - 1`` output directions orthogonal to the mode adds ``2/L`` of it (docs/theory.md
    §13). Hidden widths do not enter (idle hidden units). Raises ``ValueError`` for bad inputs.
    """
    v.finite_scalar("singular_value", singular_value, minimum=0.0, strict=True)
    depth = v.positive_int("depth", depth)
    d_in, d_out = v.positive_int("d_in", d_in), v.positive_int("d_out", d_out)
    v.finite_scalar("learning_rate", learning_rate, minimum=0.0, strict=True)
    batch_size = v.positive_int("batch_size", batch_size)
    v.finite_scalar("label_noise", label_noise, minimum=0.0)
    s = float(singular_value)
    return (-(learning_rate * label_noise ** 2 * (depth - 1) / (2.0 * batch_size))
            * s ** (1.0 - 2.0 / depth) * (1.0 + (d_in + d_out - 2) / depth))


__all__ = ["MeanShift", "mode_amplitude_expansion", "mode_layer_scales", "per_sample_hessian_excess",
           "rank_one_mean_shift", "sgd_discrete_covariance", "solution_weights",
           "stationary_mean_shift", "third_derivative_contraction"]
