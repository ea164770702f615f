"""Builds the running parts from the config and runs them until told to stop.

Sources feed records to the jails of that source; jails' decisions go to the
BanManager. SIGTERM/SIGINT stop cleanly (bans stay in the kernel and expire
there), SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kfwguard.addresses import LOOPBACK_NETS, IgnoreList, IPNetwork
from kfwguard.bans import BanManager
from kfwguard.config import Config, ConfigError, JailConfig, load_config_or_default
from kfwguard.durations import format_duration
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.baseline import (
    BaselineEnforcer,
    BaselineError,
    BaselineStats,
    StateFiles,
    confirmation_received,
    owned_table,
    remember_owned,
    remove_table,
    validate,
    write_json_atomic,
)
from kfwguard.firewall.nft import Nft, NftError, NftUnavailable
from kfwguard.jails.jail import Jail
from kfwguard.matching import Filter, FilterError, load_filter
from kfwguard.matching.loader import FilterNotFound
from kfwguard.node import protected_networks
from kfwguard.notify import Notifier
from kfwguard.pipeline import CURSOR_SAVE_INTERVAL, JailFeed, SourcePipeline
from kfwguard.sources import build_source
from kfwguard.sources.trust import forgery_warnings
from kfwguard.store import Store, StoreError

log = structlog.get_logger("kfwguard.daemon")


# READY waits this long for sources to fix their starting point; a source
# that takes longer (a hung NFS mount) is reported and READY is sent anyway.
SOURCE_READY_TIMEOUT = 10.0


# In state_dir: held (flock) by the running daemon, holding its pid.
LOCK_NAME = "kfwguard.lock"


@dataclass
class PendingBaseline:
    """A reloaded baseline in the kernel, waiting for confirmation."""

    cfg: Config
    enforcer: BaselineEnforcer
    previous: BaselineEnforcer | None   # the confirmed policy (None: no baseline)
    token: str
    deadline: float                     # wall clock


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


def build_filters(cfg: Config) -> dict[str, Filter]:
    """Load every filter the enabled jails use; raise FilterError on the first bad one,
    or ConfigError (naming the jail's line) for one that is not there."""
    out: dict[str, Filter] = {}
    for i, j in enumerate(cfg.jails):
        if j.enabled and j.filter not in out:
            out[j.filter] = jail_filter(cfg, i)
    return out


def jail_filter(cfg: Config, index: int) -> Filter:
    """The filter of jail ``cfg.jails[index]``; see build_filters."""
    j = cfg.jails[index]
    try:
        return load_filter(j.filter, cfg.filters_dirs,
                           networks={"control_plane": cfg.baseline.control_plane_cidrs})
    except FilterNotFound as exc:
        raise cfg.error_at(("jails", index, "filter"),
                           f"jail {j.name!r}: {exc}") from None


class Daemon:
    def __init__(self, cfg: Config, cfg_path: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.cfg_path = cfg_path
        self._lock_fd: int | None = None
        self.clock = clock
        self.started_at = clock()
        self.notifier = Notifier()
        self.store: Store | None = None
        self.bans: BanManager | None = None
        self.sources: dict[str, SourcePipeline] = {}
        self.jails: dict[str, Jail] = {}
        self.ignore = IgnoreList()
        # Sentences about the config an operator must see (logged, in status).
        self.warnings: list[str] = []
        self.nft: Nft | None = None
        self.baseline: BaselineEnforcer | None = None
        self._baseline_task: asyncio.Task[None] | None = None
        # Counters that survive the enforcer being replaced at a reload, and the lock
        # every enforcer holds while it changes the kernel.
        self.baseline_stats = BaselineStats()
        self._baseline_lock = threading.RLock()
        # The baseline table this daemon put in the kernel (None: none).
        self._owned_table: str | None = None
        # Why the last reload was refused (the control API tells the CLI), and
        # what the operator must do after one that was accepted.
        self.last_reload_error: str | None = None
        self.last_reload_note: str | None = None
        # A reloaded baseline waiting for 'kfwguard baseline confirm'.
        self._pending: PendingBaseline | None = None
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
        # admin_cidrs join every jail's ignore list: bans never beat the failsafe.
        ignore = IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip, *cfg.baseline.admin_cidrs])
        # Runs a child process (pyroute2 stays out of the daemon) and waits for
        # it, up to node.CHILD_TIMEOUT: keep that wait off our event loop.
        for net in await asyncio.to_thread(protected_networks):
            ignore.add(net)
        return ignore

    def _build_pipeline(self, cfg: Config, filters: dict[str, Filter]) -> None:
        assert self.bans is not None
        bans = self.bans
        self.warnings = forgery_warnings(cfg, filters)
        for warning in self.warnings:
            log.warning("source_forgeable", detail=warning)
        self.jails = {}
        by_source: dict[str, list[JailFeed]] = {}
        for jc in cfg.jails:
            if not jc.enabled:
                continue
            jail_ignore = self.ignore.extended(jc.ignoreip) if jc.ignoreip else self.ignore
            jail = Jail(jc, jail_ignore, max_entries=cfg.tracker.max_entries,
                        banned_since=bans.banned_since, clock=self.clock,
                        ipv6_prefix=cfg.ipv6_prefix)
            self.jails[jc.name] = jail
            flt = filters[jc.filter]
            by_source.setdefault(jc.source, []).append(JailFeed.of(jail, flt))
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
            self.sources[sc.name] = SourcePipeline(src, by_source[sc.name], self.store,
                                                   bans.request, self.clock)

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

    def _take_lock(self, state_dir: Path) -> None:
        """One daemon per state_dir, decided before anything touches the kernel: a
        second `kfwguard run` on the same config must not restore bans into the
        first one's table before it finds out (the control socket tells only later)."""
        path = state_dir / LOCK_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                # An unusable state_dir is reported by the store; the control
                # socket still keeps a second daemon out.
                log.warning("lock_unavailable", path=str(path), error=str(exc))
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError(f"another kfwguard{pid} is running with state_dir "
                               f"{state_dir}; not starting") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def start(self) -> None:
        self._take_lock(self.cfg.state_dir)
        try:
            await self._start()
        except BaseException:
            self._release_lock()
            raise

    async def _start(self) -> None:
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
        table = BanTable(nft, cfg.nftables.table, cfg.nftables.set_size,
                         admin=cfg.baseline.admin_cidrs)
        self.bans = BanManager(
            table, self.store,
            jails={j.name: j for j in cfg.jails},
            ignore=IgnoreList([*LOOPBACK_NETS, *cfg.ignoreip]), clock=self.clock,
            check_interval=cfg.nftables.check_interval,
        )
        self.bans.set_networks(cfg.baseline)
        self.bans.dry_run = cfg.dry_run
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
        except (ConfigError, FilterError, BaselineError) as exc:
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
        log.info("started", config=self.cfg_path or "<embedded default>",
                 sources=sorted(self.sources), jails=sorted(self.jails),
                 bans=len(self.bans.active()),
                 table=cfg.nftables.table)

    async def _start_baseline(self, cfg: Config) -> None:
        """Apply the baseline now (a refusal stops the start) and keep it in force."""
        if not cfg.baseline.enabled:
            await self._drop_baseline(cfg)
            return
        enforcer = self._new_enforcer(cfg)
        try:
            await asyncio.to_thread(enforcer.apply)
        except NftError as exc:
            raise StartupError(f"baseline policy refused by nft: {exc}") from exc
        await self._install_enforcer(cfg, enforcer)

    def _new_enforcer(self, cfg: Config) -> BaselineEnforcer:
        assert self.nft is not None
        return BaselineEnforcer(cfg.baseline, self.nft, on_drift=self._drifted,
                                on_error=self._drifted, stats=self.baseline_stats,
                                lock=self._baseline_lock)

    async def _install_enforcer(self, cfg: Config, enforcer: BaselineEnforcer) -> None:
        """Make ``enforcer`` (whose policy is already in the kernel) the one kept in
        force; then remove the table of a renamed baseline, which would go on dropping."""
        await self._stop_enforcer()
        self.baseline = enforcer
        self._baseline_task = asyncio.create_task(enforcer.keep(), name="baseline")
        await self._remove_stale_tables(cfg, keep=cfg.baseline.table)

    async def _stop_enforcer(self) -> None:
        task, self._baseline_task = self._baseline_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _drop_baseline(self, cfg: Config) -> None:
        """``baseline.enabled: false``: stop enforcing and remove the table we put in."""
        await self._stop_enforcer()
        self.baseline = None
        await self._remove_stale_tables(cfg, keep=None)

    async def _remove_stale_tables(self, cfg: Config, keep: str | None) -> None:
        """Remove the baseline tables this daemon owned other than ``keep``, and record
        ``keep`` as the one it owns now. Only a table we recorded is ever removed."""
        assert self.nft is not None
        nft = self.nft
        stale = {t for t in (self._owned_table, owned_table(cfg.state_dir)) if t and t != keep}

        def work() -> None:
            for table in sorted(stale):
                if remove_table(nft, table):
                    log.warning("baseline_table_removed", table=table,
                                reason="baseline disabled" if keep is None
                                else f"baseline.table is now {keep}")
            remember_owned(cfg.state_dir, keep)

        try:
            await asyncio.to_thread(work)
        except (NftError, OSError) as exc:
            log.error("baseline_table_not_removed", tables=sorted(stale), error=str(exc))
            self._drifted(f"cannot remove the old baseline table(s) {sorted(stale)}: {exc}")
        self._owned_table = keep

    async def _reload_baseline(self, new: Config) -> str | None:
        """Bring the baseline to ``new``; a reason if it was refused (the previous
        policy then stays in force and is checked at once), else None.

        The running enforcer is replaced only after the new policy is in the kernel.
        """
        have = self.baseline.cfg if self.baseline is not None else None
        if self._pending is not None and new.baseline != have:
            return ("reload refused: a baseline change is waiting for confirmation; confirm "
                    "it (kfwguard baseline confirm) or let it roll back first")
        if not new.baseline.enabled:
            if have is not None or self._owned_table is not None:
                await self._drop_baseline(new)
            return None
        if new.baseline == have:
            return None
        enforcer = self._new_enforcer(new)
        if self.baseline is not None:
            self.baseline.paused = True
        try:
            await asyncio.to_thread(enforcer.apply)
        except Exception as exc:
            if self.baseline is not None:
                self.baseline.paused = False
            self.baseline_stats.refused += 1
            reason = (f"reload refused: nft refused the new baseline policy "
                      f"({type(exc).__name__}: {exc}); the previous policy stays in force")
            log.error("baseline_refused", table=new.baseline.table, error=str(exc),
                      refused=self.baseline_stats.refused)
            self._drifted(reason)
            if self.baseline is not None:
                # Heal now, not one interval later: the old table may be gone.
                await self.baseline.reconcile_once()
            return reason
        within = new.baseline.confirm_within
        if within > 0:
            await self._begin_pending(new, enforcer, within)
            where = f" -c {self.cfg_path}" if self.cfg_path else ""
            self.last_reload_note = (
                f"the new baseline rolls back in {format_duration(within)} unless confirmed: "
                f"kfwguard baseline confirm{where}")
            return None
        await self._install_enforcer(new, enforcer)
        return None

    # -- a reloaded baseline waits for confirmation -----------------------------

    async def _begin_pending(self, new: Config, enforcer: BaselineEnforcer,
                             within: float) -> None:
        """The new policy is in the kernel; keep it only if confirmed within ``within``.
        Meanwhile drift is healed back to the confirmed policy, not to the new one."""
        previous = self.baseline
        await self._stop_enforcer()
        token = secrets.token_hex(16)
        deadline = time.time() + within
        files = StateFiles(new.state_dir)
        files.confirm.unlink(missing_ok=True)
        write_json_atomic(files.pending, {"pid": os.getpid(), "token": token,
                                          "table": new.baseline.table, "deadline": deadline,
                                          "by": "daemon"})
        enforcer.pending_until = deadline
        self.baseline = enforcer
        self._pending = PendingBaseline(new, enforcer, previous, token, deadline)
        log.warning("baseline_pending", table=new.baseline.table, confirm_within=within)
        self._baseline_task = asyncio.create_task(self._await_confirmation(), name="baseline")

    async def _await_confirmation(self) -> None:
        p = self._pending
        assert p is not None
        files = StateFiles(p.cfg.state_dir)
        interval = max(p.enforcer.cfg.reconcile_interval, 0.1)
        next_check = time.monotonic() + interval
        while True:
            await asyncio.sleep(0.1)
            if confirmation_received(files, p.token):
                await self._settle(p, True, "confirmed")
                return
            if time.time() >= p.deadline:
                await self._settle(p, False, "it was not confirmed in time")
                return
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + interval
            try:
                drift = await asyncio.to_thread(p.enforcer.check_drift)
            except Exception as exc:
                self.baseline_stats.errors += 1
                log.error("baseline_reconcile_failed", table=p.enforcer.cfg.table,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if drift is not None:
                self.baseline_stats.drift += 1
                await self._settle(p, False, f"it was changed while waiting ({drift})")
                return

    async def _settle(self, p: PendingBaseline, confirmed: bool, reason: str) -> None:
        """End the wait: keep the new policy, or put the confirmed one back."""
        self._pending = None
        assert self.nft is not None
        nft = self.nft
        if confirmed:
            p.enforcer.pending_until = None
            self._baseline_task = asyncio.create_task(p.enforcer.keep(), name="baseline")
            await self._remove_stale_tables(p.cfg, keep=p.cfg.baseline.table)
            log.info("baseline_confirmed", table=p.enforcer.cfg.table)
        else:
            new_table = p.enforcer.cfg.table
            try:
                if p.previous is not None:
                    p.previous.paused = False
                    await asyncio.to_thread(p.previous.apply)
                if p.previous is None or p.previous.cfg.table != new_table:
                    await asyncio.to_thread(remove_table, nft, new_table)
            except Exception as exc:
                # The confirmed policy's own loop retries within one interval.
                log.error("baseline_rollback_failed", error=f"{type(exc).__name__}: {exc}")
            self.baseline = p.previous
            if p.previous is not None:
                self._baseline_task = asyncio.create_task(p.previous.keep(), name="baseline")
            else:
                self._baseline_task = None
            log.warning("baseline_rolled_back", table=new_table, reason=reason)
            self._drifted(f"the reloaded baseline was rolled back to the confirmed one: {reason}")
        files = StateFiles(p.cfg.state_dir)
        write_json_atomic(files.outcome, {"token": p.token,
                                          "outcome": "confirmed" if confirmed else "rolled back",
                                          "reason": reason})
        files.pending.unlink(missing_ok=True)
        files.confirm.unlink(missing_ok=True)

    def _drifted(self, reason: str) -> None:
        for cb in self.on_drift:
            cb(reason)

    def _start_tasks(self) -> None:
        assert self.bans is not None
        for rt in self.sources.values():
            rt.start()
        self._tasks = [
            asyncio.create_task(self.bans.watch_table(), name="watch_table"),
            asyncio.create_task(self._save_cursors_periodically(), name="cursors"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._follow_addresses(), name="addresses"),
        ]

    async def _follow_addresses(self) -> None:
        """Protect addresses added after start (CNI bridges, VIPs: the unit starts
        before the kubelet): each is put on the ignore list as netlink announces
        it, and a ban covering it is lifted at once."""
        from kfwguard.node import AddressWatch

        try:
            watch = AddressWatch()
        except OSError as exc:
            log.warning("address_watch_unavailable", error=str(exc),
                        note="addresses added after start are protected at the next reload")
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_reader(watch.fileno(), wake.set)
        try:
            # Whatever was added between the start's look-up and the watch.
            self._protect(await asyncio.to_thread(protected_networks))
            while True:
                await wake.wait()
                wake.clear()
                added, lost = watch.read()
                if added:
                    self._protect([ipaddress.ip_network(a) for a in added])
                if lost:
                    log.warning("address_notifications_lost", note="re-reading the node")
                    self._protect(await asyncio.to_thread(protected_networks))
        finally:
            loop.remove_reader(watch.fileno())
            watch.close()

    def _protect(self, nets: Sequence[IPNetwork]) -> None:
        """Add ``nets`` (the node's own) to the ignore list; lift bans covering them."""
        fresh = [n for n in nets if n not in self.ignore]
        if not fresh or self.bans is None:
            return
        for net in fresh:
            self.ignore.add(net)  # the BanManager's list too: it refuses new bans of it
        log.info("addresses_protected", addresses=[str(n) for n in fresh])
        for row in self.bans.active():
            try:
                target = ipaddress.ip_network(row.target, strict=False)
            except ValueError:
                continue
            if any(target.version == n.version and target.overlaps(n) for n in fresh):
                log.warning("protected_address_unbanned", target=row.target, jail=row.jail,
                            why="a ban covered an address this node now holds")
                self.bans.unban(target if "/" in row.target else target.network_address,
                                row.jail)

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
            rt.save_cursor()

    async def reload(self) -> bool:
        """Re-read the config; rebuild jails and sources. Bans are kept. False if refused
        (``last_reload_error`` says why); a refused reload changes nothing."""
        self.notifier.reloading()
        self.last_reload_error = self.last_reload_note = None
        try:
            new, _ = load_config_or_default(self.cfg_path)
            filters = build_filters(new)
            if new.baseline.enabled:
                validate(new.baseline)
        except (ConfigError, FilterError, BaselineError) as exc:
            log.error("reload_refused", error=str(exc))
            self.last_reload_error = f"config invalid: {exc}"
            self.notifier.status("reload refused: config invalid; running on the old one")
            return False
        if new.nftables.table != self.cfg.nftables.table or new.state_dir != self.cfg.state_dir:
            log.warning("reload_needs_restart", keys="nftables.table, state_dir")
        # The baseline first: if nft refuses it, nothing else changes either.
        refused = await self._reload_baseline(new)
        if refused is not None:
            self.last_reload_error = refused
            self.notifier.status("reload refused: baseline refused by nft; running on the old one")
            return False
        await self._stop_sources()
        self.cfg = new
        assert self.bans is not None
        self.ignore = await self._build_ignore(new)
        self.bans.ignore = self.ignore
        self.bans.jails = {j.name: j for j in new.jails}
        self.bans.dry_run = new.dry_run
        self.bans.set_networks(new.baseline)
        self.bans.enforce_simulated()  # of jails whose dry_run was turned off
        self._build_pipeline(new, filters)
        for rt in self.sources.values():
            rt.start()
        await self._sources_ready()
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
            self.bans.sync_store()  # what a full disk held back, if it has room now
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
        self._release_lock()
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
    except (StartupError, NftUnavailable) as exc:
        # One clear line, not a traceback (libnftables missing from an image…).
        log.error("cannot_start", error=str(exc))
        return 1
    return 0


__all__ = ["Daemon", "JailConfig", "StartupError", "run"]
