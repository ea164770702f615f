"""The SQLite store: bans, offences, cursors and the outbox survive reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfwguard.store import BanRow, Store, StoreError


class TestStore:
    def test_bans_round_trip(self, tmp_path: Path) -> None:
        """Saved bans are read back after reopening; expired ones are not active."""
        s = Store.in_dir(tmp_path)
        s.save_bans([BanRow("1.2.3.4", "sshd", "r", 100.0, 200.0, 1),
                     BanRow("5.6.7.8", "sshd", "r", 100.0, 150.0, 2)])
        s.close()
        s = Store.in_dir(tmp_path)
        assert ["1.2.3.4"] == [r.target for r in s.active_bans(now=160.0)]
        assert {"5.6.7.8": 2} == s.offence_counts("sshd", ["5.6.7.8"])

    def test_no_offence_row_for_a_ban_that_is_no_offence(self, tmp_path: Path) -> None:
        """A ban stored with offence 0 (a peer's) is kept and listed, and writes
        no offence count (a new node stores 100k of them after its kernel)."""
        s = Store.in_dir(tmp_path)
        s.save_bans([BanRow("1.2.3.4", "peer:node-a", "r", 100.0, 200.0, 0),
                     BanRow("5.6.7.8", "sshd", "r", 100.0, 200.0, 1)])
        assert {"1.2.3.4", "5.6.7.8"} == {r.target for r in s.active_bans(now=150.0)}
        assert [("5.6.7.8", "sshd", 1)] == list(
            s._db.execute("SELECT target, jail, count FROM offences"))

    def test_reban_refreshes(self, tmp_path: Path) -> None:
        """Saving the same (target, jail) again replaces its expiry, not duplicates it."""
        s = Store.in_dir(tmp_path)
        s.save_bans([BanRow("1.2.3.4", "sshd", "r", 100.0, 200.0, 1)])
        s.save_bans([BanRow("1.2.3.4", "sshd", "r", 150.0, 900.0, 2)])
        rows = s.active_bans(now=0)
        assert [(150.0, 900.0, 2)] == [(r.banned_at, r.expires_at, r.offence) for r in rows]

    def test_cursor(self, tmp_path: Path) -> None:
        """A source position is stored and replaced."""
        s = Store.in_dir(tmp_path)
        assert s.load_cursor("auth") is None
        s.save_cursor("auth", "a")
        s.save_cursor("auth", "b")
        assert "b" == s.load_cursor("auth")

    def test_outbox(self, tmp_path: Path) -> None:
        """Outbox items are due until done; retry postpones them."""
        s = Store.in_dir(tmp_path)
        s.outbox_add([("chat", {"x": 1}), ("chat", {"x": 2})], now=10.0)
        due = s.outbox_due("chat", now=10.0)
        assert [{"x": 1}, {"x": 2}] == [d.payload for d in due]
        s.outbox_retry([due[0].id], next_at=100.0, error="down")
        s.outbox_done([due[1].id])
        assert [] == s.outbox_due("chat", now=50.0)
        assert 1 == len(s.outbox_due("chat", now=100.0))

    def test_corrupt_file_is_error(self, tmp_path: Path) -> None:
        """A corrupt database is a StoreError, not a silently empty state."""
        (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(StoreError):
            Store.in_dir(tmp_path)

    def test_apply_changes_one_transaction(self, tmp_path: Path) -> None:
        """A journal of saves and deletions is written in one transaction: all of
        it, or (the store refusing writes) none of it, and the store works again
        afterwards."""
        s = Store.in_dir(tmp_path)
        s.save_bans([BanRow("1.2.3.4", "sshd", "r", 100.0, 900.0, 1)])
        s._db.execute("PRAGMA query_only=ON")  # refuses writes, as a full disk does
        with pytest.raises(StoreError):
            s.apply_changes([BanRow("5.6.7.8", "web", "r", 100.0, 900.0, 1)],
                            [("1.2.3.4", "sshd")])
        assert ["1.2.3.4"] == [r.target for r in s.active_bans(now=0)]
        s._db.execute("PRAGMA query_only=OFF")
        s.apply_changes([BanRow("5.6.7.8", "web", "r", 100.0, 900.0, 1)], [("1.2.3.4", "sshd")])
        assert [("5.6.7.8", "web")] == [(r.target, r.jail) for r in s.active_bans(now=0)]


# The schema exactly as kfwguard wrote it before schema versions (user_version 0).
UNVERSIONED_SCHEMA = """
CREATE TABLE bans (target TEXT NOT NULL, jail TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    banned_at REAL NOT NULL, expires_at REAL NOT NULL, offence INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (target, jail));
CREATE INDEX bans_expiry ON bans (expires_at);
CREATE TABLE offences (target TEXT NOT NULL, jail TEXT NOT NULL, count INTEGER NOT NULL,
    last_at REAL NOT NULL, PRIMARY KEY (target, jail));
CREATE TABLE cursors (source TEXT PRIMARY KEY, position TEXT NOT NULL, saved_at REAL NOT NULL);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL,
    payload TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_error TEXT);
