"""Run the real daemon inside a test namespace, with its own config, state and table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kfwguard.firewall.bantable import SENTINELS
from tests.netns import Host


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` seconds pass; its last answer.
    The one polling helper of the tests and the bench."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def syslog_now() -> str:
    return time.strftime("%b %d %H:%M:%S", time.localtime())


def sshd_fail(addr: str, user: str = "root", port: int = 50000) -> str:
    return (f"{syslog_now()} node sshd[1234]: Failed password for {user} from {addr} "
            f"port {port} ssh2\n")


class DaemonRun:
    """One daemon process in ``host``; stderr goes to a file for inspection."""

    def __init__(self, host: Host, workdir: Path, config: dict[str, Any]) -> None:
        self.host = host
        self.workdir = workdir
        self.config_path = workdir / "kfwguard.yaml"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.log_path = workdir / "daemon.log"
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def table(self) -> str:
        return str(self.config.get("nftables", {}).get("table", "kfwguard"))

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        self.log_offset = len(self.log())
        with self.log_path.open("ab") as log:
            proc = self.proc = self.host.popen(
                [sys.executable, "-m", "kfwguard", "run", "-c", str(self.config_path)],
                stdout=log, stderr=log, env={**os.environ, **(env or {})},
            )
        if wait_ready:
            assert wait_until(lambda: '"started"' in self.log()[self.log_offset:]
                              or proc.poll() is not None, timeout=30), self.log()
            assert proc.poll() is None, self.log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def status(self) -> dict[str, Any] | None:
        """`kfwguard status --json` from the daemon, over its control socket (a file,
        so reachable from outside the namespace); None if it does not answer."""
        r = subprocess.run([sys.executable, "-m", "kfwguard", "status", "--json", "-c",
                            str(self.config_path)], capture_output=True, text=True, timeout=30,
                           check=False)
        if r.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def metrics(self) -> str:
        """The daemon's /metrics text, fetched inside its namespace from the address
        its config's ``metrics.listen`` names."""
        url = f"http://{self.config['metrics']['listen']}/metrics"
        return self.host.python(
            f"import urllib.request;print(urllib.request.urlopen({url!r}).read().decode())"
        ).stdout

    def lines_read(self, source: str) -> int:
        doc = self.status()
        return int(doc["sources"][source]["lines_read"]) if doc else -1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def elements(self, set_name: str) -> dict[str, float]:
        """Elements of a ban set in the kernel: address → seconds left."""
        r = self.host.run("nft", "-j", "list", "set", "inet", self.table, set_name, check=False)
        if r.returncode != 0:
            return {}
        out: dict[str, float] = {}
        for item in json.loads(r.stdout)["nftables"]:
            for el in item.get("set", {}).get("elem", []):
                if isinstance(el, dict) and "elem" in el:
                    val = el["elem"]["val"]
                    if isinstance(val, dict) and "prefix" in val:
                        val = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                    out[str(val)] = float(el["elem"].get("expires", -1))
                else:
                    out[str(el)] = -1.0
        for sentinel in SENTINELS.values():
            out.pop(sentinel, None)
        return out


def listen_tcp(host: Host, port: int) -> subprocess.Popen[bytes]:
    """A TCP server in ``host`` on all v4 and v6 addresses that accepts and closes."""
    code = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
        f"s.bind(('::', {port}))\n"
        "s.listen(64)\n"
        "print('listening', flush=True)\n"
        "while True:\n"
        "    c,_=s.accept(); c.close()\n"
    )
    p = host.popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    # Wait for the socket, not for a guessed time.
    assert p.stdout is not None
    ready = p.stdout.readline()
    p.stdout.close()
    assert b"listening\n" == ready
    return p


def base_config(
    workdir: Path, logfile: Path, table: str = "kfwtest", **jail: Any
) -> dict[str, Any]:
    j: dict[str, Any] = {"name": "sshd", "source": "auth", "filter": "sshd", "maxretry": 3,
                         "findtime": "10m", "bantime": "1h"}
    j.update(jail)
    return {
        "state_dir": str(workdir / "state"),
        "control_socket": str(workdir / "control.sock"),
        "nftables": {"table": table, "check_interval": "500ms"},
        "sources": [{"name": "auth", "type": "file", "path": str(logfile)}],
        "jails": [j],
    }
