"""The composition root: builds a running kfwguard from its ``Config``.

The one module that imports every part: the firewall (Nft, the ban table, the
baseline keeper), the store, the BanManager, the operator surface (control
API, metrics, alerts), cluster mode, and the daemon that runs them. The parts
meet only here: the daemon sees its collaborators through the arguments it is
given, the operator surface and cluster mode see the daemon through small
protocols, and all counters go out through one ``Telemetry``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList
from kfwguard.bans import BanManager
from kfwguard.cluster import ClusterHooks
from kfwguard.config import Config, ConfigError, load_config_or_default
from kfwguard.daemon import Daemon
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.firewall.nft import Nft, NftUnavailable
from kfwguard.lifecycle import StartupError
from kfwguard.operator.surface import Operator
from kfwguard.store import Store, StoreError
from kfwguard.telemetry import Telemetry

log = structlog.get_logger("kfwguard.app")


def open_store(state_dir: Path, clock: Callable[[], float] = time.time) -> Store | None:
    """The state database, or None (logged) when it cannot be opened."""
    try:
        return Store.in_dir(state_dir, clock=clock)
    except StoreError as exc:
        # Keep banning, from memory; say loudly that nothing is persisted.
        log.error("state_unavailable", error=str(exc),
                  note="running without persistence; bans in the kernel are kept")
        return None


def ban_manager(nft: Nft, clock: Callable[[], float]
                ) -> Callable[[Config, Store | None], BanManager]:
    """The BanManager factory the daemon calls once its store is open."""
    def make(cfg: Config, store: Store | None) -> BanManager:
        table = BanTable(nft, cfg.nftables.table, cfg.nftables.set_size,
                         admin=cfg.baseline.admin_cidrs)
        bans = BanManager(table, store, jails={j.name: j for j in cfg.jails},
                          ignore=IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip]), clock=clock,
                          check_interval=cfg.nftables.check_interval)
        bans.set_networks(cfg.baseline)
        bans.dry_run = cfg.dry_run
        return bans
    return make


@dataclass(frozen=True)
class App:
    """A daemon and the parts built around it."""

    daemon: Daemon
    telemetry: Telemetry
    operator: Operator
    cluster: ClusterHooks


def build(cfg: Config, cfg_path: str | None, *,
          clock: Callable[[], float] = time.time) -> App:
    """The daemon for ``cfg`` with its firewall, store, operator surface and cluster
    mode; nothing touches the kernel before ``Daemon.start``. Raises NftUnavailable
    without libnftables."""
    nft = Nft()
    keeper = BaselineKeeper(nft, cfg.state_dir, clock=clock)
    daemon = Daemon(cfg, cfg_path, make_bans=ban_manager(nft, clock),
                    open_store=lambda state_dir: open_store(state_dir, clock),
                    baseline=keeper, clock=clock)
    telemetry = Telemetry(daemon, clock)
    operator = Operator(daemon, telemetry, keeper.on_drift)
    cluster = ClusterHooks(daemon, operator)
    # The cluster after the operator: it adds routes to the control API.
    daemon.components += [operator, cluster]
    return App(daemon, telemetry, operator, cluster)


def run(cfg_path: Path | None) -> int:
    """Entry point of ``kfwguard run``."""
    try:
        cfg, origin = load_config_or_default(cfg_path)
    except ConfigError as exc:
        log.error("config_invalid", error=str(exc))
        return 2
    try:
        app = build(cfg, None if origin == "<embedded default>" else origin)
        asyncio.run(app.daemon.serve())
    except (StartupError, NftUnavailable) as exc:
        # One clear line, not a traceback (libnftables missing from an image…).
        log.error("cannot_start", error=str(exc))
        return 1
    return 0
