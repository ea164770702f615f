"""Line headers that are not part of a program's message: syslog and klog.

Plain string operations with bounded searches, so the cost per line is
constant no matter how long or hostile the rest of the line is. A line that
does not have the exact shape is left whole; rules are anchored at the start
of the message, so a half-recognised header can only cause a miss, never a
match on the wrong text.

Syslog headers read here (what rsyslog, syslog-ng, busybox and journalctl
write)::

    Nov 26 04:57:45 host prog[pid]: msg         RFC 3164 (day padded with a space)
    Nov 6 04:57:45 host prog[pid]: msg          day not padded (busybox, syslog-ng templates)
    Nov 26 04:57:45 prog[pid]: msg              no host name (some rsyslog templates, macOS)
    Nov 26 04:57:45 host auth.info prog[pid]: msg   busybox syslogd -S off: facility.level first
    Nov 26 04:57:45.123456 host prog[pid]: msg  journalctl -o short-precise
    2026-11-26T04:57:45.123+00:00 host prog[pid]: msg   RFC 3339 stamp (rsyslog default)
    2026-11-26T04:57:45+0000 host prog[pid]: msg        journalctl -o short-iso
    2020-03-23 06:47:42.801612-0700  host prog[pid]: msg   macOS log show --style syslog
    Thu 2026-11-26 04:57:45 UTC host prog[pid]: msg     journalctl -o short-full
    1795697865.123456 host prog[pid]: msg               journalctl -o short-unix
    <38>Nov 26 04:57:45 host prog[pid]: msg     a priority first (forwarded syslog)
    <38>1 2026-11-26T04:57:45Z host prog 123 - - msg    RFC 5424, structured data skipped

A Solaris-style ``[ID 800047 auth.info] `` right after the tag is not part of
the message either.

The C++ block scanner (``_native.cpp``, ``plain_header``) reads only the
most common of these forms, the plain header, and leaves every other line
to the per-record path. ``plain_header`` below is that form's definition;
tests/unit/test_header.py feeds the C++ scanner, ``plain_header`` and
``split_syslog`` one corpus of headers (and hostile variants) and demands
they agree, so the two languages cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kfwguard.timestamps import format_rfc3339

_MONTHS: Final = frozenset(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
)
_MAX_HOST: Final = 255
_MAX_TAG: Final = 128
_MAX_KLOG_SOURCE: Final = 256
_MAX_SD: Final = 2048  # RFC 5424 structured data read before giving up on a line
_DIGITS: Final = frozenset("0123456789")
_FACILITY: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


# (message, stamp, kind, program): a plain tuple, built for every line, is
# several times cheaper than a NamedTuple instance. kind is "syslog", "iso"
# or "klog"; program is the syslog tag's name (None for klog).
Header = tuple[str, str, str, str | None]


def _pri(line: str) -> int:
    """Length of a leading ``<PRI>`` (1 to 3 digits), else 0."""
    if line[:1] != "<":
        return 0
    close = line.find(">", 1, 5)
    if close < 2 or not set(line[1:close]) <= _DIGITS:
        return 0
    return close + 1


_WEEKDAYS: Final = frozenset(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))
_UTC_NAMES: Final = frozenset(("UTC", "GMT"))


def _journal_stamp(line: str, at: int) -> tuple[int, str] | None:
    """(end, RFC 3339 stamp) of journalctl's short-full (``Thu 2026-11-26 04:57:45
    UTC``: the zone's abbreviation, read as UTC for UTC/GMT and as the node's
    local time otherwise, as a BSD stamp is) or short-unix (``1795697865.123456``:
    seconds since the epoch) stamp at ``at``."""
    if line[at : at + 3] in _WEEKDAYS and line[at + 3 : at + 4] == " " and _iso_clock(
            line, at + 4) and line[at + 23 : at + 24] == " ":
        zone_end = line.find(" ", at + 24, at + 24 + 7)
        zone = line[at + 24 : zone_end]
        if zone_end == -1 or not zone.isalpha() or not zone.isascii():
            return None
        return zone_end, line[at + 4 : at + 23] + ("Z" if zone in _UTC_NAMES else "")
    dot = at + 10
    if line[dot : dot + 1] == "." and line[at : dot].isdigit() and line[at : dot].isascii() and (
            line[dot + 7 : dot + 8] == " " and line[dot + 1 : dot + 7].isdigit()
            and line[dot + 1 : dot + 7].isascii()):
        return dot + 7, format_rfc3339(int(line[at:dot]) + int(line[dot + 1 : dot + 7]) / 1e6)
    return None


def _stamp_end(line: str, at: int) -> tuple[int, str] | None:
    """(end of the stamp starting at ``at``, kind) for a BSD or RFC 3339 stamp."""
    if line[at : at + 3] in _MONTHS and line[at + 3 : at + 4] == " ":
        s = at + 4
        if line[s + 1 : s + 2] == " " and line[s : s + 1] in _DIGITS:
            s -= 1  # "Nov 6 04:57:45": one digit, unpadded; read as if padded
        if line[s + 5 : s + 6] != ":" or line[s + 8 : s + 9] != ":":
            return None
        if line[s + 11 : s + 12] == " ":
            return s + 11, "syslog"
        if line[s + 11 : s + 12] == ".":  # journalctl -o short-precise
            end = line.find(" ", s + 12, s + 26)
            return None if end == -1 else (end, "syslog")
        return None
    if line[at + 4 : at + 5] != "-" or line[at + 7 : at + 8] != "-":
        return None
    sep = line[at + 10 : at + 11]
    if sep in ("T", "t"):
        end = line.find(" ", at + 19, at + 48)
        return None if end == -1 else (end, "iso")
    if sep == " " and _iso_clock(line, at):
        # macOS's "log show --style syslog": a space for the T, a zone of
        # "-0700", and two spaces before the host (read as one).
        end = line.find(" ", at + 19, at + 48)
        if end == -1:
            return None
        return (end + 1 if line[end + 1 : end + 2] == " " else end), "iso"
    return None


def _iso_clock(line: str, at: int) -> bool:
    """``YYYY-MM-DD hh:mm:ss`` at ``at``: digits where they belong (the space-separated
    form is read only when it is a date and a time; a T-form stamp names itself)."""
    stamp = line[at : at + 19]
    return (len(stamp) == 19 and stamp[13] == ":" and stamp[16] == ":"
            and (stamp[:4] + stamp[5:7] + stamp[8:10] + stamp[11:13] + stamp[14:16]
                 + stamp[17:19]).isdigit() and stamp.isascii())


def _bsd_stamp(line: str, at: int, end: int) -> str:
    """The stamp as ``Nov 26 04:57:45[.f]``: an unpadded day gets its space back."""
    stamp = line[at:end]
    if stamp[5:6] == " ":  # "Nov 6 04:..."
        stamp = stamp[:4] + " " + stamp[4:]
    return stamp


def _tag(tag: str) -> tuple[str, str | None]:
    """(program, pid) of a syslog tag ``prog[pid]`` or ``prog``."""
    bracket = tag.find("[")
    if bracket == -1:
        return tag, None
    pid = tag[bracket + 1 : -1] if tag.endswith("]") else None
    return tag[:bracket], pid if pid and set(pid) <= _DIGITS else None


def _solaris_id(message: str) -> str:
    """The message without a Solaris ``[ID 800047 auth.info] `` tag."""
    if message.startswith("[ID "):
        close = message.find("] ", 4, 64)
        if close != -1:
            return message[close + 2 :]
    return message


def _rfc5424(line: str, at: int) -> tuple[str, str, str, str | None] | None:
    """(message, stamp, program, pid) of ``1 STAMP HOST APP PROCID MSGID SD MSG``."""
    if line[at : at + 2] != "1 ":
        return None
    fields: list[str] = []
    pos = at + 2
    for limit in (64, _MAX_HOST, 48, 128, 32):  # stamp, host, app, procid, msgid
        end = line.find(" ", pos, pos + limit + 1)
        if end <= pos:
            return None
        fields.append(line[pos:end])
        pos = end + 1
    stamp, _host, app, procid, _msgid = fields
    if line[pos : pos + 1] == "-":
        pos += 1
    else:
        stop = min(len(line), pos + _MAX_SD)
        while pos < stop and line[pos] == "[":
            # SD-ELEMENT: [id name="value" ...]; values escape ", \ and ] with \.
            pos += 1
            quoted = False
            while pos < stop:
                c = line[pos]
                if c == "\\" and quoted:
                    pos += 2
                    continue
                if c == '"':
                    quoted = not quoted
                elif c == "]" and not quoted:
                    break
                pos += 1
            else:
                return None
            pos += 1
        if pos == at or line[pos - 1 : pos] != "]":
            return None
    if line[pos : pos + 1] == " ":
        pos += 1
    elif pos < len(line):
        return None
    message = line[pos:]
    if message.startswith("\ufeff"):  # RFC 5424's BOM before a UTF-8 message
        message = message[1:]
    return (message, stamp if stamp != "-" else "", app if app != "-" else "",
            procid if procid != "-" else None)


def split_syslog(line: str) -> tuple[str, str, str, str | None, str | None] | None:
    """(message, stamp, kind, program, pid) of a syslog line in any form above."""
    at = _pri(line)
    if at:
        found5424 = _rfc5424(line, at)
        if found5424 is not None:
            message, stamp, program, pid = found5424
            return message, stamp, "iso", program, pid
    found = _stamp_end(line, at)
    if found is None:
        journal = _journal_stamp(line, at)
        if journal is None:
            return None
        end, stamp, kind = journal[0], journal[1], "iso"
    else:
        end, kind = found
        stamp = _bsd_stamp(line, at, end) if kind == "syslog" else line[at:end].rstrip(" ")
    host_end = line.find(" ", end + 1, end + 2 + _MAX_HOST)
    if host_end <= end + 1:
        return None
    first = line[end + 1 : host_end]
    if first.endswith(":") and first.find(":") == len(first) - 1:
        # No host name: the first word is the tag ("sshd[8148]:").
        program, pid = _tag(first[:-1])
        if not program:
            return None
        return _solaris_id(line[host_end + 1 :]), stamp, kind, program, pid
    tag_end = line.find(": ", host_end + 1, host_end + 2 + _MAX_TAG)
    if tag_end <= host_end + 1:
        return None
    tag = line[host_end + 1 : tag_end]
    space = tag.find(" ")
    if space != -1:
        # busybox: "facility.level tag"; nothing else may hold a space.
        facility, _, tag = tag.partition(" ")
        dot = facility.find(".")
        if dot < 1 or not set(facility.replace(".", "", 1)) <= _FACILITY or " " in tag:
            return None
        if not tag:
            return None
    program, pid = _tag(tag)
    return _solaris_id(line[tag_end + 2 :]), stamp, kind, program, pid


_PLAIN_MONTHS: Final = frozenset(m.encode() for m in _MONTHS)
_PLAIN_MAX_TAG: Final = 100
_VISIBLE: Final = frozenset(range(0x21, 0x7F))  # [!-~]


def plain_header(data: bytes, start: int = 0, end: int | None = None,
                 ) -> tuple[int, int, int] | None:
    """(tag start, tag end, message start) of the line ``data[start:end]`` when it has
    the plain syslog header, else None. The plain header is ``Mmm dd hh:mm:ss ``
    (a known month, the day's first digit may be a space, every other place a
    digit), a host of 1 to 255 visible ASCII characters not ending in ":",
    one space, a tag of 1 to 100 visible characters other than ":", and
    ": ". On such a line ``split_syslog`` finds the same message and program;
    the C++ scanner reads exactly this shape."""
    end = len(data) if end is None else end
    if end - start < 16:
        return None
    h = data[start : start + 16]
    if (h[:3] not in _PLAIN_MONTHS or h[3:4] != b" " or h[4:5] not in b" 0123456789"
            or not h[5:6].isdigit() or h[6:7] != b" " or not h[7:9].isdigit()
            or h[9:10] != b":" or not h[10:12].isdigit() or h[12:13] != b":"
            or not h[13:15].isdigit() or h[15:16] != b" "):
        return None
    p = start + 16
    limit = min(end, p + 256)
    while p < limit and data[p] in _VISIBLE:
        p += 1
    if p == start + 16 or p - (start + 16) > 255 or p >= end or data[p] != 0x20:
        return None
    if data[p - 1] == 0x3A:  # "host:" is a tag without a host: split_syslog reads it so
        return None
    tag = p = p + 1
    limit = min(end, tag + _PLAIN_MAX_TAG + 1)
    while p < limit and data[p] in _VISIBLE and data[p] != 0x3A:
        p += 1
    if p == tag or p - tag > _PLAIN_MAX_TAG or end - p < 2 or data[p : p + 2] != b": ":
        return None
    return tag, p, p + 2


def strip_syslog(line: str) -> Header | None:
    """Split ``Nov 26 04:57:45 host prog[pid]: msg`` (and the other forms above)."""
    found = split_syslog(line)
    if found is None:
        return None
    return found[0], found[1], found[2], found[3]


def session_of(text: str, fields: Mapping[str, Any] | None = None) -> str | None:
    """``prog[pid]`` of the process that wrote a line: from journald's trusted
    fields when the record has them, else from the line's syslog header; None
    when neither says. One attempt's lines (PAM's and sshd's) share it."""
    if fields is not None:
        pid = fields.get("_PID")
        if isinstance(pid, str) and pid:
            ident = fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM") or ""
            return f"{ident}[{pid}]"
    found = split_syslog(text)
    if found is None or found[4] is None:
        return None
    return f"{found[3]}[{found[4]}]"


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
