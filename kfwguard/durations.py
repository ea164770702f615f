"""Durations as operators write them: ``30s``, ``10m``, ``1h``, ``2d``, ``1w``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Return seconds for ``value``: a number of seconds or a string like ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 10m, 1h, 1w")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like 30s, 10m, 1h, 1w")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos = 0
    total = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use forms like 30s, 10m, 1h, 1d, 1w")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds compactly (``3600`` → ``1h``) for messages and listings."""
    s = round(seconds)
    if s <= 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out)
