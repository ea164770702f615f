"""The baseline in a simulated cluster: real packets through kube-proxy's and a CNI's rules.

One lab per module (namespaces named kfwtest-*), both address families:

    bastion 192.0.2.10 ─┐                        ┌─ cp1    10.10.0.11  pods 10.244.0.0/24
    internet 203.0.113.2├─ router ── br0 (LAN) ──┼─ cp2    10.10.0.12  pods 10.244.1.0/24
      (.53 DNS, .123 NTP)│  10.10.0.1            ├─ worker 10.10.0.21  pods 10.244.2.0/24
                         │                        └─ registry mirror 10.10.0.50
  (v6: 2001:db8:a::/64, 2001:db8:ff::/64, fd00:10::/64, pods fd00:244:0:N::/64)

Each node has a pod behind its ``cni0`` bridge and a flannel-style VXLAN device
``flannel.1`` (udp 8472) to the other nodes' pods; the router also routes the
pod networks to their nodes (a routable pod CIDR). On every node, kube-proxy's
rules in one of its two modes (``iptables``: the ``table ip nat``/``ip filter``
shapes iptables-nft creates; ``nftables``: ``table ip kube-proxy``) program:

- NodePort 30080 → the worker's pod, 30081 → cp2's pod, 30082 → a hostNetwork
  endpoint (worker:8082), udp 30084 → CoreDNS (cp2's pod, port 53), and 30083,
  a Service without endpoints (REJECT);
- ClusterIP DNS 10.96.0.10 / fd00:96::a (udp and tcp 53) → CoreDNS, and
  10.96.0.50 / fd00:96::32 port 80 without endpoints (REJECT).

A Calico-like ``table ip raw`` (priority raw, -300) exempts tcp 9100 from
conntrack both ways (doNotTrack). The baseline goes on one node per test (the
worker, or cp1 as a control plane), applied by the real CLI, and a matrix of
TCP/UDP/ICMP flows is checked twice: every flow has its open verdict before
the baseline, and its expected verdict with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need
from tests.netns import Host, Lab, sh

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
TABLE = "kfwguard_baseline"
# generous, so a loaded machine cannot turn a slow "ok" into "drop"
PROBE_TIMEOUT = 1.5

NODES = {"cp1": 11, "cp2": 12, "worker": 21}
POD_NET = {"cp1": 0, "cp2": 1, "worker": 2}


def lan4(n: int) -> str:
    return f"10.10.0.{n}"


def lan6(n: int) -> str:
    return f"fd00:10::{n}"


def pod4(node: str) -> str:
    return f"10.244.{POD_NET[node]}.10"


def pod6(node: str) -> str:
    return f"fd00:244:0:{POD_NET[node]}::10"


# Named destinations, per family.
ADDR: dict[str, tuple[str, str]] = {
    **{n: (lan4(i), lan6(i)) for n, i in NODES.items()},
    **{f"pod-{n}": (pod4(n), pod6(n)) for n in NODES},
    "registry": (lan4(50), lan6(50)),
    "bastion": ("192.0.2.10", "2001:db8:a::10"),
    "inet": ("203.0.113.2", "2001:db8:ff::2"),
    "resolver": ("203.0.113.53", "2001:db8:ff::53"),
    "timeserver": ("203.0.113.123", "2001:db8:ff::123"),
    "spoofed": ("203.0.113.3", "2001:db8:ff::3"),
    "svc-dns": ("10.96.0.10", "fd00:96::a"),
    "svc-empty": ("10.96.0.50", "fd00:96::32"),
}

PROBE = r'''
import errno, json, random, socket, struct, sys, threading, time
checks, T = json.loads(sys.argv[1]), float(sys.argv[2])
REFUSED = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES)
# EPERM: our own output chain dropped it (send and connect say so at once)
DROPPED = (errno.EPERM,)

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def stream(kind, a, p, src):
    s = socket.socket(fam(a), kind)
    s.settimeout(T)
    try:
        if src: s.bind((src, 0))
        s.connect((a, p))
        if kind == socket.SOCK_STREAM:
            return "ok"
        s.send(b"kfw")
        return "ok" if s.recv(64) == b"kfw" else "drop"
    except socket.timeout:
        return "drop"
    except OSError as exc:
        if exc.errno in DROPPED:
            return "drop"
        return "refused" if exc.errno in REFUSED else "error %s" % exc
    finally:
        s.close()

def icmp(a, p, src):
    v6 = ":" in a
    s = socket.socket(fam(a), socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = random.randrange(1, 65535)
    msg = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"kfwguard"
    if not v6:
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
                return "ok"
    except OSError:
        pass
    finally:
        s.close()
    return "drop"

def run(i, c):
    proto, a, p, src = c
    if proto == "icmp":
        results[i] = icmp(a, p, src)
    else:
        results[i] = stream(socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM, a, p, src)

results = [None] * len(checks)
threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(checks)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
'''

# Binds every port on each address given (default: all, dual-stack). A UDP
# socket bound to one address answers from it, as a real server with several
# addresses must; one bound to the wildcard answers from the route's source.
SERVER = r'''
import json, selectors, socket, sys
sel = selectors.DefaultSelector()
binds = json.loads(sys.argv[3]) if len(sys.argv) > 3 else ["::"]
for kind, ports in (("tcp", json.loads(sys.argv[1])), ("udp", json.loads(sys.argv[2]))):
    for p in ports:
      for addr in binds:
        s = socket.socket(socket.AF_INET if "." in addr else socket.AF_INET6,
                          socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        if addr == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, p))
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


# --------------------------------------------------------------------------- kube-proxy

@dataclass(frozen=True)
class Svc:
    name: str
    proto: str
    nodeport: int | None
    cluster: str | None          # key in ADDR of the ClusterIP
    port: int                    # the Service port
    endpoint: str | None         # key in ADDR; None: no endpoints
    target: int = 0


SERVICES = (
    Svc("WEBW", "tcp", 30080, None, 80, "pod-worker", 8080),
    Svc("WEBC", "tcp", 30081, None, 80, "pod-cp2", 8080),
    Svc("HOSTNET", "tcp", 30082, None, 80, "worker", 8082),
    Svc("EMPTY", "tcp", 30083, "svc-empty", 80, None),
    Svc("DNSNP", "udp", 30084, None, 53, "pod-cp2", 53),
    Svc("DNSU", "udp", None, "svc-dns", 53, "pod-cp2", 53),
    Svc("DNST", "tcp", None, "svc-dns", 53, "pod-cp2", 53),
)


def _ep(svc: Svc, v6: bool) -> str:
    assert svc.endpoint is not None
    a = ADDR[svc.endpoint][v6]
    return f"[{a}]:{svc.target}" if v6 else f"{a}:{svc.target}"


def iptables_nft(fam: str) -> str:
    """The tables kube-proxy's iptables mode leaves through iptables-nft."""
    v6 = fam == "ip6"
    reject = "reject"
    nat_svc, nodeports, seps, filt_svc, filt_ext = [], [], [], [], []
    for s in SERVICES:
        if s.endpoint is not None:
            seps += [
                f"\tchain KUBE-SVC-{s.name} {{\n\t\tcounter jump KUBE-SEP-{s.name}\n\t}}",
                f"\tchain KUBE-SEP-{s.name} {{\n"
                f"\t\t{fam} saddr {ADDR[s.endpoint][v6]} counter jump KUBE-MARK-MASQ\n"
                f"\t\tmeta l4proto {s.proto} counter dnat to {_ep(s, v6)}\n\t}}",
            ]
            if s.cluster is not None:
                nat_svc.append(f"{fam} daddr {ADDR[s.cluster][v6]} {s.proto} dport {s.port} "
                               f"counter jump KUBE-SVC-{s.name}")
            if s.nodeport is not None:
                seps.append(f"\tchain KUBE-EXT-{s.name} {{\n\t\tcounter jump KUBE-MARK-MASQ\n"
                            f"\t\tcounter jump KUBE-SVC-{s.name}\n\t}}")
                nodeports.append(f"meta l4proto {s.proto} {s.proto} dport {s.nodeport} "
                                 f"counter jump KUBE-EXT-{s.name}")
        else:
            if s.cluster is not None:
                filt_svc.append(f"{fam} daddr {ADDR[s.cluster][v6]} {s.proto} dport {s.port} "
                                f"counter {reject}")
            if s.nodeport is not None:
                filt_ext.append(f"fib daddr type local {s.proto} dport {s.nodeport} "
                                f"counter {reject}")
    nat_svc.append("fib daddr type local counter jump KUBE-NODEPORTS")

    def block(lines: list[str]) -> str:
        return "\n".join(f"\t\t{x}" for x in lines)

    return f"""table {fam} nat {{
\tchain PREROUTING {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tcounter jump KUBE-SERVICES
\t}}
\tchain OUTPUT {{
\t\ttype nat hook output priority -100; policy accept;
\t\tcounter jump KUBE-SERVICES
\t}}
\tchain POSTROUTING {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tcounter jump KUBE-POSTROUTING
\t}}
\tchain KUBE-MARK-MASQ {{
\t\tcounter meta mark set mark or 0x4000
\t}}
\tchain KUBE-POSTROUTING {{
\t\tmeta mark & 0x00004000 != 0x00004000 counter return
\t\tcounter meta mark set mark xor 0x4000
\t\tcounter masquerade
\t}}
{chr(10).join(seps)}
\tchain KUBE-NODEPORTS {{
{block(nodeports)}
\t}}
\tchain KUBE-SERVICES {{
{block(nat_svc)}
\t}}
}}
table {fam} filter {{
\tchain INPUT {{
\t\ttype filter hook input priority filter; policy accept;
\t\tct state new counter jump KUBE-EXTERNAL-SERVICES
\t}}
\tchain FORWARD {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tcounter jump KUBE-FORWARD
\t\tct state new counter jump KUBE-SERVICES
\t\tct state new counter jump KUBE-EXTERNAL-SERVICES
\t}}
\tchain OUTPUT {{
\t\ttype filter hook output priority filter; policy accept;
\t\tct state new counter jump KUBE-SERVICES
\t}}
\tchain KUBE-FORWARD {{
\t\tct state invalid counter drop
\t\tmeta mark & 0x00004000 == 0x00004000 counter accept
\t\tct state related,established counter accept
\t}}
\tchain KUBE-SERVICES {{
{block(filt_svc)}
\t}}
\tchain KUBE-EXTERNAL-SERVICES {{
{block(filt_ext)}
\t}}
}}
"""


