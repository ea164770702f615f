"""Builds the running parts from the config and runs them until told to stop.

Sources feed records to the jails of that source; jails' decisions go to the
BanManager. SIGTERM/SIGINT stop cleanly (bans stay in the kernel and expire
there), SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList
from kfwguard.bans import BanManager
from kfwguard.config import Config, ConfigError, JailConfig, load_config_or_default
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.baseline import BaselineEnforcer, BaselineError, validate
from kfwguard.firewall.nft import Nft, NftError
from kfwguard.jails import Jail
from kfwguard.matching import Filter, FilterError, load_filter
from kfwguard.matching.engine import Hit
from kfwguard.model import BanRequest, Record
from kfwguard.node import protected_networks
from kfwguard.notify import Notifier
from kfwguard.sources import Source, build_source
from kfwguard.sources.formats import TextBlock
from kfwguard.store import Store, StoreError

log = structlog.get_logger("kfwguard.daemon")

# Positions are saved at most this often per source (and at stop): a crash
# re-reads at most this much, and re-read lines never re-ban (jails count by
# log time and skip what precedes a ban).
CURSOR_SAVE_INTERVAL = 1.0


# READY waits this long for sources to fix their starting point; a source
# that takes longer (a hung NFS mount) is reported and READY is sent anyway.
SOURCE_READY_TIMEOUT = 10.0


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


@dataclass
class JailRuntime:
    jail: Jail
    filter: Filter


@dataclass
class SourceRuntime:
    source: Source
    jails: list[JailRuntime]
    task: asyncio.Task[None] | None = None
    last_saved: float = 0.0
    unsaved: str | None = None
    errors: int = 0
    cursor_failing: bool = False
    matches: dict[tuple[str, str], int] = field(default_factory=dict)


def build_filters(cfg: Config) -> dict[str, Filter]:
    """Load every filter the enabled jails use; raise FilterError on the first bad one."""
    out: dict[str, Filter] = {}
    for j in cfg.jails:
        if j.enabled and j.filter not in out:
            out[j.filter] = load_filter(j.filter, cfg.filters_dirs)
    return out


class Daemon:
    def __init__(self, cfg: Config, cfg_path: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.cfg_path = cfg_path
        self.clock = clock
        self.started_at = clock()
        self.notifier = Notifier()
        self.store: Store | None = None
        self.bans: BanManager | None = None
        self.sources: dict[str, SourceRuntime] = {}
        self.jails: dict[str, Jail] = {}
        self.ignore = IgnoreList()
        self.nft: Nft | None = None
        self.baseline: BaselineEnforcer | None = None
        self._baseline_task: asyncio.Task[None] | None = None
        # Called with a reason each time the baseline had drifted and was healed.
        self.on_drift: list[Callable[[str], None]] = []
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        # Components added by other modules (control API, metrics, alerts,
        # baseline) register start/stop hooks here.
        self.on_start: list[Callable[[Daemon], Any]] = []
        self.on_stop: list[Callable[[Daemon], Any]] = []
        self.on_reload: list[Callable[[Daemon], Any]] = []
        from kfwguard.cluster import install as install_cluster
        from kfwguard.operator import install  # local: operator imports daemon's users

        install(self)
        install_cluster(self)  # after the operator: it adds routes to the control API

    # -- building --------------------------------------------------------------

    async def _build_ignore(self, cfg: Config) -> IgnoreList:
        ignore = IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip])
        # Runs a child process (pyroute2 stays out of the daemon) and waits for
        # it, up to node.CHILD_TIMEOUT: keep that wait off our event loop.
        for net in await asyncio.to_thread(protected_networks):
            ignore.add(net)
        return ignore

    def _build_pipeline(self, cfg: Config, filters: dict[str, Filter]) -> None:
        assert self.bans is not None
        bans = self.bans
        self.jails = {}
        by_source: dict[str, list[JailRuntime]] = {}
        for jc in cfg.jails:
            if not jc.enabled:
                continue
            jail_ignore = self.ignore.extended(jc.ignoreip) if jc.ignoreip else self.ignore
            jail = Jail(jc, jail_ignore, max_entries=cfg.tracker.max_entries,
                        banned_since=bans.banned_since, clock=self.clock)
            self.jails[jc.name] = jail
            by_source.setdefault(jc.source, []).append(JailRuntime(jail, filters[jc.filter]))
        self.sources = {}
        for sc in cfg.sources:
            if sc.name not in by_source:
                continue
            position = None
            if self.store is not None:
                try:
                    position = self.store.load_cursor(sc.name)
                except StoreError as exc:
                    log.error("cursor_unreadable", source=sc.name, error=str(exc))
            src = build_source(sc, position, clock=self.clock)
            self.sources[sc.name] = SourceRuntime(src, by_source[sc.name])

    # -- the pipeline ------------------------------------------------------------

    def _sink_for(self, rt: SourceRuntime) -> Callable[[Sequence[Record]], None]:
        bans = self.bans
        assert bans is not None
        clock = self.clock
        jails = rt.jails
        matches = rt.matches

        def hits_of(jr: JailRuntime, records: Sequence[Record], now: float) -> list[Hit]:
            """The filter's findings for the batch; a filter bug costs its record only."""
            flt = jr.filter
            try:
                if isinstance(records, TextBlock):
                    # Raw lines: lines no rule can match never become objects.
                    return flt.scan_lines(records.data, now)
                return flt.hits(records, now)
            except Exception:
                pass
            # Again record by record, so that only the record that trips the
            # bug is lost.
            out: list[Hit] = []
            for rec in records:
                try:
                    out += flt.hits([rec], now)
                except Exception:
                    rt.errors += 1
                    log.exception("filter_error", filter=flt.name)
            return out

        def lines_into(jr: JailRuntime, block: TextBlock, now: float,
                       ) -> tuple[list[BanRequest], dict[str | None, int]]:
            """A block of raw lines into the jail: in one C++ pass where both sides
            were built for it (Jail.add_lines), else through the filter's hits."""
            try:
                done = jr.jail.add_lines(jr.filter, block.data, now)
            except Exception:
                # The C++ pass counted the lines before the failing one and
                # cannot say which those were: the rest of the block is lost,
                # loudly, rather than the first lines counted twice.
                rt.errors += 1
                log.exception("filter_error", filter=jr.filter.name)
                return [], {}
            if done is not None:
                return done
            return jr.jail.add_hits(hits_of(jr, block, now), now, jr.filter.name)

        def sink(records: Sequence[Record]) -> None:
            now = clock()
            # Before deciding anything, persist where this batch begins, so a
            # crash mid-batch resumes here.
            self._save_start_position(rt)
            requests: list[BanRequest] = []
            for jr in jails:
                jail = jr.jail
                found, counts = (
                    lines_into(jr, records, now) if isinstance(records, TextBlock)
                    else jail.add_hits(hits_of(jr, records, now), now, jr.filter.name))
                requests += found
                for rule, n in counts.items():
                    k = (jail.name, rule or "")
                    matches[k] = matches.get(k, 0) + n
            if requests:
                bans.request(requests)
            position = (
                records.end_position if isinstance(records, TextBlock)
                else records[-1].position if records else None
            )
            if position is not None:
                rt.unsaved = position
                if now - rt.last_saved >= CURSOR_SAVE_INTERVAL:
                    self._save_cursor(rt)

        return sink

    def _save_start_position(self, rt: SourceRuntime) -> None:
        """Until a position has been saved, save where reading began: without it a
        crash makes the next start a first run, which starts at the end."""
        if not rt.last_saved and rt.unsaved is None:
            rt.unsaved = rt.source.position()
            self._save_cursor(rt)

    def _save_cursor(self, rt: SourceRuntime) -> None:
        if rt.unsaved is None or self.store is None:
            return
        try:
            self.store.save_cursor(rt.source.name, rt.unsaved)
            rt.unsaved = None
            rt.last_saved = self.clock()
            if rt.cursor_failing:
                rt.cursor_failing = False
                log.info("cursor_saved_again", source=rt.source.name)
        except StoreError as exc:
            if not rt.cursor_failing:  # once per outage, not once per second
                rt.cursor_failing = True
                log.error("cursor_not_saved", source=rt.source.name, error=str(exc))

    async def _run_source(self, rt: SourceRuntime) -> None:
        sink = self._sink_for(rt)
        while True:
            try:
                await rt.source.run(sink)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Sources promise not to raise on bad input; if one does anyway,
                # keep the daemon alive and restart that source.
                rt.errors += 1
                log.exception("source_crashed_restarting", source=rt.source.name)
                await asyncio.sleep(1.0)

    async def _save_cursors_periodically(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_SAVE_INTERVAL)
            for rt in self.sources.values():
                self._save_start_position(rt)
                self._save_cursor(rt)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        try:
            self.store = Store.in_dir(cfg.state_dir)
        except StoreError as exc:
            # Keep banning, from memory; say loudly that nothing is persisted.
            log.error("state_unavailable", error=str(exc),
                      note="running without persistence; bans in the kernel are kept")
            self.store = None
        # The node's own addresses come from a child process; look them up while
        # the bans go back into the kernel, which comes first: it is what protects.
        # (Restored bans were checked against the ignore lists when decided.)
        ignore_lookup = asyncio.create_task(self._build_ignore(cfg))
        nft = self.nft = Nft()
        table = BanTable(nft, cfg.nftables.table, cfg.nftables.set_size)
        self.bans = BanManager(
            table, self.store,
            jails={j.name: j for j in cfg.jails},
            ignore=IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip]), clock=self.clock,
            check_interval=cfg.nftables.check_interval,
        )
        if self.store is None:
            self.bans.persisting = False
            await asyncio.to_thread(self.bans.adopt_kernel)
        else:
            await asyncio.to_thread(self.bans.restore)
        # Filters compile after the restore: the kernel's bans do not wait for
        # them, and a broken filter stops the start with the bans in force.
        try:
            filters = build_filters(cfg)
            if cfg.baseline.enabled:
                validate(cfg.baseline)
        except (FilterError, BaselineError) as exc:
            ignore_lookup.cancel()
            raise StartupError(str(exc)) from exc
        self.ignore = self.bans.ignore = await ignore_lookup
        self._build_pipeline(cfg, filters)
        await self._start_baseline(cfg)
        for hook in self.on_start:
            res = hook(self)
            if asyncio.iscoroutine(res):
                await res
        self._start_tasks()
        await self._sources_ready()
        status = (f"{len(self.bans.active())} bans in force, "
                  f"{len(self.sources)} sources, {len(self.jails)} jails")
        self.notifier.ready(status)
        log.info("started", config=self.cfg_path, sources=sorted(self.sources),
                 jails=sorted(self.jails), bans=len(self.bans.active()),
                 table=cfg.nftables.table)

    async def _start_baseline(self, cfg: Config) -> None:
        """Apply the baseline now (a failure stops the start) and keep it in force."""
        if self._baseline_task is not None:
            self._baseline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._baseline_task
            self._baseline_task = None
        self.baseline = None
        if not cfg.baseline.enabled:
            return
        assert self.nft is not None
        enforcer = BaselineEnforcer(cfg.baseline, self.nft, on_drift=self._drifted)
        try:
            await asyncio.to_thread(enforcer.apply)
        except NftError as exc:
            raise StartupError(f"baseline policy refused by nft: {exc}") from exc
        self.baseline = enforcer
        self._baseline_task = asyncio.create_task(enforcer.keep(), name="baseline")

    def _drifted(self, reason: str) -> None:
        for cb in self.on_drift:
            cb(reason)

    def _start_tasks(self) -> None:
        assert self.bans is not None
        for rt in self.sources.values():
            rt.task = asyncio.create_task(self._run_source(rt), name=f"source:{rt.source.name}")
        self._tasks = [
            asyncio.create_task(self.bans.watch_table(), name="watch_table"),
            asyncio.create_task(self._save_cursors_periodically(), name="cursors"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
        ]

    async def _sources_ready(self) -> None:
        """Wait until every source has fixed its starting point, so READY means
        that a line written now will be read."""
        waits = [rt.source.ready.wait() for rt in self.sources.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), SOURCE_READY_TIMEOUT)
        except TimeoutError:
            slow = [n for n, rt in self.sources.items() if not rt.source.ready.is_set()]
            log.warning("sources_not_ready", sources=slow)

    async def _stop_sources(self) -> None:
        tasks = [rt.task for rt in self.sources.values() if rt.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for rt in self.sources.values():
            self._save_cursor(rt)

    async def reload(self) -> bool:
        """Re-read the config; rebuild jails and sources. Bans are kept. False if refused."""
        self.notifier.reloading()
        try:
            new, _ = load_config_or_default(self.cfg_path)
            filters = build_filters(new)
            if new.baseline.enabled:
                validate(new.baseline)
        except (ConfigError, FilterError, BaselineError) as exc:
            log.error("reload_refused", error=str(exc))
            self.notifier.status("reload refused: config invalid; running on the old one")
            return False
        if new.nftables.table != self.cfg.nftables.table or new.state_dir != self.cfg.state_dir:
            log.warning("reload_needs_restart", keys="nftables.table, state_dir")
        await self._stop_sources()
        self.cfg = new
        assert self.bans is not None
        self.ignore = await self._build_ignore(new)
        self.bans.ignore = self.ignore
        self.bans.jails = {j.name: j for j in new.jails}
        self._build_pipeline(new, filters)
        for rt in self.sources.values():
            rt.task = asyncio.create_task(self._run_source(rt), name=f"source:{rt.source.name}")
        await self._sources_ready()
        if new.baseline != (self.baseline.cfg if self.baseline else None):
            try:
                await self._start_baseline(new)
            except StartupError as exc:
                log.error("baseline_reload_failed", error=str(exc))
        for hook in self.on_reload:
            res = hook(self)
            if asyncio.iscoroutine(res):
                await res
        log.info("reloaded", sources=sorted(self.sources), jails=sorted(self.jails))
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
        await self._stop_sources()
        if self.bans is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bans.flush(), timeout=5.0)
        for hook in self.on_stop:
            with contextlib.suppress(Exception):
                res = hook(self)
                if asyncio.iscoroutine(res):
                    await res
        tasks = [*self._tasks, *([self._baseline_task] if self._baseline_task else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.store is not None:
            self.store.close()
        log.info("stopped", note="bans stay in the kernel and expire there")


def run(cfg_path: Path | None) -> int:
    """Entry point of ``kfwguard run``."""
    try:
        cfg, origin = load_config_or_default(cfg_path)
    except ConfigError as exc:
        log.error("config_invalid", error=str(exc))
        return 2
    daemon = Daemon(cfg, None if origin == "<embedded default>" else origin)
    try:
        asyncio.run(daemon.serve())
    except StartupError as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    return 0


__all__ = ["Daemon", "JailConfig", "StartupError", "run"]
