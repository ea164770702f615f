"""What the two etcd transports share: errors, keys and events, TLS files, and
the key-range helpers. The gateway client (etcdclient.py) and the gRPC paths
(etcdgrpc.py) both import it; neither imports the other's module at import time
except the gateway client, which picks the gRPC paths when they are installed."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class EtcdError(Exception):
    """etcd refused a request (not a transport problem)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """The endpoint did not answer in time, or etcd cannot serve now (no leader)."""


class EtcdCompacted(EtcdError):
    """A watch asked for a revision that compaction removed."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked."""


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"


class KeyValue(NamedTuple):
    # A tuple, not a dataclass: a listing makes 100k of them at a new node's start.
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


class RawKV(Protocol):
    """A listed key and value as bytes: etcd's protobuf KeyValue as the gRPC
    listing gives it (a new node's 100k are read without a KeyValue each)."""

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...


class RawPair(NamedTuple):
    """RawKV from the JSON gateway."""
    key: bytes
    value: bytes


# A listing's page as it comes (the keys in order), and whether it is the first
# of a listing: a listing retried on another endpoint starts again.
PageHandler = Callable[[Sequence[RawKV], bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class TLSFiles:
    ca: str
    cert: str
    key: str
