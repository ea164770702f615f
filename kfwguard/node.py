"""What this node is: its own addresses, default gateways and API server.

These are never banned. Read with pyroute2 (netlink) at start and on reload.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import structlog

from kfwguard.addresses import IPAddress, parse_host

log = structlog.get_logger("kfwguard.node")

KUBECONFIGS = (Path("/etc/kubernetes/kubelet.conf"), Path("/etc/kubernetes/admin.conf"))


def local_addresses() -> list[IPAddress]:
    """Every address on every interface of this network namespace, plus gateways."""
    out: list[IPAddress] = []
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover - pyroute2 is a hard dependency
        return out
    try:
        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                a = parse_host(str(msg.get_attr("IFA_ADDRESS") or ""))
                if a is not None:
                    out.append(a)
            for family in (2, 10):
                for route in ipr.get_routes(family=family):
                    if route.get("dst_len", 1) != 0:
                        continue
                    gw = parse_host(str(route.get_attr("RTA_GATEWAY") or ""))
                    if gw is not None:
                        out.append(gw)
    except OSError as exc:
        log.warning("node_addresses_unreadable", error=str(exc))
    return out


def api_server_addresses(kubeconfigs: tuple[Path, ...] = KUBECONFIGS) -> list[IPAddress]:
    """The API server endpoint named by the in-cluster env or the node's kubeconfig."""
    out: list[IPAddress] = []
    env = os.environ.get("KUBERNETES_SERVICE_HOST")
    if env:
        a = parse_host(env)
        if a is not None:
            out.append(a)
    for path in kubeconfigs:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for m in re.finditer(r"server:\s*https?://(\[[^\]]+\]|[^:/\s]+)", text):
            a = parse_host(m.group(1))
            if a is not None:
                out.append(a)
    return out


def protected_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(a) for a in (*local_addresses(), *api_server_addresses())]
