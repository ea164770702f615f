"""A jail's failure windows: per address, the times of its failures within findtime.

Decision (issue 14, item 3): the windows stay in C++ as well as here. The
daemon's hot path for a block of lines (``Jail.add_lines``) goes from the C++
block scanner straight into the C++ windows, so a failure costs no Python
object unless its address reaches maxretry; under a distributed brute force
(nearly every failure from a new address) a per-failure Python step was the
whole cost. What the C++ side holds is only the windows: ``add`` (append a
time, drop those older than findtime, report the window once it holds
maxretry times), ``keep`` (what Python decided to keep), bounded memory with
least-recently-failed eviction. Two steps of the pass sit beside them because
the pass must not return to Python per failure, and both run on data Python
computed: the ignore check is a look-up in ``IgnoreList.key_ranges()``, and
the IPv6 aggregation (``Jail._aggregate``'s twin) uses the jail's prefix and
those ranges (and each time is compared with the stale and future bounds
``Jail.add_lines`` passes in). What a jail *means* lives once, in Python (``jails/jail.py``):
which addresses are ignored (``IgnoreList``), stale and future times, what a
full window bans (an address or its IPv6 network), whether a ban in force
already covers it, and for how long (``jails/policy.py``).

``PyWindows`` is the twin for where the extension was not built (no compiler
or RE2 headers); tests/unit/test_windows.py proves both keep the same state
for the same calls.
"""

from __future__ import annotations

from collections import OrderedDict

from kfwguard.addresses import host_key, parse_host

__all__ = ["NativeWindows", "PyWindows", "resolve"]

try:  # built with the block scanner (setup.py)
    from kfwguard.matching._native import Windows as NativeWindows
except ImportError:  # no compiler or RE2 headers at install time
    NativeWindows = None  # type: ignore[assignment,misc]


class PyWindows:
    """A jail's failure windows in Python: per address (by host_key) the times of its
    failures within findtime of its latest one. For where the C++ ``Windows``
    (the daemon's choice, ``kfwguard/matching/_native.cpp``) was not built; both
    keep the same state for the same calls (tests/unit/test_windows.py)."""

    def __init__(self, max_entries: int, findtime: float, maxretry: int) -> None:
        if max_entries < 1 or maxretry < 1 or not findtime >= 0:
            raise ValueError("max_entries and maxretry >= 1, findtime >= 0")
        self._failures: OrderedDict[int, list[float]] = OrderedDict()
        self._max = max_entries
        self._findtime = findtime
        self._maxretry = maxretry
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._failures)

    def add(self, key: int, t: float) -> list[float] | None:
        """One failure of ``key`` at ``t``; its window's times once they reach maxretry."""
        failures = self._failures
        times = failures.get(key)
        if times is None:
            times = failures[key] = [t]
            if len(failures) > self._max:  # forget the least recently failed
                failures.popitem(last=False)
                self.evicted += 1
        else:
            failures.move_to_end(key)
            times.append(t)
            since = t - self._findtime
            if times[0] < since:
                times[:] = [x for x in times if x >= since]
        return list(times) if len(times) >= self._maxretry else None

    def keep(self, key: int, times: list[float] | None) -> None:
        """Replace ``key``'s window with ``times``; None or empty: forget ``key``."""
        if not times:
            self._failures.pop(key, None)
            return
        self._failures[key][:] = times

    def count(self, key: int) -> int:
        return len(self._failures.get(key, ()))

    def by_age(self) -> list[int]:
        """Least recently failed first."""
        return list(self._failures)


def resolve(text: bytes) -> int | None:
    """The key of a host text the C++ windows leave to Python (not ASCII, or an
    IPv6 form libc refuses); None when it is not exactly one address. As the
    filters' own host cache decides (textfilter.TextFilter._new_host)."""
    addr = parse_host(text.decode("utf-8", "replace"))
    return None if addr is None else host_key(addr)
