"""A reload onto a config that says nothing is refused: the daemon keeps running
on the old config, never on an empty one (issue 11, item 11). Built on a real ban
table in a private network namespace."""

# The test writes the config with plain blocking calls on purpose.
# ruff: noqa: ASYNC240

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.integration.operator_fixtures import make_daemon


@pytest.mark.usefixtures("private_netns")
class TestReloadRefusesEmpty:
    async def test_reload_keeps_old_config(self, tmp_path: Path) -> None:
        """A reload onto an emptied config file is refused and the old config,
        jails included, stays in force."""
        log = tmp_path / "auth.log"
        log.write_text("")
        daemon, _ = make_daemon(
            tmp_path, node_name="before",
            sources=[{"name": "auth", "type": "file", "path": str(log)}],
            jails=[{"name": "sshd", "source": "auth", "filter": "sshd"}])
        assert daemon.cfg_path is not None
        try:
            Path(daemon.cfg_path).write_text("")
            assert await daemon.reload() is False
            assert "before" == daemon.cfg.node_name
            assert ["sshd"] == [j.name for j in daemon.cfg.jails]
            Path(daemon.cfg_path).write_text(yaml.safe_dump({
                "state_dir": str(daemon.cfg.state_dir), "node_name": "after",
                "control_socket": str(daemon.cfg.control_socket)}))
            assert await daemon.reload() is True
            assert "after" == daemon.cfg.node_name
        finally:
            await daemon.shutdown()