def kube_proxy_nft(fam: str, node: str) -> str:
    """The table kube-proxy's nftables mode keeps (``table ip kube-proxy``)."""
    v6 = fam == "ip6"
    addr_t = "ipv6_addr" if v6 else "ipv4_addr"
    svc_ips, svc_np, no_ep_svc, no_ep_np, chains = [], [], [], [], []
    for s in SERVICES:
        if s.endpoint is None:
            if s.cluster is not None:
                no_ep_svc.append(f"{ADDR[s.cluster][v6]} . {s.proto} . {s.port} : "
                                 "goto reject-chain")
            if s.nodeport is not None:
                no_ep_np.append(f"{s.proto} . {s.nodeport} : goto reject-chain")
            continue
        chains += [
            f"\tchain service-{s.name} {{\n"
            f"\t\tnumgen random mod 1 vmap {{ 0 : goto endpoint-{s.name} }}\n\t}}",
            f"\tchain endpoint-{s.name} {{\n"
            f"\t\t{fam} saddr {ADDR[s.endpoint][v6]} jump mark-for-masquerade\n"
            f"\t\tmeta l4proto {s.proto} dnat to {_ep(s, v6)}\n\t}}",
        ]
        if s.cluster is not None:
            svc_ips.append(f"{ADDR[s.cluster][v6]} . {s.proto} . {s.port} : "
                           f"goto service-{s.name}")
        if s.nodeport is not None:
            chains.append(f"\tchain external-{s.name} {{\n\t\tjump mark-for-masquerade\n"
                          f"\t\tgoto service-{s.name}\n\t}}")
            svc_np.append(f"{s.proto} . {s.nodeport} : goto external-{s.name}")
    clusters = sorted({ADDR[s.cluster][v6] for s in SERVICES if s.cluster})

    def elems(items: list[str]) -> str:
        return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""

    return f"""table {fam} kube-proxy {{
\tcomment "rules for kube-proxy"
\tset cluster-ips {{
\t\ttype {addr_t}
\t\telements = {{ {", ".join(clusters)} }}
\t}}
\tset nodeport-ips {{
\t\ttype {addr_t}
\t\telements = {{ {ADDR[node][v6]} }}
\t}}
\tmap no-endpoint-services {{
\t\ttype {addr_t} . inet_proto . inet_service : verdict
{elems(no_ep_svc)}\t}}
\tmap no-endpoint-nodeports {{
\t\ttype inet_proto . inet_service : verdict
{elems(no_ep_np)}\t}}
\tmap service-ips {{
\t\ttype {addr_t} . inet_proto . inet_service : verdict
{elems(svc_ips)}\t}}
\tmap service-nodeports {{
\t\ttype inet_proto . inet_service : verdict
{elems(svc_np)}\t}}
\tchain filter-prerouting {{
\t\ttype filter hook prerouting priority dstnat - 10; policy accept;
\t}}
\tchain filter-input {{
\t\ttype filter hook input priority -110; policy accept;
\t\tct state new jump nodeport-endpoints-check
\t\tct state new jump service-endpoints-check
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority -110; policy accept;
\t\tct state new jump service-endpoints-check
\t\tct state new jump cluster-ips-check
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority -110; policy accept;
\t\tct state new jump service-endpoints-check
\t}}
\tchain filter-output-post-dnat {{
\t\ttype filter hook output priority -90; policy accept;
\t\tct state new jump cluster-ips-check
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump masquerading
\t}}
\tchain masquerading {{
\t\tmeta mark & 0x00004000 == 0x00000000 return
\t\tmeta mark set meta mark ^ 0x00004000
\t\tmasquerade fully-random
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark | 0x00004000
\t}}
\tchain reject-chain {{
\t\tcomment "helper for @no-endpoint-services / @no-endpoint-nodeports"
\t\treject
\t}}
\tchain cluster-ips-check {{
\t\t{fam} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
\t}}
\tchain nodeport-endpoints-check {{
\t\t{fam} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
\t}}
\tchain service-endpoints-check {{
\t\t{fam} daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain services {{
\t\t{fam} daddr . meta l4proto . th dport vmap @service-ips
\t\t{fam} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
\t}}
{chr(10).join(chains)}
}}
"""


