"""The values that flow through the pipeline: Record → Match → BanRequest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kfwguard.addresses import IPAddress, IPNetwork

# Longer lines (or joined CRI messages) are skipped and counted, never
# matched: no real failure message is this long, the cap bounds the work per
# line, and buffering them would cost memory. Sources and filters share it.
MAX_LINE: Final = 64 * 1024


def lines_fit(data: bytes, cap: int, pos: int = 0, end: int | None = None) -> bool:
    """True if no line of ``data[pos:end]`` (split at b"\\n") is longer than ``cap``
    bytes. A few C-level finds per block: each step jumps to the last newline
    within the next cap + 1 bytes."""
    end = len(data) if end is None else end
    while end - pos > cap:
        nl = data.rfind(b"\n", pos, pos + cap + 1)
        if nl < 0:
            return False
        pos = nl + 1
    return True


@dataclass(slots=True)
class Record:
    """One log event.

    ``time`` is the event's own time when the source knows it (journald's
    realtime stamp), else None and the filter reads it from the text.
    ``fields`` holds journald fields or the parsed JSON object.
    ``position`` is the opaque resume token for the source after this record.
    """

    text: str
    time: float | None = None
    fields: Mapping[str, Any] | None = None
    position: str | None = None


@dataclass(slots=True, frozen=True)
class Match:
    """A failure found by a filter: who, when, and which rule said so."""

    host: IPAddress
    time: float
    filter: str
    rule: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class BanRequest:
    """A decision to ban ``target`` in ``jail`` for ``duration`` seconds."""

    target: IPAddress | IPNetwork
    jail: str
    duration: float
    reason: str
    offence: int = 1
    decided_at: float = 0.0
