"""The baseline policy with real packets, in kfwtest-* network namespaces.

Topology (each link its own /24 and /64; the node routes between them):

    admin 10.9.1.2 ── node ── 10.9.2.2 (+ .3) cluster node
                      │  │
      outside 10.9.3.2┘  └ 10.244.1.2 pod

Every policy is applied by the real CLI or library inside the node namespace;
nothing here touches the host's own ruleset.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.netns import Host, Lab

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
TABLE = "kfwguard_baseline"
T = TypeVar("T")
# generous, so a loaded CI machine cannot turn a slow "allowed" flow into "dropped"
PROBE_TIMEOUT = 1.5

PROBE = r'''
import json, random, socket, struct, sys, threading, time
checks, T = json.loads(sys.argv[1]), float(sys.argv[2])

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def tcp(a, p, src):
    s = socket.socket(fam(a), socket.SOCK_STREAM)
    s.settimeout(T)
    try:
        if src: s.bind((src, 0))
        s.connect((a, p))
        return True
    except OSError:
        return False
    finally:
        s.close()

def udp(a, p, src):
    s = socket.socket(fam(a), socket.SOCK_DGRAM)
    s.settimeout(T)
    try:
        if src: s.bind((src, 0))
        s.sendto(b"kfw", (a, p))
        return s.recvfrom(64)[0] == b"kfw"
    except OSError:
        return False
    finally:
        s.close()

def icmp(a, p, src):
    v6 = ":" in a
    s = socket.socket(fam(a), socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = random.randrange(1, 65535)
    msg = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"kfwguard"
    if not v6:  # the kernel fills in ICMPv6 checksums, not ICMP ones
        msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    end = time.monotonic() + T
    try:
        if src: s.bind((src, 0))
        s.sendto(msg, (a, 0))
        while time.monotonic() < end:
            s.settimeout(max(end - time.monotonic(), 0.01))
            data, peer = s.recvfrom(2048)
            if not v6:
                data = data[(data[0] & 15) * 4:]
            typ, _, _, rid, _ = struct.unpack("!BBHHH", data[:8])
            if typ == (129 if v6 else 0) and rid == ident:
                return True
    except OSError:
        pass
    finally:
        s.close()
    return False

results = [None] * len(checks)
def run(i, c):
    results[i] = {"tcp": tcp, "udp": udp, "icmp": icmp}[c[0]](c[1], c[2], c[3])
threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(checks)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
'''

SERVER = r'''
import json, selectors, socket, sys
sel = selectors.DefaultSelector()
for kind, ports in (("tcp", json.loads(sys.argv[1])), ("udp", json.loads(sys.argv[2]))):
    for p in ports:
        s = socket.socket(socket.AF_INET6,
                          socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", p))
        if kind == "tcp":
            s.listen(64)
        sel.register(s, selectors.EVENT_READ, kind)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "tcp":
            key.fileobj.accept()[0].close()
        else:
            data, peer = key.fileobj.recvfrom(64)
            key.fileobj.sendto(data, peer)
'''


def wait_for(get: Callable[[], T], done: Callable[[T], bool], limit: float = 10.0) -> T:
    """Poll ``get()`` until ``done(value)`` or ``limit`` seconds pass; return the last value."""
    end = time.monotonic() + limit
    value = get()
    while not done(value) and time.monotonic() < end:
        time.sleep(0.05)
        value = get()
    return value


@dataclass
class Net:
    lab: Lab
    node: Host
    admin: Host
    cluster: Host
    outside: Host
    pod: Host
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def serve(self, host: Host, tcp: Sequence[int], udp: Sequence[int] = ()) -> None:
        proc = host.popen([sys.executable, "-c", SERVER, json.dumps(list(tcp)),
                           json.dumps(list(udp))],
                          stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert b"ready\n" == proc.stdout.readline()


def _dev_of(host: Host, addr: str) -> str:
    out = host.run("ip", "-o", "addr", "show", "to", addr).stdout
    return out.split()[1]


@pytest.fixture(autouse=True)
def _importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Subprocesses in the namespaces run `python -m kfwguard…` from this checkout.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


@pytest.fixture
def net(lab: Lab) -> Iterator[Net]:
    """The five-host topology, with the node routing between its links."""
    hosts = {r: lab.host(r) for r in ("node", "admin", "cluster", "outside", "pod")}
    node = hosts["node"]
    lab.link(node, hosts["admin"], "10.9.1", "fd00:9:1")
    lab.link(node, hosts["cluster"], "10.9.2", "fd00:9:2")
    lab.link(node, hosts["outside"], "10.9.3", "fd00:9:3")
    lab.link(node, hosts["pod"], "10.244.1", "fd00:244:0:1")
    lab.router(node)
    # the pod side is the CNI's bridge, as flannel names it (IPv6 addresses kept)
    node.run("sysctl", "-qw", "net.ipv6.conf.all.keep_addr_on_down=1")
    pod_dev = _dev_of(node, "10.244.1.1")
    node.run("ip", "link", "set", pod_dev, "down")
    node.run("ip", "link", "set", pod_dev, "name", "cni0")
    node.run("ip", "link", "set", "cni0", "up")
    cluster = hosts["cluster"]
    dev = _dev_of(cluster, "10.9.2.2")
    cluster.run("ip", "addr", "add", "10.9.2.3/24", "dev", dev)
    cluster.run("ip", "-6", "addr", "add", "fd00:9:2::3/64", "dev", dev, "nodad")
    cluster.addrs4.append("10.9.2.3")
    cluster.addrs6.append("fd00:9:2::3")
    outside = hosts["outside"]
    for dst4, dst6 in (("10.244.0.0/16", "fd00:244::/48"), ("10.9.2.0/24", "fd00:9:2::/64")):
        outside.run("ip", "route", "add", dst4, "via", "10.9.3.1")
        outside.run("ip", "-6", "route", "add", dst6, "via", "fd00:9:3::1")
    cluster.run("ip", "route", "add", "10.9.3.0/24", "via", "10.9.2.1")
    cluster.run("ip", "-6", "route", "add", "fd00:9:3::/64", "via", "fd00:9:2::1")
    hosts["pod"].run("ip", "route", "add", "default", "via", "10.244.1.1")
    hosts["pod"].run("ip", "-6", "route", "add", "default", "via", "fd00:244:0:1::1")
    # Link-local addresses are tentative until DAD ends; until then the first
    # IPv6 packets on a link can be lost and a flow would look dropped.
    for h in hosts.values():
        assert "tentative" not in wait_for(
            lambda h=h: h.run("ip", "-6", "addr").stdout,  # type: ignore[misc]
            lambda v: "tentative" not in v)
    n = Net(lab, node, hosts["admin"], cluster, outside, hosts["pod"])
    try:
        yield n
    finally:
        for p in n.procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def node(lab: Lab) -> Host:
    """A lone node namespace, for tests that need no traffic."""
    return lab.host("node")


def cli(host: Host, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return host.run(sys.executable, "-m", "kfwguard.cli.baseline", *args, check=check)


def write_config(tmp_path: Path, body: str, name: str = "kfwguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"state_dir: {tmp_path / 'state'}\nbaseline:\n{body}")
    return path


NETS = """\
  admin_cidrs: [10.9.1.0/24, "fd00:9:1::/64"]
  failsafe_ports: [tcp/22]
  cluster_cidrs: [10.9.2.0/24, "fd00:9:2::/64"]
  pod_cidrs: [10.244.0.0/16, "fd00:244::/48"]
  service_cidrs: [10.96.0.0/12, "fd00:96::/108"]
  allow_out: [{proto: tcp, ports: [443], to: [10.9.3.2/32, "fd00:9:3::2/128"]}]
  dns_servers: [10.9.3.2, "fd00:9:3::2"]
  ntp_servers: []
