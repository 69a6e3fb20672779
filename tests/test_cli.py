"""The ``dlnlab theory`` command: exit codes, table, JSON, and the numbers behind them.

The numbers are recomputed here from the library (``half_learning_time``, ``diffusion_peak``,
``stationary_moments``) and, where a closed form exists, from that closed form.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dlnlab import theory
from dlnlab.cli import main

DEFAULTS = {"depth": 4, "spectrum": "1,0.667,0.333", "learning_rate": 0.01, "batch_size": 1,
            "label_noise": 0.0, "init_amplitude": 0.002}
KEYS = {"s", "reachable", "t_half", "a_peak", "stationary_exists", "stationary_mean",
        "stationary_variance", "note"}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()                                   # drop anything printed before
    code = main(["theory", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _reject_constant(name: str):
    raise AssertionError(f"invalid JSON constant {name} in the output")


def parse_json(text: str):
    """Strict JSON: NaN / Infinity (which Python's json accepts by default) are errors."""
    return json.loads(text, parse_constant=_reject_constant)


def argv(options: dict) -> list[str]:
    return [item for key, value in options.items()
            for item in (f"--{key.replace('_', '-')}", str(value))]


def expected_rows(options: dict) -> list[dict]:
    """What the command must print, computed here from the library and eq. 9/10 by hand."""
    return [dict(row) for row in _expected_rows(tuple(sorted(options.items())))]


@functools.cache
def _expected_rows(options: tuple) -> tuple[dict, ...]:
    o = {**DEFAULTS, **dict(options)}
    s = np.array([float(x) for x in str(o["spectrum"]).split(",")])
    depth, sigma = int(o["depth"]), float(o["label_noise"])
    t_half = np.asarray(theory.half_learning_time(s, depth, float(o["init_amplitude"])))
    peak = theory.diffusion_peak(s, depth, sigma)
    moments = theory.stationary_moments(s, depth, float(o["learning_rate"]), int(o["batch_size"]),
                                        sigma)
    p = 4.0 - 4.0 / depth
    rows = []
    for i, s_i in enumerate(s):
        # eq. 10 (at L = 1, p = 0, D_a is decreasing on (0, s): no interior peak)
        exists = depth > 1 and s_i**2 > p * (p + 2) * sigma**2 / 2
        assert bool(peak.exists[i]) == exists
        a_peak = None
        if exists:
            eq9 = s_i - (2 * s_i + math.sqrt(4 * s_i**2 - 2 * p * (p + 2) * sigma**2)) / (2 * p + 4)
            np.testing.assert_allclose(float(peak.amplitude[i]), eq9, rtol=1e-12)
            a_peak = float(peak.amplitude[i])
        rows.append({"s": float(s_i), "t_half": float(t_half[i]), "a_peak": a_peak,
                     "stationary_mean": float(moments.mean[i]),
                     "stationary_variance": float(moments.variance[i])})
    return tuple(rows)


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == KEYS
        assert (g["a_peak"] is None) == (w["a_peak"] is None), (g, w)
        for key in w:
            if w[key] is None:
                continue
            np.testing.assert_allclose(g[key], w[key], rtol=1e-12, atol=0, err_msg=key)


def json_rows(capsys, options: dict) -> list[dict]:
    """Run ``dlnlab theory --json`` with ``options``; check exit code, stderr and the keys."""
    code, out, err = run_cli(capsys, *argv(options), "--json")
    assert code == 0
    assert err == ""
    rows = parse_json(out)
    assert isinstance(rows, list)
    spectrum = [float(x) for x in str({**DEFAULTS, **options}["spectrum"]).split(",")]
    assert len(rows) == len(spectrum)
    assert all(isinstance(row, dict) and set(row) == KEYS for row in rows)
    assert [row["s"] for row in rows] == spectrum
    return rows


# ------------------------------------------------------------------------------ table output
def test_default_run_prints_a_table_with_every_mode(capsys):
    code, out, err = run_cli(capsys)
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    for row in expected_rows({}):
        # The row of this mode shows its s and its t_half (formatted as the table does).
        s_text, t_text = f"{row['s']:g}", f"{row['t_half']:.6g}"
        assert any(s_text in line and t_text in line for line in lines), (s_text, t_text, out)
    assert "Dirac mass at s" in out                      # the sigma = 0 note


# ------------------------------------------------------------------------------- JSON output
L4_NOISY = {"depth": 4, "spectrum": "1,0.667,0.333", "label_noise": 0.3}


def test_json_paper_example(capsys):
    """L = 4, sigma = 0.3: eq. 10 needs s^2 > 7.5 * 0.09 = 0.675, true for s = 1 only."""
    rows = json_rows(capsys, L4_NOISY)
    assert_rows_equal(rows, expected_rows(L4_NOISY))
    assert [row["a_peak"] is not None for row in rows] == [True, False, False]
    assert 0 < rows[0]["a_peak"] < 1
    for row in rows:                                      # label noise: mean pushed below s
        assert row["stationary_mean"] < row["s"]
        assert row["stationary_variance"] > 0


@pytest.mark.parametrize("options", [
    pytest.param({}, id="L4-defaults"),
    pytest.param({"depth": 3, "spectrum": "1.5,1,0.2", "learning_rate": 0.1, "batch_size": 4,
                  "init_amplitude": 0.05}, id="L3-no-noise"),
    # L = 2: eq. 10 needs s^2 > 4 sigma^2 = 0.36: no peak for s = 0.5
    pytest.param({"depth": 2, "spectrum": "0.5", "learning_rate": 0.05, "batch_size": 2,
                  "label_noise": 0.3, "init_amplitude": 0.01}, id="L2-noisy"),
    pytest.param({"depth": 1, "spectrum": "1", "label_noise": 0.2}, id="L1-noisy"),
])
def test_json_matches_library(capsys, options):
    rows = json_rows(capsys, options)
    assert_rows_equal(rows, expected_rows(options))
    o = {**DEFAULTS, **options}
    for row in rows:
        if o["label_noise"] == 0:                         # Dirac mass at s
            assert row["stationary_mean"] == row["s"] and row["stationary_variance"] == 0.0
        elif o["depth"] == 1:
            # L = 1: p(a) ~ (2 (a - s)^2 + sigma^2)^(-1 - 1/(2 r)), r = eta/B, a Student-t law
            # symmetric about s with variance r sigma^2 / (2 (1 - r)).
            rate = o["learning_rate"] / o["batch_size"]
            np.testing.assert_allclose(row["stationary_mean"], row["s"], rtol=1e-7)
            np.testing.assert_allclose(row["stationary_variance"],
                                       rate * o["label_noise"] ** 2 / (2 * (1 - rate)), rtol=1e-10)
        else:
            assert row["stationary_mean"] < row["s"] and row["stationary_variance"] > 0


def test_json_closed_forms(capsys):
    """L = 2: t_half = ln(s/a0 - 1) / (2 s), a_peak = s/2; L = 4: a_peak = 0.6 s (sigma = 0)."""
    a0 = 0.004
    for row in json_rows(capsys, {"depth": 2, "spectrum": "1,0.5,0.25", "init_amplitude": a0}):
        s = row["s"]
        np.testing.assert_allclose(row["t_half"], math.log(s / a0 - 1) / (2 * s), rtol=1e-12)
        np.testing.assert_allclose(row["a_peak"], s / 2, rtol=1e-12)
    for row in json_rows(capsys, {"spectrum": "1.5,0.8,0.3"}):
        # eq. 9 at sigma = 0: a_peak = s (2L - 2) / (3L - 2)
        np.testing.assert_allclose(row["a_peak"], 0.6 * row["s"], rtol=1e-12)
        assert row["stationary_mean"] == row["s"] and row["stationary_variance"] == 0.0


# ------------------------------------------------------------------------------- bad input
BAD_INPUT = [
    pytest.param(["--depth", "0"], "depth=0", id="depth-0"),
    pytest.param(["--spectrum", "1,abc"], "spectrum=", id="spectrum-not-a-number"),
    pytest.param(["--spectrum", "1,,0.5"], "spectrum=", id="spectrum-empty-item"),
    pytest.param(["--spectrum", "0.5,1"], "spectrum=", id="spectrum-increasing"),
    pytest.param(["--spectrum", ""], "spectrum=", id="spectrum-empty"),
    pytest.param(["--learning-rate", "-1"], "learning_rate=", id="learning-rate-negative"),
    pytest.param(["--batch-size", "x"], "--batch-size", id="batch-size-not-an-int"),
    pytest.param(["--batch-size", "0"], "batch_size=0", id="batch-size-0"),
    pytest.param(["--label-noise", "nan"], "label_noise=nan", id="label-noise-nan"),
    pytest.param(["--init-amplitude", "0.9"], "init_amplitude=0.9", id="init-amplitude-too-big"),
    pytest.param(["--no-such-option"], "--no-such-option", id="unknown-option"),
]


@pytest.mark.parametrize(("args", "names"), BAD_INPUT)
def test_bad_input_exits_2_with_one_error_line(capsys, args, names):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("error: ")
    assert names in lines[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- subprocess
def _subprocess(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlnlab.cli", "theory", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_module_entry_point_json(tmp_path):
    options = {"depth": 2, "spectrum": "1,0.5", "init_amplitude": 0.01}
    result = _subprocess(tmp_path, *argv(options), "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_rows_equal(parse_json(result.stdout), expected_rows(options))


def test_module_entry_point_bad_input(tmp_path):
    result = _subprocess(tmp_path, "--depth", "0")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["error: depth=0: must be an integer >= 1"]


def test_importing_the_cli_does_not_start_the_jax_backend():
    """XLA flags are set in `main` at process start; an import that starts JAX's backend earlier
    (e.g. blackjax at module level) would silently drop them (the engine then runs 2-3x slower)."""
    code = ("import dlnlab.cli\n"
            "from jax._src import xla_bridge\n"
            "raise SystemExit(1 if xla_bridge._backends else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_main_sets_the_xla_cpu_flag_unless_the_user_did(monkeypatch):
    import os

    from dlnlab import cli

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cli._set_xla_flags()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_experimental_ynn_fusion_type= "
                                       f"--xla_force_host_platform_device_count={os.cpu_count()}")
    mine = "--xla_cpu_experimental_ynn_fusion_type=all --xla_force_host_platform_device_count=1"
    monkeypatch.setenv("XLA_FLAGS", mine)
    cli._set_xla_flags()
    assert os.environ["XLA_FLAGS"] == mine


# ------------------------------------------------------------------------------ run / reproduce doors
def test_reproduce_names_an_unknown_study_next_to_all_before_anything_starts(capsys, monkeypatch):
    import dlnlab.papers as papers

    monkeypatch.setattr(papers, "reproduce", lambda *a, **k: pytest.fail("started to reproduce"))
    assert main(["reproduce", "all", "fig99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: name='fig99': unknown study of paper 'sgd-dln'; one of fig1, ")
    assert err.count("\n") == 1


def test_a_write_error_is_one_line_with_the_path_and_exit_1(capsys, monkeypatch):
    import dlnlab.experiments.runner as runner

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "/runs/x/results.nc")
    monkeypatch.setattr(runner, "run_to_directory", full_disk)
    assert main(["run"]) == 1
    assert capsys.readouterr().err == ("error: could not read/write /runs/x/results.nc: "
                                       "No space left on device\n")


def test_run_passes_overwrite_to_the_runner(monkeypatch):
    import dlnlab.experiments.runner as runner

    seen = {}

    def fake(config, overrides, out, *, quiet=False, overwrite=False):
        seen.update(overrides=overrides, overwrite=overwrite)
    monkeypatch.setattr(runner, "run_to_directory", fake)
    assert main(["run", "--set", "runs=2", "--overwrite"]) == 0
    assert seen == {"overrides": ["runs=2"], "overwrite": True}
    assert main(["run"]) == 0 and seen["overwrite"] is False


def test_theory_names_unreachable_modes_and_missing_stationary_laws(capsys):
    """Width 1 below a rank-2 teacher: mode 2 is unreachable (no learning time); depth 2 with
    (eta/B)(2 s^2 + sigma^2) = 0.25 * 11 >= 2 s: no stationary law (not a number)."""
    code, out, err = run_cli(capsys, "--depth", "2", "--spectrum", "1,0.5",
                             "--widths", "3,1,3", "--learning-rate", "0.25",
                             "--label-noise", "3", "--json")
    assert code == 0 and err == ""
    first, second = parse_json(out)
    assert first["reachable"] and not second["reachable"]
    assert second["t_half"] is None and second["stationary_mean"] is None
    assert first["t_half"] is not None
    assert first["stationary_exists"] is False and first["stationary_mean"] is None
    assert "no stationary law" in first["note"]
    code, out, _ = run_cli(capsys, "--depth", "2", "--spectrum", "1,0.5",
                           "--widths", "3,1,3", "--learning-rate", "0.25", "--label-noise", "3")
    assert code == 0
    assert "unreachable" in out and "no law" in out
    code, _, err = run_cli(capsys, "--widths", "3,0,3,3,3")
    assert code == 2 and err.startswith("error: widths=")


@pytest.mark.parametrize("argv", [
    ["run", "--no-such-option"],
    ["sweep"],                                            # the sweep file is required
    ["sweep", "examples/sweep_quick.toml", "--local-cluster", "abc"],
    ["golden-path", "--no-such-option"],
    ["reproduce", "fig3", "--no-such-option"],
    ["theory", "--depth", "four"],
    ["no-such-command"],
])
def test_usage_errors_are_one_line_with_exit_code_2(capsys, argv):
    """typer's usage errors (its vendored click) and click's own, when click is installed beside it
    (dask brings one), print one ``error:`` line, never a traceback."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
