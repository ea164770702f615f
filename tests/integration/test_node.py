"""The node's own addresses, read by a pyroute2 child process in the caller's namespace.

A "node" namespace with a default route through a "gw" peer and a link to an
"other" peer; the child (``python -m kfwguard.node``) must report exactly what
that namespace has, and the daemon must protect it without importing pyroute2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.daemon_harness import base_config
from tests.netns import Host, Lab


@dataclass
class Node:
    node: Host
    gateway: Host
    other: Host


@pytest.fixture
def net(lab: Lab) -> Iterator[Node]:
    node, gateway, other = lab.host("node"), lab.host("gw"), lab.host("other")
    lab.link(node, gateway, "10.93.1", "fd00:93:1")
    lab.link(node, other, "10.93.2", "fd00:93:2")
    node.run("ip", "route", "add", "default", "via", gateway.ip4)
    node.run("ip", "-6", "route", "add", "default", "via", gateway.ip6)
    yield Node(node, gateway, other)


def test_child_reports_this_namespace(net: Node) -> None:
    """`python -m kfwguard.node` lists the namespace's addresses and gateways, nothing else."""
    out = net.node.run(sys.executable, "-m", "kfwguard.node").stdout
    addrs = set(json.loads(out))
    assert {"127.0.0.1", "::1", *net.node.addrs4, *net.node.addrs6,
            net.gateway.ip4, net.gateway.ip6} <= addrs
    assert not {*net.other.addrs4, *net.other.addrs6} & addrs


DAEMON = """
import asyncio, ipaddress, json, sys
from kfwguard.config import parse_config
from kfwguard import app

async def main() -> None:
    path = {path!r}
    built = app.build(parse_config(open(path).read(), path), path)
    d = built.daemon
    await d.start()
    try:
        ignored = [a for a in {addrs!r} if ipaddress.ip_address(a) in d.ignore]
        print("RESULT", json.dumps({{"pyroute2": "pyroute2" in sys.modules, "ignored": ignored}}))
    finally:
        await d.shutdown()

asyncio.run(main())
"""


def test_daemon_protects_node_without_pyroute2(net: Node, tmp_path: Path) -> None:
    """A started daemon ignores the node's addresses and gateway yet never imported pyroute2."""
    log = tmp_path / "auth.log"
    log.write_text("")
    cfg = tmp_path / "kfwguard.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path, log)))
    mine = [*net.node.addrs4, *net.node.addrs6, net.gateway.ip4, net.gateway.ip6]
    others = [*net.other.addrs4, *net.other.addrs6]
    code = DAEMON.format(path=str(cfg), addrs=[*mine, *others])
    out = net.node.python(code).stdout.splitlines()
    result = json.loads(next(x for x in out if x.startswith("RESULT "))[7:])
    assert {"pyroute2": False, "ignored": mine} == result
