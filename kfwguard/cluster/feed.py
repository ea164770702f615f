"""The seam between kfwguard and a shared store of decisions (cluster mode).

A backend (``etcd.py`` today; a Kubernetes-API backend could be another file,
see docs/cluster.md) implements :class:`DecisionFeed`. The service
(``service.py``) never sees keys, leases or revisions: it publishes its own
node's bans, reads a snapshot, then follows changes.

Contract every backend keeps:

* ``publish`` returns only when the store has taken the change (it waits out
  an outage, it never drops); a node writes only its own bans.
* ``snapshot`` is consistent (one point in time) however large.
* ``changes(snapshot)`` yields every change after the snapshot, in order,
  across reconnects; when it cannot (history compacted) it raises
  :class:`FeedResync`, and the caller takes a new snapshot and reconciles.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

_raw_decode = json.JSONDecoder().raw_decode


def _fast_encoder() -> Callable[[dict[str, Any]], bytes] | None:
    """msgspec's JSON encoder (the ``cluster`` extra), or None. Node A queues
    every ban of a burst for publishing on its event loop: 0.6 µs a value
    instead of 6-9 µs with json.dumps (which also builds an encoder per call;
    a 10,000-ban burst spent ~0.2 s of A's loop there)."""
    try:
        import msgspec
    except ImportError:
        return None
    return msgspec.json.Encoder().encode


_FAST_ENCODE = _fast_encoder()
_compact = json.JSONEncoder(separators=(",", ":")).encode


def _encode(value: dict[str, Any]) -> bytes:
    """Compact JSON; both encoders give the same JSON values (msgspec leaves
    non-ASCII as UTF-8). A lone surrogate (a hostile line's undecodable byte,
    kept by surrogateescape) is no UTF-8: msgspec refuses it, the stdlib
    escapes it."""
    if _FAST_ENCODE is not None:
        try:
            return _FAST_ENCODE(value)
        except UnicodeEncodeError:
            pass
    return _compact(value).encode()


def _fast_decoder() -> tuple[Callable[[bytes], Any], type[Exception]] | None:
    """msgspec's typed decoder of a ban value (the ``cluster`` extra), or None.

    An accelerator, like the gRPC listing: a new node decodes every shared
    ban at start, and msgspec parses and type-checks one in C ~8x faster than
    json (110k values: ~0.1 s instead of ~0.8 s here). It takes only values
    of the exact types SharedBan.encode writes; anything else (a string for
    a time, a null, a non-string jail, bad JSON) goes through the lenient
    stdlib path below, which accepts or refuses it as before."""
    try:
        import msgspec
    except ImportError:
        return None

    # defstruct, not a class body: this module's annotations are strings
    # (__future__) that msgspec would resolve in the module, without msgspec.
    value = msgspec.defstruct("Value", [
        ("banned_at", float), ("expires_at", float), ("jail", str, ""), ("reason", str, ""),
        ("decided_at", float | msgspec.UnsetType, msgspec.UNSET)])
    return msgspec.json.Decoder(value).decode, msgspec.DecodeError


_FAST = _fast_decoder()
_new = tuple.__new__


class SharedBan(NamedTuple):
    """A ban as nodes share it: decided by ``node``, in force until ``expires_at``
    (epoch seconds; node clocks are NTP-synchronised). A tuple, not a frozen
    dataclass: a new node makes 100k of them at start, 8x faster."""

    node: str
    target: str
    jail: str
    reason: str
    banned_at: float
    expires_at: float
    decided_at: float

    def encode(self) -> bytes:
        return _encode({"jail": self.jail, "reason": self.reason[:200],
                        "banned_at": self.banned_at, "expires_at": self.expires_at,
                        "decided_at": self.decided_at})

    @classmethod
    def decode(cls, node: str, target: str, raw: bytes) -> SharedBan:
        """Parse a stored value; raise ValueError on anything malformed.

        A new node decodes every shared ban at start (100k of them must be in
        its kernel within seconds), so this is written for speed: one
        raw_decode of text (json.loads on bytes first guesses the encoding),
        and range tests that NaN and infinities fail by themselves; msgspec
        first when installed (_fast_decoder)."""
        if _FAST is not None:
            try:
                v = _FAST[0](raw)
            except _FAST[1]:
                pass
            else:
                exp, at, decided = v.expires_at, v.banned_at, v.decided_at
                if type(decided) is not float:
                    decided = at
                if 0 <= exp < 1e11 and 0 <= at < 1e11 and 0 <= decided < 1e11:
                    # tuple.__new__: the NamedTuple's own __new__ is a Python
                    # call, a third of a listing's decoding.
                    return _new(cls, (node, target, v.jail[:64], v.reason[:200], at, exp,
                                      decided))
        return cls.decode_lenient(node, target, raw)

    @classmethod
    def decode_lenient(cls, node: str, target: str, raw: bytes) -> SharedBan:
        """decode() through the standard library alone: any JSON object whose
        times are numbers (or numeric strings) in range."""
        text = raw.decode()
        try:
            d, end = _raw_decode(text)
        except ValueError:
            d, end = None, 0
        if end != len(text):  # leading or trailing blanks, or not JSON at all
            d = json.loads(text)
        if type(d) is not dict:
            raise ValueError("not an object")
        exp, at = float(d["expires_at"]), float(d["banned_at"])
        decided = float(d.get("decided_at", at))
        if not (0 <= exp < 1e11 and 0 <= at < 1e11 and 0 <= decided < 1e11):
            raise ValueError("a time is not a finite epoch second")
        jail, reason = d.get("jail", ""), d.get("reason", "")
        return cls(node, target, (jail if type(jail) is str else str(jail))[:64],
                   (reason if type(reason) is str else str(reason))[:200], at, exp, decided)


@dataclass(frozen=True, slots=True)
class BanPut:
    ban: SharedBan


@dataclass(frozen=True, slots=True)
class BanGone:
    node: str
    target: str


@dataclass(frozen=True, slots=True)
class AllowPut:
    cidr: str


@dataclass(frozen=True, slots=True)
class AllowGone:
    cidr: str


@dataclass(frozen=True, slots=True)
class UnbanAsked:
    """``unban --cluster``: lift every ban of ``target`` decided before ``at``."""

    target: str
    by: str
    at: float


@dataclass(frozen=True, slots=True)
class NodeBeat:
    node: str
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeGone:
    node: str


Change = BanPut | BanGone | AllowPut | AllowGone | UnbanAsked | NodeBeat | NodeGone


@dataclass
class Snapshot:
    bans: list[SharedBan] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    unbans: list[UnbanAsked] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Backend position the changes resume from (etcd: the listing's revision).
    position: int = 0
    skipped: int = 0  # malformed entries


BansHandler = Callable[[Snapshot, list[SharedBan]], None]


class FeedResync(Exception):
    """The feed lost its place (history compacted): take a new snapshot."""


class DecisionFeed(Protocol):
    async def publish(self, node: str, puts: Sequence[SharedBan], deletes: Sequence[str],
                      *, encoded: Sequence[bytes] = ()) -> None:
        """``encoded``: the puts' values as ``encode()`` gives them, when the caller
        has them already (the outbox holds them)."""

    async def snapshot(self, on_bans: BansHandler | None = None) -> Snapshot:
        """Everything shared, at one position. ``on_bans``: called with the
        snapshot so far (its allowlist whole) and each part of its bans as
        they come, so that they can be enforced before the rest is read."""
        ...

    def changes(self, after: Snapshot, *, own: str = "") -> AsyncIterator[list[Change]]:
        """``own``: a node whose bans' changes are left out (this node's)."""
        ...

    async def ask_unban(self, target: str, by: str, at: float) -> None: ...

    async def heartbeat(self, node: str, info: dict[str, Any]) -> None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def endpoint(self) -> str | None:
        """Where the feed is connected now (None: nowhere)."""

    async def close(self) -> None: ...
