"""The durable outbox of this node's shared bans (its own SQLite file).

A local ban is enforced at once; what other nodes must learn is written here
in the same event-loop step and sent when the store can take it. One row per
target (the newest intent wins: a ban then an unban leaves one delete), so an
outage of any length costs one row per address, and a restart resends what
was not acknowledged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kfwguard.store import execute_rows, open_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_outbox (
    target TEXT PRIMARY KEY,
    value  BLOB,            -- NULL: delete the key
    seq    INTEGER NOT NULL
);
-- The publisher reads on from the last seq it took (a burst is sent while
-- it is still being queued): without it, every read sorts the whole table.
CREATE INDEX IF NOT EXISTS cluster_outbox_seq ON cluster_outbox (seq);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class Pending:
    target: str
    value: bytes | None
    seq: int


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # NORMAL (no fsync per commit; a process crash loses nothing): a
            # power cut may lose the newest intents, and the start's
            # reconcile puts them back (local bans missing from etcd are
            # sent, own keys without a local ban deleted). An fsync here
            # would sit on every shared ban's path.
            self._db = open_wal(path, synchronous="NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT max(seq) FROM cluster_outbox").fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open cluster outbox {path}: {exc}") from exc
        self._seq = int(row[0] or 0)
        # When the file fails, keep intents in memory (still sent, not durable).
        self._memory: dict[str, Pending] = {}

    def close(self) -> None:
        self._db.close()

    def queue(self, items: Sequence[tuple[str, bytes | None]]) -> None:
        """Record intents (target, value or None for a delete), newest wins."""
        if not items:
            return
        rows = []
        for target, value in items:
            self._seq += 1
            rows.append((target, value, self._seq))
        if not self._write(
                "INSERT INTO cluster_outbox (target, value, seq) VALUES {} "
                "ON CONFLICT (target) DO UPDATE SET value=excluded.value, seq=excluded.seq",
                "(?, ?, ?)", rows):
            for t, v, s in rows:
                self._memory[t] = Pending(t, v, s)

    def _write(self, sql: str, row: str, rows: Sequence[tuple[object, ...]]) -> bool:
        """Run ``sql`` (its ``{}`` is a list of ``row``) for every row in one
        transaction (execute_rows); False if the file failed."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            execute_rows(self._db, sql, row, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return False
        return True

    def due(self, limit: int = 128, *, after: int = 0) -> list[Pending]:
        """Up to ``limit`` intents queued (or replaced) after seq ``after``
        (0: all of them), oldest first."""
        out = sorted((p for p in self._memory.values() if p.seq > after), key=lambda p: p.seq)
        try:
            cur = self._db.execute(
                "SELECT target, value, seq FROM cluster_outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after, limit))
            seen = {p.target for p in out}
            out += [Pending(t, v, s) for t, v, s in cur if t not in seen]
        except sqlite3.Error:
            pass
        out.sort(key=lambda p: p.seq)
        return out[:limit]

    def done(self, items: Sequence[Pending]) -> None:
        """Forget intents that were sent, unless a newer one replaced them meanwhile."""
        for p in items:
            m = self._memory.get(p.target)
            if m is not None and m.seq == p.seq:
                del self._memory[p.target]
        self._write("DELETE FROM cluster_outbox WHERE (target, seq) IN (VALUES {})",
                    "(?, ?)", [(p.target, p.seq) for p in items])

    def targets(self) -> set[str]:
        out = set(self._memory)
        try:
            out.update(t for (t,) in self._db.execute("SELECT target FROM cluster_outbox"))
        except sqlite3.Error:
            pass
        return out

    def __len__(self) -> int:
        try:
            n = int(self._db.execute("SELECT count(*) FROM cluster_outbox").fetchone()[0])
        except sqlite3.Error:
            n = 0
        return n + len(self._memory)
