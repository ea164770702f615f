"""SQLite state: bans in force, offence history, source positions, alert outbox.

``connection`` opens the file and migrates its schema; ``bans``, ``cursors``
and ``outbox`` hold each table's methods; ``state.Store`` is all of them on
one connection.
"""

from kfwguard.store.bans import BanRow
from kfwguard.store.connection import SCHEMA_VERSION, StoreError, execute_rows, open_wal
from kfwguard.store.outbox import OutboxRow
from kfwguard.store.state import Store

__all__ = ["SCHEMA_VERSION", "BanRow", "OutboxRow", "Store", "StoreError", "execute_rows",
           "open_wal"]
