"""The ``dlnlab saddles`` config idiom, the atomic writer and the catalogue reader, through the CLI.

- the example configs are the models' defaults written out; ``examples/saddles_sample.toml`` runs
  (a tiny override of it); the resolved ``config.toml`` reproduces the catalogue bit for bit;
- precedence defaults < file < ``--set`` < flags;
- every wrong value (config file, ``--set``, flag) is exit code 2 with one ``error: field=value:
  rule`` line, before anything is computed or written;
- a file that is not a catalogue (truncated, text, a NetCDF of another kind, uncertified) given to
  ``certify`` / ``escape`` is exit code 2 with one line;
- a failing ``savefig`` / ``to_netcdf`` leaves no partial file (and an old file as it was);
- the saddles modules' sources: no pyplot, no local ``Array`` alias, no private imports from other
  dlnlab packages.
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr

from dlnlab import saddles as sd
from dlnlab.cli import main
from dlnlab.io import atomic_write_dataset
from dlnlab.saddles.cli import saddles_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SADDLES = ROOT / "src" / "dlnlab" / "saddles"

# a tiny override of examples/saddles_sample.toml: 3 points of rank 1, a few seconds
TINY = ("--set", "task.widths=[3, 4, 3]", "--set", "task.spectrum=[2.0, 1.0, 0.5]",
        "--set", "sampler.ranks=[1]", "--chains", "2", "--exact", "1", "--steps", "100",
        "--quench-steps", "100", "--seed", "3")


def cli(capsys, *args) -> tuple[int, str, str]:
    """``dlnlab saddles ARGS`` as the console script runs it: exit code, stdout, stderr."""
    code = main(["saddles", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run(*args) -> None:
    """The sub-app with exceptions propagating (for the writer tests)."""
    typer.main.get_command(saddles_app).main(args=[str(a) for a in args], prog_name="dlnlab saddles",
                                              standalone_mode=False)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``dlnlab saddles sample examples/saddles_sample.toml`` with the tiny override."""
    out = tmp_path_factory.mktemp("tiny")
    code = main(["saddles", "sample", str(EXAMPLES / "saddles_sample.toml"), "--out", str(out), *TINY])
    assert code == 0
    return out


# ------------------------------------------------------------------------------ config files
@pytest.mark.parametrize(("kind", "name"), [(sd.SampleConfig, "sample"), (sd.CertifyConfig, "certify"),
                                            (sd.EscapeConfig, "escape")])
def test_example_configs_are_the_defaults(kind, name):
    loaded = sd.load_config(kind, EXAMPLES / f"saddles_{name}.toml")
    assert loaded == kind()
    assert sd.load_config(kind, None) == kind()
    # the resolved TOML loads back to the same model
    assert sd.validate_config(kind, tomllib.loads(sd.config_to_toml(loaded))) == loaded


def test_example_sample_config_runs(tiny):
    """The example with the tiny override: the flags and --set win over the file, the resolved
    config is written next to the catalogue and kept in its attributes."""
    assert files_under(tiny) == ["config.toml", "points.nc"]
    points = sd.read_catalogue(tiny / "points.nc")
    text = (tiny / "config.toml").read_text()
    assert points.attrs["sample_config"] == text and points.attrs["seed"] == 3
    config = sd.load_config(sd.SampleConfig, tiny / "config.toml")
    assert config.task.widths == [3, 4, 3] and config.task.spectrum == [2.0, 1.0, 0.5]
    assert (config.sampler.ranks, config.sampler.num_chains, config.sampler.num_exact) == ([1], 2, 1)
    assert config.sampler.num_steps == 100 and config.seed == 3
    assert config.prior == sd.SampleConfig().prior                      # untouched sections: the file's
    assert points.sizes["point"] == 3 and set(points["rank"].values) == {1}
    np.testing.assert_array_equal(points["spectrum"].values, [2.0, 1.0, 0.5])
    assert sd.catalogue_widths(points) == (3, 4, 3) and points.sizes["parameter"] == 24


