"""Saving ban changes: every change goes through here to the store, and what
the store refuses (a full or failing disk) waits in memory, newest change
per (target, jail) winning, until a save works again (``sync``, run by every
change and every table check, and at stop).

While anything waits, the store's ``.saved`` marker is gone
(kfwguard.store.connection): a start that does not find it knows the kernel
may hold bans the file never took, and merges them (kfwguard.bans.restore).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from kfwguard.bans.index import Key
from kfwguard.bans.model import BanStats
from kfwguard.store import BanRow, Store, StoreError

log = structlog.get_logger("kfwguard.bans")


class StoreJournal:
    def __init__(self, store: Store | None, stats: BanStats,
                 now: Callable[[], float]) -> None:
        self.store = store
        self.stats = stats
        self._now = now
        self.persisting = store is not None
        # Rows (or deletions, None) the store refused: written by the next
        # save that works.
        self._changes: dict[Key, BanRow | None] = {}

    def __len__(self) -> int:
        return len(self._changes)

    def save(self, rows: Sequence[BanRow]) -> None:
        if self.store is None:
            return
        for r in rows:
            self._changes[(r.target, r.jail)] = r
        self.sync()

    def delete(self, keys: Sequence[Key]) -> None:
        if self.store is None:
            return
        for k in keys:
            self._changes[k] = None
        self.sync()

    def sync(self) -> bool:
        """Write what the store refused earlier (full disk); True if nothing is left."""
        if self.store is None:
            return not self._changes
        if not self._changes:
            if self.persisting:
                self.store.mark_saved(True)
            return True
        now = self._now()
        saves = [r for r in self._changes.values() if r is not None and r.expires_at > now]
        deletes = [k for k, r in self._changes.items() if r is None]
        try:
            self.store.apply_changes(saves, deletes)
        except StoreError as exc:
            self.failed(exc)
            return False
        self._changes.clear()
        self.store.mark_saved(True)
        if not self.persisting:
            self.persisting = True
            log.info("state_persisting_again", path=str(self.store.path))
        return True

    def failed(self, exc: StoreError) -> None:
        """The store refused something: count it, say so once, and drop the
        marker that says the file holds every change."""
        self.stats.store_errors += 1
        if self.store is not None and self._changes:
            self.store.mark_saved(False)
        if self.persisting:
            log.error("state_not_persisting", error=str(exc), unsaved=len(self._changes),
                      note="bans continue from memory and the kernel; "
                           "unsaved changes are written when the store works again")
        self.persisting = False

    def purge_expired(self, now: float) -> None:
        if self.store is not None and self.persisting:
            try:
                self.store.purge_expired(now)
            except StoreError as exc:
                self.failed(exc)

    def offence(self, key: Key, known: BanRow | None) -> int:
        """How many times (target, jail) offended before: the unsaved change,
        else the store's count, else ``known`` (the ban in memory)."""
        pending = self._changes.get(key)
        if pending is not None:
            return pending.offence
        if self.store is None or not self.persisting:
            return known.offence if known else 0
        try:
            return self.store.offence_counts(key[1], [key[0]]).get(key[0], 0)
        except StoreError as exc:
            self.failed(exc)
            return known.offence if known else 0
