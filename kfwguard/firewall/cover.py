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

``CoverIndex`` keeps that cover up to date as bans come and go, recomputing
only around what changed: with L the shortest prefix length banned (per
family), every tree lies inside one /L block, so the cover is the union of
the covers of the blocks, and a changed CIDR dirties its block alone. 100k
IPv6 offenders banned as /64s are 100k blocks of one CIDR each, the cover of
each the CIDR itself. A ban wider than L (a manual /16) makes L smaller and
rebuilds the blocks once; everything inside it then shares its block.
"""

from __future__ import annotations

import socket
import threading
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
    parsed = [(*_parse(text), expiry) for text, expiry in nets.items()]
    for bits in (32, 128):
        out.update(_cover_parsed(bits, [p for p in parsed if p[0] == bits]))
    return out


def _cover_parsed(bits: int, nets: list[tuple[int, int, int, float]]
                  ) -> dict[str, float]:
    """cover() of the bans of one family, given as (bits, first address,
    prefix length, expiry)."""
    out: dict[str, float] = {}
    items = sorted(((value, plen, expiry) for _, value, plen, expiry in nets),
                   key=lambda x: (x[0], x[1]))
    if items:
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


class CoverIndex:
    """``cover()`` of a changing set of CIDR bans, kept up to date by block.

    ``set(text, expiry)`` adds or changes a ban, ``discard(text)`` removes it;
    ``elements()`` is what ``cover()`` of the bans would return (the same dict,
    the same texts). Thread-safe: the BanManager changes it on the event loop
    while a flush reads it in a worker thread."""

    def __init__(self) -> None:
        # ban text -> (bits, first address, prefix length, expiry)
        self._nets: dict[str, tuple[int, int, int, float]] = {}
        # per family: the block prefix length L in use (None: no block yet)
        self._block_len: dict[int, int] = {}
        # (bits, block number) -> the ban texts in that block
        self._blocks: dict[tuple[int, int], set[str]] = {}
        # (bits, block number) -> the pieces its cover gave
        self._pieces: dict[tuple[int, int], dict[str, float]] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._out: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._nets)

    def _block(self, bits: int, value: int) -> tuple[int, int]:
        return bits, value >> (bits - self._block_len[bits])

    def set(self, text: str, expiry: float) -> None:
        with self._lock:
            self._set(text, expiry)

    def _set(self, text: str, expiry: float) -> None:
        old = self._nets.get(text)
        if old is not None:
            if old[3] == expiry:
                return
            bits, value, plen, _ = old
        else:
            bits, value, plen = _parse(text)
        self._nets[text] = (bits, value, plen, expiry)
        if old is None and plen < self._block_len.get(bits, bits + 1):
            self._rebuild_blocks(bits, plen)
            return
        block = self._block(bits, value)
        self._blocks.setdefault(block, set()).add(text)
        self._dirty.add(block)

    def discard(self, text: str) -> None:
        with self._lock:
            self._discard(text)

    def _discard(self, text: str) -> None:
        old = self._nets.pop(text, None)
        if old is None:
            return
        block = self._block(old[0], old[1])
        members = self._blocks[block]
        members.discard(text)
        if not members:
            del self._blocks[block]
        self._dirty.add(block)

    def _rebuild_blocks(self, bits: int, plen: int) -> None:
        """Blocks of the family ``bits`` cut anew at /plen (a wider ban came)."""
        for block in [b for b in self._blocks if b[0] == bits]:
            del self._blocks[block]
            self._dirty.add(block)
        self._block_len[bits] = plen
        for text, (b, value, _, _) in self._nets.items():
            if b == bits:
                block = self._block(bits, value)
                self._blocks.setdefault(block, set()).add(text)
                self._dirty.add(block)

    def elements(self, after: float | None = None) -> dict[str, float]:
        """The disjoint elements of every ban, as ``cover()`` gives them (a new
        dict); with ``after``, only those expiring later."""
        with self._lock:
            self._update()
            # Mostly nothing has expired yet: two C-speed passes, not a comprehension.
            if after is None or not self._out or min(self._out.values()) > after:
                return dict(self._out)
            return {k: x for k, x in self._out.items() if x > after}

    def _update(self) -> None:
        for block in self._dirty:  # all first: a rebuilt block's pieces may reappear
            for piece in self._pieces.pop(block, {}):
                del self._out[piece]
        for block in self._dirty:
            members = self._blocks.get(block)
            if not members:
                continue
            if len(members) == 1:
                (text,) = members
                bits, value, plen, expiry = self._nets[text]
                pieces = {_text(bits, value, plen): expiry}
            else:
                pieces = _cover_parsed(block[0], [self._nets[t] for t in members])
            self._pieces[block] = pieces
            self._out.update(pieces)
        self._dirty.clear()
