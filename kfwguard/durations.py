"""Durations as operators write them: ``30s``, ``10m``, ``1h``, ``2d``, ``1w``."""

from __future__ import annotations

import math
import re

# The longest ban kfwguard accepts anywhere (config bantime and
# bantime_increment.max, `kfwguard ban --for`, the control API's duration):
# a year. nft 1.0.6 parses element timeouts up to 99999999s (~3.2 years),
# so every accepted ban fits the kernel with room to spare.
MAX_BAN = 365 * 86400.0
# The shortest: the kernel counts timeouts in jiffies and nft in whole
# milliseconds; under a second is a typo, not a ban.
MIN_BAN = 1.0

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Return seconds for ``value``: a number of seconds or a string like ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 10m, 1h, 1w")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, not {value}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like 30s, 10m, 1h, 1w")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _finite(float(text), value)
    pos = 0
    total = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use forms like 30s, 10m, 1h, 1d, 1w")
    return _finite(total, value)


def _finite(seconds: float, value: object) -> float:
    # 400 nines parse to inf; everything downstream needs a real number.
    if not math.isfinite(seconds):
        raise ValueError(f"duration {str(value)[:40]!r} is too large")
    return seconds


def check_ban_duration(seconds: float) -> float:
    """Return ``seconds`` if it is a valid ban length, else raise ValueError
    saying why: finite, at least MIN_BAN, at most MAX_BAN."""
    if not math.isfinite(seconds):
        raise ValueError(f"a ban length must be a finite number of seconds, not {seconds}")
    if seconds < MIN_BAN:
        raise ValueError(f"a ban lasts at least {format_duration(MIN_BAN)} "
                         f"(got {seconds:g}s)")
    if seconds > MAX_BAN:
        raise ValueError(f"a ban lasts at most {MAX_BAN / 86400:g}d "
                         f"(got {format_duration(seconds)})")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly (``3600`` → ``1h``) for messages and listings."""
    if not math.isfinite(seconds):
        return str(seconds)
    s = round(seconds)
    if s <= 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out)
