"""The nft script of a policy: one transaction that replaces our table and nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from kfwguard.config import BaselineConfig, PortRule
from kfwguard.firewall.baseline import discover
from kfwguard.firewall.baseline.names import set_name
from kfwguard.firewall.baseline.policy import (
    CNI_PORTS,
    ICMP_TYPES,
    ICMPV6_TYPES,
    NODE_EGRESS_TCP,
    NODEPORTS,
    POD_INTERFACES,
    PRIORITY,
    Net,
    _families,
    parse_failsafe,
    port_spec,
    validate,
)


def _split(nets: Iterable[Net]) -> tuple[list[str], list[str]]:
    """IPv4 and IPv6 members, overlaps merged (interval sets refuse overlapping elements)."""
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return ([str(n) for n in ipaddress.collapse_addresses(v4)],
            [str(n) for n in ipaddress.collapse_addresses(v6)])


def _set_of(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _l4(proto: str, ports: Sequence[str] | None) -> str:
    if ports is None:
        return {"ipip": "ip protocol ipip", "esp": "meta l4proto esp"}[proto]
    return f"{proto} dport {_set_of(ports)}"


class _Sets:
    """Named CIDR sets of the table; a set is declared only when it has members."""

    def __init__(self) -> None:
        self.decls: list[str] = []
        self.names: set[str] = set()

    def add(self, name: str, nets: Iterable[Net]) -> None:
        for fam, members in zip(("4", "6"), _split(nets), strict=True):
            if not members:
                continue
            kind = "ipv4_addr" if fam == "4" else "ipv6_addr"
            self.decls += [
                f"\tset {name}{fam} {{",
                f"\t\ttype {kind}",
                "\t\tflags interval",
                f"\t\telements = {{ {', '.join(members)} }}",
                "\t}",
            ]
            self.names.add(f"{name}{fam}")

    def match(self, name: str, direction: str, what: str, prefix: str = "") -> list[str]:
        """Rules ``<prefix> ip[6] <direction> @<name>[46] <what> accept`` for the declared
        families."""
        out = []
        for fam, ipf in (("4", "ip"), ("6", "ip6")):
            if f"{name}{fam}" in self.names:
                rule = f"{prefix} {ipf} {direction} @{name}{fam} {what} accept"
                out.append(" ".join(rule.split()))
        return out


def _allow_rules(rules: Sequence[PortRule]) -> list[str]:
    out: list[str] = []
    for rule in rules:
        l4 = _l4(rule.proto, [port_spec(p) for p in rule.ports])
        src4, src6 = _split(rule.from_)
        dst4, dst6 = _split(rule.to)
        if not rule.from_ and not rule.to:
            out.append(f"{l4} accept")
            continue
        for fam, src, dst in (("ip", src4, dst4), ("ip6", src6, dst6)):
            if fam not in _families(rule):
                continue
            parts = [f"{fam} saddr {_set_of(src)}" if src else "",
                     f"{fam} daddr {_set_of(dst)}" if dst else ""]
            if not src and not dst:
                # e.g. from: [v4 only] but no 'to': no IPv6 rule at all.
                continue
            out.append(" ".join(p for p in parts if p) + f" {l4} accept")
    return out


def _quoted(names: Sequence[str]) -> str:
    return _set_of([f'"{n}"' for n in names])


def render(cfg: BaselineConfig, *, root: Path = Path("/")) -> str:
    """The nft script that atomically replaces ``table inet <cfg.table>`` with the policy.

    ``dns_servers`` / ``ntp_servers`` left unset are read from the node's own
    configuration under ``root``.
    """
    validate(cfg)
    t = cfg.table
    notes: list[str] = []
    dns, ntp = cfg.dns_servers, cfg.ntp_servers
    for key, value, find in (("dns_servers", dns, discover.dns_servers),
                             ("ntp_servers", ntp, discover.ntp_servers)):
        if value is not None:
            continue
        found = find(root)
        notes.append(f"# {key} (unset): {', '.join(map(str, found.servers)) or 'none'} "
                     f"from {', '.join(found.sources) or 'nothing'}")
        if found.names:
            notes.append(f"#   named servers left out (list their addresses in {key}): "
                         + ", ".join(found.names))
        if key == "dns_servers":
            dns = found.servers
        else:
            ntp = found.servers
    control_plane = cfg.role == "control-plane"
    nodeports = (cfg.nodeports.enabled if cfg.nodeports.enabled is not None
                 else not control_plane)
    pod_ifaces = (list(cfg.pod_interfaces) if cfg.pod_interfaces is not None
                  else list(POD_INTERFACES[cfg.cni]))

    sets = _Sets()
    sets.add("admin", cfg.admin_cidrs)
    sets.add("nodes", cfg.cluster_cidrs)
    if control_plane:
        sets.add("control_plane", cfg.control_plane_cidrs)
        sets.add("api", cfg.api_cidrs if cfg.api_cidrs is not None else cfg.admin_cidrs)
    sets.add("pods", cfg.pod_cidrs)
    sets.add("services", cfg.service_cidrs)
    if nodeports:
        sets.add("nodeport_clients", cfg.nodeports.from_)
    sets.add("dns", dns or ())
    sets.add("ntp", ntp or ())

    icmp = ("icmp type { " + ", ".join(ICMP_TYPES) + " } accept",
            "icmpv6 type { " + ", ".join(ICMPV6_TYPES) + " } accept")
    # kube-proxy DNATs NodePorts in prerouting (-100): by the time a packet reaches
    # input or forward its port is the endpoint's. The port the client asked for is
    # the connection's original one.
    # One rule per protocol: nft 1.0.6 lists "meta l4proto { tcp, udp } ct original
    # proto-dst" as "[invalid type]", and a listing it cannot parse back would make
    # the rollback script unusable.
    nodeport = [f"meta l4proto {p} ct original proto-dst {NODEPORTS}" for p in ("tcp", "udp")]

    inp = ['iif "lo" accept', "ct state invalid drop", "ct state established,related accept",
           *icmp]
    failsafe: dict[str, list[str]] = {}
    for entry in cfg.failsafe_ports:
        proto, port = parse_failsafe(entry)
        failsafe.setdefault(proto, []).append(port)
    if failsafe:
        inp.append("# failsafe: open from admin_cidrs whatever else the policy says")
        for proto, ports in sorted(failsafe.items()):
            inp += sets.match("admin", "saddr", _l4(proto, ports))
    inp.append(f"# kubernetes: {cfg.role} (kube-controller-manager 10257 and "
               "kube-scheduler 10259 answer the node itself only, through lo)")
    if control_plane:
        inp.append("# the API server: api_cidrs, the cluster's nodes and pods")
        for who in ("api", "nodes", "pods"):
            inp += sets.match(who, "saddr", _l4("tcp", ["6443"]))
        inp.append("# etcd: clients and peers are the control-plane nodes")
        inp += sets.match("control_plane", "saddr", _l4("tcp", ["2379-2380"]))
    for who in ("nodes", "pods"):
        # pods too: metrics-server and Prometheus scrape the kubelet from pod addresses
        inp += sets.match(who, "saddr", _l4("tcp", ["10250"]))
    if nodeports:
        inp.append("# NodePorts (by the port the client asked for) and kube-proxy's "
                   "health port, for nodeports.from")
        for match in nodeport:
            inp += sets.match("nodeport_clients", "saddr", match)
        inp += sets.match("nodeport_clients", "saddr", "tcp dport 10256")
    if CNI_PORTS[cfg.cni]:
        inp.append(f"# cni: {cfg.cni}, from the cluster's nodes")
        for proto, cni_ports in CNI_PORTS[cfg.cni]:
            inp += [r for r in sets.match("nodes", "saddr", _l4(proto, cni_ports))
                    if not (proto == "ipip" and r.startswith("ip6"))]
    inp += ["# DHCP replies come from the server, not from a tracked connection",
            "meta nfproto ipv4 udp sport 67 udp dport 68 accept",
            "meta nfproto ipv6 udp sport 547 udp dport 546 accept"]
    if cfg.allow_in:
        inp.append("# allow_in")
        inp += _allow_rules(cfg.allow_in)
    inp.append('counter name "dropped_input" drop')

    fwd = ["ct state invalid drop", "ct state established,related accept",
           "# exempted from conntrack on purpose by someone's raw rule (Calico doNotTrack)",
           "ct state untracked accept"]
    if pod_ifaces:
        fwd.append("# from pods, on the interfaces pods are behind (pod-to-pod policy is "
                   "the CNI's NetworkPolicy job)")
        fwd += sets.match("pods", "saddr", "", prefix=f"iifname {_quoted(pod_ifaces)}")
    fwd.append("# to pods from elsewhere: only what a Service translated")
    if nodeports:
        for match in nodeport:
            fwd += sets.match("nodeport_clients", "saddr", match, prefix="ct status dnat")
    fwd += sets.match("services", "daddr", "", prefix="ct status dnat ct original")
    fwd.append('counter name "dropped_forward" drop')

    out = ['oif "lo" accept', "ct state invalid drop", "ct state established,related accept",
           "# replies of doNotTrack flows (someone's raw rule left them untracked)",
           "ct state untracked accept",
           *icmp]
    out += sets.match("dns", "daddr", "meta l4proto { tcp, udp } th dport 53")
    out += sets.match("ntp", "daddr", "udp dport 123")
    out += ["meta nfproto ipv4 udp sport 68 udp dport 67 accept",
            "meta nfproto ipv6 udp sport 546 udp dport 547 accept",
            "# the cluster: pods on any port (probes, webhooks, port-forward), Services "
            "whatever their endpoint, nodes on the ports the role and CNI use"]
    out += sets.match("pods", "daddr", "")
    out += sets.match("services", "daddr", "", prefix="ct status dnat ct original")
    out += sets.match("nodes", "daddr", _l4("tcp", list(NODE_EGRESS_TCP)))
    if control_plane:
        out += sets.match("control_plane", "daddr", _l4("tcp", ["2379-2380"]))
    for proto, cni_ports in CNI_PORTS[cfg.cni]:
        out += [r for r in sets.match("nodes", "daddr", _l4(proto, cni_ports))
                if not (proto == "ipip" and r.startswith("ip6"))]
    if cfg.allow_out:
        out.append("# allow_out")
        for i, rule in enumerate(cfg.allow_out):
            if rule.to_names:
                l4 = _l4(rule.proto, [port_spec(p) for p in rule.ports])
                out.append(f"# to_names: {', '.join(rule.to_names)} (kept by the daemon)")
                for fam, ipf, kind in (("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr")):
                    sets.decls += [f"\tset {set_name(i, fam)} {{", f"\t\ttype {kind}",
                                   "\t\tflags timeout", "\t}"]
                    out.append(f"{ipf} daddr @{set_name(i, fam)} {l4} accept")
                if not rule.to:
                    continue
                rule = rule.model_copy(update={"to_names": []})
            out += _allow_rules([rule])
    out.append('counter name "dropped_output" drop')

    def chain(name: str, rules: list[str]) -> list[str]:
        return [f"\tchain {name} {{",
                f"\t\ttype filter hook {name} priority {PRIORITY}; policy drop;",
                *(f"\t\t{r}" for r in rules), "\t}"]

    lines = [
        f"# kfwguard baseline (role {cfg.role}, cni {cfg.cni}); generated, do not edit:",
        "# kfwguard puts its own table back. Replaces table inet "
        f"{t} and nothing else, atomically.",
        *notes,
        f"table inet {t} {{}}",
        f"delete table inet {t}",
        f"table inet {t} {{",
        *(f"\tcounter dropped_{c} {{}}" for c in ("input", "forward", "output")),
        *sets.decls,
        *chain("input", inp),
        *chain("forward", fwd),
        *chain("output", out),
        "}",
    ]
    return "\n".join(lines) + "\n"