"""

WORKER = NETS + """\
  role: worker
  cni: flannel
  allow_in: [{proto: tcp, ports: [8443], from: [10.9.3.0/24, "fd00:9:3::/64"]}]
"""

CONTROL_PLANE = NETS + """\
  role: control-plane
  cni: calico
  control_plane_cidrs: [10.9.2.2/32, "fd00:9:2::2/128"]
  allow_in: [{proto: tcp, ports: ["8443-8444"], from: [10.9.3.0/24, "fd00:9:3::/64"]}]
"""

# (source, proto, destination, port, allowed, source address index on the source host)
Flow = tuple[str, str, str, int, bool, int]

WORKER_FLOWS: list[Flow] = [
    ("admin", "tcp", "node", 22, True, 0),
    ("admin", "tcp", "node", 30080, True, 0),
    ("admin", "icmp", "node", 0, True, 0),
    ("admin", "tcp", "node", 10250, False, 0),
    ("admin", "tcp", "node", 9999, False, 0),
    ("admin", "udp", "node", 8472, False, 0),
    ("cluster", "tcp", "node", 10250, True, 0),
    ("cluster", "udp", "node", 8472, True, 0),
    ("cluster", "icmp", "node", 0, True, 0),
    ("cluster", "tcp", "node", 22, False, 0),
    ("cluster", "tcp", "node", 2379, False, 0),
    ("cluster", "tcp", "node", 9999, False, 0),
    ("cluster", "udp", "node", 5555, False, 0),
    ("outside", "tcp", "node", 30080, True, 0),
    ("outside", "udp", "node", 30080, True, 0),
    ("outside", "tcp", "node", 8443, True, 0),
    ("outside", "tcp", "node", 10256, True, 0),
    ("outside", "icmp", "node", 0, True, 0),
    ("outside", "tcp", "node", 22, False, 0),
    ("outside", "tcp", "node", 10250, False, 0),
    ("outside", "udp", "node", 8472, False, 0),
    ("outside", "udp", "node", 5555, False, 0),
    # egress from the node
    ("node", "tcp", "outside", 443, True, 0),
    ("node", "udp", "outside", 53, True, 0),
    ("node", "icmp", "outside", 0, True, 0),
    ("node", "tcp", "outside", 80, False, 0),
    ("node", "udp", "outside", 5555, False, 0),
    ("node", "tcp", "cluster", 10250, True, 0),
    ("node", "tcp", "cluster", 7777, False, 0),
    ("node", "tcp", "pod", 7777, True, 0),
    ("node", "tcp", "admin", 7777, False, 0),
    # forwarded through the node: pods reach out, nothing reaches pods untranslated
    ("outside", "tcp", "pod", 7777, False, 0),
    ("pod", "tcp", "outside", 80, True, 0),
    ("outside", "tcp", "cluster", 7777, False, 0),
]

CONTROL_PLANE_FLOWS: list[Flow] = [
    ("admin", "tcp", "node", 22, True, 0),
    ("admin", "tcp", "node", 6443, True, 0),
    ("admin", "tcp", "node", 2379, False, 0),
    ("admin", "tcp", "node", 10257, False, 0),
    ("cluster", "tcp", "node", 2379, True, 0),
    ("cluster", "tcp", "node", 10250, True, 0),
    ("cluster", "tcp", "node", 10257, False, 0),
    ("cluster", "tcp", "node", 6443, True, 0),
    ("cluster", "tcp", "node", 179, True, 0),
    ("cluster", "udp", "node", 4789, True, 0),
    ("cluster", "icmp", "node", 0, True, 0),
    ("cluster", "tcp", "node", 30080, False, 0),
    ("cluster", "tcp", "node", 22, False, 0),
    # a cluster node that is not a control-plane node: kubelet yes, etcd no
    ("cluster", "tcp", "node", 10250, True, 1),
    ("cluster", "tcp", "node", 2379, False, 1),
    ("outside", "tcp", "node", 6443, False, 0),
    ("outside", "tcp", "node", 8443, True, 0),
    ("outside", "icmp", "node", 0, True, 0),
    ("outside", "tcp", "node", 2379, False, 0),
    ("outside", "tcp", "node", 10250, False, 0),
    ("outside", "tcp", "node", 10257, False, 0),
    ("outside", "tcp", "node", 179, False, 0),
    ("outside", "tcp", "node", 30080, False, 0),
    ("outside", "tcp", "node", 10256, False, 0),
    ("node", "tcp", "outside", 443, True, 0),
    ("node", "udp", "outside", 53, True, 0),
    ("node", "tcp", "outside", 80, False, 0),
    ("node", "tcp", "cluster", 7777, False, 0),
    ("node", "tcp", "cluster", 2379, True, 0),
]


def start_servers(net: Net) -> None:
    net.serve(net.node, [22, 179, 2379, 6443, 8443, 9999, 10250, 10256, 10257, 30080],
              [4789, 5555, 8472, 30080])
    net.serve(net.outside, [80, 443, 7777], [53, 5555])
    net.serve(net.cluster, [7777, 2379, 10250])
    for h in (net.admin, net.pod):
        net.serve(h, [7777])


def run_flows(net: Net, flows: list[Flow]) -> dict[str, bool]:
    """Try every flow over IPv4 and IPv6 at once; return {description: got through}."""
    by_src: dict[str, list[tuple[str, list[object]]]] = {}
    for src, proto, dst, port, _, idx in flows:
        for fam in ("4", "6"):
            s, d = getattr(net, src), getattr(net, dst)
            # hosts with several addresses would pick a source by themselves
            saddr = None if src == "node" else (s.addrs4 if fam == "4" else s.addrs6)[idx]
            # the node is reached on the address of the link the source sits on
            daddr = (_near(d, s, fam) if dst == "node" else
                     (d.ip4 if fam == "4" else d.ip6))
            desc = f"{src}{'[' + str(idx) + ']' if idx else ''} -> {dst} {proto}/{port} ipv{fam}"
            by_src.setdefault(src, []).append((desc, [proto, daddr, port, saddr]))

    def probe(src: str) -> list[tuple[str, bool]]:
        items = by_src[src]
        out = getattr(net, src).run(sys.executable, "-c", PROBE,
                                    json.dumps([c for _, c in items]), str(PROBE_TIMEOUT)).stdout
        return list(zip([d for d, _ in items], json.loads(out), strict=True))

    with ThreadPoolExecutor(len(by_src)) as pool:
        return {d: ok for part in pool.map(probe, by_src) for d, ok in part}


def _near(node: Host, src: Host, fam: str) -> str:
    """The node's address on the link it shares with ``src``."""
    mine = src.addrs4[0] if fam == "4" else src.addrs6[0]
    prefix = mine.rsplit(".", 1)[0] if fam == "4" else mine.rsplit("::", 1)[0]
    return next(a for a in (node.addrs4 if fam == "4" else node.addrs6) if a.startswith(prefix))


