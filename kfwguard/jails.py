"""Jails: count failures per address in a sliding window (by log time) and decide bans."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kfwguard.addresses import IgnoreList, IPAddress, host_key
from kfwguard.config import JailConfig
from kfwguard.model import BanRequest, Match

# A filter's hit (matching.engine.Hit): (line end, status, rule, host, host_key, time).
Failure = tuple[int, str, str | None, IPAddress | None, int, float]

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


def ban_duration(cfg: JailConfig, offence: int) -> float:
    """Ban length for the ``offence``-th ban of an address (1 = first)."""
    if cfg.bantime_increment is None or offence <= 1:
        return cfg.bantime
    inc = cfg.bantime_increment
    grown = cfg.bantime * inc.factor ** min(offence - 1, 64)
    return max(cfg.bantime, min(grown, inc.max))


class Jail:
    """Failure windows for one jail. Memory is bounded by ``max_entries`` addresses:
    when full, the address whose last failure is oldest is forgotten first."""

    def __init__(
        self,
        cfg: JailConfig,
        ignore: IgnoreList,
        *,
        max_entries: int = 200_000,
        banned_since: Callable[[IPAddress, str], float | None] = lambda a, j: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.ignore = ignore
        self.max_entries = max_entries
        self._banned_since = banned_since
        self._clock = clock
        # Keyed by host_key: ipaddress objects hash in Python code.
        self._failures: OrderedDict[int, list[float]] = OrderedDict()
        self.stats = JailStats()

    def __len__(self) -> int:
        return len(self._failures)

    def failures_of(self, host: IPAddress) -> int:
        return len(self._failures.get(host_key(host), ()))

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
        self, hits: Iterable[Failure], now: float, filter: str
    ) -> tuple[list[BanRequest], dict[str | None, int]]:
        """Record the failures among ``filter``'s hits (``Filter.scan_lines``: hits
        without a host are not failures). Returns the ban requests they trigger
        and how many failures each rule found. The daemon's hot path: one call
        per batch, the common case (below maxretry) inline."""
        stats = self.stats
        failures = self._failures
        get = failures.get
        to_end = failures.move_to_end
        ignored = self.ignore.has_key
        findtime = self.cfg.findtime
        maxretry = self.cfg.maxretry
        oldest = now - findtime
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
            times = get(key)
            if times is None:
                times = failures[key] = [t]
                if len(failures) > self.max_entries:
                    failures.popitem(last=False)
                    stats.evicted += 1
            else:
                to_end(key)
                times.append(t)
                if times[0] < t - findtime:
                    times[:] = [x for x in times if x >= t - findtime]
            if len(times) >= maxretry:
                request = self._decide(host, key, times, now, filter, rule or "")
                if request is not None:
                    requests.append(request)
        stats.matches += sum(counts.values())
        return requests, counts

    def _decide(self, host: IPAddress, key: int, times: list[float], now: float,
                filter: str, rule: str) -> BanRequest | None:
        """``times`` reached maxretry: a ban request, unless a ban in force already
        covers those failures (a look-up by text in the ban table, so only now)."""
        since = self._banned_since(host, self.name)
        if since is not None and times[0] <= since:
            kept = [x for x in times if x > since]
            self.stats.already_banned += len(times) - len(kept)
            if not kept:
                del self._failures[key]
                return None
            times[:] = kept
            if len(times) < self.cfg.maxretry:
                return None
        del self._failures[key]
        self.stats.bans += 1
        return BanRequest(
            target=host,
            jail=self.name,
            duration=self.cfg.bantime,
            reason=f"{len(times)} failures in {int(self.cfg.findtime)}s ({filter}/{rule})",
            decided_at=now,
        )
