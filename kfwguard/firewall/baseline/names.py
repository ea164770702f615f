"""Egress to names: ``allow_out`` rules with ``to_names`` follow the names' DNS answers.

A registry mirror or an API load balancer is named by a hostname whose
addresses change. The policy declares one timeout set per rule and family
(``names<i>4``/``names<i>6``); this module resolves the names through the
node's resolvers (A and AAAA, with their TTLs), puts the answers in the sets
with element timeouts from the TTL (clamped to ``name_ttl``'s floor and
ceiling), and resolves again at half the timeout. A failed lookup never empties
a set: the last answer stays (its timeout refreshed to the ceiling at each
failed try) and the lookup is retried every floor/2. The DNS answer is
untrusted input: it is parsed with bounds checks, and anything malformed is a
failed lookup. The sets' elements are no part of the policy: drift checks,
``diff`` and rollback scripts leave them out.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline import discover
from kfwguard.firewall.nft import Nft

log = structlog.get_logger("kfwguard.baseline")

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
QTYPES = {1: "A", 28: "AAAA"}


class LookupFailed(Exception):
    """No usable answer."""


def set_name(rule: int, fam: str) -> str:
    return f"names{rule}{fam}"


def _qname(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not 0 < len(raw) < 64:
            raise LookupFailed(f"{name!r} is not a DNS name")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _skip_name(data: bytes, pos: int) -> int:
    for _ in range(128):
        if pos >= len(data):
            raise LookupFailed("truncated name")
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n
    raise LookupFailed("name too long")


def query(server: str, name: str, qtype: int, timeout: float = 2.0) -> tuple[list[Addr], int]:
    """One UDP query; (addresses, smallest TTL). Raises LookupFailed."""
    qid = secrets.randbits(16)
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + struct.pack(
        "!HH", qtype, 1)
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((server, 53))
            s.send(packet)
            end = time.monotonic() + timeout
            while True:
                s.settimeout(max(end - time.monotonic(), 0.01))
                data = s.recv(4096)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    break
        except OSError as exc:
            raise LookupFailed(f"{server}: {exc}") from None
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    rcode = flags & 0xF
    if rcode != 0:
        raise LookupFailed(f"{server}: rcode {rcode}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addrs: list[Addr] = []
    ttl = 0
    for _ in range(an):
        pos = _skip_name(data, pos)
        if pos + 10 > len(data):
            raise LookupFailed("truncated answer")
        rtype, _, rttl, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        rdata = data[pos:pos + rdlen]
        pos += rdlen
        if len(rdata) != rdlen:
            raise LookupFailed("truncated answer")
        if rtype == qtype and rdlen in (4, 16):
            addrs.append(ipaddress.ip_address(rdata))
            ttl = rttl if not ttl else min(ttl, rttl)
    return addrs, ttl


def resolve(servers: Sequence[str], name: str) -> tuple[list[Addr], int]:
    """A and AAAA from the first server that answers; LookupFailed if none gave an address."""
    errors = []
    for server in servers:
        found: list[Addr] = []
        ttls = []
        answered = False
        for qtype in QTYPES:
            try:
                addrs, ttl = query(server, name, qtype)
            except LookupFailed as exc:
                errors.append(str(exc))
                continue
            answered = True
            found += addrs
            if addrs:
                ttls.append(ttl)
        if answered and found:
            return found, min(ttls)
    raise LookupFailed("; ".join(errors) or f"no address for {name}")


def resolvers(cfg: BaselineConfig) -> list[str]:
    """The node's resolvers: dns_servers, else resolv.conf's (its stub included)."""
    if cfg.dns_servers:
        return [str(n.network_address) for n in cfg.dns_servers]
    found = discover.dns_servers()
    out = [str(n.network_address) for n in found.servers]
    try:
        text = Path("/etc/resolv.conf").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and words[1] not in out:
            out.append(words[1].split("%", 1)[0])
    return out


@dataclass
class Known:
    addrs: list[Addr] = field(default_factory=list)
    expires: float = 0.0      # when the elements we added time out
    due: float = 0.0          # when to resolve again


class NameSets:
    """Keeps the names sets of one policy filled."""

    def __init__(self, cfg: BaselineConfig, nft: Nft) -> None:
        self.cfg = cfg
        self.nft = nft
        self.floor = max(cfg.name_ttl.floor, 1.0)
        self.ceiling = max(cfg.name_ttl.ceiling, self.floor)
        self.rules: list[tuple[int, tuple[str, ...]]] = [
            (i, tuple(r.to_names)) for i, r in enumerate(cfg.allow_out) if r.to_names]
        self.known: dict[str, Known] = {n: Known() for _, names in self.rules for n in names}
        self.failures = 0

    def __bool__(self) -> bool:
        return bool(self.rules)

    def next_due(self) -> float:
        return min((k.due for k in self.known.values()), default=float("inf"))

    def _script(self, name: str, addrs: Sequence[Addr], timeout: float) -> str:
        t = self.cfg.table
        secs = max(int(timeout), 1)
        out = []
        for i, names in self.rules:
            if name not in names:
                continue
            for fam, cls in (("4", ipaddress.IPv4Address), ("6", ipaddress.IPv6Address)):
                elems = [f"{a} timeout {secs}s" for a in addrs if isinstance(a, cls)]
                if not elems:
                    continue
                body = ", ".join(elems)
                plain = ", ".join(str(a) for a in addrs if isinstance(a, cls))
                # add (no-op if present) + delete + add: re-adding refreshes the timeout
                out += [f"add element inet {t} {set_name(i, fam)} {{ {body} }}",
                        f"delete element inet {t} {set_name(i, fam)} {{ {plain} }}",
                        f"add element inet {t} {set_name(i, fam)} {{ {body} }}"]
        return "\n".join(out) + "\n" if out else ""

    def refresh(self, *, force: bool = False) -> None:
        """Resolve the names that are due (all with ``force``) and update the sets."""
        servers = resolvers(self.cfg)
        now = time.time()
        for name, known in self.known.items():
            if not force and known.due > now:
                continue
            try:
                addrs, ttl = resolve(servers, name)
            except LookupFailed as exc:
                self.failures += 1
                known.due = now + self.floor / 2
                log.warning("name_lookup_failed", name=name, error=str(exc),
                            kept=[str(a) for a in known.addrs], failures=self.failures)
                if known.addrs:
                    # never empty the set: the last answer stays for up to the ceiling
                    # from each failed try (retried every floor/2), so a short gap between
                    # two tries cannot let it expire
                    known.expires = now + self.ceiling
                    self.nft.run(self._script(name, known.addrs, self.ceiling))
                continue
            timeout = min(max(float(ttl), self.floor), self.ceiling)
            known.addrs, known.expires, known.due = addrs, now + timeout, now + timeout / 2
            self.nft.run(self._script(name, addrs, timeout))
            log.info("name_resolved", name=name, addrs=[str(a) for a in addrs],
                     timeout=timeout)

    def restore(self) -> None:
        """Put the known answers back after the table was re-applied (its sets are new)."""
        now = time.time()
        for name, known in self.known.items():
            if known.addrs and known.expires > now:
                self.nft.run(self._script(name, known.addrs, known.expires - now))

    def status(self) -> dict[str, list[str]]:
        return {n: [str(a) for a in k.addrs] for n, k in self.known.items()}
