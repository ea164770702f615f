"""What every source offers the daemon (a name, counters, a lag, and ``run(sink)``),
and the registry of source kinds: ``type:`` tag → config model with its ``build``."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kfwguard.configtypes import Model
from kfwguard.model import Record
from kfwguard.registry import Registry

# Called on the event loop with a non-empty batch, in log order. The daemon
# persists ``batch[-1].position`` after the call returns; each record's
# position is the resume token for the point just after that record.
Sink = Callable[[Sequence[Record]], None]

# Most records handed to the sink in one call; the source yields to the event
# loop between batches so one flooding source cannot starve the others.
MAX_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a source has not read yet: ``unread_bytes`` for a file (size - offset
    of the file being read; None where bytes mean nothing, as for journald) and
    ``caught_up``: at the end of its input (a file's end, the journal's tail)."""

    unread_bytes: int | None
    caught_up: bool


class Source(Protocol):
    """A log source the daemon runs as one task."""

    name: str

    @property
    def lines_read(self) -> int:
        """Records delivered so far."""
        ...

    @property
    def skipped(self) -> dict[str, int]:
        """Inputs skipped, by reason (too_long, invalid_json, …)."""
        ...

    # Set by run() once the starting point is fixed (file opened and positioned,
    # or the journal's start stamp taken): what is written after it is read.
    ready: asyncio.Event

    def lag(self) -> float | None:
        """0 when caught up; else seconds since the source was last at the end of
        its input (or began reading), an upper bound on the age of the oldest
        unread record. None before ``run`` starts."""
        ...

    def backlog(self) -> Backlog:
        """What is written but not read yet."""
        ...

    @property
    def problem(self) -> str | None:
        """Why the source reads nothing right now (no such file, no journal), for
        status; None while it reads."""
        ...

    def position(self) -> str | None:
        """Resume token after the last record delivered, or, before any, where
        reading began. The daemon saves it at start so that a crash before the
        first record is saved does not turn the next start into a first run
        (which starts at the end and would skip what was written meanwhile)."""
        ...

    async def run(self, sink: Sink) -> None:
        """Deliver records until cancelled; bad input is counted, never raised."""
        ...


class SourceConfig(Model):
    """What every source kind's config has. A kind subclasses it with
    ``type: Literal["its-tag"]`` and its own keys, implements ``build`` and
    registers with ``@SOURCES.register`` (e.g. kfwguard/sources/journald.py)."""

    name: str
    type: str

    @abstractmethod
    def build(self, position: str | None, *, clock: Callable[[], float]) -> Source:
        """The running source, resuming at ``position`` (what the daemon saved
        from ``records[-1].position``) when given."""

    def forgery_warning(self, jail: str, filter_name: str, *, syslog_tag: bool) -> str | None:
        """Why a local user could write lines that jail ``jail`` counts, or None
        (kfwguard/sources/trust.py). ``syslog_tag``: the filter trusts a
        syslog header's tag to name the program."""
        return None


SOURCES: Registry[SourceConfig] = Registry("source", SourceConfig, "kfwguard.sources.kinds")
