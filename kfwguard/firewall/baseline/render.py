"""The nft script of a policy: one transaction that replaces our table and nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from kfwguard.config import BaselineConfig, PortRule
from kfwguard.firewall.baseline.policy import (
    CNI_PORTS,
    ICMP_TYPES,
    ICMPV6_TYPES,
    NODEPORTS,
    PRIORITY,
    Net,
    _families,
    parse_failsafe,
    port_spec,
    validate,
)

# --------------------------------------------------------------------------- rendering



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

    def match(self, name: str, direction: str, what: str) -> list[str]:
        """Rules ``ip[6] <direction> @<name>[46] <what> accept`` for the declared families."""
        out = []
        for fam, ipf in (("4", "ip"), ("6", "ip6")):
            if f"{name}{fam}" in self.names:
                out.append(f"{ipf} {direction} @{name}{fam} {what} accept".replace("  ", " "))
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


def render(cfg: BaselineConfig) -> str:
    """The nft script that atomically replaces ``table inet <cfg.table>`` with the policy."""
    validate(cfg)
    t = cfg.table
    sets = _Sets()
    sets.add("admin", cfg.admin_cidrs)
    sets.add("nodes", cfg.cluster_cidrs)
    sets.add("control_plane", cfg.control_plane_cidrs or cfg.cluster_cidrs)
    sets.add("pods", cfg.pod_cidrs)
    sets.add("services", cfg.service_cidrs)

    icmp = ("icmp type { " + ", ".join(ICMP_TYPES) + " } accept",
            "icmpv6 type { " + ", ".join(ICMPV6_TYPES) + " } accept")

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
    inp.append(f"# kubernetes: {cfg.role}")
    kubelet = ["10250"]
    if cfg.role == "control-plane":
        inp.append("tcp dport 6443 accept")
        inp += sets.match("control_plane", "saddr", _l4("tcp", ["2379-2380"]))
        kubelet += ["10257", "10259"]
    for who in ("nodes", "pods"):
        # pods too: metrics-server and Prometheus scrape the kubelet from pod addresses
        inp += sets.match(who, "saddr", _l4("tcp", kubelet))
    if cfg.role == "worker":
        # NodePorts and kube-proxy's health port are meant for load balancers outside.
        inp += [f"tcp dport {NODEPORTS} accept", f"udp dport {NODEPORTS} accept",
                "tcp dport 10256 accept"]
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
           "# pod-to-pod policy is the CNI's NetworkPolicy job, not ours"]
    fwd += sets.match("pods", "saddr", "")
    fwd += sets.match("pods", "daddr", "")
    fwd += sets.match("services", "daddr", "")
    fwd.append('counter name "dropped_forward" drop')

    out = ['oif "lo" accept', "ct state invalid drop", "ct state established,related accept",
           *icmp,
           "meta l4proto { tcp, udp } th dport 53 accept",
           "udp dport 123 accept",
           "meta nfproto ipv4 udp sport 68 udp dport 67 accept",
           "meta nfproto ipv6 udp sport 546 udp dport 547 accept",
           "# the cluster's own networks"]
    for who in ("nodes", "pods", "services"):
        out += sets.match(who, "daddr", "")
    if cfg.allow_out:
        out.append("# allow_out")
        out += _allow_rules(cfg.allow_out)
    out.append('counter name "dropped_output" drop')

    def chain(name: str, rules: list[str]) -> list[str]:
        return [f"\tchain {name} {{",
                f"\t\ttype filter hook {name} priority {PRIORITY}; policy drop;",
                *(f"\t\t{r}" for r in rules), "\t}"]

    lines = [
        f"# kfwguard baseline (role {cfg.role}, cni {cfg.cni}); generated, do not edit:",
        "# kfwguard puts its own table back. Replaces table inet "
        f"{t} and nothing else, atomically.",
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
