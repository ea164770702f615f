"""The bans in force, as data: per (target, jail) the row, per target its
jails and latest expiry, and the disjoint cover of the CIDR bans.

Pure: no I/O, no asyncio, no clock (every time is passed in), so it is
tested on its own. BanManager is the only writer; the kernel sync reads it
on the event loop to plan what the kernel must hold.

Bans decided in observe mode (``dry_run``) are kept apart (``simulated``):
they are listed, expired and lifted like the others, but nothing of them is
in the per-target expiries or the cover, so nothing of them reaches the
kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from kfwguard.firewall.cover import CoverIndex
from kfwguard.store import BanRow

Key = tuple[str, str]  # (target text, jail)


class BanIndex:
    def __init__(self) -> None:
        self._rows: dict[Key, BanRow] = {}
        # No enforced ban expires before this (a lower bound: removals leave it):
        # expired() looks at 100k rows only when one may be due.
        self._due = math.inf
        self._simulated: dict[Key, BanRow] = {}
        self._by_target: dict[str, set[str]] = {}
        # target text -> latest expiry over its jails
        self._expiry: dict[str, float] = {}
        # the disjoint cover of the CIDR targets, kept up to date as their expiries change
        self._cover = CoverIndex()

    # -- enforced bans ---------------------------------------------------------

    def get(self, key: Key) -> BanRow | None:
        return self._rows.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._rows

    def rows(self) -> Iterable[BanRow]:
        return self._rows.values()

    def has_target(self, target: str) -> bool:
        """True if some jail still bans ``target``."""
        return target in self._by_target

    def jails_of(self, target: str) -> set[str]:
        return set(self._by_target.get(target, ()))

    @property
    def targets(self) -> int:
        return len(self._by_target)

    def expiry(self, target: str) -> float | None:
        """The latest expiry of ``target`` over its jails (None: not banned)."""
        return self._expiry.get(target)

    def expiry_lookup(self) -> Callable[[str], float | None]:
        """expiry() as one bound lookup, for a pass over many targets."""
        return self._expiry.get

    def address_expiries(self, now: float) -> dict[str, float]:
        """Single-address targets in force at ``now`` -> their latest expiry."""
        return {k: x for k, x in self._expiry.items() if x > now and "/" not in k}

    def net_elements(self, now: float) -> dict[str, float]:
        """The cover of every net ban, then the pieces still in force: the same
        as the cover of the nets in force (a piece takes the latest expiry of
        the nets over it; a net that outlives an expired one around it is cut
        out of it, as if that one were gone)."""
        return self._cover.elements(after=now)

    def rows_of(self, target: str, now: float) -> list[BanRow]:
        """Every enforced ban of ``target`` in force at ``now``, over all jails."""
        return [r for j in self._by_target.get(target, ())
                if (r := self._rows[(target, j)]).expires_at > now]

    def expired(self, now: float) -> list[BanRow]:
        """The enforced bans whose time is up at ``now`` (a scan only when one
        may be: the daemon asks every two seconds)."""
        if now < self._due:
            return []
        out: list[BanRow] = []
        due = math.inf
        for r in self._rows.values():
            x = r.expires_at
            if x < due:
                due = x  # the expired ones too: they are due until removed
            if x <= now:
                out.append(r)
        self._due = due
        return out

    def add(self, row: BanRow) -> None:
        """Put ``row`` in force (replacing the ban of the same target and jail)."""
        key = row.target
        old = self._rows.get((key, row.jail))
        self._rows[(key, row.jail)] = row
        if row.expires_at < self._due:
            self._due = row.expires_at
        jails = self._by_target.get(key)
        if jails is None:
            self._by_target[key] = {row.jail}
            self._expiry[key] = row.expires_at
            if "/" in key:
                self._cover.set(key, row.expires_at)
            return
        jails.add(row.jail)
        if old is not None and old.expires_at > row.expires_at:
            self._recompute_expiry(key)  # a re-ban with a shorter time
        elif row.expires_at > self._expiry.get(key, 0.0):
            self._expiry[key] = row.expires_at
            if "/" in key:
                self._cover.set(key, row.expires_at)

    def add_many(self, rows: Iterable[BanRow]) -> None:
        """add() of each row; a target not banned yet (a new node's listing:
        nearly all) is put in without add()'s call and checks."""
        by_target, expiry, all_rows, add = self._by_target, self._expiry, self._rows, self.add
        due = math.inf
        for row in rows:
            key = row.target
            if key in by_target or "/" in key:
                add(row)
                continue
            all_rows[(key, row.jail)] = row
            by_target[key] = {row.jail}
            x = expiry[key] = row.expires_at
            if x < due:
                due = x
        if due < self._due:
            self._due = due

    def remove(self, row: BanRow) -> None:
        """Lift the ban of ``row``'s target and jail."""
        self._rows.pop((row.target, row.jail), None)
        jails = self._by_target.get(row.target)
        if jails is not None:
            jails.discard(row.jail)
            if not jails:
                del self._by_target[row.target]
                self._expiry.pop(row.target, None)
                self._cover.discard(row.target)
                return
        self._recompute_expiry(row.target)

    def _recompute_expiry(self, key: str) -> None:
        jails = self._by_target.get(key, ())
        if jails:
            self._expiry[key] = max(self._rows[(key, j)].expires_at for j in jails)
        else:
            self._expiry.pop(key, None)
        if "/" in key:
            expiry = self._expiry.get(key)
            if expiry is None:
                self._cover.discard(key)
            else:
                self._cover.set(key, expiry)

    # -- simulated bans (observe mode) ----------------------------------------

    def simulate(self, row: BanRow) -> None:
        self._simulated[(row.target, row.jail)] = row

    def unsimulate(self, key: Key) -> BanRow | None:
        return self._simulated.pop(key, None)

    def simulated(self) -> Iterable[BanRow]:
        return self._simulated.values()

    def simulated_of(self, target: str, jail: str | None = None) -> list[BanRow]:
        return [r for k, r in self._simulated.items()
                if k[0] == target and (jail is None or k[1] == jail)]

    # -- both ------------------------------------------------------------------

    def active(self, now: float) -> list[BanRow]:
        """Bans in force at ``now``, the simulated ones included."""
        return ([r for r in self._rows.values() if r.expires_at > now]
                + [r for r in self._simulated.values() if r.expires_at > now])

    def any_row(self, key: Key) -> BanRow | None:
        """The enforced or simulated ban of (target, jail)."""
        return self._rows.get(key) or self._simulated.get(key)

