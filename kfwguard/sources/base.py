"""What every source offers the daemon: a name, counters, a lag, and ``run(sink)``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kfwguard.model import Record

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

    def position(self) -> str | None:
        """Resume token after the last record delivered, or, before any, where
        reading began. The daemon saves it at start so that a crash before the
        first record is saved does not turn the next start into a first run
        (which starts at the end and would skip what was written meanwhile)."""
        ...

    async def run(self, sink: Sink) -> None:
        """Deliver records until cancelled; bad input is counted, never raised."""
        ...
