"""Defaults the node's own configuration decides: its DNS resolvers and NTP servers.

``dns_servers`` and ``ntp_servers`` left unset in the config are read from
here when the policy is rendered, so egress 53 and 123 go to the servers the
node really uses and nowhere else. Only address literals count: a server named
by a hostname cannot become an nft set element before it is resolved, and is
reported instead (list its addresses in the config).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

Addr = ipaddress.IPv4Network | ipaddress.IPv6Network

# systemd-resolved's stub listens on 127.0.0.53/54 and writes its upstreams here.
RESOLVED_UPSTREAMS = "run/systemd/resolve/resolv.conf"


@dataclass
class Found:
    servers: list[Addr] = field(default_factory=list)
    names: list[str] = field(default_factory=list)   # hostnames we could not use
    sources: list[str] = field(default_factory=list)  # files that gave servers


def _literal(text: str) -> Addr | None:
    text = text.strip().strip("[]").split("%", 1)[0]  # fe80::1%eth0 → fe80::1
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ipaddress.ip_network(addr)


def _add(found: Found, value: str, source: str) -> None:
    addr = _literal(value)
    if addr is None:
        if value and value not in found.names:
            found.names.append(value)
        return
    if addr not in found.servers and not addr.is_loopback:
        # loopback resolvers (a local stub) are reached through 'lo', always open
        found.servers.append(addr)
    if source not in found.sources:
        found.sources.append(source)


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def dns_servers(root: Path = Path("/")) -> Found:
    """The resolvers of /etc/resolv.conf, and systemd-resolved's upstreams when the
    node resolves through its stub."""
    found = Found()
    stub = False
    for path in (root / "etc/resolv.conf", root / RESOLVED_UPSTREAMS):
        if path.name == "resolv.conf" and path.parent.name == "resolve" and not stub:
            continue
        for line in _read(path):
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                addr = _literal(words[1])
                if addr is not None and addr.is_loopback:
                    stub = True
                _add(found, words[1], str(path.relative_to(root)))
    return found


_CHRONY = re.compile(r"^\s*(server|pool|peer)\s+(\S+)")


def ntp_servers(root: Path = Path("/")) -> Found:
    """The NTP servers of chrony's and systemd-timesyncd's configuration."""
    found = Found()
    chrony = [root / "etc/chrony/chrony.conf", root / "etc/chrony.conf",
              *sorted((root / "etc/chrony/conf.d").glob("*.conf")),
              *sorted((root / "etc/chrony/sources.d").glob("*.sources"))]
    for path in chrony:
        for line in _read(path):
            m = _CHRONY.match(line)
            if m is not None:
                _add(found, m.group(2), str(path.relative_to(root)))
    timesyncd = [root / "etc/systemd/timesyncd.conf",
                 *sorted((root / "etc/systemd/timesyncd.conf.d").glob("*.conf"))]
    for path in timesyncd:
        for line in _read(path):
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("NTP", "FallbackNTP") and not line.lstrip().startswith("#"):
                for word in value.split():
                    _add(found, word, str(path.relative_to(root)))
    return found
