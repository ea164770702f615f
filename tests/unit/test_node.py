"""kfwguard.node: the child process that reads addresses, and the daemon's fallback."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard import node


def fake_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    """Make ``sys.executable`` a script that ignores its arguments and runs ``body``."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))


def test_child_output_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The child's JSON list becomes addresses; entries that are not addresses are dropped."""
    fake_child(monkeypatch, tmp_path, """echo '["192.0.2.7", "2001:db8::7", "junk", 5]'""")
    assert [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")] \
        == node.local_addresses()


@pytest.mark.parametrize("body", [
    "echo boom >&2; exit 3",
    "echo 'not json'",
    "exec /nonexistent/binary",
])
def test_child_failure_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  body: str) -> None:
    """A failing child (exit status, bad output) gives no node addresses, not an exception."""
    fake_child(monkeypatch, tmp_path, body)
    assert [] == node.local_addresses()


def test_missing_interpreter_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that cannot be started gives no node addresses, not an exception."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert [] == node.local_addresses()


def test_early_child_answers_the_next_lookup_once(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """The child started early (``kfwguard run`` before its imports) answers the
    next lookup; the one after starts a child of its own (a reload's answer is
    the namespace's addresses then, not at start)."""
    fake_child(monkeypatch, tmp_path, """echo '["192.0.2.8"]'""")
    node.read_addresses_early()
    (tmp_path / "later").mkdir()
    fake_child(monkeypatch, tmp_path / "later", """echo '["192.0.2.9"]'""")
    assert [ipaddress.ip_address("192.0.2.8")] == node.local_addresses()
    assert [ipaddress.ip_address("192.0.2.9")] == node.local_addresses()


def test_early_child_that_hangs_is_killed(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """An early child that never answers is given up on (and killed) after the timeout."""
    fake_child(monkeypatch, tmp_path, "exec sleep 30")
    node.read_addresses_early()
    proc = node._early
    assert proc is not None
    assert [] == node.local_addresses(timeout=0.3)
    assert proc.returncode is not None


def test_child_timeout_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A child that hangs is given up on after the timeout."""
    fake_child(monkeypatch, tmp_path, "exec sleep 30")
    assert [] == node.local_addresses(timeout=0.3)


def test_protected_networks_survive_child_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """protected_networks still returns the API server when the child fails."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    nets = node.protected_networks()
    assert ipaddress.ip_network("10.96.0.1/32") in nets


def test_real_child_runs() -> None:
    """`python -m kfwguard.node` succeeds here and lists at least loopback, as JSON."""
    out = subprocess.run([sys.executable, "-m", "kfwguard.node"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert "127.0.0.1" in out or "::1" in out


def test_importing_the_daemon_leaves_pyroute2_out() -> None:
    """The daemon's modules never import pyroute2 (it lives in the child only)."""
    code = ("import sys, kfwguard.cli, kfwguard.daemon, kfwguard.node; "
            "print('pyroute2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "False" == out.strip()


class TestAddressNotifications:
    """Parsing rtnetlink RTM_NEWADDR messages (kfwguard.node._new_addresses)."""

    @staticmethod
    def newaddr(family: int, *attrs: tuple[int, bytes]) -> bytes:
        import struct

        body = struct.pack("=BBBBI", family, 24, 0, 0, 3)
        for kind, value in attrs:
            a = struct.pack("=HH", 4 + len(value), kind) + value
            body += a + b"\0" * (-len(a) % 4)
        return struct.pack("=IHHII", 16 + len(body), 20, 0, 0, 0) + body

    def test_reads_both_families(self) -> None:
        """IFA_LOCAL/IFA_ADDRESS of RTM_NEWADDR give the addresses, once each."""
        import socket

        from kfwguard.node import _new_addresses

        v4 = socket.inet_pton(socket.AF_INET, "198.51.100.50")
        v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        data = (self.newaddr(socket.AF_INET, (1, v4), (2, v4))
                + self.newaddr(socket.AF_INET6, (1, v6)))
        assert ["198.51.100.50", "2001:db8::7"] == [str(a) for a in _new_addresses(data)]

    @settings(max_examples=500, deadline=None)
    @given(data=st.binary(max_size=200))
    def test_garbage_never_raises(self, data: bytes) -> None:
        """Any bytes (a truncated or hostile message) give a list, never an exception."""
        from kfwguard.node import _new_addresses

        assert isinstance(_new_addresses(data), list)
