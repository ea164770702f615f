"""The daemon on what Kubernetes nodes really write: journald and the audit log.

The daemon runs in a test namespace; journald is the real systemd-journald
(started by the `journald` fixture when none runs), entries carry a unique
field so parallel tests never see each other's.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon_harness import DaemonRun, wait_until
from tests.netns import Lab


def journald_config(tmp: Path, tag: str, **jail: Any) -> dict[str, Any]:
    j: dict[str, Any] = {"name": "sshd", "source": "sshd", "filter": "sshd", "maxretry": 3,
                         "findtime": "10m", "bantime": "1h"}
    j.update(jail)
    return {
        "state_dir": str(tmp / "state"),
        "control_socket": str(tmp / "control.sock"),
        "nftables": {"table": "kfwtest", "check_interval": "1s"},
        "sources": [{"name": "sshd", "type": "journald", "match": {"KFWTEST_RUN": tag}}],
        "jails": [j],
    }


def send_fail(tag: str, addr: str, port: int) -> None:
    import systemd.journal

    systemd.journal.send(f"Failed password for root from {addr} port {port} ssh2",
                         SYSLOG_IDENTIFIER="sshd", KFWTEST_RUN=tag)


@pytest.mark.journald
@pytest.mark.usefixtures("journald")
class TestJournaldDaemon:
    def test_bans_from_journald_and_resumes_from_cursor(self, lab: Lab, tmp_path: Path) -> None:
        """sshd failures in journald ban their source; after a restart the daemon
        resumes at its cursor: old entries are not counted again, entries written
        while it was stopped are."""
        tag = uuid.uuid4().hex
        node = lab.host("node")
        d = DaemonRun(node, tmp_path, journald_config(tmp_path, tag))
        d.start()
        for i in range(3):
            send_fail(tag, "198.51.100.10", 1000 + i)
        assert wait_until(lambda: "198.51.100.10" in d.elements("ban_v4")), d.log()
        # Two failures of another address, then a restart.
        send_fail(tag, "198.51.100.20", 2000)
        send_fail(tag, "198.51.100.20", 2001)
        # Let the daemon read them before it stops.
        assert wait_until(lambda: d.lines_read("sshd") == 5), d.log()
        d.stop()
        send_fail(tag, "198.51.100.30", 3000)  # written while stopped
        d.start()
        send_fail(tag, "198.51.100.20", 2002)
        send_fail(tag, "198.51.100.30", 3001)
        send_fail(tag, "198.51.100.30", 3002)
        assert wait_until(lambda: "198.51.100.30" in d.elements("ban_v4")), d.log()
        # .20 had two failures before the stop: re-reading them would ban it now.
        # All four entries since the stop are read and nothing waits for the kernel.
        assert wait_until(lambda: (st := d.status()) is not None
                          and 4 == st["sources"]["sshd"]["lines_read"]
                          and 0 == st["bans"]["pending"]), d.log()
        assert "198.51.100.20" not in d.elements("ban_v4")
        d.stop()


def audit_event(code: int, ips: list[str], user: str | None = None,
                stage: str = "ResponseStarted") -> str:
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": str(uuid.uuid4()), "stage": stage, "requestURI": "/api/v1/secrets",
        "verb": "list", "sourceIPs": ips, "userAgent": "curl/8.0",
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "stageTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "user": {},
    }
    if user is not None:
        ev["user"] = {"username": user}
    return json.dumps(ev) + "\n"


class TestAuditLogDaemon:
    def test_rotation_mid_stream_loses_no_event(self, lab: Lab, tmp_path: Path) -> None:
        """401s in the API server's audit log ban the LAST sourceIPs entry (never a
        forged X-Forwarded-For one), across a rotation by rename to
        audit-<timestamp>.log in the middle of the stream."""
        node = lab.host("node")
        audit_dir = tmp_path / "audit"
        audit_dir.mkdir()
        log = audit_dir / "audit.log"
        log.write_text("")
        cfg = {
            "state_dir": str(tmp_path / "state"),
            "control_socket": str(tmp_path / "control.sock"),
            "nftables": {"table": "kfwtest"},
            "sources": [{"name": "audit", "type": "file", "format": "json", "path": str(log)}],
            "jails": [{"name": "apiserver", "source": "audit", "filter": "kube-apiserver-audit",
                       "maxretry": 4, "findtime": "10m", "bantime": "1h"}],
        }
        d = DaemonRun(node, tmp_path, cfg)
        d.start()
        forged, real = "192.0.2.55", "203.0.113.77"
        with log.open("a") as f:
            f.write(audit_event(401, [forged, real]))
            f.write(audit_event(200, [real], user="system:node:n1", stage="ResponseComplete"))
            f.write(audit_event(401, [forged, real]))
            f.write('{"kind": "Event", "truncated')  # half-written last line
        log.rename(audit_dir / "audit-2026-11-26T05-00-00.000.log")
        with (audit_dir / "audit-2026-11-26T05-00-00.000.log").open("a") as f:
            f.write('"}\n')  # the writer finishes its line in the renamed file
            f.write(audit_event(401, [forged, real]))
        with log.open("a") as f:
            f.write("{not json}\n")
            f.write(audit_event(401, [forged, real]))
        assert wait_until(lambda: real in d.elements("ban_v4")), d.log()
        assert forged not in d.elements("ban_v4")
        d.stop()
