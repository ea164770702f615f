"""One typed snapshot of every counter the daemon keeps, built in one place.

The parts count (sources, jails, the BanManager, alert workers, the baseline,
cluster mode); ``Telemetry.snapshot()`` reads them all at once into plain
dataclasses, and the two readers render that: ``/status`` (operator.control)
and ``/metrics`` (operator.metrics). Nothing else walks the daemon's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kfwguard import __version__
from kfwguard.alerts.service import AlertService
from kfwguard.bans import BanManager
from kfwguard.config import Config
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.jails.jail import Jail
from kfwguard.pipeline import SourcePipeline
from kfwguard.sources.base import Backlog
from kfwguard.store import BanRow

if TYPE_CHECKING:
    # Cluster mode is imported only when configured (it loads aiohttp).
    from kfwguard.cluster.service import ClusterService


@dataclass(frozen=True)
class SourceTelemetry:
    name: str
    lines_read: int
    skipped: Mapping[str, int]
    lag: float | None               # None before the source runs
    backlog: Backlog | None         # None before the source runs
    errors: int                     # filter bugs and source crashes
    jails: Sequence[str]
    problem: str | None             # why it reads nothing, when it knows


@dataclass(frozen=True)
class JailTelemetry:
    name: str
    source: str
    filter: str
    tracked: int                    # addresses with failures counted
    ignored: int
    stale: int                      # failures older than findtime by their log time
    unattributed: int               # lines without an address no session could attribute
    actions: Sequence[str]
    dry_run: bool


@dataclass(frozen=True)
class BanTelemetry:
    in_force: Sequence[BanRow]      # enforced and simulated
    pending: int
    total: int
    unbans: int
    refused: int
    refused_manual: int
    simulated_total: int
    kernel_errors: int
    store_errors: int
    table_restores: int
    per_jail_total: Mapping[str, int]
    persisting: bool

    @property
    def simulated_in_force(self) -> int:
        return sum(r.simulated for r in self.in_force)

    @property
    def enforced_in_force(self) -> int:
        return len(self.in_force) - self.simulated_in_force

    def in_force_by_jail(self, simulated: bool = False) -> dict[str, int]:
        """Bans in force per jail (with ``simulated``: only the simulated ones)."""
        out: dict[str, int] = {}
        for r in self.in_force:
            if r.simulated or not simulated:
                out[r.jail] = out.get(r.jail, 0) + 1
        return out


@dataclass(frozen=True)
class AlertTelemetry:
    name: str
    type: str
    queued: int
    sent: int
    messages: int
    failures: int
    dropped: int
    last_error: str | None


@dataclass(frozen=True)
class BaselineTelemetry:
    drift: int
    errors: int
    refused: int
    # The policy in force, as ``kfwguard status`` shows it (None: none in force).
    enforced: Mapping[str, Any] | None


@dataclass(frozen=True)
class ClusterTelemetry:
    connected: bool
    received: int
    refused: int
    outbox: int
    nodes: Mapping[str, int]        # nodes per state
    status: Mapping[str, Any]       # what ``kfwguard cluster status`` shows


@dataclass(frozen=True)
class Snapshot:
    version: str
    config: str
    uptime: float
    warnings: Sequence[str]
    table: str
    sources: Sequence[SourceTelemetry]
    # (jail, rule) → failures found, since start (rule "": the filter did not say).
    matches: Mapping[tuple[str, str], int]
    jails: Sequence[JailTelemetry]
    bans: BanTelemetry | None       # None: still starting
    alerts: Sequence[AlertTelemetry] | None = None   # None: no alert service
    baseline: BaselineTelemetry | None = None        # None: no baseline keeper
    cluster: ClusterTelemetry | None = None          # None: not in cluster mode


class Observed(Protocol):
    """What the snapshot reads from the daemon (kfwguard.daemon.Daemon)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def cfg_path(self) -> str | None: ...
    @property
    def started_at(self) -> float: ...
    @property
    def warnings(self) -> Sequence[str]: ...
    @property
    def sources(self) -> Mapping[str, SourcePipeline]: ...
    @property
    def jails(self) -> Mapping[str, Jail]: ...
    @property
    def bans(self) -> BanManager | None: ...
    @property
    def baseline(self) -> BaselineKeeper | None: ...


