"""RFC 3339 timestamps, read and written in one place (CRI log lines, JSON
filters' time fields, sample expectations; Alertmanager's startsAt/endsAt,
test-filter's output). The parsing is ``datetime.fromisoformat``; the checks
before it keep out what fromisoformat would take but RFC 3339 is not (a
date alone, basic format ``20261126T0457``, any separator letter)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def parse_rfc3339(text: str, *, zone_required: bool = False) -> float | None:
    """Epoch for ``2026-11-26T04:57:45.123456789Z`` and its relatives, or None.

    Accepts ``T``, ``t`` or a space between date and time, any fraction length
    (``.`` or ``,``; read to the microsecond), a leap second (the next second's
    start) and a zone ``Z``, ``±hh:mm``, ``±hhmm``, ``±hh`` or, unless
    ``zone_required``, none (the node's local time).
    """
    n = len(text)
    if not text.isascii():
        return None  # fromisoformat would read other scripts' digits
    if (n < 19 or n > 64 or text[4] != "-" or text[7] != "-" or text[10] not in "Tt "
            or text[13] != ":" or text[16] != ":"):
        return None
    if n > 19 and text[19] in ".," and (n == 20 or not "0" <= text[20] <= "9"):
        return None  # fromisoformat takes "45.Z"
    zone = text[19:].lstrip(".,0123456789")
    if zone_required and not zone:
        return None
    leap = text[17:19] == "60"
    if leap:
        text = f"{text[:17]}59{text[19:]}"
    try:
        dt = datetime.fromisoformat(text.upper() if text[-1] in "z" or text[10] == "t"
                                    else text)
        return dt.timestamp() + leap
    except (ValueError, OverflowError):
        return None


def format_rfc3339(epoch: float, timespec: Literal["milliseconds", "microseconds"]
                   = "microseconds") -> str:
    """``epoch`` as RFC 3339 in UTC, e.g. ``2026-11-26T04:57:45.123456Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec).replace(
        "+00:00", "Z")
