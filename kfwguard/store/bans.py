"""The ``bans`` and ``offences`` tables: bans in force, and how often each
target offended per jail (for the ban-time increment)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from kfwguard.store.connection import Database, StoreError, execute_rows


class BanRow(NamedTuple):
    # A tuple, not a frozen dataclass: a new node makes 100k of them at start
    # (0.5 µs each instead of 3.2 µs); replace() is _replace().
    target: str
    jail: str
    reason: str
    banned_at: float
    expires_at: float
    offence: int
    # Decided in observe mode (dry_run): stored, listed, alerted, never in the kernel.
    simulated: bool = False


class BanTables(Database):
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
        execute_rows(
            self._db,
            "INSERT INTO bans (target, jail, reason, banned_at, expires_at, offence, simulated) "
            "VALUES {} ON CONFLICT (target, jail) DO UPDATE SET "
            "reason=excluded.reason, banned_at=excluded.banned_at, "
            "expires_at=excluded.expires_at, offence=excluded.offence, "
            "simulated=excluded.simulated", "(?, ?, ?, ?, ?, ?, ?)",
            [(r.target, r.jail, r.reason, r.banned_at, r.expires_at, r.offence,
              int(r.simulated)) for r in rows],
        )
        # A ban that is no offence here (a peer's: offence 0) has no count to
        # keep: a new node's 100k peers' bans write one table, not two.
        execute_rows(
            self._db,
            "INSERT INTO offences (target, jail, count, last_at) VALUES {} "
            "ON CONFLICT (target, jail) DO UPDATE SET count=excluded.count, "
            "last_at=excluded.last_at", "(?, ?, ?, ?)",
            [(r.target, r.jail, r.offence, r.banned_at) for r in rows if r.offence],
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
        """Bans whose expiry is after ``now`` (default: the store's clock)."""
        now = self.clock() if now is None else now
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