def expected(flows: list[Flow]) -> dict[str, bool]:
    out = {}
    for src, proto, dst, port, allowed, idx in flows:
        for fam in ("4", "6"):
            desc = f"{src}{'[' + str(idx) + ']' if idx else ''} -> {dst} {proto}/{port} ipv{fam}"
            out[desc] = allowed
    return out


def flush_neighbours(net: Net) -> None:
    # Make every later IPv6 flow resolve its neighbour afresh through the policy.
    for h in (net.node, net.admin, net.cluster, net.outside, net.pod):
        h.run("ip", "-6", "neigh", "flush", "all")
        h.run("ip", "-4", "neigh", "flush", "all")


def listing(host: Host) -> str | None:
    proc = host.run("nft", "list", "table", "inet", TABLE, check=False)
    if proc.returncode != 0:
        return None
    return re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", proc.stdout)


class TestTrafficMatrix:
    @pytest.mark.parametrize(("body", "flows"), [(WORKER, WORKER_FLOWS),
                                                 (CONTROL_PLANE, CONTROL_PLANE_FLOWS)],
                             ids=["worker-flannel", "control-plane-calico"])
    def test_flows_follow_policy(self, net: Net, tmp_path: Path, body: str,
                                 flows: list[Flow]) -> None:
        """Each TCP/UDP/ICMP flow in, out and through the node, v4 and v6, passes or not as
        the role's policy says; every flow passed before the policy, and ND keeps working."""
        start_servers(net)
        before = run_flows(net, flows)
        assert {d: True for d in before} == before
        cfg = write_config(tmp_path, body)
        applied = cli(net.node, "apply", "-c", str(cfg))
        assert 0 == applied.returncode, applied.stderr
        flush_neighbours(net)
        assert expected(flows) == run_flows(net, flows)
        counters = net.node.run("nft", "list", "counter", "inet", TABLE, "dropped_input").stdout
        assert not re.search(r"packets 0 ", counters)


