"""What a baseline policy may be: its constants, and the checks that refuse an unsafe one."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from kfwguard.config import BaselineConfig, PortRule

# filter + 10 on input/forward/output. Within one hook, lower runs first:
#   kube-proxy (nftables mode) filter chains  -110   (rejects for services without endpoints)
#   iptables-nft filter tables (kube-proxy iptables mode, Calico, Cilium)  0
#   this baseline                               +10
# Not 0, because equal priorities run in an undefined order. After 0, so that
# their REJECTs (with their ICMP answers) and their own drops happen first, and
# we only add a final say. Every DNAT (kube-proxy -100 in prerouting/output)
# has happened by then, so the output chain sees a Service's real endpoint and
# the forward chain sees the pod address a NodePort was translated to. The ban
# chain (table inet kfwguard, prerouting raw - 10) runs long before any of this.
PRIORITY = "filter + 10"

# Table names that belong to others or to common distribution firewalls: a
# baseline under one of these names would replace someone else's rules.
RESERVED_TABLES = frozenset({
    "kfwguard", "filter", "nat", "mangle", "raw", "security", "calico", "cilium",
    "kube_proxy", "kubeproxy", "f2b_table", "firewalld", "docker",
})

ICMP_TYPES = ("echo-request", "destination-unreachable", "time-exceeded", "parameter-problem")
# RFC 4890: without ND (133-136) IPv6 stops working; without MLD (130-132, 143)
# multicast listeners (including ND's solicited-node groups on some switches) go.
ICMPV6_TYPES = (
    "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem",
    "echo-request", "nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
    "nd-neighbor-advert", "mld-listener-query", "mld-listener-report",
    "mld-listener-done", "mld2-listener-report",
)

# Overlay, BGP, health and encryption traffic of each CNI, admitted from nodes.
# Entries are (l4 protocol, ports); ports None means the whole protocol.
CNI_PORTS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    "flannel": (("udp", ("8472",)),),
    "calico": (
        ("tcp", ("179",)),           # BGP
        ("ipip", None),              # IP-in-IP (IPv4 only)
        ("udp", ("4789",)),          # VXLAN
        ("tcp", ("5473",)),          # Typha
        ("udp", ("51820", "51821")),  # WireGuard v4, v6
    ),
    "cilium": (
        ("udp", ("8472",)),          # VXLAN
        ("udp", ("6081",)),          # Geneve
        ("tcp", ("4240",)),          # cilium-health
        ("udp", ("51871",)),         # WireGuard
        ("esp", None),               # IPsec
    ),
    "none": (),
}

NODEPORTS = "30000-32767"

# Where pod traffic enters the node, per CNI: the local pods' interfaces and the
# tunnels that carry remote pods' traffic. Pod-sourced packets from anywhere else
# (a LAN host spoofing a pod address) are not forwarded. With direct routing
# (flannel host-gw, Calico BGP without encapsulation) remote pods arrive on the
# node's own uplink: list it in pod_interfaces.
POD_INTERFACES: dict[str, tuple[str, ...]] = {
    "flannel": ("cni0", "flannel.1", "flannel-v6.1", "flannel-wg", "flannel-wg-v6"),
    "calico": ("cali*", "tunl0", "vxlan.calico", "vxlan-v6.calico", "wireguard.cali",
               "wg-v6.cali"),
    "cilium": ("lxc*", "cilium_host", "cilium_net", "cilium_vxlan", "cilium_geneve",
               "cilium_wg0"),
    "none": (),
}

# kubernetes.io "Ports and Protocols": what the node itself sends to other nodes.
NODE_EGRESS_TCP = ("6443", "10250")


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class BaselineError(Exception):
    """The policy is refused (invalid, or unsafe to apply), or a baseline operation failed."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- validation

_PORT_RE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
_FAILSAFE_RE = re.compile(r"(tcp|udp)/(\S+)")
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                          r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\*?")


