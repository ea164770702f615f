"""Cluster mode on real parts: a 3-member etcd with mutual TLS, three daemons
each in its own node namespace with its own log, an attacker namespace.

One etcd cluster and three daemons serve the whole module (starting them is
most of the cost); every test uses addresses of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kfwguard.operator.client import ControlClient
from tests.conftest import need
from tests.integration.daemon_harness import (
    DaemonRun,
    base_config,
    listen_tcp,
    sshd_fail,
    wait_until,
)
from tests.integration.etcd_cluster import EtcdCluster, have_etcd
from tests.integration.test_operator import RECEIVER
from tests.netns import Host, Lab, can_connect

PREFIX = "/kfwguard/v1"
PORT = 2222
HOOK_PORT = 8089
ADMIN_CIDR_B = "10.66.0.0/24"


def need_path(path: str) -> None:
    """Skip a ``grpc`` case where the cluster extra (aetcd, grpcio) is missing."""
    if path == "grpc":
        from kfwguard.cluster import etcdgrpc

        need(etcdgrpc.available(), "needs the cluster extra (aetcd, grpcio)")


@dataclass
class Node:
    name: str
    host: Host
    log: Path
    daemon: DaemonRun

    def control(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        path = Path(self.daemon.config["control_socket"])
        return asyncio.run(ControlClient(path).call(method, url, body))

    def ban(self, target: str, duration: str = "1h") -> None:
        self.control("POST", "/bans", {"target": target, "duration": duration})

    def has(self, addr: str) -> bool:
        return addr in self.daemon.elements("ban_v4")

    def fail_lines(self, addrs: list[str]) -> None:
        with self.log.open("a") as f:
            f.write("".join(sshd_fail(a) for a in addrs))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kfwguard", *args, "-c",
                               str(self.daemon.config_path)], capture_output=True, text=True,
                              timeout=30)

    def states(self) -> dict[str, str]:
        r = self.cli("cluster", "status", "--json")
        return {m["node"]: m["state"] for m in json.loads(r.stdout)["nodes"]}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.control("GET", "/cluster/status")
        return out


@dataclass
class Cluster:
    etcd: EtcdCluster
    nodes: dict[str, Node]
    attacker: Host

    @property
    def a(self) -> Node:
        return self.nodes["a"]

    @property
    def b(self) -> Node:
        return self.nodes["b"]

    @property
    def c(self) -> Node:
        return self.nodes["c"]

    def keys(self, node: str) -> list[str]:
        return self.etcd.keys(f"{PREFIX}/bans/node-{node}/")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import os
    import shutil

    need(os.geteuid() == 0 and shutil.which("nft") is not None, "needs root and nft")
    need(have_etcd(), "needs etcd-server, etcd-client and openssl (apt)")
    lab = Lab()
    work = tmp_path_factory.mktemp("cluster")
    etcd = EtcdCluster(lab, work / "etcd")
    nodes: dict[str, Node] = {}
    servers = []
    try:
        etcd.start()
        attacker = lab.host("attack")
        for name in "abc":
            host = lab.host(f"node{name}")
            etcd.attach(host)
            d = work / name
            d.mkdir()
            logfile = d / "auth.log"
            logfile.write_text("")
            cfg = base_config(d, logfile, maxretry=1, bantime="1h")
            cfg["cluster"] = {
                "backend": "etcd", "endpoints": etcd.endpoints,
                "tls": etcd.tls(f"node-{name}"), "node_name": f"node-{name}",
                "prefix": PREFIX, "heartbeat": "1s",
            }
            if name == "a":
                # A hears the cluster's alerts (the baseline alert) on a chat hook.
                cfg["actions"] = {"hook": {"type": "webhook", "format": "json",
                                           "url": f"http://127.0.0.1:{HOOK_PORT}/hook"}}
            if name == "b":
                cfg["metrics"] = {"listen": "127.0.0.1:9741"}
                # B enforces a baseline (and lets itself reach etcd); it is not
                # healed during the run, so a hand edit stays visible as drift.
                cfg["baseline"] = {
                    "enabled": True, "cni": "none", "admin_cidrs": [ADMIN_CIDR_B],
                    "cluster_cidrs": ["10.76.0.0/16"], "pod_cidrs": ["10.244.0.0/16"],
                    "reconcile_interval": "1h",
                    "allow_out": [{"proto": "tcp", "ports": [2379], "to": ["10.77.0.0/24"]}],
                }
            nodes[name] = Node(name, host, logfile, DaemonRun(host, d, cfg))
        lab.link(nodes["c"].host, attacker, "10.79.3", "fd00:79:3")
        servers.append(listen_tcp(nodes["c"].host, PORT))
        servers.append(nodes["a"].host.popen([sys.executable, "-c", RECEIVER,
                                              str(work / "a" / "hook.jsonl"), str(HOOK_PORT),
                                              "0"]))
        for n in nodes.values():
            n.daemon.start()
        assert all(wait_until(lambda n=n: '"cluster_synced"' in n.daemon.log(), 20)
                   for n in nodes.values()), [n.daemon.log()[-3000:] for n in nodes.values()]
        yield Cluster(etcd, nodes, attacker)
    finally:
        for n in nodes.values():
            n.daemon.stop()
        for s in servers:
            s.kill()
            s.wait()
        etcd.stop()
        lab.close()


def logs(cl: Cluster) -> str:
    return "\n".join(f"--- {n.name}\n{n.daemon.log()[-4000:]}" for n in cl.nodes.values())


def events(node: Node, name: str) -> list[dict[str, Any]]:
    return [e for e in node.daemon.events() if e.get("event") == name]


def hook_events(cl: Cluster, about: str, since: float) -> list[str]:
    """The cluster baseline events about node ``about`` raised from ``since`` on
    (epoch seconds), as A's chat hook received them."""
    path = cl.a.daemon.workdir / "hook.jsonl"
    if not path.exists():
        return []
    return [e["event"] for line in path.read_text().splitlines()
            for e in json.loads(line)["body"]["events"]
            if e["event"].startswith("baseline_") and e["target"] == about
            and e["at"] >= since]


