"""The ``type: journald`` source kind: read the systemd journal with
``systemd.journal.Reader`` on the event loop.

Position: the journal cursor (``__CURSOR``) of the last entry delivered.

Latency: journald coalesces its change notifications, so the Reader's fd
wakes 250-500 ms after an entry was written although the entry is readable
after ~1-2 ms. While entries are flowing the source therefore re-checks every
``BUSY_POLL`` until ``BUSY_FOR`` after the last entry, then backs off
(doubling) to ``IDLE_POLL``, with the fd as a wake-up on top. An empty
re-check (``process()`` + ``_next()``) costs ~0.5-3 µs of C; the wake-up of
the process around it is what costs (see ``IDLE_POLL``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field

from kfwguard.configtypes import AbsolutePath
from kfwguard.model import Record
from kfwguard.sources.base import MAX_BATCH, SOURCES, Backlog, Sink, Source, SourceConfig
from kfwguard.sources.formats import count

# journald fields that say which process wrote an entry (set by journald from
# the sender's credentials, never by the sender; kfwguard/sources/trust.py).
WRITER_FIELDS = frozenset({"_UID", "_COMM", "_EXE", "_PID", "_CMDLINE"})

# Re-check interval while entries are flowing: a busy source delivers an
# entry ~5-10 ms after it was written (median).
BUSY_POLL = 0.01
# How long after the last entry the source counts as busy. Attack traffic
# arrives in bursts, so this covers the gaps inside a burst.
BUSY_FOR = 2.0
# Slowest re-check when quiet; the interval doubles from BUSY_POLL up to it.
# Measured on a 2-core VM, one wake-up of the process costs ~0.3 ms of CPU:
# a quiet source at 0.25 s costs ~0.17 % of a core (0.1 s: 0.4 %), a busy
# one at 10 ms ~3 %. A lone entry after a quiet spell waits at most this long,
# still sooner than the fd would say.
IDLE_POLL = 0.25
# Wait before reopening the journal after an error, or while it is missing.
REOPEN_WAIT = 1.0

# A position that is not a cursor: where a first run began reading (epoch s).
REALTIME_PREFIX = "realtime:"


@SOURCES.register
class JournaldSourceConfig(SourceConfig):
    type: Literal["journald"]
    # FIELD: value or [values]; sd-journal ORs the values of a field, ANDs fields.
    match: dict[str, str | list[str]] = Field(default_factory=dict)
    # A journal directory to read instead of the system journal (tests, containers).
    path: AbsolutePath | None = None

    def build(self, position: str | None, *, clock: Callable[[], float]) -> Source:
        return JournaldSource(self, position, clock=clock)

    def forgery_warning(self, jail: str, filter_name: str, *, syslog_tag: bool) -> str | None:
        if WRITER_FIELDS & set(self.match):
            return None
        return (f"jail {jail!r} reads journald source {self.name!r} without a writer "
                "field in its match (_UID, _COMM or _EXE): any process that can log there "
                "(for _SYSTEMD_UNIT, any process in the unit's cgroup) can have an "
                "address banned")


def _text(value: Any) -> str:
    if isinstance(value, list):
        # A field repeated in one entry: the first value stands for it.
        value = value[0] if value else b""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class JournaldSource:
    """A ``type: journald`` source."""

    def __init__(
        self,
        cfg: JournaldSourceConfig,
        position: str | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = cfg.name
        self.lines_read = 0
        self.skipped: dict[str, int] = {}
        self.path: Path | None = cfg.path
        self.match: dict[str, list[str]] = {
            k: [v] if isinstance(v, str) else list(v) for k, v in cfg.match.items()
        }
        self._clock = clock
        self._cursor = position or None
        self._reader: Any = None
        self._fd = -1
        # True when the reader already sits on an entry not yet delivered
        # (after resuming at a cursor whose entry is gone).
        self._on_entry = False
        self._started = 0.0
        self._busy_until = 0.0
        self._interval = IDLE_POLL
        self._last_time: float | None = None
        # None while the reader is at the journal's tail; else when it fell
        # behind (journald announced entries, a batch came back full, or the
        # journal could not be read), so lag() bounds the oldest unread entry.
        self._behind_since: float | None = None
        self._running = False
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        self._said: set[str] = set()
        # Why the source reads nothing (no journal to open, or no journal
        # files in it: journald not running or not mounted here), for status.
        self.problem: str | None = None
        self._log = structlog.get_logger().bind(source=self.name)

    def position(self) -> str | None:
        if self._cursor is not None:
            return self._cursor
        # No entry yet: remember where reading began, as a realtime stamp, so a
        # restart before the first entry still reads what came after it.
        return f"{REALTIME_PREFIX}{self._started:.6f}" if self._started else None

    def lag(self) -> float | None:
        if not self._running:
            return None
        if self._behind_since is None:
            return 0.0
        return max(0.0, self._clock() - self._behind_since)

    def backlog(self) -> Backlog:
        """journald has no byte offset: only whether the reader is at the tail."""
        return Backlog(unread_bytes=None, caught_up=self._running and self._behind_since is None)

    def _behind(self, since: float | None = None) -> None:
        if self._behind_since is None:
            self._behind_since = self._clock() if since is None else since

    async def run(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        # Entries stamped from now on are new; journald stamps with the same
        # clock (the journal's realtime, not the injectable one).
        if self._cursor is not None and self._cursor.startswith(REALTIME_PREFIX):
            try:
                self._started = float(self._cursor[len(REALTIME_PREFIX):])
            except ValueError:
                self._started = time.time()
            self._cursor = None
        else:
            self._started = time.time()
        self._running = True
        self.ready.set()
        try:
            while True:
                if self._reader is None and not self._open(loop):
                    self._behind()
                    await asyncio.sleep(REOPEN_WAIT)
                    continue
                self._wake.clear()
                try:
                    records = self._read_batch()
                except OSError as exc:
                    self._log.warning("source.journal_error", error=str(exc))
                    self._behind()
                    self._close(loop)
                    await asyncio.sleep(REOPEN_WAIT)
                    continue
                now = time.monotonic()
                if records:
                    self._deliver(sink, records)
                    self._busy_until = now + BUSY_FOR
                    self._interval = BUSY_POLL
                    if len(records) >= MAX_BATCH:
                        # More to read, none older than the last entry delivered.
                        self._behind_since = records[-1].time
                        await asyncio.sleep(0)
                        continue
                elif now >= self._busy_until:
                    self._interval = min(self._interval * 2, IDLE_POLL)
                self._behind_since = None  # a short batch ends at the tail
                try:
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._running = False
            self._close(loop)

    # -- reader lifecycle ------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> bool:
        import systemd.journal as journal

        try:
            if self.path is not None:
                reader = journal.Reader(path=str(self.path))
            else:
                reader = journal.Reader()
        except OSError as exc:
            self._no_journal(f"cannot open the journal: {exc}")
            return False
        try:
            for field, values in self.match.items():
                # sd-journal ORs matches on the same field and ANDs fields.
                for value in values:
                    reader.add_match(f"{field}={value}")
            self._seek(reader)
            fd = reader.fileno()
        except OSError as exc:
            reader.close()
            self._no_journal(f"cannot open the journal: {exc}")
            return False
        if reader.get_usage() == 0:
            # sd-journal opens no files without complaint: this is what a
            # node without a running journald (or a pod without the journal
            # mounted) looks like. Kept open: files journald creates later
            # are picked up, and the first entry read clears the problem.
            self._no_journal("no journal files: is systemd-journald running"
                             + (" (and its journal mounted here)?" if self.path is None
                                else " and writing there?"))
        else:
            self._journal_found()
        self._reader = reader
        self._fd = fd
        loop.add_reader(fd, self._readable)
        return True

    def _seek(self, reader: Any) -> None:
        self._on_entry = False
        cursor = self._cursor
        if cursor is None:
            # Not seek_tail(): with a match that has no entries yet it can
            # skip entries written meanwhile.
            reader.seek_realtime(self._started)
            return
        try:
            reader.seek_cursor(cursor)
        except (OSError, ValueError):
            self._log.warning("source.cursor_invalid", cursor=cursor[:200],
                              detail="reading from the head of the journal")
            reader.seek_head()
            return
        if not reader._next():
            return
        if reader.test_cursor(cursor):
            return  # on the entry already delivered: the next _next() moves past it
        self._log.warning("source.cursor_not_found", cursor=cursor[:200],
                          detail="entry vacuumed; resuming at the oldest entry after it")
        self._on_entry = True

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._reader is None:
            return
        if self._fd >= 0 and not loop.is_closed():
            loop.remove_reader(self._fd)
        self._fd = -1
        try:
            self._reader.close()
        except OSError:
            pass
        self._reader = None

    def _readable(self) -> None:
        reader = self._reader
        if reader is not None:
            try:
                # Consumes the inotify events; without it the fd stays readable
                # and the loop would spin. Also picks up rotated journal files.
                if reader.process() != 0:  # APPEND or INVALIDATE: entries to read
                    self._behind()
            except OSError:
                pass
        self._wake.set()

    # -- reading -----------------------------------------------------------------

    def _read_batch(self) -> list[Record]:
        # The fast path: the reader's private C calls (_next, _get_all,
        # _get_realtime, _get_cursor) give raw bytes; the public get_next()
        # runs a Python converter on every field of every entry, several
        # times slower. Private API: pyproject.toml caps systemd-python, and
        # test_sources_journald.py::TestFastPath fails if this path is left.
        reader = self._reader
        reader.process()
        out: list[Record] = []
        while len(out) < MAX_BATCH:
            if self._on_entry:
                self._on_entry = False
            elif not reader._next():
                break
            try:
                raw = reader._get_all()
                realtime = reader._get_realtime()
                cursor = reader._get_cursor()
            except OSError:
                count(self.skipped, "journal_error")
                continue
            fields = {k: _text(v) for k, v in raw.items()}
            fields["__CURSOR"] = cursor
            fields["__REALTIME_TIMESTAMP"] = str(realtime)
            out.append(Record(
                text=fields.get("MESSAGE", ""),
                time=realtime / 1e6,
                fields=fields,
                position=cursor,
            ))
        return out

    def _no_journal(self, problem: str) -> None:
        where = str(self.path) if self.path is not None else "the system journal"
        self.problem = f"{where}: {problem}"
        self._once("no_journal", "source.waiting_for_journal", path=where, problem=problem)

    def _journal_found(self) -> None:
        if self.problem is not None:
            self._log.info("source.journal_found")
        self.problem = None
        self._said.discard("no_journal")

    def _deliver(self, sink: Sink, records: list[Record]) -> None:
        self._journal_found()
        sink(records)
        self.lines_read += len(records)
        self._cursor = records[-1].position
        self._last_time = records[-1].time

    def _once(self, key: str, event: str, **kw: object) -> None:
        if key not in self._said:
            self._said.add(key)
            self._log.warning(event, **kw)
