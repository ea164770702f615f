"""Test hosts in network namespaces (always named ``kfwtest-*``) joined by veth pairs.

Everything here runs real `ip` commands; nothing touches the host's own
namespace except creating and deleting our namespaces.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

_counter = itertools.count()


def sh(*args: str, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True,
                          timeout=timeout, input=input)


@dataclass
class Host:
    """One network namespace: a test host."""

    name: str
    addrs4: list[str] = field(default_factory=list)
    addrs6: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *args, check=check, timeout=timeout,
                  input=input)

    def popen(self, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)  # type: ignore[call-overload, no-any-return]

    def python(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code (this interpreter, this venv) inside the namespace."""
        return self.run(sys.executable, "-c", code, timeout=timeout)

    def nft(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("nft", "-f", "-", input=script, check=check)

    def nft_json(self, *args: str) -> str:
        return self.run("nft", "-j", *args).stdout

    @property
    def ip4(self) -> str:
        return self.addrs4[0]

    @property
    def ip6(self) -> str:
        return self.addrs6[0]


class Lab:
    """A set of namespaces and links, removed on close()."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        self.tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"

    def host(self, role: str) -> Host:
        name = f"kfwtest-{role[:8]}-{self.tag}-{next(_counter)}"
        sh("ip", "netns", "add", name)
        h = Host(name)
        self.hosts.append(h)
        h.run("ip", "link", "set", "lo", "up")
        h.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", check=False)
        return h

    def link(self, a: Host, b: Host, net4: str, net6: str, ia: int = 1, ib: int = 2) -> None:
        """Join ``a`` and ``b`` with a veth pair. net4 like ``10.9.1``, net6 like ``fd00:9:1``."""
        n = next(_counter)
        va, vb = f"kv{self.tag[:6]}{n}a", f"kv{self.tag[:6]}{n}b"
        sh("ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb,
           "netns", b.name)
        for host, dev, i in ((a, va, ia), (b, vb, ib)):
            host.run("ip", "addr", "add", f"{net4}.{i}/24", "dev", dev)
            host.run("ip", "-6", "addr", "add", f"{net6}::{i}/64", "dev", dev, "nodad")
            host.run("ip", "link", "set", dev, "up")
            host.addrs4.append(f"{net4}.{i}")
            host.addrs6.append(f"{net6}::{i}")

    def router(self, host: Host) -> None:
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def close(self) -> None:
        for h in self.hosts:
            sh("ip", "netns", "pids", h.name, check=False)
            pids = sh("ip", "netns", "pids", h.name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", h.name, check=False)
        self.hosts.clear()


def can_connect(src: Host, addr: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection from ``src`` to ``addr:port`` is accepted."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET)\n"
        f"s.settimeout({timeout})\n"
        f"try:\n s.connect(({addr!r},{port}))\nexcept OSError:\n sys.exit(1)\n"
    )
    return src.run(sys.executable, "-c", code, check=False, timeout=timeout + 10).returncode == 0