class TestRenderedScript:
    def test_nft_accepts_every_role_and_cni(self, node: Host) -> None:
        """nft (dry run, in a namespace) accepts the script for every role x CNI, and the
        kernel's listing of it parses back (rollback scripts are made of listings)."""
        code = """
from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline import render
from kfwguard.firewall.nft import Nft
nft = Nft()
for role in ("worker", "control-plane"):
    for cni in ("flannel", "calico", "cilium", "none"):
        cfg = BaselineConfig.model_validate({"role": role, "cni": cni,
            "admin_cidrs": ["192.0.2.0/24", "2001:db8::/64"],
            "cluster_cidrs": ["10.0.0.0/16"], "pod_cidrs": ["10.244.0.0/16", "fd00::/48"],
            "control_plane_cidrs": ["10.0.0.5/32", "fd00:1::5/128"],
            "service_cidrs": ["10.96.0.0/12", "fd00:96::/108"],
            "dns_servers": ["10.0.0.2", "fd00:1::2"], "ntp_servers": ["10.0.0.3"],
            "nodeports": {"enabled": True, "from": ["0.0.0.0/0", "::/0"]},
            "allow_out": [{"proto": "udp", "ports": [1, "2-3"], "to": ["::/0"]}]})
        nft.check(render(cfg))
        # the listing must parse back: it is what a rollback script is made of
        nft.run(render(cfg))
        nft.check(nft.run("list table inet kfwguard_baseline"))
print("ok")
"""
        assert "ok" == node.python(code).stdout.strip()