def add_rule_b(cl: Cluster, port: int) -> int:
    """Add a rule by hand to B's baseline input chain; returns its handle."""
    cl.b.host.run("nft", "add", "rule", "inet", "kfwguard_baseline", "input",
                  "tcp", "dport", str(port), "accept")
    chain = json.loads(cl.b.host.nft_json("-a", "list", "chain", "inet",
                                          "kfwguard_baseline", "input"))
    return next(int(i["rule"]["handle"]) for i in chain["nftables"]
                if "rule" in i and f'"right": {port}' in json.dumps(i["rule"]["expr"]))


def delete_rule_b(cl: Cluster, handle: int) -> None:
    cl.b.host.run("nft", "delete", "rule", "inet", "kfwguard_baseline", "input",
                  "handle", str(handle))


class TestSharedBans:
    def test_ban_from_a_log_enforced_on_b_and_c(self, cluster: Cluster) -> None:
        """A failure line in node A's log puts the address in B's and C's kernel
        sets, and the attacker's TCP connection to C then fails."""
        attacker = cluster.attacker.ip4
        assert can_connect(cluster.attacker, cluster.c.host.addrs4[-1], PORT)
        cluster.a.fail_lines([attacker])
        assert wait_until(lambda: cluster.a.has(attacker)), logs(cluster)
        assert wait_until(lambda: cluster.b.has(attacker) and cluster.c.has(attacker),
                          15), logs(cluster)
        assert not can_connect(cluster.attacker, cluster.c.host.addrs4[-1], PORT)
        # Stored with its origin on C, and never published again by C.
        rows = cluster.c.control("GET", "/bans")
        assert [r["jail"] for r in rows if r["target"] == attacker] == ["peer:node-a"]
        assert cluster.keys("c") == []
        # Unban on the origin removes it everywhere.
        cluster.a.control("DELETE", f"/bans/{attacker}")
        assert wait_until(lambda: not cluster.b.has(attacker) and not cluster.c.has(attacker),
                          15), logs(cluster)
        assert can_connect(cluster.attacker, cluster.c.host.addrs4[-1], PORT)

    def test_expiry_propagates(self, cluster: Cluster) -> None:
        """A peer's ban carries its expiry: B's kernel element times out with it."""
        addr = "10.201.0.7"
        cluster.a.ban(addr, "4s")
        assert wait_until(lambda: cluster.b.has(addr), 15), logs(cluster)
        assert cluster.b.daemon.elements("ban_v4")[addr] <= 4
        assert wait_until(lambda: not cluster.b.has(addr), 15)

    def test_unban_cluster_from_any_node(self, cluster: Cluster) -> None:
        """`unban --cluster` asked on C lifts A's own ban and B's copy."""
        addr = "10.201.0.8"
        cluster.a.ban(addr)
        assert wait_until(lambda: cluster.b.has(addr) and cluster.c.has(addr), 15)
        r = cluster.c.cli("unban", "--cluster", addr)
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: not any(n.has(addr) for n in cluster.nodes.values()),
                          15), logs(cluster)
        assert wait_until(lambda: f"{PREFIX}/bans/node-a/{addr}" not in cluster.keys("a"))

    def test_hand_edited_baseline_shows_as_drift_on_a(self, cluster: Cluster) -> None:
        """A rule added by hand to B's baseline table shows B as drifted in
        `kfwguard cluster status` run on A."""
        assert wait_until(lambda: cluster.a.states().get("node-b") == "up", 15)
        cluster.b.host.run("nft", "add", "rule", "inet", "kfwguard_baseline", "input",
                           "tcp", "dport", "9999", "accept")
        try:
            assert wait_until(lambda: cluster.a.states().get("node-b") == "drifted", 15), \
                cluster.a.cli("cluster", "status").stdout
            table = cluster.a.cli("cluster", "status")
            assert table.returncode == 1 and "drifted" in table.stdout
        finally:
            handle = json.loads(cluster.b.host.nft_json(
                "-a", "list", "chain", "inet", "kfwguard_baseline", "input"))
            for item in handle["nftables"]:
                rule = item.get("rule")
                if rule and "9999" in json.dumps(rule["expr"]):
                    cluster.b.host.run("nft", "delete", "rule", "inet", "kfwguard_baseline",
                                       "input", "handle", str(rule["handle"]))
        assert wait_until(lambda: cluster.a.states().get("node-b") == "up", 15)

    def test_baseline_alert_fires_once_and_resolves(self, cluster: Cluster) -> None:
        """B's baseline edited by hand raises one baseline alert, announced by A
        (the first node by name), and one resolution when the edit is undone."""
        assert wait_until(lambda: cluster.a.states().get("node-b") == "up", 15)
        # Only what is raised from now on counts (an earlier edit of B's
        # baseline, the drift test's, may still be on its way to the hook).
        t0 = time.time()
        quiet = {n: len(events(cluster.nodes[n], "cluster_baseline_differs")) for n in "bc"}
        rule = add_rule_b(cluster, 9998)
        try:
            assert wait_until(lambda: hook_events(cluster, "node-b", t0)
                              == ["baseline_differs"], 30), logs(cluster)
        finally:
            delete_rule_b(cluster, rule)
        assert wait_until(lambda: hook_events(cluster, "node-b", t0)
                          == ["baseline_differs", "baseline_agrees"], 30), logs(cluster)
        assert wait_until(lambda: cluster.a.states().get("node-b") == "up", 15)
        assert ["baseline_differs", "baseline_agrees"] == \
            hook_events(cluster, "node-b", t0)  # once, not per heartbeat
        # B and C saw the same difference and announced nothing.
        assert quiet == {n: len(events(cluster.nodes[n], "cluster_baseline_differs"))
                         for n in "bc"}

    def test_metrics(self, cluster: Cluster) -> None:
        """B's /metrics says it is connected, counts peers' bans received and
        refused, and has observed propagation delays."""
        cluster.a.ban("10.207.0.1")
        assert wait_until(lambda: cluster.b.has("10.207.0.1"), 15)
        text = cluster.b.daemon.metrics()
        values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
                  if ln.startswith("kfwguard_cluster")}
        assert values["kfwguard_cluster_connected"] == 1
        assert values["kfwguard_cluster_bans_received_total"] >= 1
        assert values["kfwguard_cluster_propagation_seconds_count"] >= 1
        assert values['kfwguard_cluster_nodes{state="up"}'] >= 2

    def test_peer_ban_of_admin_cidr_refused(self, cluster: Cluster) -> None:
        """A peer's ban of B's admin CIDR is refused on B (and still enforced on C)."""
        addr = "10.66.0.5"
        cluster.a.ban(addr)
        assert wait_until(lambda: cluster.c.has(addr), 15), logs(cluster)
        assert wait_until(lambda: any(e.get("target") == addr
                                      for e in events(cluster.b, "peer_ban_refused")))
        assert not cluster.b.has(addr)

    def test_cluster_allowlist(self, cluster: Cluster) -> None:
        """An address on <prefix>/allow/ is lifted everywhere and not banned again."""
        addr = "10.202.0.9"
        cluster.a.ban(addr)
        assert wait_until(lambda: cluster.b.has(addr), 15)
        cluster.etcd.ctl("put", f"{PREFIX}/allow/10.202.0.0/24", "")
        try:
            assert wait_until(lambda: not any(n.has(addr) for n in cluster.nodes.values()),
                              15), logs(cluster)
            with pytest.raises(Exception, match="allowlist"):
                cluster.a.ban(addr)
        finally:
            cluster.etcd.ctl("del", f"{PREFIX}/allow/10.202.0.0/24")


