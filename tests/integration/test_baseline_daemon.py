"""The daemon keeps the baseline in force and tells people when it had to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.integration.daemon_harness import DaemonRun, base_config, wait_until
from tests.integration.test_operator import HOOK_PORT, RECEIVER
from tests.netns import Lab


class TestBaselineInDaemon:
    def test_drift_healed_counted_and_alerted(self, lab: Lab, tmp_path: Path) -> None:
        """With baseline.enabled the daemon applies the policy at start; a deleted
        baseline table is put back within reconcile_interval, logged as drift, and a
        chat message says so."""
        node = lab.host("node")
        log = tmp_path / "auth.log"
        log.write_text("")
        received = tmp_path / "received.jsonl"
        receiver = node.popen([sys.executable, "-c", RECEIVER, str(received),
                               str(HOOK_PORT), "0"])
        cfg = base_config(tmp_path, log)
        cfg["actions"] = {"chat": {"type": "webhook", "aggregate": "0s",
                                   "url": f"http://127.0.0.1:{HOOK_PORT}/hooks/x"}}
        cfg["baseline"] = {"enabled": True, "table": "kfwtest_base", "role": "worker",
                           "cni": "flannel", "admin_cidrs": ["192.0.2.0/24"],
                           "cluster_cidrs": ["10.93.0.0/16"], "pod_cidrs": ["10.244.0.0/16"],
                           "service_cidrs": ["10.96.0.0/12"], "reconcile_interval": "500ms"}
        d = DaemonRun(node, tmp_path, cfg)
        try:
            d.start()
            assert 0 == node.run("nft", "list", "table", "inet", "kfwtest_base").returncode
            node.run("nft", "delete", "table", "inet", "kfwtest_base")
            assert wait_until(lambda: node.run("nft", "list", "table", "inet", "kfwtest_base",
                                               check=False).returncode == 0, timeout=10)
            assert wait_until(lambda: '"drift"' in d.log(), timeout=10)
            assert wait_until(lambda: received.exists() and "drifted" in received.read_text(),
                              timeout=30), d.log()
            message = json.loads(received.read_text().splitlines()[0])["body"]["text"]
            assert "kfwtest_base" in message
        finally:
            d.stop()
            receiver.kill()
            receiver.wait()
