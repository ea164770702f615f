"""Alerts for one daemon: listeners → typed events → outbox → one worker per action."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, assert_never

import structlog

from kfwguard.alerts.events import AlertEvent, Ban, BaselineAgrees, BaselineDiffers, Drift, Unban
from kfwguard.alerts.outbox import AlertWorker, Outbox
from kfwguard.config import Config
from kfwguard.configdiff import changed_actions
from kfwguard.store import BanRow, Store

log = structlog.get_logger("kfwguard.alerts")


def node_name(cfg: Config) -> str:
    """The node as alerts name it: config, then the DaemonSet's downward-API
    variable, then the host name (the node's own with host networking)."""
    return cfg.node_name or os.environ.get("NODE_NAME") or socket.gethostname()


def _facts(row: BanRow, node: str, at: float) -> dict[str, Any]:
    return {"target": row.target, "jail": row.jail, "reason": row.reason,
            "banned_at": row.banned_at, "expires_at": row.expires_at, "offence": row.offence,
            "node": node, "at": at, "simulated": row.simulated}


class AlertService:
    """Queues an event per action for every ban and early unban, and delivers them."""

    def __init__(self, cfg: Config, store: Store | None, *,
                 clock: Callable[[], float] = time.time, **worker_options: Any) -> None:
        self.clock = clock
        self.outbox = Outbox(store, clock=clock)
        self.worker_options = worker_options
        self.workers: dict[str, AlertWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._spooler: asyncio.Task[None] | None = None
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take the routing (jail → actions) and node name from ``cfg``."""
        self.cfg = cfg
        self.node = node_name(cfg)
        self.routes = {j.name: list(j.actions) for j in cfg.jails}

    def actions_for(self, jail: str) -> list[str]:
        """A jail's own actions. Bans in a jail the config does not name (manual
        bans, jail "manual" by default) go to every action: an operator who set
        up alerts wants to see those too."""
        if jail in self.routes:
            return self.routes[jail]
        return list(self.cfg.actions)

    def routes_for(self, event: AlertEvent) -> list[str]:
        """The actions that hear of ``event``: a ban's jail's; the node's own
        events (drift) go to every action."""
        match event:
            case Ban() | Unban():
                return self.actions_for(event.jail)
            case Drift() | BaselineDiffers() | BaselineAgrees():
                return list(self.cfg.actions)
            case _:
                assert_never(event)

    def publish(self, events: Sequence[AlertEvent]) -> None:
        """Queue ``events`` for the actions they route to. Never blocks, never raises."""
        self.outbox.put([(a, ev) for ev in events for a in self.routes_for(ev)])

    # -- listeners (called by the BanManager and the baseline; only queue) ---------

    def on_ban(self, rows: Sequence[BanRow]) -> None:
        now = self.clock()
        self.publish([Ban(**_facts(r, self.node, now)) for r in rows])

    def on_unban(self, rows: Sequence[BanRow]) -> None:
        now = self.clock()
        # Expiries need no message: Alertmanager resolves at endsAt by itself,
        # and a chat line for every expiry would drown the bans.
        self.publish([Unban(**_facts(r, self.node, now)) for r in rows if r.expires_at > now])

    def on_drift(self, table: str, reason: str) -> None:
        """The baseline had drifted and was put back: every action hears of it."""
        self.publish([Drift(table, reason, self.node, self.clock())])

    def on_cluster_baseline(self, subject: str, firing: bool, reason: str) -> None:
        """Cluster mode: node ``subject``'s baseline differs from the cluster's
        (``firing``) or agrees again; every action hears of it."""
        kind = BaselineDiffers if firing else BaselineAgrees
        self.publish([kind(subject, reason, self.node, self.clock())])

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._spooler = asyncio.create_task(self.outbox.spool(), name="alerts:spool")
        await self._start_workers()

    async def _start_workers(self, only: Collection[str] | None = None) -> None:
        for name, acfg in self.cfg.actions.items():
            if only is not None and name not in only:
                continue
            try:
                sender = acfg.build(name, self.node)
            except (OSError, ValueError) as exc:
                log.error("alert_action_unusable", action=name, error=str(exc))
                continue
            worker = AlertWorker(sender, self.outbox, aggregate=sender.aggregate,
                                 clock=self.clock, **self.worker_options)
            self.workers[name] = worker
            self._tasks[name] = asyncio.create_task(worker.run(), name=f"alerts:{name}")
        if self.workers:
            log.info("alerts_ready", actions=sorted(self.workers))

    async def _stop_workers(self, only: Collection[str] | None = None) -> None:
        names = [n for n in self._tasks if only is None or n in only]
        tasks = [self._tasks.pop(n) for n in names]
        # Python 3.11's wait_for loses a cancel that lands as the worker's wake
        # event fires (an alert queued just before a reload): the worker then
        # runs on and awaiting it hangs the reload. Cancel until it ends.
        while pending := [t for t in tasks if not t.done()]:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=0.5)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for n in names:
            with contextlib.suppress(Exception):
                await self.workers.pop(n).sender.close()

    async def reload(self, cfg: Config) -> None:
        """Restart the workers of the actions that changed (all of them if the node's
        name did); the others deliver on undisturbed."""
        changed: Collection[str] = changed_actions(self.cfg, cfg)
        if node_name(cfg) != self.node:
            changed = self.cfg.actions.keys() | cfg.actions.keys()
        # Queued items stay; counters carry over so metrics stay monotonic.
        old = {n: (w.sent, w.messages, w.failures, w.dropped)
               for n, w in self.workers.items() if n in changed}
        await self._stop_workers(changed)
        self.configure(cfg)
        await self._start_workers(changed)
        for name, (sent, messages, failures, dropped) in old.items():
            w = self.workers.get(name)
            if w is not None:
                w.sent, w.messages, w.failures, w.dropped = sent, messages, failures, dropped

    async def stop(self) -> None:
        if self._spooler is not None:
            self._spooler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._spooler
        # Whatever is still in memory goes to the store for the next start.
        self.outbox.spool_now()
        await self._stop_workers()

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "type": self.cfg.actions[name].type if name in self.cfg.actions else "?",
                "queued": self.outbox.size(name),
                "sent": w.sent,
                "messages": w.messages,
                "failures": w.failures,
                "dropped": w.dropped,
                "last_error": w.last_error,
            }
            for name, w in self.workers.items()
        }
