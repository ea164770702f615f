"""Cluster mode: nodes share bans through a decision feed (etcd v3 today).

``install(daemon)`` hooks the service into the daemon's start and stop; it
does nothing unless the config has a ``cluster:`` section. Everything the
rest of kfwguard sees is BanManager's peer methods and listeners.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog

from kfwguard.httpserver import Request, Response, Route, error_response, json_response

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from kfwguard.cluster.service import ClusterService
    from kfwguard.daemon import Daemon

log = structlog.get_logger("kfwguard.cluster")


def build_service(daemon: Daemon) -> ClusterService:
    from kfwguard.cluster.etcd import EtcdFeed
    from kfwguard.cluster.etcdclient import EtcdClient, TLSFiles
    from kfwguard.cluster.service import ClusterService

    cfg = daemon.cfg
    cc = cfg.cluster
    assert cc is not None and daemon.bans is not None
    tls = (TLSFiles(str(cc.tls.ca), str(cc.tls.cert), str(cc.tls.key))
           if cc.tls is not None else None)
    feed = EtcdFeed(EtcdClient(cc.endpoints, tls), cc.prefix, heartbeat=cc.heartbeat)
    return ClusterService(cfg, daemon.bans, feed)


def _sha(data: object) -> str:
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def beat_info(daemon: Daemon) -> dict[str, Any]:
    """Baseline fingerprints (rendered policy, what was applied, the live table)
    and drift count for the heartbeat. Runs in a thread: it lists one table."""
    enforcer = daemon.baseline
    if enforcer is None:
        return {"baseline": False}
    from kfwguard.firewall.baseline import snapshot

    applied = getattr(enforcer, "_expected", None)
    try:
        live: object = snapshot(enforcer.nft, enforcer.cfg.table)
    except Exception as exc:  # the table may be gone: that is drift too
        live = f"unreadable: {exc}"
    return {"baseline": True, "baseline_rendered": _sha(enforcer.script),
            "baseline_applied": _sha(applied) if applied is not None else None,
            "baseline_live": _sha(live), "drift_count": enforcer.drift_count}


class ClusterHooks:
    def __init__(self) -> None:
        self.service: ClusterService | None = None

    async def start(self, daemon: Daemon) -> None:
        if daemon.cfg.cluster is None:
            return
        svc = self.service = build_service(daemon)
        svc.beat_info = lambda: beat_info(daemon)
        await svc.start(daemon.cfg.state_dir)
        op = getattr(daemon, "operator", None)
        control = getattr(op, "control", None)
        if control is not None:
            control.extra_status["cluster"] = svc.status
            control.router.routes += [
                Route("POST", "/cluster/unban", self.post_unban),
                Route("GET", "/cluster/status", self.get_status),
            ]
        metrics = getattr(op, "metrics", None)
        if metrics is not None:
            _register_metrics(metrics.registry, svc)
        alerts = getattr(op, "alerts", None)
        if alerts is not None:
            svc.on_baseline_alert.append(alerts.on_cluster_baseline)

    async def stop(self, daemon: Daemon) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def reload(self, daemon: Daemon) -> None:
        svc = self.service
        if (svc.cfg.cluster if svc is not None else None) != daemon.cfg.cluster:
            log.warning("reload_needs_restart", keys="cluster")

    async def post_unban(self, request: Request) -> Response:
        from kfwguard.addresses import parse_target

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


def _register_metrics(registry: Any, svc: ClusterService) -> None:
    from prometheus_client import Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    from kfwguard.cluster.service import PROPAGATION_BUCKETS

    hist = Histogram("kfwguard_cluster_propagation_seconds",
                     "From a peer's ban decision to the element in this node's kernel",
                     buckets=PROPAGATION_BUCKETS, registry=registry)
    svc.on_propagation.append(hist.observe)

    class ClusterCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            up = GaugeMetricFamily("kfwguard_cluster_connected",
                                   "1 while the cluster feed is followed live")
            up.add_metric([], 1.0 if svc.feed.connected else 0.0)
            yield up
            rec = CounterMetricFamily("kfwguard_cluster_bans_received",
                                      "Peers' bans put into this node's kernel")
            rec.add_metric([], svc.stats["received"])
            yield rec
            ref = CounterMetricFamily("kfwguard_cluster_bans_refused",
                                      "Peers' bans of this node's protected addresses refused")
            ref.add_metric([], svc.stats["refused"])
            yield ref
            out = GaugeMetricFamily("kfwguard_cluster_outbox",
                                    "Own ban changes not yet taken by the cluster store")
            out.add_metric([], len(svc.outbox) if svc.outbox is not None else 0)
            yield out
            nodes = GaugeMetricFamily("kfwguard_cluster_nodes", "Nodes by state",
                                      labels=["state"])
            for state, n in svc.node_states().items():
                nodes.add_metric([state], n)
            yield nodes

    registry.register(ClusterCollector())


def install(daemon: Daemon) -> ClusterHooks:
    hooks = ClusterHooks()
    daemon.on_start.append(hooks.start)
    daemon.on_stop.append(hooks.stop)
    daemon.on_reload.append(hooks.reload)
    setattr(daemon, "cluster", hooks)  # noqa: B010 - found by tools, like daemon.operator
    return hooks