class TestResilience:
    @pytest.mark.parametrize("path", ["gateway", "grpc"])
    def test_listing_in_pages_at_one_revision(self, cluster: Cluster, path: str) -> None:
        """A listing fetched in pages (through the JSON gateway, or over gRPC with
        the cluster extra) returns every key once, at the revision of its first
        page, even with writes landing between the pages; handed on page by
        page (a new node's listing), the pages hold the same keys."""
        need_path(path)
        code = f"""
import asyncio, json
from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import TLSFiles
async def main():
    c = EtcdClient({cluster.etcd.endpoints!r}, TLSFiles(**{cluster.etcd.tls()!r}))
    for i in range(50):
        await c.put(f"/pagetest/k{{i:03}}", str(i))
    async def between(key):
        await c.put(f"/pagetest/k{{key}}x", "new")  # lands between pages
        await c.delete("/pagetest/k049")
    if {path!r} == "grpc":
        from kfwguard.cluster.etcdgrpc import GrpcClient
        c.use_grpc, c._grpc = True, GrpcClient(c.tls, page=7)
        real = c._grpc._page
        async def page(kv, key, end, revision, timeout):
            out = await real(kv, key, end, revision, timeout)
            await between(key.hex())
            return out
        c._grpc._page = page
    else:
        c.use_grpc = False
        real = c._post
        async def post(ep, path, body, timeout):
            out = await real(ep, path, body, timeout)
            if path == "/v3/kv/range" and body.get("limit") == 7:
                await between(body["key"])
            return out
        c._post = post
    rev, kvs = await c.range_prefix("/pagetest/", page=7)
    # Handed on page by page (as a new node reads its listing), no writes now.
    if {path!r} == "grpc":
        c._grpc._page = real
    else:
        c._post = real
    pages = []
    async def on_page(p, first):
        pages.append([first, [bytes(k.key).decode() for k in p]])
    _, none = await c.range_prefix("/pagetest/", page=7, on_page=on_page)
    _, again = await c.range_prefix("/pagetest/", page=7)
    await c.delete("/pagetest/", prefix=True)
    await c.close()
    print(json.dumps(dict(keys=[kv.key for kv in kvs], pages=pages, none=len(none),
                          again=[kv.key for kv in again])))
asyncio.run(main())
"""
        r = json.loads(cluster.etcd.host.python(code).stdout)
        assert [f"/pagetest/k{i:03}" for i in range(50)] == r["keys"]
        # Streamed: the same keys as a plain listing, in pages, the first marked.
        assert [k for _, page in r["pages"] for k in page] == r["again"]
        assert len(r["pages"]) > 1 and [f for f, _ in r["pages"]] == [True] + [False] * (
            len(r["pages"]) - 1)
        assert r["none"] == 0

    @pytest.mark.parametrize("path", ["gateway", "grpc"])
    def test_publish_in_transactions_etcd_takes(self, cluster: Cluster, path: str) -> None:
        """A publish of more puts and deletes than one transaction may hold
        (etcd's default --max-txn-ops, 128) is split so that etcd takes every
        transaction (through the gateway, or over gRPC with the cluster extra),
        and a put on a revoked lease raises LeaseNotFound."""
        need_path(path)
        code = f"""
import asyncio, json, time
from kfwguard.cluster.etcd import EtcdFeed
from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import LeaseNotFound, TLSFiles
from kfwguard.cluster.feed import SharedBan
async def main():
    c = EtcdClient({cluster.etcd.endpoints!r}, TLSFiles(**{cluster.etcd.tls()!r}))
    c.use_grpc = None if {path!r} == "grpc" else False
    feed = EtcdFeed(c, "/txntest")
    now = time.time()
    old = [SharedBan("n", f"10.230.0.{{i}}", "sshd", "r", now, now + 3600, now)
           for i in range(1, 101)]
    await feed.publish("n", old, [])
    new = [SharedBan("n", f"10.230.1.{{i}}", "sshd", "r", now, now + 3600, now)
           for i in range(1, 101)]
    await feed.publish("n", new, [b.target for b in old])
    _, kvs = await c.range_prefix("/txntest/")
    lease = await c.lease_grant(60)
    await c.lease_revoke(lease)
    try:
        await c.txn([("/txntest/x", b"1", lease)])
        revoked = False
    except LeaseNotFound:
        revoked = True
    await c.delete("/txntest/", prefix=True)
    await c.close()
    print(json.dumps(dict(keys=sorted(kv.key for kv in kvs), revoked=revoked,
                          grpc=c._grpc is not None)))
asyncio.run(main())
"""
        r = json.loads(cluster.etcd.host.python(code).stdout.splitlines()[-1])
        assert sorted(f"/txntest/bans/n/10.230.1.{i}" for i in range(1, 101)) == r["keys"]
        assert r["revoked"]
        assert (path == "grpc") == r["grpc"]

    @pytest.mark.parametrize("path", ["gateway", "grpc"])
    def test_watch_in_order_and_compaction(self, cluster: Cluster, path: str) -> None:
        """A watch (through the JSON gateway, or over gRPC with the cluster extra)
        yields puts and deletes in revision order from its start revision, and
        ends with EtcdCompacted when that revision was compacted away."""
        need_path(path)
        code = f"""
import asyncio, json
from kfwguard.cluster.etcdclient import EtcdClient
from kfwguard.cluster.etcdtypes import EtcdCompacted, TLSFiles
async def main():
    c = EtcdClient({cluster.etcd.endpoints!r}, TLSFiles(**{cluster.etcd.tls()!r}))
    c.use_grpc = None if {path!r} == "grpc" else False
    rev = await c.put("/watchtest/a", "1")
    got = []
    async def follow():
        async for r, evs in c.watch("/watchtest/", rev):
            got.extend([e.kind, e.kv.key, e.kv.value.decode(), e.kv.mod_revision] for e in evs)
            if len(got) >= 3:
                return
    task = asyncio.create_task(follow())
    await c.put("/watchtest/b", "2")
    await c.delete("/watchtest/a")
    await asyncio.wait_for(task, 20)
    await c.compact(await c.put("/watchtest/c", "3"))
    try:
        async for _ in c.watch("/watchtest/", rev):
            break
        compacted = False
    except EtcdCompacted:
        compacted = True
    await c.delete("/watchtest/", prefix=True)
    await c.close()
    print(json.dumps(dict(rev=rev, got=got, compacted=compacted, grpc=c._grpc is not None)))
asyncio.run(main())
"""
        r = json.loads(cluster.etcd.host.python(code).stdout.splitlines()[-1])
        assert [["put", "/watchtest/a", "1"], ["put", "/watchtest/b", "2"],
                ["delete", "/watchtest/a", ""]] == [g[:3] for g in r["got"]]
        revs = [g[3] for g in r["got"]]  # other writers (heartbeats) share the revisions
        assert r["rev"] == revs[0] < revs[1] < revs[2]
        assert r["compacted"]
        assert (path == "grpc") == r["grpc"]

    def test_leader_killed_mid_burst(self, cluster: Cluster) -> None:
        """Kill the etcd leader in the middle of 1,000 bans on A: every one reaches
        etcd and B's kernel, and B applies each exactly once."""
        addrs = [f"10.210.{i // 250}.{i % 250 + 1}" for i in range(1000)]
        before = sum(e.get("count", 0) for e in events(cluster.b, "peer_bans"))
        leader = cluster.etcd.leader()
        cluster.a.fail_lines(addrs[:500])
        assert wait_until(lambda: len(cluster.keys("a")) > 0, 15)
        cluster.etcd.kill_member(leader)
        try:
            cluster.a.fail_lines(addrs[500:])
            assert wait_until(lambda: all(cluster.a.has(a) for a in addrs[-5:]), 15)
            want = {f"{PREFIX}/bans/node-a/{a}" for a in addrs}
            assert wait_until(lambda: want <= set(cluster.keys("a")), 60), logs(cluster)
            assert wait_until(lambda: set(addrs) <= set(cluster.b.daemon.elements("ban_v4")),
                              30), logs(cluster)
            applied = sum(e.get("count", 0) for e in events(cluster.b, "peer_bans")) - before
            assert applied == 1000
        finally:
            cluster.etcd.restart_member(leader)
            assert cluster.etcd.wait_healthy()

    def test_frozen_member_left_behind(self, cluster: Cluster) -> None:
        """SIGSTOP the member C follows: C moves to another one within seconds,
        resumes its watch after the last revision it saw (a ban made while it was
        stuck arrives, once, without a relist) and receives A's next ban."""
        ep = cluster.c.status()["endpoint"]
        idx = cluster.etcd.endpoints.index(ep)
        listings = len(events(cluster.c, "cluster_synced"))
        cluster.etcd.freeze(idx)
        try:
            stuck = "10.203.0.2"
            cluster.a.ban(stuck)  # while C's watch hangs on the frozen member
            assert wait_until(lambda: cluster.c.status()["endpoint"] != ep, 20), logs(cluster)
            addr = "10.203.0.1"
            cluster.a.ban(addr)
            assert wait_until(lambda: cluster.c.has(addr) and cluster.c.has(stuck), 30), \
                logs(cluster)
            assert listings == len(events(cluster.c, "cluster_synced"))  # resumed, not relisted
            assert 1 == sum(1 for e in events(cluster.c, "peer_bans")
                            if stuck in e.get("targets", []))
        finally:
            cluster.etcd.thaw(idx)

    def test_restart_catches_up_without_replaying(self, cluster: Cluster) -> None:
        """C stopped while A bans: on restart C enforces A's bans from the listing,
        as peers' bans, and publishes none of them as its own."""
        cluster.c.daemon.stop()
        # Its heartbeat lease runs out: A's status shows it missing.
        assert wait_until(lambda: cluster.a.states().get("node-c") == "missing", 20)
        addr = "10.204.0.1"
        cluster.a.ban(addr)
        assert wait_until(lambda: cluster.b.has(addr), 15)
        cluster.c.daemon.start()
        assert wait_until(lambda: cluster.c.has(addr), 20), logs(cluster)
        assert not any(e.get("target") == addr for e in events(cluster.c, "ban"))
        assert cluster.keys("c") == []
        assert wait_until(lambda: cluster.a.states().get("node-c") == "up", 20)

    def test_listing_asked_before_the_restore(self, cluster: Cluster) -> None:
        """A starting node asks etcd for the shared bans before it restores its
        own (etcd serves the listing while the rest of the start runs), and
        syncs from that listing after the restore: a ban A decided while B
        was down is enforced on B."""
        b = cluster.b.daemon
        b.stop()
        addr = "10.204.0.7"
        cluster.a.ban(addr)
        assert wait_until(lambda: cluster.c.has(addr), 15)
        b.start()
        assert wait_until(lambda: cluster.b.has(addr), 20), logs(cluster)
        assert wait_until(lambda: '"cluster_synced"' in b.log()[b.log_offset:], 20)
        names = [json.loads(line).get("event") for line in b.log()[b.log_offset:].splitlines()
                 if line.startswith("{")]
        assert names.index("cluster_listing_asked") < names.index("bans_restored")
        assert names.index("bans_restored") < names.index("cluster_synced")

    def test_listing_honours_allowlist_and_unban_requests(self, cluster: Cluster) -> None:
        """A starting node enforces its listing page by page as it is read:
        a listed ban on the cluster allowlist (``allow/`` lists before
        ``bans/``) never reaches its kernel, a listed ban an unban request
        (``unban/``, listed after the bans) covers is lifted once the
        listing is whole, and the other listed bans are enforced."""
        c = cluster.c.daemon
        c.stop()
        now = time.time()

        def value(banned_at: float) -> str:
            return json.dumps({"jail": "sshd", "reason": "test", "banned_at": banned_at,
                               "expires_at": now + 3600, "decided_at": banned_at})
        keys = {f"{PREFIX}/allow/10.205.0.0/24": "",
                f"{PREFIX}/bans/node-x/10.205.0.1": value(now),
                f"{PREFIX}/bans/node-x/10.206.0.1": value(now),
                f"{PREFIX}/bans/node-x/10.206.0.2": value(now - 10),
                f"{PREFIX}/unban/10.206.0.2": json.dumps({"by": "node-b", "at": now})}
        for k, v in keys.items():
            cluster.etcd.ctl("put", k, v)
        try:
            c.start()
            assert wait_until(lambda: '"cluster_synced"' in c.log()[c.log_offset:], 30), \
                logs(cluster)
            assert cluster.c.has("10.206.0.1")
            assert not cluster.c.has("10.205.0.1")
            assert wait_until(lambda: not cluster.c.has("10.206.0.2"), 10), logs(cluster)
            # lifted, not never taken: the unban request was read and acted on
            assert any(e.get("target") == "10.206.0.2"
                       for e in events(cluster.c, "cluster_unban")), logs(cluster)
        finally:
            for k in keys:
                cluster.etcd.ctl("del", k)

    def test_outage_and_restart_lose_nothing(self, cluster: Cluster) -> None:
        """With every etcd member down, A's ban is in A's kernel at once; A is then
        restarted, etcd comes back, and the ban from A's outbox reaches B."""
        addr = "10.206.0.1"
        for i in range(len(cluster.etcd.members)):
            cluster.etcd.kill_member(i)
        try:
            cluster.a.ban(addr)
            assert cluster.a.has(addr)  # local first: no wait for etcd
            cluster.a.daemon.stop()
            cluster.a.daemon.start()
        finally:
            for i in range(len(cluster.etcd.members)):
                cluster.etcd.restart_member(i)
            assert cluster.etcd.wait_healthy(), cluster.etcd.logs()
        assert wait_until(lambda: cluster.b.has(addr), 30), logs(cluster)
        assert f"{PREFIX}/bans/node-a/{addr}" in cluster.keys("a")

    def test_lost_outbox_reconciled_from_state(self, cluster: Cluster) -> None:
        """A's outbox lost while etcd was down (a power cut): at the next start
        A's reconcile still sends its stored bans, and B enforces them."""
        addr = "10.206.0.2"
        for i in range(len(cluster.etcd.members)):
            cluster.etcd.kill_member(i)
        try:
            cluster.a.ban(addr)
            cluster.a.daemon.stop()
            for f in (cluster.a.daemon.workdir / "state").glob("cluster.db*"):
                f.unlink()
            cluster.a.daemon.start()
        finally:
            for i in range(len(cluster.etcd.members)):
                cluster.etcd.restart_member(i)
            assert cluster.etcd.wait_healthy(), cluster.etcd.logs()
        assert wait_until(lambda: cluster.b.has(addr), 30), logs(cluster)

    def test_compaction_relists(self, cluster: Cluster) -> None:
        """B cut off from etcd while A bans one address and lifts another, history
        compacted: B relists, adds the new ban and drops the lifted one."""
        old, new = "10.205.0.1", "10.205.0.2"
        cluster.a.ban(old)
        assert wait_until(lambda: cluster.b.has(old), 15)
        dev = [ln.split(":")[1].strip().split("@")[0] for ln in
               cluster.b.host.run("ip", "-o", "link").stdout.splitlines() if "lo:" not in ln]
        lost = len(events(cluster.b, "cluster_watch_lost"))
        for d in dev:
            cluster.b.host.run("ip", "link", "set", d, "down")
        try:
            # B's probe notices first: its watch is gone, not merely slow.
            assert wait_until(lambda: len(events(cluster.b, "cluster_watch_lost")) > lost, 20)
            cluster.a.ban(new)
            cluster.a.control("DELETE", f"/bans/{old}")
            for i in range(20):
                cluster.etcd.ctl("put", f"{PREFIX}/scratch", str(i))
            cluster.etcd.ctl("compact", str(cluster.etcd.revision()))
        finally:
            for d in dev:
                cluster.b.host.run("ip", "link", "set", d, "up")
            cluster.b.host.run("ip", "route", "replace", "10.77.0.0/24", "via",
                               cluster.b.host.addrs4[0].rsplit(".", 1)[0] + ".1")
        assert wait_until(lambda: cluster.b.has(new) and not cluster.b.has(old), 30), \
            logs(cluster)
        assert events(cluster.b, "cluster_history_compacted")
