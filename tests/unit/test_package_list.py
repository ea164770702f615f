"""pyproject.toml's explicit package list names every package in the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class TestPackageList:
    def test_every_package_is_listed(self) -> None:
        """A package folder missing from ``[tool.setuptools] packages`` is left out
        of a plain ``pip install .`` and the image (kfwguard.cluster once was:
        the image's daemon died at start with ModuleNotFoundError)."""
        listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())
                     ["tool"]["setuptools"]["packages"])
        found = {".".join(p.parent.relative_to(REPO).parts)
                 for p in (REPO / "kfwguard").rglob("__init__.py")}
        assert set() == found - listed