def test_written_config_reproduces_the_catalogue_bit_for_bit(tiny, tmp_path, capsys):
    code, out, err = cli(capsys, "sample", tiny / "config.toml", "--out", tmp_path)
    assert (code, err) == (0, "")
    assert (tmp_path / "config.toml").read_text() == (tiny / "config.toml").read_text()
    first, again = sd.read_catalogue(tiny / "points.nc"), sd.read_catalogue(tmp_path / "points.nc")
    xr.testing.assert_identical(first, again)                         # values, coordinates, attributes
    for name in first.data_vars:
        a, b = first[name].values, again[name].values
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name  # bit for bit
    # and a different seed gives different points (the comparison can fail)
    other = sd.load_config(sd.SampleConfig, tiny / "config.toml", ["seed=4"])
    assert other.seed == 4 and other.task == sd.load_config(sd.SampleConfig, tiny / "config.toml").task


def test_precedence_defaults_file_set_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 1\n[sampler]\nnum_chains = 4\ntemperature = 0.5\n")
    config = sd.load_config(sd.SampleConfig, path)
    assert (config.seed, config.sampler.num_chains, config.sampler.temperature) == (1, 4, 0.5)
    assert config.sampler.num_steps == sd.SampleConfig().sampler.num_steps    # default kept
    config = sd.load_config(sd.SampleConfig, path, ["sampler.num_chains=5", "sampler.temperature=0.25"])
    assert (config.sampler.num_chains, config.sampler.temperature) == (5, 0.25)
    config = sd.load_config(sd.SampleConfig, path, ["sampler.num_chains=5"],
                            {"sampler.num_chains": 2, "sampler.temperature": None})
    assert (config.sampler.num_chains, config.sampler.temperature) == (2, 0.5)  # None: flag not given
    assert isinstance(sd.load_config(sd.SampleConfig, None, ["prior.weight_decay=2"]).prior.weight_decay,
                      float)                                         # an integer is a valid float


