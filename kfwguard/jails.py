"""Jails: count failures per address in a sliding window (by log time) and decide bans."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kfwguard.addresses import IgnoreList, IPAddress
from kfwguard.config import JailConfig
from kfwguard.model import BanRequest, Match

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
        self._failures: OrderedDict[IPAddress, list[float]] = OrderedDict()
        self.stats = JailStats()

    def __len__(self) -> int:
        return len(self._failures)

    def failures_of(self, host: IPAddress) -> int:
        return len(self._failures.get(host, ()))

    def add(self, match: Match, now: float | None = None) -> BanRequest | None:
        """Record one failure; return a ban request when the address reaches maxretry."""
        now = self._clock() if now is None else now
        host = match.host
        self.stats.matches += 1
        if host in self.ignore:
            self.stats.ignored += 1
            return None
        t = match.time if match.time <= now + _FUTURE_SLACK else now
        findtime = self.cfg.findtime
        if t < now - findtime:
            # Old lines (a resumed or replayed log) never ban anyone.
            self.stats.stale += 1
            return None
        since = self._banned_since(host, self.name)
        if since is not None and t <= since:
            self.stats.already_banned += 1
            return None
        times = self._failures.get(host)
        if times is None:
            times = []
            self._failures[host] = times
            if len(self._failures) > self.max_entries:
                self._failures.popitem(last=False)
                self.stats.evicted += 1
        else:
            self._failures.move_to_end(host)
        times.append(t)
        cutoff = t - findtime
        if times[0] < cutoff:
            times[:] = [x for x in times if x >= cutoff]
        if len(times) < self.cfg.maxretry:
            return None
        del self._failures[host]
        self.stats.bans += 1
        return BanRequest(
            target=host,
            jail=self.name,
            duration=self.cfg.bantime,
            reason=f"{len(times)} failures in {int(findtime)}s ({match.filter}/{match.rule})",
            decided_at=now,
        )

    def forget(self, host: IPAddress) -> None:
        self._failures.pop(host, None)
