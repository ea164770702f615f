"""Lines without an address are counted under their session's origin or shown as
unattributed: an operator sees, in ``status`` and /metrics, how many counted nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.daemon_harness import DaemonRun, base_config, syslog_now, wait_until
from tests.integration.test_forged_logs import status
from tests.netns import Lab

pytestmark = pytest.mark.root


def test_unattributed_lines_in_status_and_metrics(lab: Lab, tmp_path: Path) -> None:
    """An sshd process that names no address before 'Too many authentication
    failures' counts nothing and shows as one unattributed line (status and
    /metrics); the same line after its process's 'Connection from' counts under
    that address and is not unattributed."""
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = base_config(tmp_path, log)
    cfg["metrics"] = {"listen": "127.0.0.1:9742"}
    node = lab.host("node")
    d = DaemonRun(node, tmp_path, cfg)
    d.start()
    try:
        now = syslog_now()
        with log.open("a") as f:
            f.write(f"{now} node sshd[4001]: Disconnecting: Too many authentication "
                    "failures [preauth]\n")
            f.write(f"{now} node sshd[4002]: Connection from 192.0.2.90 port 50123 on "
                    "10.0.0.1 port 22\n")
            f.write(f"{now} node sshd[4002]: Disconnecting: Too many authentication "
                    "failures [preauth]\n")

        def jail() -> dict[str, int]:
            j: dict[str, int] = status(d.config_path)["jails"]["sshd"]
            return j

        assert wait_until(lambda: jail()["failures"] == 1), d.log()
        assert 1 == jail()["unattributed"]
        assert 'kfwguard_jail_unattributed_lines_total{jail="sshd"} 1.0' in d.metrics()
    finally:
        d.stop()
