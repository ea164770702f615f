"""A distributed attack: 1,000,000 distinct addresses failing once each."""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon_harness import DaemonRun, base_config, syslog_now, wait_until
from tests.netns import Lab

FLOOD = 1_000_000
MAX_ENTRIES = 100_000
# Generous bound on what the daemon may grow while the tracker is full:
# ~200 bytes per remembered address, plus the reading buffers.
GROWTH_CAP_MB = 120


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} missing")


class TestFlood:
    @pytest.mark.timeout(300)
    def test_million_addresses_bounded_memory_no_missed_ban(self, lab: Lab,
                                                             tmp_path: Path) -> None:
        """1M distinct addresses failing once each keep the daemon's memory under a
        bound set by tracker.max_entries, and an attacker reaching maxretry in the
        middle of the flood is still banned."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log, maxretry=3)
        cfg["tracker"] = {"max_entries": MAX_ENTRIES}
        d = DaemonRun(node, tmp_path, cfg)
        d.start()
        assert d.proc is not None
        idle = rss_mb(d.proc.pid)
        stamp = syslog_now()
        base = int(ipaddress.ip_address("10.0.0.0"))
        with log.open("w") as f:
            for start in range(0, FLOOD, 100_000):
                lines = [
                    f"{stamp} node sshd[9]: Failed password for root from "
                    f"{ipaddress.ip_address(base + i)} port 22 ssh2\n"
                    for i in range(start, start + 100_000)
                ]
                if start == FLOOD // 2:
                    lines += [f"{stamp} node sshd[9]: Failed password for root from "
                              f"198.51.100.99 port {p} ssh2\n" for p in (1, 2, 3)]
                f.write("".join(lines))
        assert wait_until(lambda: "198.51.100.99" in d.elements("ban_v4"), timeout=240), d.log()
        assert wait_until(
            lambda: status(d).get("sources", {}).get("auth", {}).get("lines_read", 0)
            >= FLOOD + 3, timeout=240, step=1.0)
        st = status(d)
        assert st["jails"]["sshd"]["failures"] <= MAX_ENTRIES
        peak = rss_mb(d.proc.pid, "VmHWM")
        print(f"idle RSS {idle:.1f} MiB, peak {peak:.1f} MiB")
        assert peak - idle < GROWTH_CAP_MB, (idle, peak)
        assert ["198.51.100.99"] == list(d.elements("ban_v4"))
        d.stop()


def status(d: DaemonRun) -> dict[str, Any]:
    out = d.host.run(sys.executable, "-m", "kfwguard", "status", "--json", "-c",
                     str(d.config_path), check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}
