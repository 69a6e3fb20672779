"""The first paper's scaling studies (fig9, fig10) computed through the sweep engine.

``dlnlab.sweep.from_configs.sweep_from_configs`` turns a study's configs into one sweep; the
studies' ``data`` part (``dlnlab.papers.sgd_dln.scaling.sweep_data``) runs it and cuts it back
into one dataset per experiment in ``run_experiment``'s layout. Checked here against
``run_experiment`` itself, computed independently: the same variables, dims, record times and
attributes the analysis reads, and the same law of the statistic the studies fit (the run-mean of
``max_t D_a``), within Monte Carlo error; a wrong scaling of it is rejected by the same band.
The runner's side (``study.json`` records the sweep; a rerun computes nothing) is checked on the
CLI's quick run in ``tests/test_reproduce.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import K_SIGMA
from dlnlab.experiments.config import validate_config
from dlnlab.experiments.run import run_experiment
from dlnlab.experiments.study import Paper, Study
from dlnlab.experiments.study_runner import run_studies
from dlnlab.papers.sgd_dln import PAPER, fig9, fig10, scaling
from dlnlab.papers.sgd_dln.config import paper_config
from dlnlab.sweep import read_manifest
from dlnlab.sweep.from_configs import sweep_from_configs


def _small(rates, runs=48, horizon=12.0):
    """fig9's configs at a small size: online SGD on the paper's task, one config per rate."""
    return {f"{lr:g}": paper_config(f"lr-{lr:g}", runs=runs, horizon=horizon, methods=["sgd"],
                                    points=121, variables=["amplitude", "diffusion"],
                                    changes={"training.learning_rate": lr}) for lr in rates}


# ------------------------------------------------------------------------ sweep_from_configs


def test_sweep_from_configs_zips_exactly_the_fields_that_differ():
    for study, field in ((fig9, "training.learning_rate"), (fig10, "training.batch_size")):
        configs = list(study.experiments(False).values())
        sweep = sweep_from_configs(configs, study.STUDY.name)
        assert list(sweep.zip[0]) == [field] and not sweep.grid
        points = sweep.points()
        assert len(points) == len(configs) and sweep.runs == configs[0].runs
        for point, config in zip(points, configs, strict=True):
            # point i is config i, its name aside
            assert point.config == config.model_copy(update={"name": study.STUDY.name})
    # two differing fields: one zip of both; one config: a single point without dimensions
    two = [validate_config({**c.model_dump(mode="json"), "seed": i})
           for i, c in enumerate(_small([0.01, 0.02]).values())]
    assert set(sweep_from_configs(two, "two").zip[0]) == {"seed", "training.learning_rate"}
    one = sweep_from_configs(list(_small([0.01]).values()), "one")
    assert one.zip == [] and one.num_points == 1


def test_sweep_from_configs_refuses_in_one_line():
    a, b = _small([0.01, 0.02]).values()
    cases = [([], "configs=[]"),
             ([a, b.model_copy(update={"runs": 7})], "runs=[7, 48]"),
             ([a, a.model_copy(update={"name": "other"})], "differ only in name"),
             ([a, {"runs": 3}], "configs[1]=dict")]
    for configs, start in cases:
        with pytest.raises(ValueError) as info:
            sweep_from_configs(configs, "x")
        message = str(info.value)
        assert start in message and "\n" not in message
    with pytest.raises(ValueError, match="^name="):
        sweep_from_configs([a, b], "no/slash")


# ------------------------------------------------------------------------ cut back per point


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same three small configs through the sweep path and through run_experiment."""
    configs = _small([0.005, 0.01, 0.02])
    data_dir = tmp_path_factory.mktemp("scaling-sweep")
    swept, record = scaling.sweep_data(configs, data_dir, name="fig9")
    direct = {key: run_experiment(config) for key, config in configs.items()}
    return configs, data_dir, swept, record, direct


