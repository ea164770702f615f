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