@dataclass
class Telemetry:
    """Reads the daemon and the parts that register here (alerts, cluster)."""

    daemon: Observed
    clock: Callable[[], float] = time.time
    alerts: AlertService | None = None
    cluster: ClusterService | None = None

    def snapshot(self) -> Snapshot:
        """Every counter, now. Call it on the event loop: the parts are read
        without racing the pipeline."""
        d = self.daemon
        unattributed = {f.jail.name: f.sessions.unattributed for rt in d.sources.values()
                        for f in rt.feeds if f.sessions is not None}
        return Snapshot(
            version=__version__,
            config=d.cfg_path or "<embedded default>",
            uptime=self.clock() - d.started_at,
            warnings=list(d.warnings),
            table=d.cfg.nftables.table,
            sources=[_source(rt) for rt in d.sources.values()],
            matches=_matches(d.sources.values()),
            jails=[_jail(j, d.bans, unattributed.get(j.name, 0)) for j in d.jails.values()],
            bans=_bans(d.bans) if d.bans is not None else None,
            alerts=_alerts(self.alerts) if self.alerts is not None else None,
            baseline=_baseline(d.baseline) if d.baseline is not None else None,
            cluster=_cluster(self.cluster) if self.cluster is not None else None,
        )


def _source(rt: SourcePipeline) -> SourceTelemetry:
    src = rt.source
    lag = src.lag()
    return SourceTelemetry(
        name=src.name, lines_read=src.lines_read, skipped=dict(src.skipped), lag=lag,
        backlog=src.backlog() if lag is not None else None, errors=rt.errors,
        jails=[f.jail.name for f in rt.feeds], problem=src.problem)


def _matches(pipelines: Iterable[SourcePipeline]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for rt in pipelines:
        for key, n in rt.matches.items():
            out[key] = out.get(key, 0) + n
    return out


def _jail(jail: Jail, bans: BanManager | None, unattributed: int) -> JailTelemetry:
    return JailTelemetry(
        name=jail.name, source=jail.cfg.source, filter=jail.cfg.filter, tracked=len(jail),
        ignored=jail.stats.ignored, stale=jail.stats.stale, unattributed=unattributed,
        actions=list(jail.cfg.actions),
        dry_run=bans.simulates(jail.name) if bans is not None else False)


def _bans(bm: BanManager) -> BanTelemetry:
    s = bm.stats
    return BanTelemetry(
        in_force=bm.active(), pending=bm.pending, total=s.bans, unbans=s.unbans,
        refused=s.refused, refused_manual=s.refused_manual, simulated_total=s.simulated,
        kernel_errors=s.kernel_errors, store_errors=s.store_errors,
        table_restores=s.table_restores, per_jail_total=dict(s.per_jail),
        persisting=bool(bm.persisting))


def _alerts(svc: AlertService) -> list[AlertTelemetry]:
    actions = svc.cfg.actions
    return [AlertTelemetry(name=name, type=actions[name].type if name in actions else "?",
                           queued=svc.outbox.size(name), sent=w.sent, messages=w.messages,
                           failures=w.failures, dropped=w.dropped, last_error=w.last_error)
            for name, w in sorted(svc.workers.items())]


def _baseline(keeper: BaselineKeeper) -> BaselineTelemetry:
    s = keeper.stats
    return BaselineTelemetry(drift=s.drift, errors=s.errors, refused=s.refused,
                             enforced=keeper.status())


def _cluster(svc: ClusterService) -> ClusterTelemetry:
    return ClusterTelemetry(
        connected=svc.feed.connected, received=svc.stats["received"],
        refused=svc.stats["refused"], outbox=len(svc.outbox) if svc.outbox is not None else 0,
        nodes=svc.node_states(), status=svc.status())
