"""One daemon per state_dir, decided before the kernel is touched."""

from __future__ import annotations

import re

from tests.integration.daemon_harness import DaemonRun, wait_until
from tests.integration.test_operator import Node, node  # noqa: F401


class TestSecondDaemon:
    def test_refused_before_restoring_bans(self, node: Node) -> None:  # noqa: F811
        """A second `kfwguard run` on the same config refuses to start, naming the
        first one's pid, and restores no ban into the kernel on its way out (an
        element removed behind the first daemon's back stays removed)."""
        first = node.daemon()
        first.start()
        second_dir = node.workdir / "second"
        second_dir.mkdir()
        second = DaemonRun(node.host, second_dir, first.config)
        try:
            node.fail(["203.0.113.9"])
            assert wait_until(lambda: "203.0.113.9" in first.elements("ban_v4")), first.log()
            node.host.run("nft", "delete", "element", "inet", first.table, "ban_v4",
                          "{ 203.0.113.9 }")
            second.start(wait_ready=False)
            proc = second.proc
            assert proc is not None
            assert wait_until(lambda: proc.poll() is not None, timeout=30), second.log()
            assert 1 == proc.returncode
            assert "bans_restored" not in second.log()
            assert "203.0.113.9" not in first.elements("ban_v4")
            [error] = [e for e in second.events() if e.get("event") == "cannot_start"]
            assert first.proc is not None
            assert re.fullmatch(rf"another kfwguard \(pid {first.proc.pid}\) is running with "
                                rf"state_dir {re.escape(str(node.workdir / 'state'))}; "
                                "not starting", error["error"]), error
            assert first.alive()
        finally:
            second.stop()
            first.stop()

    def test_lock_released_on_stop(self, node: Node) -> None:  # noqa: F811
        """After the first daemon stops, the next one on the same config starts."""
        first = node.daemon()
        first.start()
        assert 0 == first.stop()
        again = node.daemon()
        try:
            again.start()
            assert again.alive()
        finally:
            again.stop()
