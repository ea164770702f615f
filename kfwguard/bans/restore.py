"""What to take from the kernel at start, when the store cannot be trusted
to know every ban the kernel holds.

The kernel is what protects, so a start never drops one of its bans because
the state file says less:

- no store, an unreadable one, or an empty one while the kernel holds bans
  (a zero-length or replaced file): every kernel element is adopted;
- a store whose ``.saved`` marker is missing (the last run stopped or
  crashed while the disk refused writes, so changes it decided never reached
  the file; see kfwguard.bans.journal): the store's bans are restored, and
  the kernel elements it does not know, or knows with an earlier expiry,
  are adopted too.

Why adopt rather than spill the journal to another filesystem: a spill file
is written at stop, so a crash (kill -9, OOM) while the disk is full still
loses it, and it needs a second writable place that may be just as full;
the kernel holds exactly the bans that protect the node, survives any end of
the process, and is read once, at a start that follows trouble (a clean
history keeps the marker, and the start does not list the kernel: listing
200k elements costs seconds).

An adopted ban's origin is unknown: it is recorded under the jail
``restored`` with the reason "kept from the kernel", for the time the kernel
had left (a day for an element without a timeout, put there by hand). A
CIDR ban comes back as the cover pieces the kernel held. What adoption
cannot bring back is an unban decided while the disk was full: the store's
older row wins and the ban is in force again until its expiry (the safe
side; ``kfwguard unban`` lifts it again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from kfwguard.bans.enforcer import KernelEnforcer
from kfwguard.bans.index import BanIndex
from kfwguard.bans.journal import StoreJournal
from kfwguard.bans.model import ADOPTED_JAIL, valid_target_text
from kfwguard.firewall.bantable import BanTable
from kfwguard.firewall.nft import NftError
from kfwguard.store import BanRow, Store, StoreError

log = structlog.get_logger("kfwguard.bans")

# A kernel element without a timeout (put there by hand) is adopted for a day.
ADOPTED_NO_TIMEOUT = 86400.0
# Kernel timeouts are whole milliseconds, at least one second: an element may
# outlive its stored ban by that much without being a ban the store lacks.
SLACK = 2.0
REASON = "kept from the kernel"


def adopt_all(live: dict[str, float], now: float) -> list[BanRow]:
    """Every kernel element (text -> seconds left) as a ban of unknown origin."""
    rows = []
    for target, left in live.items():
        if not valid_target_text(target):
            continue
        expires = now + (left if left != float("inf") else ADOPTED_NO_TIMEOUT)
        rows.append(BanRow(target, ADOPTED_JAIL, REASON, now, expires, 1))
    return rows


def adopt_missing(live: dict[str, float], known: dict[str, float], now: float) -> list[BanRow]:
    """The kernel elements ``known`` (element -> expiry, as the stored bans
    would put them in the kernel) does not hold at least as long, as bans of
    unknown origin. Elements with less than SLACK left are let go."""
    out = []
    for row in adopt_all(live, now):
        if row.expires_at - now <= SLACK:
            continue
        have = known.get(row.target)
        if have is None or have + SLACK < row.expires_at:
            out.append(row)
    return out


@dataclass(frozen=True, slots=True)
class Start:
    """The parts of a BanManager a start fills."""
    store: Store | None
    table: BanTable
    index: BanIndex
    journal: StoreJournal
    kernel: KernelEnforcer
    # a simulated ban whose jail is configured and no longer in observe mode
    enforceable: Callable[[BanRow], bool]
    # a stored CIDR ban still allowed (the protected networks may have changed)
    net_ok: Callable[[BanRow], bool]


def from_store(s: Start, now: float) -> int:
    """The stored bans in force into the index and the kernel, with what the
    kernel holds beyond them when the store may have missed changes; every
    kernel ban adopted instead when the store is unreadable, or empty while
    the kernel is not. Returns the number of stored bans."""
    if s.store is None:
        return from_kernel(s, now)
    try:
        s.store.purge_expired(now)
        expiries = s.store.active_expiries(now)
        rows = s.store.active_bans(now)
    except StoreError as exc:
        s.journal.failed(exc)
        log.error("stored_bans_unreadable", error=str(exc),
                  note="keeping the bans the kernel holds")
        return from_kernel(s, now)
    live = kernel_bans(s.table) if not s.store.was_saved or not expiries else {}
    if not expiries and live:
        log.warning("store_empty_kernel_not", path=str(s.store.path),
                    note="keeping the bans the kernel holds")
        return from_kernel(s, now)
    enforce: list[BanRow] = []
    for r in rows:
        if not valid_target_text(r.target):
            continue
        if r.simulated:
            if not s.enforceable(r):
                s.index.simulate(r)
                continue
            r = r._replace(simulated=False)  # dry_run was turned off while we were down
            enforce.append(r)
        if "/" not in r.target or s.net_ok(r):
            s.index.add(r)
    if enforce:
        s.journal.save(enforce)
        log.info("simulated_bans_enforced", count=len(enforce),
                 jails=sorted({r.jail for r in enforce}))
    if live:
        known = s.index.address_expiries(now)
        known.update(s.index.net_elements(now))
        missed = adopt_missing(live, known, now)
        if missed:
            s.journal.save(missed)
            for r in missed:
                s.index.add(r)
            log.warning("bans_adopted_from_kernel", count=len(missed),
                        note="the store missed them (its disk was full)")
    s.kernel.apply_all(now)
    s.journal.sync()  # nothing left unsaved: the store is whole again
    log.info("bans_restored", count=len(rows), targets=s.index.targets)
    return len(rows)


def from_kernel(s: Start, now: float) -> int:
    """Every kernel ban adopted (stored when the store works), and the table
    made whole. Returns their number."""
    rows = adopt_all(kernel_bans(s.table), now)
    s.journal.save(rows)  # journalled if the store refuses: written when it can
    for r in rows:
        s.index.add(r)
    s.kernel.apply_all(now)
    log.warning("bans_adopted_from_kernel", count=len(rows))
    return len(rows)


def kernel_bans(table: BanTable) -> dict[str, float]:
    """The kernel's ban elements (text -> seconds left); none if unreadable."""
    try:
        return table.list() if table.exists() else {}
    except NftError as exc:
        log.error("kernel_bans_unreadable", error=str(exc))
        return {}
