"""Seeing nftables set elements arrive, cheaply enough not to disturb what we measure.

Two ways, both raw nfnetlink (a few lines of struct; pyroute2's nftables
helpers are slow and libnftables re-reads a whole set's elements into its
cache after every ruleset change — about 1 s for 100k elements):

* ``SetMonitor`` subscribes to the NFNLGRP_NFTABLES multicast group and
  decodes NEWSETELEM notifications: event-driven, exact per element. But
  while someone listens the kernel builds one notification per element
  inside the commit (measured: +50 % on a 100k-element transaction), so it
  is used only where elements arrive one by one (ban latency).
* ``SetQuery`` asks the kernel whether given elements are present
  (NFT_MSG_GETSETELEM without a dump: a hash look-up per element), used to
  poll for bursts and restores without adding work to the commit itself.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE = 2
NFT_MSG_DELSET = 11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFPROTO_INET = 1
NLA_F_NESTED = 0x8000

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_TABLE_NAME = 1
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1

_NLA_TYPE_MASK = 0x3FFF
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _attrs(data: bytes, start: int = 0, end: int | None = None) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    end = len(data) if end is None else end
    i = start
    while i + 4 <= end:
        length, kind = _NLA.unpack_from(data, i)
        if length < 4:
            break
        out.setdefault(kind & _NLA_TYPE_MASK, []).append(data[i + 4:i + length])
        i += (length + 3) & ~3
    return out


def _string(raw: list[bytes] | None) -> str:
    return raw[0].rstrip(b"\0").decode() if raw else ""


class SetMonitor:
    """Collects (table, set, key bytes) of elements added, with the time first seen.

    ``tables`` limits the watch to those tables (others in the namespace are
    not ours). Times are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux,
    comparable across processes of this machine).
    """

    def __init__(self, tables: Iterable[str]) -> None:
        self.tables = set(tables)
        self.seen: dict[bytes, float] = {}
        self.lost = False
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        # A 100k-element restore is 100k notifications (~10 MB): a default
        # buffer would overflow and drop them (ENOBUFS).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 * 1024 * 1024)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self.sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)

    def close(self) -> None:
        self.sock.close()

    def pump(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for notifications; decode all queued. Returns new keys."""
        before = len(self.seen)
        if not self._poll.poll(max(0, int(timeout * 1000))):
            return 0
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                raise
            now = time.perf_counter()
            self._decode(data, now)
        return len(self.seen) - before

    def _decode(self, data: bytes, now: float) -> None:
        i = 0
        while i + 16 <= len(data):
            length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, i)
            if length < 16:
                break
            if mtype >> 8 == NFNL_SUBSYS_NFTABLES:
                self._message(mtype & 0xFF, data, i + 20, i + length, now)
            i += (length + 3) & ~3

    def _message(self, kind: int, data: bytes, start: int, end: int, now: float) -> None:
        if kind == NFT_MSG_NEWSETELEM:
            a = _attrs(data, start, end)
            if _string(a.get(NFTA_SET_ELEM_LIST_TABLE)) not in self.tables:
                return
            for elements in a.get(NFTA_SET_ELEM_LIST_ELEMENTS, []):
                for elem in _attrs(elements).get(NFTA_LIST_ELEM, []):
                    for key in _attrs(elem).get(NFTA_SET_ELEM_KEY, []):
                        for value in _attrs(key).get(NFTA_DATA_VALUE, []):
                            self.seen.setdefault(value, now)
        elif kind in (NFT_MSG_DELTABLE, NFT_MSG_DELSET):
            # A recreated table starts empty: what was seen before is gone.
            a = _attrs(data, start, end)
            if _string(a.get(NFTA_TABLE_NAME if kind == NFT_MSG_DELTABLE
                             else NFTA_SET_TABLE)) in self.tables:
                self.seen.clear()


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


class SetQuery:
    """Presence checks of elements in one set (``inet`` family), one netlink request each.

    The kernel answers a multi-element GET with one message per element and
    stops at the first missing one (ENOENT), so "are all of these present"
    costs one round trip.
    """

    def __init__(self, table: str) -> None:
        self.table = table
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        self.sock.bind((0, 0))
        self._seq = 0
        self._buf = memoryview(bytearray(1 << 22))

    def close(self) -> None:
        self.sock.close()

    def all_present(self, set_name: str, keys: list[bytes]) -> bool:
        """True if every key (packed address) is in ``set_name``; chunks long lists."""
        return all(self._get(set_name, keys[i:i + 1000]) for i in range(0, len(keys), 1000))

    def count_present(self, set_name: str, keys: list[bytes]) -> int:
        """How many of ``keys`` are in the set (one look-up per key: for reports, not polls)."""
        return sum(1 for k in keys if self._get(set_name, [k]))

    def prepared(self, set_name: str, keys: list[bytes]) -> Callable[[], bool]:
        """all_present() of ``keys`` (at most ~1,000) as a request laid out once,
        for a poll: each call sends the same bytes and reads the answer."""
        msg = self._request(set_name, keys)
        seq = self._seq
        return lambda: self._answer(msg, seq)

    def _get(self, set_name: str, keys: list[bytes]) -> bool:
        if not keys:
            return True
        msg = self._request(set_name, keys)
        return self._answer(msg, self._seq)

    def _request(self, set_name: str, keys: list[bytes]) -> bytes:
        self._seq += 1
        elems = b"".join(
            _nla(NLA_F_NESTED | NFTA_LIST_ELEM,
                 _nla(NLA_F_NESTED | NFTA_SET_ELEM_KEY, _nla(NFTA_DATA_VALUE, k)))
            for k in keys)
        body = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
                + _nla(NFTA_SET_ELEM_LIST_TABLE, self.table.encode() + b"\0")
                + _nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
                + _nla(NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS, elems))
        return _NLMSG.pack(16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
                           NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body

    def _answer(self, msg: bytes, seq_sent: int) -> bool:
        self.sock.send(msg)
        buf = self._buf
        while True:
            # Into one buffer: recv(4 MiB) allocated it anew each poll (~0.1 ms).
            data = buf[:self.sock.recv_into(buf)]
            i = 0
            while i + 16 <= len(data):
                length, mtype, _f, seq, _p = _NLMSG.unpack_from(data, i)
                if length < 16:
                    break
                if mtype == NLMSG_ERROR and seq == seq_sent:
                    err: int = struct.unpack_from("=i", data, i + 16)[0]
                    return err == 0
                i += (length + 3) & ~3
