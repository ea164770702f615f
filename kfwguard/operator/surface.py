"""The operator surface of a daemon: control API, metrics endpoint, alerts.

A component of the daemon (kfwguard.lifecycle): it starts after the bans are
restored and before READY=1, so a ready daemon already answers the CLI;
BanManager listeners only record or enqueue, never wait. It reads the daemon
through ``Host`` and its counters through one ``Telemetry``; it never imports
the daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import structlog

from kfwguard.alerts.service import AlertService
from kfwguard.config import Config
from kfwguard.lifecycle import StartupError
from kfwguard.operator.control import Controlled, ControlServer, ControlUnavailable
from kfwguard.operator.metrics import Metrics
from kfwguard.store import Store
from kfwguard.telemetry import Telemetry

log = structlog.get_logger("kfwguard.operator")


class Host(Controlled, Protocol):
    """What the operator surface reads from the daemon (kfwguard.daemon.Daemon)."""

    @property
    def store(self) -> Store | None: ...


class Operator:
    def __init__(self, daemon: Host, telemetry: Telemetry,
                 drift_listeners: list[Callable[[str], None]] | None = None) -> None:
        self.daemon = daemon
        self.telemetry = telemetry
        # Where the baseline announces drift (BaselineKeeper.on_drift): alerted.
        self.drift_listeners = drift_listeners
        self.metrics = Metrics(telemetry)
        self.alerts: AlertService | None = None
        self.control: ControlServer | None = None

    def prepare(self, cfg: Config) -> None:
        """Nothing to begin early."""

    async def start(self, cfg: Config) -> None:
        daemon = self.daemon
        bans = daemon.bans
        assert bans is not None, "components start after the BanManager exists"
        alerts = self.alerts = self.telemetry.alerts = AlertService(cfg, daemon.store)
        bans.on_ban.append(self.metrics.on_ban)
        bans.on_applied.append(self.metrics.on_applied)
        bans.on_ban.append(alerts.on_ban)
        bans.on_unban.append(alerts.on_unban)
        if self.drift_listeners is not None:
            self.drift_listeners.append(
                lambda reason: alerts.on_drift(daemon.cfg.baseline.table, reason))
        await alerts.start()

        control = ControlServer(daemon, cfg.control_socket, self.telemetry)
        try:
            await control.start()
            self.control = control
        except ControlUnavailable as exc:
            # A second daemon would fight the first over the same table.
            raise StartupError(str(exc)) from exc
        except OSError as exc:
            # Bans matter more than the CLI: keep protecting the node.
            log.error("control_unavailable", socket=str(cfg.control_socket), error=str(exc))

        await self._start_metrics(cfg)

    async def _start_metrics(self, cfg: Config) -> None:
        mc = cfg.metrics
        if mc is None:
            return
        try:
            await self.metrics.start(mc.listen)
        except (OSError, ValueError) as exc:
            log.error("metrics_unavailable", listen=mc.listen, error=str(exc))

    async def reload(self, cfg: Config) -> None:
        if self.alerts is not None:
            await self.alerts.reload(cfg)
        want = cfg.metrics.listen if cfg.metrics is not None else None
        if want != self.metrics.listen:
            await self.metrics.stop()
            await self._start_metrics(cfg)
        if self.control is not None and cfg.control_socket != self.control.path:
            log.warning("reload_needs_restart", keys="control_socket")

    async def stop(self) -> None:
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.stop()
        await self.metrics.stop()
        if self.alerts is not None:
            await self.alerts.stop()
