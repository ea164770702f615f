"""Helpers for the operator-surface unit tests (control API, alerts, metrics).

``make_daemon`` builds a real Daemon with a real BanManager over a real ban
table; tests using it take the ``private_netns`` fixture, so the table lives in
a network namespace of their own. ``Receiver`` is a real HTTP server on
loopback that records what it is sent.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList
from kfwguard.bans import BanManager
from kfwguard.config import Config, parse_config
from kfwguard.daemon import Daemon
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.nft import Nft
from kfwguard.operator.control import ControlServer
from kfwguard.store import Store
from kfwguard.telemetry import Telemetry
from tests.conftest import HOST_NETNS


def jails_named(tmp_path: Path, *names: str, **options: Any) -> dict[str, Any]:
    """Config for jails ``names`` over one file source (never started): the
    jails a manual ``--jail`` may name."""
    log = tmp_path / "auth.log"
    tmp_path.mkdir(parents=True, exist_ok=True)
    log.touch()
    return {"sources": [{"name": "auth", "type": "file", "path": str(log)}],
            "jails": [{"name": n, "source": "auth", "filter": "sshd", **options}
                      for n in names]}



@contextlib.asynccontextmanager
async def serving(d: Daemon) -> AsyncIterator[Daemon]:
    """``d`` with its control API served on its socket; the server stopped and the
    store closed afterwards."""
    server = ControlServer(d, d.cfg.control_socket, Telemetry(d))
    await server.start()
    try:
        yield d
    finally:
        await server.stop()
        assert d.store is not None
        d.store.close()

def make_daemon(tmp_path: Path, **config: Any) -> tuple[Daemon, BanTable]:
    """A Daemon (not started) with a store and a BanManager over a fresh ban table
    in the current network namespace (use with the ``private_netns`` fixture)."""
    cfg_data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "control_socket": str(tmp_path / "run" / "control.sock"),
    }
    cfg_data.update(config)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "kfwguard.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_data))
    cfg = parse_config(cfg_path.read_text(), str(cfg_path))
    # Never create tables in the host's namespace (a test missing the fixture).
    assert os.stat("/proc/thread-self/ns/net").st_ino != HOST_NETNS, \
        "make_daemon needs the private_netns fixture"
    table = BanTable(Nft(), "kfwtest")
    table.replace([])

    def make_bans(cfg: Config, store: Store | None) -> BanManager:
        return BanManager(table, store, jails={j.name: j for j in cfg.jails},
                          ignore=IgnoreList(LOOPBACK_NETS))

    daemon = Daemon(cfg, str(cfg_path), make_bans=make_bans, open_store=Store.in_dir)
    daemon.store = Store.in_dir(cfg.state_dir)
    daemon.bans = make_bans(cfg, daemon.store)
    return daemon, table


class Receiver:
    """A real HTTP server on 127.0.0.1 recording every POST body.

    ``statuses`` are answered in turn (then 200), to play a receiver that is
    failing for a while."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.posts.append((request.path_qs, json.loads(body)))
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/hooks/T0KEN-abcdef123456") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# A baseline the policy check accepts (an enforcer can be built from it).
VALID_BASELINE = {"admin_cidrs": ["192.0.2.0/24"], "cluster_cidrs": ["10.0.0.0/16"],
                  "pod_cidrs": ["10.244.0.0/16"]}
