"""A reload keeps what did not change (kfwguard.configdiff), on the real daemon:
an unchanged jail keeps its failure windows, an unchanged source reads on
without a gap or a re-read."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon_harness import (
    DaemonRun,
    base_config,
    sshd_fail,
    syslog_now,
    wait_until,
)
from tests.netns import Host, Lab


@dataclass
class Net:
    node: Host
    attacker: Host
    log: Path
    daemon: DaemonRun
    config: dict[str, Any]


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[Net]:
    node, attacker = lab.host("reload"), lab.host("reloadatk")
    lab.link(node, attacker, "10.93.1", "fd00:93:1")
    logfile = tmp_path / "auth.log"
    logfile.write_text("")
    config = base_config(tmp_path, logfile)
    d = DaemonRun(node, tmp_path, config)
    try:
        yield Net(node, attacker, logfile, d, config)
    finally:
        d.stop()


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def reload_with(net: Net, **changes: Any) -> None:
    """Rewrite the config with ``changes`` (none touching the jail or the source),
    SIGHUP, and wait for the daemon to say it reloaded."""
    before = net.daemon.log().count('"reloaded"')
    net.daemon.write_config({**net.config, **changes})
    assert net.daemon.proc is not None
    net.daemon.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: net.daemon.log().count('"reloaded"') > before), net.daemon.log()


def lines_read(status: dict[str, Any] | None) -> int:
    assert status is not None
    return int(status["sources"]["auth"]["lines_read"])


def matches(status: dict[str, Any] | None) -> int:
    assert status is not None
    return sum(status["jails"]["sshd"]["matches"].values())


class TestReloadKeeps:
    def test_one_failure_short_before_sighup_is_banned_after(self, net: Net) -> None:
        """An attacker one failure short of maxretry before SIGHUP is banned by the
        next failure after it: the unchanged jail kept its failure window."""
        net.daemon.start()
        attacker = net.attacker.ip4
        for port in (40001, 40002):  # maxretry is 3
            append(net.log, sshd_fail(attacker, port=port))
        assert wait_until(lambda: matches(net.daemon.status()) == 2), net.daemon.log()
        reload_with(net, node_name="renamed-node")
        append(net.log, sshd_fail(attacker, port=40003))
        assert wait_until(lambda: attacker in net.daemon.elements("ban_v4")), net.daemon.log()

    def test_a_held_session_line_still_counts_after_sighup(self, net: Net) -> None:
        """PAM's line of an attempt, held by the session pairing when SIGHUP
        comes, counts when its session ends after the reload: the kept jail kept
        its sessions (a fresh feed dropped the held line, and the attacker one
        short of maxretry was never banned)."""
        net.daemon.start()
        attacker = net.attacker.ip4
        for port in (40001, 40002):  # maxretry is 3
            append(net.log, sshd_fail(attacker, port=port))
        append(net.log, f"{syslog_now()} node sshd[999]: pam_unix(sshd:auth): authentication "
                        f"failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={attacker}  "
                        "user=root\n")
        assert wait_until(lambda: lines_read(net.daemon.status()) == 3), net.daemon.log()
        assert 2 == matches(net.daemon.status())  # the PAM line is held, not counted
        assert attacker not in net.daemon.elements("ban_v4")
        reload_with(net, node_name="renamed-node")
        append(net.log, f"{syslog_now()} node sshd[999]: Connection closed by authenticating "
                        f"user root {attacker} port 40003 [preauth]\n")
        assert wait_until(lambda: attacker in net.daemon.elements("ban_v4")), net.daemon.log()

    def test_unchanged_source_is_not_reread(self, net: Net) -> None:
        """Lines read before a reload are neither read again nor forgotten: the
        source's count goes on from where it was."""
        net.daemon.start()
        for i in range(5):
            append(net.log, sshd_fail(f"198.51.100.{i + 1}"))
        assert wait_until(lambda: net.daemon.lines_read("auth") == 5), net.daemon.log()
        reload_with(net, node_name="renamed-node")
        append(net.log, sshd_fail("198.51.100.99"))
        assert wait_until(lambda: net.daemon.lines_read("auth") == 6), net.daemon.log()
        status = net.daemon.status()
        assert (6, 6) == (status["sources"]["auth"]["lines_read"] if status else -1,
                          matches(status))

    def test_lines_written_across_a_reload_are_counted_once(self, net: Net) -> None:
        """Failures written while a reload runs are each counted exactly once."""
        net.daemon.start()
        stop = threading.Event()
        written = 0

        def writer() -> None:
            nonlocal written
            while not stop.is_set() and written < 5000:
                written += 1
                # Distinct addresses, one failure each: nothing is banned.
                append(net.log, sshd_fail(f"198.51.{written // 250}.{written % 250 + 1}"))

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert wait_until(lambda: net.daemon.lines_read("auth") > 0), net.daemon.log()
            reload_with(net, node_name="renamed-node")
            reload_with(net, node_name="renamed-again")
        finally:
            stop.set()
            thread.join()
        assert wait_until(lambda: net.daemon.lines_read("auth") == written), net.daemon.log()
        assert written == matches(net.daemon.status())