CREATE INDEX outbox_next ON outbox (next_at);
"""


class TestSchemaVersions:
    def test_unversioned_db_upgrades_in_place(self, tmp_path: Path) -> None:
        """A state file of the schema before versions opens at the latest version,
        keeping its bans (enforced), offences and cursors, and takes simulated bans."""
        import sqlite3

        from kfwguard.store import SCHEMA_VERSION

        path = tmp_path / "state.db"
        db = sqlite3.connect(path)
        db.executescript(UNVERSIONED_SCHEMA)
        db.execute("INSERT INTO bans VALUES ('192.0.2.1', 'sshd', 'old', 1.0, 4e9, 2)")
        db.execute("INSERT INTO offences VALUES ('192.0.2.1', 'sshd', 2, 1.0)")
        db.execute("INSERT INTO cursors VALUES ('auth', '123', 1.0)")
        db.commit()
        db.close()
        store = Store(path)
        try:
            assert 2 == SCHEMA_VERSION == store.version
            assert [BanRow("192.0.2.1", "sshd", "old", 1.0, 4e9, 2, False)] == \
                store.active_bans(2.0)
            assert {"192.0.2.1": 2} == store.offence_counts("sshd", ["192.0.2.1"])
            assert "123" == store.load_cursor("auth")
            store.save_bans([BanRow("192.0.2.2", "web", "r", 1.0, 4e9, 1, True)])
            # the simulated ban is not for the kernel
            assert [("192.0.2.1", 4e9)] == store.active_expiries(2.0)
        finally:
            store.close()
        again = Store(path)  # migrations run once: a second open changes nothing
        try:
            assert {("192.0.2.1", False), ("192.0.2.2", True)} == {
                (r.target, r.simulated) for r in again.active_bans(2.0)}
        finally:
            again.close()

    def test_newer_db_refused(self, tmp_path: Path) -> None:
        """A state file written by a newer schema is refused, not guessed at."""
        import sqlite3

        path = tmp_path / "state.db"
        Store(path).close()
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version=99")
        db.commit()
        db.close()
        with pytest.raises(StoreError, match="schema version 99"):
            Store(path)


class TestSavedMarker:
    def test_next_open_sees_whether_every_change_was_saved(self, tmp_path: Path) -> None:
        """A new state file is not known to hold every change; once marked saved
        the next open sees it, and a mark taken back (the disk refused a write)
        is seen as not saved."""
        s = Store.in_dir(tmp_path)
        assert not s.was_saved
        s.mark_saved(True)
        s.close()
        s = Store.in_dir(tmp_path)
        assert s.was_saved
        s.mark_saved(False)
        s.close()
        assert not Store.in_dir(tmp_path).was_saved
