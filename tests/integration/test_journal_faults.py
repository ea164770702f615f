"""journald misbehaving under the daemon: restarted, vacuumed, a corrupt file.

These restart the machine's journald (the test session's own, started by the
`journald` fixture when none runs); entries are tagged per test.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kfwguard.store import Store
from tests.conftest import _start_journald, journald_alive
from tests.integration.daemon_harness import DaemonRun, wait_until
from tests.integration.test_k8s_e2e import journald_config, send_fail
from tests.netns import Lab

# journald writes to /var/log/journal when it exists, else to /run/log/journal.
JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))


def restart_journald() -> None:
    """Stop every running journald and start a fresh one (as a crash + restart)."""
    pids = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        subprocess.run(["kill", "-TERM", pid], check=False)
    for _ in range(100):
        alive = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True,
                               text=True).stdout.split()
        if not alive:
            break
        time.sleep(0.05)
    _start_journald()
    assert journald_alive()


@pytest.mark.journald
@pytest.mark.usefixtures("journald")
class TestJournalFaults:
    def test_journald_restart_and_vacuum(self, lab: Lab, tmp_path: Path) -> None:
        """After journald is restarted and old journal files are vacuumed, the daemon
        still reads new entries and bans from them, without crashing."""
        tag = uuid.uuid4().hex
        node = lab.host("node")
        d = DaemonRun(node, tmp_path, journald_config(tmp_path, tag))
        d.start()
        send_fail(tag, "198.51.100.61", 1)
        assert wait_until(lambda: d.lines_read("sshd") == 1), d.log()
        restart_journald()
        subprocess.run(["journalctl", "--rotate"], check=False, capture_output=True)
        subprocess.run(["journalctl", "--vacuum-files=1"], check=False, capture_output=True)
        for i in range(3):
            send_fail(tag, "198.51.100.62", 10 + i)
        assert wait_until(lambda: "198.51.100.62" in d.elements("ban_v4"), timeout=20), d.log()
        assert d.alive()
        d.stop(signal.SIGTERM)

    def test_corrupt_journal_file_in_directory(self, lab: Lab, tmp_path: Path) -> None:
        """A journal directory holding a corrupt file next to good ones is read: the
        good entries ban, the garbage does not crash the daemon."""
        tag = uuid.uuid4().hex
        t0 = time.time() - 1
        for i in range(3):
            send_fail(tag, "198.51.100.71", 20 + i)
        # Stored, then on disk: journald may not have received them yet.
        assert wait_until(lambda: 3 == len(subprocess.run(
            ["journalctl", "-q", "-o", "cat", f"KFWTEST_RUN={tag}"], capture_output=True,
            check=False).stdout.splitlines()), timeout=20)
        subprocess.run(["journalctl", "--flush"], check=False, capture_output=True)
        subprocess.run(["journalctl", "--sync"], check=False, capture_output=True)
        jdir = tmp_path / "journal"
        jdir.mkdir()
        for root in JOURNAL_DIRS:
            for f in root.glob("*/*.journal"):
                shutil.copy(f, jdir / f"{root.parts[1]}-{f.name}")
        (jdir / "system@garbage.journal").write_bytes(b"LPKSHHRH" + b"\xff" * 4096)
        (jdir / "truncated.journal").write_bytes(
            next(iter(sorted(jdir.glob("*.journal")))).read_bytes()[:1000])
        cfg = journald_config(tmp_path, tag)
        cfg["sources"][0]["path"] = str(jdir)
        node = lab.host("node")
        d = DaemonRun(node, tmp_path, cfg)
        # The entries are older than a first run's start: resume from a position
        # saved as if a previous run had begun reading just before them.
        store = Store.in_dir(tmp_path / "state")
        store.save_cursor("sshd", f"realtime:{t0}")
        store.close()
        d.start()
        assert wait_until(lambda: "198.51.100.71" in d.elements("ban_v4"), timeout=20), d.log()
        assert d.alive()
        d.stop()


def test_no_journald_reported_once_per_source(lab: Lab, tmp_path: Path) -> None:
    """With no journal to read (journald's directories empty, as on a node where it
    does not run; or a journal path that is not there), each journald source
    says so once in the log and in `status`, instead of reading nothing silently."""
    # The machine's journald keeps running (other tests use it): the daemon runs
    # in a mount namespace of its own where tmpfs hides its journal directories,
    # which is all a reader of a stopped journald sees.
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "control_socket": str(tmp_path / "control.sock"),
        "nftables": {"table": "kfwtest"},
        "sources": [
            {"name": "sshd", "type": "journald", "match": {"_SYSTEMD_UNIT": "ssh.service"}},
            {"name": "elsewhere", "type": "journald", "path": str(tmp_path / "nope")},
        ],
        "jails": [{"name": "sshd", "source": "sshd", "filter": "sshd"},
                  {"name": "elsewhere", "source": "elsewhere", "filter": "sshd"}],
    }
    d = DaemonRun(lab.host("node"), tmp_path, cfg)
    hide = " && ".join(f"{{ ! [ -d {p} ] || mount -t tmpfs kfwtest {p}; }}"
                       for p in JOURNAL_DIRS)
    with d.log_path.open("ab") as log:
        d.proc = d.host.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'{hide} && exec "$0" -m kfwguard run -c "$1"', sys.executable,
             str(d.config_path)], stdout=log, stderr=log)
    try:
        def problems() -> dict[str, object]:
            st = d.status() or {}
            return {n: s.get("problem") for n, s in st.get("sources", {}).items()}

        assert wait_until(lambda: all(problems().values()) and len(problems()) == 2,
                          timeout=30), d.log()
        got = problems()
        assert "the system journal: no journal files: is systemd-journald running" in str(
            got["sshd"])
        assert f"{tmp_path / 'nope'}: cannot open the journal" in str(got["elsewhere"])
        # Long enough for the missing path to be retried a few times (every 1 s).
        assert wait_until(lambda: (d.status() or {}).get("uptime", 0) >= 3.5, timeout=30)
        said = [e.get("source") for e in d.events()
                if e.get("event") == "source.waiting_for_journal"]
        assert ["elsewhere", "sshd"] == sorted(said)
        text = subprocess.run([sys.executable, "-m", "kfwguard", "status", "-c",
                               str(d.config_path)], capture_output=True, text=True,
                              timeout=30).stdout
        assert "WARNING: source sshd: the system journal: no journal files" in text
        assert d.alive()
    finally:
        d.stop()
