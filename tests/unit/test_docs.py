"""The README and docs/ name only files and tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = r"(?:\.ci|kfwguard|filters|actions|systemd|deploy|docs|tests|bench)"
# A repository path: starts with a top-level folder, not inside an absolute
# path (/var/lib/kfwguard) or a URL (http://kfwguard/bans).
PATH = re.compile(rf"(?<![\w/.:-]){TOP}/[\w./-]*[\w/]")
TEST_ID = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*test_\w+\.py)((?:::\w+)*)")
# A bare document name (DESIGN.md): at the top of the repository or beside the doc.
BARE_MD = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


def _has(source: str, part: str) -> bool:
    return re.search(rf"^\s*(?:class|(?:async )?def) {part}\b", source, re.M) is not None


def _test_file(name: str, parts: list[str]) -> Path | None:
    """The test file a doc means: its path, or the one file of that name under
    tests/ that holds every class and test named after it."""
    if "/" in name:
        p = REPO / name
        return p if p.is_file() else None
    found = [f for f in sorted((REPO / "tests").rglob(name))
             if all(_has(f.read_text(), part) for part in parts)]
    return found[0] if len(found) == 1 else None


def problems(doc: Path) -> list[str]:
    text = doc.read_text()
    out = []
    for m in PATH.finditer(text):
        path = m.group(0).rstrip(".")
        if not (REPO / path).exists():
            out.append(f"{doc.name}: {path}: no such file or folder")
    for m in BARE_MD.finditer(text):
        if not ((REPO / m.group(1)).exists() or (doc.parent / m.group(1)).exists()):
            out.append(f"{doc.name}: {m.group(1)}: no such document")
    for m in LINK.finditer(text):
        if not (doc.parent / m.group(1)).exists():
            out.append(f"{doc.name}: link {m.group(1)}: no such file")
    for m in TEST_ID.finditer(text):
        parts = [p for p in m.group(2).split("::") if p]
        f = _test_file(m.group(1), parts)
        if f is None:
            out.append(f"{doc.name}: {m.group(0)}: no such test file (or not one)")
            continue
        source = f.read_text()
        out += [f"{doc.name}: {m.group(0)}: {part} not in {f.relative_to(REPO)}"
                for part in parts if not _has(source, part)]
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_what_exists(doc: Path) -> None:
    """Every repository path, relative link and test (file::Class::test) a doc names
    exists."""
    assert [] == problems(doc)


def test_the_checker_catches_a_missing_file(tmp_path: Path) -> None:
    """The checker reports a path, a link and a test that do not exist."""
    doc = tmp_path / "x.md"
    doc.write_text("See `deploy/image/Dockerfile`, [d](nope.md), DESIGN.md and "
                   "`tests/unit/test_docs.py::test_nothing_here`.\n")
    assert 5 == len(problems(doc)), problems(doc)  # nope.md: a link and a bare name
