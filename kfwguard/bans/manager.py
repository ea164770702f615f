"""BanManager: the one place where a ban is decided.

Every ban, from a jail, an operator (``kfwguard ban``) or a peer node, and
every unban, comes through here: it is checked (a meaningless, admin,
ignored, protected or cluster address is refused; the ban length is
bounded; the jail's ban-time policy sets it), stored (kfwguard.bans.journal:
committed, or kept in memory while the disk refuses, and written when it
takes writes again), put in the index of bans in force
(kfwguard.bans.index), and queued for the kernel (kfwguard.bans.enforcer:
one nft transaction per event-loop tick, however many bans arrived in that
tick). A crash between the store and the kernel loses nothing: the next
start restores every stored ban (kfwguard.bans.restore says what the
kernel adds to them).

Time: expiries are kept on the wall clock at start plus the monotonic time
since (``now()``), the same basis as the kernel's relative timeouts. A
wall-clock step (NTP, an operator's ``date``) then moves neither: the daemon
and the kernel agree on when each ban ends.

Observe mode (``dry_run``, globally or per jail): a jail's bans are decided,
stored (marked simulated), logged, counted and alerted like any other, but
kept apart in the index from everything that feeds the kernel. When the
jail's dry_run is turned off (reload or restart), its simulated bans still
in force are enforced. Manual bans are never simulated.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import time
from collections.abc import Callable, Sequence

import structlog

from kfwguard.addresses import IgnoreList, IPAddress, IPNetwork
from kfwguard.bans.enforcer import KernelEnforcer
from kfwguard.bans.index import BanIndex
from kfwguard.bans.journal import StoreJournal
from kfwguard.bans.model import (
    BanRefused,
    BanStats,
    is_peer_jail,
    normalise,
    paused_gc,
    plain_key,
)
from kfwguard.bans.refusals import BanGuard, Protected, checked, refusal_ranges
from kfwguard.bans.restore import Start, from_kernel, from_store
from kfwguard.config import BaselineConfig, JailConfig
from kfwguard.durations import check_ban_duration
from kfwguard.firewall.bantable import BanTable, Target
from kfwguard.firewall.nft import NftError
from kfwguard.jails.policy import ban_duration
from kfwguard.model import BanRequest
from kfwguard.store import BanRow, Store

log = structlog.get_logger("kfwguard.bans")

LOG_EACH_BAN_UP_TO = 50

# Peers' bans are stored this many rows per state DB transaction, after the kernel.
PEER_STORE_CHUNK = 5000
# A listing's peers' bans go to the kernel in parts of this many: nft takes one
# part in the kernel sync's worker thread while the next is checked and indexed.
PEER_KERNEL_CHUNK = 20_000

BanListener = Callable[[Sequence[BanRow]], None]


class BanManager:
    def __init__(
        self,
        table: BanTable,
        store: Store | None,
        *,
        jails: dict[str, JailConfig] | None = None,
        ignore: IgnoreList | None = None,
        admin: IgnoreList | None = None,
        cluster: IgnoreList | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        check_interval: float = 2.0,
    ) -> None:
        self.table = table
        self.store = store
        self.jails = jails or {}
        self.ignore = ignore or IgnoreList()
        # Never banned, whoever asks (baseline.admin_cidrs).
        self.admin = admin or IgnoreList()
        # Banned only by an operator who says --force (cluster, pod, service CIDRs).
        self.cluster = cluster or IgnoreList()
        self._monotonic = monotonic
        self._wall0 = clock()
        self._mono0 = monotonic()
        self.check_interval = check_interval
        self.stats = BanStats()
        # Observe mode for every jail that does not set its own dry_run.
        self.dry_run = False
        self.index = BanIndex()
        self.journal = StoreJournal(store, self.stats, self.now)
        self.kernel = KernelEnforcer(table, self.index, self.stats, now=self.now,
                                     clock=clock, monotonic=monotonic)
        self.on_ban: list[BanListener] = []
        self.on_unban: list[BanListener] = []
        # Extra refusals (cluster allowlist), asked after the ignore lists.
        self.guards: list[BanGuard] = []

    def set_networks(self, baseline: BaselineConfig) -> None:
        """Take the admin and cluster networks from the baseline config (at start
        and reload): admin never banned and accepted before the kernel's
        drops; cluster, pod and service CIDRs banned only with force."""
        self.admin = IgnoreList(baseline.admin_cidrs)
        self.cluster = IgnoreList([*baseline.cluster_cidrs, *baseline.control_plane_cidrs,
                                   *baseline.pod_cidrs, *baseline.service_cidrs])
        if list(baseline.admin_cidrs) != self.table.admin:
            try:
                self.table.set_admin(baseline.admin_cidrs)
            except NftError as exc:  # the table is gone: its rebuild carries them
                log.error("admin_set_not_updated", error=str(exc)[:300])

    def now(self) -> float:
        """Wall-clock time at start plus monotonic time since: immune to clock steps."""
        return self._wall0 + (self._monotonic() - self._mono0)

    # -- queries -------------------------------------------------------------

    def active(self) -> list[BanRow]:
        """Bans in force, the simulated ones (observe mode) included."""
        return self.index.active(self.now())

    def simulates(self, jail: str) -> bool:
        """True if bans decided by ``jail`` are only simulated (observe mode).
        A jail the config does not name (manual, restored) never is."""
        cfg = self.jails.get(jail)
        if cfg is None:
            return False
        return self.dry_run if cfg.dry_run is None else cfg.dry_run

    def banned_since(self, host: IPAddress | IPNetwork, jail: str) -> float | None:
        row = self.index.any_row((str(host), jail))
        if row is None or row.expires_at <= self.now():
            return None
        return row.banned_at

    @property
    def pending(self) -> int:
        """Changes decided but not yet confirmed by the kernel (queued, in flight
        or waiting to be tried again)."""
        return self.kernel.pending

    @property
    def unsaved(self) -> int:
        """Changes the store has not taken yet (a full or failing disk)."""
        return len(self.journal)

    @property
    def persisting(self) -> bool:
        """False while the store refuses writes (or there is none)."""
        return self.journal.persisting

    @persisting.setter
    def persisting(self, value: bool) -> None:
        self.journal.persisting = value

    @property
    def last_kernel_error(self) -> str | None:
        """Why the kernel last refused a ban, in an operator's words."""
        return self.kernel.last_kernel_error

    @property
    def on_applied(self) -> list[Callable[[float], None]]:
        """Called with the seconds from decision to kernel of each applied ban."""
        return self.kernel.on_applied

    def active_target(self, target: Target | str) -> bool:
        """True if some jail still bans ``target``."""
        return self.index.has_target(str(target))

    def in_kernel(self, target: Target | str) -> bool:
        """True if the kernel holds the ban of ``target`` as decided (not pending)."""
        return self.kernel.in_kernel(str(target))

    def out_of_kernel(self, target: Target | str) -> bool:
        """True if no ban of ``target`` is left in the kernel (after an unban)."""
        return self.kernel.out_of_kernel(str(target))

    # -- start ---------------------------------------------------------------

    def restore(self) -> int:
        """Put every ban still in force back in the kernel (one transaction), then
        load them into memory. The kernel comes first: it is what protects.
        What the kernel adds when the store cannot be trusted, and why:
        kfwguard.bans.restore. Runs before anything else touches the bans (the
        daemon runs it in a worker thread at start). Returns the stored bans."""
        return from_store(self._start(), self.now())

    def adopt_kernel(self) -> int:
        """Keep what the kernel already holds rather than starting with a silently
        empty ban list (no store, or one that cannot be trusted), and make sure
        the table is intact. The adopted bans are stored when the store works."""
        return from_kernel(self._start(), self.now())

    def _start(self) -> Start:
        return Start(self.store, self.table, self.index, self.journal, self.kernel,
                     self._enforceable, self._stored_net_ok)

    def _stored_net_ok(self, row: BanRow) -> bool:
        try:
            self.check_target(ipaddress.ip_network(row.target), force=True)
        except (BanRefused, ValueError) as exc:
            log.error("stored_ban_refused", target=row.target, why=str(exc))
            return False
        return True

    # -- ban / unban -----------------------------------------------------------

    def check_target(self, target: Target, *, force: bool = False) -> Target:
        """The target to ban (IPv4-mapped folded to IPv4), or BanRefused if it may
        never be banned. ``force`` (an operator's) allows a ban overlapping the
        cluster, pod or service CIDRs; nothing allows one of an admin network."""
        return checked(target, self._protected(), force=force)

    def _protected(self) -> Protected:
        return Protected(self.admin, self.ignore, self.cluster, self.guards)

    def request(self, requests: Sequence[BanRequest], *, force: bool = False) -> list[BanRow]:
        """Decide bans: store them, then queue them for the kernel. Returns the new
        rows: one per (target, jail), however often a batch asks for it."""
        now = self.now()
        rows: list[BanRow] = []
        seen: set[tuple[str, str]] = set()
        protected = self._protected()
        for req in requests:
            try:
                target = checked(req.target, protected, force=force)
            except BanRefused as exc:
                self.stats.refused += 1
                log.warning("ban_refused", target=str(req.target), jail=req.jail, why=str(exc))
                continue
            key = str(target)
            if (key, req.jail) in seen:
                self.stats.duplicates += 1  # one decision per address per batch
                continue
            seen.add((key, req.jail))
            offence = req.offence
            duration = req.duration
            cfg = self.jails.get(req.jail)
            if cfg is not None and cfg.bantime_increment is not None:
                offence = self._offence_count(key, req.jail) + 1
                duration = ban_duration(cfg, offence)
            try:
                check_ban_duration(duration)
            except ValueError as exc:
                self.stats.refused += 1
                log.warning("ban_refused", target=key, jail=req.jail, why=str(exc))
                continue
            # A ban already enforced stays enforced, even if its jail has
            # turned to observe mode since.
            simulated = self.simulates(req.jail) and (key, req.jail) not in self.index
            rows.append(BanRow(key, req.jail, req.reason, now, now + duration, offence,
                               simulated))
            if not simulated:
                self.kernel.decided(key, req.decided_at or now)
        if not rows:
            return []
        self.journal.save(rows)
        for r in rows:
            if r.simulated:
                self.index.simulate(r)
                self.stats.simulated += 1
                continue
            self.index.unsimulate((r.target, r.jail))
            self.index.add(r)
            self.kernel.queue_add(r.target)
            self.stats.per_jail[r.jail] = self.stats.per_jail.get(r.jail, 0) + 1
            self.stats.bans += 1
        if len(rows) <= LOG_EACH_BAN_UP_TO:
            for r in rows:
                log.info("ban_simulated" if r.simulated else "ban", target=r.target,
                         jail=r.jail, reason=r.reason,
                         seconds=round(r.expires_at - r.banned_at), offence=r.offence)
        else:
            # A burst: one line, not thousands (the ban list and alerts have them all).
            log.info("bans", count=len(rows), jails=sorted({r.jail for r in rows}),
                     simulated=sum(r.simulated for r in rows),
                     targets=[r.target for r in rows[:LOG_EACH_BAN_UP_TO]], more=True)
        for listener in self.on_ban:
            listener(rows)
        self.kernel.schedule_flush()
        return rows

    def unban(self, target: Target, jail: str | None = None) -> list[BanRow]:
        """Lift the bans of ``target`` (in ``jail`` or in all jails). Returns the lifted rows."""
        key = str(normalise(target))
        jails = [jail] if jail is not None else sorted(self.index.jails_of(key))
        rows = [r for j in jails if (r := self.index.get((key, j))) is not None]
        simulated = self.index.simulated_of(key, jail)
        if not rows and not simulated:
            return []
        self.journal.delete([(r.target, r.jail) for r in (*rows, *simulated)])
        for r in simulated:
            self.index.unsimulate((r.target, r.jail))
        for r in rows:
            self.index.remove(r)
        if self.index.has_target(key):
            self.kernel.queue_add(key)  # refresh to the remaining max
        elif rows:
            self.kernel.queue_remove(key)
        rows += simulated
        self.stats.unbans += len(rows)
        for r in rows:
            log.info("unban", target=r.target, jail=r.jail)
        for listener in self.on_unban:
            listener(rows)
        self.kernel.schedule_flush()
        return rows

    def expire(self) -> list[BanRow]:
        """Drop bans whose time is up from memory and the store (the kernel expires its own)."""
        now = self.now()
        gone = self.index.expired(now)
        simulated = [r for r in self.index.simulated() if r.expires_at <= now]
        for r in simulated:
            self.index.unsimulate((r.target, r.jail))
        for r in gone:
            self.index.remove(r)
        if gone:
            self.kernel.expired([r.target for r in gone if not self.index.has_target(r.target)],
                                any("/" in r.target for r in gone), now)
        gone += simulated
        if gone:
            self.journal.purge_expired(now)
        if gone:
            self.stats.unbans += len(gone)
            for listener in self.on_unban:
                listener(gone)
        return gone

    def enforce_simulated(self) -> list[BanRow]:
        """Enforce the simulated bans, still in force, of jails no longer in
        observe mode (after a reload turned their dry_run off). Returns them."""
        now = self.now()
        due = [r for r in self.index.simulated()
               if r.expires_at <= now or self._enforceable(r)]
        for r in due:
            self.index.unsimulate((r.target, r.jail))
        # An address protected since (ignoreip, the node's own) stays unbanned.
        rows = [r._replace(simulated=False) for r in due
                if r.expires_at > now and self._stored_net_ok(r)]
        dropped = [(r.target, r.jail) for r in due
                   if r.expires_at > now and (r.target, r.jail) not in
                   {(x.target, x.jail) for x in rows}]
        if dropped:
            self.journal.delete(dropped)
        if not rows:
            return []
        self.journal.save(rows)
        for r in rows:
            self.index.add(r)
            self.kernel.queue_add(r.target)
            self.kernel.decided(r.target, now)
            self.stats.per_jail[r.jail] = self.stats.per_jail.get(r.jail, 0) + 1
        self.stats.bans += len(rows)
        log.info("simulated_bans_enforced", count=len(rows),
                 jails=sorted({r.jail for r in rows}))
        for listener in self.on_ban:
            listener(rows)
        self.kernel.schedule_flush()
        return rows

    def _enforceable(self, row: BanRow) -> bool:
        """True if a simulated ban's jail is still configured and no longer in
        observe mode. A jail removed from the config keeps its simulated bans
        simulated until they expire: nobody asked for them to be enforced."""
        return row.jail in self.jails and not self.simulates(row.jail)

    # -- store -------------------------------------------------------------------

    def sync_store(self) -> bool:
        """Write what the store refused earlier (full disk); True if nothing is left."""
        return self.journal.sync()

    def _offence_count(self, key: str, jail: str) -> int:
        return self.journal.offence((key, jail), self.index.any_row((key, jail)))

    # -- bans decided by peers (cluster mode) ----------------------------------

    async def apply_peer(self, rows: Sequence[BanRow], *,
                         applied: Callable[[], None] | None = None,
                         protected: IgnoreList | None = None) -> list[BanRow]:
        """Enforce bans another node decided (``row.jail`` is ``peer_jail(node)``),
        with their own expiry. Protected and ignored addresses are refused here as
        for a local ban, and so is anything on ``protected`` (what the cluster
        service protects beyond that); a row already in force unchanged is
        skipped. No listener hears of them: they are not published again and
        raise no alert, and no local jail counts them as offences. Returns the
        rows taken; ``applied`` is called when the kernel has them.

        Kernel first, store after (the reverse of a local ban): the peers'
        store (etcd) already holds them durably and a restart lists them
        again, so protection must not wait for a local commit. A peer's CIDR
        goes through the same disjoint cover as a local one. A listing's
        parts take a shorter way: take_listed()."""
        taken: list[BanRow] = []
        add = self.index.add_many
        for i in range(0, len(rows), PEER_KERNEL_CHUNK):
            with paused_gc():
                part = self._peer_checked(rows[i:i + PEER_KERNEL_CHUNK], protected)
                add(part)
                self.kernel.queue_adds([r.target for r in part])
            taken += part
            if i + PEER_KERNEL_CHUNK < len(rows):
                # The flush task takes this part to the kernel (nft in its
                # worker thread) while the next part is checked here.
                self.kernel.schedule_flush()
                await asyncio.sleep(0)
        if not taken:
            return []
        self._log_peer_bans(taken)
        await self.flush()
        if applied is not None:
            applied()
        await self.store_peer(taken)
        return taken

    def _log_peer_bans(self, taken: Sequence[BanRow]) -> None:
        log.info("peer_bans", count=len(taken), origins=sorted({r.jail for r in taken}),
                 targets=[r.target for r in taken[:LOG_EACH_BAN_UP_TO]])

    def take_listed(self, rows: Sequence[BanRow], protected: IgnoreList | None = None
                    ) -> list[BanRow]:
        """A part of a listing of peers' bans (a new node's 100k, read part by
        part), checked as apply_peer checks, put in the kernel's queue at
        once (the next part is checked while the kernel takes this one),
        and returned. Kernel first, then index, then store: a single
        address goes to the kernel ahead of the index, which takes the
        whole listing's rows afterwards (index_listed(), then flush() and
        store_peer()); a CIDR is indexed here (its elements are the cover's)."""
        with paused_gc():
            taken = self._peer_checked(rows, protected)
            nets = self.kernel.queue_ahead(taken)
            if nets:
                self.index.add_many(nets)
                self.kernel.queue_adds([r.target for r in nets])
        if taken:
            self._log_peer_bans(taken)
            self.kernel.schedule_flush()
        return taken

    async def index_listed(self, taken: Sequence[BanRow]) -> None:
        """The index takes the single addresses take_listed() sent ahead, in
        chunks (the event loop runs between them); each whose kernel element
        is not the index's latest expiry (refused, a table rebuilt, a local
        ban of it meanwhile) is queued again."""
        for i in range(0, len(taken), PEER_KERNEL_CHUNK):
            with paused_gc():
                one = [r for r in taken[i:i + PEER_KERNEL_CHUNK] if "/" not in r.target]
                self.index.add_many(one)
                self.kernel.catch_up([r.target for r in one])
            await asyncio.sleep(0)
        self.kernel.schedule_flush()

    async def store_peer(self, taken: Sequence[BanRow]) -> None:
        """Store peers' bans the kernel has (apply_peer), in chunks, the loop
        running between them (100k rows are seconds of SQLite), and only what
        is still in force as taken: a withdraw (an unban) may come in
        meanwhile and must not be stored back."""
        for i in range(0, len(taken), PEER_STORE_CHUNK):
            self.journal.save([r for r in taken[i:i + PEER_STORE_CHUNK]
                               if self.index.get((r.target, r.jail)) is r])
            await asyncio.sleep(0)

    def _peer_checked(self, rows: Sequence[BanRow],
                      protected: IgnoreList | None) -> list[BanRow]:
        """The rows of ``rows`` to take: a peer's, in force, changed, and not
        refused. A single address (canonical text, else refused) is tested on
        ints against one sorted list of every range that may refuse it (a
        listing brings 100k of them); one that falls in a range, a CIDR and
        anything while guards are set go through check_target, which says why."""
        now = self.now()
        lists = [self.admin, self.ignore, self.cluster]
        if protected is not None:
            lists.append(protected)
        starts, ends = refusal_ranges(lists)
        first = bisect.bisect_right
        get = self.index.get
        taken: list[BanRow] = []
        fast = not self.guards
        peer: dict[str, bool] = {}  # jail -> is a peer's (a listing has a few, 100k rows)
        for row in rows:
            ok = peer.get(row.jail)
            if ok is None:
                ok = peer[row.jail] = is_peer_jail(row.jail)
            if row.expires_at <= now or not ok:
                continue
            old = get((row.target, row.jail))
            if old is not None and old.expires_at == row.expires_at:
                continue
            try:
                if "/" not in row.target:
                    key = plain_key(row.target)
                    if key is None:
                        raise ValueError("not an address in the form nodes share")
                    if fast:
                        i = first(starts, key) - 1
                        if i < 0 or key > ends[i]:
                            taken.append(row)
                            continue
                self._check_peer(row.target, protected)
            except (BanRefused, ValueError) as exc:
                self.stats.refused += 1
                self.stats.refused_peer += 1
                log.warning("peer_ban_refused", target=row.target, origin=row.jail,
                            why=str(exc))
                continue
            taken.append(row)
        return taken

    def _check_peer(self, text: str, protected: IgnoreList | None) -> None:
        """check_target for a peer's target text, and ``protected`` on top."""
        target: Target = (ipaddress.ip_network(text, strict=False) if "/" in text
                          else ipaddress.ip_address(text))
        target = self.check_target(target)
        if protected is not None and (protected.overlaps(target) if isinstance(
                target, ipaddress.IPv4Network | ipaddress.IPv6Network) else target in protected):
            raise BanRefused(f"{text} is a protected address of this node "
                             "(admin, cluster, etcd)")

    def withdraw_peer(self, keys: Sequence[tuple[str, str]]) -> list[BanRow]:
        """Lift peers' bans given as (target, peer jail); local bans of the same
        target stay. Like apply_peer, tells no listener."""
        rows = [r for k in keys if is_peer_jail(k[1]) and (r := self.index.get(k)) is not None]
        if not rows:
            return []
        self.journal.delete([(r.target, r.jail) for r in rows])
        for r in rows:
            self.index.remove(r)
            if self.index.has_target(r.target):
                self.kernel.queue_add(r.target)
            else:
                self.kernel.queue_remove(r.target)
        log.info("peer_unbans", count=len(rows), targets=[r.target for r in rows[:50]])
        self.kernel.schedule_flush()
        return rows

    def rows_of(self, target: str) -> list[BanRow]:
        """Every ban of ``target`` in force, over all jails (local and peers')."""
        return self.index.rows_of(target, self.now())

    # -- kernel ----------------------------------------------------------------

    async def flush(self) -> None:
        """Apply everything pending now (see KernelEnforcer.flush)."""
        await self.kernel.flush()

    def flush_now(self) -> bool:
        """Apply pending changes synchronously (outside an event loop)."""
        return self.kernel.flush_now()

    async def watch_table(self) -> None:
        """Recreate the table with every ban in force if someone deleted or flushed
        it; write what the store could not take earlier."""
        while True:
            await asyncio.sleep(self.check_interval)
            self.expire()
            self.kernel.arm_wake()  # elements a restore left waiting
            if self.unsaved:
                self.sync_store()
            try:
                intact = await self.kernel.is_intact()
            except NftError as exc:
                log.error("table_check_failed", error=str(exc))
                continue
            if intact:
                continue
            log.warning("table_missing_restoring", table=self.table.table,
                        bans=self.index.targets)
            await self.rebuild()

    async def rebuild(self) -> None:
        await self.kernel.rebuild()
