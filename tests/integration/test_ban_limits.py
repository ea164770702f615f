"""Ban lengths are validated on every path: config, CLI `--for`, control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kfwguard.cli import main
from kfwguard.config import ConfigError, JailConfig, parse_config
from kfwguard.daemon import Daemon
from kfwguard.durations import MAX_BAN, check_ban_duration, parse_duration
from kfwguard.firewall.bantable import nft_timeout
from kfwguard.operator.client import ControlClient, ControlError
from tests.integration.operator_fixtures import make_daemon, serving

HUGE = "9" * 400  # parses to inf as a float


class TestDurations:
    @pytest.mark.parametrize("text", ["inf", "nan", HUGE, f"{HUGE}s", "-1"])
    def test_non_finite_refused(self, text: str) -> None:
        """Text that would parse to inf or NaN is an error, not a number."""
        with pytest.raises(ValueError):
            parse_duration(text)

    @pytest.mark.parametrize("value", [float("inf"), float("nan")])
    def test_non_finite_numbers_refused(self, value: float) -> None:
        """inf and NaN given as numbers are errors too."""
        with pytest.raises(ValueError):
            parse_duration(value)

    @pytest.mark.parametrize("seconds", [0.0, 0.5, MAX_BAN + 1, 99999999 * 604800.0])
    def test_ban_length_bounds(self, seconds: float) -> None:
        """A ban lasts at least a second and at most MAX_BAN (365 days)."""
        with pytest.raises(ValueError):
            check_ban_duration(seconds)

    @pytest.mark.parametrize(("seconds", "text"), [
        (1.0, "1s"), (0.2, "1s"), (604800.0, "604800s"), (MAX_BAN, "31536000s"),
        (604800.0004, "604800s1ms"), (1.5, "1s500ms")])
    def test_timeout_forms(self, seconds: float, text: str) -> None:
        """Kernel timeouts are written as whole seconds (+ ms), never as <N>ms."""
        assert text == nft_timeout(seconds)

    def test_config_bounds(self) -> None:
        """bantime and bantime_increment.max above the maximum, or under 1s, are
        refused at load; 2d and a 1w increment cap are fine."""
        base = {"name": "j", "source": "s", "filter": "f"}
        assert 172800.0 == JailConfig.model_validate({**base, "bantime": "2d"}).bantime
        for bad in ({"bantime": "366d"}, {"bantime": "0.5"}, {"bantime": HUGE},
                    {"bantime_increment": {"max": "400d"}},
                    {"bantime_increment": {"factor": "inf"}}):
            with pytest.raises(ValueError):
                JailConfig.model_validate({**base, **bad})

    def test_config_file_names_the_key(self) -> None:
        """A too-long bantime in a config file is a ConfigError naming the key."""
        text = ("sources: [{name: s, type: file, path: /x}]\n"
                "jails: [{name: j, source: s, filter: sshd, bantime: 99999999w}]\n")
        with pytest.raises(ConfigError, match="bantime"):
            parse_config(text, "k.yaml")


class TestCli:
    @pytest.mark.parametrize("value", ["99999999w", HUGE, "366d", "0.1s", "500ms", "inf"])
    def test_for_refused_before_asking(self, tmp_path: Path, value: str) -> None:
        """`ban --for` out of range exits 2 with a clear message (no daemon needed,
        no traceback)."""
        cfg = tmp_path / "k.yaml"
        cfg.write_text(f"control_socket: {tmp_path / 'ctl.sock'}\n")
        result = CliRunner().invoke(main, ["ban", "192.0.2.1", "--for", value, "-c", str(cfg)])
        assert 2 == result.exit_code, result.output
        assert result.stderr.startswith("kfwguard: --for: ")
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with serving(make_daemon(tmp_path)[0]) as d:
        yield d


@pytest.mark.usefixtures("private_netns")
class TestApi:
    @pytest.mark.parametrize("duration", [float("nan"), float("inf"), 1e300, 0.5, -5,
                                          "99999999w", HUGE])
    async def test_bad_duration_is_400_and_stores_nothing(
        self, daemon: Daemon, duration: Any
    ) -> None:
        """A bad duration over the API is a 400 naming the problem: no row stored,
        the store still persisting, the daemon still banning."""
        client = ControlClient(daemon.cfg.control_socket)
        with pytest.raises(ControlError) as err:
            await client.ban("203.0.113.8", duration=duration)
        assert 400 == err.value.status
        assert daemon.bans is not None and daemon.store is not None
        assert [] == daemon.store.active_bans()
        assert daemon.bans.persisting
        out = await client.ban("203.0.113.9", duration=MAX_BAN)
        assert out["applied"] is True
        assert 1 == len(daemon.store.active_bans())

    async def test_applied_false_when_the_kernel_refuses(self, daemon: Daemon) -> None:
        """A manual ban the kernel refuses (its set is full) is stored and answered
        with "applied": false, and status counts it as pending."""
        assert daemon.bans is not None
        table = daemon.bans.table
        table.set_size = 16  # the sentinel + 15 bans
        table.replace([])
        client = ControlClient(daemon.cfg.control_socket)
        for i in range(15):
            assert (await client.ban(f"198.51.100.{i + 1}"))["applied"] is True
        out = await client.ban("203.0.113.20", duration="4w")
        assert out["applied"] is False
        assert ["203.0.113.20"] == [b["target"] for b in out["banned"]]
        assert "203.0.113.20" not in table.list()
        assert 1 == (await client.status())["bans"]["pending"]
