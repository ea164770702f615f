"""Zone-less stamps and the daemon's own zone (issue 11, item 6).

klog and classic syslog stamps carry no zone. A DaemonSet pod runs in UTC unless
the host's /etc/localtime is mounted, so on a node west of UTC the kubelet's
stamps, read as UTC, look hours old and every failure was dropped as stale. The
daemon now takes journald's own __REALTIME_TIMESTAMP, and counts what it drops
as stale where an operator sees it.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from kfwguard.config import default_config_text
from tests.integration.daemon_harness import DaemonRun, base_config, wait_until
from tests.integration.test_forged_logs import status
from tests.journal_writer import send_as_root
from tests.netns import Lab


def klog_now(zone: str) -> str:
    """A klog stamp for now, as a kubelet running in ``zone`` writes it."""
    now = datetime.now(ZoneInfo(zone))
    return now.strftime("I%m%d %H:%M:%S.%f")


@pytest.mark.journald
@pytest.mark.usefixtures("journald")
class TestKubeletAcrossZones:
    @pytest.mark.parametrize(("writer_tz", "daemon_tz"), [
        ("America/Los_Angeles", "UTC"),   # the DaemonSet without /etc/localtime
        ("UTC", "America/Los_Angeles"),
    ])
    def test_journald_kubelet_line_bans(self, lab: Lab, tmp_path: Path,
                                        writer_tz: str, daemon_tz: str) -> None:
        """kubelet TLS-handshake failures from journald (the shipped kubelet match, a
        real kubelet.service process) ban their source whatever zone the klog
        stamps were written in and whatever zone the daemon runs in."""
        shipped = yaml.safe_load(default_config_text())
        source = next(s for s in shipped["sources"] if s["name"] == "kubelet")
        cfg = base_config(tmp_path, tmp_path / "unused.log", name="kubelet", filter="kubelet",
                          source="kubelet")
        cfg["sources"] = [source]
        d = DaemonRun(lab.host("node"), tmp_path, cfg)
        d.start(env={"TZ": daemon_tz})
        try:
            addr = "203.0.113.61" if daemon_tz == "UTC" else "203.0.113.62"
            send_as_root("kubelet.service", "kubelet", "kubelet", *(
                f"{klog_now(writer_tz)}    4242 server.go:3215] http: TLS handshake error "
                f"from {addr}:{port}: tls: first record does not look like a TLS handshake"
                for port in (40001, 40002, 40003)))
            assert wait_until(lambda: addr in d.elements("ban_v4"), timeout=20), d.log()
            assert 0 == status(d.config_path)["jails"]["kubelet"]["stale"]
        finally:
            d.stop()


class TestStaleShown:
    def test_stale_failures_in_status_and_metrics(self, lab: Lab, tmp_path: Path) -> None:
        """Failures dropped as older than findtime are counted in ``status`` and in
        /metrics, so a wrong zone (or a replayed log) is visible."""
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log)
        cfg["metrics"] = {"listen": "127.0.0.1:9741"}
        node = lab.host("node")
        d = DaemonRun(node, tmp_path, cfg)
        d.start()
        try:
            old = time.strftime("%b %d %H:%M:%S", time.localtime(time.time() - 3 * 3600))
            with log.open("a") as f:
                for port in (1, 2, 3, 4):
                    f.write(f"{old} node sshd[1]: Failed password for root from "
                            f"192.0.2.77 port {port} ssh2\n")

            def stale() -> int:
                return int(status(d.config_path)["jails"]["sshd"]["stale"])

            assert wait_until(lambda: stale() == 4), d.log()
            assert "192.0.2.77" not in d.elements("ban_v4")
            assert 'kfwguard_jail_stale_failures_total{jail="sshd"} 4.0' in d.metrics()
        finally:
            d.stop()


def test_daemonset_mounts_localtime() -> None:
    """The DaemonSet gives the pod the host's /etc/localtime (read-only), so
    stamps without a zone read in the node's zone where no record time exists."""
    repo = Path(__file__).resolve().parents[2]
    docs = list(yaml.safe_load_all((repo / "deploy/kubernetes/daemonset.yaml").read_text()))
    ds = next(doc for doc in docs if doc and doc.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", [])
              if m["mountPath"] == "/etc/localtime"]
    assert 1 == len(mounts) and mounts[0].get("readOnly") is True
    assert "/etc/localtime" == volumes[mounts[0]["name"]]["hostPath"]["path"]

