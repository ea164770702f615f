"""A jail: counts failures per address in a sliding window (by log time) and decides bans."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kfwguard.addresses import IgnoreList, IPAddress, IPNetwork, host_key, key_host
from kfwguard.config import JailConfig
from kfwguard.jails.windows import NativeWindows, PyWindows, resolve
from kfwguard.model import BanRequest, Match

if TYPE_CHECKING:
    from kfwguard.matching import _native
    from kfwguard.matching.engine import Filter, Hit

_V6_FLAG = 1 << 128  # addresses.host_key's mark of an IPv6 key

# Clock skew and year inference can put a log time slightly ahead of ours;
# beyond this, the line's time is not trusted and our clock is used instead.
_FUTURE_SLACK = 300.0


@dataclass(slots=True)
class JailStats:
    matches: int = 0
    ignored: int = 0
    stale: int = 0
    already_banned: int = 0
    bans: int = 0
    evicted: int = 0


class Jail:
    """Failure windows for one jail. Memory is bounded by ``max_entries`` addresses:
    when full, the address whose last failure is oldest is forgotten first."""

    def __init__(
        self,
        cfg: JailConfig,
        ignore: IgnoreList,
        *,
        max_entries: int = 200_000,
        banned_since: Callable[[IPAddress | IPNetwork, str], float | None] = lambda a, j: None,
        clock: Callable[[], float] = time.time,
        native: bool = True,
        ipv6_prefix: int = 64,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._ignore = ignore  # read-only: the C++ windows hold a copy
        self.max_entries = max_entries
        self._banned_since = banned_since
        self._clock = clock
        # IPv6 failures count (and bans fall) per this prefix: an attacker
        # rotating through one /64 gets maxretry tries in all, not per address.
        self.ipv6_prefix = cfg.ipv6_prefix if cfg.ipv6_prefix is not None else ipv6_prefix
        self._v6_host_bits = 128 - self.ipv6_prefix
        self._ranges = ignore.key_ranges()
        self._near_ignored: dict[int, bool] = {}
        # Keyed by host_key: ipaddress objects hash in Python code. The C++
        # windows let a filter's C++ scanner count a block's failures without
        # Python (add_lines); ``native=False`` keeps them in Python.
        self._windows: PyWindows | _native.Windows = (
            NativeWindows(max_entries, cfg.findtime, cfg.maxretry, resolve, self._ranges,
                          self.ipv6_prefix)
            if native and NativeWindows is not None
            else PyWindows(max_entries, cfg.findtime, cfg.maxretry))
        self.stats = JailStats()

    @property
    def ignore(self) -> IgnoreList:
        return self._ignore

    @property
    def native(self) -> bool:
        """Whether the failure windows are the C++ ones (``add_lines`` in one pass)."""
        return not isinstance(self._windows, PyWindows)

    def __len__(self) -> int:
        return len(self._windows)

    def failures_of(self, host: IPAddress) -> int:
        return self._windows.count(self._aggregate(host_key(host)))

    def _aggregate(self, key: int) -> int:
        """The key ``key``'s failures count under: for IPv6, its ipv6_prefix network
        (the network's first address), unless that network reaches an ignored
        range (then the address itself, so a protected neighbour is never inside
        a ban). The C++ windows do the same in ``track`` (_native.cpp aggregate)."""
        bits = self._v6_host_bits
        if key < _V6_FLAG or not bits:
            return key
        first = key >> bits << bits
        near = self._near_ignored.get(first)
        if near is None:
            last = first | ((1 << bits) - 1)
            near = any(lo <= last and first <= hi for lo, hi in self._ranges)
            if len(self._near_ignored) >= 65536:
                self._near_ignored.clear()
            self._near_ignored[first] = near
        return key if near else first

    def _target(self, key: int) -> IPAddress | IPNetwork:
        """What a window at ``key`` bans: the address, or the IPv6 network it stands for."""
        host = key_host(key)
        if key >= _V6_FLAG and self._v6_host_bits and self._aggregate(key) == key \
                and not self._near_ignored.get(key, True):
            return ipaddress.IPv6Network((host, self.ipv6_prefix))
        return host

    def add(self, match: Match, now: float | None = None) -> BanRequest | None:
        """Record one failure; return a ban request when the address reaches maxretry."""
        now = self._clock() if now is None else now
        return self.add_failure(
            match.host, host_key(match.host), match.time, now, match.filter, match.rule
        )

    def add_failure(
        self, host: IPAddress, key: int, t: float, now: float, filter: str, rule: str
    ) -> BanRequest | None:
        """``add`` for one failure given as its parts, ``key`` = host_key(host)."""
        requests, _ = self.add_hits(((0, "match", rule, host, key, t),), now, filter)
        return requests[0] if requests else None

    def add_hits(
        self, hits: Iterable[Hit], now: float, filter: str
    ) -> tuple[list[BanRequest], dict[str | None, int]]:
        """Record the failures among ``filter``'s hits (``Filter.scan_lines``: hits
        without a host are not failures). Returns the ban requests they trigger
        and how many failures each rule found. The daemon's hot path: one call
        per batch, the common case (below maxretry) inline."""
        stats = self.stats
        windows = self._windows
        add = windows.add
        ignored = self._ignore.has_key
        oldest = now - self.cfg.findtime
        latest = now + _FUTURE_SLACK
        requests: list[BanRequest] = []
        counts: dict[str | None, int] = {}
        for _, _status, rule, host, key, t in hits:
            if host is None:
                continue  # bad-host or ignored by the filter
            counts[rule] = counts.get(rule, 0) + 1
            if ignored(key):
                stats.ignored += 1
                continue
            if t > latest:
                t = now
            if t < oldest:
                # Old lines (a resumed or replayed log) never ban anyone.
                stats.stale += 1
                continue
            if key >= _V6_FLAG:
                key = self._aggregate(key)
            times = add(key, t)
            if times is not None:
                target = self._target(key) if key >= _V6_FLAG else host
                request, kept = self._decide(target, times, now, filter, rule or "")
                windows.keep(key, kept)
                if request is not None:
                    requests.append(request)
        stats.matches += sum(counts.values())
        stats.evicted = windows.evicted
        return requests, counts

    def add_lines(self, flt: Filter, data: bytes, now: float,
                  sessions: _native.Sessions | None = None,
                  ) -> tuple[list[BanRequest], dict[str | None, int]] | None:
        """``add_hits(flt.scan_lines(data, now), now, flt.name)`` for a block of raw
        lines, in one C++ pass: the block's failures go from the scan into the
        windows, and Python runs only for a host text not seen lately, a new
        stamp, and an address at maxretry. The daemon's hot path. A paired
        filter's hits are settled in ``sessions`` (C++, matching.sessions.sessions_for)
        on the way, as ``Sessions.settle`` would settle them before ``add_hits``.

        None, with nothing counted, where that pass cannot take the block
        (Python windows, a filter without the C++ scanner, a paired filter
        without C++ sessions, a block the per-record path must read): the
        caller then uses ``add_hits``."""
        windows = self._windows
        if NativeWindows is not None and isinstance(windows, NativeWindows):
            requests: list[BanRequest] = []
            filter = flt.name
            names = flt.rules

            def on_full(key: int, rule: int, times: list[float]) -> list[float] | None:
                request, kept = self._decide(self._target(key), times, now, filter, names[rule])
                if request is not None:
                    requests.append(request)
                return kept

            found = flt.track_lines(data, now, windows, now - self.cfg.findtime,
                                    now + _FUTURE_SLACK, on_full, sessions)
            if found is not None:
                per_rule, ignored, stale = found
                stats = self.stats
                stats.ignored += ignored
                stats.stale += stale
                stats.matches += sum(per_rule.values())
                stats.evicted = windows.evicted
                return requests, per_rule
        return None

    def _decide(self, host: IPAddress | IPNetwork, times: list[float], now: float,
                filter: str, rule: str) -> tuple[BanRequest | None, list[float] | None]:
        """``times`` reached maxretry: a ban request, unless a ban in force already
        covers those failures (a look-up by text in the ban table, so only now).
        Also the times the window keeps (None: forget the address)."""
        since = self._banned_since(host, self.name)
        if since is not None and times[0] <= since:
            kept = [x for x in times if x > since]
            self.stats.already_banned += len(times) - len(kept)
            if len(kept) < self.cfg.maxretry:
                return None, kept or None
            times = kept
        self.stats.bans += 1
        return BanRequest(
            target=host,
            jail=self.name,
            duration=self.cfg.bantime,
            reason=f"{len(times)} failures in {int(self.cfg.findtime)}s ({filter}/{rule})",
            decided_at=now,
        ), None
