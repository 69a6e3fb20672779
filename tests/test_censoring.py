"""Time-to-event statistics with runs that never got there (issue 16, item 2): right-censored
Kaplan-Meier medians, one rule used by the run table and the studies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlnlab.analysis import learning_events
from dlnlab.analysis.stats import censored_median, censored_quantile, format_censored
from dlnlab.experiments import run_experiment, summarise, validate_config
from dlnlab.experiments.run_table import summary_rows


def _km_by_hand(times, censor):
    """Independent Kaplan-Meier: (event time, S after it, Greenwood sum) per distinct event."""
    t = np.asarray(times, float)
    c = np.broadcast_to(np.asarray(censor, float), t.shape)
    obs = np.where(np.isfinite(t), t, c)
    event = np.isfinite(t)
    s, green, out = 1.0, 0.0, []
    for u in np.unique(obs[event]):
        at_risk = int(np.sum(obs >= u))
        d = int(np.sum((obs == u) & event))
        s *= 1 - d / at_risk
        green += d / (at_risk * (at_risk - d)) if at_risk > d else math.inf
        out.append((float(u), s, green))
    return out


def test_km_median_by_hand_with_censoring_in_the_middle():
    # Runs: events at 1, 3, 4, 6; one run stopped being observed at 2.5 without the event.
    times = [1.0, np.nan, 3.0, 4.0, 6.0]
    censor = [10.0, 2.5, 10.0, 10.0, 10.0]
    # S(1) = 4/5, S(3) = 4/5 * 2/3 = 0.533, S(4) = 0.533 * 1/2 = 0.267: the median is 4
    # (the median over the runs that crossed would say 3.5).
    stat = censored_median(times, censor)
    assert stat["median"] == pytest.approx(4.0)
    assert (stat["crossed"], stat["runs"], stat["horizon"]) == (4, 5, 10.0)
    hand = _km_by_hand(times, censor)
    assert [round(s, 12) for _, s, _ in hand] == [round(x, 12) for x in (0.8, 0.8 * 2 / 3, 0.8 / 3, 0.0)]
    # 95% interval: where the log-log band of S reaches 0.5 (Brookmeyer-Crowley), by hand.
    z = 1.959963984540054
    low = high = None
    for u, s, g in hand:
        if 0 < s < 1:
            sigma = math.sqrt(g) / abs(math.log(s))
            s_lo, s_hi = s ** math.exp(z * sigma), s ** math.exp(-z * sigma)
        else:
            s_lo = s_hi = s
        if low is None and s_lo <= 0.5:
            low = u
        if high is None and s_hi <= 0.5:
            high = u
    assert (stat["low"], stat["high"]) == (low, high)


def test_km_median_without_censoring_is_the_ordinary_median():
    rng = np.random.default_rng(0)
    for n in (3, 4, 16, 17):
        x = rng.exponential(size=n)
        assert censored_median(x, 100.0)["median"] == pytest.approx(float(np.median(x)), rel=1e-12)
    # S = 0.5 exactly over [3, 5): the midpoint; the crossing-only median would be 2.5.
    assert censored_median([1, 2, 3, 5, np.nan, np.nan], 6.0)["median"] == 4.0
    assert censored_quantile([1.0, 2.0, 3.0, 4.0], 9.0, 0.25) == 1.5


def test_median_not_reached_is_reported_as_such():
    stat = censored_median([1.0, 2.0, 3.0] + [np.nan] * 4, 7.0)
    assert stat["median"] is None and (stat["crossed"], stat["runs"]) == (3, 7)
    assert format_censored(stat) == "> 7 (3/7)"
    assert format_censored(censored_median([], 7.0)) == "-"
    with pytest.raises(ValueError, match=r"^horizon=inf: must be finite"):
        censored_median([1.0], math.inf)


@pytest.fixture(scope="module")
def gd16():
    """16 GD runs of the default task; mode 1's t_half spreads around 7 (issue 16's case)."""
    config = validate_config({"runs": 16, "methods": ["gd"], "training": {"horizon": 16.0},
                              "record": {"points": 161, "spacing": "linear"}})
    return run_experiment(config)


def test_short_horizon_gives_not_reached_instead_of_a_smaller_median(gd16):
    long = summarise(gd16)["methods"]["gd"]["modes"][0]["t_half"]
    every = learning_events(gd16.isel(method_name=0)).t_half.isel(mode=0).values
    assert long["crossed"] == 16
    assert long["median"] == pytest.approx(float(np.median(every)), rel=1e-12)
    # The same runs observed up to the last record before the 8th crossing: < 8 of 16 crossed.
    cut = max(t for t in gd16.time.values if np.sum(every <= t) <= 7)
    short = gd16.sel(time=slice(0, cut))
    row = summarise(short)["methods"]["gd"]["modes"][0]
    crossed = int(np.sum(every <= cut))
    assert 0 < crossed < 8                              # under half: the median is not identified
    assert row["t_half"]["median"] is None and row["t_half"]["crossed"] == crossed
    assert row["t_half"]["runs"] == 16 and row["t_half"]["horizon"] == pytest.approx(cut)
    # the old rule (median over the runs that crossed) reported a smaller time than the truth
    assert float(np.median(every[every <= 7.0])) < long["median"]
    table = summary_rows(summarise(short))
    assert table[0][3] == f"> {cut:.3g} ({crossed}/16)"
