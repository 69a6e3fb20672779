"""Every README snippet runs as written.

Each ```python block is run on its own (a fresh interpreter in an empty folder: standalone, no
state from another block); its own assertions (equal time grids, exact-vs-reduced formulas) are
what it claims. The cheap shell commands run too: ``dlnlab theory`` as written and ``dlnlab run``
with tiny sizes appended (later ``--set`` values win); every other ``dlnlab`` command line is
checked against the CLI's own commands and options. The set-up commands (``pip install``) are not
run: CI executes them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TINY = ["--set", "runs=2", "--set", "training.horizon=1", "--set", "record.points=5"]
TIMEOUT = 900   # seconds; each block takes seconds of CPU, more on a loaded 2-core machine


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def shell_commands() -> list[list[str]]:
    """Every command line of the ```bash blocks, continuations joined, comments dropped."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def dlnlab_commands() -> list[list[str]]:
    return [c for c in shell_commands() if c[0] == "dlnlab"]


def dlnlab_exe() -> str:
    exe = Path(sys.executable).with_name("dlnlab")
    if not exe.exists():
        pytest.skip("the dlnlab console script is not installed next to this interpreter")
    return str(exe)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def test_readme_has_snippets_and_exactly_two_setup_commands():
    assert len(blocks("python")) >= 3
    setup = [c for c in shell_commands() if "pip" in c]
    assert [" ".join(c) for c in setup] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dlnlab run",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e .[test] && pytest -q"]


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(index, tmp_path):
    code = blocks("python")[index]
    result = run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, f"README python block {index + 1}:\n{code}\n{result.stderr[-3000:]}"


def test_every_dlnlab_command_names_real_commands_and_options():
    """Commands and options of every ``dlnlab`` line exist (the slow ones are not run)."""
    import typer

    from dlnlab.cli import app

    root = typer.main.get_command(app)
    commands = dlnlab_commands()
    assert {c[1] for c in commands} >= {"run", "theory", "reproduce"}
    for words in commands:
        command, rest = root, words[1:]
        while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
            assert rest[0] in command.commands, f"{' '.join(words)}: no command {rest[0]!r}"
            command, rest = command.commands[rest[0]], rest[1:]
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        unknown = [w for w in rest if w.startswith("--") and w.split("=")[0] not in options]
        assert not unknown, f"{' '.join(words)}: unknown options {unknown}"


def test_theory_command_runs_as_written(tmp_path):
    lines = [c for c in dlnlab_commands() if c[1] == "theory"]
    assert lines
    for words in lines:
        result = run([dlnlab_exe(), *words[1:]], tmp_path)
        assert result.returncode == 0, result.stderr
        as_json = run([dlnlab_exe(), *words[1:], "--json"], tmp_path)
        rows = json.loads(as_json.stdout)
        spectrum = words[words.index("--spectrum") + 1].split(",")
        assert [round(r["s"], 3) for r in rows] == [float(x) for x in spectrum]


def test_run_examples_write_their_own_directories(tmp_path):
    """The tour's ``dlnlab run`` lines (tiny sizes appended) finish, each into its own ``--out``,
    and none replaces the main job's ``runs/default``."""
    lines = [c for c in dlnlab_commands() if c[1] == "run" and "--out" in c]
    assert len(lines) >= 2
    outs = [words[words.index("--out") + 1] for words in lines]
    assert len(set(outs)) == len(outs) and "runs/default" not in outs
    (tmp_path / "examples").symlink_to(ROOT / "examples")     # the README runs from the root
    for words, out in zip(lines, outs, strict=True):
        result = run([dlnlab_exe(), *words[1:], *TINY, "--quiet"], tmp_path)
        assert result.returncode == 0, f"{' '.join(words)}:\n{result.stderr[-3000:]}"
        assert (tmp_path / out / "summary.json").is_file()
    assert not (tmp_path / "runs" / "default").exists()
