"""Lines a local user can forge (issue 11, item 2): a syslog file takes any tag,
journald's trusted fields do not.

A real rsyslogd writes the syslog file; real journald records the entries, and
the writers really run inside ``ssh.service``'s cgroup (tests/journal_writer.py),
so the daemon matches on ``_SYSTEMD_UNIT`` exactly as the shipped config does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfwguard.config import default_config_text
from tests.conftest import need
from tests.integration.daemon_harness import DaemonRun, base_config, wait_until
from tests.journal_writer import NOBODY, logger_as_nobody, send_as_root
from tests.netns import Lab

REPO = Path(__file__).resolve().parents[2]

RSYSLOG_CONF = """
global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{dir}/log.sock" CreatePath="on")
$FileCreateMode 0644
*.* action(type="omfile" file="{dir}/auth.log" template="RSYSLOG_TraditionalFileFormat")
"""


@pytest.fixture
def rsyslog() -> Iterator[Path]:
    """A private rsyslogd: RFC 3164 on ``<dir>/log.sock`` (any user may write),
    a traditional syslog file ``<dir>/auth.log``, as Debian's rsyslog writes."""
    need(shutil.which("rsyslogd") is not None, "needs rsyslog (apt-get install rsyslog)")
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv")
    d = Path(tempfile.mkdtemp(prefix="kfwtest-rsyslog-"))
    d.chmod(0o755)  # nobody must reach the socket
    (d / "rsyslog.conf").write_text(RSYSLOG_CONF.format(dir=d))
    (d / "auth.log").write_text("")
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(d / "rsyslog.conf"),
                             "-i", str(d / "rsyslogd.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: (d / "log.sock").exists() or proc.poll() is not None)
        assert proc.poll() is None, "rsyslogd did not start"
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def status(cfg: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "kfwguard", "status", "--json", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert 0 == r.returncode, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


class TestSyslogFile:
    def test_forged_tag_warns_at_start(self, lab: Lab, tmp_path: Path,
                                       rsyslog: Path) -> None:
        """A jail reading a syslog file written by rsyslog warns at start, in the log
        and in ``status``, that any local user can forge its lines; and indeed
        ``logger -t sshd`` run as nobody lands in the file as sshd's own line."""
        node = lab.host("node")
        log = rsyslog / "auth.log"
        d = DaemonRun(node, tmp_path, base_config(tmp_path, log))
        d.start()
        try:
            warned = [e for e in d.events() if e.get("event") == "source_forgeable"]
            assert 1 == len(warned), d.log()
            assert str(log) in warned[0]["detail"] and "journald" in warned[0]["detail"]
            assert [warned[0]["detail"]] == status(d.config_path)["warnings"]
            forged = "Failed password for root from 192.0.2.99 port 22 ssh2"
            subprocess.run([*NOBODY, "logger", "-u", str(rsyslog / "log.sock"), "-t", "sshd",
                            forged], check=True, timeout=30)
            assert wait_until(lambda: forged in log.read_text())
            # As written by a non-root user, yet indistinguishable from sshd's.
            assert " sshd: " + forged in log.read_text()
        finally:
            d.stop()

    def test_journald_config_does_not_warn(self, lab: Lab, tmp_path: Path) -> None:
        """The shipped journald sources (unit, uid and command held) give no warning."""
        cfg = yaml.safe_load(default_config_text())
        cfg["sources"] = [s for s in cfg["sources"] if s["name"] == "sshd"]
        cfg["jails"] = [j for j in cfg["jails"] if j["name"] == "sshd"]
        cfg.update(state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "c.sock"),
                   nftables={"table": "kfwtest"}, filters_dirs=[])
        d = DaemonRun(lab.host("node"), tmp_path, cfg)
        d.start()
        try:
            assert not [e for e in d.events() if e.get("event") == "source_forgeable"]
            assert [] == status(d.config_path)["warnings"]
        finally:
            d.stop()


@pytest.mark.journald
@pytest.mark.usefixtures("journald")
class TestJournaldWriter:
    def test_only_sshd_itself_counts_in_ssh_service(self, lab: Lab, tmp_path: Path) -> None:
        """With the shipped sshd source (``_SYSTEMD_UNIT`` held, no test-only field),
        failures written by a non-root process inside ssh.service's cgroup (logger,
        as an AuthorizedKeysCommand helper could) never count; sshd's own do."""
        shipped = yaml.safe_load(default_config_text())
        source = next(s for s in shipped["sources"] if s["name"] == "sshd")
        cfg = base_config(tmp_path, tmp_path / "unused.log")
        cfg["sources"] = [{**source, "name": "auth"}]
        d = DaemonRun(lab.host("node"), tmp_path, cfg)
        d.start()
        try:
            forged, real = "192.0.2.201", "198.51.100.201"
            for port in (4001, 4002, 4003, 4004):
                logger_as_nobody("ssh.service", "sshd",
                                 f"Failed password for root from {forged} port {port} ssh2")
            send_as_root("ssh.service", "sshd", "sshd", *(
                f"Failed password for root from {real} port {port} ssh2"
                for port in (5001, 5002, 5003)))
            # Entries are read in order: once `real` is banned, the forged ones
            # before it were read too.
            assert wait_until(lambda: real in d.elements("ban_v4"), timeout=20), d.log()
            assert forged not in d.elements("ban_v4")
            st = status(d.config_path)
            assert 3 == sum(st["jails"]["sshd"]["matches"].values())
        finally:
            d.stop()


def test_check_config_warns_about_syslog_file(tmp_path: Path) -> None:
    """``kfwguard check-config`` passes a jail on a syslog file but says why it is
    unsafe; the shipped default draws no warning."""
    log = tmp_path / "auth.log"
    cfg = tmp_path / "kfwguard.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path, log)))
    r = subprocess.run([sys.executable, "-m", "kfwguard", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert 0 == r.returncode, r.stderr
    assert "warning: jail 'sshd' reads the syslog file" in r.stderr
    cfg.write_text(default_config_text())
    r = subprocess.run([sys.executable, "-m", "kfwguard", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    # (The default's optional /etc/kfwguard/filters may draw its own warning.)
    assert 0 == r.returncode and "banned" not in r.stderr, r.stderr
