"""The teacher-student task: teacher ``M = U diag(s) V^T``, inputs, label noise, data (docs/theory.md §1).

A :class:`Task` is an immutable JAX pytree: every array is a leaf (so tasks can be passed into
``jit``-compiled code and vmapped over), and the *structure* (whitened or not, label noise or
not, online or offline) is static, so each combination compiles once.

Regime rule: with ``task.data is None`` training is *online* (fresh samples of the population
every step, objective = population loss); with a data set attached training is *offline*
(objective = empirical loss on ``task.data``). Every training quantity (gradient, noise,
modewise diffusion, Ito drift) follows that rule; ``population_loss`` is always the population.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validation as v
from .._types import Array


class DataSet(NamedTuple):
    """A fixed data set: ``inputs`` of shape ``(n, d_in)``, ``targets`` of shape ``(n, d_out)``."""

    inputs: Array
    targets: Array

    @property
    def num_samples(self) -> int:
        return self.inputs.shape[0]


def arithmetic_spectrum(rank: int, largest: float = 1.0) -> np.ndarray:
    """``s_k = largest * (rank - k + 1) / rank``, k = 1..rank; rank 3 gives (1, 2/3, 1/3)."""
    rank = v.positive_int("rank", rank)
    v.finite_scalar("largest", largest, minimum=0.0, strict=True)
    return largest * np.arange(rank, 0, -1, dtype=np.float64) / rank


def power_law_spectrum(rank: int, largest: float = 1.0, exponent: float = 1.0) -> np.ndarray:
    """``s_k = largest * k^(-exponent)``, k = 1..rank."""
    rank = v.positive_int("rank", rank)
    v.finite_scalar("largest", largest, minimum=0.0, strict=True)
    v.finite_scalar("exponent", exponent, minimum=0.0)
    return largest * np.arange(1, rank + 1, dtype=np.float64) ** (-exponent)


def random_orthonormal(key: Array, rows: int, cols: int, dtype=None) -> Array:
    """Haar-distributed ``rows x cols`` matrix with orthonormal columns (``cols <= rows``).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007), so
    the distribution is exactly Haar rather than biased by the QR convention.
    """
    g = jax.random.normal(key, (rows, cols), dtype=dtype or jnp.zeros(()).dtype)
    q, r = jnp.linalg.qr(g)
    signs = jnp.sign(jnp.diagonal(r))
    signs = jnp.where(signs == 0, 1.0, signs).astype(q.dtype)
    return q * signs[None, :]


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root (eigenvalues clipped at zero)."""
    w, q = np.linalg.eigh(matrix)
    return (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T


def _label_covariance(label_noise, d_out: int) -> np.ndarray | None:
    """``sigma`` (scalar, covariance ``sigma^2 I``) or a PSD ``(d_out, d_out)`` matrix."""
    if label_noise is None:
        return None
    arr = np.asarray(label_noise, dtype=np.float64)
    if arr.ndim == 0:
        v.finite_scalar("label_noise", float(arr), minimum=0.0)
        if float(arr) == 0.0:
            return None
        return float(arr) ** 2 * np.eye(d_out)
    v.psd_matrix("label_noise", arr, d_out)
    return arr


@jax.tree_util.register_pytree_node_class
class Task:
    """Teacher ``M``, input covariance ``S_x``, label-noise covariance ``S_eps``, optional data.

    Attributes (arrays; ``r = min(d_in, d_out)`` modes, the spectrum padded with zeros):

    - ``teacher`` ``(d_out, d_in)``: ``M = U diag(s) V^T``.
    - ``left`` ``(d_out, r)`` = ``U``, ``right`` ``(d_in, r)`` = ``V``, ``spectrum`` ``(r,)`` = ``s``
      (non-increasing).
    - ``input_covariance`` ``(d_in, d_in)`` or ``None`` (whitened, ``S_x = I``);
      ``input_sqrt`` its symmetric square root.
    - ``label_covariance`` ``(d_out, d_out)`` or ``None`` (no label noise); ``label_sqrt``.
    - ``data``: a :class:`DataSet` (offline) or ``None`` (online).

    Construct with ``Task(teacher=M, label_noise=sigma_or_matrix, input_covariance=None)`` (the
    modes come from the SVD of ``M``) or :meth:`Task.from_spectrum`.
    """

    def __init__(self, teacher, label_noise=None, input_covariance=None, *, dtype=None):
        m = np.asarray(teacher, dtype=np.float64)
        if m.ndim != 2 or m.size == 0:
            v.fail("teacher", teacher, "must be a non-empty 2-D matrix (d_out, d_in)")
        v.finite_array("teacher", m)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        self._set(m, u, s, vt.T, label_noise, input_covariance, None, dtype)

    @classmethod
    def from_spectrum(cls, key, d_in: int, d_out: int, spectrum: Sequence[float], *,
                      label_noise=None, input_covariance=None, left_basis=None,
                      right_basis=None, dtype=None) -> Task:
        """Teacher with singular values ``spectrum`` and Haar-random bases drawn from ``key``.

        ``spectrum``: any non-increasing, non-negative values (repeated values allowed), at most
        ``min(d_in, d_out)`` of them; the rest of the spectrum is zero. ``left_basis``
        ``(d_out, >= r)`` / ``right_basis`` ``(d_in, >= r)`` with orthonormal columns replace
        the random bases (``key`` may then be ``None``).
        """
        d_in = v.positive_int("d_in", d_in)
        d_out = v.positive_int("d_out", d_out)
        r = min(d_in, d_out)
        s = np.asarray(spectrum, dtype=np.float64).ravel()
        if s.size == 0:
            v.fail("spectrum", spectrum, "must hold at least one singular value")
        if s.size > r:
            v.fail("spectrum", spectrum,
                   f"rank {s.size} exceeds min(d_in, d_out) = {r}")
        v.finite_array("spectrum", s)
        if np.any(s < 0):
            v.fail("spectrum", spectrum, "singular values must be >= 0")
        if np.any(np.diff(s) > 0):
            v.fail("spectrum", spectrum, "must be non-increasing (s_1 >= s_2 >= ... >= 0)")
        s = np.concatenate([s, np.zeros(r - s.size)])
        if (left_basis is None or right_basis is None) and key is None:
            v.fail("key", key, "a PRNG key is needed to draw random bases")
        if key is not None:
            k_left, k_right = jax.random.split(key)
        u = (_basis("left_basis", left_basis, d_out, r) if left_basis is not None
             else _haar_f64(k_left, d_out, r))
        vv = (_basis("right_basis", right_basis, d_in, r) if right_basis is not None
              else _haar_f64(k_right, d_in, r))
        m = (u * s) @ vv.T
        task = object.__new__(cls)
        task._set(m, u, s, vv, label_noise, input_covariance, None, dtype)
        return task

    def _set(self, m, u, s, vv, label_noise, input_covariance, data, dtype):
        d_out, d_in = m.shape
        dtype = jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            v.fail("dtype", dtype, "must be a floating dtype (float32 or float64)")
        as_array = lambda x: None if x is None else jnp.asarray(x, dtype=dtype)  # noqa: E731
        label = _label_covariance(label_noise, d_out)
        if input_covariance is not None:
            v.psd_matrix("input_covariance", input_covariance, d_in)
            sx = np.asarray(input_covariance, dtype=np.float64)
        else:
            sx = None
        values = (as_array(m), as_array(u), as_array(s), as_array(vv), as_array(label),
                  as_array(None if label is None else _sym_sqrt(label)), as_array(sx),
                  as_array(None if sx is None else _sym_sqrt(sx)), data)
        for name, value in zip(self._FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ pytree protocol
    _FIELDS = ("teacher", "left", "spectrum", "right", "label_covariance", "label_sqrt",
               "input_covariance", "input_sqrt", "data")

    def tree_flatten(self):
        return tuple(getattr(self, f) for f in self._FIELDS), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        task = object.__new__(cls)
        for name, value in zip(cls._FIELDS, children, strict=True):
            object.__setattr__(task, name, value)
        return task

    def __setattr__(self, name, value):
        raise AttributeError(f"Task is immutable: use task.replace({name}=...) or a constructor")

    def replace(self, **changes) -> Task:
        """A copy with some fields replaced (no validation: the caller keeps them consistent)."""
        children = [changes.pop(f, getattr(self, f)) for f in self._FIELDS]
        if changes:
            v.fail("replace", sorted(changes), f"unknown Task fields; known: {self._FIELDS}")
        return Task.tree_unflatten(None, children)

    # ------------------------------------------------------------------ properties
    @property
    def d_in(self) -> int:
        return self.teacher.shape[1]

    @property
    def d_out(self) -> int:
        return self.teacher.shape[0]

    @property
    def num_modes(self) -> int:
        return self.spectrum.shape[0]

    @property
    def whitened(self) -> bool:
        return self.input_covariance is None

    @property
    def online(self) -> bool:
        return self.data is None

    @property
    def dtype(self):
        return self.teacher.dtype

    @property
    def label_noise_std(self):
        """Scalar ``sigma`` when ``S_eps = sigma^2 I`` (0 without label noise).

        Raises for an anisotropic label-noise matrix, where no single ``sigma`` exists.
        """
        if self.label_covariance is None:
            return jnp.zeros((), self.dtype)
        cov = self.label_covariance
        if v.is_concrete(cov):
            c = np.asarray(cov)
            iso = c[0, 0] * np.eye(c.shape[0])
            if np.abs(c - iso).max() > 1e-12 * max(abs(c[0, 0]), 1e-300):
                v.fail("label_noise", c, "is not isotropic (sigma^2 I): no scalar sigma")
        return jnp.sqrt(cov[0, 0])

    def input_cov(self):
        """``S_x`` as a matrix (identity when whitened)."""
        if self.input_covariance is None:
            return jnp.eye(self.d_in, dtype=self.dtype)
        return self.input_covariance

    # ------------------------------------------------------------------ data sets
    def with_data(self, key, num_samples: int) -> Task:
        """Offline copy of this task with ``num_samples`` i.i.d. samples drawn from ``key``."""
        num_samples = v.positive_int("num_samples", num_samples)
        x, y = sample_batch(key, self.replace(data=None), num_samples)
        return self.replace(data=DataSet(x, y))

    def with_dataset(self, inputs, targets) -> Task:
        """Offline copy of this task training on the given ``inputs (n, d_in)``, ``targets``."""
        x = jnp.asarray(inputs, dtype=self.dtype)
        y = jnp.asarray(targets, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            v.fail("inputs.shape", x.shape, f"must be (n, d_in={self.d_in})")
        if y.shape != (x.shape[0], self.d_out):
            v.fail("targets.shape", y.shape, f"must be (n={x.shape[0]}, d_out={self.d_out})")
        v.finite_array("inputs", x)
        v.finite_array("targets", y)
        return self.replace(data=DataSet(x, y))

    def online_task(self) -> Task:
        """This task with the data set dropped (population / online regime)."""
        return self.replace(data=None)

    def __repr__(self) -> str:
        regime = "online" if self.online else f"offline n={self.data.num_samples}"
        noise = "none" if self.label_covariance is None else "yes"
        return (f"Task(d_in={self.d_in}, d_out={self.d_out}, spectrum={np.asarray(self.spectrum)}"
                f", whitened={self.whitened}, label_noise={noise}, {regime})")


def _haar_f64(key, rows: int, cols: int) -> np.ndarray:
    """Haar basis drawn in float32 (so one key gives one teacher in either precision), then
    re-orthonormalised in float64 so that ``M``'s SVD is exact to float64 rounding."""
    q = np.asarray(random_orthonormal(key, rows, cols, jnp.float32), dtype=np.float64)
    q2, r = np.linalg.qr(q)
    return q2 * np.sign(np.diagonal(r))[None, :]


def _basis(name: str, basis, rows: int, r: int) -> np.ndarray:
    b = np.asarray(basis, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != rows or b.shape[1] < r:
        v.fail(f"{name}.shape", b.shape, f"must be ({rows}, >= {r})")
    b = b[:, :r]
    if np.abs(b.T @ b - np.eye(r)).max() > 1e-6:
        v.fail(name, basis, "columns must be orthonormal")
    return b


def sample_batch(key, task: Task, batch_size: int) -> tuple[Array, Array]:
    """Fresh samples ``x ~ N(0, S_x)``, ``y = M x + eps`` (online), shapes ``(B, d_in)``, ``(B, d_out)``."""
    if v.is_concrete(batch_size):
        v.positive_int("batch_size", batch_size)
    k_x, k_eps = jax.random.split(key)
    x = jax.random.normal(k_x, (batch_size, task.d_in), dtype=task.dtype)
    if not task.whitened:
        x = x @ task.input_sqrt
    y = x @ task.teacher.T
    if task.label_covariance is not None:
        eps = jax.random.normal(k_eps, (batch_size, task.d_out), dtype=task.dtype)
        y = y + eps @ task.label_sqrt
    return x, y