def test_sweep_datasets_have_run_experiments_layout(both):
    configs, data_dir, swept, record, direct = both
    assert set(swept) == set(direct)
    for key, ds in swept.items():
        ref = direct[key]
        for name in ("loss", "amplitude", "diffusion", "status", "diverged_step"):
            assert ds[name].dims == ref[name].dims, name
            assert ds[name].shape == ref[name].shape, name
        np.testing.assert_array_equal(ds.time.values, ref.time.values)
        np.testing.assert_array_equal(ds.run.values, ref.run.values)
        np.testing.assert_array_equal(ds.method_name.values, ref.method_name.values)
        np.testing.assert_array_equal(ds.spectrum.values, ref.spectrum.values)
        for attr in ("learning_rate", "batch_size", "label_noise", "depth"):
            assert ds.attrs[attr] == ref.attrs[attr], attr
        assert (ds.status.values == "ok").all()
    # the study's analysis reads either the same way
    a, b = fig9.analyse(swept), fig9.analyse(direct)
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert a[name].dims == b[name].dims
    np.testing.assert_allclose(a.theory_max_diffusion.values, b.theory_max_diffusion.values)
    assert a.attrs == b.attrs
    # the record names the sweep folder, its points and that nothing was cached
    assert record["points"] == {key: i for i, key in enumerate(configs)}
    assert not record["cached"] and record["simulation_seconds"] > 0
    assert record["folder"].startswith("fig9-sweep-") and record["chunks"] >= 1
    assert read_manifest(data_dir / record["folder"])["name"] == "fig9"


def test_sweep_gives_the_same_law_of_the_fitted_statistic(both):
    """Per rate and mode: the run-mean of max_t D_a from the sweep and from run_experiment
    (independent draws) agree within K_SIGMA combined standard errors. The band rejects a mix-up
    of points (each rate's sweep data against the next rate's run: twice the rate) on mode 1,
    the mode the test has power for at this size (modes 2 and 3 are still rising at t = 12)."""
    _, _, swept, _, direct = both
    k = 3
    a, b = fig9.analyse(swept), fig9.analyse(direct)
    x, y = a.max_diffusion.values, b.max_diffusion.values       # (rate, run, mode)
    n = x.shape[1]
    mean_x, mean_y = x.mean(axis=1), y.mean(axis=1)
    se = np.sqrt(x.var(axis=1, ddof=1) / n + y.var(axis=1, ddof=1) / n)
    z = np.abs(mean_x - mean_y) / se
    assert z.shape == (3, k) and np.all(z <= K_SIGMA), z
    wrong = np.abs(mean_x[:-1, 0] - mean_y[1:, 0]) / np.hypot(se[:-1, 0], se[1:, 0])
    assert np.all(wrong > K_SIGMA), wrong


def test_rerun_resumes_and_fresh_recomputes(both):
    configs, data_dir, swept, record, _ = both
    again, record2 = scaling.sweep_data(configs, data_dir, name="fig9")
    assert record2["cached"] and record2["folder"] == record["folder"]
    for key in configs:
        np.testing.assert_array_equal(again[key].diffusion.values, swept[key].diffusion.values)
    fresh, record3 = scaling.sweep_data(configs, data_dir, name="fig9", fresh=True)
    assert not record3["cached"]
    # the same keys (from each point's config): the same bits after recomputing
    for key in configs:
        np.testing.assert_array_equal(fresh[key].diffusion.values, swept[key].diffusion.values)


def test_runner_uses_a_studys_data_part(tmp_path):
    """A study with ``data`` is computed by it, not experiment by experiment, and study.json
    records what it returned; ``fresh`` reaches it once per call."""
    configs = _small([0.01, 0.02, 0.04], runs=4, horizon=2.0)
    calls = []

    def data(given, data_dir, *, fresh, progress):
        calls.append(fresh)
        assert given == configs and not progress
        datasets, record = scaling.sweep_data(given, data_dir, fresh=fresh, name="tiny")
        return datasets, record

    study = Study("tiny", "t", "r", lambda quick: configs, fig9.analyse, fig9.numbers,
                  fig9.claims, fig9.figure, data)
    paper = Paper("p", "P", PAPER.citation, {}, (study,))
    run_studies(paper, "all", out=tmp_path, quiet=True)
    run_studies(paper, "all", out=tmp_path, quiet=True, fresh=True)
    assert calls == [False, True]
    meta = json.loads((tmp_path / "tiny" / "study.json").read_text())
    folder = meta["computed_together"]["folder"]
    assert folder.startswith("data/tiny-sweep-") and (tmp_path / folder / "manifest.json").is_file()
    assert [e["point"] for e in meta["experiments"]] == [0, 1, 2]
    assert all((tmp_path / e["file"]).is_file() for e in meta["experiments"])
    assert not list((tmp_path / "data").glob("lr-*.nc"))          # no per-experiment runs
    with pytest.raises(ValueError, match="^data=42: study 'bad' needs a callable or None$"):
        Study("bad", "t", "r", lambda quick: configs, fig9.analyse, fig9.numbers, fig9.claims,
              fig9.figure, 42)
