"""Cluster mode: nodes share bans through a decision feed (etcd v3 today).

``ClusterHooks`` is a component of the daemon (kfwguard.lifecycle), built by
kfwguard.app; it does nothing unless the config has a ``cluster:`` section.
Everything the rest of kfwguard sees is BanManager's peer methods and
listeners; its counters go out through the telemetry snapshot.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Histogram

from kfwguard.addresses import parse_target
from kfwguard.bans import BanManager
from kfwguard.config import Config
from kfwguard.firewall.baseline import snapshot
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.operator.http import Request, Response, Route, error_response, json_response
from kfwguard.operator.surface import Operator

if TYPE_CHECKING:
    from kfwguard.cluster.feed import DecisionFeed
    from kfwguard.cluster.service import ClusterService, Listing

log = structlog.get_logger("kfwguard.cluster")


class Host(Protocol):
    """What cluster mode reads from the daemon (kfwguard.daemon.Daemon)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def bans(self) -> BanManager | None: ...
    @property
    def baseline(self) -> BaselineKeeper | None: ...


def build_feed(cfg: Config) -> DecisionFeed:
    # Imported only in cluster mode: the etcd client and its transports.
    from kfwguard.cluster.etcd import EtcdFeed
    from kfwguard.cluster.etcdclient import EtcdClient
    from kfwguard.cluster.etcdtypes import TLSFiles

    cc = cfg.cluster
    assert cc is not None
    tls = (TLSFiles(str(cc.tls.ca), str(cc.tls.cert), str(cc.tls.key))
           if cc.tls is not None else None)
    return EtcdFeed(EtcdClient(cc.endpoints, tls), cc.prefix, heartbeat=cc.heartbeat)


def build_service(daemon: Host, feed: DecisionFeed | None = None) -> ClusterService:
    from kfwguard.cluster.service import ClusterService

    assert daemon.bans is not None
    return ClusterService(daemon.cfg, daemon.bans, feed or build_feed(daemon.cfg))


def _sha(data: object) -> str:
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def beat_info(daemon: Host) -> dict[str, Any]:
    """Baseline fingerprints (rendered policy, what was applied, the live table)
    and drift count for the heartbeat. Runs in a thread: it lists one table."""
    enforcer = daemon.baseline.enforcer if daemon.baseline is not None else None
    if enforcer is None:
        return {"baseline": False}
    applied = enforcer.applied
    try:
        live: object = snapshot(enforcer.nft, enforcer.cfg.table)
    except Exception as exc:  # the table may be gone: that is drift too
        live = f"unreadable: {exc}"
    return {"baseline": True, "baseline_rendered": _sha(enforcer.script),
            "baseline_applied": _sha(applied) if applied is not None else None,
            "baseline_live": _sha(live), "drift_count": enforcer.drift_count}


class ClusterHooks:
    """Starts cluster mode after the operator surface, whose control API and
    metrics it extends."""

    def __init__(self, daemon: Host, operator: Operator) -> None:
        self.daemon = daemon
        self.operator = operator
        self.service: ClusterService | None = None
        self._feed: DecisionFeed | None = None
        self._listing: Listing | None = None

    def prepare(self, cfg: Config) -> None:
        """Ask for the listing of the shared bans now: etcd serves it (~15 MB
        for 100k bans) while the daemon restores its own bans, compiles its
        filters and applies its baseline; the service applies it when it
        starts, once the node's protected addresses are known."""
        if cfg.cluster is None:
            return
        from kfwguard.cluster.service import Listing

        self._feed = build_feed(cfg)
        self._listing = Listing(self._feed)
        log.info("cluster_listing_asked", note="applied when cluster mode starts")

    async def start(self, cfg: Config) -> None:
        if cfg.cluster is None:
            return
        daemon = self.daemon
        svc = self.service = build_service(daemon, self._feed)
        svc.beat_info = lambda: beat_info(daemon)
        listing, self._listing, self._feed = self._listing, None, None
        await svc.start(cfg.state_dir, listing)
        self.operator.telemetry.cluster = svc
        control = self.operator.control
        if control is not None:
            control.router.routes += [
                Route("POST", "/cluster/unban", self.post_unban),
                Route("GET", "/cluster/status", self.get_status),
            ]
        _register_propagation(self.operator.metrics.registry, svc)
        alerts = self.operator.alerts
        if alerts is not None:
            svc.on_baseline_alert.append(alerts.on_cluster_baseline)

    async def stop(self) -> None:
        if self._listing is not None:  # prepared, never started
            self._listing.cancel()
            self._listing = None
        if self.service is not None:
            await self.service.stop()
            self.service = None
            self.operator.telemetry.cluster = None

    async def reload(self, cfg: Config) -> None:
        svc = self.service
        if (svc.cfg.cluster if svc is not None else None) != cfg.cluster:
            log.warning("reload_needs_restart", keys="cluster")

    async def post_unban(self, request: Request) -> Response:
        svc = self.service
        if svc is None:
            return error_response(503, "cluster mode is not running")
        try:
            body = await request.json()
            target = str(parse_target(str(body["target"])))
        except (ValueError, KeyError, TypeError):
            return error_response(400, 'give {"target": ADDRESS}')
        await svc.unban_everywhere(target)
        return json_response({"unbanned": target, "cluster": True})

    async def get_status(self, request: Request) -> Response:
        svc = self.service
        if svc is None:
            return error_response(503, "cluster mode is not running")
        return json_response(svc.status())


def _register_propagation(registry: CollectorRegistry, svc: ClusterService) -> None:
    from kfwguard.cluster.service import PROPAGATION_BUCKETS

    hist = Histogram("kfwguard_cluster_propagation_seconds",
                     "From a peer's ban decision to the element in this node's kernel",
                     buckets=PROPAGATION_BUCKETS, registry=registry)
    svc.on_propagation.append(hist.observe)