def calico_raw(node: str) -> str:
    """Calico's raw table (iptables-nft shapes) with one doNotTrack host-endpoint rule."""
    me = ADDR[node][0]
    return f"""table ip raw {{
\tchain PREROUTING {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tcounter jump cali-PREROUTING
\t}}
\tchain OUTPUT {{
\t\ttype filter hook output priority raw; policy accept;
\t\tcounter jump cali-OUTPUT
\t}}
\tchain cali-PREROUTING {{
\t\tip daddr {me} tcp dport 9100 counter meta mark set mark or 0x10000 counter notrack
\t}}
\tchain cali-OUTPUT {{
\t\tip saddr {me} tcp sport 9100 counter meta mark set mark or 0x10000 counter notrack
\t}}
}}
"""


# --------------------------------------------------------------------------- the lab

@dataclass
class Cluster:
    lab: Lab
    hosts: dict[str, Host]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    mode: str | None = None

    def serve(self, name: str, tcp: list[int], udp: list[int] = [],  # noqa: B006
              binds: list[str] = ["::"]) -> None:  # noqa: B006
        proc = self.hosts[name].popen([sys.executable, "-c", SERVER, json.dumps(tcp),
                                       json.dumps(udp), json.dumps(binds)],
                                      stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert b"ready\n" == proc.stdout.readline()

    def kube_proxy(self, mode: str) -> None:
        """Put kube-proxy's tables of ``mode`` on every node (the other mode's go)."""
        if self.mode == mode:
            return
        for node in NODES:
            h = self.hosts[node]
            for fam in ("ip", "ip6"):
                for table in ("nat", "filter", "kube-proxy"):
                    h.run("nft", "delete", "table", fam, table, check=False)
            script = "".join(iptables_nft(f) if mode == "iptables" else kube_proxy_nft(f, node)
                             for f in ("ip", "ip6"))
            h.nft(script)
        self.mode = mode


def _batch(host: Host, commands: list[str]) -> None:
    # (no -6 in a batch: ip takes the family from the addresses)
    sh("ip", "-n", host.name, "-batch", "-", input="\n".join(commands) + "\n")


def _veth(a: Host, a_dev: str, b: Host, b_dev: str) -> None:
    sh("ip", "-n", a.name, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev,
       "netns", b.name)


def _sysctl(host: Host, *pairs: str) -> None:
    host.run("sysctl", "-qw", *pairs)


def build(lab: Lab) -> Cluster:
    names = ["router", "bastion", "inet", "registry", *NODES, *(f"pod-{n}" for n in NODES)]
    hosts = {n: lab.host(n) for n in names}
    router = hosts["router"]
    _sysctl(router, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    router_cmds = ["link add br0 type bridge", "addr add 10.10.0.1/24 dev br0",
                   "addr add fd00:10::1/64 dev br0 nodad", "link set br0 up"]
    # outside networks: the admin's, the internet's
    for name, net4, net6, extra in (
            ("bastion", "192.0.2", "2001:db8:a", []),
            ("inet", "203.0.113", "2001:db8:ff", ["53", "123", "3"])):
        h = hosts[name]
        me = "10" if name == "bastion" else "2"
        _veth(router, f"to-{name}", h, "eth0")
        router_cmds += [f"addr add {net4}.1/24 dev to-{name}",
                        f"addr add {net6}::1/64 dev to-{name} nodad", f"link set to-{name} up"]
        cmds = [f"addr add {net4}.{me}/24 dev eth0", f"addr add {net6}::{me}/64 dev eth0 nodad",
                "link set eth0 up", f"route add default via {net4}.1",
                f"route add default via {net6}::1"]
        cmds += [f"addr add {net4}.{x}/24 dev eth0" for x in extra]
        cmds += [f"addr add {net6}::{x}/64 dev eth0 nodad" for x in extra]
        _batch(h, cmds)
    # the LAN: nodes and the registry mirror on the router's bridge
    for name, n in (*NODES.items(), ("registry", 50)):
        h = hosts[name]
        _veth(router, f"lan-{name}"[:15], h, "eth0")
        router_cmds += [f"link set lan-{name} master br0", f"link set lan-{name} up"]
        _batch(h, [f"addr add {lan4(n)}/24 dev eth0", f"addr add {lan6(n)}/64 dev eth0 nodad",
                   "link set eth0 up", "route add default via 10.10.0.1",
                   "route add default via fd00:10::1"])
    # the pod networks are routable: the router sends them to their node
    for node, i in POD_NET.items():
        router_cmds += [f"route add 10.244.{i}.0/24 via {lan4(NODES[node])}",
                        f"route add fd00:244:0:{i}::/64 via {lan6(NODES[node])}"]
    # a LAN host that spoofs a pod address (10.244.9.9) sends via a node; replies come back
    router_cmds += [f"route add 10.244.9.9/32 via {lan4(50)}"]
    _batch(router, router_cmds)
    _batch(hosts["registry"], ["addr add 10.244.9.9/32 dev lo"])
    _sysctl(hosts["registry"], "net.ipv4.conf.all.accept_redirects=0")
    # nodes: forwarding, the cni0 bridge with one pod, flannel.1 to the others
    for node, i in POD_NET.items():
        h, pod = hosts[node], hosts[f"pod-{node}"]
        # no redirects: the spoofing LAN host must keep sending through the node
        _sysctl(h, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
        _veth(h, "veth0", pod, "eth0")
        cmds = ["link add cni0 type bridge", f"addr add 10.244.{i}.1/24 dev cni0",
                f"addr add fd00:244:0:{i}::1/64 dev cni0 nodad", "link set cni0 up",
                "link set veth0 master cni0", "link set veth0 up",
                f"link add flannel.1 type vxlan id 1 local {lan4(NODES[node])} dev eth0 "
                f"dstport 8472 nolearning",
                f"link set flannel.1 address 02:00:00:00:00:{i + 1:02x}",
                f"addr add 10.244.{i}.0/32 dev flannel.1",
                f"addr add fd00:244:0:{i}::f/128 dev flannel.1 nodad", "link set flannel.1 up"]
        for other, j in POD_NET.items():
            if other == node:
                continue
            mac = f"02:00:00:00:00:{j + 1:02x}"
            cmds += [f"route add 10.244.{j}.0/24 via 10.244.{j}.0 dev flannel.1 onlink",
                     f"neigh add 10.244.{j}.0 lladdr {mac} dev flannel.1 nud permanent",
                     f"route add fd00:244:0:{j}::/64 via fd00:244:0:{j}::f dev flannel.1 onlink",
                     f"neigh add fd00:244:0:{j}::f lladdr {mac} dev flannel.1 nud permanent"]
        _batch(h, cmds)
        for other in NODES:
            if other != node:
                sh("bridge", "-n", h.name, "fdb", "append",
                   f"02:00:00:00:00:{POD_NET[other] + 1:02x}", "dev", "flannel.1",
                   "dst", lan4(NODES[other]))
        _batch(pod, [f"addr add {pod4(node)}/24 dev eth0",
                     f"addr add {pod6(node)}/64 dev eth0 nodad",
                     "link set eth0 up", f"route add default via 10.244.{i}.1",
                     f"route add default via fd00:244:0:{i}::1"])
        h.nft(calico_raw(node))
    c = Cluster(lab, hosts)
    for node in NODES:
        c.serve(node, [22, 2379, 2380, 6443, 8082, 9100, 9999, 10250, 10256, 10257, 10259],
                [5555])
    for node in NODES:
        c.serve(f"pod-{node}", [53, 8080, 7777], [53])
    c.serve("inet", [53, 80, 443], [53, 123, 5555],
            [a for k in ("inet", "resolver", "timeserver", "spoofed") for a in ADDR[k]])
    c.serve("registry", [443, 5000])
    # (the registry host also stands for an API client in api_cidrs)
    c.serve("bastion", [7777])
    return c


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The whole lab, built once for the module and removed afterwards."""
    need(os.geteuid() == 0, "needs root")
    need(shutil.which("ip") is not None and shutil.which("bridge") is not None,
         "needs iproute2 (ip, bridge)")
    need(shutil.which("nft") is not None, "needs nftables (nft)")
    lab = Lab()
    c: Cluster | None = None
    try:
        c = build(lab)
        yield c
    finally:
        for p in c.procs if c is not None else []:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        lab.close()


# --------------------------------------------------------------------------- the matrix

@dataclass(frozen=True)
class Flow:
    """One flow: ``src`` probes ``dst`` (a name in ADDR, or "N": the node under test,
    "pod-N": its pod). Verdicts: ok, drop, refused; None: not run for that role."""

    src: str
    proto: str
    dst: str
    port: int
    worker: str | None = "ok"
    cp: str | None = "ok"
    open: str = "ok"          # the verdict with no baseline
    fams: str = "46"
    saddr: str | None = None  # bind to this source address (IPv4)
    why: str = ""


D, R = "drop", "refused"

FLOWS: list[Flow] = [
    # the admin, from the bastion
    Flow("bastion", "tcp", "N", 22, why="failsafe ssh"),
    Flow("bastion", "tcp", "N", 6443, why="failsafe 6443"),
    Flow("bastion", "icmp", "N", 0),
    Flow("bastion", "tcp", "N", 10250, D, D),
    Flow("bastion", "tcp", "N", 9999, D, D),
    Flow("bastion", "tcp", "N", 9100, fams="4", why="Calico doNotTrack, allow_in"),
    # the internet
    Flow("inet", "tcp", "N", 22, D, D),
    Flow("inet", "tcp", "N", 6443, D, D, why="6443 only from api_cidrs, nodes, pods"),
    Flow("inet", "tcp", "N", 10250, D, D),
    Flow("inet", "tcp", "N", 2379, D, D),
    Flow("inet", "tcp", "N", 10257, D, D),
    Flow("inet", "tcp", "N", 8082, D, D, why="a hostNetwork port, not through a NodePort"),
    Flow("inet", "tcp", "N", 9100, D, D, fams="4", why="doNotTrack, but not allowed"),
    Flow("inet", "icmp", "N", 0),
    Flow("inet", "tcp", "N", 30080, "ok", D, why="NodePort to the worker's pod"),
    Flow("inet", "tcp", "N", 30081, "ok", D, why="NodePort to cp2's pod, over flannel.1"),
    Flow("inet", "tcp", "N", 30082, "ok", D, why="NodePort to a hostNetwork endpoint"),
    Flow("inet", "udp", "N", 30084, "ok", D, why="udp NodePort to CoreDNS"),
    Flow("inet", "tcp", "N", 30083, R, R, open=R, why="no endpoints: kube-proxy rejects"),
    Flow("inet", "tcp", "N", 10256, "ok", D, why="kube-proxy health, with NodePorts"),
    Flow("inet", "tcp", "pod-N", 8080, D, D, why="routable pod CIDR, no Service"),
    # other nodes
    Flow("cp2", "tcp", "N", 10250),
    Flow("cp2", "tcp", "N", 6443, D, "ok"),
    Flow("cp2", "tcp", "N", 2379, D, "ok", why="etcd from control planes"),
    Flow("cp2", "tcp", "N", 2380, D, "ok", why="etcd peers"),
    Flow("cp2", "tcp", "N", 10257, D, D, why="controller-manager: the node itself only"),
    Flow("cp2", "tcp", "N", 10259, D, D, why="scheduler: the node itself only"),
    Flow("cp2", "tcp", "N", 22, D, D),
    Flow("cp2", "udp", "N", 5555, D, D),
    Flow("registry", "tcp", "N", 10250, D, D, why="a LAN host is not a node"),
    Flow("registry", "tcp", "N", 6443, D, "ok", why="api_cidrs (a CI runner, say)"),
    Flow("registry", "tcp", "N", 22, D, D, why="api_cidrs is not admin_cidrs"),
    Flow("worker", "tcp", "N", 2379, None, D, why="a worker is not a control plane"),
    Flow("worker", "tcp", "N", 6443, None, "ok"),
    # pods
    Flow("pod-cp2", "tcp", "N", 10250, why="metrics-server scrapes the kubelet"),
    Flow("pod-cp2", "tcp", "N", 6443, D, "ok"),
    Flow("pod-cp2", "tcp", "N", 22, D, D),
    Flow("pod-N", "tcp", "inet", 80, why="pods reach out"),
    Flow("pod-N", "tcp", "pod-cp2", 8080, why="pod to remote pod over flannel.1"),
    Flow("pod-cp2", "tcp", "pod-N", 8080, why="remote pod to local pod"),
    Flow("pod-N", "udp", "svc-dns", 53, why="ClusterIP DNS"),
    Flow("pod-N", "tcp", "svc-dns", 53),
    Flow("pod-N", "tcp", "svc-empty", 80, R, R, open=R),
    # the node itself
    Flow("N", "tcp", "N", 10257, why="the node reaches its own controller-manager"),
    Flow("N", "udp", "svc-dns", 53, why="hostNetwork pods and the node use ClusterIP DNS"),
    Flow("N", "tcp", "svc-dns", 53),
    Flow("N", "udp", "resolver", 53, why="dns_servers"),
    Flow("N", "tcp", "resolver", 53),
    Flow("N", "tcp", "inet", 53, D, D, why="53 to anyone else"),
    Flow("N", "udp", "inet", 53, D, D),
    Flow("N", "udp", "timeserver", 123, why="ntp_servers"),
    Flow("N", "udp", "inet", 123, D, D),
    Flow("N", "tcp", "registry", 443, why="allow_out to the registry mirror"),
    Flow("N", "tcp", "registry", 5000, D, D),
    Flow("N", "tcp", "inet", 80, D, D),
    Flow("N", "icmp", "inet", 0),
    Flow("N", "tcp", "cp2", 6443),
    Flow("N", "tcp", "cp2", 10250),
    Flow("N", "tcp", "cp2", 2379, D, "ok"),
    Flow("N", "tcp", "cp2", 9999, D, D, why="no node-to-node port beyond the role's"),
    Flow("N", "tcp", "pod-cp2", 7777, why="pods on any port (probes, webhooks)"),
    # through the node: a LAN host spoofing a pod source
    Flow("registry", "tcp", "spoofed", 80, D, D, fams="4", saddr="10.244.9.9",
         why="pod source from a non-pod interface"),
]

CONFIG = """\
state_dir: {state}
baseline:
  role: {role}
  cni: flannel
  admin_cidrs: [192.0.2.0/24, "2001:db8:a::/64"]
  cluster_cidrs: [10.10.0.11/32, 10.10.0.12/32, 10.10.0.21/32,
                  "fd00:10::11/128", "fd00:10::12/128", "fd00:10::21/128"]
  control_plane_cidrs: [10.10.0.11/32, 10.10.0.12/32, "fd00:10::11/128", "fd00:10::12/128"]
  pod_cidrs: [10.244.0.0/16, "fd00:244::/48"]
  service_cidrs: [10.96.0.0/12, "fd00:96::/108"]
  api_cidrs: [192.0.2.0/24, "2001:db8:a::/64", 10.10.0.50/32, "fd00:10::50/128"]
  dns_servers: [203.0.113.53, "2001:db8:ff::53"]
  ntp_servers: [203.0.113.123, "2001:db8:ff::123"]
  allow_in: [{{proto: tcp, ports: [9100], from: [192.0.2.0/24]}}]
  allow_out: [{{proto: tcp, ports: [443], to: [10.10.0.50/32, "fd00:10::50/128"]}}]
"""


def _resolve(name: str, node: str) -> str:
    return {"N": node, "pod-N": f"pod-{node}"}.get(name, name)


def run_flows(c: Cluster, node: str, flows: list[Flow]) -> dict[str, str]:
    """Run every flow (both families where it says so) at once; {description: verdict}."""
    by_src: dict[str, list[tuple[str, list[object]]]] = {}
    for f in flows:
        src, dst = _resolve(f.src, node), _resolve(f.dst, node)
        for fam in f.fams:
            daddr = ADDR[dst][fam == "6"]
            desc = f"{f.src} -> {f.dst} {f.proto}/{f.port} ipv{fam}" + (
                f" from {f.saddr}" if f.saddr else "")
            by_src.setdefault(src, []).append((desc, [f.proto, daddr, f.port, f.saddr]))

    def probe(src: str) -> list[tuple[str, str]]:
        items = by_src[src]
        out = c.hosts[src].run(sys.executable, "-c", PROBE, json.dumps([x for _, x in items]),
                               str(PROBE_TIMEOUT), timeout=60).stdout
        return list(zip([d for d, _ in items], json.loads(out), strict=True))

    with ThreadPoolExecutor(len(by_src)) as pool:
        return {d: v for part in pool.map(probe, by_src) for d, v in part}


def expected(flows: list[Flow], verdict: str) -> dict[str, str]:
    out = {}
    for f in flows:
        for fam in f.fams:
            desc = f"{f.src} -> {f.dst} {f.proto}/{f.port} ipv{fam}" + (
                f" from {f.saddr}" if f.saddr else "")
            out[desc] = getattr(f, verdict)
    return out


def _route_spoofer_via(c: Cluster, node: str) -> None:
    reg = c.hosts["registry"]
    reg.run("ip", "route", "replace", "203.0.113.3/32", "via", ADDR[node][0])


@pytest.fixture(autouse=True)
def _importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Subprocesses in the namespaces run `python -m kfwguard…` from this checkout.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


class TestClusterMatrix:
    @pytest.mark.parametrize("mode", ["iptables", "nftables"])
    @pytest.mark.parametrize(("role", "node"), [("worker", "worker"),
                                                ("control-plane", "cp1")])
    def test_flows_follow_the_role(self, cluster: Cluster, tmp_path: Path, role: str,
                                   node: str, mode: str) -> None:
        """Every flow of the matrix, through kube-proxy's real rule shapes (both modes)
        and a Calico-like raw table, gets its open verdict without the baseline and the
        role's verdict with it: NodePorts to local, remote and hostNetwork endpoints,
        REJECT of empty Services, ClusterIP DNS, doNotTrack, DNS/NTP/registry egress."""
        verdict = "worker" if role == "worker" else "cp"
        flows = [f for f in FLOWS if getattr(f, verdict) is not None]
        cluster.kube_proxy(mode)
        _route_spoofer_via(cluster, node)
        host = cluster.hosts[node]
        host.run("nft", "delete", "table", "inet", TABLE, check=False)
        before = run_flows(cluster, node, flows)
        assert expected(flows, "open") == before
        cfg = tmp_path / "kfwguard.yaml"
        cfg.write_text(CONFIG.format(state=tmp_path / "state", role=role))
        applied = host.run(sys.executable, "-m", "kfwguard.cli.baseline", "apply", "-c",
                           str(cfg), check=False)
        assert 0 == applied.returncode, applied.stderr
        try:
            assert expected(flows, verdict) == run_flows(cluster, node, flows)
        finally:
            host.run("nft", "delete", "table", "inet", TABLE, check=False)
