"""Fault injection on the real daemon: crashes, a hostile kernel, a broken state DB."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.netns import Host, Lab


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A small filesystem of its own at ``path`` (to fill it, or make it read-only)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def stored(state: Path) -> tuple[int, int, int]:
    """(rows, distinct targets, highest offence) in the daemon's state.db."""
    db = sqlite3.connect(state / "state.db", timeout=10)
    try:
        row = db.execute("SELECT count(*), count(DISTINCT target), coalesce(max(offence), 0) "
                         "FROM bans").fetchone()
    finally:
        db.close()
    return int(row[0]), int(row[1]), int(row[2])


WEEK = 7 * 86400


def one_ban_stored(node: Host, tmp_path: Path, addr: str) -> DaemonRun:
    """A running daemon (maxretry 1, bantime 2w) that has banned and stored ``addr``."""
    log = tmp_path / "auth.log"
    log.write_text("")
    d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1, bantime="2w"))
    d.start()
    with log.open("a") as f:
        f.write(sshd_fail(addr))
    assert wait_until(lambda: stored(tmp_path / "state")[0] == 1)
    return d


def burst(n: int, base: int = 0) -> str:
    return "".join(sshd_fail(f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", port=1000)
                   for i in range(base, base + n))


class TestCrashSafety:
    def test_kill9_mid_burst_loses_no_ban(self, lab: Lab, tmp_path: Path) -> None:
        """kill -9 in the middle of a 10,000-offender burst of week-long bans: after
        a restart every offender is in the kernel (for its week), none is stored
        twice, none re-banned from old lines."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log, maxretry=1, bantime="1w",
                          bantime_increment={"factor": 2, "max": "4w"})
        d = DaemonRun(node, tmp_path, cfg)
        d.start()
        with log.open("a") as f:
            f.write(burst(10_000))
        state = tmp_path / "state"
        assert wait_until(lambda: (state / "state.db").exists() and stored(state)[0] > 200,
                          timeout=30)
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        decided = stored(state)[0]
        d.start()
        assert wait_until(lambda: stored(state)[0] == 10_000, timeout=60), d.log()
        assert wait_until(lambda: len(d.elements("ban_v4")) == 10_000, timeout=30)
        assert min(d.elements("ban_v4").values()) > WEEK - 600
        rows, distinct, offence = stored(state)
        assert (10_000, 10_000, 1) == (rows, distinct, offence)
        assert decided <= 10_000
        d.stop()


    def test_power_cut_between_stored_and_applied(self, lab: Lab, tmp_path: Path) -> None:
        """A ban that was stored but whose kernel state is lost (kill -9 and the
        table gone, as after a power cut and reboot) is in the kernel after the next
        start, with its remaining time."""
        node = lab.host("node")
        d = one_ban_stored(node, tmp_path, "198.51.100.44")
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        node.run("nft", "flush", "ruleset")  # the kernel forgot everything
        d.start()
        left = d.elements("ban_v4").get("198.51.100.44")
        assert left is not None and 2 * WEEK - 3600 < left <= 2 * WEEK  # seconds left
        d.stop()

    def test_broken_filter_stops_start_with_bans_restored(
        self, lab: Lab, tmp_path: Path
    ) -> None:
        """A config whose filter no longer compiles stops the start with an error
        naming it, and the stored bans are back in the kernel anyway: the
        restore comes before the filters, so a bad edit cannot unprotect a node."""
        node = lab.host("node")
        d = one_ban_stored(node, tmp_path, "198.51.100.45")
        d.stop()
        node.run("nft", "flush", "ruleset")
        broken = tmp_path / "filters"
        broken.mkdir()
        (broken / "sshd.yaml").write_text(
            "format: text\nrules:\n  - {name: r, regex: '^(?=x)<HOST>'}\n")
        d.write_config({**d.config, "filters_dirs": [str(broken)]})
        d.start(wait_ready=False)
        assert d.proc is not None
        assert 1 == d.proc.wait(timeout=30), d.log()
        assert "cannot_start" in d.log() and "sshd.yaml" in d.log()
        assert "198.51.100.45" in d.elements("ban_v4")
        d.proc = None


class TestStateMisbehaves:
    def test_corrupt_state_keeps_kernel_bans(self, lab: Lab, tmp_path: Path) -> None:
        """A corrupt state.db is reported; the daemon starts with the bans the kernel
        holds (not a silently empty list) and keeps banning from memory."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
        d.start()
        with log.open("a") as f:
            f.write(sshd_fail("198.51.100.1"))
        assert wait_until(lambda: "198.51.100.1" in d.elements("ban_v4"))
        d.stop()
        db = tmp_path / "state" / "state.db"
        for p in db.parent.glob("state.db*"):
            p.unlink()
        db.write_bytes(b"garbage, not sqlite" * 1000)
        d.start()
        assert "state_unavailable" in d.log()
        assert "198.51.100.1" in d.elements("ban_v4")
        with log.open("a") as f:
            f.write(sshd_fail("198.51.100.2"))
        assert wait_until(lambda: "198.51.100.2" in d.elements("ban_v4"))
        assert d.alive()
        d.stop()

    def test_disk_full_keeps_banning(self, lab: Lab, tmp_path: Path) -> None:
        """When the state disk is full, bans still reach the kernel and the daemon says
        it is not persisting; it keeps running."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        state = tmp_path / "state"
        with tmpfs(state, "1m"):
            d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
            d.start()
            filler = state / "filler"
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            with log.open("a") as f:
                f.write(burst(3000, base=50_000))
            assert wait_until(lambda: len(d.elements("ban_v4")) == 3000, timeout=30), d.log()
            assert "state_not_persisting" in d.log()
            assert d.alive()
            d.stop()

    def test_disk_full_then_freed_then_restart(self, lab: Lab, tmp_path: Path) -> None:
        """Bans decided and lifted while the state disk is full are written once it
        has room: after a restart (the kernel's table gone) the bans are all back
        and the lifted one stays lifted."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        state = tmp_path / "state"
        with tmpfs(state, "1m"):
            d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
            d.start()
            with log.open("a") as f:
                f.write(sshd_fail("198.51.100.90"))
            assert wait_until(lambda: stored(state)[0] == 1)
            filler = state / "filler"
            with filler.open("wb", buffering=0) as f:
                for size in (65536, 4096, 1):
                    try:
                        while True:
                            f.write(b"\0" * size)
                    except OSError:
                        pass
            with log.open("a") as f:
                f.write(burst(3000, base=70_000))
            assert wait_until(lambda: len(d.elements("ban_v4")) == 3001, timeout=30), d.log()
            unban = node.run(sys.executable, "-m", "kfwguard", "unban", "198.51.100.90",
                             "-c", str(d.config_path), check=False)
            assert 0 == unban.returncode, unban.stderr
            assert wait_until(lambda: "198.51.100.90" not in d.elements("ban_v4"))
            assert "state_not_persisting" in d.log()
            filler.unlink()
            assert wait_until(lambda: "state_persisting_again" in d.log(), timeout=30), d.log()
            d.stop()
            node.run("nft", "flush", "ruleset")  # a reboot
            d.start()
            live = d.elements("ban_v4")
            assert (3000, False) == (len(live), "198.51.100.90" in live)
            d.stop()

    def test_restart_while_disk_full_keeps_unsaved_bans(self, lab: Lab,
                                                        tmp_path: Path) -> None:
        """Bans decided while the state disk is full survive a restart with the
        disk still full: the kernel's bans the store never took are kept (as
        'restored'), and stored once the disk has room."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        state = tmp_path / "state"
        with tmpfs(state, "1m"):
            d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
            d.start()
            with log.open("a") as f:
                f.write(sshd_fail("198.51.100.91"))
            assert wait_until(lambda: stored(state)[0] == 1)
            filler = state / "filler"
            with filler.open("wb", buffering=0) as f:
                for size in (65536, 4096, 1):
                    try:
                        while True:
                            f.write(b"\0" * size)
                    except OSError:
                        pass
            with log.open("a") as f:
                f.write(burst(300, base=80_000))
            assert wait_until(lambda: len(d.elements("ban_v4")) == 301, timeout=30), d.log()
            assert "state_not_persisting" in d.log()
            d.stop()  # the disk is still full: the journal cannot be written
            log.write_text("")  # rotated meanwhile: no line banning them again
            d.start()
            assert 301 == len(d.elements("ban_v4")), d.log()[d.log_offset:]
            filler.unlink()
            assert wait_until(lambda: stored(state)[:2] == (301, 301), timeout=30), d.log()
            d.stop()

class TestLogsMisbehave:
    def test_rotation_copytruncate_and_deletion_during_burst(self, lab: Lab,
                                                             tmp_path: Path) -> None:
        """Offenders written across a rename rotation, a copytruncate and a deleted log
        that reappears, all in one burst, are each banned: no line lost."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
        d.start()
        with log.open("a") as f:
            f.write(burst(1000, base=0))
        log.rename(tmp_path / "auth.log.1")  # rotation by rename, then more lines
        with (tmp_path / "auth.log.1").open("a") as f:
            f.write(burst(500, base=1000))
        with log.open("a") as f:
            f.write(burst(1000, base=1500))
        assert wait_until(lambda: stored(tmp_path / "state")[0] == 2500, timeout=30), d.log()
        # copytruncate: copy away, truncate in place, keep writing
        subprocess.run(["cp", str(log), str(tmp_path / "auth.log.2")], check=True)
        with log.open("r+") as f:
            f.truncate(0)
        with log.open("a") as f:
            f.write(burst(1000, base=2500))
        assert wait_until(lambda: stored(tmp_path / "state")[0] == 3500, timeout=30), d.log()
        log.unlink()  # deleted, then it comes back
        time.sleep(0.3)
        with log.open("a") as f:
            f.write(burst(500, base=3500))
        assert wait_until(lambda: len(d.elements("ban_v4")) == 4000, timeout=30), d.log()
        assert (4000, 4000) == stored(tmp_path / "state")[:2]
        assert d.alive()
        d.stop()

    def test_read_only_state_keeps_kernel_bans(self, lab: Lab, tmp_path: Path) -> None:
        """A state directory on a read-only filesystem is reported; the daemon starts
        with the bans the kernel holds and keeps banning from memory."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        state = tmp_path / "state"
        with tmpfs(state, "4m"):
            d = DaemonRun(node, tmp_path, base_config(tmp_path, log, maxretry=1))
            d.start()
            with log.open("a") as f:
                f.write(sshd_fail("198.51.100.81"))
            assert wait_until(lambda: "198.51.100.81" in d.elements("ban_v4"))
            d.stop()
            subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
            d.start()
            assert "state_unavailable" in d.log()[d.log_offset:]
            assert "198.51.100.81" in d.elements("ban_v4")
            with log.open("a") as f:
                f.write(sshd_fail("198.51.100.82"))
            assert wait_until(lambda: "198.51.100.82" in d.elements("ban_v4"))
            d.stop()
