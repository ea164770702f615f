"""Event times from log stamps: syslog, klog, RFC 3339 (kfwguard.timestamps) and
epoch numbers.

Stamps repeat for every line logged within the same second, so each parser
caches the whole-second part and only adds the fraction. No dateutil: every
format here is fixed-width or nearly so and string slicing is enough.

syslog and klog stamps carry no year and are in the node's local time. The
year is the latest of the year of ``now`` (the injected clock, not the wall
clock), the year after and the year before that does not put the event more
than a day in the future: a December line read in January belongs to last
year, and a ``Jan  1 00:00:05`` line read at ``Dec 31 23:59:50`` (the writer's
clock a little ahead of ours, or the line stamped as the year turned) to the
next one.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Final

from kfwguard.timestamps import parse_rfc3339

_MONTHS: Final = {
    "Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
    "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}
FUTURE_SLACK: Final = 86400.0
_CACHE_MAX: Final = 4096

# (month, day, hh, mm, year) -> epoch of that local minute, or None if invalid
_local_cache: dict[tuple[int, int, int, int, int], float | None] = {}
# Year boundaries of the last ``now`` seen, so the common case needs no localtime().
_year_span: list[float] = [0.0, -1.0, 0.0]  # start, end, year


def _digits(text: str) -> bool:
    # str.isdigit() accepts non-ASCII digits that int() would also take; refuse them.
    return text.isascii() and text.isdigit()


def _year_of(now: float) -> int:
    start, end, year = _year_span
    if start <= now < end:
        return int(year)
    y = time.localtime(now).tm_year
    _year_span[0] = time.mktime((y, 1, 1, 0, 0, 0, 0, 0, -1))
    _year_span[1] = time.mktime((y + 1, 1, 1, 0, 0, 0, 0, 0, -1))
    _year_span[2] = float(y)
    return y


def _local(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if ss > 60:  # 60 is a leap second, which mktime rolls into the next minute
        return None
    # Per minute, not per second: a busy log has a new stamp every second, and
    # UTC offsets change only on whole minutes, so the second is just added.
    key = (month, day, hh, mm, year)
    try:
        minute = _local_cache[key]
    except KeyError:
        try:
            # datetime() validates (Feb 30, hour 25 …); mktime would silently roll over.
            datetime(year, month, day, hh, mm)
            minute = time.mktime((year, month, day, hh, mm, 0, 0, 0, -1))
        except (ValueError, OverflowError):
            minute = None
        if len(_local_cache) >= _CACHE_MAX:
            _local_cache.clear()
        _local_cache[key] = minute
    return None if minute is None else minute + ss


def _fraction(text: str) -> float | None:
    """``.123456`` → 0.123456; empty → 0.0; anything else → None."""
    if not text:
        return 0.0
    if text[0] not in ".," or not _digits(text[1:]) or len(text) > 16:
        return None
    return int(text[1:]) / 10.0 ** (len(text) - 1)


# The minute of a stamp ("Nov 26 04:57" or "1126 04:57") -> (epoch of that local
# minute in the year after now's, now's year, a year earlier); valid for the
# year in _pair_year only. A busy log has a new stamp every second: per
# minute, a new second costs a look-up and an addition. syslog keys start
# with a letter, klog keys with a digit, so they share one dict.
_pair_cache: dict[str, tuple[float | None, float | None, float | None]] = {}
_pair_year: list[int] = [0]


def _no_year(key: str, now: float) -> float | None:
    year = _year_of(now)
    if _pair_year[0] != year:
        _pair_cache.clear()
        _pair_year[0] = year
    ss = key[-2:]
    if key[-3:-2] != ":" or not _digits(ss):
        return None
    sec = int(ss)
    if sec > 60:  # 60 is a leap second
        return None
    minute = key[:-3]
    pair = _pair_cache.get(minute)
    if pair is None:
        pair = _pair(minute + ":00", year)
        if len(_pair_cache) >= _CACHE_MAX:
            _pair_cache.clear()
        _pair_cache[minute] = pair
    # The latest year that does not put the line more than FUTURE_SLACK ahead.
    limit = now + FUTURE_SLACK
    for minute_t in pair:
        if minute_t is not None and minute_t + sec <= limit:
            return minute_t + sec
    return None


def _pair(key: str, year: int) -> tuple[float | None, float | None, float | None]:
    """Parse ``Nov 26 04:57:45`` or ``1126 04:57:45`` into local epochs for the
    year after ``year``, ``year`` and the year before."""
    if key[:1].isdigit():  # klog: mmdd hh:mm:ss
        if len(key) != 13 or key[4] != " " or key[7] != ":" or key[10] != ":":
            return None, None, None
        mo, day_text, hh, mm, ss = key[:2], key[2:4], key[5:7], key[8:10], key[11:13]
        if not _digits(mo):
            return None, None, None
        month: int | None = int(mo)
    else:
        if len(key) != 15 or key[3] != " " or key[9] != ":" or key[12] != ":":
            return None, None, None
        month = _MONTHS.get(key[:3])
        day_text, hh, mm, ss = key[4:6].lstrip(" "), key[7:9], key[10:12], key[13:15]
    if month is None or not (_digits(day_text) and _digits(hh) and _digits(mm) and _digits(ss)):
        return None, None, None
    d, h, m, sec = int(day_text), int(hh), int(mm), int(ss)
    # Feb 29 read in a common year exists only in another year, hence several.
    return (_local(year + 1, month, d, h, m, sec), _local(year, month, d, h, m, sec),
            _local(year - 1, month, d, h, m, sec))


# The last (stamp, now) parsed and its result: consecutive lines share a
# second, and the daemon passes one ``now`` per batch.
_last_syslog: list[tuple[str, float, float | None]] = [("", 0.0, None)]


def parse_syslog(stamp: str, now: float) -> float | None:
    """Epoch for a syslog stamp ``Nov 26 04:57:45[.ffffff]`` (local time, year inferred)."""
    last_stamp, last_now, last_t = _last_syslog[0]
    if stamp == last_stamp and now == last_now:
        return last_t
    t = _no_year(stamp[:15], now)
    if t is not None and len(stamp) != 15:
        frac = _fraction(stamp[15:])
        t = None if frac is None else t + frac
    _last_syslog[0] = (stamp, now, t)
    return t


def parse_klog(stamp: str, now: float) -> float | None:
    """Epoch for a klog stamp ``I1126 04:57:45.123456`` or ``1126 04:57:45.123456``."""
    if stamp[:1] in ("I", "W", "E", "F"):
        stamp = stamp[1:]
    t = _no_year(stamp[:13], now)
    if t is None:
        return None
    frac = _fraction(stamp[13:])
    return None if frac is None else t + frac


def parse_time_value(value: object) -> float | None:
    """Epoch for a JSON time value: an RFC 3339 string or a number of seconds."""
    if isinstance(value, str):
        return parse_rfc3339(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and 0 < value < 1e11:
        return float(value)
    return None
