"""One source's batches → its jails → the BanManager.

A source hands its batches (a ``TextBlock`` of raw lines, or a sequence of
``Record``) to ``SourcePipeline.sink``. Each jail reading that source has a
``JailFeed``: the jail, its filter and, for a paired filter, its sessions. The
feed turns a batch into ban requests and per-rule match counts; a bug in a
filter costs the record (or the rest of the block) that tripped it, counted and
logged, never the daemon. The pipeline hands the requests to the BanManager in
one call per batch and keeps the source's position: where a batch begins is
saved before anything is decided on it, so a crash mid-batch resumes there, and
later positions are saved at most once per ``CURSOR_SAVE_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from kfwguard.config import Config
from kfwguard.jails.jail import Jail
from kfwguard.matching import Filter, load_filter
from kfwguard.matching.engine import Hit
from kfwguard.matching.loader import FilterNotFound
from kfwguard.matching.sessions import Sessions, block_sessions, record_sessions, sessions_for
from kfwguard.model import BanRequest, Record
from kfwguard.sources import Source
from kfwguard.sources.formats import TextBlock
from kfwguard.store import Store, StoreError

if TYPE_CHECKING:
    from kfwguard.matching import _native

log = structlog.get_logger("kfwguard.pipeline")

# Positions are saved at most this often per source (and at stop): a crash
# re-reads at most this much, and re-read lines never re-ban (jails count by
# log time and skip what precedes a ban).
CURSOR_SAVE_INTERVAL = 1.0

# Per rule (None: the filter did not say), the matches of one batch.
RuleCounts = dict[str | None, int]


def build_filters(cfg: Config) -> dict[str, Filter]:
    """Load every filter the enabled jails use; raise FilterError on the first bad one,
    or ConfigError (naming the jail's line) for one that is not there."""
    out: dict[str, Filter] = {}
    for i, j in enumerate(cfg.jails):
        if j.enabled and j.filter not in out:
            out[j.filter] = jail_filter(cfg, i)
    return out


def jail_filter(cfg: Config, index: int) -> Filter:
    """The filter of jail ``cfg.jails[index]``; see build_filters."""
    j = cfg.jails[index]
    try:
        return load_filter(j.filter, cfg.filters_dirs,
                           networks={"control_plane": cfg.baseline.control_plane_cidrs})
    except FilterNotFound as exc:
        raise cfg.error_at(("jails", index, "filter"),
                           f"jail {j.name!r}: {exc}") from None


def filter_fingerprint(flt: Filter) -> str:
    """Which filter file, with which text, ``flt`` was built from: equal fingerprints
    at a reload mean the jails using it may keep their failure windows."""
    try:
        text = Path(flt.path).read_bytes()
    except OSError:
        return f"{flt.path}\0{id(flt)}"  # unreadable now: never equal to another load
    return f"{flt.path}\0{flt.mode}\0{hashlib.sha256(text).hexdigest()}"


@dataclass
class JailFeed:
    """One jail reading one source: a batch in, ban requests and match counts out."""

    jail: Jail
    filter: Filter
    # A paired filter's hits settle per session (PAM + sshd lines, one count):
    # matching.sessions.sessions_for; its C++ form lets the block pass settle them.
    sessions: Sessions | _native.Sessions | None = None
    # Records (or blocks) a filter bug cost.
    errors: int = 0

    @classmethod
    def of(cls, jail: Jail, filter: Filter) -> JailFeed:
        """The feed the daemon builds for ``jail`` reading with ``filter`` (sessions
        for a paired filter); test-filter builds the same one."""
        return cls(jail, filter, sessions_for(filter))

    def take(self, records: Sequence[Record], now: float) -> tuple[list[BanRequest], RuleCounts]:
        """The batch into the jail: the bans it asks for and its matches per rule."""
        if isinstance(records, TextBlock):
            return self._lines_into(records, now)
        return self.jail.add_hits(self._hits_of(records, now), now, self.filter.name)

    @property
    def scanner(self) -> str:
        """What reads this feed's blocks of lines: "native" (the C++ block scanner;
        with C++ windows, straight into the jail's windows, a paired filter's
        hits settled on the way in the C++ sessions) or "per-record"."""
        return self.filter.block_engine

    def found(self, records: Sequence[Record], now: float,
              place: Callable[[list[Hit], bool], list[Hit]] | None = None) -> list[Hit]:
        """What ``take`` counts, for a tool that shows it line by line: the hits of
        the batch, settled per session for a paired filter (``jail.add_hits`` of
        them is ``take``). ``place(hits, by_offset)`` may first give each hit its
        place in the whole input (the first field: a byte offset in
        ``records.data`` when by_offset, else the record's index), so that a
        hit a session held back from an earlier batch keeps its own."""
        found, by_offset = self._raw_hits_of(records, now)
        sids = self._sessions_of(records, found, by_offset)
        if place is not None:
            found = place(found, by_offset)
        return found if self.sessions is None else self.sessions.settle(found, sids, now)

    def _hits_of(self, records: Sequence[Record], now: float) -> list[Hit]:
        """The filter's findings for the batch (settled per session for a paired
        filter); a filter bug costs its record only."""
        return self.found(records, now)

    def _sessions_of(self, records: Sequence[Record], found: list[Hit],
                     by_offset: bool) -> list[str | None]:
        if self.sessions is None:
            return []
        return (block_sessions(records.data, found)
                if by_offset and isinstance(records, TextBlock)
                else record_sessions(records, found))

    def _raw_hits_of(self, records: Sequence[Record], now: float) -> tuple[list[Hit], bool]:
        """The hits, and whether they are placed by byte offsets (a TextBlock's
        scan) rather than by record index."""
        flt = self.filter
        try:
            if isinstance(records, TextBlock):
                # Raw lines: lines no rule can match never become objects.
                return flt.scan_lines(records.data, now), True
            return flt.hits(records, now), False
        except Exception:
            pass
        # Again record by record, so that only the record that trips the bug is lost.
        out: list[Hit] = []
        for i, rec in enumerate(records):
            try:
                # Indexed as in the batch, so that the sessions find the record.
                out += [(i, *h[1:]) for h in flt.hits([rec], now)]
            except Exception:
                self.errors += 1
                log.exception("filter_error", filter=flt.name)
        return out, False

    def _lines_into(self, block: TextBlock, now: float) -> tuple[list[BanRequest], RuleCounts]:
        """A block of raw lines into the jail: in one C++ pass where both sides
        were built for it (Jail.add_lines), else through the filter's hits."""
        try:
            sessions = self.sessions
            done = self.jail.add_lines(
                self.filter, block.data, now,
                None if isinstance(sessions, Sessions) else sessions)
            if done is None:  # a block the per-record path must read, or Python sessions
                done = self.jail.add_hits(self._hits_of(block, now), now, self.filter.name)
        except Exception:
            # Either pass counted the lines before the failing one and cannot say
            # which those were: the rest of the block is lost, loudly, rather than
            # the first lines counted twice.
            self.errors += 1
            log.exception("filter_error", filter=self.filter.name)
            return [], {}
        return done


@dataclass
class SourcePipeline:
    """A source, the jails that read it, and where it has been read to."""

    source: Source
    feeds: list[JailFeed]
    store: Store | None
    request: Callable[[list[BanRequest]], object]   # BanManager.request
    clock: Callable[[], float]
    task: asyncio.Task[None] | None = None
    last_saved: float = 0.0
    unsaved: str | None = None
    crashes: int = 0
    cursor_failing: bool = False
    # (jail, rule) → matches since start.
    matches: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Filter bugs and source crashes, since start."""
        return self.crashes + sum(f.errors for f in self.feeds)

    def sink(self, records: Sequence[Record]) -> None:
        now = self.clock()
        # Before deciding anything, persist where this batch begins, so a crash
        # mid-batch resumes here.
        self.save_start_position()
        requests: list[BanRequest] = []
        for feed in self.feeds:
            found, counts = feed.take(records, now)
            requests += found
            for rule, n in counts.items():
                k = (feed.jail.name, rule or "")
                self.matches[k] = self.matches.get(k, 0) + n
        if requests:
            self.request(requests)
        position = (
            records.end_position if isinstance(records, TextBlock)
            else records[-1].position if records else None
        )
        if position is not None:
            self.unsaved = position
            if now - self.last_saved >= CURSOR_SAVE_INTERVAL:
                self.save_cursor()

    def save_start_position(self) -> None:
        """Until a position has been saved, save where reading began: without it a
        crash makes the next start a first run, which starts at the end."""
        if not self.last_saved and self.unsaved is None:
            self.unsaved = self.source.position()
            self.save_cursor()

    def save_cursor(self) -> None:
        if self.unsaved is None or self.store is None:
            return
        try:
            self.store.save_cursor(self.source.name, self.unsaved)
            self.unsaved = None
            self.last_saved = self.clock()
            if self.cursor_failing:
                self.cursor_failing = False
                log.info("cursor_saved_again", source=self.source.name)
        except StoreError as exc:
            if not self.cursor_failing:  # once per outage, not once per second
                self.cursor_failing = True
                log.error("cursor_not_saved", source=self.source.name, error=str(exc))

    async def run(self) -> None:
        """Read the source until cancelled; a source that raises is restarted."""
        while True:
            try:
                await self.source.run(self.sink)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Sources promise not to raise on bad input; if one does anyway,
                # keep the daemon alive and restart that source.
                self.crashes += 1
                log.exception("source_crashed_restarting", source=self.source.name)
                await asyncio.sleep(1.0)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"source:{self.source.name}")
