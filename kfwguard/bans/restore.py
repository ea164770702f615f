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

from kfwguard.bans.model import ADOPTED_JAIL, valid_target_text
from kfwguard.store import BanRow

# A kernel element without a timeout (put there by hand) is adopted for a day.
ADOPTED_NO_TIMEOUT = 86400.0
# Kernel timeouts are whole milliseconds, at least one second: an element may
# outlive its stored ban by that much without being a ban the store lacks.
SLACK = 2.0
REASON = "kept from the kernel"


def adopted(live: dict[str, float], now: float) -> list[BanRow]:
    """Every kernel element (text -> seconds left) as a ban of unknown origin."""
    rows = []
    for target, left in live.items():
        if not valid_target_text(target):
            continue
        expires = now + (left if left != float("inf") else ADOPTED_NO_TIMEOUT)
        rows.append(BanRow(target, ADOPTED_JAIL, REASON, now, expires, 1))
    return rows


def unknown(live: dict[str, float], known: dict[str, float], now: float) -> list[BanRow]:
    """The kernel elements ``known`` (element -> expiry, as the stored bans
    would put them in the kernel) does not hold at least as long, as bans of
    unknown origin. Elements with less than SLACK left are let go."""
    out = []
    for row in adopted(live, now):
        if row.expires_at - now <= SLACK:
            continue
        have = known.get(row.target)
        if have is None or have + SLACK < row.expires_at:
            out.append(row)
    return out
