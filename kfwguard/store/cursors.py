"""The ``cursors`` table: where each source resumes (journald cursor, or file
identity + offset), saved as the source's batches are handled."""

from __future__ import annotations

import sqlite3

from kfwguard.store.connection import Database, StoreError


class CursorTable(Database):
    def save_cursor(self, source: str, position: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO cursors (source, position, saved_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position=excluded.position, "
                "saved_at=excluded.saved_at",
                (source, position, self.clock()),
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
