"""BanManager: the one place where a ban is decided, stored, applied, expired and restored.

Order of operations for every ban: validate (target, length, ignore lists)
→ store in SQLite (committed; kept in a journal in memory while the disk
refuses, and written when it takes writes again) → queue for the kernel →
applied in one nft transaction per event-loop tick, however many bans
arrived in that tick. A crash between the store and the kernel loses
nothing: the next start restores every stored ban.

Time: expiries are kept on the wall clock at start plus the monotonic time
since (``now()``), the same basis as the kernel's relative timeouts. A
wall-clock step (NTP, an operator's ``date``) then moves neither: the daemon
and the kernel agree on when each ban ends.

The kernel holds, per address ban, one element; CIDR bans are written as the
disjoint cover of their ranges (kfwguard.firewall.cover), as an interval set
needs them.

Observe mode (``dry_run``, globally or per jail): a jail's bans are decided,
stored (marked simulated), logged, counted and alerted like any other, but
kept apart (``_simulated``) from everything that feeds the kernel. When the
jail's dry_run is turned off (reload or restart), its simulated bans still
in force are enforced. Manual bans are never simulated.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from kfwguard.addresses import _V6_FLAG as V6_FLAG  # host_key's IPv6 mark
from kfwguard.addresses import IgnoreList, IPAddress, IPNetwork
from kfwguard.config import BaselineConfig, JailConfig
from kfwguard.durations import check_ban_duration
from kfwguard.firewall.bantable import SENTINELS, BanTable, Element, Target
from kfwguard.firewall.cover import CoverIndex
from kfwguard.firewall.nft import NftError
from kfwguard.jails.policy import ban_duration
from kfwguard.model import BanRequest
from kfwguard.store import BanRow, Store, StoreError

log = structlog.get_logger("kfwguard.bans")

MANUAL_JAIL = "manual"
ADOPTED_JAIL = "restored"
LOG_EACH_BAN_UP_TO = 50
DEFAULT_MANUAL_BANTIME = 3600.0
# An element the kernel refused is tried again after this, doubling up to the cap.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# A kernel element without a timeout (put there by hand) is adopted for a day.
ADOPTED_NO_TIMEOUT = 86400.0

BanListener = Callable[[Sequence[BanRow]], None]
# A check that may refuse a target: returns why, or None to let it pass.
BanGuard = Callable[[Target], str | None]

# The jail of a ban decided by another node (cluster mode): "peer:<node>".
# Such a ban is stored with its origin, never published again, never counted
# as an offence of a local jail, and announced to no on_ban/on_unban listener.
PEER_JAIL_PREFIX = "peer:"


def peer_jail(node: str) -> str:
    return PEER_JAIL_PREFIX + node


def is_peer_jail(jail: str) -> bool:
    return jail.startswith(PEER_JAIL_PREFIX)

# Sources no packet can truly carry, or ranges whose ban means nothing but
# harm; 224.0.0.0/3 and ff00::/8 also hold the ban sets' sentinels.
_MEANINGLESS: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.ip_network("224.0.0.0/3"), "multicast, reserved or broadcast"),
    (ipaddress.ip_network("::/128"), "the unspecified address"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


class BanRefused(ValueError):
    """A ban that must not happen (an ignored, protected or meaningless target,
    or a ban length out of range)."""


def valid_target_text(text: str) -> bool:
    """True if ``text`` is an address or CIDR in the form we store (checked in C:
    a restore of 100k bans cannot afford ipaddress objects)."""
    addr, _, plen = text.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return False
    if not plen:
        return text not in _SENTINEL_TEXTS
    return plen.isdigit() and int(plen) <= (128 if family == socket.AF_INET6 else 32)


_SENTINEL_TEXTS = frozenset(SENTINELS.values())


def normalise(target: Target) -> Target:
    """Fold IPv4-mapped IPv6 (``::ffff:a.b.c.d``, ``::ffff:0:0/96``) to IPv4, so
    that the protected-address checks see the address the kernel would see,
    and a one-address network to the address."""
    if isinstance(target, ipaddress.IPv6Address) and target.ipv4_mapped is not None:
        return target.ipv4_mapped
    if isinstance(target, ipaddress.IPv6Network) and target.prefixlen >= 96 \
            and target.network_address.ipv4_mapped is not None:
        v4 = ipaddress.IPv4Network((int(target.network_address) & 0xFFFFFFFF,
                                    target.prefixlen - 96))
        return v4.network_address if v4.num_addresses == 1 else v4
    if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network) \
            and target.num_addresses == 1:
        return target.network_address
    return target


def _as_net(target: Target) -> IPNetwork:
    if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(target)
    return target


def plain_key(text: str) -> int | None:
    """``host_key`` of a single address given as canonical text (as stored and
    shared), or None if ``text`` is not one: a peer's 100k bans cannot afford
    an ipaddress object each."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(family, packed) != text:
        return None
    key = int.from_bytes(packed, "big")
    return key | V6_FLAG if family == socket.AF_INET6 else key


