"""Parsing and normalising the addresses that logs carry.

Log text is hostile: an address is accepted only if the standard library
parses it completely, and IPv4-mapped IPv6 is folded to IPv4 so one offender
has one identity.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Final

_V6_FLAG: Final = 1 << 128

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_NETS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_host(text: str) -> IPAddress | None:
    """Return the address ``text`` names, normalised, or None if it is not exactly one address."""
    if not text or len(text) > 64:
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # a zone index names a link, not a remote host
        return None
    # inet_pton (C) accepts exactly the text ipaddress accepts for these two
    # forms (tests/unit/test_addresses.py compares them on hostile input) and
    # is ~10x faster than ipaddress's parser, which a flood of new addresses pays
    # once per line; ipaddress stays the judge of anything it refuses.
    if "." in text and ":" not in text:
        try:
            packed = socket.inet_pton(socket.AF_INET, text)
        except (OSError, ValueError):
            return None
        return ipaddress.IPv4Address(int.from_bytes(packed, "big"))
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return _parse_slow(text)
    value = int.from_bytes(packed, "big")
    if value >> 32 == 0xFFFF:  # IPv4-mapped: one offender, one identity
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return ipaddress.IPv6Address(value)


def _parse_slow(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def host_key(addr: IPAddress) -> int:
    """An int that identifies ``addr`` (both families in one space).

    ipaddress objects hash in Python code (``hash(hex(int(ip)))``); tables
    touched per log line key by this instead.
    """
    if isinstance(addr, ipaddress.IPv4Address):
        return int(addr)
    return int(addr) | _V6_FLAG


def key_host(key: int) -> IPAddress:
    """The address whose ``host_key`` is ``key``."""
    if key >= _V6_FLAG:
        return ipaddress.IPv6Address(key ^ _V6_FLAG)
    return ipaddress.IPv4Address(key)


def parse_target(text: str) -> IPAddress | IPNetwork:
    """Parse an operator-supplied ban target: an address or a CIDR. Raises ValueError."""
    text = text.strip()
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        if net.num_addresses == 1:
            return net.network_address
        return net
    addr = parse_host(text)
    if addr is None:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or CIDR")
    return addr


def split_host_port(text: str) -> str:
    """Return the host part of ``IP:PORT`` or ``[IPv6]:PORT`` (or the text unchanged)."""
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


class IgnoreList:
    """Networks that must never be banned, with a fast membership test."""

    def __init__(self, nets: Iterable[IPNetwork | IPAddress | str] = ()) -> None:
        self._v4: list[ipaddress.IPv4Network] = []
        self._v6: list[ipaddress.IPv6Network] = []
        self._exact: set[IPAddress] = set()
        # The same, as host_key ranges: what the per-failure check reads.
        self._keys: set[int] = set()
        self._ranges: list[tuple[int, int]] = []
        for n in nets:
            self.add(n)

    def add(self, item: IPNetwork | IPAddress | str) -> None:
        net = ipaddress.ip_network(item, strict=False) if not isinstance(
            item, ipaddress.IPv4Address | ipaddress.IPv6Address
        ) else ipaddress.ip_network(item)
        first = host_key(net.network_address)
        if net.num_addresses == 1:
            self._exact.add(net.network_address)
            self._keys.add(first)
            return
        if isinstance(net, ipaddress.IPv4Network):
            self._v4.append(net)
        else:
            self._v6.append(net)
        self._ranges.append((first, first + net.num_addresses - 1))

    def key_ranges(self) -> list[tuple[int, int]]:
        """What ``has_key`` tests, as (first, last) host_key ranges."""
        return [(k, k) for k in sorted(self._keys)] + list(self._ranges)

    def __contains__(self, addr: object) -> bool:
        if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return self.has_key(host_key(addr))
        if isinstance(addr, ipaddress.IPv4Network):
            return any(addr.subnet_of(n) for n in self._v4) or (
                addr.num_addresses == 1 and addr.network_address in self._exact)
        if isinstance(addr, ipaddress.IPv6Network):
            return any(addr.subnet_of(n) for n in self._v6) or (
                addr.num_addresses == 1 and addr.network_address in self._exact)
        return False

    def has_key(self, key: int) -> bool:
        """``addr in self`` for an address given as its ``host_key`` (the jails' hot path)."""
        if key in self._keys:
            return True
        for first, last in self._ranges:  # noqa: SIM110 (any() builds a generator per call)
            if first <= key <= last:
                return True
        return False

    def extended(self, items: Iterable[IPNetwork | IPAddress | str]) -> IgnoreList:
        """A new list holding this one's entries and ``items`` (a jail's own ignoreip)."""
        out = IgnoreList([*self._exact, *self._v4, *self._v6])
        for item in items:
            out.add(item)
        return out

    def overlaps(self, net: IPNetwork) -> bool:
        """True if banning ``net`` would also ban something on this list."""
        if net.num_addresses == 1:
            return net.network_address in self
        if any(a in net for a in self._exact):
            return True
        nets = self._v4 if net.version == 4 else self._v6
        return any(net.overlaps(n) for n in nets)

    def __len__(self) -> int:
        return len(self._exact) + len(self._v4) + len(self._v6)
