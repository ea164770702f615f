"""SQLite state: bans in force, offence history, source positions, alert outbox.

One file (``state.db`` in ``state_dir``), WAL mode. Writes are small and made
from the event-loop thread; a ban is committed here before it touches the
kernel, so a decided ban survives a crash or power cut.

The schema is versioned with ``PRAGMA user_version``: ``_MIGRATIONS[i]``
takes a database from version i to i + 1, each in its own transaction, in
order, at open. A file without a version (made before versions existed) is
version 0, whose tables migration 1 creates only if they are missing, so it
upgrades in place. A file newer than this code is refused, not guessed at.
"""


from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS bans (
    target     TEXT NOT NULL,
    jail       TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    banned_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    offence    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (target, jail)
);
CREATE INDEX IF NOT EXISTS bans_expiry ON bans (expires_at);
CREATE TABLE IF NOT EXISTS offences (
    target   TEXT NOT NULL,
    jail     TEXT NOT NULL,
    count    INTEGER NOT NULL,
    last_at  REAL NOT NULL,
    PRIMARY KEY (target, jail)
);
CREATE TABLE IF NOT EXISTS cursors (
    source   TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    saved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    action    TEXT NOT NULL,
    payload   TEXT NOT NULL,
    created   REAL NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    next_at   REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_next ON outbox (next_at);
"""

# Each one a list of statements; never edit one that has shipped: add another.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the schema before versions (CREATE ... IF NOT EXISTS: also adopts such a file)
    tuple(x.strip() for x in _SCHEMA_1.split(";") if x.strip()),
    # 2: observe mode (dry_run): a ban decided but kept out of the kernel
    ("ALTER TABLE bans ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The state database cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class BanRow:
    target: str
    jail: str
    reason: str
    banned_at: float
    expires_at: float
    offence: int
    # Decided in observe mode (dry_run): stored, listed, alerted, never in the kernel.
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    action: str
    payload: dict[str, Any]
    created: float
    attempts: int


def open_wal(path: Path, synchronous: str) -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode, its folder made root-only.
    Only this process writes the file; a long busy wait would stall the event
    loop. Raises sqlite3.Error or OSError."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=1000")
    return db


class Store:
    """The daemon's persistent state. Not thread-safe: use from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # NORMAL in WAL mode: a committed transaction survives a process crash;
            # FULL adds an fsync per commit so it also survives a power cut.
            self._db = open_wal(path, synchronous="FULL")
            self._migrate()
            self._db.execute("SELECT count(*) FROM bans").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"state database {self.path} has schema version {version}; "
                             f"this kfwguard knows up to {SCHEMA_VERSION} (a newer release "
                             "wrote it): refusing to guess")
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx():
                for statement in _MIGRATIONS[number - 1]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")

    @property
    def version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @classmethod
    def in_dir(cls, state_dir: Path) -> Store:
        return cls(state_dir / "state.db")

    def close(self) -> None:
        self._db.close()

    # -- bans ---------------------------------------------------------------

    def save_bans(self, rows: Sequence[BanRow]) -> None:
        """Insert or refresh bans (and their offence counts) in one transaction."""
        if not rows:
            return
        try:
            with self._tx():
                self._save(rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save bans: {exc}") from exc

    def _save(self, rows: Sequence[BanRow]) -> None:
        if not rows:
            return
        self._db.executemany(
            "INSERT INTO bans (target, jail, reason, banned_at, expires_at, offence, simulated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target, jail) DO UPDATE SET "
            "reason=excluded.reason, banned_at=excluded.banned_at, "
            "expires_at=excluded.expires_at, offence=excluded.offence, "
            "simulated=excluded.simulated",
            [(r.target, r.jail, r.reason, r.banned_at, r.expires_at, r.offence,
              int(r.simulated)) for r in rows],
        )
        self._db.executemany(
            "INSERT INTO offences (target, jail, count, last_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (target, jail) DO UPDATE SET count=excluded.count, "
            "last_at=excluded.last_at",
            [(r.target, r.jail, r.offence, r.banned_at) for r in rows],
        )

    def apply_changes(self, saves: Sequence[BanRow],
                      deletes: Sequence[tuple[str, str]]) -> None:
        """save_bans() and delete_bans() in one transaction: what a journal of
        changes the disk refused becomes when it takes writes again."""
        if not saves and not deletes:
            return
        try:
            with self._tx():
                self._save(saves)
                self._db.executemany("DELETE FROM bans WHERE target=? AND jail=?",
                                     list(deletes))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save bans: {exc}") from exc

    def delete_bans(self, keys: Iterable[tuple[str, str]]) -> None:
        try:
            with self._tx():
                self._db.executemany("DELETE FROM bans WHERE target=? AND jail=?", list(keys))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot delete bans: {exc}") from exc

    def active_bans(self, now: float | None = None) -> list[BanRow]:
        now = time.time() if now is None else now
        try:
            cur = self._db.execute(
                "SELECT target, jail, reason, banned_at, expires_at, offence, simulated "
                "FROM bans WHERE expires_at > ?", (now,))
            return [BanRow(t, j, r, b, e, o, bool(s)) for t, j, r, b, e, o, s in cur]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read bans: {exc}") from exc

    def active_expiries(self, now: float) -> list[tuple[str, float]]:
        """(target, latest expiry over its jails) for every ban in force: the
        minimum needed to put the kernel back, as cheaply as SQLite can give it.
        Simulated (observe mode) bans are not among them: the kernel never
        holds those."""
        try:
            # In expiry order along bans_expiry, so dict() keeps each target's
            # latest: 5x faster than GROUP BY, which looks every row up by target.
            latest: dict[str, float] = dict(self._db.execute(
                "SELECT target, expires_at FROM bans WHERE expires_at > ? AND NOT simulated "
                "ORDER BY expires_at", (now,)))
            return list(latest.items())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read bans: {exc}") from exc

    def purge_expired(self, now: float) -> int:
        try:
            with self._tx():
                cur = self._db.execute("DELETE FROM bans WHERE expires_at <= ?", (now,))
            return cur.rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot purge bans: {exc}") from exc

    def offence_counts(self, jail: str, targets: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            for i in range(0, len(targets), 500):
                chunk = targets[i:i + 500]
                q = ",".join("?" * len(chunk))
                for t, c in self._db.execute(
                    f"SELECT target, count FROM offences WHERE jail=? AND target IN ({q})",
                    (jail, *chunk),
                ):
                    out[t] = int(c)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read offences: {exc}") from exc
        return out

    # -- cursors ------------------------------------------------------------

    def save_cursor(self, source: str, position: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO cursors (source, position, saved_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position=excluded.position, "
                "saved_at=excluded.saved_at",
                (source, position, time.time()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save position of {source}: {exc}") from exc

    def load_cursor(self, source: str) -> str | None:
        try:
            row = self._db.execute(
                "SELECT position FROM cursors WHERE source=?", (source,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read position of {source}: {exc}") from exc
        return None if row is None else str(row[0])

    # -- alert outbox -------------------------------------------------------

    def outbox_add(self, items: Sequence[tuple[str, dict[str, Any]]], now: float) -> None:
        if not items:
            return
        try:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO outbox (action, payload, created, next_at) VALUES (?, ?, ?, ?)",
                    [(a, json.dumps(p, separators=(",", ":")), now, now) for a, p in items],
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

    # -- helpers ------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                # A COMMIT that fails (SQLITE_FULL) leaves the transaction
                # open: end it, or every later BEGIN fails after space returns.
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
