"""The daemon keeps the baseline in force, never fails open, and tells people when it had to."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.integration.daemon_harness import DaemonRun, base_config, listen_tcp, wait_until
from tests.integration.test_operator import HOOK_PORT, RECEIVER
from tests.netns import Host, Lab, can_connect

pytestmark = pytest.mark.root

TABLE = "kfwtest_base"

# Holds a table with ``flags owner`` for as long as it runs: the kernel ties an
# owner table to the netlink socket that made it, so this is how systemd,
# firewalld's nftables backend or any libnftables user leaves one on a node.
OWNER = """
import ctypes, sys
lib = ctypes.CDLL("libnftables.so.1")
lib.nft_ctx_new.restype = ctypes.c_void_p
ctx = ctypes.c_void_p(lib.nft_ctx_new(0))
# with "replace", the table of that name is deleted in the same transaction
script = (("delete table inet %s\\n" % sys.argv[1] if sys.argv[2:] == ["replace"] else "")
          + "table inet %s { flags owner; chain c { type filter hook input priority 50; "
          "policy accept; }\\n}\\n" % sys.argv[1]).encode()
if lib.nft_run_cmd_from_buffer(ctx, script) != 0:
    sys.exit(1)
print("held", flush=True)
sys.stdin.read()
"""


def baseline(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "enabled": True, "table": TABLE, "role": "worker", "cni": "flannel",
        "admin_cidrs": ["192.0.2.0/24"], "cluster_cidrs": ["10.93.0.0/16"],
        "pod_cidrs": ["10.244.0.0/16"], "service_cidrs": ["10.96.0.0/12"],
        "dns_servers": [], "ntp_servers": [], "reconcile_interval": "300ms",
        "confirm_within": "0s"}
    out.update(over)
    return out


@dataclass
class Node:
    host: Host
    daemon: DaemonRun
    received: Path
    procs: list[subprocess.Popen[str]]

    def table(self, name: str = TABLE) -> str | None:
        """The table's listing, counters zeroed (they move by themselves); None if absent."""
        r = self.host.run("nft", "list", "table", "inet", name, check=False)
        return (re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", r.stdout)
                if r.returncode == 0 else None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(sys.executable, "-m", "kfwguard", *args, "-c",
                             str(self.daemon.config_path), check=False)

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert 0 == out.returncode, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def alerts(self) -> str:
        return self.received.read_text() if self.received.exists() else ""

    def hold_owner_table(self, name: str, replace: bool = False) -> None:
        proc = self.host.popen([sys.executable, "-c", OWNER, name,
                                *(["replace"] if replace else [])], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert "held" == proc.stdout.readline().strip()

    def reconfigure(self, **over: Any) -> None:
        cfg = dict(self.daemon.config)
        cfg["baseline"] = baseline(**over)
        self.daemon.write_config(cfg)


@pytest.fixture
def node(lab: Lab, tmp_path: Path) -> Iterator[Node]:
    """A daemon enforcing the baseline in its own namespace, with a chat receiver."""
    host = lab.host("node")
    log = tmp_path / "auth.log"
    log.write_text("")
    received = tmp_path / "received.jsonl"
    receiver = host.popen([sys.executable, "-c", RECEIVER, str(received), str(HOOK_PORT), "0"])
    cfg = base_config(tmp_path, log)
    cfg["actions"] = {"chat": {"type": "webhook", "aggregate": "0s",
                               "url": f"http://127.0.0.1:{HOOK_PORT}/hooks/x"}}
    cfg["baseline"] = baseline()
    n = Node(host, DaemonRun(host, tmp_path, cfg), received, [])
    try:
        yield n
    finally:
        n.daemon.stop()
        receiver.kill()
        receiver.wait()
        for p in n.procs:
            p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


class TestBaselineInDaemon:
    def test_drift_healed_counted_and_alerted(self, node: Node) -> None:
        """With baseline.enabled the daemon applies the policy at start; a deleted
        baseline table is put back within reconcile_interval, logged as drift, and a
        chat message says so."""
        node.daemon.start()
        assert node.table() is not None
        node.host.run("nft", "delete", "table", "inet", TABLE)
        assert wait_until(lambda: node.table() is not None, timeout=10)
        assert wait_until(lambda: '"drift"' in node.daemon.log(), timeout=10)
        assert wait_until(lambda: "drifted" in node.alerts(), timeout=30), node.daemon.log()
        message = json.loads(node.alerts().splitlines()[0])["body"]["text"]
        assert TABLE in message

    def test_dormant_table_is_drift(self, node: Node) -> None:
        """``flags dormant`` (the table stays, but filters nothing) is drift and is healed."""
        node.daemon.start()
        applied = node.table()
        node.host.run("nft", "add", "table", "inet", TABLE, "{", "flags", "dormant", ";", "}")
        assert wait_until(lambda: "made dormant" in node.daemon.log(), timeout=10)
        assert wait_until(lambda: node.table() == applied, timeout=10), node.table()


class TestDriftLoopNeverDies:
    def test_tables_with_one_flag_do_not_stop_healing(self, node: Node) -> None:
        """Another table with ``flags owner`` or ``flags dormant`` on the node (nft 1.0.6's
        JSON printer frees its flag name before printing it) does not stop the drift loop:
        a deleted baseline table still comes back, again and again."""
        node.hold_owner_table("kfwtest_owned")
        node.host.run("nft", "add", "table", "inet", "kfwtest_sleepy", "{", "flags", "dormant",
                      ";", "}")
        node.daemon.start()
        for _ in range(3):
            node.host.run("nft", "delete", "table", "inet", TABLE)
            assert wait_until(lambda: node.table() is not None, timeout=10), node.daemon.log()
        assert node.daemon.alive(), node.daemon.log()
        assert 3 == node.status()["baseline"]["drift_count"]

    def test_failures_are_logged_counted_alerted_and_loop_goes_on(self, node: Node) -> None:
        """While the policy cannot be put back (its table name is held by another
        process), each failed round is logged and counted, one alert says so, and once
        the name is free again the next round puts the policy back."""
        node.daemon.start()
        # (deleted and taken in one transaction: the daemon cannot put it back between)
        node.hold_owner_table(TABLE, replace=True)
        assert wait_until(lambda: node.status()["baseline"].get("errors", 0) >= 2, timeout=30)
        assert wait_until(lambda: "failing" == node.status()["baseline"]["state"], timeout=30)
        assert wait_until(lambda: "cannot keep the baseline in force" in node.alerts(),
                          timeout=30), node.daemon.log()
        assert '"baseline_reconcile_failed"' in node.daemon.log()
        holder = node.procs.pop()
        holder.kill()
        holder.wait()
        for f in (holder.stdin, holder.stdout):
            if f is not None:
                f.close()
        assert wait_until(lambda: "dropped_input" in (node.table() or ""), timeout=30)
        assert wait_until(lambda: "enforced" == node.status()["baseline"]["state"], timeout=30)
        assert "last_error" not in node.status()["baseline"]


class TestReloadNeverFailsOpen:
    def test_refused_policy_keeps_previous_enforced_and_healed(self, node: Node) -> None:
        """A reload whose policy nft refuses exits non-zero saying why; the previous
        policy stays in force and is still healed; the refusal is logged, counted in
        status and /metrics, and alerted."""
        node.daemon.start()
        before = node.table()
        node.hold_owner_table("kfwtest_taken")
        node.reconfigure(table="kfwtest_taken", role="control-plane",
                         control_plane_cidrs=["10.93.0.0/24"])
        out = node.cli("reload")
        assert 1 == out.returncode
        assert "nft refused the new baseline policy" in out.stderr
        assert "previous policy stays in force" in out.stderr
        st = node.status()["baseline"]
        assert ("enforced", TABLE, "worker", 1) == (st["state"], st["table"], st["role"],
                                                    st["refused"])
        assert before == node.table()
        assert '"baseline_refused"' in node.daemon.log()
        assert wait_until(lambda: "nft refused the new baseline" in node.alerts(), timeout=30)
        node.host.run("nft", "delete", "table", "inet", TABLE)
        assert wait_until(lambda: node.table() == before, timeout=10), node.daemon.log()

    def test_refused_policy_at_sighup_also_keeps_previous(self, node: Node) -> None:
        """The same through SIGHUP: the old table is checked at once (here it had been
        deleted just before) and stays enforced."""
        node.daemon.start()
        before = node.table()
        node.hold_owner_table("kfwtest_taken")
        node.reconfigure(table="kfwtest_taken")
        node.host.run("nft", "delete", "table", "inet", TABLE)
        assert node.daemon.proc is not None
        node.daemon.proc.send_signal(1)
        assert wait_until(lambda: '"baseline_refused"' in node.daemon.log(), timeout=10)
        assert wait_until(lambda: node.table() == before, timeout=10)
        assert "enforced" == node.status()["baseline"]["state"]


class TestTableLifecycle:
    def test_rename_removes_old_table_after_new_is_in(self, node: Node) -> None:
        """Renaming baseline.table puts the new table in and removes the old one."""
        node.daemon.start()
        node.reconfigure(table="kfwtest_renamed")
        out = node.cli("reload")
        assert 0 == out.returncode, out.stderr
        assert node.table("kfwtest_renamed") is not None
        assert node.table() is None
        assert "kfwtest_renamed" == node.status()["baseline"]["table"]

    def test_disabled_removes_table(self, node: Node) -> None:
        """``enabled: false`` at reload removes the table the daemon had put in."""
        node.daemon.start()
        node.reconfigure(enabled=False)
        out = node.cli("reload")
        assert 0 == out.returncode, out.stderr
        assert node.table() is None
        assert node.status()["baseline"] is None

    def test_disabled_at_start_removes_table_of_last_run(self, node: Node) -> None:
        """A daemon started with the baseline disabled removes the table the previous run
        owned (and no other table)."""
        node.daemon.start()
        node.daemon.stop()
        node.host.run("nft", "add", "table", "inet", "kfwtest_foreign")
        node.reconfigure(enabled=False)
        node.daemon.start()
        assert node.table() is None
        assert node.table("kfwtest_foreign") is not None


class TestReloadCommitConfirmed:
    def test_unconfirmed_change_rolls_back(self, node: Node) -> None:
        """A reload that changes the baseline says how to confirm it; without the
        confirmation the confirmed policy is back after confirm_within, and it is alerted."""
        node.daemon.start()
        before = node.table()
        node.reconfigure(role="control-plane", control_plane_cidrs=["10.93.0.0/24"],
                         confirm_within="3s")
        out = node.cli("reload")
        assert 0 == out.returncode, out.stderr
        assert "rolls back in 3s unless confirmed: kfwguard baseline confirm -c" in out.stdout
        assert wait_until(lambda: '"baseline_rolled_back"' in node.daemon.log(), timeout=15)
        # the new policy went in, then the confirmed one again (the log says so, whatever
        # the machine's speed)
        roles = [e.get("role") for e in node.daemon.events()
                 if e.get("event") == "baseline_applied"]
        assert ["worker", "control-plane", "worker"] == roles, node.daemon.log()
        assert wait_until(lambda: node.table() == before, timeout=10), node.daemon.log()
        st = node.status()["baseline"]
        assert ("enforced", "worker") == (st["state"], st["role"])
        outcome = json.loads((node.daemon.workdir / "state" / "baseline.outcome.json")
                             .read_text())
        assert ("rolled back", "it was not confirmed in time") == (outcome["outcome"],
                                                                   outcome["reason"])
        assert wait_until(lambda: "rolled back to the confirmed one" in node.alerts(),
                          timeout=30)

    def test_confirmed_change_stays(self, node: Node) -> None:
        """``kfwguard baseline confirm`` keeps the reloaded policy: the wait ends, and drift
        is healed to the new policy from then on."""
        node.daemon.start()
        node.reconfigure(role="control-plane", control_plane_cidrs=["10.93.0.0/24"],
                         confirm_within="1m")
        assert 0 == node.cli("reload").returncode
        new = node.table()
        confirmed = node.cli("baseline", "confirm")
        assert (0, "") == (confirmed.returncode, confirmed.stderr)
        st = node.status()["baseline"]
        assert ("enforced", "control-plane") == (st["state"], st["role"])
        pending = node.daemon.workdir / "state" / "baseline.pending.json"
        assert not pending.exists()
        node.host.run("nft", "delete", "table", "inet", TABLE)
        assert wait_until(lambda: node.table() == new, timeout=10)

    def test_drift_while_waiting_heals_to_confirmed_policy(self, node: Node) -> None:
        """While a reloaded policy waits, drift (here the operator's own fix: the table
        deleted) is healed with the confirmed policy, not the new one."""
        node.daemon.start()
        before = node.table()
        node.reconfigure(role="control-plane", control_plane_cidrs=["10.93.0.0/24"],
                         confirm_within="10m")
        assert 0 == node.cli("reload").returncode
        node.host.run("nft", "delete", "table", "inet", TABLE)
        assert wait_until(lambda: node.table() == before, timeout=10), node.daemon.log()
        assert "worker" == node.status()["baseline"]["role"]
        assert node.table() == before

    def test_rename_waits_then_removes_old_table(self, node: Node) -> None:
        """A renamed table under confirmation: both tables are in until the confirmation,
        then the old one goes."""
        node.daemon.start()
        node.reconfigure(table="kfwtest_renamed", confirm_within="1m")
        assert 0 == node.cli("reload").returncode
        assert node.table() is not None and node.table("kfwtest_renamed") is not None
        assert 0 == node.cli("baseline", "confirm").returncode
        assert wait_until(lambda: node.table() is None, timeout=10)
        assert node.table("kfwtest_renamed") is not None


class TestEgressToNames:
    def test_names_follow_dns_and_survive_failed_lookups(self, lab: Lab,
                                                         tmp_path: Path) -> None:
        """allow_out to_names follows a real DNS server (dnsmasq) whose answer changes
        mid-test: the new address is let through once re-resolved; when the server is
        gone, the last answer stays in the set however many lookups fail."""
        need_dnsmasq = shutil.which("dnsmasq")
        if need_dnsmasq is None:
            need(False, "needs dnsmasq (apt-get install dnsmasq-base)")
        host = lab.host("node")
        world = lab.host("world")
        lab.link(host, world, "10.9.7", "fd00:9:7")
        dev = world.run("ip", "-o", "addr", "show", "to", "10.9.7.2").stdout.split()[1]
        for last in (3, 4):
            world.run("ip", "addr", "add", f"10.9.7.{last}/24", "dev", dev)
        server = listen_tcp(world, 443)
        hosts = tmp_path / "hosts"
        hosts.write_text("10.9.7.3 registry.example.com\n")
        dnsmasq = world.popen(["dnsmasq", "-k", "--no-resolv", "--no-hosts",
                               f"--addn-hosts={hosts}", "--local-ttl=2", "--user=root",
                               "--listen-address=10.9.7.2", "--bind-interfaces",
                               "--pid-file="], stderr=subprocess.DEVNULL)
        log = tmp_path / "auth.log"
        log.write_text("")
        cfg = base_config(tmp_path, log)
        cfg["baseline"] = baseline(
            dns_servers=["10.9.7.2"], name_ttl={"floor": "1s", "ceiling": "3s"},
            allow_out=[{"proto": "tcp", "ports": [443], "to_names": ["registry.example.com"]}])
        d = DaemonRun(host, tmp_path, cfg)
        try:
            d.start()
            assert wait_until(lambda: can_connect(host, "10.9.7.3", 443), timeout=15), d.log()
            assert not can_connect(host, "10.9.7.4", 443)
            hosts.write_text("10.9.7.4 registry.example.com\n")
            dnsmasq.send_signal(1)  # SIGHUP: dnsmasq re-reads its hosts file
            assert wait_until(lambda: can_connect(host, "10.9.7.4", 443), timeout=15), d.log()
            dnsmasq.kill()
            dnsmasq.wait()

            def failures() -> int:
                out = host.run(sys.executable, "-m", "kfwguard", "status", "--json", "-c",
                               str(d.config_path), check=False).stdout
                value = json.loads(out)["baseline"].get("name_lookup_failures", 0)
                return int(value)

            # 8 failed rounds: well past the 2 s the last answer was given
            assert wait_until(lambda: failures() >= 8, timeout=30), d.log()
            assert can_connect(host, "10.9.7.4", 443)
            assert '"name_lookup_failed"' in d.log()
            # the sets' changing elements are not drift
            assert '"drift"' not in d.log()
        finally:
            d.stop()
            for p in (server, dnsmasq):
                p.kill()
                p.wait()
