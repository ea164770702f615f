"""Store: the daemon's state database as one object, every table's methods
on it (bans and offences, cursors, the alert outbox)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kfwguard.store.bans import BanTables
from kfwguard.store.cursors import CursorTable
from kfwguard.store.outbox import OutboxTable


class Store(BanTables, CursorTable, OutboxTable):
    """The daemon's persistent state. Not thread-safe: use from one thread."""

    @classmethod
    def in_dir(cls, state_dir: Path, *, clock: Callable[[], float] = time.time) -> Store:
        return cls(state_dir / "state.db", clock=clock)
