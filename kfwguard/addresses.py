"""Parsing and normalising the addresses that logs carry.

Log text is hostile: an address is accepted only if the standard library
parses it completely, and IPv4-mapped IPv6 is folded to IPv4 so one offender
has one identity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

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
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


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
        for n in nets:
            self.add(n)

    def add(self, item: IPNetwork | IPAddress | str) -> None:
        net = ipaddress.ip_network(item, strict=False) if not isinstance(
            item, ipaddress.IPv4Address | ipaddress.IPv6Address
        ) else ipaddress.ip_network(item)
        if net.num_addresses == 1:
            self._exact.add(net.network_address)
        elif isinstance(net, ipaddress.IPv4Network):
            self._v4.append(net)
        else:
            self._v6.append(net)

    def __contains__(self, addr: object) -> bool:
        if isinstance(addr, ipaddress.IPv4Network):
            return any(addr.subnet_of(n) for n in self._v4) or (
                addr.num_addresses == 1 and addr.network_address in self._exact)
        if isinstance(addr, ipaddress.IPv6Network):
            return any(addr.subnet_of(n) for n in self._v6) or (
                addr.num_addresses == 1 and addr.network_address in self._exact)
        if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        if addr in self._exact:
            return True
        nets = self._v4 if addr.version == 4 else self._v6
        return any(addr in n for n in nets)

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