@dataclass
class BanStats:
    bans: int = 0
    unbans: int = 0
    refused: int = 0
    refused_manual: int = 0  # of which asked for by an operator (kfwguard ban)
    simulated: int = 0  # decided in observe mode (dry_run), kept out of the kernel
    duplicates: int = 0
    kernel_errors: int = 0
    store_errors: int = 0
    table_restores: int = 0
    per_jail: dict[str, int] = field(default_factory=dict)


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
        self.persisting = store is not None
        self.stats = BanStats()
        # Why the kernel last refused a ban, in an operator's words (a full set
        # names nftables.set_size); the control API shows it with a ban not applied.
        self.last_kernel_error: str | None = None
        # Observe mode for every jail that does not set its own dry_run.
        self.dry_run = False
        # (target text, jail) -> row of bans decided in observe mode: never in
        # _bans, _by_target or _expiry, so nothing of them reaches the kernel.
        self._simulated: dict[tuple[str, str], BanRow] = {}
        # (target text, jail) -> row; the in-memory truth, mirrored in SQLite.
        self._bans: dict[tuple[str, str], BanRow] = {}
        self._by_target: dict[str, set[str]] = {}
        # target text -> latest expiry over its jails
        self._expiry: dict[str, float] = {}
        self._nets: set[str] = set()  # the CIDR targets among them
        # their disjoint cover, kept up to date as their expiries change
        self._cover = CoverIndex()
        # What we believe the kernel holds: element text -> absolute expiry.
        # Address targets are their own element; CIDRs are cover() pieces.
        self._kernel: dict[str, float] = {}
        self._pending: set[str] = set()
        self._pending_remove: set[str] = set()
        self._nets_dirty = False
        # Elements the kernel refused, each with its own back-off:
        # element -> (delay, monotonic time of the next try).
        self._backoff: dict[str, tuple[float, float]] = {}
        self._deferred: set[str] = set()  # address targets waiting on their back-off
        self._deferred_remove: set[str] = set()
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at = 0.0
        self._flush_task: asyncio.Task[None] | None = None
        self._inflight = 0
        # Rows (or deletions, None) the store refused: written by the next
        # save that works (sync_store, also run by watch_table).
        self._journal: dict[tuple[str, str], BanRow | None] = {}
        self.on_ban: list[BanListener] = []
        self.on_unban: list[BanListener] = []
        # Called with (decided_at, applied_at) of each applied ban.
        self.on_applied: list[Callable[[float], None]] = []
        self._decided_at: dict[str, float] = {}
        self._lock = asyncio.Lock()
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
        now = self.now()
        return ([r for r in self._bans.values() if r.expires_at > now]
                + [r for r in self._simulated.values() if r.expires_at > now])

    def simulates(self, jail: str) -> bool:
        """True if bans decided by ``jail`` are only simulated (observe mode).
        A jail the config does not name (manual, restored) never is."""
        cfg = self.jails.get(jail)
        if cfg is None:
            return False
        return self.dry_run if cfg.dry_run is None else cfg.dry_run

    def banned_since(self, host: IPAddress | IPNetwork, jail: str) -> float | None:
        key = (str(host), jail)
        row = self._bans.get(key) or self._simulated.get(key)
        if row is None or row.expires_at <= self.now():
            return None
        return row.banned_at

    @property
    def pending(self) -> int:
        """Changes decided but not yet confirmed by the kernel (queued, in flight
        or waiting to be tried again)."""
        return (len(self._pending) + len(self._pending_remove) + len(self._deferred)
                + len(self._deferred_remove) + self._inflight + int(self._nets_dirty))

    @property
    def unsaved(self) -> int:
        """Changes the store has not taken yet (a full or failing disk)."""
        return len(self._journal)

    def active_target(self, target: Target | str) -> bool:
        """True if some jail still bans ``target``."""
        return str(target) in self._by_target

    def in_kernel(self, target: Target | str) -> bool:
        """True if the kernel holds the ban of ``target`` as decided (not pending)."""
        key = str(target)
        if key not in self._expiry:
            return False
        if "/" in key:
            return not self._nets_dirty and not self._inflight
        return (key in self._kernel and key not in self._pending
                and key not in self._deferred)

    def out_of_kernel(self, target: Target | str) -> bool:
        """True if no ban of ``target`` is left in the kernel (after an unban)."""
        key = str(target)
        if "/" in key:
            return not self._nets_dirty and not self._inflight and key not in self._kernel
        return (key not in self._kernel and key not in self._pending_remove
                and key not in self._deferred_remove)

    # -- start ---------------------------------------------------------------

    def restore(self) -> int:
        """Put every ban still in force back in the kernel (one transaction), then
        load them into memory. The kernel comes first: it is what protects.

        A store that fails to read (a damaged page), or that holds no ban
        while the kernel does (a zero-length or replaced file), never empties
        the kernel: its bans are adopted, as without a store."""
        if self.store is None:
            return self.adopt_kernel()
        now = self.now()
        try:
            self.store.purge_expired(now)
            expiries = self.store.active_expiries(now)
            rows = self.store.active_bans(now)
        except StoreError as exc:
            self._store_failed(exc)
            log.error("stored_bans_unreadable", error=str(exc),
                      note="keeping the bans the kernel holds")
            return self.adopt_kernel()
        if not expiries and self._kernel_has_bans():
            log.warning("store_empty_kernel_not", path=str(self.store.path),
                        note="keeping the bans the kernel holds")
            return self.adopt_kernel()
        enforce: list[BanRow] = []
        for r in rows:
            if not valid_target_text(r.target):
                continue
            if r.simulated:
                if not self._enforceable(r):
                    self._simulated[(r.target, r.jail)] = r
                    continue
                r = replace(r, simulated=False)  # dry_run was turned off while we were down
                enforce.append(r)
            if "/" not in r.target or self._stored_net_ok(r):
                self._remember(r)
        if enforce:
            self._persist(enforce)
            log.info("simulated_bans_enforced", count=len(enforce),
                     jails=sorted({r.jail for r in enforce}))
        self._apply_all(now)
        log.info("bans_restored", count=len(rows), targets=len(self._by_target))
        return len(rows)

    def _stored_net_ok(self, row: BanRow) -> bool:
        try:
            self.check_target(ipaddress.ip_network(row.target), force=True)
        except (BanRefused, ValueError) as exc:
            log.error("stored_ban_refused", target=row.target, why=str(exc))
            return False
        return True

    def _kernel_has_bans(self) -> bool:
        try:
            return self.table.exists() and bool(self.table.list())
        except NftError:
            return False

    def adopt_kernel(self) -> int:
        """Keep what the kernel already holds rather than starting with a silently
        empty ban list (no store, or one that cannot be trusted), and make sure
        the table is intact. The adopted bans are stored when the store works."""
        now = self.now()
        live: dict[str, float] = {}
        if self.table.exists():
            try:
                live = self.table.list()
            except NftError as exc:
                log.error("kernel_bans_unreadable", error=str(exc))
        rows = []
        for target, left in live.items():
            if not valid_target_text(target):
                continue
            expires = now + (left if left != float("inf") else ADOPTED_NO_TIMEOUT)
            rows.append(BanRow(target, ADOPTED_JAIL, "kept from the kernel", now, expires, 1))
        self._persist(rows)  # journalled if the store refuses: written when it can
        for r in rows:
            self._remember(r)
        self._apply_all(now)
        log.warning("bans_adopted_from_kernel", count=len(rows))
        return len(rows)

    # -- ban / unban -----------------------------------------------------------

    def check_target(self, target: Target, *, force: bool = False) -> Target:
        """The target to ban (IPv4-mapped folded to IPv4), or BanRefused if it may
        never be banned. ``force`` (an operator's) allows a ban overlapping the
        cluster, pod or service CIDRs; nothing allows one of an admin network."""
        target = normalise(target)
        if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return self._check_address(target, force)
        net = _as_net(target)
        for bad, what in _MEANINGLESS:
            if net.version == bad.version and net.overlaps(bad):
                raise BanRefused(f"{target} is or covers {what}: not a source to ban")
        if self.admin.overlaps(net):
            raise BanRefused(f"{target} overlaps admin_cidrs: the operator's access "
                             "is never banned")
        if self.ignore.overlaps(net):
            raise BanRefused(f"{target} overlaps an ignored or protected address")
        if net.prefixlen < (8 if net.version == 4 else 16):
            raise BanRefused(f"{target} is too wide to ban")
        if not force and self.cluster.overlaps(net):
            raise BanRefused(f"{target} overlaps the cluster, pod or service CIDRs "
                             "(an operator may insist with --force)")
        self._check_guards(target)
        return target

    def _check_guards(self, target: Target) -> None:
        for guard in self.guards:
            why = guard(target)
            if why is not None:
                raise BanRefused(why)

    def _check_address(self, addr: IPAddress, force: bool) -> IPAddress:
        """check_target for one address, on ints: the path every jail ban takes."""
        value = int(addr)
        if addr.version == 4:
            if value >> 24 == 0 or value >= 0xE0000000:
                raise BanRefused(f"{addr} is in 0.0.0.0/8 or 224.0.0.0/3 (multicast, "
                                 "reserved, broadcast): not a source to ban")
        elif value == 0 or value >> 120 == 0xFF:
            raise BanRefused(f"{addr} is unspecified or multicast: not a source to ban")
        if addr in self.admin:
            raise BanRefused(f"{addr} is in admin_cidrs: the operator's access is never banned")
        if addr in self.ignore:
            raise BanRefused(f"{addr} is on an ignore list or is protected (node, loopback)")
        if not force and addr in self.cluster:
            raise BanRefused(f"{addr} is in the cluster, pod or service CIDRs "
                             "(an operator may insist with --force)")
        self._check_guards(addr)
        return addr

    def request(self, requests: Sequence[BanRequest], *, force: bool = False) -> list[BanRow]:
        """Decide bans: store them, then queue them for the kernel. Returns the new
        rows: one per (target, jail), however often a batch asks for it."""
        now = self.now()
        rows: list[BanRow] = []
        seen: set[tuple[str, str]] = set()
        for req in requests:
            try:
                target = self.check_target(req.target, force=force)
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
            simulated = self.simulates(req.jail) and (key, req.jail) not in self._bans
            rows.append(BanRow(key, req.jail, req.reason, now, now + duration, offence,
                               simulated))
            if not simulated:
                self._decided_at.setdefault(key, req.decided_at or now)
        if not rows:
            return []
        self._persist(rows)
        for r in rows:
            if r.simulated:
                self._simulated[(r.target, r.jail)] = r
                self.stats.simulated += 1
                continue
            self._simulated.pop((r.target, r.jail), None)
            self._remember(r)
            self._queue_add(r.target)
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
        self._schedule_flush()
        return rows

    def unban(self, target: Target, jail: str | None = None) -> list[BanRow]:
        """Lift the bans of ``target`` (in ``jail`` or in all jails). Returns the lifted rows."""
        key = str(normalise(target))
        jails = [jail] if jail is not None else sorted(self._by_target.get(key, ()))
        rows = [self._bans[(key, j)] for j in jails if (key, j) in self._bans]
        simulated = [r for k, r in self._simulated.items()
                     if k[0] == key and (jail is None or k[1] == jail)]
        if not rows and not simulated:
            return []
        self._unpersist([(r.target, r.jail) for r in (*rows, *simulated)])
        for r in simulated:
            del self._simulated[(r.target, r.jail)]
        for r in rows:
            self._forget(r)
        if key in self._by_target:
            self._queue_add(key)  # refresh to the remaining max
        elif rows:
            self._queue_remove(key)
        rows += simulated
        self.stats.unbans += len(rows)
        for r in rows:
            log.info("unban", target=r.target, jail=r.jail)
        for listener in self.on_unban:
            listener(rows)
        self._schedule_flush()
        return rows

    def expire(self) -> list[BanRow]:
        """Drop bans whose time is up from memory and the store (the kernel expires its own)."""
        now = self.now()
        gone = [r for r in self._bans.values() if r.expires_at <= now]
        simulated = [r for r in self._simulated.values() if r.expires_at <= now]
        for r in simulated:
            del self._simulated[(r.target, r.jail)]
        for r in gone:
            self._forget(r)
            if r.target not in self._by_target:
                self._kernel.pop(r.target, None)
                self._backoff.pop(r.target, None)
        if any("/" in r.target for r in gone):
            # The kernel's cover pieces expired with them; forget those too.
            for el in [e for e, x in self._kernel.items() if "/" in e and x <= now]:
                del self._kernel[el]
            self._nets_dirty = True
            self._schedule_flush()
        gone += simulated
        if gone and self.store is not None and self.persisting:
            try:
                self.store.purge_expired(now)
            except StoreError as exc:
                self._store_failed(exc)
        if gone:
            self.stats.unbans += len(gone)
            for listener in self.on_unban:
                listener(gone)
        return gone

    def enforce_simulated(self) -> list[BanRow]:
        """Enforce the simulated bans, still in force, of jails no longer in
        observe mode (after a reload turned their dry_run off). Returns them."""
        now = self.now()
        due = [r for r in self._simulated.values()
               if r.expires_at <= now or self._enforceable(r)]
        for r in due:
            del self._simulated[(r.target, r.jail)]
        # An address protected since (ignoreip, the node's own) stays unbanned.
        rows = [replace(r, simulated=False) for r in due
                if r.expires_at > now and self._stored_net_ok(r)]
        dropped = [(r.target, r.jail) for r in due
                   if r.expires_at > now and (r.target, r.jail) not in
                   {(x.target, x.jail) for x in rows}]
        if dropped:
            self._unpersist(dropped)
        if not rows:
            return []
        self._persist(rows)
        for r in rows:
            self._remember(r)
            self._queue_add(r.target)
            self._decided_at.setdefault(r.target, now)
            self.stats.per_jail[r.jail] = self.stats.per_jail.get(r.jail, 0) + 1
        self.stats.bans += len(rows)
        log.info("simulated_bans_enforced", count=len(rows),
                 jails=sorted({r.jail for r in rows}))
        for listener in self.on_ban:
            listener(rows)
        self._schedule_flush()
        return rows

    def _enforceable(self, row: BanRow) -> bool:
        """True if a simulated ban's jail is still configured and no longer in
        observe mode. A jail removed from the config keeps its simulated bans
        simulated until they expire: nobody asked for them to be enforced."""
        return row.jail in self.jails and not self.simulates(row.jail)

    # -- store -------------------------------------------------------------------

    def sync_store(self) -> bool:
        """Write what the store refused earlier (full disk); True if nothing is left."""
        if not self._journal or self.store is None:
            return not self._journal
        now = self.now()
        saves = [r for r in self._journal.values() if r is not None and r.expires_at > now]
        deletes = [k for k, r in self._journal.items() if r is None]
        try:
            self.store.apply_changes(saves, deletes)
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._journal.clear()
        self._persisting_again()
        return True

    def _persist(self, rows: list[BanRow]) -> None:
        if self.store is None:
            return
        for r in rows:
            self._journal[(r.target, r.jail)] = r
        self.sync_store()

    def _unpersist(self, keys: list[tuple[str, str]]) -> None:
        if self.store is None:
            return
        for k in keys:
            self._journal[k] = None
        self.sync_store()

    def _persisting_again(self) -> None:
        if not self.persisting and self.store is not None:
            self.persisting = True
            log.info("state_persisting_again", path=str(self.store.path))

    def _store_failed(self, exc: StoreError) -> None:
        self.stats.store_errors += 1
        if self.persisting:
            log.error("state_not_persisting", error=str(exc), unsaved=len(self._journal),
                      note="bans continue from memory and the kernel; "
                           "unsaved changes are written when the store works again")
        self.persisting = False

    # -- bans decided by peers (cluster mode) ----------------------------------

    def apply_peer(self, rows: Sequence[BanRow]) -> list[BanRow]:
        """Enforce bans another node decided (``row.jail`` is ``peer_jail(node)``),
        with their own expiry. Protected and ignored addresses are refused here as
        for a local ban; a row already in force unchanged is skipped. No listener
        hears of them: they are not published again and raise no alert, and no
        local jail counts them as offences. Returns the rows taken."""
        now = self.now()
        taken: list[BanRow] = []
        for row in rows:
            if not is_peer_jail(row.jail) or row.expires_at <= now:
                continue
            old = self._bans.get((row.target, row.jail))
            if old is not None and old.expires_at == row.expires_at:
                continue
            try:
                key = None if "/" in row.target else plain_key(row.target)
                if key is not None and not self.guards:
                    # The common case without building objects: check_target's
                    # test for one address.
                    if (self.ignore.has_key(key) or self.admin.has_key(key)
                            or self.cluster.has_key(key)):
                        raise BanRefused(f"{row.target} is on an ignore list or is protected")
                else:
                    self.check_target(ipaddress.ip_network(row.target, strict=False)
                                      if "/" in row.target
                                      else ipaddress.ip_address(row.target))
            except (BanRefused, ValueError) as exc:
                self.stats.refused += 1
                log.warning("peer_ban_refused", target=row.target, origin=row.jail,
                            why=str(exc))
                continue
            taken.append(row)
        if not taken:
            return []
        self._persist(taken)
        for r in taken:
            self._remember(r)
            self._pending.add(r.target)
            self._pending_remove.discard(r.target)
        log.info("peer_bans", count=len(taken), origins=sorted({r.jail for r in taken}),
                 targets=[r.target for r in taken[:LOG_EACH_BAN_UP_TO]])
        self._schedule_flush()
        return taken

    def withdraw_peer(self, keys: Sequence[tuple[str, str]]) -> list[BanRow]:
        """Lift peers' bans given as (target, peer jail); local bans of the same
        target stay. Like apply_peer, tells no listener."""
        rows = [self._bans[k] for k in keys if k in self._bans and is_peer_jail(k[1])]
        if not rows:
            return []
        self._unpersist([(r.target, r.jail) for r in rows])
        for r in rows:
            self._forget(r)
            if r.target in self._by_target:
                self._pending.add(r.target)
            else:
                self._pending.discard(r.target)
                self._pending_remove.add(r.target)
        log.info("peer_unbans", count=len(rows), targets=[r.target for r in rows[:50]])
        self._schedule_flush()
        return rows

    def rows_of(self, target: str) -> list[BanRow]:
        """Every ban of ``target`` in force, over all jails (local and peers')."""
        now = self.now()
        return [r for j in self._by_target.get(target, ())
                if (r := self._bans[(target, j)]).expires_at > now]

    # -- kernel ----------------------------------------------------------------

    def _queue_add(self, key: str) -> None:
        if "/" in key:
            self._nets_dirty = True
            return
        self._pending.add(key)
        self._pending_remove.discard(key)
        self._deferred.discard(key)
        self._deferred_remove.discard(key)

    def _queue_remove(self, key: str) -> None:
        if "/" in key:
            self._nets_dirty = True
            return
        self._pending.discard(key)
        self._deferred.discard(key)
        self._deferred_remove.discard(key)
        self._pending_remove.add(key)

    def _ready(self) -> bool:
        return bool(self._pending or self._pending_remove or self._nets_dirty)

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            try:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:
                self.flush_now()

    async def flush(self) -> None:
        """Apply everything pending now (awaits an ongoing flush first: it may
        already have taken changes out of pending that are not applied yet).
        Elements the kernel refused wait for their own retry and do not hold
        this up: ``in_kernel`` tells whether a ban got in.

        The work runs in the one flush task every ban shares, awaited through
        a shield: a caller that stops waiting (``wait_for`` on a manual ban)
        cancels only its own wait, never the batch in flight or what is queued
        behind it."""
        while self._ready() or (self._flush_task is not None and not self._flush_task.done()):
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            await asyncio.shield(self._flush_task)

    async def _flush(self) -> None:
        async with self._lock:
            while self._ready():
                adds, removes, nets = self._take_pending()
                self._inflight = len(adds) + len(removes) + int(nets)
                try:
                    await asyncio.to_thread(self._apply, adds, removes, nets)
                except Exception:
                    # A bug must not end the flush task and drop the batch with
                    # it: keep the batch, count it, try again after a pause.
                    self.stats.kernel_errors += 1
                    log.exception("kernel_update_crashed", adds=len(adds), removes=len(removes))
                    mono = self._monotonic()
                    for key in (*adds, *removes):
                        self._backoff[key] = (RETRY_MAX, mono + RETRY_MAX)
                    self._deferred |= adds
                    self._deferred_remove |= removes
                    if nets:  # a marker: _wake marks the nets again when it ends
                        self._backoff["0.0.0.0/0"] = (RETRY_MAX, mono + RETRY_MAX)
                    break
                finally:
                    self._inflight = 0
        self._arm_wake()

    def flush_now(self) -> bool:
        """Apply pending changes synchronously (outside an event loop)."""
        adds, removes, nets = self._take_pending()
        return self._apply(adds, removes, nets)

    def _take_pending(self) -> tuple[set[str], set[str], bool]:
        adds, removes, nets = self._pending, self._pending_remove, self._nets_dirty
        self._pending, self._pending_remove, self._nets_dirty = set(), set(), False
        return adds, removes, nets

    def _waiting(self, element: str, mono: float) -> bool:
        b = self._backoff.get(element)
        return b is not None and b[1] > mono

    def _apply(self, adds: set[str], removes: set[str], nets: bool) -> bool:
        now = self.now()
        mono = self._monotonic()
        new: list[Element] = []
        refresh: list[Element] = []
        gone: list[str] = []
        # element -> the expiry it is given, exactly (now + timeout is not, and a
        # piece whose recorded expiry drifts would be refreshed on every pass)
        planned: dict[str, float] = {}
        for key in adds:
            expiry = self._expiry.get(key, 0.0)
            if expiry <= now:
                self._backoff.pop(key, None)
                continue
            if self._waiting(key, mono):
                self._deferred.add(key)
                continue
            el = Element(key, expiry - now)
            planned[key] = expiry
            (refresh if key in self._kernel else new).append(el)
        for key in removes:
            if self._waiting(key, mono):
                self._deferred_remove.add(key)
            else:
                gone.append(key)
        if nets:
            want = self._net_elements(now)
            have = {e: x for e, x in self._kernel.items() if "/" in e}
            gone += [piece for piece in have if piece not in want]
            for piece in [e for e in self._backoff if "/" in e and e not in want]:
                del self._backoff[piece]  # no longer wanted: nothing to retry
            for piece, x in want.items():
                if self._waiting(piece, mono):
                    continue  # _wake marks the nets again when its back-off ends
                if piece not in have:
                    new.append(Element(piece, x - now))
                    planned[piece] = x
                elif have[piece] != x:
                    refresh.append(Element(piece, x - now))
                    planned[piece] = x
                else:
                    self._backoff.pop(piece, None)  # in the kernel as wanted
        failed: list[tuple[str, NftError]] = []
        try:
            if gone:
                self.table.update(gone, new, refresh)
            else:
                failed += [(str(e.target), exc) for e, exc in self._add_isolating(new, refresh)]
        except NftError:
            # Something in the batch was refused: removals on their own, then
            # the additions split until each refused element stands alone.
            try:
                self.table.remove(gone)
            except NftError as exc:
                failed += [(k, exc) for k in gone]
            failed += [(str(e.target), exc) for e, exc in self._add_isolating(new, refresh)]
        refused = {k for k, _ in failed}
        for key in gone:
            if key not in refused:
                self._kernel.pop(key, None)
                self._backoff.pop(key, None)
        done = time.time()
        for el in (*new, *refresh):
            key = str(el.target)
            if key in refused:
                continue
            self._kernel[key] = planned[key]
            self._backoff.pop(key, None)
            decided = self._decided_at.pop(key, None)
            if decided is not None:
                for cb in self.on_applied:
                    cb(max(0.0, done - decided))
        if failed:
            self.stats.kernel_errors += 1
            log.error("kernel_update_failed", error=self._why_refused(failed), failed=len(refused),
                      adds=len(new) + len(refresh), removes=len(gone),
                      examples=sorted(refused)[:5])
            for key in refused:
                delay = min(max(self._backoff.get(key, (0.0, 0.0))[0] * 2, RETRY_FIRST),
                            RETRY_MAX)
                self._backoff[key] = (delay, mono + delay)
                if "/" in key:
                    continue  # net pieces are derived again when _wake marks the nets
                if key in removes:
                    if key not in self._by_target:
                        self._deferred_remove.add(key)
                else:
                    self._deferred.add(key)
        return not failed

    def _arm_wake(self) -> None:
        """Call the flush again when the next refused element's back-off ends."""
        mono = self._monotonic()
        future = [b[1] for b in self._backoff.values() if b[1] > mono]
        if not future:
            if self._deferred or self._deferred_remove or any(
                    "/" in k for k in self._backoff):
                future = [mono]  # their wait ended while we were busy: at once
            else:
                return
        first = min(future)
        if self._wake_handle is not None:
            if self._wake_at <= first:
                return
            self._wake_handle.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        log.warning("kernel_retry_scheduled", seconds=round(first - mono, 2),
                    pending=self.pending)
        self._wake_at = first
        self._wake_handle = loop.call_later(max(0.0, first - mono), self._wake)

    def _wake(self) -> None:
        self._wake_handle = None
        mono = self._monotonic()
        for key in [k for k in self._deferred if not self._waiting(k, mono)]:
            self._deferred.discard(key)
            self._pending.add(key)
        for key in [k for k in self._deferred_remove if not self._waiting(k, mono)]:
            self._deferred_remove.discard(key)
            self._pending_remove.add(key)
        if any("/" in k and b[1] <= mono for k, b in self._backoff.items()):
            self._nets_dirty = True
        if self._ready():
            self._schedule_flush()
        else:
            self._arm_wake()

    def _add_isolating(self, new: list[Element],
                       refresh: list[Element]) -> list[tuple[Element, NftError]]:
        """Add in one transaction; if the kernel refuses it (e.g. a full set), split
        it so that the elements that can go in do. Returns the refused elements."""
        if not new and not refresh:
            return []
        try:
            self.table.add(new, refresh)
            return []
        except NftError as exc:
            if len(new) + len(refresh) == 1:
                return [((new or refresh)[0], exc)]
            if not self.table.exists():
                return [(e, exc) for e in (*new, *refresh)]
        hn, hr = (len(new) + 1) // 2, (len(refresh) + 1) // 2
        return (self._add_isolating(new[:hn], refresh[:hr])
                + self._add_isolating(new[hn:], refresh[hr:]))

    async def watch_table(self) -> None:
        """Recreate the table with every ban in force if someone deleted or flushed
        it; write what the store could not take earlier."""
        while True:
            await asyncio.sleep(self.check_interval)
            self.expire()
            self._arm_wake()  # elements a restore left waiting
            if self._journal:
                self.sync_store()
            try:
                intact = await asyncio.to_thread(self.table.is_intact)
            except NftError as exc:
                log.error("table_check_failed", error=str(exc))
                continue
            if intact:
                continue
            log.warning("table_missing_restoring", table=self.table.table,
                        bans=len(self._by_target))
            await self.rebuild()

    async def rebuild(self) -> None:
        async with self._lock:
            now = self.now()
            try:
                await asyncio.to_thread(self._apply_all, now)
            except NftError as exc:
                self.stats.kernel_errors += 1
                log.error("table_restore_failed", error=str(exc)[:500])
                return
            self.stats.table_restores += 1
            log.info("table_restored", table=self.table.table, bans=len(self._kernel))
        self._arm_wake()

    def _apply_all(self, now: float) -> None:
        """Recreate the table holding every ban in force, in one transaction; if the
        kernel refuses that, an empty table and then the bans, split until each
        refused element stands alone (it waits for its own retry; the rest go
        in). Raises NftError only if not even an empty table can be made."""
        want: dict[str, float] = {k: x for k, x in self._expiry.items()
                                  if x > now and "/" not in k}
        want.update(self._net_elements(now))
        self._pending.clear()
        self._pending_remove.clear()
        self._deferred.clear()
        self._deferred_remove.clear()
        self._nets_dirty = False
        self._kernel = {}
        try:
            self.table.replace_expiring(list(want.items()), now)
            self._kernel = want
            self._backoff.clear()
            return
        except NftError as exc:
            log.error("kernel_refused_bans", error=str(exc)[:500], bans=len(want),
                      note="isolating the refused ones")
        self.table.replace([])
        new = [Element(k, x - now) for k, x in want.items()]
        failed = [(str(e.target), exc) for e, exc in self._add_isolating(new, [])]
        refused = {k for k, _ in failed}
        mono = self._monotonic()
        for k, x in want.items():
            if k in refused:
                delay = min(max(self._backoff.get(k, (0.0, 0.0))[0] * 2, RETRY_FIRST),
                            RETRY_MAX)
                self._backoff[k] = (delay, mono + delay)
                if "/" in k:
                    self._nets_dirty = True
                else:
                    self._deferred.add(k)
            else:
                self._kernel[k] = x
                self._backoff.pop(k, None)
        if refused:
            self.stats.kernel_errors += 1
            log.error("bans_refused_by_kernel", error=self._why_refused(failed),
                      count=len(refused), examples=sorted(refused)[:5])

    def _why_refused(self, failed: list[tuple[str, NftError]]) -> str:
        """Each distinct reason the kernel gave, in words (remembered for the control API)."""
        why = "; ".join(dict.fromkeys(self.table.refusal_text(k, e) for k, e in failed))[:500]
        self.last_kernel_error = why
        return why

    # -- helpers ---------------------------------------------------------------

    def _net_elements(self, now: float) -> dict[str, float]:
        # The cover of every net ban, then the pieces still in force: the same
        # as the cover of the nets in force (a piece takes the latest expiry
        # of the nets over it; a net that outlives an expired one around it
        # is cut out of it, as if that one were gone).
        return self._cover.elements(after=now)

    def _net_changed(self, key: str) -> None:
        expiry = self._expiry.get(key)
        if expiry is None:
            self._cover.discard(key)
        else:
            self._cover.set(key, expiry)

    def _remember(self, row: BanRow) -> None:
        key = row.target
        old = self._bans.get((key, row.jail))
        self._bans[(key, row.jail)] = row
        jails = self._by_target.get(key)
        if jails is None:
            self._by_target[key] = {row.jail}
            self._expiry[key] = row.expires_at
            if "/" in key:
                self._nets.add(key)
                self._net_changed(key)
            return
        jails.add(row.jail)
        if old is not None and old.expires_at > row.expires_at:
            self._recompute_expiry(key)  # a re-ban with a shorter time
        elif row.expires_at > self._expiry.get(key, 0.0):
            self._expiry[key] = row.expires_at
            if "/" in key:
                self._net_changed(key)

    def _forget(self, row: BanRow) -> None:
        self._bans.pop((row.target, row.jail), None)
        jails = self._by_target.get(row.target)
        if jails is not None:
            jails.discard(row.jail)
            if not jails:
                del self._by_target[row.target]
                self._expiry.pop(row.target, None)
                self._nets.discard(row.target)
                self._cover.discard(row.target)
                return
        self._recompute_expiry(row.target)

    def _recompute_expiry(self, key: str) -> None:
        jails = self._by_target.get(key, ())
        if jails:
            self._expiry[key] = max(self._bans[(key, j)].expires_at for j in jails)
        else:
            self._expiry.pop(key, None)
            self._nets.discard(key)
        if "/" in key:
            self._net_changed(key)

    def _offence_count(self, key: str, jail: str) -> int:
        pending = self._journal.get((key, jail))
        if pending is not None:
            return pending.offence
        if self.store is None or not self.persisting:
            row = self._bans.get((key, jail)) or self._simulated.get((key, jail))
            return row.offence if row else 0
        try:
            return self.store.offence_counts(jail, [key]).get(key, 0)
        except StoreError as exc:
            self._store_failed(exc)
            row = self._bans.get((key, jail)) or self._simulated.get((key, jail))
            return row.offence if row else 0
