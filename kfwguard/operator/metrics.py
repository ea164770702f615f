"""Prometheus metrics, rendered from one telemetry snapshot at scrape time.

A custom collector renders ``Telemetry.snapshot()`` (sources, jails, the
BanManager, alert workers, the baseline, cluster mode), so nothing is counted
twice and ``/status`` shows the same numbers. Only
what the daemon does not keep is recorded here: bans per jail and the ban
latency histogram, both fed by BanManager listeners. Every instance has its
own CollectorRegistry, so several daemons (tests) can run in one process.

Names follow ``kfwguard_<noun>_<unit>_total`` for counters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import prometheus_client.exposition
import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kfwguard.config import parse_listen
from kfwguard.operator.http import HTTPServer, Request, Response, Route, Router, text_response
from kfwguard.store import BanRow
from kfwguard.telemetry import Snapshot, Telemetry

log = structlog.get_logger("kfwguard.metrics")

# The classic text format: every Prometheus 2.x parses it, and our names need
# none of 1.0.0's escaping. Newer prometheus_client default to 1.0.0.
CONTENT_TYPE = str(getattr(prometheus_client.exposition, "CONTENT_TYPE_PLAIN_0_0_4",
                           CONTENT_TYPE_LATEST))

# kfwguard_ban_offence carries addresses as labels: only this many series.
TOP_OFFENDERS = 10

# From one event-loop tick (~ms) to the kernel retry back-off (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class SnapshotCollector(Collector):
    """Renders a telemetry snapshot when Prometheus scrapes."""

    def __init__(self, telemetry: Telemetry, metrics: Metrics) -> None:
        self.telemetry = telemetry
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.telemetry.snapshot()
        info = GaugeMetricFamily("kfwguard_build_info", "kfwguard version", labels=["version"])
        info.add_metric([snap.version], 1)
        yield info
        yield from _sources(snap)
        yield from _jails(snap)
        yield from self._bans(snap)
        yield from _alerts(snap)
        yield from _baseline(snap)
        yield from _cluster(snap)

    def _bans(self, snap: Snapshot) -> Iterator[Metric]:
        bans = CounterMetricFamily("kfwguard_bans",
                                   "Bans decided, by jail and origin (jail: from the logs; "
                                   "manual: kfwguard ban)", labels=["jail", "origin"])
        for (jail_name, origin), n in sorted(self.metrics.bans_by_jail.items()):
            bans.add_metric([jail_name, origin], n)
        yield bans
        simulated = CounterMetricFamily(
            "kfwguard_simulated_bans",
            "Bans decided in observe mode (dry_run), by jail: stored and alerted, never "
            "in the kernel (not in kfwguard_bans_total)", labels=["jail"])
        for jail_name, n in sorted(self.metrics.simulated_by_jail.items()):
            simulated.add_metric([jail_name], n)
        yield simulated

        bm = snap.bans
        top = GaugeMetricFamily(
            "kfwguard_ban_offence",
            f"Offence number (times banned) of the {TOP_OFFENDERS} bans in force with the "
            "most; bounded, for 'top banned sources'", labels=["target", "jail"])
        if bm is not None:
            rows = sorted(bm.in_force, key=lambda r: (-r.offence, r.target))[:TOP_OFFENDERS]
            for row in rows:
                top.add_metric([row.target, row.jail], row.offence)
        yield top
        active = GaugeMetricFamily("kfwguard_bans_active", "Bans in force (enforced)")
        active.add_metric([], bm.enforced_in_force if bm is not None else 0)
        yield active
        sim_active = GaugeMetricFamily("kfwguard_simulated_bans_active",
                                       "Simulated bans (observe mode) in force")
        sim_active.add_metric([], bm.simulated_in_force if bm is not None else 0)
        yield sim_active
        pending = GaugeMetricFamily("kfwguard_bans_pending",
                                    "Ban and unban changes not yet applied to the kernel")
        pending.add_metric([], bm.pending if bm is not None else 0)
        yield pending
        for name, doc, value in (
            ("kfwguard_unbans", "Bans lifted (by hand or expired)",
             bm.unbans if bm is not None else 0),
            ("kfwguard_bans_refused", "Bans refused (ignored or protected addresses)",
             bm.refused if bm is not None else 0),
            ("kfwguard_manual_bans_refused", "Of kfwguard_bans_refused_total, those an "
             "operator asked for (kfwguard ban)", bm.refused_manual if bm is not None else 0),
            ("kfwguard_kernel_update_errors", "nftables updates that failed",
             bm.kernel_errors if bm is not None else 0),
            ("kfwguard_state_errors", "State database errors",
             bm.store_errors if bm is not None else 0),
            ("kfwguard_table_restores", "Times the ban table was recreated after removal",
             bm.table_restores if bm is not None else 0),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        persisting = GaugeMetricFamily("kfwguard_state_persisting",
                                       "1 while bans are written to the state database")
        persisting.add_metric([], 1 if bm is not None and bm.persisting else 0)
        yield persisting


def _sources(snap: Snapshot) -> Iterator[Metric]:
    lines = CounterMetricFamily("kfwguard_source_lines", "Log lines (records) read",
                                labels=["source"])
    skipped = CounterMetricFamily("kfwguard_source_skipped",
                                  "Lines skipped without matching, by reason",
                                  labels=["source", "reason"])
    lag = GaugeMetricFamily(
        "kfwguard_source_lag_seconds",
        "0 when the source has read all that was written; else seconds since it was "
        "last at the end of its input (bounds the age of the oldest unread record)",
        labels=["source"])
    backlog = GaugeMetricFamily("kfwguard_source_backlog_bytes",
                                "Bytes written to a file source but not read yet "
                                "(size - offset)", labels=["source"])
    caught_up = GaugeMetricFamily("kfwguard_source_caught_up",
                                  "1 when the source is at the end of its input "
                                  "(a file's end, the journal's tail)", labels=["source"])
    errors = CounterMetricFamily("kfwguard_source_errors",
                                 "Source crashes and filter errors", labels=["source"])
    for src in snap.sources:
        lines.add_metric([src.name], src.lines_read)
        for reason, n in sorted(src.skipped.items()):
            skipped.add_metric([src.name, reason], n)
        if src.lag is not None:
            lag.add_metric([src.name], src.lag)
        if src.backlog is not None:
            caught_up.add_metric([src.name], 1 if src.backlog.caught_up else 0)
            if src.backlog.unread_bytes is not None:
                backlog.add_metric([src.name], src.backlog.unread_bytes)
        errors.add_metric([src.name], src.errors)
    yield from (lines, skipped, lag, backlog, caught_up, errors)

    m = CounterMetricFamily("kfwguard_matches", "Failures found, by jail and filter rule",
                            labels=["jail", "rule"])
    for (jail_name, rule), n in sorted(snap.matches.items()):
        m.add_metric([jail_name, rule], n)
    yield m


def _jails(snap: Snapshot) -> Iterator[Metric]:
    tracked = GaugeMetricFamily("kfwguard_jail_tracked_addresses",
                                "Addresses with failures counted in a jail", labels=["jail"])
    stale = CounterMetricFamily(
        "kfwguard_jail_stale_failures",
        "Failures dropped as older than findtime by their log time (a wrong time "
        "zone shows here)", labels=["jail"])
    unattributed = CounterMetricFamily(
        "kfwguard_jail_unattributed_lines",
        "Lines without an address (e.g. sshd's 'Too many authentication failures') "
        "that no session of the same process had named an address for, so counted "
        "nothing", labels=["jail"])
    for jail in snap.jails:
        tracked.add_metric([jail.name], jail.tracked)
        stale.add_metric([jail.name], jail.stale)
        unattributed.add_metric([jail.name], jail.unattributed)
    yield tracked
    yield stale
    yield unattributed


def _alerts(snap: Snapshot) -> Iterator[Metric]:
    sent = CounterMetricFamily("kfwguard_alerts_sent", "Alert events delivered",
                               labels=["action"])
    failures = CounterMetricFamily("kfwguard_alert_failures",
                                   "Failed alert deliveries", labels=["action"])
    dropped = CounterMetricFamily("kfwguard_alerts_dropped",
                                  "Alert events given up on (refused or too old)",
                                  labels=["action"])
    queued = GaugeMetricFamily("kfwguard_alerts_queued", "Alert events waiting for delivery",
                               labels=["action"])
    for a in snap.alerts or ():
        sent.add_metric([a.name], a.sent)
        failures.add_metric([a.name], a.failures)
        dropped.add_metric([a.name], a.dropped)
        queued.add_metric([a.name], a.queued)
    yield from (sent, failures, dropped, queued)


def _baseline(snap: Snapshot) -> Iterator[Metric]:
    b = snap.baseline
    if b is None:
        return
    if b.enforced is not None:
        c = CounterMetricFamily("kfwguard_baseline_drift",
                                "Times the baseline ruleset was found changed and repaired")
        c.add_metric([], b.drift)
        yield c
    for name, value, doc in (
            ("kfwguard_baseline_refused", b.refused,
             "New baseline policies nft refused (the previous one stayed in force)"),
            ("kfwguard_baseline_errors", b.errors,
             "Baseline checks or repairs that failed (the loop went on)")):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], value)
        yield c


def _cluster(snap: Snapshot) -> Iterator[Metric]:
    c = snap.cluster
    if c is None:
        return
    up = GaugeMetricFamily("kfwguard_cluster_connected",
                           "1 while the cluster feed is followed live")
    up.add_metric([], 1.0 if c.connected else 0.0)
    yield up
    rec = CounterMetricFamily("kfwguard_cluster_bans_received",
                              "Peers' bans put into this node's kernel")
    rec.add_metric([], c.received)
    yield rec
    ref = CounterMetricFamily("kfwguard_cluster_bans_refused",
                              "Peers' bans of this node's protected addresses refused")
    ref.add_metric([], c.refused)
    yield ref
    out = GaugeMetricFamily("kfwguard_cluster_outbox",
                            "Own ban changes not yet taken by the cluster store")
    out.add_metric([], c.outbox)
    yield out
    nodes = GaugeMetricFamily("kfwguard_cluster_nodes", "Nodes by state", labels=["state"])
    for state, n in c.nodes.items():
        nodes.add_metric([state], n)
    yield nodes


class Metrics:
    """The daemon's registry, the listeners that feed it, and the HTTP endpoint."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.registry = CollectorRegistry()
        self.bans_by_jail: dict[tuple[str, str], int] = {}
        self.simulated_by_jail: dict[str, int] = {}  # observe mode (dry_run)
        self.latency = Histogram("kfwguard_ban_latency_seconds",
                                 "From the ban decision to the kernel update",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(SnapshotCollector(telemetry, self))
        # process_resident_memory_bytes, CPU seconds, open fds (from /proc).
        ProcessCollector(registry=self.registry)
        self._server: HTTPServer | None = None
        self.listen: str | None = None

    # -- listeners ----------------------------------------------------------------

    def on_ban(self, rows: Sequence[BanRow]) -> None:
        for r in rows:
            if r.simulated:
                self.simulated_by_jail[r.jail] = self.simulated_by_jail.get(r.jail, 0) + 1
                continue
            key = (r.jail, "manual" if r.reason.startswith("manual:") else "jail")
            self.bans_by_jail[key] = self.bans_by_jail.get(key, 0) + 1

    def on_applied(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    # -- HTTP ---------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        # Scrapes run on the event loop: the collector reads the daemon's
        # dicts without racing the pipeline.
        return Response(body=self.exposition(), content_type=CONTENT_TYPE)

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        router = Router([Route("GET", "/metrics", self.handle), Route("GET", "/", self._index)])
        server = HTTPServer(router, max_body=0)
        await server.start_tcp(host, port)
        self._server = server
        self.listen = listen
        log.info("metrics_listening", listen=listen)

    @property
    def port(self) -> int | None:
        """The TCP port the endpoint is bound to (``:0`` in ``listen`` picks one)."""
        socks = self._server.sockets if self._server is not None else []
        return int(socks[0].getsockname()[1]) if socks else None

    async def _index(self, request: Request) -> Response:
        return text_response("kfwguard: metrics at /metrics\n")

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.close()
            self._server = None
            self.listen = None


