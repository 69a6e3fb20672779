"""The documentation points at files users have: every image and relative link of ``README.md``
and ``docs/*.md`` resolves to a file of the repository, and nothing cites the theory notes by a
file name users do not have (``docs/theory.md §N`` and the papers are the sources).

"Of the repository" means: the file exists and git does not ignore it (``git ls-files --cached
--others --exclude-standard``), so a fresh clone has it once the change is committed. That is the
failure this test exists for: ``docs/figures/reproduction/`` was hidden by an unanchored
``reproduction/`` pattern in ``.gitignore``, and docs/reproduction.md embedded twelve figures
nobody else had. Without git (an unpacked archive) existence alone is checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); target up to whitespace or ')' (an optional "title" after).
MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_SRC = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)   # http:, https:, mailto:, //host


def link_targets(text: str) -> list[str]:
    """Every link and image target of a Markdown text, code blocks and code spans excluded."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return [m.group(1) for pattern in (MD_LINK, REF_LINK, HTML_SRC) for m in pattern.finditer(prose)]


def local_path(doc: Path, target: str) -> Path | None:
    """The repository file a target names, or None for an anchor or an absolute URL."""
    if target.startswith("#") or EXTERNAL.match(target):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    return (doc.parent / path).resolve()


def repository_files() -> set[Path] | None:
    """Files a clone would have (tracked, or new and not ignored); None without git."""
    git = shutil.which("git")
    if git is None:
        return None
    result = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=False)
    if result.returncode != 0:
        return None
    return {(ROOT / name).resolve() for name in result.stdout.decode().split("\0") if name}


def test_link_parser_finds_images_links_and_skips_code_and_urls():
    text = ("See ![fig](figures/a.png) and [the theory](theory.md#9-stationary) or "
            "[site](https://example.org/x.png), [top](#set-up).\n"
            "`[not](a link.md)`\n```md\n![no](in/a/fence.png)\n```\n"
            '<img src="figures/b.png" width=300>\n[ref]: other.md\n')
    assert link_targets(text) == ["figures/a.png", "theory.md#9-stationary",
                                  "https://example.org/x.png", "#set-up", "other.md",
                                  "figures/b.png"]
    doc = ROOT / "docs" / "x.md"
    assert local_path(doc, "theory.md#9-stationary") == ROOT / "docs" / "theory.md"
    assert local_path(doc, "../README.md") == ROOT / "README.md"
    assert local_path(doc, "#set-up") is None
    assert local_path(doc, "https://example.org/x.png") is None


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_image_and_relative_link_resolves_to_a_repository_file(doc):
    files = repository_files()
    missing = []
    for target in link_targets(doc.read_text(encoding="utf-8")):
        path = local_path(doc, target)
        if path is None:
            continue
        if path.is_dir():
            ok = files is None or any(f.is_relative_to(path) for f in files)
        else:
            ok = path.is_file() and (files is None or path in files)
        if not ok:
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to files a clone would not have: {missing}"


def test_reproduction_figures_are_not_ignored():
    """The committed figures of docs/reproduction.md sit under a path the run-output patterns
    (``/reproduction/``, ``/reproduction-quick/``, ``/runs/``) must not match."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    probe = ["docs/figures/reproduction/fig1/fig1.png", "docs/figures/runs/x.png",
             "docs/reproduction-quick/x.png"]
    result = subprocess.run([git, "check-ignore", "--no-index", *probe], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.stdout.split() == []
    outputs = ["reproduction/fig1/fig1.png", "reproduction-quick/fig1/fig1.png", "runs/default/x.nc"]
    result = subprocess.run([git, "check-ignore", "--no-index", *outputs], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.stdout.split() == outputs


# Built from parts so that this file does not match its own rule.
UNAVAILABLE_CITATION = re.compile(r"\b" + "THE" + r"ORY(?:\.md|\s*§)")


def cited_files() -> list[Path]:
    return sorted([*DOCS, *(ROOT / "src").rglob("*.py"), *(ROOT / "examples").glob("*.toml"),
                   *(ROOT / "benchmarks").rglob("*.py")])


def test_no_citation_of_theory_notes_users_do_not_have():
    """Docs, docstrings, comments and example configs cite ``docs/theory.md §N`` (or a paper),
    never the project-internal theory notes."""
    bad = []
    for path in cited_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if UNAVAILABLE_CITATION.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not bad, "cite docs/theory.md §N instead:\n" + "\n".join(bad)
