"""Malformed input at every door: generated from the example configs, each one must be exit code 2
and exactly one line ``error: FIELD...`` that names the field, with no traceback and nothing run.

Cases: every ``examples/*.toml`` of ``dlnlab run`` with one field made wrong (type, range,
``inf``/``nan``, unknown keys, wrong nesting, unsafe names, impossible sizes), bad ``--set``
syntax, and the saddles examples with the same kinds of faults. Deterministic and fast: the
simulations are replaced by functions that fail the test, so a case that would run is caught.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
import tomli_w

import dlnlab.experiments.runner as runner
import dlnlab.saddles.config as saddles_config
from dlnlab.cli import main
from dlnlab.experiments.config import set_field

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.toml")
                      if not p.name.startswith(("saddles", "sweep_", "golden_path_")))
INF, NAN = float("inf"), float("nan")

# (dotted key, wrong value, what the error line must start with after "error: ")
RUN_FAULTS = [
    ("runs", True, "runs"), ("runs", 0, "runs"), ("runs", "3", "runs"), ("runs", 1.5, "runs"),
    ("runs", 2 ** 63 - 1, "runs"), ("seed", -1, "seed"), ("seed", 1.0, "seed"),
    ("name", "../escaped", "name"), ("name", "", "name"), ("name", "/tmp/abs", "name"),
    ("name", "x" * 300, "name"), ("name", ".hidden", "name"), ("name", 7, "name"),
    ("dtype", "float16", "dtype"), ("methods", [], "methods"), ("methods", ["adam"], "methods"),
    ("methods", "sgd", "methods"), ("methods", ["sgd", "sgd"], "methods"),
    ("divergence_threshold", INF, "divergence_threshold"),
    ("divergence_threshold", -1.0, "divergence_threshold"),
    ("training.learning_rate", INF, "training.learning_rate"),
    ("training.learning_rate", NAN, "training.learning_rate"),
    ("training.learning_rate", -0.1, "training.learning_rate"),
    ("training.learning_rate", 0, "training.learning_rate"),
    ("training.learning_rate", "0.01", "training.learning_rate"),
    ("training.learning_rate", 1e-300, "training.learning_rate"),
    ("training.learning_rate", True, "training.learning_rate"),
    ("training.horizon", INF, "training.horizon"), ("training.horizon", 0, "training.horizon"),
    ("training.horizon", 0.001, "training.horizon"), ("training.horizon", "100", "training.horizon"),
    ("training.horizon", 1e300, "training.horizon"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.batch_size", 1.5, "training.batch_size"),
    ("training.batch_size", True, "training.batch_size"),
    ("training.replacement", "no", "training.replacement"),
    ("training.replacement", 1, "training.replacement"),
    ("training.schedule", [{"time": 1e6, "batch_size": 4}], "training.schedule"),
    ("training.schedule", [{"time": -1.0, "batch_size": 4}], "training.schedule[0].time"),
    ("training.schedule", [{"time": 1.0}], "training.schedule[0].batch_size"),
    ("training.learnin_rate", 0.01, "training.learnin_rate"),
    ("task.d_in", 1000000000, "task.d_in"), ("task.d_in", 0, "task.d_in"),
    ("task.d_in", 1e9, "task.d_in"), ("task.d_in", "12", "task.d_in"),
    ("task.hidden", [0], "task.hidden"), ("task.hidden", [1.5], "task.hidden[0]"),
    ("task.hidden", [12] * 2999, "task.hidden"), ("task.hidden", "12", "task.hidden"),
    ("task.spectrum", [1e308], "task.spectrum"), ("task.spectrum", [], "task.spectrum"),
    ("task.spectrum", [NAN], "task.spectrum[0]"), ("task.spectrum", [-1.0], "task.spectrum"),
    ("task.spectrum", [0.5, 1.0], "task.spectrum"), ("task.spectrum", "1", "task.spectrum"),
    ("task.label_noise", -1.0, "task.label_noise"), ("task.label_noise", INF, "task.label_noise"),
    ("task.label_noise", 1e7, "task.label_noise"), ("task.num_samples", -1, "task.num_samples"),
    ("task.input_covariance", [1.0], "task.input_covariance"),
    ("task.input_covariance", [[1.0, 2.0], [3.0, 4.0]], "task.input_covariance"),
    ("task.input_covariance", "identity", "task.input_covariance"),
    ("task.input_covariance", [INF], "task.input_covariance"),
    ("task.widths", [4, 4], "task.widths"),
    ("init.kind", "uniform", "init.kind"), ("init.gamma", NAN, "init.gamma"),
    ("init.amplitude", 0, "init.amplitude"), ("init.amplitude", INF, "init.amplitude"),
    ("record.points", 1, "record.points"), ("record.points", 1000000000, "record.points"),
    ("record.points", "200", "record.points"), ("record.spacing", "cubic", "record.spacing"),
    ("record.variables", ["loss"], "record.variables"),
    ("record.variables", ["nope"], "record.variables"),
    ("sde.step_size", INF, "sde.step_size"), ("sde.step_size", 0.003, "sde.step_size"),
    ("sde.step_size", 1e-300, "sde.step_size"), ("sde.path_substeps", 0, "sde.path_substeps"),
    ("isotropic.temperature", -1.0, "isotropic.temperature"),
    ("isotropic.temperature", "hot", "isotropic.temperature"),
    ("reduced.coupled", "yes", "reduced.coupled"), ("gf.step_size", NAN, "gf.step_size"),
    ("momentum_sgd.momentum", 1.0, "momentum_sgd.momentum"),
    ("momentum_sgd.mom", 0.5, "momentum_sgd.mom"),
]

# whole sections replaced: wrong nesting
NESTING_FAULTS = [("task", 3, "task"), ("training", [1], "training"), ("runz", 3, "runz"),
                  ("record", {"points": {"n": 3}}, "record.points")]

SET_FAULTS = [
    ("nokey", "--set='nokey'"), ("=1", "--set='=1'"), ("a..b=1", "--set='a..b=1'"),
    ("." + "a." * 999 + "b=1", "--set="), ("training.learning_rate=0.01\nruns=3", "--set="),
    ("runs=3\r", "--set="), ("runs=\t3", "--set="), ("x" * 100_000 + "=1", "x" * 77 + "...=1: unknown"),
    ("runs=" + "9" * 100_000, "runs="), ("seed=18446744073709551616", "seed="),
    ("training.learning_rate=1e999", "training.learning_rate="),
    ("task.spectrum=[1e308]", "task.spectrum="), ("sde.step_size=inf", "sde.step_size="),
    ("gf.step_size=inf", "gf.step_size="), ("isotropic.step_size=inf", "isotropic.step_size="),
    ("reduced.step_size=inf", "reduced.step_size="), ("training.horizon=nan", "training.horizon="),
    ("training.learnin_rate=0.01", "training.learnin_rate=0.01: unknown field; did you mean "
                                   "training.learning_rate?"),
    ("runs.x=1", "--set='runs.x=1'"), ('name="a/b"', "name="),
]

SADDLE_FAULTS = {
    "sample": [("seed", -1, "seed"), ("seed", True, "seed"), ("task.widths", [4, 4], "task.widths"),
               ("task.widths", [4, 0, 4], "task.widths[1]"),
               ("task.widths", [1000000000, 2, 3], "task.widths"),
               ("task.spectrum", [NAN], "task.spectrum[0]"),
               ("task.label_noise", INF, "task.label_noise"),
               ("sampler.num_chains", 2 ** 62, "sampler.num_chains"),
               ("sampler.num_steps", 2 ** 62, "sampler.num_steps"),
               ("sampler.temperature", "0.01", "sampler.temperature"),
               ("sampler.subsets", "some", "sampler.subsets"), ("sampler.ranks", [], "sampler.ranks"),
               ("sampler.chains", 2, "sampler.chains"), ("prior.weight_decay", -1.0, "prior.weight_decay"),
               ("refine.iterations", 30.0, "refine.iterations"), ("refine", 3, "refine")],
    "certify": [("seed", -1, "seed"), ("num_blocks", 0, "num_blocks"), ("block_size", 0, "block_size"),
                ("method", "exact", "method"), ("num_eigenvalues", 1.5, "num_eigenvalues"),
                ("grad_rtol", INF, "grad_rtol"), ("eig_rtol", -1.0, "eig_rtol"),
                ("num_block", 4, "num_block")],
    "escape": [("seed", -1, "seed"), ("methods", [], "methods"), ("learning_rate", NAN, "learning_rate"),
               ("num_steps", 2 ** 62, "num_steps"), ("num_runs", 0, "num_runs"),
               ("drop_fraction", 2.0, "drop_fraction"), ("direction", "up", "direction"),
               ("batch_size", True, "batch_size"), ("sde_step", 0.0, "sde_step"),
               ("max_points", "20", "max_points"), ("learning_rat", 0.1, "learning_rat")],
}


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    """Any case that gets past validation fails the test instead of computing."""
    def refuse(*args, **kwargs):
        raise AssertionError("validation let an invalid input through: it started to run")
    monkeypatch.setattr(runner, "run_experiment", refuse, raising=False)
    for name in ("sample_catalogue", "certify_catalogue", "escape_experiment"):
        monkeypatch.setattr(saddles_config, name, refuse)


def _check(capsys, argv, expected, out_dir) -> str | None:
    """None when the case is refused as required, else what went wrong."""
    capsys.readouterr()
    try:
        code = main(argv)
    except BaseException as error:  # noqa: BLE001 - a traceback is the failure being tested
        return f"raised {type(error).__name__}: {str(error)[:200]}"
    out, err = capsys.readouterr()
    if code != 2:
        return f"exit code {code}: {err[:200]!r}"
    if "Traceback" in err or err.count("\n") != 1 or out:
        return f"not one line: {err[:300]!r}"
    if not err.startswith(f"error: {expected}"):
        return f"does not name {expected!r}: {err[:300]!r}"
    if len(err) > 600:
        return f"error line of {len(err)} characters (values must be shortened)"
    if out_dir.exists():
        return "wrote output"
    return None


def _write(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _with(data: dict, key: str, value) -> dict:
    changed = copy.deepcopy(data)
    set_field(changed, key, value) if "." in key else changed.__setitem__(key, value)
    return changed


def _run_cases(tmp_path):
    for example in RUN_EXAMPLES:
        base = tomllib.loads(example.read_text(encoding="utf-8"))
        for index, (key, value, expected) in enumerate(RUN_FAULTS + NESTING_FAULTS):
            name = f"{example.stem}-{index}"
            path = _write(tmp_path / f"{name}.toml", _with(base, key, value))
            yield name, ["run", str(path)], expected
    paper = str(EXAMPLES / "paper_default.toml")
    for index, (item, expected) in enumerate(SET_FAULTS):
        yield f"set-{index}", ["run", paper, "--set", item], expected


def _saddle_cases(tmp_path):
    for command, faults in SADDLE_FAULTS.items():
        base = tomllib.loads((EXAMPLES / f"saddles_{command}.toml").read_text(encoding="utf-8"))
        for index, (key, value, expected) in enumerate(faults):
            path = _write(tmp_path / f"saddles-{command}-{index}.toml", _with(base, key, value))
            yield f"saddles-{command}-{index}", ["saddles", command, str(path)], expected
    for command in SADDLE_FAULTS:
        yield f"saddles-{command}-newline", ["saddles", command, "--seed", "1\nseed = 5"], "seed="
        yield f"saddles-{command}-set", ["saddles", command, "--set", "a..b=1"], "--set="


def test_at_least_150_malformed_inputs_are_each_one_line_naming_the_field(capsys, tmp_path):
    cases = [*_run_cases(tmp_path), *_saddle_cases(tmp_path)]
    assert len(cases) >= 150
    failures = []
    for name, argv, expected in cases:
        out_dir = tmp_path / "out" / name
        extra = ["--out", str(out_dir)]
        problem = _check(capsys, [*argv, *extra], expected, out_dir)
        if problem:
            failures.append(f"{name} {argv[-1][:60]!r}: {problem}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_a_non_utf8_config_names_the_file(capsys, tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    for argv in (["run", str(path)], ["saddles", "sample", str(path), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"error: config={str(path)!r}: not UTF-8 text (byte 0xe9 at offset 11); " \
                      "save it as UTF-8\n"
