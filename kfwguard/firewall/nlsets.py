"""Single addresses into (and out of) the ban sets over nfnetlink, without libnftables.

libnftables parses text: ~1 s of CPU for the 100k elements a new node in a
cluster takes in at start, in the kernel sync's thread but holding two cores'
worth of work on a 2-core node. The kernel's own message for the same change
is a few bytes per element, so this module writes it: one nfnetlink batch
(one transaction: all of it or none) of NEWSETELEM/DELSETELEM messages for
the plain hash sets ``ban_v4``/``ban_v6``. Interval sets (CIDR bans) stay
with libnftables: their elements are start/end pairs that nft computes.

The semantics are nft's ``add element`` (NLM_F_CREATE without NLM_F_EXCL:
an element already present is no error; before Linux 6.10 it keeps its
timeout, after it takes the new one, as with nft's text) and ``delete
element``. A refusal (a full set, a missing table) aborts the whole batch,
as in nft, and raises NftError with the kernel's reason in nft's words.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence

from kfwguard.firewall.nft import NftError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NFPROTO_INET = 1
NLA_F_NESTED = 0x8000

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_DATA_VALUE = 1

ACK_TIMEOUT = 30.0  # seconds; the kernel answers a 100k-element batch in well under one

# An attribute's length is 16 bits: the elements of one message stay under it.
_MAX_ELEMENTS_BYTES = 60_000

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")

class NetlinkUnavailable(OSError):
    """No nfnetlink socket here (no such protocol, no permission): use nft."""


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _element_prefix(size: int, timeout: bool) -> bytes:
    """The bytes of one element before its key (the key is 4 or 16 bytes:
    aligned, so every element of a family has the same header)."""
    key = 4 + 4 + size  # NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key }
    total = 4 + key + (12 if timeout else 0)
    return (_NLA.pack(total, NLA_F_NESTED | NFTA_LIST_ELEM)
            + _NLA.pack(key, NLA_F_NESTED | NFTA_SET_ELEM_KEY)
            + _NLA.pack(4 + size, NFTA_DATA_VALUE))


# An element's bytes are PREFIX[(key size, with timeout)] + key, then, with a
# timeout, TIMEOUT_HEADER + the milliseconds as 8 big-endian bytes.
TIMEOUT_HEADER = _NLA.pack(12, NFTA_SET_ELEM_TIMEOUT)
PREFIX = {(size, t): _element_prefix(size, t) for size in (4, 16) for t in (True, False)}
# The same, with a timeout, in one pack() (prefix, key, TIMEOUT_HEADER, ms): a
# new node lays out 100k elements, and four concatenations cost twice as much.
TIMED = {size: struct.Struct(f">{len(PREFIX[(size, True)])}s{size}s4sQ") for size in (4, 16)}


class SetWriter:
    """One batch of element changes to sets of ``table`` (family inet)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._parts: list[bytes] = []
        self._seq = 0
        self._acks: set[int] = set()
        self._head = (_nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0"))

    def _message(self, kind: int, flags: int, body: bytes) -> None:
        self._seq += 1
        self._parts.append(_NLMSG.pack(16 + len(body), kind, flags | NLM_F_REQUEST,
                                       self._seq, 0) + body)

    def change(self, verb: str, set_name: str, elements: Sequence[bytes]) -> None:
        """Queue ``add`` or ``delete`` of ``elements`` (each laid out as PREFIX
        says) in ``set_name``."""
        kind = NFT_MSG_NEWSETELEM if verb == "add" else NFT_MSG_DELSETELEM
        flags = NLM_F_ACK | (NLM_F_CREATE if verb == "add" else 0)
        head = (_NFGEN.pack(NFPROTO_INET, 0, 0) + self._head
                + _nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0"))
        chunk: list[bytes] = []
        size = 0
        for el in elements:
            if size + len(el) > _MAX_ELEMENTS_BYTES:
                self._elements(kind, flags, head, chunk, size)
                chunk, size = [], 0
            chunk.append(el)
            size += len(el)
        if chunk:
            self._elements(kind, flags, head, chunk, size)

    def _elements(self, kind: int, flags: int, head: bytes, chunk: list[bytes],
                  size: int) -> None:
        body = (head + _NLA.pack(4 + size, NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS)
                + b"".join(chunk))
        self._message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, body)
        self._acks.add(self._seq)

    def commit(self) -> None:
        """Send the batch as one transaction; raise NftError if the kernel
        refused it (then nothing of it is in force), NetlinkUnavailable if no
        netlink socket for nf_tables can be had here, OSError if this batch
        could not be sent or answered (it may or may not be in force: the
        caller sends it again through nft, which is idempotent)."""
        if not self._acks:
            return
        begin = _NLMSG.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 0) + _NFGEN.pack(
            0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        self._seq += 1
        end = _NLMSG.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._seq, 0) + _NFGEN.pack(
            0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        data = b"".join([begin, *self._parts, end])
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NetlinkUnavailable(str(exc)) from exc
        with sock:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without the request
                sock.bind((0, 0))
            except OSError as exc:
                raise NetlinkUnavailable(str(exc)) from exc
            sock.settimeout(ACK_TIMEOUT)
            # The kernel takes the batch in one message (it must fit the send
            # buffer) and queues every message's ack before it is read (~1 KiB
            # of receive buffer each): nft sizes both the same way.
            if len(data) > sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32:
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + 65536)
            acks = 1024 * (len(self._acks) + 1) + 65536
            if acks > sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, acks)
            sock.send(data)
            self._read_acks(sock)

    def _read_acks(self, sock: socket.socket) -> None:
        waiting = set(self._acks)
        refusal = 0
        while waiting:
            data = sock.recv(65536)
            i = 0
            while i + 16 <= len(data):
                length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, i)
                if length < 16:
                    break
                if mtype == NLMSG_ERROR and (seq in waiting or seq == 0):
                    err = -_ERR.unpack_from(data, i + 16)[0]
                    if err and not refusal:
                        refusal = err
                    if seq == 0 and err:  # the batch itself (e.g. no memory): no more acks
                        waiting.clear()
                    waiting.discard(seq)
                i += (length + 3) & ~3
        if refusal:
            raise NftError(f"Could not process rule: {os.strerror(refusal)}"
                           + (f" (table {self.table})" if refusal == errno.ENOENT else ""))
