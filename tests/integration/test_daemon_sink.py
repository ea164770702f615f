"""The daemon's sink for a file source: text blocks go through the jails' one-pass
C++ path (Jail.add_lines) into real bans, blocks that path cannot take go
through the filter's hits, and an exception inside the pass costs the rest of
its block, counted and logged, never the daemon."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList
from kfwguard.daemon import Daemon
from kfwguard.jails.jail import Jail
from kfwguard.pipeline import JailFeed, SourcePipeline, build_filters
from kfwguard.sources import build_source
from kfwguard.sources.formats import TextBlock
from tests.conftest import need
from tests.integration.operator_fixtures import make_daemon

pytestmark = pytest.mark.usefixtures("private_netns")


def failures(addr: str, n: int, end: str = "\n") -> TextBlock:
    """``n`` sshd failures of ``addr``, stamped now (inside findtime)."""
    stamp = time.strftime("%b %e %H:%M:%S")
    line = f"{stamp} node1 sshd[1]: Failed password for root from {addr} port 22 ssh2{end}"
    return TextBlock((line * n).encode(), 0, str)


def pipeline(tmp_path: Path) -> tuple[Daemon, SourcePipeline]:
    """The pipeline of a file source into one sshd jail, built from its public parts."""
    log = tmp_path / "auth.log"
    log.write_text("")
    daemon, _ = make_daemon(
        tmp_path, sources=[{"name": "auth", "type": "file", "path": str(log)}],
        jails=[{"name": "sshd", "source": "auth", "filter": "sshd", "maxretry": 2,
                "findtime": "10m", "bantime": "1h"}])
    cfg, bans = daemon.cfg, daemon.bans
    assert bans is not None
    jail = Jail(cfg.jails[0], IgnoreList(LOOPBACK_NETS), banned_since=bans.banned_since)
    feed = JailFeed(jail, build_filters(cfg)["sshd"])
    rt = SourcePipeline(build_source(cfg.sources[0], None), [feed], daemon.store,
                        bans.request, time.time)
    return daemon, rt


def banned(daemon: Daemon) -> set[str]:
    assert daemon.bans is not None
    return {r.target for r in daemon.bans.active()}


class TestTextBlockSink:
    async def test_blocks_ban_through_the_cxx_pass(self, tmp_path: Path) -> None:
        """A block of failures bans its address and counts its rule's matches, in
        one C++ pass (the jail's windows are the C++ ones)."""
        daemon, rt = pipeline(tmp_path)
        need(rt.feeds[0].jail.native, "the C++ extension was not built")
        rt.sink(failures("203.0.113.7", 2))
        assert {"203.0.113.7"} == banned(daemon)
        assert {("sshd", "failed-auth"): 2} == rt.matches

    async def test_blocks_the_pass_cannot_take_still_ban(self, tmp_path: Path) -> None:
        """CRLF lines take the filter's per-record path and ban the same way."""
        daemon, rt = pipeline(tmp_path)
        rt.sink(failures("203.0.113.8", 2, end="\r\n"))
        assert {"203.0.113.8"} == banned(daemon)

    async def test_an_exception_in_the_pass_costs_its_block_only(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Python raising inside the C++ pass (here the ban-table look-up at
        maxretry) is counted as a source error; the sink returns, and the next
        block bans as usual."""
        daemon, rt = pipeline(tmp_path)
        jail = rt.feeds[0].jail
        need(jail.native, "the C++ extension was not built")
        sink = rt.sink

        def broken(host: object, jail_name: str) -> float | None:
            raise RuntimeError("ban table broken")

        monkeypatch.setattr(jail, "_banned_since", broken)
        sink(failures("203.0.113.9", 2))
        assert 1 == rt.errors and set() == banned(daemon)
        monkeypatch.undo()
        sink(failures("203.0.113.10", 2))
        assert {"203.0.113.10"} == banned(daemon)
