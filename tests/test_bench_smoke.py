"""CI smoke of the benchmark (bench/): it runs and reports every section. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import SECTIONS
from tests.conftest import have_netns, need

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object]]:
    """Run ``python -m bench.run --smoke`` once; return its Markdown and JSON output."""
    need(have_netns(), "the benchmark runs daemons in network namespaces: needs root and nft")
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    r = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=110,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    assert 0 == r.returncode, r.stdout[-4000:] + r.stderr[-4000:]
    data = json.loads((REPO / "bench" / "out" / "results-smoke.json").read_text())
    return out.read_text(), data


class TestBenchSmoke:
    @pytest.mark.timeout(120)
    def test_report_has_every_section(self, smoke_report: tuple[str, dict[str, object]]) -> None:
        """The report names the machine and has a heading for each of the five benchmarks."""
        text, _ = smoke_report
        assert "## Machine" in text
        assert "## Targets (issue 6)" in text
        for _, title in SECTIONS:
            assert f"## {title}" in text

    @pytest.mark.timeout(120)
    def test_every_section_measured_kfwguard(
            self, smoke_report: tuple[str, dict[str, object]]) -> None:
        """No section failed or was skipped, and each has at least one kfwguard figure."""
        _, data = smoke_report
        sections = data["sections"]
        assert isinstance(sections, list)
        assert [k for k, _ in SECTIONS] == [s["key"] for s in sections]
        for s in sections:
            assert "" == s["skipped"], (s["key"], s["skipped"])
            assert any(f["kfw"] is not None for f in s["figures"]), s["key"]

    @pytest.mark.timeout(120)
    def test_no_ban_missed_in_flood(self, smoke_report: tuple[str, dict[str, object]]) -> None:
        """Every offender that reached maxretry inside the flood ended up in the kernel set."""
        _, data = smoke_report
        sections = data["sections"]
        assert isinstance(sections, list)
        memory = next(s for s in sections if s["key"] == "memory")
        banned = next(f for f in memory["figures"] if f["name"].startswith("offenders banned"))
        assert 10 == banned["kfw"]
