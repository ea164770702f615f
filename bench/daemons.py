"""The two daemons under test, each run in a network namespace of its own.

kfwguard runs from this checkout (``python -m kfwguard run``); fail2ban is
Debian's package, run as ``fail2ban-server -f -c <copy of /etc/fail2ban>``
with its socket, pidfile, database and log in a temporary directory, so
nothing of the host's fail2ban (or firewall) is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.integration.daemon_harness import wait_until
from tests.netns import Host

REPO = Path(__file__).resolve().parents[1]
F2B_CONF = Path("/etc/fail2ban")
F2B_TABLE = "f2b-table"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MiB (VmRSS now, or VmHWM: the peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


class Daemon(Protocol):
    name: str
    logfile: Path
    table: str
    set4: str
    set6: str
    proc: subprocess.Popen[bytes] | None

    def start(self, wait_ready: bool = True) -> None: ...
    def stop(self) -> None: ...
    def log(self) -> str: ...


@dataclass
class Jail:
    """The knobs the scenarios turn, spelled once for both daemons."""

    maxretry: int = 1
    findtime: int = 3600
    bantime: int = 7200


class Kfwguard:
    name = "kfwguard"
    set4, set6 = "ban_v4", "ban_v6"

    def __init__(self, host: Host, workdir: Path, logfile: Path, jail: Jail,
                 max_entries: int = 200_000, extra_sources: bool = False) -> None:
        self.host = host
        self.workdir = workdir
        self.table = "kfwbench"
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = workdir / "kfwguard.yaml"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "kfwguard.log"
        self.config = self._config(jail, max_entries, extra_sources)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def _config(self, jail: Jail, max_entries: int, extra_sources: bool) -> dict[str, Any]:
        sources: list[dict[str, Any]] = [
            {"name": "auth", "type": "file", "path": str(self.logfile)}]
        jails: list[dict[str, Any]] = [
            # Per address, as fail2ban bans: the corpora's IPv6 offenders share
            # one /64, which the default ipv6_prefix (64) would ban once.
            {"name": "sshd", "source": "auth", "filter": "sshd", "maxretry": jail.maxretry,
             "findtime": f"{jail.findtime}s", "bantime": f"{jail.bantime}s",
             "ipv6_prefix": 128}]
        if extra_sources:
            # The embedded default's jails, on files: journald may not run here.
            for name, flt, fmt in (("kubelet", "kubelet", "text"),
                                   ("audit", "kube-apiserver-audit", "json"),
                                   ("etcd", "etcd", "text")):
                path = self.workdir / f"{name}.log"
                path.touch()
                sources.append({"name": name, "type": "file", "path": str(path),
                                "format": fmt})
                jails.append({"name": name, "source": name, "filter": flt,
                              "maxretry": 10, "findtime": "5m", "bantime": "1h"})
        return {
            "state_dir": str(self.state_dir),
            "control_socket": str(self.workdir / "control.sock"),
            "nftables": {"table": self.table},
            "tracker": {"max_entries": max_entries},
            "sources": sources,
            "jails": jails,
        }

    def command(self) -> list[str]:
        # The default log level (info: one line per ban) is what operators run.
        return [sys.executable, "-m", "kfwguard", "run", "-c", str(self.config_path)]

    def start(self, wait_ready: bool = True) -> None:
        with self.log_path.open("ab") as log:
            self.proc = self.host.popen(self.command(), stdout=log, stderr=log, cwd=REPO)
        if wait_ready:
            ok = wait_until(lambda: '"started"' in self.log() or not self.alive(), timeout=60)
            if not ok or not self.alive():
                raise RuntimeError(f"kfwguard did not start:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return _read_log(self.log_path)


class Fail2ban:
    name = "fail2ban"
    table = F2B_TABLE
    set4, set6 = "addr-set-sshd", "addr6-set-sshd"

    def __init__(self, host: Host, workdir: Path, logfile: Path, jail: Jail,
                 backend: str = "pyinotify", dbpurgeage: str = "1d") -> None:
        self.host = host
        self.workdir = workdir
        self.logfile = logfile
        self.backend = backend
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "f2b-conf"
        self.socket = workdir / "f2b.sock"
        self.dbfile = workdir / "f2b.sqlite3"
        self.log_path = workdir / "fail2ban.log"
        self._write_conf(jail, dbpurgeage)

    def _write_conf(self, jail: Jail, dbpurgeage: str) -> None:
        if self.conf.exists():
            shutil.rmtree(self.conf)
        shutil.copytree(F2B_CONF, self.conf)
        # Debian's jail.d enables sshd on the journal; our jail.local says it all.
        for f in (self.conf / "jail.d").iterdir():
            f.unlink()
        (self.conf / "fail2ban.local").write_text(
            "[Definition]\n"
            "loglevel = INFO\n"
            f"logtarget = {self.log_path}\n"
            f"socket = {self.socket}\n"
            f"pidfile = {self.workdir / 'f2b.pid'}\n"
            f"dbfile = {self.dbfile}\n"
            f"dbpurgeage = {dbpurgeage}\n")
        (self.conf / "jail.local").write_text(
            "[DEFAULT]\n"
            "banaction = nftables-multiport\n"
            "banaction_allports = nftables-allports\n"
            "[sshd]\n"
            "enabled = true\n"
            f"backend = {self.backend}\n"
            f"logpath = {self.logfile}\n"
            f"maxretry = {jail.maxretry}\n"
            f"findtime = {jail.findtime}\n"
            f"bantime = {jail.bantime}\n")

    def command(self) -> list[str]:
        return ["fail2ban-server", "-f", "-x", "-c", str(self.conf), "start"]

    def client(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["fail2ban-client", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, wait_ready: bool = True) -> None:
        with (self.workdir / "f2b-server.out").open("ab") as out:
            self.proc = self.host.popen(self.command(), stdout=out, stderr=out)
        if wait_ready:
            ok = wait_until(lambda: "Jail 'sshd' started" in self.log() or not self.alive(),
                            timeout=60, step=0.05)
            if not ok or not self.alive():
                raise RuntimeError(f"fail2ban did not start:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def total_failed(self) -> int | None:
        """Failures the sshd jail has counted so far (its own status)."""
        r = self.client("status", "sshd")
        for line in r.stdout.splitlines():
            if "Total failed:" in line:
                return int(line.rsplit(None, 1)[-1])
        return None

    def stop(self) -> None:
        if self.alive():
            # A flooded fail2ban can take long to stop; the namespace goes anyway.
            self.client("stop", timeout=60)
            wait_until(lambda: not self.alive(), timeout=10)
        _stop(self.proc)
        self.proc = None

    def log(self) -> str:
        return _read_log(self.log_path)


def _read_log(path: Path) -> str:
    """A daemon's log so far ("" before it has written one)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fail2ban_installed() -> bool:
    return shutil.which("fail2ban-server") is not None and F2B_CONF.is_dir()


def install_fail2ban() -> str | None:
    """Install Debian's fail2ban (and pyinotify) when missing; None on success, else why not."""
    if fail2ban_installed():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "fail2ban is not installed (needs root and apt-get to install it)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The package's maintainer script would start fail2ban on the host, with
    # Debian's jails acting on the host's firewall. policy-rc.d (exit 101) is
    # Debian's switch that forbids service starts during an install.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\n# bench/: no service starts while installing\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "fail2ban", "python3-pyinotify"]):
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if r.returncode != 0:
                return f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}"
    finally:
        if ours:
            policy.unlink()
    return None if fail2ban_installed() else "fail2ban still missing after apt-get install"


def fail2ban_version() -> str:
    try:
        r = subprocess.run(["fail2ban-server", "-V"], capture_output=True, text=True,
                           timeout=30, check=False)
        return r.stdout.strip() or "unknown"
    except OSError:
        return "not installed"
