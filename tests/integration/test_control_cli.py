"""The control commands of the `kfwguard` CLI, against a real control socket."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kfwguard.cli import main
from kfwguard.cli.control import format_table
from kfwguard.daemon import Daemon
from tests.integration.operator_fixtures import jails_named, make_daemon, serving

# A real ban table in a network namespace of the test's own (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("private_netns")

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "kfwguard.yaml"
    cfg.write_text(f"control_socket: {tmp_path / 'run' / 'ctl.sock'}\n")
    return cfg


async def cli(cfg: Path, *args: str) -> tuple[int, str, str]:
    """Run `python -m kfwguard ARGS -c CFG` in a process, as an operator would."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kfwguard", *args, "-c", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with serving(make_daemon(tmp_path, **jails_named(tmp_path, "web"))[0]) as d:
        yield d


class TestControlCommands:
    def test_invalid_address_refused_before_asking(self, tmp_path: Path) -> None:
        """An invalid address exits 2 with a clear message, without a daemon."""
        result = CliRunner().invoke(main, ["ban", "10.0.0.256", "-c",
                                           str(write_config(tmp_path))])
        assert 2 == result.exit_code
        assert "kfwguard: '10.0.0.256' is not an IPv4 or IPv6 address or CIDR\n" == \
            result.stderr

    def test_invalid_duration_refused(self, tmp_path: Path) -> None:
        """A --for that is not a duration exits 2."""
        result = CliRunner().invoke(main, ["ban", "192.0.2.1", "--for", "ages", "-c",
                                           str(write_config(tmp_path))])
        assert 2 == result.exit_code
        assert "invalid duration 'ages'" in result.stderr

    def test_daemon_not_running(self, tmp_path: Path) -> None:
        """With nothing on the socket, every command says so and exits 1."""
        cfg = str(write_config(tmp_path))
        for args in (["ban", "192.0.2.1"], ["unban", "192.0.2.1"], ["list"], ["status"],
                     ["reload"]):
            result = CliRunner().invoke(main, [*args, "-c", cfg])
            assert 1 == result.exit_code, args
            assert "kfwguard is not running" in result.stderr

    def test_broken_config(self, tmp_path: Path) -> None:
        """A config that does not validate exits 2 naming the file."""
        cfg = tmp_path / "bad.yaml"
        cfg.write_text("control_socket: [1]\n")
        result = CliRunner().invoke(main, ["list", "-c", str(cfg)])
        assert 2 == result.exit_code
        assert str(cfg) in result.stderr

    async def test_ban_list_unban(self, daemon: Daemon) -> None:
        """ban, list (table and JSON) and unban work end to end through the socket."""
        assert daemon.cfg_path is not None
        cfg = Path(daemon.cfg_path)
        rc, out, err = await cli(cfg, "ban", "203.0.113.5", "--for", "2h", "--reason",
                                 "port scan")
        assert (0, "") == (rc, err)
        assert out.startswith("banned 203.0.113.5 in jail manual for 2h (until ")
        rc, out, _ = await cli(cfg, "ban", "2001:db8::/64", "--jail", "web")
        assert 0 == rc
        rc, out, _ = await cli(cfg, "list")
        lines = out.splitlines()
        assert lines[0].split() == ["ADDRESS", "JAIL", "MODE", "BANNED", "AT", "EXPIRES",
                                    "AT", "REASON"]
        assert ["203.0.113.5", "manual", "enforced"] == lines[1].split()[:3]
        assert lines[1].endswith("manual: port scan")
        assert ["2001:db8::/64", "web"] == lines[2].split()[:2]
        rc, out, _ = await cli(cfg, "list", "--json")
        assert ["203.0.113.5", "2001:db8::/64"] == [b["target"] for b in json.loads(out)]
        rc, out, _ = await cli(cfg, "unban", "203.0.113.5")
        assert (0, "unbanned 203.0.113.5 in jail manual\n") == (rc, out)
        rc, out, err = await cli(cfg, "unban", "203.0.113.5")
        assert (1, "kfwguard: 203.0.113.5 is not banned\n") == (rc, err)

    async def test_refused_ban(self, daemon: Daemon) -> None:
        """A ban the daemon refuses (loopback) exits 1 with its reason."""
        assert daemon.cfg_path is not None
        rc, _, err = await cli(Path(daemon.cfg_path), "ban", "::1")
        assert 1 == rc
        assert "ignore list or is protected" in err

    async def test_status(self, daemon: Daemon) -> None:
        """status prints a readable summary; --json the full document."""
        assert daemon.cfg_path is not None
        cfg = Path(daemon.cfg_path)
        await cli(cfg, "ban", "192.0.2.200")
        rc, out, _ = await cli(cfg, "status")
        assert 0 == rc
        assert "bans: 1 active, 0 pending" in out
        assert "state: persisting" in out
        rc, out, _ = await cli(cfg, "status", "--json")
        assert 1 == json.loads(out)["bans"]["active"]

    def test_table_layout(self) -> None:
        """Columns are padded to their widest cell; the last is left ragged."""
        assert "A    BB  C\nxxx  y   zzz" == format_table([["xxx", "y", "zzz"]],
                                                        ["A", "BB", "C"])
