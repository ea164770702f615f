"""A source kind defined in one module (tests/unit/test_registry.py) is built by
the real daemon from config and bans what it delivers — on a real ban table in a
private network namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfwguard import app
from kfwguard.config import parse_config
from tests.conftest import eventually
from tests.unit.test_registry import LinesSource, config_text


class TestNewSourceKind:
    @pytest.mark.usefixtures("private_netns")
    async def test_daemon_builds_and_runs_the_new_source(self, tmp_path: Path) -> None:
        """The daemon builds the new source from config and bans what it delivers."""
        cfg = parse_config(config_text(tmp_path))
        daemon = app.build(cfg, None).daemon
        await daemon.start()
        try:
            assert isinstance(daemon.sources["mem"].source, LinesSource)
            await eventually(lambda: daemon.bans is not None and any(
                r.target == "203.0.113.9" for r in daemon.bans.active()))
        finally:
            await daemon.shutdown()
