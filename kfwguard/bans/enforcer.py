"""Kernel sync: makes the ban table hold what the index says is in force.

Changes are queued by target (``queue_add``/``queue_remove``; CIDR bans mark
the cover dirty) and applied in one nft transaction per event-loop tick,
however many bans arrived in that tick, by the one flush task every ban
shares. Each pass has three steps: ``_plan`` (event loop: reads the index
and what the kernel holds, builds the elements), ``kernel_io.send`` (worker
thread: nft I/O only, returns the elements the kernel refused) and
``_settle`` (event loop: records what the kernel now holds, and the back-off
of what it refused). No state is touched off the event loop.

An element the kernel refuses (a full set) waits for its own retry with a
back-off doubling from RETRY_FIRST to RETRY_MAX; the rest of its batch goes
in (the batch is split until each refused element stands alone).

Which expiry an element carries is exact (``_kernel``): element text ->
absolute expiry, the same basis as the manager's ``now()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from kfwguard.bans.index import BanIndex
from kfwguard.bans.kernel_io import Batch, Rebuilt, Refused, send, send_all
from kfwguard.bans.model import BanStats, paused_gc
from kfwguard.firewall.bantable import BanTable, Element
from kfwguard.firewall.nft import NftError
from kfwguard.store import BanRow

_new = tuple.__new__
log = structlog.get_logger("kfwguard.bans")

# An element the kernel refused is tried again after this, doubling up to the cap.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0

class KernelEnforcer:
    def __init__(self, table: BanTable, index: BanIndex, stats: BanStats, *,
                 now: Callable[[], float], clock: Callable[[], float],
                 monotonic: Callable[[], float]) -> None:
        self.table = table
        self._index = index
        self.stats = stats
        self._now = now
        self._clock = clock
        self._monotonic = monotonic
        # Why the kernel last refused a ban, in an operator's words (a full set
        # names nftables.set_size); the control API shows it with a ban not applied.
        self.last_kernel_error: str | None = None
        # What we believe the kernel holds: element text -> absolute expiry.
        # Address targets are their own element; CIDRs are cover pieces.
        self._kernel: dict[str, float] = {}
        self._pending: set[str] = set()
        self._pending_remove: set[str] = set()
        # Single addresses to the kernel ahead of the index (queue_ahead): -> expiry.
        self._ahead: dict[str, float] = {}
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
        self._lock = asyncio.Lock()
        # Called with the seconds from decision to kernel of each applied ban.
        self.on_applied: list[Callable[[float], None]] = []
        self._decided_at: dict[str, float] = {}

    # -- queries ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Changes decided but not yet confirmed by the kernel (queued, in flight
        or waiting to be tried again)."""
        return (len(self._pending) + len(self._pending_remove) + len(self._ahead)
                + len(self._deferred) + len(self._deferred_remove) + self._inflight
                + int(self._nets_dirty))

    def in_kernel(self, key: str) -> bool:
        """True if the kernel holds the ban of ``key`` as decided (not pending)."""
        if self._index.expiry(key) is None:
            return False
        if "/" in key:
            return not self._nets_dirty and not self._inflight
        return (key in self._kernel and key not in self._pending
                and key not in self._deferred)

    def out_of_kernel(self, key: str) -> bool:
        """True if no ban of ``key`` is left in the kernel (after an unban)."""
        if "/" in key:
            return not self._nets_dirty and not self._inflight and key not in self._kernel
        return (key not in self._kernel and key not in self._pending_remove
                and key not in self._deferred_remove)

    # -- queueing (event loop) -------------------------------------------------

    def decided(self, key: str, at: float) -> None:
        """Remember when the ban of ``key`` was decided (for on_applied)."""
        self._decided_at.setdefault(key, at)

    def queue_add(self, key: str) -> None:
        if "/" in key:
            self._nets_dirty = True
            return
        self._pending.add(key)
        self._pending_remove.discard(key)
        self._deferred.discard(key)
        self._deferred_remove.discard(key)

    def queue_adds(self, keys: list[str]) -> None:
        """queue_add() of each of ``keys``, as set operations (a listing's 100k)."""
        addrs = {k for k in keys if "/" not in k}
        if len(addrs) < len(keys):
            self._nets_dirty = True
        self._pending |= addrs
        for other in (self._pending_remove, self._deferred, self._deferred_remove):
            if other:
                other -= addrs

    def queue_ahead(self, rows: Iterable[BanRow]) -> list[BanRow]:
        """Put the single addresses of ``rows`` in the kernel with their
        expiries before the index holds them: a new node's listing of
        peers' bans is enforced first and indexed after. An address queued
        twice gets the later expiry, and a ban the index holds of it too the
        latest of all. Once the index has them, catch_up() queues again each
        one whose element is not what the index says. Returns the CIDR rows,
        which cannot go ahead (their elements are the index's cover)."""
        ahead = self._ahead
        get = ahead.get
        nets = []
        for row in rows:
            key, x = row.target, row.expires_at
            if "/" in key:
                nets.append(row)
            elif x > get(key, 0.0):
                ahead[key] = x
        return nets

    def catch_up(self, targets: Iterable[str]) -> None:
        """After the index took bans sent ahead (queue_ahead): queue every
        one of ``targets`` whose kernel element is not the index's latest
        expiry (refused by the kernel, a table rebuilt meanwhile, a ban of
        the same address decided here since)."""
        expiry_of, kernel, ahead = self._index.expiry_lookup(), self._kernel.get, self._ahead
        for key in targets:
            if kernel(key) != expiry_of(key) and key not in ahead:
                self.queue_add(key)

    def queue_remove(self, key: str) -> None:
        if "/" in key:
            self._nets_dirty = True
            return
        self._pending.discard(key)
        self._deferred.discard(key)
        self._deferred_remove.discard(key)
        self._pending_remove.add(key)

    def expired(self, targets: list[str], nets: bool, now: float) -> None:
        """Forget elements of bans whose time is up (the kernel expired its own)."""
        for key in targets:
            self._kernel.pop(key, None)
            self._backoff.pop(key, None)
        if nets:
            # The kernel's cover pieces expired with them; forget those too.
            for el in [e for e, x in self._kernel.items() if "/" in e and x <= now]:
                del self._kernel[el]
            self._nets_dirty = True
            self.schedule_flush()

    def _ready(self) -> bool:
        return bool(self._pending or self._pending_remove or self._nets_dirty or self._ahead)

    def schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            try:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:
                self.flush_now()

    # -- flushing --------------------------------------------------------------

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
                adds, removes, nets, ahead = self._take_pending()
                self._inflight = len(adds) + len(removes) + len(ahead) + int(nets)
                try:
                    with paused_gc():  # a new node plans 20k elements at a time
                        batch = self._plan(adds, removes, nets, ahead)
                    refused = await asyncio.to_thread(send, self.table, batch)
                    with paused_gc():
                        self._settle(batch, refused)
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
        self.arm_wake()

    def flush_now(self) -> bool:
        """Apply pending changes synchronously (outside an event loop)."""
        batch = self._plan(*self._take_pending())
        return self._settle(batch, send(self.table, batch))

    def _take_pending(self) -> tuple[set[str], set[str], bool, dict[str, float]]:
        adds, removes, nets = self._pending, self._pending_remove, self._nets_dirty
        ahead = self._ahead
        self._pending, self._pending_remove, self._nets_dirty = set(), set(), False
        self._ahead = {}
        return adds, removes, nets, ahead

    def _waiting(self, element: str, mono: float) -> bool:
        b = self._backoff.get(element)
        return b is not None and b[1] > mono

    def _plan(self, adds: set[str], removes: set[str], nets: bool,
              ahead: dict[str, float] | None = None) -> Batch:
        now = self._now()
        batch = Batch(adds, removes, self._monotonic())
        mono = batch.mono
        # Names bound once: a new node's listing plans 100k adds in one pass.
        expiry_of, backoff, kernel = self._index.expiry_lookup(), self._backoff, self._kernel
        planned, new, refresh = batch.planned, batch.new, batch.refresh
        if ahead:
            for key, expiry in ahead.items():
                held = expiry_of(key)
                if held is not None and held > expiry:
                    expiry = held
                if expiry <= now or (backoff and self._waiting(key, mono)):
                    continue  # (catch_up queues it again if it is still due)
                planned[key] = expiry
                (refresh if key in kernel else new).append(_new(Element, (key, expiry - now)))
        for key in adds:
            if ahead and key in ahead:
                continue  # planned above, with the latest expiry
            expiry = expiry_of(key) or 0.0
            if expiry <= now:
                backoff.pop(key, None)
                continue
            if backoff and self._waiting(key, mono):
                self._deferred.add(key)
                continue
            planned[key] = expiry
            # tuple.__new__: a new node plans 100k (Element's __new__ is a Python call)
            (refresh if key in kernel else new).append(_new(Element, (key, expiry - now)))
        for key in removes:
            if self._waiting(key, mono):
                self._deferred_remove.add(key)
            else:
                batch.gone.append(key)
        if nets:
            want = self._index.net_elements(now)
            have = {e: x for e, x in self._kernel.items() if "/" in e}
            batch.gone += [piece for piece in have if piece not in want]
            for piece in [e for e in self._backoff if "/" in e and e not in want]:
                del self._backoff[piece]  # no longer wanted: nothing to retry
            for piece, x in want.items():
                if self._waiting(piece, mono):
                    continue  # _wake marks the nets again when its back-off ends
                if piece not in have:
                    batch.new.append(Element(piece, x - now))
                    batch.planned[piece] = x
                elif have[piece] != x:
                    batch.refresh.append(Element(piece, x - now))
                    batch.planned[piece] = x
                else:
                    self._backoff.pop(piece, None)  # in the kernel as wanted
        return batch

    def _settle(self, batch: Batch, failed: Refused) -> bool:
        """Event loop: record what the kernel took, and back off what it refused."""
        refused = {k for k, _ in failed}
        for key in batch.gone:
            if key not in refused:
                self._kernel.pop(key, None)
                self._backoff.pop(key, None)
        done = self._clock()
        taken = ({k: x for k, x in batch.planned.items() if k not in refused} if refused
                 else batch.planned)
        self._kernel.update(taken)
        # Most passes (a new node's 100k peers' bans) have neither.
        if self._backoff:
            for key in taken:
                self._backoff.pop(key, None)
        if self._decided_at:
            for key in taken:
                decided = self._decided_at.pop(key, None)
                if decided is not None:
                    for cb in self.on_applied:
                        cb(max(0.0, done - decided))
        if failed:
            self.stats.kernel_errors += 1
            log.error("kernel_update_failed", error=self._why_refused(failed),
                      failed=len(refused), adds=len(batch.new) + len(batch.refresh),
                      removes=len(batch.gone), examples=sorted(refused)[:5])
            for key in refused:
                self._back_off(key, batch.mono)
                if "/" in key:
                    continue  # net pieces are derived again when _wake marks the nets
                if key in batch.removes:
                    if not self._index.has_target(key):
                        self._deferred_remove.add(key)
                else:
                    self._deferred.add(key)
        return not failed

    def _back_off(self, key: str, mono: float) -> None:
        delay = min(max(self._backoff.get(key, (0.0, 0.0))[0] * 2, RETRY_FIRST), RETRY_MAX)
        self._backoff[key] = (delay, mono + delay)

    def _why_refused(self, failed: Refused) -> str:
        """Each distinct reason the kernel gave, in words (remembered for the control API)."""
        why = "; ".join(dict.fromkeys(self.table.refusal_text(k, e) for k, e in failed))[:500]
        self.last_kernel_error = why
        return why

    # -- retries ---------------------------------------------------------------

    def arm_wake(self) -> None:
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
            self.schedule_flush()
        else:
            self.arm_wake()

    # -- the whole table -------------------------------------------------------

    async def is_intact(self) -> bool:
        """The table's health check (worker thread). Raises NftError."""
        return await asyncio.to_thread(self.table.is_intact)

    async def rebuild(self) -> None:
        """Recreate the table with every ban in force (someone deleted or flushed it)."""
        async with self._lock:
            now = self._now()
            want = self._plan_all(now)
            try:
                result = await asyncio.to_thread(send_all, self.table, want, now)
            except NftError as exc:
                self.stats.kernel_errors += 1
                log.error("table_restore_failed", error=str(exc)[:500])
                return
            self._settle_all(want, result)
            self.stats.table_restores += 1
            log.info("table_restored", table=self.table.table, bans=len(self._kernel))
        self.arm_wake()

    def apply_all(self, now: float) -> None:
        """rebuild() outside the event loop (the restore at start, before
        anything else runs). Raises NftError only if not even an empty table
        can be made."""
        want = self._plan_all(now)
        self._settle_all(want, send_all(self.table, want, now))

    def _plan_all(self, now: float) -> dict[str, float]:
        want = self._index.address_expiries(now)
        want.update(self._index.net_elements(now))
        self._pending.clear()
        self._pending_remove.clear()
        self._deferred.clear()
        self._deferred_remove.clear()
        self._nets_dirty = False
        self._kernel = {}
        return want

    def _settle_all(self, want: dict[str, float], result: Rebuilt) -> None:
        if result.first_error is None:
            self._kernel = want
            self._backoff.clear()
            return
        log.error("kernel_refused_bans", error=str(result.first_error)[:500], bans=len(want),
                  note="isolating the refused ones")
        refused = {k for k, _ in result.refused}
        mono = self._monotonic()
        for k, x in want.items():
            if k in refused:
                self._back_off(k, mono)
                if "/" in k:
                    self._nets_dirty = True
                else:
                    self._deferred.add(k)
            else:
                self._kernel[k] = x
                self._backoff.pop(k, None)
        if refused:
            self.stats.kernel_errors += 1
            log.error("bans_refused_by_kernel", error=self._why_refused(result.refused),
                      count=len(refused), examples=sorted(refused)[:5])