ENFORCER = """
import json, sys
from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline import BaselineEnforcer
from kfwguard.firewall.nft import Nft
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
cfg = BaselineConfig.model_validate(json.loads(sys.argv[1]))
"""

POLICY = {"admin_cidrs": ["10.9.1.0/24"], "cluster_cidrs": ["10.9.2.0/24"],
          "pod_cidrs": ["10.244.0.0/16"], "reconcile_interval": "0.2s"}


class TestBaselineEnforcer:
    def test_check_drift_names_and_heals(self, node: Host) -> None:
        """A deleted table, a flushed chain and an edited rule are each reported and put
        back; other tables (ban table, iptables-nft filter) are left exactly as they were."""
        node.nft("""table inet kfwguard {
    set ban_v4 { type ipv4_addr; elements = { 192.0.2.9 }; }
}
table ip filter {
    chain INPUT {
        type filter hook input priority 0; policy accept;
        tcp dport 4 accept
    }
}
""")
        def others() -> tuple[str, str]:
            return (node.run("nft", "list", "table", "inet", "kfwguard").stdout,
                    node.run("nft", "list", "table", "ip", "filter").stdout)

        before = others()
        code = ENFORCER + f"""
import subprocess
def nft(cmd):
    subprocess.run(["nft", cmd], check=True)
e = BaselineEnforcer(cfg, Nft())
out = {{"before": e.check_drift()}}
e.apply()
out["clean"] = e.check_drift()
for name, cmd in (("deleted", "delete table inet {TABLE}"),
                  ("flushed", "flush chain inet {TABLE} input"),
                  ("edited", "add rule inet {TABLE} output tcp dport 9 accept"),
                  ("policy", "chain inet {TABLE} forward {{ policy accept; }}")):
    nft(cmd)
    out[name] = e.check_drift()
    e.apply()
    out[name + " healed"] = e.check_drift()
print(json.dumps(out))
"""
        out = json.loads(node.run(sys.executable, "-c", code, json.dumps(POLICY)).stdout)
        assert {
            "before": f"baseline table inet {TABLE} has not been applied yet",
            "clean": None,
            "deleted": f"table inet {TABLE} was deleted", "deleted healed": None,
            "flushed": "chain input was flushed", "flushed healed": None,
            "edited": "rules of chain output were edited", "edited healed": None,
            "policy": "chain forward was redefined (hook, priority or policy)",
            "policy healed": None,
        } == out
        assert before == others()

    def test_run_loop_heals_and_counts(self, node: Host) -> None:
        """The enforcer loop puts back a deleted table and a flushed chain by itself,
        calls on_drift and counts each drift."""
        code = ENFORCER + """
import asyncio
def on_drift(reason):
    print("DRIFT", e.drift_count, reason, flush=True)
e = BaselineEnforcer(cfg, Nft(), on_drift=on_drift)
async def main():
    task = asyncio.create_task(e.run())
    while e._expected is None:
        await asyncio.sleep(0.05)
    print("READY", flush=True)
    await task
asyncio.run(main())
"""
        proc = node.popen([sys.executable, "-c", code, json.dumps(POLICY)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            assert "READY" == proc.stdout.readline().strip()
            applied = listing(node)
            node.run("nft", "delete", "table", "inet", TABLE)
            assert (f"DRIFT 1 it had drifted (table inet {TABLE} was deleted) and was put back"
                    == proc.stdout.readline().strip())
            assert applied == wait_for(lambda: listing(node), lambda v: v == applied)
            node.run("nft", "flush", "chain", "inet", TABLE, "input")
            assert ("DRIFT 2 it had drifted (chain input was flushed) and was put back"
                    == proc.stdout.readline().strip())
            assert applied == wait_for(lambda: listing(node), lambda v: v == applied)
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()




OLD = f"""table inet {TABLE} {{
    chain input {{
        type filter hook input priority 10; policy accept;
        tcp dport 1234 counter accept
    }}
}}
"""
SIMPLE = """\
  admin_cidrs: [10.9.1.0/24]
  cluster_cidrs: [10.9.2.0/24]
  pod_cidrs: [10.244.0.0/16]
"""


def start_confirmed(node: Host, cfg: Path, within: str) -> subprocess.Popen[str]:
    """Start a commit-confirmed apply and return once it says how to confirm."""
    proc = node.popen([sys.executable, "-m", "kfwguard.cli.baseline", "apply", "-c", str(cfg),
                       "--confirm-within", within], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    assert "kfwguard baseline confirm -c" in lines[2], lines
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


class TestCommitConfirmed:
    def test_unconfirmed_rolls_back_to_previous_table(self, node: Host, tmp_path: Path) -> None:
        """Without confirm, the previous table comes back by itself when the deadline passes."""
        node.nft(OLD)
        before = listing(node)
        result = cli(node, "apply", "-c", str(write_config(tmp_path, SIMPLE)),
                     "--confirm-within", "1s")
        assert 3 == result.returncode
        assert "rolled back: the deadline passed" in result.stdout
        assert before == listing(node)

    def test_unconfirmed_removes_new_table(self, node: Host, tmp_path: Path) -> None:
        """When there was no baseline table before, rolling back deletes it again."""
        result = cli(node, "apply", "-c", str(write_config(tmp_path, SIMPLE)),
                     "--confirm-within", "1s")
        assert 3 == result.returncode
        assert listing(node) is None

    def test_confirmed_stays(self, node: Host, tmp_path: Path) -> None:
        """confirm, run from another shell (here the host's own namespace), keeps the policy."""
        cfg = write_config(tmp_path, SIMPLE)
        proc = start_confirmed(node, cfg, "60s")
        confirmed = subprocess.run(
            [sys.executable, "-m", "kfwguard.cli.baseline", "confirm", "-c", str(cfg)],
            capture_output=True, text=True, timeout=30, check=False)
        assert (0, "") == (confirmed.returncode, confirmed.stderr)
        code, out = finish(proc)
        assert 0 == code
        assert "confirmed" in out
        assert 0 == cli(node, "diff", "-c", str(cfg)).returncode
        assert not (tmp_path / "state" / "baseline.pending.json").exists()

    @pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
    def test_signal_rolls_back(self, node: Host, tmp_path: Path, sig: signal.Signals) -> None:
        """A hang-up (dropped SSH session), Ctrl-C or SIGTERM rolls back at once."""
        node.nft(OLD)
        before = listing(node)
        proc = start_confirmed(node, write_config(tmp_path, SIMPLE), "60s")
        assert before != listing(node)
        proc.send_signal(sig)
        code, out = finish(proc)
        assert 3 == code
        assert f"rolled back: got {sig.name}" in out
        assert before == listing(node)

    def test_kill9_still_rolls_back(self, node: Host, tmp_path: Path) -> None:
        """kill -9 of the waiting apply cannot keep the policy: the rollback armed outside
        it (a detached watchdog here, systemd not being PID 1) restores the old table."""
        node.nft(OLD)
        before = listing(node)
        proc = start_confirmed(node, write_config(tmp_path, SIMPLE), "2s")
        assert before != listing(node)
        proc.kill()
        finish(proc)
        assert before == wait_for(lambda: listing(node), lambda v: v == before, limit=15)
        path = tmp_path / "state" / "baseline.outcome.json"
        assert wait_for(path.exists, bool, limit=10)
        outcome = json.loads(path.read_text())
        assert "rolled back" == outcome["outcome"]
        assert "watchdog" in outcome["reason"]

    def test_kill9_then_confirm_keeps_policy(self, node: Host, tmp_path: Path) -> None:
        """After kill -9 of the waiting apply, confirm is answered by the watchdog and
        the policy stays past the deadline."""
        node.nft(OLD)
        cfg = write_config(tmp_path, SIMPLE)
        proc = start_confirmed(node, cfg, "3s")
        applied = listing(node)
        proc.kill()
        finish(proc)
        confirmed = cli(node, "confirm", "-c", str(cfg))
        assert (0, "") == (confirmed.returncode, confirmed.stderr)
        pending = tmp_path / "state" / "baseline.pending.json"
        assert wait_for(lambda: pending.exists(), lambda v: not v, limit=10) is False
        assert not list((tmp_path / "state").glob("baseline.rollback-*"))
        assert applied == listing(node)
        assert 0 == cli(node, "diff", "-c", str(cfg)).returncode

    @pytest.mark.parametrize(("client", "force", "code"), [
        ("10.9.3.7", False, 2), ("10.9.3.7", True, 0), ("10.9.1.7", False, 0)])
    def test_ssh_session_guard(self, node: Host, tmp_path: Path, client: str, force: bool,
                               code: int) -> None:
        """An apply from an SSH session whose client could not reconnect under the new
        policy is refused (nothing applied) unless --force; from admin_cidrs it applies."""
        cfg = write_config(tmp_path, SIMPLE)
        result = node.run("env", f"SSH_CONNECTION={client} 50123 10.9.1.1 22", sys.executable,
                          "-m", "kfwguard.cli.baseline", "apply", "-c", str(cfg),
                          *(["--force"] if force else []), check=False)
        assert code == result.returncode, result.stderr
        assert (listing(node) is None) == (code != 0)
        if code == 2:
            assert f"comes from {client} to port 22" in result.stderr
        if force:
            assert "warning (--force)" in result.stderr

    def test_rejected_policy_leaves_live_untouched(self, node: Host, tmp_path: Path) -> None:
        """A script nft refuses changes neither the live table nor the saved rollback file."""
        cfg = write_config(tmp_path, SIMPLE)
        assert 0 == cli(node, "apply", "-c", str(cfg)).returncode
        before = listing(node)
        saved = (tmp_path / "state" / "baseline.previous.nft").read_text()
        code = f"""
import sys
from pathlib import Path
from kfwguard.config import load_config
from kfwguard.firewall import baseline as bl
from kfwguard.firewall.nft import Nft, NftError
cfg = load_config({str(cfg)!r})
bad = bl.render(cfg.baseline).replace("tcp dport 10256 accept", "tcp dport 10256 acept")
try:
    bl.apply(Nft(), cfg.baseline.table, bad, cfg.state_dir)
except NftError as exc:
    print("refused:", exc)
"""
        out = node.python(code).stdout
        assert out.startswith("refused:"), out
        assert before == listing(node)
        assert saved == (tmp_path / "state" / "baseline.previous.nft").read_text()

    def test_no_admin_access_refused_unless_failsafe_off(self, node: Host,
                                                         tmp_path: Path) -> None:
        """No admin_cidrs with the default failsafe is refused (nothing applied);
        failsafe_ports: [] applies."""
        nets = "  cluster_cidrs: [10.9.2.0/24]\n  pod_cidrs: [10.244.0.0/16]\n"
        refused = cli(node, "apply", "-c", str(write_config(tmp_path, nets, "a.yaml")))
        assert 2 == refused.returncode
        assert "failsafe_ports: []" in refused.stderr
        assert listing(node) is None
        off = cli(node, "apply", "-c",
                  str(write_config(tmp_path, nets + "  failsafe_ports: []\n", "b.yaml")))
        assert 0 == off.returncode, off.stderr
        assert listing(node) is not None


class TestDiffAndRollback:
    def test_diff_empty_after_apply_and_shows_edits(self, node: Host, tmp_path: Path) -> None:
        """diff is empty right after apply and shows a rule someone added by hand."""
        cfg = write_config(tmp_path, SIMPLE)
        absent = cli(node, "diff", "-c", str(cfg))
        assert 1 == absent.returncode and "(absent)" in absent.stdout
        assert 0 == cli(node, "apply", "-c", str(cfg)).returncode
        # a dropped packet moves a counter; the diff must not care
        node.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        node.run("ip", "addr", "add", "10.99.0.1/24", "dev", "d0")
        node.run("ip", "link", "set", "d0", "up")
        node.python("import socket\ntry:\n socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    ".sendto(b'x', ('10.99.0.2', 9))\nexcept OSError:\n pass\n")
        assert "packets 0 " not in node.run("nft", "list", "counter", "inet", TABLE,
                                            "dropped_output").stdout
        clean = cli(node, "diff", "-c", str(cfg))
        assert (0, "") == (clean.returncode, clean.stdout)
        node.run("nft", "add", "rule", "inet", TABLE, "input", "tcp", "dport", "9", "accept")
        edited = cli(node, "diff", "-c", str(cfg))
        assert 1 == edited.returncode
        assert ["-\t\ttcp dport 9 accept"] == [
            x for x in edited.stdout.splitlines() if x[:1] in "+-" and x[:3] not in ("---", "+++")]

    def test_rollback_restores_previous(self, node: Host, tmp_path: Path) -> None:
        """rollback after two applies brings back the first policy exactly."""
        first = write_config(tmp_path, SIMPLE, "a.yaml")
        second = write_config(tmp_path, SIMPLE + "  role: control-plane\n"
                              "  control_plane_cidrs: [10.9.2.2/32]\n", "b.yaml")
        assert 0 == cli(node, "apply", "-c", str(first)).returncode
        was = listing(node)
        assert 0 == cli(node, "apply", "-c", str(second)).returncode
        assert was != listing(node)
        back = cli(node, "rollback", "-c", str(second))
        assert 0 == back.returncode, back.stderr
        assert was == listing(node)

    def test_rollback_without_saved_state(self, node: Host, tmp_path: Path) -> None:
        """rollback with nothing saved says so and exits 1."""
        result = cli(node, "rollback", "-c", str(write_config(tmp_path, SIMPLE)))
        assert 1 == result.returncode
        assert "nothing to roll back" in result.stderr


class TestLifecycle:
    def test_remove_saves_then_removes(self, node: Host, tmp_path: Path) -> None:
        """remove takes the table out (rollback brings it back); with none, exit 1."""
        cfg = write_config(tmp_path, SIMPLE)
        assert 0 == cli(node, "apply", "-c", str(cfg)).returncode
        applied = listing(node)
        removed = cli(node, "remove", "-c", str(cfg))
        assert 0 == removed.returncode, removed.stderr
        assert listing(node) is None
        assert 1 == cli(node, "remove", "-c", str(cfg)).returncode
        assert 0 == cli(node, "rollback", "-c", str(cfg)).returncode
        assert applied == listing(node)

    def test_diff_reports_chains_that_can_override_ours(self, node: Host,
                                                        tmp_path: Path) -> None:
        """diff names other tables' base chains on our hooks with a drop policy or an
        earlier priority, and not those that run after us with an accept policy."""
        cfg = write_config(tmp_path, SIMPLE)
        assert 0 == cli(node, "apply", "-c", str(cfg)).returncode
        node.nft("""table ip filter {
    chain INPUT { type filter hook input priority filter; policy drop; }
}
table inet late {
    chain out { type filter hook output priority 50; policy accept; }
    chain pre { type filter hook prerouting priority -300; policy drop; }
}
table ip6 early {
    chain early_fwd { type filter hook forward priority -110; policy accept; }
}
""")
        out = cli(node, "diff", "-c", str(cfg))
        assert 0 == out.returncode, out.stderr
        notes = [x for x in out.stdout.splitlines() if x.startswith("#   ")]
        assert ["#   ip filter INPUT: hook input, priority 0, policy drop (its drop policy "
                "drops what we accept)",
                "#   ip6 early early_fwd: hook forward, priority -110, policy accept (it runs "
                "first: its drops win)"] == notes
