"""The daemon's lifecycle: start, serve, reload, shutdown, signals, sd_notify, lock.

Its collaborators are built by the composition root (``kfwguard.app``) and
handed in: the BanManager's factory (the firewall), the store's opener, the
baseline keeper and the components (operator surface, cluster mode). This
module builds the pipeline (sources → jails → BanManager, kfwguard.pipeline)
from the config, and at a reload rebuilds only what changed
(kfwguard.configdiff). SIGTERM/SIGINT stop cleanly (bans stay in the kernel
and expire there), SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from kfwguard.addresses import IgnoreList
from kfwguard.bans import BanManager
from kfwguard.config import Config, ConfigError, load_config_or_default
from kfwguard.configdiff import ConfigDiff
from kfwguard.firewall.baseline import BaselineError
from kfwguard.firewall.baseline.keeper import BaselineKeeper
from kfwguard.jails.jail import Jail
from kfwguard.lifecycle import Component, StartupError
from kfwguard.matching import Filter, FilterError
from kfwguard.notify import Notifier
from kfwguard.pipeline import (
    CURSOR_SAVE_INTERVAL,
    JailFeed,
    SourcePipeline,
    build_filters,
    filter_fingerprint,
)
from kfwguard.protection import follow_addresses, ignore_list
from kfwguard.sources import build_source
from kfwguard.sources.trust import forgery_warnings
from kfwguard.statelock import StateLock
from kfwguard.store import Store, StoreError

log = structlog.get_logger("kfwguard.daemon")


# READY waits this long for sources to fix their starting point; a source
# that takes longer (a hung NFS mount) is reported and READY is sent anyway.
SOURCE_READY_TIMEOUT = 10.0


# Builds the BanManager over the firewall, once the store is open (None: no store).
BanManagerFactory = Callable[[Config, Store | None], BanManager]
StoreOpener = Callable[[Path], Store | None]


class Daemon:
    def __init__(self, cfg: Config, cfg_path: str | None = None, *,
                 make_bans: BanManagerFactory, open_store: StoreOpener,
                 baseline: BaselineKeeper | None = None,
                 components: Sequence[Component] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.cfg_path = cfg_path
        self._make_bans = make_bans
        self._open_store = open_store
        self._lock = StateLock()
        self.clock = clock
        self.started_at = clock()
        self.notifier = Notifier()
        self.store: Store | None = None
        self.bans: BanManager | None = None
        self.sources: dict[str, SourcePipeline] = {}
        self.jails: dict[str, Jail] = {}
        # Filter name → fingerprint of the filters the jails were built with.
        self._filters: dict[str, str] = {}
        self.ignore = IgnoreList()
        # Sentences about the config an operator must see (logged, in status).
        self.warnings: list[str] = []
        # Keeps the baseline policy in force (None: this daemon never touches it).
        self.baseline = baseline
        # Started in order after the bans are restored (and stopped in that order).
        self.components = list(components)
        # Why the last reload was refused (the control API tells the CLI), and
        # what the operator must do after one that was accepted.
        self.last_reload_error: str | None = None
        self.last_reload_note: str | None = None
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # -- building --------------------------------------------------------------

    def _build_pipeline(self, cfg: Config, filters: dict[str, Filter],
                        diff: ConfigDiff | None = None) -> list[SourcePipeline]:
        """Build the jails and sources of ``cfg``. With a reload's ``diff``, the jails it
        keeps (whose ignore list is also unchanged) stay the same objects, windows and
        all, and the sources it keeps stay the same pipelines, running on: only their
        jails are swapped. Returns the pipelines to stop (removed or replaced)."""
        assert self.bans is not None
        bans = self.bans
        self.warnings = forgery_warnings(cfg, filters)
        for warning in self.warnings:
            log.warning("source_forgeable", detail=warning)
        old_jails, self.jails = self.jails, {}
        # A kept jail keeps its feed too: a paired filter's sessions hold lines
        # (PAM's, before sshd's own) that must still count after the reload.
        old_feeds = {f.jail.name: f for p in self.sources.values() for f in p.feeds}
        by_source: dict[str, list[JailFeed]] = {}
        for jc in cfg.jails:
            if not jc.enabled:
                continue
            jail_ignore = self.ignore.extended(jc.ignoreip) if jc.ignoreip else self.ignore
            jail = old_jails.get(jc.name) if diff is not None and jc.name in diff.jails_kept \
                else None
            if jail is None or jail.ignore.key_ranges() != jail_ignore.key_ranges():
                jail = Jail(jc, jail_ignore, max_entries=cfg.tracker.max_entries,
                            banned_since=bans.banned_since, clock=self.clock,
                            ipv6_prefix=cfg.ipv6_prefix)
            self.jails[jc.name] = jail
            flt = filters[jc.filter]
            feed = old_feeds.get(jc.name)
            if feed is None or feed.jail is not jail:
                feed = JailFeed.of(jail, flt)
            by_source.setdefault(jc.source, []).append(feed)
        self._filters = {name: filter_fingerprint(f) for name, f in filters.items()}
        old_sources, self.sources = self.sources, {}
        for sc in cfg.sources:
            feeds = by_source.get(sc.name)
            if feeds is None:
                continue
            kept = old_sources.get(sc.name) if diff is not None \
                and sc.name in diff.sources_kept else None
            if kept is not None:
                kept.feeds = feeds  # between two batches: the event loop runs one at a time
                self.sources[sc.name] = kept
                continue
            position = None
            if self.store is not None:
                try:
                    position = self.store.load_cursor(sc.name)
                except StoreError as exc:
                    log.error("cursor_unreadable", source=sc.name, error=str(exc))
            src = build_source(sc, position, clock=self.clock)
            self.sources[sc.name] = SourcePipeline(src, feeds, self.store,
                                                   bans.request, self.clock)
        return [rt for name, rt in old_sources.items() if self.sources.get(name) is not rt]

    async def _save_cursors_periodically(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_SAVE_INTERVAL)
            for rt in self.sources.values():
                rt.save_start_position()
                rt.save_cursor()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._lock.take(self.cfg.state_dir)
        try:
            await self._start()
        except BaseException:
            self._lock.release()
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        for component in self.components:
            component.prepare(cfg)
        self.store = self._open_store(cfg.state_dir)
        # The node's own addresses come from a child process; look them up while
        # the bans go back into the kernel, which comes first: it is what protects.
        # (Restored bans were checked against the ignore lists when decided.)
        ignore_lookup = asyncio.create_task(ignore_list(cfg))
        self.bans = self._make_bans(cfg, self.store)
        if self.store is None:
            self.bans.persisting = False
            await asyncio.to_thread(self.bans.adopt_kernel)
        else:
            await asyncio.to_thread(self.bans.restore)
        # Filters compile after the restore: the kernel's bans do not wait for
        # them, and a broken filter stops the start with the bans in force.
        try:
            filters = build_filters(cfg)
            BaselineKeeper.check(cfg.baseline)
        except (ConfigError, FilterError, BaselineError) as exc:
            ignore_lookup.cancel()
            raise StartupError(str(exc)) from exc
        self.ignore = self.bans.ignore = await ignore_lookup
        self._build_pipeline(cfg, filters)
        if self.baseline is not None:
            await self.baseline.start(cfg.baseline)
        for component in self.components:
            await component.start(cfg)
        self._start_tasks()
        await self._sources_ready()
        status = (f"{len(self.bans.active())} bans in force, "
                  f"{len(self.sources)} sources, {len(self.jails)} jails")
        self.notifier.ready(status)
        log.info("started", config=self.cfg_path or "<embedded default>",
                 sources=sorted(self.sources), jails=sorted(self.jails),
                 bans=len(self.bans.active()),
                 table=cfg.nftables.table)

    def _start_tasks(self) -> None:
        assert self.bans is not None
        for rt in self.sources.values():
            rt.start()
        self._tasks = [
            asyncio.create_task(self.bans.watch_table(), name="watch_table"),
            asyncio.create_task(self._save_cursors_periodically(), name="cursors"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(follow_addresses(lambda: self.ignore, self.bans),
                                name="addresses"),
        ]

    async def _sources_ready(self, pipelines: Sequence[SourcePipeline] | None = None) -> None:
        """Wait until every source (of ``pipelines``) has fixed its starting point, so
        READY means that a line written now will be read."""
        rts = list(self.sources.values()) if pipelines is None else pipelines
        try:
            await asyncio.wait_for(asyncio.gather(*(rt.source.ready.wait() for rt in rts)),
                                   SOURCE_READY_TIMEOUT)
        except TimeoutError:
            slow = [rt.source.name for rt in rts if not rt.source.ready.is_set()]
            log.warning("sources_not_ready", sources=slow)

    @staticmethod
    async def _stop_pipelines(pipelines: Sequence[SourcePipeline]) -> None:
        """Stop reading, then save where each stopped: a replacement resumes there."""
        tasks = [rt.task for rt in pipelines if rt.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for rt in pipelines:
            rt.task = None
            rt.save_cursor()

    async def reload(self) -> bool:
        """Re-read the config; rebuild what changed (ConfigDiff): unchanged jails keep
        their failure windows, unchanged sources read on. Bans are kept. False if
        refused (``last_reload_error`` says why); a refused reload changes nothing."""
        self.notifier.reloading()
        self.last_reload_error = self.last_reload_note = None
        try:
            new, _ = load_config_or_default(self.cfg_path)
            filters = build_filters(new)
            BaselineKeeper.check(new.baseline)
        except (ConfigError, FilterError, BaselineError) as exc:
            log.error("reload_refused", error=str(exc))
            self.last_reload_error = f"config invalid: {exc}"
            self.notifier.status("reload refused: config invalid; running on the old one")
            return False
        if new.nftables.table != self.cfg.nftables.table or new.state_dir != self.cfg.state_dir:
            log.warning("reload_needs_restart", keys="nftables.table, state_dir")
        # The baseline first: if nft refuses it, nothing else changes either.
        if self.baseline is not None:
            where = f" -c {self.cfg_path}" if self.cfg_path else ""
            refused, self.last_reload_note = await self.baseline.reload(new.baseline, where)
            if refused is not None:
                self.last_reload_error = refused
                self.notifier.status(
                    "reload refused: baseline refused by nft; running on the old one")
                return False
        diff = ConfigDiff.of(self.cfg, new, self._filters,
                             {n: filter_fingerprint(f) for n, f in filters.items()})
        # A changed source stops (saving its cursor) before its replacement reads
        # that cursor; an unchanged one reads on through the reload.
        await self._stop_pipelines([rt for name, rt in self.sources.items()
                                    if name not in diff.sources_kept])
        self.cfg = new
        assert self.bans is not None
        self.ignore = await ignore_list(new)
        self.bans.ignore = self.ignore
        self.bans.jails = {j.name: j for j in new.jails}
        self.bans.dry_run = new.dry_run
        self.bans.set_networks(new.baseline)
        self.bans.enforce_simulated()  # of jails whose dry_run was turned off
        stopped = self._build_pipeline(new, filters, diff)
        await self._stop_pipelines(stopped)
        started = [rt for rt in self.sources.values() if rt.task is None]
        for rt in started:
            rt.start()
        await self._sources_ready(started)
        for component in self.components:
            await component.reload(new)
        log.info("reloaded", sources=sorted(self.sources), jails=sorted(self.jails),
                 sources_kept=sorted(diff.sources_kept & self.sources.keys()),
                 jails_kept=sorted(n for n in diff.jails_kept if n in self.jails))
        self.notifier.ready(f"reloaded: {len(self.sources)} sources, {len(self.jails)} jails")
        return True

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await self.start()
        try:
            while not self._stop.is_set():
                stop = asyncio.create_task(self._stop.wait())
                reload = asyncio.create_task(self._reload_requested.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                reload.cancel()
                if self._reload_requested.is_set() and not self._stop.is_set():
                    self._reload_requested.clear()
                    await self.reload()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        await self._stop_pipelines(list(self.sources.values()))
        if self.bans is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bans.flush(), timeout=5.0)
            self.bans.sync_store()  # what a full disk held back, if it has room now
        for component in self.components:
            with contextlib.suppress(Exception):
                await component.stop()
        if self.baseline is not None:
            await self.baseline.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.store is not None:
            self.store.close()
        self._lock.release()
        log.info("stopped", note="bans stay in the kernel and expire there")
