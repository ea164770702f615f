"""Shared fixtures: privilege checks, namespaces, a running journald.

When CI=true, a test that needs root, network namespaces or nft fails instead
of being skipped, so CI cannot go green by skipping the real-kernel tests.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netns import Lab

IN_CI = os.environ.get("CI", "").lower() == "true"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


async def eventually(pred: Callable[[], bool]) -> None:
    """Poll ``pred`` (state changed by tasks a test cannot await directly) until it
    holds, for at most 20 s."""
    async with asyncio.timeout(20.0):
        while not pred():  # noqa: ASYNC110 - the state has no event to wait on
            await asyncio.sleep(0.02)


def need(condition: bool, why: str) -> None:
    """Skip (or, under CI=true, fail) unless ``condition`` holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def have_netns() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("ip") is not None
        and shutil.which("nft") is not None
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh set of kfwtest-* namespaces, removed afterwards."""
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("ip") is not None, "needs iproute2 (ip)")
    need(shutil.which("nft") is not None, "needs nftables (nft)")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


CLONE_NEWNET = 0x40000000
# The namespace the test run started in: the host's (or CI's). Nothing may
# create nft tables here.
HOST_NETNS = os.stat("/proc/self/ns/net").st_ino


@pytest.fixture
def private_netns() -> Iterator[None]:
    """Run this test (its thread, and threads and processes it starts) in a fresh
    network namespace with loopback up, so it can use the real kernel (nft sets,
    sockets) without touching the host's; the original namespace is restored after."""
    need(os.geteuid() == 0, "needs root (a private network namespace)")
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            need(False, f"unshare(CLONE_NEWNET) failed: errno {ctypes.get_errno()}")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield None
    finally:
        libc.setns(original, CLONE_NEWNET)
        os.close(original)


# journalds started by the tests run for the rest of the session (other tests'
# entries go to them); holding the handles keeps Popen from warning that a
# child it forgot is still running.
_JOURNALDS: list[subprocess.Popen[bytes]] = []


def journald_alive() -> bool:
    """True when something receives on journald's socket. The socket file alone
    proves nothing: a journald that was killed leaves it behind in /run."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(JOURNAL_SOCKET))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _start_journald() -> None:
    """Start systemd-journald unless one is already receiving; wait until it is."""
    if journald_alive():
        return
    binary = "/lib/systemd/systemd-journald"
    if not os.path.exists(binary):
        return
    # A stale socket left by a dead journald would make the new one's bind
    # fail (or fool the wait below), so it goes first.
    JOURNAL_SOCKET.unlink(missing_ok=True)
    Path("/run/systemd/journal").mkdir(parents=True, exist_ok=True)
    _JOURNALDS.append(
        subprocess.Popen([binary], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(200):
        if journald_alive():
            return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def journald() -> Iterator[None]:
    """A running systemd-journald (started here when none is running)."""
    need(os.geteuid() == 0, "journald tests need root")
    _start_journald()
    need(journald_alive(), "systemd-journald could not be started")
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        need(False, "systemd-python is not installed")
    # journald is left running for later tests of this session: stopping it
    # would drop entries other tests are waiting for.
    yield None
