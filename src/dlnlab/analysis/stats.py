"""Statistics with their uncertainties: means with standard errors, binomial intervals,
sample moments with their large-sample standard errors, ordinary least squares; medians and
quartiles over the finite entries, robust widths and a bootstrap standard error of their ratio."""

from __future__ import annotations

import math
import warnings

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


def _first_at_or_below(times: np.ndarray, probabilities: np.ndarray, level: float) -> float | None:
    """First time a right-continuous step function (values ``probabilities`` from ``times`` on)
    is ``<= level``; None if it never is. NaN values (an undefined interval bound where the
    estimate is 0) count as 0."""
    p = np.nan_to_num(probabilities, nan=0.0)
    hit = np.flatnonzero(p <= level + 1e-12)
    return float(times[hit[0]]) if hit.size else None


def censored_quantile(times, horizon, q: float = 0.5) -> float | None:
    """Kaplan-Meier ``q``-quantile of a time to event with right-censoring: the first time the
    survival estimate ``S(t)`` drops to ``1 - q`` or below (None when it never does within the
    data: not identified). ``times``: event times, NaN for a run without the event (censored at
    ``horizon``, a scalar or one value per run). Where ``S`` equals ``1 - q`` exactly over an
    interval, the midpoint of that interval (without censoring this is ``numpy.quantile``'s
    value at the median of an even sample)."""
    times, censor = _censoring(times, horizon)
    if times.size == 0 or not np.any(np.isfinite(times)):
        return None
    sf = _km(times, censor).sf
    return _km_quantile(sf.quantiles, sf.probabilities, np.isfinite(times), times, 1.0 - q)


def _censoring(times, horizon) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=np.float64).ravel()
    c = np.broadcast_to(np.asarray(horizon, dtype=np.float64), t.shape).astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"horizon={horizon!r}: must be finite (the time a run without the event "
                         "stopped being observed)")
    return t, c


def _km(times: np.ndarray, censor: np.ndarray):
    from scipy.stats import CensoredData, ecdf

    done = np.isfinite(times)
    return ecdf(CensoredData(uncensored=times[done], right=censor[~done]))


def _km_quantile(grid, probabilities, done, times, level) -> float | None:
    first = _first_at_or_below(grid, probabilities, level)
    if first is None:
        return None
    i = int(np.searchsorted(grid, first))
    if abs(probabilities[i] - level) > 1e-12:
        return first
    events = np.unique(times[done])
    later = events[events > first]
    below = [t for t in later if probabilities[int(np.searchsorted(grid, t))] < level - 1e-12]
    return float(0.5 * (first + below[0])) if below else None


def censored_median(times, horizon, confidence: float = 0.95) -> dict:
    """Median time to an event that some runs never reached: Kaplan-Meier with right-censoring.

    ``times``: per run, the event time (e.g. ``t_half``: first time ``a >= s/2``), NaN for a run
    that did not reach it within its observation; ``horizon``: when such a run stopped being
    observed (the last record time, or per run the time it diverged), same units as ``times``
    (t = step x learning rate). Taking the median over the runs that crossed would bias it
    down, the more the shorter the horizon (issue 16); here the survival estimate ``S(t)`` of
    ``scipy.stats.ecdf`` on ``scipy.stats.CensoredData`` decides: the median is the first time
    ``S <= 0.5`` (the midpoint where ``S = 0.5`` exactly over an interval, so with every run
    crossing it is the ordinary median), and its ``confidence`` interval the times where the
    pointwise log-log interval of ``S`` (``ECDFResult.sf.confidence_interval``) reaches 0.5
    (Brookmeyer and Crowley's construction). Kaplan and Meier, "Nonparametric estimation from
    incomplete observations", J. Am. Stat. Assoc. 53 (1958), doi:10.1080/01621459.1958.10501452.

    Returns ``{"median", "low", "high", "crossed", "runs", "horizon"}``: ``median`` None when
    not identified (``S`` never drops to 0.5: "not reached (> horizon)"), ``high`` None when the
    interval is open above, ``crossed`` the number of runs with the event, ``horizon`` the
    largest censoring time. Raises ``ValueError`` for a non-finite horizon.
    """
    t, c = _censoring(times, horizon)
    runs, crossed = int(t.size), int(np.sum(np.isfinite(t)))
    out = {"median": None, "low": None, "high": None, "crossed": crossed, "runs": runs,
           "horizon": float(np.max(c)) if c.size else None}
    if crossed == 0:
        return out
    result = _km(t, c)
    sf = result.sf
    done = np.isfinite(t)
    out["median"] = _km_quantile(sf.quantiles, sf.probabilities, done, t, 0.5)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = sf.confidence_interval(confidence_level=confidence, method="log-log")
    # Brookmeyer-Crowley: the median's interval is where the band around S crosses 0.5; an
    # undefined bound where S = 0 counts as 0.
    out["low"] = _first_at_or_below(ci.low.quantiles, ci.low.probabilities, 0.5)
    out["high"] = _first_at_or_below(ci.high.quantiles, ci.high.probabilities, 0.5)
    return out


def format_censored(stat: dict, spec: str = ".3g") -> str:
    """A :func:`censored_median` for a table: ``"8.05 [7.9, 8.2]"``, ``"8.05 [7.9, >150]"``
    (interval open above), with ``" (7/16)"`` appended when some runs did not cross, or
    ``"> 7 (7/16)"`` when the median is not identified ("not reached" within the horizon);
    ``"-"`` when there are no runs."""
    if not stat or not stat.get("runs"):
        return "-"
    share = "" if stat["crossed"] == stat["runs"] else f" ({stat['crossed']}/{stat['runs']})"
    if stat["median"] is None:
        return f"> {format(stat['horizon'], spec)}{share}"
    low = "-" if stat["low"] is None else format(stat["low"], spec)
    high = f">{format(stat['horizon'], spec)}" if stat["high"] is None else format(stat["high"], spec)
    return f"{format(stat['median'], spec)} [{low}, {high}]{share}"
