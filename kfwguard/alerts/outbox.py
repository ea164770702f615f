"""The durable alert outbox and the per-action delivery workers.

Listeners only ``put()`` typed events into memory; a spooler task writes them to
SQLite one loop turn later, after the ban's kernel update is under way, so an
alert never delays a ban. Items stay in the store until delivered: they
survive restarts and a receiver that is down. Without a store (state DB
unavailable) the queue lives in memory, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from kfwguard.alerts.base import AlertError, PermanentAlertError, Sender
from kfwguard.alerts.events import AlertEvent, BadPayload, from_payload
from kfwguard.alerts.events import payload as to_payload
from kfwguard.store import OutboxRow, Store, StoreError

log = structlog.get_logger("kfwguard.alerts")

# Per action, in memory; past this the oldest item is dropped (and counted) so
# a long receiver outage without a state DB cannot exhaust memory.
MAX_MEMORY_ITEMS = 20_000


@dataclass(slots=True)
class _MemItem:
    id: int
    action: str
    payload: dict[str, Any]
    created: float
    attempts: int = 0
    next_at: float = 0.0


class Outbox:
    """Queued alert events per action: SQLite when the store works, memory otherwise."""

    def __init__(self, store: Store | None, *, clock: Callable[[], float] = time.time,
                 max_memory: int = MAX_MEMORY_ITEMS) -> None:
        self.store = store
        self.clock = clock
        self.max_memory = max_memory
        self.dropped = 0
        self._incoming: list[tuple[str, dict[str, Any]]] = []
        self._memory: dict[str, deque[_MemItem]] = {}
        # Memory ids are negative so they never collide with SQLite rowids.
        self._next_mem_id = -1
        self._wake_spooler = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {}
        self._store_failed = False

    # -- adding -----------------------------------------------------------------

    def put(self, items: Sequence[tuple[str, AlertEvent]]) -> None:
        """Queue ``(action, event)`` pairs. Never blocks, never raises."""
        if items:
            # Stored (and held in memory) in the stored form, so both read back alike.
            self._incoming.extend((action, to_payload(ev)) for action, ev in items)
            self._wake_spooler.set()

    async def spool(self) -> None:
        """Task: move what ``put()`` queued into the store, one loop turn later."""
        while True:
            await self._wake_spooler.wait()
            self._wake_spooler.clear()
            # Let the ban's kernel flush (scheduled in the same call that
            # queued these events) start before we spend time on SQLite.
            await asyncio.sleep(0)
            self.spool_now()

    def spool_now(self) -> None:
        items, self._incoming = self._incoming, []
        if not items:
            return
        now = self.clock()
        if self.store is not None:
            try:
                self.store.outbox_add(items, now)
                if self._store_failed:
                    self._store_failed = False
                    log.info("alert_outbox_persisting_again")
                items = []
            except StoreError as exc:
                if not self._store_failed:
                    log.error("alert_outbox_not_persisting", error=str(exc),
                              note="alerts are queued in memory until the store works")
                self._store_failed = True
        for action, payload in items:
            q = self._memory.setdefault(action, deque())
            if len(q) >= self.max_memory:
                q.popleft()
                self.dropped += 1
            q.append(_MemItem(self._next_mem_id, action, payload, now, 0, now))
            self._next_mem_id -= 1
        for action in {a for a, _ in items} | set(self._wake):
            self.wake(action)

    # -- workers' side ------------------------------------------------------------

    def wake(self, action: str) -> None:
        ev = self._wake.get(action)
        if ev is not None:
            ev.set()

    def waiter(self, action: str) -> asyncio.Event:
        return self._wake.setdefault(action, asyncio.Event())

    def due(self, action: str, now: float, limit: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        if self.store is not None:
            try:
                rows = self.store.outbox_due(action, now, limit)
            except StoreError as exc:
                log.error("alert_outbox_unreadable", action=action, error=str(exc))
        for item in self._memory.get(action, ()):
            if len(rows) >= limit:
                break
            if item.next_at <= now:
                rows.append(OutboxRow(item.id, action, item.payload, item.created,
                                      item.attempts))
        return rows

    def done(self, action: str, ids: Sequence[int]) -> None:
        stored = [i for i in ids if i > 0]
        if stored and self.store is not None:
            try:
                self.store.outbox_done(stored)
            except StoreError as exc:
                log.error("alert_outbox_not_updated", action=action, error=str(exc))
        mem = {i for i in ids if i < 0}
        if mem and action in self._memory:
            self._memory[action] = deque(x for x in self._memory[action] if x.id not in mem)

    def retry(self, action: str, ids: Sequence[int], next_at: float, error: str) -> None:
        stored = [i for i in ids if i > 0]
        if stored and self.store is not None:
            try:
                self.store.outbox_retry(stored, next_at, error)
            except StoreError as exc:
                log.error("alert_outbox_not_updated", action=action, error=str(exc))
        mem = {i for i in ids if i < 0}
        for item in self._memory.get(action, ()):
            if item.id in mem:
                item.attempts += 1
                item.next_at = next_at

    def size(self, action: str) -> int:
        n = len(self._memory.get(action, ())) + sum(1 for a, _ in self._incoming if a == action)
        if self.store is not None:
            with contextlib.suppress(Exception):
                n += self.store.outbox_size(action)
        return n


class AlertWorker:
    """Delivers one action's queued events: aggregated, retried with exponential
    backoff, dropped only when the receiver refuses them or they grow too old."""

    def __init__(self, sender: Sender, outbox: Outbox, *, aggregate: float = 0.0,
                 clock: Callable[[], float] = time.time, backoff_base: float = 1.0,
                 backoff_cap: float = 300.0, batch: int = 1000,
                 max_age: float = 86400.0, poll: float = 5.0) -> None:
        self.sender = sender
        self.name = sender.name
        self.outbox = outbox
        self.aggregate = aggregate
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch = batch
        self.max_age = max_age
        self.poll = poll
        self.sent = 0
        self.messages = 0
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed ones: 1, 2, 4 … cap."""
        return float(min(self.backoff_cap, self.backoff_base * 2 ** min(attempts, 30)))

    async def run(self) -> None:
        wake = self.outbox.waiter(self.name)
        while True:
            wake.clear()
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop alerting for good
                log.exception("alert_worker_error", action=self.name)
                delay = self.poll
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=delay)

    async def step(self) -> float:
        """Send what is due; return how long to wait before looking again."""
        now = self.clock()
        rows = self.outbox.due(self.name, now, self.batch)
        if not rows:
            return self.poll
        fresh = [r.created for r in rows if r.attempts == 0]
        if self.aggregate > 0 and fresh:
            # Hold the first new event for one window so that the rest of a
            # burst joins it in the same message.
            ready_at = min(fresh) + self.aggregate
            if ready_at > now:
                await asyncio.sleep(ready_at - now)
                now = self.clock()
                rows = self.outbox.due(self.name, now, self.batch)
        stale = {r.id for r in rows if now - r.created > self.max_age}
        if stale:
            self.outbox.done(self.name, sorted(stale))
            self.dropped += len(stale)
            log.error("alerts_dropped_too_old", action=self.name, count=len(stale))
            rows = [r for r in rows if r.id not in stale]
            if not rows:
                return 0.0
        events: list[AlertEvent] = []
        unreadable: list[int] = []
        for r in rows:
            try:
                events.append(from_payload(r.payload))
            except BadPayload as exc:
                unreadable.append(r.id)
                log.error("alert_unreadable_dropped", action=self.name, error=str(exc))
        if unreadable:
            # Damaged, or queued by a newer version: no retry can send it.
            self.outbox.done(self.name, unreadable)
            self.dropped += len(unreadable)
            rows = [r for r in rows if r.id not in set(unreadable)]
            if not rows:
                return 0.0
        ids = [r.id for r in rows]
        try:
            await self.sender.send(events)
        except PermanentAlertError as exc:
            self.failures += 1
            self.dropped += len(ids)
            self.last_error = str(exc)
            self.outbox.done(self.name, ids)
            log.error("alerts_refused_dropped", action=self.name, count=len(ids), error=str(exc))
            return 0.0
        except AlertError as exc:
            self.failures += 1
            self.last_error = str(exc)
            delay = self.backoff(max(r.attempts for r in rows))
            self.outbox.retry(self.name, ids, now + delay, str(exc))
            log.warning("alert_delivery_failed", action=self.name, count=len(ids),
                        error=str(exc), retry_in=delay)
            return delay
        self.outbox.done(self.name, ids)
        self.sent += len(ids)
        self.messages += 1
        self.last_error = None
        log.info("alerts_sent", action=self.name, count=len(ids))
        # More may be waiting beyond this batch.
        return 0.0 if len(rows) >= self.batch else self.poll
