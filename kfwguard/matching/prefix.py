"""Line headers that are not part of a program's message: syslog and klog.

Plain string operations with bounded searches, so the cost per line is
constant no matter how long or hostile the rest of the line is. A line that
does not have the exact shape is left whole; rules are anchored at the start
of the message, so a half-recognised header can only cause a miss, never a
match on the wrong text.
"""

from __future__ import annotations

from typing import Final

_MONTHS: Final = frozenset(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
)
_MAX_HOST: Final = 255
_MAX_TAG: Final = 128
_MAX_KLOG_SOURCE: Final = 256


# (message, stamp, kind, program): a plain tuple, built for every line, is
# several times cheaper than a NamedTuple instance. kind is "syslog", "iso"
# or "klog"; program is the syslog tag's name (None for klog).
Header = tuple[str, str, str, str | None]


def strip_syslog(line: str) -> Header | None:
    """Split ``Nov 26 04:57:45 host prog[pid]: msg`` (or an RFC 3339 stamp first)."""
    if line[9:10] == ":" and line[12:13] == ":" and line[:3] in _MONTHS and line[3] == " ":
        if line[15:16] == " ":
            end = 15
        elif line[15:16] == ".":  # journalctl -o short-precise
            end = line.find(" ", 16, 30)
            if end == -1:
                return None
        else:
            return None
        kind = "syslog"
    elif line[10:11] in ("T", "t") and line[4:5] == "-" and line[7:8] == "-":
        end = line.find(" ", 19, 48)
        if end == -1:
            return None
        kind = "iso"
    else:
        return None
    host_end = line.find(" ", end + 1, end + 2 + _MAX_HOST)
    if host_end <= end + 1:
        return None
    tag_end = line.find(": ", host_end + 1, host_end + 2 + _MAX_TAG)
    if tag_end <= host_end + 1:
        return None
    tag = line[host_end + 1 : tag_end]
    if " " in tag:
        return None
    bracket = tag.find("[")
    program = tag if bracket == -1 else tag[:bracket]
    return line[tag_end + 2 :], line[:end], kind, program


def strip_klog(line: str) -> Header | None:
    """Split ``I1126 04:57:45.123456    1234 file.go:123] msg``."""
    if line[14:15] != "." or line[8:9] != ":" or line[11:12] != ":" or line[21:22] != " ":
        return None
    if line[0] not in "IWEF" or line[5] != " " or not line[1:5].isdigit():
        return None
    close = line.find("] ", 22, 22 + _MAX_KLOG_SOURCE)
    if close == -1:
        return None
    return line[close + 2 :], line[:21], "klog", None