# ------------------------------------------------------------------------------ bad values
BAD_FILES = [
    ('[sampler]\ntemperature = "0.01"\n', "sampler.temperature='0.01': Input should be a valid number"),
    ("[sampler]\nnum_chains = true\n", "sampler.num_chains=True: Input should be a valid integer"),
    ("[refine]\niterations = 30.0\n", "refine.iterations=30.0: Input should be a valid integer"),
    ("[task]\nspectrum = [3.0, nan]\n", "task.spectrum[1]=nan: Input should be a finite number"),
    ("[task]\nwidths = [4, 4]\n", "task.widths=[4, 4]: needs d_0, ..., d_L with depth L >= 2"),
    ("[sampler]\nchains = 2\n", "sampler.chains=2: unknown field"),
    ("[sampler]\nnum_chains = 0\nnum_exact = 0\n",
     "sampler.num_exact=0: num_chains + num_exact must be >= 1"),
    ("seed = -1\n", "seed=-1: Input should be greater than or equal to 0"),
    ("[sampler\n", "config='"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_wrong_value_in_the_config_file_is_one_line_exit_2(capsys, tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = cli(capsys, "sample", path, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()      # nothing computed


BAD_OVERRIDES = [
    (("sample", "--set", "sampler.num_chains=true"),
     "sampler.num_chains=True: Input should be a valid integer"),
    (("sample", "--set", 'sampler.temperature="0.01"'),
     "sampler.temperature='0.01': Input should be a valid number"),
    (("sample", "--set", "sampler.chains=2"), "sampler.chains=2: unknown field"),
    (("sample", "--set", "task.spectrum=3,2"), "task.spectrum='3,2': Input should be a valid list"),
    (("sample", "--set", "nokey"), "--set='nokey': must be key=value"),
    (("sample", "--chains", "1.5"), "sampler.num_chains=1.5: Input should be a valid integer"),
    (("sample", "--chains", "true"), "sampler.num_chains=True: Input should be a valid integer"),
    (("sample", "--temperature", "inf"), "sampler.temperature=inf: Input should be a finite number"),
    (("sample", "--step-size", "0"), "sampler.step_size=0: Input should be greater than 0"),
    (("sample", "--widths", "3,x,3"), "task.widths[1]='x': Input should be a valid integer"),
    (("sample", "--seed", "abc"), "seed='abc': Input should be a valid integer"),
    (("certify", "--blocks", "2.5"), "num_blocks=2.5: Input should be a valid integer"),
    (("certify", "--method", "exact"), "method='exact': Input should be 'auto', 'dense' or 'lanczos'"),
    (("escape", "--drop", "2"), "drop_fraction=2: Input should be less than or equal to 1"),
    (("escape", "--learning-rate", "nan"), "learning_rate=nan: Input should be a finite number"),
    (("escape", "--set", "methods=[]"), "methods=[]: needs at least one method"),
    (("escape", "--set", "sde_step=true"), "sde_step=True: Input should be a valid number"),
    (("escape", "--steps", "9223372036854775807"),
     "num_steps=9223372036854775807: exceeds 2147483647 (MAX_STEPS)"),
    (("sample", "--chains", "9223372036854775807"),
     "sampler.num_chains=9223372036854775807: would need about 4.8e+23 bytes of memory"),
    (("sample", "--seed", "1\nseed = 5"), "seed='1\\nseed = 5': contains a control character"),
    (("sample", "--set", "sampler.num_chain=2"),
     "sampler.num_chain=2: unknown field; did you mean sampler.num_chains?"),
    (("certify", "--seed", "-1"), "seed=-1: Input should be greater than or equal to 0"),
    (("certify", "--blocks", "0"), "num_blocks=0: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_OVERRIDES)
def test_wrong_value_in_a_flag_or_set_is_one_line_exit_2(capsys, tmp_path, args, expected):
    code, out, err = cli(capsys, *args, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_missing_config_file(capsys, tmp_path):
    code, _, err = cli(capsys, "sample", tmp_path / "none.toml", "--out", tmp_path / "out")
    assert code == 2 and err == f"error: config='{tmp_path / 'none.toml'}': no such file\n"


# ------------------------------------------------------------------------------ not a catalogue
def _not_catalogues(tiny, folder: Path) -> dict[str, tuple[Path, str]]:
    data = (tiny / "points.nc").read_bytes()
    (folder / "truncated.nc").write_bytes(data[: len(data) // 2])
    (folder / "text.nc").write_text("theta = 1\n")
    atomic_write_dataset(xr.Dataset({"amplitude": (("time",), np.arange(4.0))}), folder / "results.nc")
    return {"truncated": (folder / "truncated.nc", "not a readable NetCDF dataset"),
            "text": (folder / "text.nc", "not a readable NetCDF dataset"),
            "other": (folder / "results.nc", "not a saddle catalogue (missing variables: theta, rank"),
            "missing": (folder / "none.nc", "no such file")}


@pytest.mark.parametrize("kind", ["truncated", "text", "other", "missing"])
@pytest.mark.parametrize(("command", "option"), [("certify", "--points"), ("escape", "--catalogue")])
def test_a_file_that_is_not_a_catalogue_is_one_line_exit_2(capsys, tiny, tmp_path, kind, command, option):
    path, reason = _not_catalogues(tiny, tmp_path)[kind]
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, command, "--out", out_dir, option, path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"error: catalogue='{path}': {reason}"), err
    assert not out_dir.exists()                                          # nothing written


def test_a_lanczos_block_wider_than_the_network_is_one_line(capsys, tiny, tmp_path):
    code, out, err = cli(capsys, "certify", "--out", tmp_path / "out", "--points", tiny / "points.nc",
                         "--method", "lanczos", "--block-size", "1000")
    assert code == 2 and out == "" and not (tmp_path / "out").exists()
    assert err == ("error: block_size=1000: must be <= the 24 parameters of the catalogue's networks "
                   "(a Lanczos block spans at most the whole space)\n")


def test_escape_rejects_an_uncertified_catalogue(capsys, tiny, tmp_path):
    code, out, err = cli(capsys, "escape", "--out", tmp_path, "--catalogue", tiny / "points.nc")
    assert code == 2 and out == ""
    assert err.startswith(f"error: catalogue='{tiny / 'points.nc'}': not certified (missing variables: "
                          "classification") and err.count("\n") == 1
    assert files_under(tmp_path) == []


# ------------------------------------------------------------------------------ atomic writes
def _plot_dataset() -> xr.Dataset:
    return xr.Dataset({"rank": (("point",), np.array([0, 1, 1])),
                       "loss": (("point",), np.array([3.0, 1.0, 1.2])),
                       "stratum_loss": (("point",), np.array([3.0, 1.0, 1.0])),
                       "classification": (("point",), np.array([1, 1, 2], np.int8))})


def test_plot_writer_leaves_no_partial_file_when_savefig_fails(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    folder = tmp_path / "figures"
    paths = sd.plot_loss_levels(_plot_dataset(), folder)                 # control: it works
    assert [Path(p).name for p in paths] == ["loss_levels.png", "loss_levels.pdf"]
    assert (folder / "loss_levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "loss_levels.pdf").read_bytes()[:5] == b"%PDF-"
    old = {name: (folder / name).read_bytes() for name in ("loss_levels.png", "loss_levels.pdf")}
    calls = []

    def failing_savefig(self, fname, *args, **kwargs):
        calls.append(Path(fname))
        Path(fname).write_bytes(b"partial")                             # a half-written file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        sd.plot_loss_levels(_plot_dataset(), folder)
    assert calls and all(c.parent == folder and c.name != "loss_levels.png" for c in calls)
    assert files_under(folder) == ["loss_levels.pdf", "loss_levels.png"]  # no temporary left
    assert {name: (folder / name).read_bytes() for name in old} == old    # the old figures intact
    with pytest.raises(OSError, match="disk full"):
        sd.plot_loss_levels(_plot_dataset(), tmp_path / "fresh")
    assert files_under(tmp_path / "fresh") == []                          # nothing at all


def test_catalogue_writer_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    """``sample`` writes points.nc through the atomic writer: a failing NetCDF write leaves no
    ``points.nc`` (and no temporary)."""
    def failing_to_netcdf(self, path=None, *args, **kwargs):
        Path(path).write_bytes(b"CDF partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", failing_to_netcdf)
    with pytest.raises(OSError, match="disk full"):
        run("sample", tiny / "config.toml", "--out", tmp_path)
    assert files_under(tmp_path) == ["config.toml"]


# ------------------------------------------------------------------------------ sources
SHARED_ROOT_MODULES = {"_validation", "_types"}    # dlnlab's own shared modules (not a package's)


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, [], node.lineno


def test_saddles_sources_follow_the_one_of_each_rules():
    files = sorted(SADDLES.glob("*.py"))
    assert len(files) >= 10
    problems = []
    for path in files:
        text = path.read_text()
        if "Array = jax.Array" in text:
            problems.append(f"{path.name}: own Array alias")
        if "matplotlib.use" in text:
            problems.append(f"{path.name}: matplotlib.use")
        for level, module, names, line in _imports(path):
            where = f"{path.name}:{line}"
            if "pyplot" in module or "pyplot" in names:
                problems.append(f"{where}: pyplot")
            if level == 0 and not module.startswith("dlnlab"):
                continue
            if level == 1:                                              # within saddles
                continue
            parts = module.split(".")[1:] if level == 0 else ([] if not module else module.split("."))
            private = [p for p in parts if p.startswith("_")]
            if private and not (len(parts) == 1 and parts[0] in SHARED_ROOT_MODULES):
                problems.append(f"{where}: private module {module}")
            if not parts:                                               # from .. import x
                private = [n for n in names if n.startswith("_") and n not in SHARED_ROOT_MODULES]
            else:
                private = [n for n in names if n.startswith("_")]
            if private:
                problems.append(f"{where}: private names {private} from {module or '..'}")
    assert problems == []
    for name in ("write_dataset", "read_dataset", "certify_many"):
        assert not hasattr(sd, name), name


def test_a_folder_of_another_sample_is_refused_then_replaced_with_what_was_derived(
        capsys, tiny, tmp_path):
    """Sampling other points into a folder with a certified catalogue used to leave the old
    catalogue beside the new points (and escape then ran on it): now refused, and --overwrite
    removes the derived files with the old points."""
    out = tmp_path / "s"
    shutil.copytree(tiny, out)
    (out / "catalogue.nc").write_bytes(b"derived from the old points")
    (out / "figures").mkdir()
    code, _, err = cli(capsys, "sample", EXAMPLES / "saddles_sample.toml", "--out", out, *TINY[:-2],
                       "--seed", "7")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: out={str(out)!r}: holds sample results of a different config")
    assert (out / "catalogue.nc").exists()                    # nothing touched
    code, _, err = cli(capsys, "sample", EXAMPLES / "saddles_sample.toml", "--out", out, *TINY[:-2],
                       "--seed", "7", "--overwrite")
    assert (code, err) == (0, "")
    assert files_under(out) == ["config.toml", "points.nc"]
    assert sd.read_catalogue(out / "points.nc").attrs["seed"] == 7
    # the same config again is not "different": no flag needed
    code, _, err = cli(capsys, "sample", out / "config.toml", "--out", out)
    assert (code, err) == (0, "")
    # a file as --out is named as such
    file = tmp_path / "f.toml"
    file.write_text("")
    code, _, err = cli(capsys, "sample", "--out", file, *TINY)
    assert (code, err) == (2, f"error: out={str(file)!r}: is a file, not a folder\n")
