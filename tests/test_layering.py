"""The package layering, checked from the source (docs/architecture.md, "Layers").

Rules (every module under ``src/dlnlab``; imports anywhere in a module count, local ones too):

- ``core`` imports nothing from ``dynamics``, ``engine``, ``theory``, ``experiments``, ``papers``,
  ``analysis``, ``plot``, ``saddles``, ``io``;
- ``theory`` nothing from ``dynamics``, ``engine``, ``experiments``, ``papers``, ``plot``;
- ``dynamics`` nothing from ``engine``, ``experiments``, ``papers``, ``plot``;
- ``engine`` nothing from ``experiments``, ``papers``, ``plot``;
- ``plot`` nothing from ``theory``, ``experiments``, ``papers``;
- ``analysis`` nothing from ``experiments``, ``papers``;
- ``sweep`` nothing from ``papers`` (papers may run their grids through it);
- no private name (``_name``, a private module or a private attribute) is imported from another
  package; the shared root modules ``dlnlab._validation`` and ``dlnlab._types`` are the only
  private modules every package may use;
- no import cycle among module-level imports.

``check_layering(root)`` returns the violations; the tests run it on the real tree (none) and on a
small tree with planted violations (each one found), so the check itself can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dlnlab"

FORBIDDEN = {
    "core": {"dynamics", "engine", "theory", "experiments", "papers", "analysis", "plot",
             "saddles", "io"},
    "theory": {"dynamics", "engine", "experiments", "papers", "plot"},
    "dynamics": {"engine", "experiments", "papers", "plot"},
    "engine": {"experiments", "papers", "plot"},
    "plot": {"theory", "experiments", "papers"},
    "analysis": {"experiments", "papers"},
    "sweep": {"papers"},
}
SHARED_PRIVATE = {"dlnlab._validation", "dlnlab._types"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str | None, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _package(module: str) -> str:
    """``dlnlab.X`` for ``dlnlab.X.anything`` (the root modules are their own package)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports(path: Path, root: Path):
    """``(line, imported module, imported name or None, module level?)`` of every import."""
    current = _module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, current, is_package)
            for alias in node.names:
                yield node.lineno, base, alias.name, id(node) in top


def check_layering(root: Path) -> list[str]:
    """Every violation of the rules above under the package folder ``root``."""
    root = Path(root)
    name = root.name
    problems, graph = [], {}
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    for current, path in sorted(modules.items()):
        layer = current.split(".")[1] if current.count(".") >= 1 else ""
        here = _package(current)
        graph.setdefault(current, set())
        for line, module, imported, top_level in _imports(path, root):
            if not (module == name or module.startswith(name + ".")):
                continue
            target = module
            if imported and f"{module}.{imported}" in modules:
                target = f"{module}.{imported}"          # `from pkg import submodule`
            target_layer = target.split(".")[1] if target.count(".") >= 1 else ""
            where = f"{current}:{line}"
            if target_layer in FORBIDDEN.get(layer, ()):
                problems.append(f"{where}: {layer} imports {target} ({layer} must not use "
                                f"{target_layer})")
            other = _package(target) != here
            private_module = any(p.startswith("_") and not p.startswith("__")
                                 for p in target.split(".")[1:])
            if other and private_module and target not in SHARED_PRIVATE:
                problems.append(f"{where}: private module {target} imported across packages")
            private_name = (imported is not None and imported.startswith("_")
                            and not imported.startswith("__") and target == module)
            if other and private_name:
                problems.append(f"{where}: private name {imported} imported from {module}")
            if top_level and target in modules and target != current:
                graph[current].add(target)
    problems.extend(_cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Import cycles among module-level imports (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    return found


def test_the_source_tree_respects_the_layering():
    problems = check_layering(SRC)
    assert problems == [], "\n".join(problems)


def test_the_layering_check_finds_planted_violations(tmp_path):
    """A tree with one violation of each kind: every one is reported (the check can fail)."""
    pkg = tmp_path / "dlnlab"
    files = {
        "__init__.py": "",
        "_validation.py": "",
        "_types.py": "Array = object\n",
        "core/__init__.py": "",
        "core/task.py": "from ..dynamics import stepper\nfrom .._types import Array\n",
        "core/loss.py": "from .task import x\n",
        "dynamics/__init__.py": "",
        "dynamics/_ops.py": "def mm(): pass\n",
        "dynamics/stepper.py": "from . import _ops\nfrom .. import _validation as v\n",
        "engine/__init__.py": "",
        "engine/sim.py": "from ..dynamics._ops import mm\nfrom ..experiments.run import go\n",
        "experiments/__init__.py": "",
        "experiments/run.py": "from ..dynamics.stepper import _private_helper\n",
        "plot/__init__.py": "",
        "plot/fig.py": "def f():\n    from ..theory import reduced\n",
        "theory/__init__.py": "",
        "theory/reduced.py": "",
        "analysis/__init__.py": "",
        "analysis/a.py": "from .b import y\n",
        "analysis/b.py": "from .a import z\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    problems = "\n".join(check_layering(pkg))
    expected = [
        "dlnlab.core.task:1: core imports dlnlab.dynamics",
        "dlnlab.engine.sim:1: private module dlnlab.dynamics._ops imported across packages",
        "dlnlab.engine.sim:2: engine imports dlnlab.experiments.run",
        "dlnlab.experiments.run:1: private name _private_helper imported from dlnlab.dynamics",
        "dlnlab.plot.fig:2: plot imports dlnlab.theory.reduced",
        "import cycle: dlnlab.analysis.a -> dlnlab.analysis.b -> dlnlab.analysis.a",
    ]
    for line in expected:
        assert line in problems, f"not reported: {line}\n---\n{problems}"
    # and the allowed imports are not reported
    reported = {line.split(":")[0] for line in problems.splitlines()}
    assert "dlnlab.dynamics.stepper" not in reported and "dlnlab.core.loss" not in reported
    assert "_types" not in problems and "_validation" not in problems
