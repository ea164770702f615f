"""The ``outbox`` table: alert events waiting for delivery, per action
(kfwguard.alerts.outbox queues them, in memory while the store fails).

The cluster's outbox is not here: it is a file of its own
(kfwguard/cluster/outbox.py), with its own fsync level and one row per
target, and it belongs to the cluster feed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kfwguard.store.connection import Database, StoreError

# One encoder for every payload (json.dumps with separators builds one per call).
_compact = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    action: str
    payload: dict[str, Any]
    created: float
    attempts: int


class OutboxTable(Database):
    def outbox_add(self, items: Sequence[tuple[str, dict[str, Any]]], now: float) -> None:
        if not items:
            return
        try:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO outbox (action, payload, created, next_at) VALUES (?, ?, ?, ?)",
                    [(a, _compact(p), now, now) for a, p in items],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot queue alerts: {exc}") from exc

    def outbox_due(self, action: str, now: float, limit: int = 500) -> list[OutboxRow]:
        try:
            cur = self._db.execute(
                "SELECT id, action, payload, created, attempts FROM outbox "
                "WHERE action=? AND next_at <= ? ORDER BY id LIMIT ?", (action, now, limit))
            return [OutboxRow(i, a, json.loads(p), c, n) for i, a, p, c, n in cur]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read alert outbox: {exc}") from exc

    def outbox_done(self, ids: Sequence[int]) -> None:
        try:
            with self._tx():
                self._db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update alert outbox: {exc}") from exc

    def outbox_retry(self, ids: Sequence[int], next_at: float, error: str) -> None:
        try:
            with self._tx():
                self._db.executemany(
                    "UPDATE outbox SET attempts=attempts+1, next_at=?, last_error=? WHERE id=?",
                    [(next_at, error[:500], i) for i in ids])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update alert outbox: {exc}") from exc

    def outbox_size(self, action: str | None = None) -> int:
        if action is None:
            row = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        else:
            row = self._db.execute("SELECT count(*) FROM outbox WHERE action=?",
                                   (action,)).fetchone()
        return int(row[0])
