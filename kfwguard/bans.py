"""BanManager: the one place where a ban is decided, stored, applied, expired and restored.

Order of operations for every ban: validate (ignore lists) → store in SQLite
(committed) → queue for the kernel → applied in one nft transaction per
event-loop tick, however many bans arrived in that tick. A crash between the
store and the kernel loses nothing: the next start restores every stored ban.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from kfwguard.addresses import _V6_FLAG as V6_FLAG  # host_key's IPv6 mark
from kfwguard.addresses import IgnoreList, IPAddress
from kfwguard.config import JailConfig
from kfwguard.firewall.bantable import BanTable, Element, Target
from kfwguard.firewall.nft import NftError
from kfwguard.jails import ban_duration
from kfwguard.model import BanRequest
from kfwguard.store import BanRow, Store, StoreError

log = structlog.get_logger("kfwguard.bans")

MANUAL_JAIL = "manual"
LOG_EACH_BAN_UP_TO = 50
DEFAULT_MANUAL_BANTIME = 3600.0

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


class BanRefused(ValueError):
    """A ban that must not happen (an ignored or protected address)."""


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
        return True
    return plen.isdigit() and int(plen) <= (128 if family == socket.AF_INET6 else 32)


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
    kernel_errors: int = 0
    store_errors: int = 0
    table_restores: int = 0


class BanManager:
    def __init__(
        self,
        table: BanTable,
        store: Store | None,
        *,
        jails: dict[str, JailConfig] | None = None,
        ignore: IgnoreList | None = None,
        clock: Callable[[], float] = time.time,
        check_interval: float = 2.0,
    ) -> None:
        self.table = table
        self.store = store
        self.jails = jails or {}
        self.ignore = ignore or IgnoreList()
        self._clock = clock
        self.check_interval = check_interval
        self.persisting = store is not None
        self.stats = BanStats()
        # (target text, jail) -> row; the in-memory truth, mirrored in SQLite.
        self._bans: dict[tuple[str, str], BanRow] = {}
        self._by_target: dict[str, set[str]] = {}
        # What we believe the kernel holds: target text -> absolute expiry.
        self._kernel: dict[str, float] = {}
        self._pending: set[str] = set()
        self._pending_remove: set[str] = set()
        # target text -> latest expiry over its jails
        self._expiry: dict[str, float] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._retry_delay = 0.0
        self._inflight = 0
        self.on_ban: list[BanListener] = []
        self.on_unban: list[BanListener] = []
        # Called with (decided_at, applied_at) of each applied ban.
        self.on_applied: list[Callable[[float], None]] = []
        self._decided_at: dict[str, float] = {}
        self._lock = asyncio.Lock()
        # Extra refusals (cluster allowlist), asked after the ignore lists.
        self.guards: list[BanGuard] = []

    # -- queries -------------------------------------------------------------

    def active(self) -> list[BanRow]:
        now = self._clock()
        return [r for r in self._bans.values() if r.expires_at > now]

    def banned_since(self, host: IPAddress, jail: str) -> float | None:
        row = self._bans.get((str(host), jail))
        if row is None or row.expires_at <= self._clock():
            return None
        return row.banned_at

    @property
    def pending(self) -> int:
        """Changes decided but not yet confirmed by the kernel (queued or in flight)."""
        return len(self._pending) + len(self._pending_remove) + self._inflight

    # -- start ---------------------------------------------------------------

    def restore(self) -> int:
        """Put every ban still in force back in the kernel (one transaction), then
        load them into memory. The kernel comes first: it is what protects."""
        now = self._clock()
        rows: list[BanRow] = []
        checked = False
        if self.store is not None:
            try:
                self.store.purge_expired(now)
                expiries = self.store.active_expiries(now)
                try:
                    self.table.replace_expiring(expiries, now)
                    checked = True  # the kernel parsed every target
                except NftError:
                    # One unparsable stored target would fail the whole batch:
                    # drop what is invalid and try once more.
                    good = [(t, e) for t, e in expiries if valid_target_text(t)]
                    log.error("stored_bans_invalid", count=len(expiries) - len(good),
                              note="skipped; the rest are restored")
                    self.table.replace_expiring(good, now)
                rows = self.store.active_bans(now)
            except StoreError as exc:
                self._store_failed(exc)
                self.table.replace([])
        else:
            self.table.replace([])
        for r in rows:
            if checked or valid_target_text(r.target):
                self._remember(r)
        self._kernel = dict(self._expiry)
        log.info("bans_restored", count=len(rows), targets=len(self._by_target))
        return len(rows)

    def adopt_kernel(self) -> int:
        """Without a state database, keep what the kernel already holds rather than
        starting with a silently empty ban list; make sure the table is intact."""
        now = self._clock()
        live: dict[str, float] = {}
        if self.table.exists():
            try:
                live = self.table.list()
            except NftError as exc:
                log.error("kernel_bans_unreadable", error=str(exc))
        for target, left in live.items():
            expires = now + (left if left != float("inf") else 86400.0)
            self._remember(BanRow(target, "restored", "kept from the kernel", now, expires, 1))
        self.table.replace(self._all_elements(now))
        self._kernel = dict(self._expiry)
        log.warning("bans_adopted_from_kernel", count=len(live))
        return len(live)

    # -- ban / unban -----------------------------------------------------------

    def check_target(self, target: Target) -> None:
        """Raise BanRefused if ``target`` may never be banned."""
        if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
            if self.ignore.overlaps(target):
                raise BanRefused(f"{target} overlaps an ignored or protected address")
            if target.prefixlen < (8 if target.version == 4 else 16):
                raise BanRefused(f"{target} is too wide to ban")
        elif target in self.ignore:
            raise BanRefused(f"{target} is on an ignore list or is protected (node, loopback)")
        for guard in self.guards:
            why = guard(target)
            if why is not None:
                raise BanRefused(why)

    def request(self, requests: Sequence[BanRequest]) -> list[BanRow]:
        """Decide bans: store them, then queue them for the kernel. Returns the new rows."""
        now = self._clock()
        rows: list[BanRow] = []
        for req in requests:
            try:
                self.check_target(req.target)
            except BanRefused as exc:
                self.stats.refused += 1
                log.warning("ban_refused", target=str(req.target), jail=req.jail, why=str(exc))
                continue
            key = str(req.target)
            offence = req.offence
            duration = req.duration
            cfg = self.jails.get(req.jail)
            if cfg is not None and cfg.bantime_increment is not None:
                offence = self._offence_count(key, req.jail) + 1
                duration = ban_duration(cfg, offence)
            rows.append(BanRow(key, req.jail, req.reason, now, now + duration, offence))
            self._decided_at.setdefault(key, req.decided_at or now)
        if not rows:
            return []
        self._persist(rows)
        for r in rows:
            self._remember(r)
            self._pending.add(r.target)
            self._pending_remove.discard(r.target)
        self.stats.bans += len(rows)
        if len(rows) <= LOG_EACH_BAN_UP_TO:
            for r in rows:
                log.info("ban", target=r.target, jail=r.jail, reason=r.reason,
                         seconds=round(r.expires_at - r.banned_at), offence=r.offence)
        else:
            # A burst: one line, not thousands (the ban list and alerts have them all).
            log.info("bans", count=len(rows), jails=sorted({r.jail for r in rows}),
                     targets=[r.target for r in rows[:LOG_EACH_BAN_UP_TO]], more=True)
        for listener in self.on_ban:
            listener(rows)
        self._schedule_flush()
        return rows

    def unban(self, target: Target, jail: str | None = None) -> list[BanRow]:
        """Lift the bans of ``target`` (in ``jail`` or in all jails). Returns the lifted rows."""
        key = str(target)
        jails = [jail] if jail is not None else sorted(self._by_target.get(key, ()))
        rows = [self._bans[(key, j)] for j in jails if (key, j) in self._bans]
        if not rows:
            return []
        if self.store is not None and self.persisting:
            try:
                self.store.delete_bans([(r.target, r.jail) for r in rows])
            except StoreError as exc:
                self._store_failed(exc)
        for r in rows:
            self._forget(r)
        if key in self._by_target:
            self._pending.add(key)  # refresh to the remaining max
        else:
            self._pending.discard(key)
            self._pending_remove.add(key)
        self.stats.unbans += len(rows)
        for r in rows:
            log.info("unban", target=r.target, jail=r.jail)
        for listener in self.on_unban:
            listener(rows)
        self._schedule_flush()
        return rows

    def expire(self) -> list[BanRow]:
        """Drop bans whose time is up from memory and the store (the kernel expires its own)."""
        now = self._clock()
        gone = [r for r in self._bans.values() if r.expires_at <= now]
        for r in gone:
            self._forget(r)
            if r.target not in self._by_target:
                self._kernel.pop(r.target, None)
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

    # -- bans decided by peers (cluster mode) ----------------------------------

    def apply_peer(self, rows: Sequence[BanRow]) -> list[BanRow]:
        """Enforce bans another node decided (``row.jail`` is ``peer_jail(node)``),
        with their own expiry. Protected and ignored addresses are refused here as
        for a local ban; a row already in force unchanged is skipped. No listener
        hears of them: they are not published again and raise no alert, and no
        local jail counts them as offences. Returns the rows taken."""
        now = self._clock()
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
                    if self.ignore.has_key(key):
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
        if self.store is not None and self.persisting:
            try:
                self.store.delete_bans([(r.target, r.jail) for r in rows])
            except StoreError as exc:
                self._store_failed(exc)
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
        now = self._clock()
        return [r for j in self._by_target.get(target, ())
                if (r := self._bans[(target, j)]).expires_at > now]

    # -- kernel ----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            try:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:
                self.flush_now()

    async def flush(self) -> None:
        """Apply everything pending now (awaits an ongoing flush first: it may
        already have taken changes out of pending that are not applied yet).

        The work runs in the one flush task every ban shares, awaited through
        a shield: a caller that stops waiting (``wait_for`` on a manual ban)
        cancels only its own wait, never the batch in flight or what is queued
        behind it."""
        while (self._pending or self._pending_remove
               or (self._flush_task is not None and not self._flush_task.done())):
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            await asyncio.shield(self._flush_task)
            if self._retry_delay:
                break

    async def _flush(self) -> None:
        async with self._lock:
            if self._retry_delay:
                await asyncio.sleep(self._retry_delay)
            while self._pending or self._pending_remove:
                adds, removes = self._take_pending()
                self._inflight = len(adds) + len(removes)
                try:
                    ok = await asyncio.to_thread(self._apply, adds, removes)
                finally:
                    self._inflight = 0
                if not ok:
                    self._retry_delay = min(max(self._retry_delay * 2, 0.5), 30.0)
                    log.warning("kernel_retry_scheduled", seconds=self._retry_delay,
                                pending=self.pending)
                    asyncio.get_running_loop().call_later(self._retry_delay,
                                                          self._schedule_flush)
                    return
                self._retry_delay = 0.0

    def flush_now(self) -> bool:
        """Apply pending changes synchronously (outside an event loop)."""
        adds, removes = self._take_pending()
        return self._apply(adds, removes)

    def _take_pending(self) -> tuple[set[str], set[str]]:
        adds, removes = self._pending, self._pending_remove
        self._pending, self._pending_remove = set(), set()
        return adds, removes

    def _apply(self, adds: set[str], removes: set[str]) -> bool:
        now = self._clock()
        new: list[Element] = []
        refresh: list[Element] = []
        applied: list[str] = []
        for key in adds:
            expiry = self._expiry.get(key, 0.0)
            if expiry <= now:
                continue
            el = Element(key, expiry - now)
            (refresh if key in self._kernel else new).append(el)
            applied.append(key)
        failed: set[str] = set()
        error: NftError | None = None
        try:
            if removes:
                self.table.remove(list(removes))
        except NftError as exc:
            error = exc
            failed.update(removes)
        else:
            for key in removes:
                self._kernel.pop(key, None)
        for refused, add_error in self._add_isolating(new, refresh):
            error = add_error
            failed.add(str(refused.target))
        if error is not None:
            self.stats.kernel_errors += 1
            log.error("kernel_update_failed", error=str(error)[:500], failed=len(failed),
                      adds=len(adds), removes=len(removes))
            # Keep them pending: a missing table is healed by the watcher,
            # a full set may drain as bans expire.
            for k in failed:
                if k in adds:
                    self._pending.add(k)
                elif k in removes and k not in self._by_target:
                    self._pending_remove.add(k)
        done = time.time()
        for key in applied:
            if key in failed:
                continue
            self._kernel[key] = self._expiry.get(key, 0.0)
            decided = self._decided_at.pop(key, None)
            if decided is not None:
                for cb in self.on_applied:
                    cb(max(0.0, done - decided))
        return error is None

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
        """Recreate the table with every ban in force if someone deleted or flushed it."""
        while True:
            await asyncio.sleep(self.check_interval)
            self.expire()
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
            now = self._clock()
            elements = self._all_elements(now)
            try:
                await asyncio.to_thread(self.table.replace, elements)
            except NftError as exc:
                self.stats.kernel_errors += 1
                log.error("table_restore_failed", error=str(exc)[:500])
                return
            self.stats.table_restores += 1
            self._kernel = {str(e.target): now + e.timeout for e in elements}
            self._pending.clear()
            self._pending_remove.clear()
            log.info("table_restored", table=self.table.table, bans=len(elements))

    # -- helpers ---------------------------------------------------------------

    def _all_elements(self, now: float) -> list[Element]:
        return [Element(key, expiry - now) for key, expiry in self._expiry.items()
                if expiry > now]

    def _remember(self, row: BanRow) -> None:
        key = row.target
        old = self._bans.get((key, row.jail))
        self._bans[(key, row.jail)] = row
        jails = self._by_target.get(key)
        if jails is None:
            self._by_target[key] = {row.jail}
            self._expiry[key] = row.expires_at
            return
        jails.add(row.jail)
        if old is not None and old.expires_at > row.expires_at:
            self._recompute_expiry(key)  # a re-ban with a shorter time
        elif row.expires_at > self._expiry.get(key, 0.0):
            self._expiry[key] = row.expires_at

    def _forget(self, row: BanRow) -> None:
        self._bans.pop((row.target, row.jail), None)
        jails = self._by_target.get(row.target)
        if jails is not None:
            jails.discard(row.jail)
            if not jails:
                del self._by_target[row.target]
                self._expiry.pop(row.target, None)
                return
        self._recompute_expiry(row.target)

    def _recompute_expiry(self, key: str) -> None:
        jails = self._by_target.get(key, ())
        if jails:
            self._expiry[key] = max(self._bans[(key, j)].expires_at for j in jails)
        else:
            self._expiry.pop(key, None)

    def _offence_count(self, key: str, jail: str) -> int:
        if self.store is None or not self.persisting:
            row = self._bans.get((key, jail))
            return row.offence if row else 0
        try:
            return self.store.offence_counts(jail, [key]).get(key, 0)
        except StoreError as exc:
            self._store_failed(exc)
            return 0

    def _persist(self, rows: list[BanRow]) -> None:
        if self.store is None:
            return
        try:
            self.store.save_bans(rows)
            if not self.persisting:
                self.persisting = True
                log.info("state_persisting_again", path=str(self.store.path))
        except StoreError as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreError) -> None:
        self.stats.store_errors += 1
        if self.persisting:
            log.error("state_not_persisting", error=str(exc),
                      note="bans continue from memory and the kernel")
        self.persisting = False
