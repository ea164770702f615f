"""The operator surface of a daemon: control API, metrics endpoint, alerts.

``install(daemon)`` hooks them into the daemon's lifecycle. They start after
the bans are restored and before READY=1, so a ready daemon already answers
the CLI; BanManager listeners only record or enqueue, never wait.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog

from kfwguard.alerts.service import AlertService
from kfwguard.control import ControlServer, ControlUnavailable
from kfwguard.metrics import Metrics

if TYPE_CHECKING:
    from kfwguard.daemon import Daemon

log = structlog.get_logger("kfwguard.operator")


class Operator:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.metrics = Metrics(daemon)
        self.alerts: AlertService | None = None
        self.control: ControlServer | None = None

    async def start(self, daemon: Daemon) -> None:
        from kfwguard.daemon import StartupError

        bans = daemon.bans
        assert bans is not None, "on_start runs after the BanManager exists"
        self.alerts = AlertService(daemon.cfg, daemon.store)
        self.metrics.alerts = self.alerts
        bans.on_ban.append(self.metrics.on_ban)
        bans.on_applied.append(self.metrics.on_applied)
        bans.on_ban.append(self.alerts.on_ban)
        bans.on_unban.append(self.alerts.on_unban)
        alerts = self.alerts
        daemon.on_drift.append(
            lambda reason: alerts.on_drift(daemon.cfg.baseline.table, reason))
        await self.alerts.start()

        control = ControlServer(daemon, daemon.cfg.control_socket,
                                extra_status={"alerts": self.alerts.status})
        try:
            await control.start()
            self.control = control
        except ControlUnavailable as exc:
            # A second daemon would fight the first over the same table.
            raise StartupError(str(exc)) from exc
        except OSError as exc:
            # Bans matter more than the CLI: keep protecting the node.
            log.error("control_unavailable", socket=str(daemon.cfg.control_socket),
                      error=str(exc))

        await self._start_metrics(daemon)

    async def _start_metrics(self, daemon: Daemon) -> None:
        mc = daemon.cfg.metrics
        if mc is None:
            return
        try:
            await self.metrics.start(mc.listen)
        except (OSError, ValueError) as exc:
            log.error("metrics_unavailable", listen=mc.listen, error=str(exc))

    async def reload(self, daemon: Daemon) -> None:
        if self.alerts is not None:
            await self.alerts.reload(daemon.cfg)
        want = daemon.cfg.metrics.listen if daemon.cfg.metrics is not None else None
        if want != self.metrics.listen:
            await self.metrics.stop()
            await self._start_metrics(daemon)
        if self.control is not None and daemon.cfg.control_socket != self.control.path:
            log.warning("reload_needs_restart", keys="control_socket")

    async def stop(self, daemon: Daemon) -> None:
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.control.stop()
        await self.metrics.stop()
        if self.alerts is not None:
            await self.alerts.stop()


def install(daemon: Daemon) -> Operator:
    """Attach control API, metrics and alerts to ``daemon``'s start/stop/reload."""
    op = Operator(daemon)
    daemon.on_start.append(op.start)
    daemon.on_reload.append(op.reload)
    daemon.on_stop.append(op.stop)
    setattr(daemon, "operator", op)  # noqa: B010 - Daemon does not declare it; tools find it here
    return op
