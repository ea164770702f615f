"""What this node is: its own addresses, default gateways and API server.

These are never banned. The addresses and gateways are read with pyroute2
(netlink) at start and on reload, in a short-lived child process
(``python -m kfwguard.node``): pyroute2 costs the daemon ~11 MiB of RSS for
as long as it runs if imported there, for one question asked at start. The
child inherits the caller's network namespace, so it sees the same
interfaces. If the child fails, the daemon falls back to loopback only
(always ignored anyway) and logs a warning; it never stops for this.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import structlog

from kfwguard.addresses import IPAddress, parse_host

log = structlog.get_logger("kfwguard.node")

KUBECONFIGS = (Path("/etc/kubernetes/kubelet.conf"), Path("/etc/kubernetes/admin.conf"))

# How long the child may take to answer before the daemon gives up on it.
CHILD_TIMEOUT = 10.0


def read_local_addresses() -> list[IPAddress]:
    """Every address on every interface of this network namespace, plus gateways.

    Imports pyroute2: call it in the child process (``python -m
    kfwguard.node``), not in the daemon.
    """
    from pyroute2 import IPRoute

    out: list[IPAddress] = []
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
    return out


_early: subprocess.Popen[bytes] | None = None


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "kfwguard.node"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_addresses_early() -> None:
    """Start the child of the next local_addresses() now: ``kfwguard run``
    calls this before its own imports. The child imports pyroute2 (~0.4 s of
    CPU) and the daemon's start waits for its answer before its jails run
    and before a cluster node takes in its peers' bans: started first, it
    works while the daemon imports instead of after."""
    global _early
    if _early is None:
        try:
            _early = _child()
        except OSError:
            _early = None


def local_addresses(timeout: float = CHILD_TIMEOUT) -> list[IPAddress]:
    """``read_local_addresses`` run in a child process (the one started early,
    if any); [] (with a warning) if it fails."""
    global _early
    proc, _early = _early, None
    try:
        if proc is None:
            proc = _child()
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("node_addresses_unreadable", error=str(exc))
        return []
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()
        log.warning("node_addresses_unreadable", returncode=proc.returncode,
                    error=detail[-1] if detail else "")
        return []
    try:
        items = json.loads(stdout)
    except ValueError as exc:
        log.warning("node_addresses_unreadable", error=f"bad output: {exc}")
        return []
    out: list[IPAddress] = []
    if isinstance(items, list):
        for item in items:
            a = parse_host(item) if isinstance(item, str) else None
            if a is not None:
                out.append(a)
    return out


# rtnetlink multicast groups: addresses of both families (RTMGRP_IPV4_IFADDR,
# RTMGRP_IPV6_IFADDR). Not routes: a CNI adds one per pod, and gateways
# change rarely (re-read at reload).
_GROUPS = 0x10 | 0x100
_RTM_NEWADDR = 20
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type


class AddressWatch:
    """rtnetlink notifications of address changes in this network namespace, on a
    plain netlink socket (no pyroute2 in the daemon, see the module doc).
    ``read()`` drains what arrived: the addresses just added, as parsed from
    RTM_NEWADDR (link-local ones left out: they are protected at start, and
    every pod's veth adds one), and whether notifications were lost (the
    socket's buffer overflowed: then the caller re-reads the whole picture
    with ``protected_networks``)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK,
                                  socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, _GROUPS))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> tuple[list[IPAddress], bool]:
        added: list[IPAddress] = []
        lost = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return added, lost
            except OSError:  # ENOBUFS: notifications were lost; re-read everything
                lost = True
                continue
            added += [a for a in _new_addresses(data) if not a.is_link_local]


def _new_addresses(data: bytes) -> list[IPAddress]:
    """The addresses RTM_NEWADDR messages in ``data`` announce (bad input: skipped)."""
    out: list[IPAddress] = []
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size or off + length > len(data):
            break
        body = off + _NLMSG_HDR.size
        if kind == _RTM_NEWADDR and length >= _NLMSG_HDR.size + _IFADDRMSG.size:
            family = _IFADDRMSG.unpack_from(data, body)[0]
            size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
            attr = body + _IFADDRMSG.size
            end = off + length
            while size is not None and attr + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, attr)
                if alen < _RTATTR.size or attr + alen > end:
                    break
                if atype in (_IFA_ADDRESS, _IFA_LOCAL) and alen - _RTATTR.size == size:
                    raw = data[attr + _RTATTR.size: attr + alen]
                    a = parse_host(socket.inet_ntop(family, raw))
                    if a is not None and a not in out:
                        out.append(a)
                attr += (alen + 3) & ~3
        off += (length + 3) & ~3
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
    """The node's own addresses, gateways and API server, as host networks."""
    return [ipaddress.ip_network(a) for a in (*local_addresses(), *api_server_addresses())]


def main() -> int:
    """Print this namespace's addresses and default gateways as a JSON list of strings."""
    try:
        addrs = read_local_addresses()
    except (OSError, ImportError) as exc:
        print(f"kfwguard.node: {exc}", file=sys.stderr)
        return 1
    print(json.dumps([str(a) for a in addrs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