def port_spec(value: int | str) -> str:
    """``value`` as nft writes a port or range (``22``, ``30000-32767``); ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port")
    if isinstance(value, int):
        lo, hi = value, None
    else:
        m = _PORT_RE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a port or a range like 30000-32767")
        lo, hi = int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    if not 1 <= lo <= 65535 or (hi is not None and not lo <= hi <= 65535):
        raise ValueError(f"{value!r} is not a port (1-65535) or an ascending range")
    return str(lo) if hi is None or hi == lo else f"{lo}-{hi}"


def parse_failsafe(entry: str) -> tuple[str, str]:
    """Split ``tcp/22`` into ("tcp", "22"). Raises ValueError with the accepted form."""
    m = _FAILSAFE_RE.fullmatch(entry.strip().lower()) if isinstance(entry, str) else None
    if m is None:
        raise ValueError(f"{entry!r} is not PROTO/PORT, e.g. tcp/22 or udp/51820")
    try:
        return m.group(1), port_spec(m.group(2))
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None


def validate(cfg: BaselineConfig) -> None:
    """Refuse a policy that cannot be rendered or could lock the operator or the cluster out."""
    problems: list[str] = []
    if cfg.table.lower() in RESERVED_TABLES:
        problems.append(f"table: {cfg.table!r} is a table other software owns; "
                        "use a name of its own such as kfwguard_baseline")
    for i, entry in enumerate(cfg.failsafe_ports):
        try:
            parse_failsafe(entry)
        except ValueError as exc:
            problems.append(f"failsafe_ports[{i}]: {exc}")
    if cfg.failsafe_ports and not cfg.admin_cidrs:
        problems.append(
            "admin_cidrs is empty, so the failsafe ports "
            f"({', '.join(cfg.failsafe_ports)}) would be open to no one and a bad policy "
            "could lock you out: list the networks you administer the node from in "
            "admin_cidrs, or turn the failsafe off explicitly with failsafe_ports: []"
        )
    if not cfg.cluster_cidrs:
        problems.append("cluster_cidrs is empty: kubelet, CNI and etcd traffic from the other "
                        "nodes would be dropped; list the networks of the cluster's nodes")
    if cfg.role == "control-plane" and not cfg.control_plane_cidrs:
        problems.append("control_plane_cidrs is empty: on a control-plane node etcd (2379-2380) "
                        "is open only to the control-plane nodes; list their addresses "
                        "(there is no fallback to cluster_cidrs)")
    for i, name in enumerate(cfg.pod_interfaces or ()):
        if not _IFNAME_RE.fullmatch(name):
            problems.append(f"pod_interfaces[{i}]: {name!r} is not an interface name "
                            "(up to 15 characters; a trailing * matches a prefix, e.g. cali*)")
    if not cfg.pod_cidrs:
        problems.append("pod_cidrs is empty: pod traffic could not be forwarded; "
                        "list the cluster's pod networks")
    for kind, rules in (("allow_in", cfg.allow_in), ("allow_out", cfg.allow_out)):
        for i, rule in enumerate(rules):
            if rule.to_names and kind == "allow_in":
                problems.append(f"{kind}[{i}].to_names: names are for allow_out only")
            for j, name in enumerate(rule.to_names):
                if not _HOSTNAME_RE.fullmatch(name):
                    problems.append(f"{kind}[{i}].to_names[{j}]: {name!r} is not a hostname")
            if not rule.ports:
                problems.append(f"{kind}[{i}].ports: list at least one port "
                                "(write 1-65535 for all of them)")
            for j, p in enumerate(rule.ports):
                try:
                    port_spec(p)
                except ValueError as exc:
                    problems.append(f"{kind}[{i}].ports[{j}]: {exc}")
            if rule.from_ and rule.to and not _families(rule):
                problems.append(f"{kind}[{i}]: 'from' and 'to' share no address family, "
                                "so the rule could never match")
    if cfg.name_ttl.floor < 1 or cfg.name_ttl.ceiling < cfg.name_ttl.floor:
        problems.append("name_ttl: floor must be at least 1s and ceiling at least floor")
    if problems:
        raise BaselineError([f"baseline.{p}" for p in problems])


def _families(rule: PortRule) -> list[str]:
    fams = []
    for fam, cls in (("ip", ipaddress.IPv4Network), ("ip6", ipaddress.IPv6Network)):
        if all(not side or any(isinstance(n, cls) for n in side)
               for side in (rule.from_, rule.to)):
            fams.append(fam)
    return fams


def _port_in(port: int, spec: str) -> bool:
    lo, _, hi = spec.partition("-")
    return int(lo) <= port <= int(hi or lo)


def ssh_session_cut(cfg: BaselineConfig, ssh_connection: str) -> str | None:
    """Why the SSH session described by ``$SSH_CONNECTION`` ("client cport server sport")
    could not connect again under ``cfg``; None if it could (or if nothing can be told)."""
    parts = ssh_connection.split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    try:
        client = ipaddress.ip_address(parts[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    port = int(parts[3])
    if client.is_loopback:
        return None

    def within(nets: Iterable[Net]) -> bool:
        return any(client in n for n in nets)

    for entry in cfg.failsafe_ports:
        proto, spec = parse_failsafe(entry)
        if proto == "tcp" and _port_in(port, spec) and within(cfg.admin_cidrs):
            return None
    for rule in cfg.allow_in:
        if rule.proto == "tcp" and any(_port_in(port, port_spec(p)) for p in rule.ports) and (
                not rule.from_ or within(rule.from_)):
            return None
    if cfg.role == "control-plane" and port == 6443 and (
            within(cfg.api_cidrs if cfg.api_cidrs is not None else cfg.admin_cidrs)
            or within(cfg.cluster_cidrs) or within(cfg.pod_cidrs)):
        return None
    return (f"this shell's SSH session comes from {client} to port {port}, and under this "
            f"policy {client} could not connect to port {port} again: add its network to "
            f"admin_cidrs (with tcp/{port} in failsafe_ports) or an allow_in rule, "
            "or pass --force if you reach the node some other way")
