"""Observe mode (issue 15, item 5): a dry_run jail's bans are decided, stored,
listed and alerted as simulated, never put in the kernel; turning dry_run
off (reload) puts those still in force in the kernel. A real daemon in a
kfwtest- namespace, real nft, a real webhook receiver."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.integration.daemon_harness import DaemonRun, base_config, sshd_fail, wait_until
from tests.integration.test_operator import HOOK_PORT, RECEIVER, cli
from tests.netns import Lab


def listed(d: DaemonRun) -> list[dict[str, Any]]:
    out = cli(d.config_path, "list", "--json")
    assert 0 == out.returncode, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_dry_run_jail_simulates_then_enforces_on_reload(lab: Lab, tmp_path: Path) -> None:
    """An offender of a dry_run jail reaches maxretry: stored and listed as
    simulated, alerted marked simulated, absent from the nft set; a reload with
    dry_run off puts it in the set and lists it as enforced."""
    host = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    received = tmp_path / "received.jsonl"
    receiver = host.popen([sys.executable, "-c", RECEIVER, str(received), str(HOOK_PORT), "0"])
    cfg = base_config(tmp_path, log, dry_run=True, actions=["chat"])
    cfg["actions"] = {"chat": {"type": "webhook", "url": f"http://127.0.0.1:{HOOK_PORT}/h",
                               "format": "json"}}
    d = DaemonRun(host, tmp_path, cfg)
    try:
        assert wait_until(lambda: host.run(
            sys.executable, "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {HOOK_PORT}), 1)",
            check=False).returncode == 0, timeout=30)
        d.start()
        with log.open("a") as f:
            f.write("".join(sshd_fail("198.51.100.9", port=40000 + i) for i in range(3)))
        assert wait_until(lambda: [r["target"] for r in listed(d)] == ["198.51.100.9"]), d.log()
        [row] = listed(d)
        assert (row["jail"], row["simulated"]) == ("sshd", True)
        assert "simulated" in cli(d.config_path, "list").stdout
        assert wait_until(lambda: received.exists() and received.read_text().strip() != "",
                          timeout=60), d.log()
        [message] = [json.loads(x) for x in received.read_text().splitlines()]
        [event] = message["body"]["events"]
        assert (event["event"], event["target"], event["simulated"]) == (
            "ban", "198.51.100.9", True)
        assert message["body"]["text"].startswith("[simulated, not enforced]")
        status = d.status()
        assert status is not None
        assert (status["bans"]["active"], status["bans"]["simulated_active"]) == (0, 1)
        assert status["jails"]["sshd"]["dry_run"] is True
        # The kernel never had it (the ban is stored and listed by now).
        assert "198.51.100.9" not in d.elements("ban_v4")

        cfg["jails"][0]["dry_run"] = False
        d.write_config(cfg)
        out = cli(d.config_path, "reload")
        assert 0 == out.returncode, out.stderr
        assert wait_until(lambda: "198.51.100.9" in d.elements("ban_v4")), d.log()
        assert 3000 < d.elements("ban_v4")["198.51.100.9"] <= 3600
        [row] = listed(d)
        assert (row["target"], row["simulated"]) == ("198.51.100.9", False)
    finally:
        d.stop()
        receiver.kill()
        receiver.wait()


def test_simulated_ban_survives_restart_and_is_enforced_when_off(lab: Lab,
                                                                 tmp_path: Path) -> None:
    """A simulated ban is stored as such: a restart keeps it out of the kernel
    while dry_run (global) holds, and a restart with dry_run off enforces it."""
    host = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = base_config(tmp_path, log)
    cfg["dry_run"] = True
    d = DaemonRun(host, tmp_path, cfg)
    d.start()
    try:
        with log.open("a") as f:
            f.write("".join(sshd_fail("2001:db8:5:5::1", port=40000 + i) for i in range(3)))
        assert wait_until(lambda: [r["simulated"] for r in listed(d)] == [True]), d.log()
    finally:
        d.stop()
    d.start()
    try:
        assert [("2001:db8:5:5::/64", True)] == [(r["target"], r["simulated"])
                                                 for r in listed(d)]
        assert not d.elements("ban_net_v6")
    finally:
        d.stop()
    cfg["dry_run"] = False
    d.write_config(cfg)
    d.start()
    try:
        assert wait_until(lambda: "2001:db8:5:5::/64" in d.elements("ban_net_v6")), d.log()
        assert [("2001:db8:5:5::/64", False)] == [(r["target"], r["simulated"])
                                                  for r in listed(d)]
    finally:
        d.stop()
