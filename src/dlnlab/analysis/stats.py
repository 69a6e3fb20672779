"""Statistics with their uncertainties: means with standard errors, binomial intervals,
sample moments with their large-sample standard errors, ordinary least squares; medians and
quartiles over the finite entries, robust widths and a bootstrap standard error of their ratio."""

from __future__ import annotations

import math

import numpy as np


def finite_median(x) -> float:
    """Median over the finite entries of ``x`` (NaN if there is none)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def finite_quartiles(x) -> tuple[float, float]:
    """25th and 75th percentiles over the finite entries of ``x`` (NaNs if there is none)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return (float(np.percentile(x, 25)), float(np.percentile(x, 75))) if x.size else (math.nan,) * 2


def median_abs_deviation_from(x, centre: float) -> float:
    """Robust width of a law concentrating at ``centre``: the median of ``|x - centre|`` over the
    finite entries (the sd of such a law is ruled by a few late runs)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.median(np.abs(x[np.isfinite(x)] - centre)))


def bootstrap_ratio_se(x, y, statistic, draws: int = 400, seed: int = 0) -> float:
    """Bootstrap standard error of ``statistic(x) / statistic(y)`` (finite entries, ``x`` and
    ``y`` resampled independently, ``draws`` resamples from ``numpy.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    ratios = [statistic(rng.choice(x, x.size)) / statistic(rng.choice(y, y.size))
              for _ in range(draws)]
    return float(np.std(ratios, ddof=1))


def mean_and_se(x) -> tuple[float, float, int]:
    """Mean, its standard error ``sd / sqrt(n)`` and ``n`` over the finite entries."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, 0
    se = float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(np.mean(x)), se, n


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0 and 1, unlike p ± 2 SE)."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def moments_with_se(x) -> dict:
    """Mean, sd, skewness and excess kurtosis with standard errors (``sqrt(6/n)``, ``sqrt(24/n)``
    under normality: the yardstick for "approximately Gaussian")."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    mean, se, _ = mean_and_se(x)
    centred = x - mean
    m2 = float(np.mean(centred**2))
    skew = float(np.mean(centred**3) / m2**1.5) if m2 > 0 else math.nan
    kurt = float(np.mean(centred**4) / m2**2 - 3.0) if m2 > 0 else math.nan
    return {"n": n, "mean": mean, "mean_se": se, "sd": float(np.std(x, ddof=1)) if n > 1 else math.nan,
            "skewness": skew, "skewness_se": math.sqrt(6.0 / n) if n else math.nan,
            "excess_kurtosis": kurt, "excess_kurtosis_se": math.sqrt(24.0 / n) if n else math.nan}


def linear_fit(x, y) -> dict:
    """Ordinary least squares ``y = slope x + intercept`` with standard errors and ``R^2``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 2:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "slope_se": math.nan,
                "intercept_se": math.nan, "n": n}
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (slope * x + intercept)
    ss_res, ss_tot = float(np.sum(resid**2)), float(np.sum((y - ym) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    if n > 2:
        s2 = ss_res / (n - 2)
        slope_se = math.sqrt(s2 / sxx)
        intercept_se = math.sqrt(s2 * (1.0 / n + xm**2 / sxx))
    else:
        slope_se = intercept_se = math.nan
    return {"slope": slope, "intercept": intercept, "r2": r2, "slope_se": slope_se,
            "intercept_se": intercept_se, "n": n}
