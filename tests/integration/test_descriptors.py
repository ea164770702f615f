"""Descriptor exhaustion through the metrics port (issue 11, item 8).

Any local user can connect to the metrics port (on in the shipped configs).
Holding ~1,100 idle connections used to take all of a daemon's 1,024
descriptors (systemd's default soft limit): ``status`` stalled and the log
grew by tens of MB. Connections are now capped per listener, and a
connection that has not sent its request head is the first to go.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config, wait_until
from tests.integration.test_forged_logs import status
from tests.netns import Host, Lab

PORT = 9741
IDLE = 1200

# Opens IDLE connections and holds them without a byte sent, counting the
# ones the server has closed (a read returns b"" or an error).
HOLDER = f"""
import resource, select, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
socks = []
for _ in range({IDLE}):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", {PORT}))
    socks.append(s)
print("opened", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """Children started inside get ``limit`` descriptors, as systemd's default gives."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(host: Host) -> subprocess.CompletedProcess[str]:
    return host.run(sys.executable, "-c",
                    "import urllib.request;"
                    f"print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', "
                    "timeout=20).read().decode())", check=False)


def test_idle_connections_cannot_exhaust_descriptors(lab: Lab, tmp_path: Path) -> None:
    """1,200 idle connections to the metrics port (the daemon at 1,024 descriptors):
    the daemon's descriptors stay bounded, ``status`` and a scrape still answer,
    and the log stays a few lines long."""
    node = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = base_config(tmp_path, log)
    cfg["metrics"] = {"listen": f"127.0.0.1:{PORT}"}
    d = DaemonRun(node, tmp_path, cfg)
    with soft_nofile(1024):
        d.start()
    assert d.proc is not None
    pid = d.proc.pid
    holder = node.popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"opened\n"
        before = len(d.log().splitlines())
        # Every connection was accepted by now, or refused and closed again.
        assert wait_until(lambda: open_fds(pid) < 200, timeout=30), open_fds(pid)
        assert status(d.config_path)["jails"]["sshd"]["bans_total"] == 0
        assert "kfwguard_bans_active" in scrape(node).stdout
        assert d.alive()
        assert open_fds(pid) < 200
        assert len(d.log().splitlines()) - before < 20, d.log()[-3000:]
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
        d.stop()


def test_unit_raises_descriptor_limit() -> None:
    """The systemd unit sets LimitNOFILE well above systemd's default 1,024."""
    unit = Path(__file__).resolve().parents[2] / "systemd" / "kfwguard.service"
    limits = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
              if line.startswith("LimitNOFILE=")]
    assert 1 == len(limits) and int(limits[0]) >= 65536
