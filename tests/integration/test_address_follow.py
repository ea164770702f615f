"""Addresses added after start (issue 11, item 10): a CNI bridge or a VIP that
appears once the daemon runs is protected at once, and a ban covering it is
lifted from the kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.integration.test_forged_logs import REPO
from tests.netns import Lab


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kfwguard", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))


def test_address_added_after_start_is_unbanned_and_protected(lab: Lab,
                                                             tmp_path: Path) -> None:
    """A banned address (and a banned /64) that the node then takes on an
    interface leave the kernel's sets at once; new failures from the address
    no longer ban it."""
    node = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    d = DaemonRun(node, tmp_path, base_config(tmp_path, log))
    d.start()
    try:
        vip, v6 = "198.51.100.50", "2001:db8:50:50::7"
        with log.open("a") as f:
            for port in (1, 2, 3):
                f.write(sshd_fail(vip, port=port))
            for i in (1, 2, 3):
                f.write(sshd_fail(f"2001:db8:50:50::{i}", port=i))
        assert wait_until(lambda: vip in d.elements("ban_v4")
                          and "2001:db8:50:50::/64" in d.elements("ban_net_v6")), d.log()
        # A VIP as kube-vip or keepalived adds it (dummy links are not available here).
        node.run("ip", "link", "set", "lo", "up")
        node.run("ip", "addr", "add", f"{vip}/32", "dev", "lo")
        node.run("ip", "addr", "add", f"{v6}/128", "dev", "lo")
        assert wait_until(lambda: vip not in d.elements("ban_v4")
                          and "2001:db8:50:50::/64" not in d.elements("ban_net_v6")), d.log()
        listed = cli(d.config_path, "list", "--json").stdout
        assert vip not in listed and "2001:db8:50:50::/64" not in listed
        # New failures of the now protected address are read, and ban nothing.
        with log.open("a") as f:
            for port in (4, 5, 6, 7):
                f.write(sshd_fail(vip, port=port))
            f.write(sshd_fail("192.0.2.33", port=1))  # a marker: read after them
            f.write(sshd_fail("192.0.2.33", port=2))
            f.write(sshd_fail("192.0.2.33", port=3))
        assert wait_until(lambda: "192.0.2.33" in d.elements("ban_v4")), d.log()
        assert vip not in d.elements("ban_v4")
        refused = cli(d.config_path, "ban", vip)
        assert refused.returncode != 0 and vip not in d.elements("ban_v4")
    finally:
        d.stop()
