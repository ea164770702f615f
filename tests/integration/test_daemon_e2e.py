"""The core promise, end to end on a real kernel: log lines in, packets dropped.

The daemon runs in a "node" namespace tailing a temporary log; an "attacker"
and a "bystander" namespace connect to it over veth pairs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.daemon_harness import (
    DaemonRun,
    base_config,
    listen_tcp,
    sshd_fail,
    wait_until,
)
from tests.netns import Host, Lab, can_connect

PORT = 2222


@dataclass
class Net:
    node: Host
    attacker: Host
    bystander: Host
    log: Path
    daemon: DaemonRun


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[Net]:
    node, attacker, bystander = lab.host("node"), lab.host("attack"), lab.host("other")
    lab.link(node, attacker, "10.91.1", "fd00:91:1")
    lab.link(node, bystander, "10.91.2", "fd00:91:2")
    logfile = tmp_path / "auth.log"
    logfile.write_text("")
    d = DaemonRun(node, tmp_path, base_config(tmp_path, logfile))
    server = listen_tcp(node, PORT)
    try:
        yield Net(node, attacker, bystander, logfile, d)
    finally:
        d.stop()
        server.kill()
        server.wait()


def append(path: Path, text: str | bytes) -> None:
    with path.open("ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


class TestDaemonBans:
    def test_offender_banned_and_dropped(self, net: Net) -> None:
        """maxretry failures put the attacker in ban_v4 with a timeout; its TCP
        connections then fail while a bystander's still work."""
        net.daemon.start()
        attacker = net.attacker.ip4  # 10.91.1.2
        assert can_connect(net.attacker, net.node.addrs4[0], PORT)
        for i in range(3):
            append(net.log, sshd_fail(attacker, port=40000 + i))
        assert wait_until(lambda: attacker in net.daemon.elements("ban_v4")), net.daemon.log()
        left = net.daemon.elements("ban_v4")[attacker]
        assert 3000 < left <= 3600  # seconds left
        assert not can_connect(net.attacker, net.node.addrs4[0], PORT)
        assert can_connect(net.bystander, net.node.addrs4[1], PORT)

    def test_ipv6_offender(self, net: Net) -> None:
        """An IPv6 offender lands in ban_v6 and is dropped over IPv6."""
        net.daemon.start()
        attacker6 = net.attacker.ip6
        for i in range(3):
            append(net.log, sshd_fail(attacker6, port=41000 + i))
        assert wait_until(lambda: attacker6 in net.daemon.elements("ban_v6")), net.daemon.log()
        assert not can_connect(net.attacker, net.node.addrs6[0], PORT)
        assert can_connect(net.bystander, net.node.addrs6[1], PORT)

    def test_below_maxretry_not_banned(self, net: Net) -> None:
        """Fewer than maxretry failures ban nobody."""
        net.daemon.start()
        for i in range(2):
            append(net.log, sshd_fail(net.attacker.ip4, port=42000 + i))
        append(net.log, sshd_fail("198.51.100.99", port=1))
        for _ in range(3):
            append(net.log, sshd_fail("198.51.100.99", port=2))
        assert wait_until(lambda: "198.51.100.99" in net.daemon.elements("ban_v4"))
        assert net.attacker.ip4 not in net.daemon.elements("ban_v4")

    def test_user_name_cannot_smuggle_address(self, net: Net) -> None:
        """An address inside an attacker-chosen user name is never banned; the true
        source is."""
        net.daemon.start()
        victim = net.bystander.ip4
        for i in range(5):
            append(net.log, sshd_fail(net.attacker.ip4,
                                      user=f"invalid user x from {victim} port 22 ssh2",
                                      port=43000 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
        assert victim not in net.daemon.elements("ban_v4")
        assert can_connect(net.bystander, net.node.addrs4[1], PORT)

    def test_hostile_lines_leave_daemon_running(self, net: Net) -> None:
        """A 1 MiB line, NUL bytes and binary junk are skipped; the daemon keeps banning."""
        net.daemon.start()
        append(net.log, b"A" * (1024 * 1024) + b"\n")
        append(net.log, bytes(range(256)) * 64 + b"\n")
        append(net.log, b"\x00\xff\xfe" * 1000 + b"\n")
        for i in range(3):
            append(net.log, sshd_fail(net.attacker.ip4, port=44000 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4")), \
            net.daemon.log()
        assert net.daemon.alive()


class TestDaemonDurability:
    def test_ban_survives_restart_and_lost_table(self, net: Net) -> None:
        """A ban is restored at start even if the table was deleted while stopped,
        and the stopped daemon left the ban in the kernel."""
        net.daemon.start()
        for i in range(3):
            append(net.log, sshd_fail(net.attacker.ip4, port=45000 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
        assert 0 == net.daemon.stop(signal.SIGTERM)
        assert net.attacker.ip4 in net.daemon.elements("ban_v4")  # left in place
        net.node.run("nft", "delete", "table", "inet", net.daemon.table)
        net.daemon.start()
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
        assert not can_connect(net.attacker, net.node.addrs4[0], PORT)

    def test_restart_does_not_reread_or_reban(self, net: Net) -> None:
        """After a restart the source resumes at its saved position: old lines are not
        counted again, and new lines are."""
        net.daemon.start()
        for i in range(2):
            append(net.log, sshd_fail(net.attacker.ip4, port=46000 + i))
        net.daemon.stop()
        net.daemon.start()
        append(net.log, sshd_fail(net.attacker.ip4, port=46010))
        wait_until(lambda: False, timeout=1.0)
        assert net.attacker.ip4 not in net.daemon.elements("ban_v4")
        for i in range(3):
            append(net.log, sshd_fail(net.attacker.ip4, port=46020 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))

    def test_table_deleted_while_running_is_recreated(self, net: Net) -> None:
        """Deleting the ban table (or flushing the ruleset) while running brings it back
        with its bans within seconds."""
        net.daemon.start()
        for i in range(3):
            append(net.log, sshd_fail(net.attacker.ip4, port=47000 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
        net.node.run("nft", "flush", "ruleset")
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"), timeout=10)
        net.node.run("nft", "flush", "set", "inet", net.daemon.table, "ban_v4")
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"), timeout=10)
        assert not can_connect(net.attacker, net.node.addrs4[0], PORT)

    def test_ban_expires(self, net: Net, tmp_path: Path) -> None:
        """A ban leaves the kernel when its time is up and the attacker can connect again."""
        net.daemon.write_config(base_config(tmp_path, net.log, bantime="3s"))
        net.daemon.start()
        for i in range(3):
            append(net.log, sshd_fail(net.attacker.ip4, port=48000 + i))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
        assert wait_until(lambda: net.attacker.ip4 not in net.daemon.elements("ban_v4"),
                          timeout=15)
        assert can_connect(net.attacker, net.node.addrs4[0], PORT)

    def test_sighup_reloads(self, net: Net, tmp_path: Path) -> None:
        """SIGHUP re-reads the config: a lower maxretry takes effect without a restart."""
        net.daemon.start()
        net.daemon.write_config(base_config(tmp_path, net.log, maxretry=1))
        assert net.daemon.proc is not None
        net.daemon.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: '"reloaded"' in net.daemon.log())
        append(net.log, sshd_fail(net.attacker.ip4, port=49000))
        assert wait_until(lambda: net.attacker.ip4 in net.daemon.elements("ban_v4"))
