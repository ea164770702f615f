"""Overlapping CIDR bans as the disjoint elements an interval set can hold.

nft refuses an interval element that overlaps another ("interval overlaps
with an existing one"), and ``auto-merge`` is no way out with timeouts:
nft 1.0.6 merges ``192.0.2.0/24 timeout 1h`` and ``192.0.2.0/25 timeout 2h``
(and an adjacent ``192.0.3.0/24``) into one ``192.0.2.0/23 timeout 2h``,
banning addresses nobody banned and making each ban impossible to lift on
its own. So the ban table holds, for every address inside some CIDR ban,
exactly the latest expiry over the CIDR bans that cover it, written as the
fewest disjoint CIDRs: a /24 banned for 1h with a /25 inside it banned for
2h becomes the /25 (2h) and the other /25 (1h); a /25 banned for less than
its /24 adds nothing.

CIDRs nest or are disjoint, so the bans form a forest; one sorted pass
builds it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Node:
    start: int
    end: int  # inclusive
    expiry: float
    children: list[_Node] = field(default_factory=list)


def _parse(text: str) -> tuple[int, int, int]:
    """(bits, first address as int, prefix length) of a CIDR text."""
    addr, _, plen = text.partition("/")
    v6 = ":" in addr
    packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, addr)
    bits = 128 if v6 else 32
    p = int(plen) if plen else bits
    value = int.from_bytes(packed, "big")
    value &= ((1 << bits) - 1) ^ ((1 << (bits - p)) - 1)
    return bits, value, p


def _text(bits: int, value: int, plen: int) -> str:
    family = socket.AF_INET6 if bits == 128 else socket.AF_INET
    return f"{socket.inet_ntop(family, value.to_bytes(bits // 8, 'big'))}/{plen}"


def _blocks(bits: int, first: int, last: int) -> list[tuple[int, int]]:
    """The fewest CIDRs (value, prefix length) covering first..last exactly."""
    out = []
    while first <= last:
        size = first & -first if first else 1 << bits
        while size > last - first + 1:
            size >>= 1
        out.append((first, bits - size.bit_length() + 1))
        first += size
    return out


def cover(nets: dict[str, float]) -> dict[str, float]:
    """CIDR text -> expiry for possibly overlapping bans, to the disjoint
    elements (CIDR text with its prefix length -> expiry) holding, for each
    address, the latest expiry of the bans covering it."""
    out: dict[str, float] = {}
    for bits in (32, 128):
        items = []
        for text, expiry in nets.items():
            b, value, plen = _parse(text)
            if b == bits:
                items.append((value, plen, expiry))
        if not items:
            continue
        items.sort(key=lambda x: (x[0], x[1]))
        roots: list[_Node] = []
        stack: list[_Node] = []
        for value, plen, expiry in items:
            node = _Node(value, value + (1 << (bits - plen)) - 1, expiry)
            while stack and stack[-1].end < node.start:
                stack.pop()
            if stack and stack[-1].start == node.start and stack[-1].end == node.end:
                stack[-1].expiry = max(stack[-1].expiry, expiry)  # the same CIDR twice
                continue
            (stack[-1].children if stack else roots).append(node)
            stack.append(node)
        for root in roots:
            _emit(bits, root, root.expiry, out)
    return out


def _emit(bits: int, node: _Node, expiry: float, out: dict[str, float]) -> None:
    """Write ``node``'s range at ``expiry``, cut around the descendants that
    outlive it (each then written at its own expiry)."""
    cuts: list[_Node] = []
    todo = list(node.children)
    while todo:
        child = todo.pop()
        if child.expiry > expiry:
            cuts.append(child)
        else:
            todo.extend(child.children)  # inside the node's range already; look deeper
    cuts.sort(key=lambda n: n.start)
    first = node.start
    for cut in cuts:
        for value, plen in _blocks(bits, first, cut.start - 1):
            out[_text(bits, value, plen)] = expiry
        _emit(bits, cut, cut.expiry, out)
        first = cut.end + 1
    for value, plen in _blocks(bits, first, node.end):
        out[_text(bits, value, plen)] = expiry
