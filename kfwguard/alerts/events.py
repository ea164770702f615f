"""What alerts are about: a typed union of events, one class per kind.

Listeners turn what happened (a ban, an early unban, a healed baseline drift)
into an event; the outbox stores its ``payload()`` (JSON, tagged by
``"event"``) and hands senders the event again (``from_payload``). Each sender
renders every kind (``match`` with ``assert_never``: mypy names a sender that
misses a new kind). A new kind is a class here with its ``kind`` tag, a
member of ``AlertEvent``, a route in AlertService.routes_for, a case in each
sender and its line in the message formats (actions/*.yaml).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, get_args


@dataclass(frozen=True, slots=True)
class _BanFacts:
    """A ban as it stood when the event was queued."""

    target: str
    jail: str
    reason: str
    banned_at: float
    expires_at: float
    offence: int
    node: str
    # When the event happened (queued), not when it is delivered.
    at: float
    # Observe mode (dry_run): decided, not enforced; receivers show it apart.
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class Ban(_BanFacts):
    """An address (or prefix) was banned."""

    kind: ClassVar[str] = "ban"


@dataclass(frozen=True, slots=True)
class Unban(_BanFacts):
    """A ban was lifted before it expired (expiries are not alerted)."""

    kind: ClassVar[str] = "unban"


@dataclass(frozen=True, slots=True)
class Drift:
    """The baseline table had been changed by someone else and was put back."""

    kind: ClassVar[str] = "drift"
    table: str
    reason: str
    node: str
    at: float


@dataclass(frozen=True, slots=True)
class _NodeBaseline:
    """Cluster mode: what this node (``node``) sees of another node's baseline."""

    # The node the alert is about.
    target: str
    reason: str
    node: str
    at: float


@dataclass(frozen=True, slots=True)
class BaselineDiffers(_NodeBaseline):
    """Node ``target`` runs a baseline that is not the cluster's (fires)."""

    kind: ClassVar[str] = "baseline_differs"


@dataclass(frozen=True, slots=True)
class BaselineAgrees(_NodeBaseline):
    """Node ``target``'s baseline is the cluster's again (resolves)."""

    kind: ClassVar[str] = "baseline_agrees"


AlertEvent = Ban | Unban | Drift | BaselineDiffers | BaselineAgrees

_KINDS: dict[str, type[AlertEvent]] = {k.kind: k for k in get_args(AlertEvent)}


def payload(event: AlertEvent) -> dict[str, Any]:
    """The stored (and JSON webhook) form: the fields and ``"event": kind``."""
    return {"event": event.kind, **asdict(event)}


# What each field annotation accepts from JSON (annotations are strings here).
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "float": (int, float), "int": (int,),
                                       "bool": (bool,)}


class BadPayload(ValueError):
    """A stored event this version cannot read (damaged, or from a newer version)."""


def from_payload(data: object) -> AlertEvent:
    """The event back from ``payload()``; BadPayload if it is not one."""
    if not isinstance(data, dict):
        raise BadPayload("not a mapping")
    cls = _KINDS.get(str(data.get("event")))
    if cls is None:
        raise BadPayload(f"unknown event {data.get('event')!r}")
    values = dict(data)
    if cls is Drift and "table" not in values:
        # Queued by a version that sent drift as a fake ban of the table.
        values["table"] = values.get("target")
    kept: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in values:
            continue  # a required one missing fails below
        value, want = values[f.name], str(f.type)
        # A number stored as 1 reads back as int; a bool is not a number here.
        ok = (isinstance(value, _TYPES[want]) and not
              (want != "bool" and isinstance(value, bool)))
        if not ok:
            raise BadPayload(f"{f.name}: {type(value).__name__} where {want} belongs")
        kept[f.name] = float(value) if want == "float" else value
    try:
        return cls(**kept)
    except TypeError as exc:
        raise BadPayload(str(exc)) from None
