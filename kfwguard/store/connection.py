"""The state database's file: opening it, its schema version and migrations.

One SQLite file (``state.db`` in ``state_dir``), WAL mode. Writes are small
and made from the event-loop thread; a ban is committed before it touches
the kernel, so a decided ban survives a crash or power cut.

The schema is versioned with ``PRAGMA user_version``: ``_MIGRATIONS[i]``
takes a database from version i to i + 1, each in its own transaction, in
order, at open. A file without a version (made before versions existed) is
version 0, whose tables migration 1 creates only if they are missing, so it
upgrades in place. A file newer than this code is refused, not guessed at.

Beside the file lies ``state.db.saved``: it exists only while the file holds
every ban change the daemon decided (kfwguard.bans.journal removes it when
the disk refuses a write and puts it back when the journal is written). A
start that does not find it knows the file may be older than the kernel.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


def execute_rows(db: sqlite3.Connection, sql: str, row: str,
                 rows: Sequence[tuple[object, ...]]) -> None:
    """Run ``sql`` (its ``{}`` a list of ``row``) for all ``rows``, as many per
    statement as 999 parameters (SQLite's oldest limit) allow. Not
    executemany: it gives up the interpreter lock for every row, and in a
    burst of thousands each time costs the event loop a wait for the threads
    that take it (the kernel's, etcd's, gRPC's)."""
    per = max(1, 999 // row.count("?"))
    for i in range(0, len(rows), per):
        part = rows[i:i + per]
        db.execute(sql.format(", ".join([row] * len(part))), [v for r in part for v in r])


class StoreError(Exception):
    """The state database cannot be opened or written."""


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


class Database:
    """The open state file, migrated to SCHEMA_VERSION. Not thread-safe: use
    from one thread. The tables' methods live in their own modules."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._saved_marker = path.with_name(path.name + ".saved")
        # Read before anything can write: did the last run save every change?
        self.was_saved = self._saved_marker.exists()
        self._marked_saved = self.was_saved
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

    def close(self) -> None:
        self._db.close()

    def mark_saved(self, saved: bool) -> None:
        """Say whether the file holds every change decided so far (the marker
        beside it). Removing works on a full disk; creating needs no data
        block, and if it fails the next start only does more checking."""
        if saved == self._marked_saved:
            return
        try:
            if saved:
                self._saved_marker.touch()
            else:
                self._saved_marker.unlink(missing_ok=True)
        except OSError:
            return
        self._marked_saved = saved

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
