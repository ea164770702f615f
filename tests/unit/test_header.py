"""The syslog header is defined once, in Python (``prefix.plain_header`` for the
plain form the C++ scanner reads, ``prefix.split_syslog`` for every form), and
the C++ scanner reads a header corpus exactly as they do."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.matching import prefix
from tests.conftest import need

try:
    from kfwguard.matching import _native
except ImportError:  # no compiler or RE2 headers: the test says so below
    _native = None  # type: ignore[assignment]

MSG = "Failed password for root from 203.0.113.9 port 22 ssh2"
# What rsyslog, syslog-ng, busybox, journalctl and friends write, and hostile variants.
CORPUS = [
    f"Nov 26 04:57:45 node-1 sshd[123]: {MSG}",  # rsyslog traditional
    f"Nov  6 04:57:45 node-1 sshd[123]: {MSG}",  # day padded with a space
    f"Nov 6 04:57:45 node-1 sshd[123]: {MSG}",  # unpadded day (busybox, syslog-ng)
    f"Nov 26 04:57:45 sshd[123]: {MSG}",  # no host name
    f"Nov 26 04:57:45 node-1 auth.info sshd[123]: {MSG}",  # busybox -S off
    f"Nov 26 04:57:45.123456 node-1 sshd[123]: {MSG}",  # journalctl short-precise
    f"2026-11-26T04:57:45.123+00:00 node-1 sshd[123]: {MSG}",  # rsyslog RFC 3339
    f"<38>Nov 26 04:57:45 node-1 sshd[123]: {MSG}",  # forwarded with a priority
    f"<38>1 2026-11-26T04:57:45Z node-1 sshd 123 - - {MSG}",  # RFC 5424
    f"<38>1 2026-11-26T04:57:45.003-07:00 node-1 sshd 123 - [origin ip=\"10.0.0.1\"] {MSG}",
    f"2026-11-26T04:57:45+0000 node-1 sshd[123]: {MSG}",  # journalctl -o short-iso
    f"2026-11-26T04:57:45.123456-0800 node-1 sshd[123]: {MSG}",  # short-iso-precise (old)
    f"2020-03-23 06:47:42.801612-0700  localhost sshd[123]: {MSG}",  # macOS log show
    f"2020-03-23 06:47:42 node-1 sshd[123]: {MSG}",  # a date and a time, no zone
    f"2020-03-23 06:47:4x node-1 sshd[123]: {MSG}",
    f"2020-03-23 06:47:42.801612-0700   localhost sshd[123]: {MSG}",  # three spaces
    f"<86>2020-03-23T06:47:42-07:00 node-1 sshd[123]: {MSG}",  # a priority, then RFC 3339
    f"Thu 2026-11-26 04:57:45 UTC node-1 sshd[123]: {MSG}",  # journalctl -o short-full
    f"Thu 2026-11-26 04:57:45 PST node-1 sshd[123]: {MSG}",
    f"1795697865.123456 node-1 sshd[123]: {MSG}",  # journalctl -o short-unix
    f"1795697865.12345 node-1 sshd[123]: {MSG}",
    f"I1126 04:57:45.123456    1234 server.go:123] {MSG}",  # klog
    f"Nov 26 04:57:45 node-1 sshd: {MSG}",  # tag without a pid
    f"Nov 26 04:57:45 node-1 sshd[1x]: {MSG}",
    f"Nov 26 04:57:45 node-1 sshd[123]: [ID 800047 auth.info] {MSG}",  # Solaris id
    f"Nov 26 04:57:45 fe80::1 sshd[123]: {MSG}",  # host with colons
    f"Nov 26 04:57:45 node-1: sshd[123]: {MSG}",  # "host:" reads as a tag
    f"Nov 26 04:57:45 node-1 sshd[123]:{MSG}",  # no space after the colon
    f"Nov 26 04:57:45 node-1 sshd[123] : {MSG}",
    f"Nov 26 04:57:45 node-1  sshd[123]: {MSG}",  # two spaces
    f"Nov 26 04:57:45 {'h' * 255} sshd[1]: {MSG}",
    f"Nov 26 04:57:45 {'h' * 256} sshd[1]: {MSG}",
    f"Nov 26 04:57:45 node-1 {'t' * 100}: {MSG}",
    f"Nov 26 04:57:45 node-1 {'t' * 101}: {MSG}",
    f"Nov 26 4:57:45 node-1 sshd[1]: {MSG}",
    f"Nov 26 04:57:4x node-1 sshd[1]: {MSG}",
    f"nov 26 04:57:45 node-1 sshd[1]: {MSG}",
    f"Nov 26 04:57:45 nóde sshd[1]: {MSG}",  # not ASCII
    f"Nov 26 04:57:45 node\x7f sshd[1]: {MSG}",
    f"Nov 26 04:57:45 node-1 sshd[1]: message repeated 2 times: [ {MSG}]",
    "Nov 26 04:57:45 node-1 sshd[1]: ",  # empty message
    "Nov 26 04:57:45 node-1 sshd[1]:",
    "Nov 26 04:57:45 h",
    MSG,
]


@functools.cache
def matcher(programs: tuple[str, ...]) -> _native.Matcher:
    """A C++ scanner whose one rule takes any message whole as its "host":
    the span it reports is where C++ found the message."""
    return _native.Matcher([rb"(.*)"], [1], [p.encode() for p in programs], True, None)


def cxx(line: bytes, programs: tuple[str, ...] = ()) -> tuple[int, int] | str | None:
    """(message start, end) as the C++ scanner reads ``line``; None when it refuses
    the header; "skipped" when the header is read but names another program."""
    try:
        found = matcher(programs).scan(line + b"\n")
    except ValueError:
        return None
    if not found:
        return "skipped"
    _, _, start, end = found[0]
    return start, end


def python(line: bytes, programs: tuple[str, ...] = ()) -> tuple[int, int] | str | None:
    """The same from the Python definition, checked against split_syslog."""
    plain = prefix.plain_header(line)
    if plain is None:
        return None
    tag_start, tag_end, start = plain
    split = prefix.split_syslog(line.decode())
    assert split is not None, line
    message, _stamp, kind, program, _pid = split
    # On a plain line the general reader finds the same message and program.
    assert ("syslog", line[start:].decode()) == (kind, message) or b"[ID " in line, line
    assert program == line[tag_start:tag_end].decode().split("[", 1)[0], line
    if programs and program not in programs:
        return "skipped"
    return start, len(line)


@pytest.fixture(autouse=True)
def built() -> None:
    need(_native is not None, "the C++ scanner was not built (needs g++ and libre2-dev)")


class TestHeaderOnce:
    @pytest.mark.parametrize("line", CORPUS)
    def test_corpus_read_alike(self, line: str) -> None:
        """Every header of the corpus is read by C++ exactly as by the Python definition
        (refused, or the same message), with and without a program list."""
        data = line.encode()
        for programs in ((), ("sshd",), ("other",)):
            assert python(data, programs) == cxx(data, programs), (line, programs)

    def test_corpus_has_both_kinds(self) -> None:
        """The corpus holds lines C++ reads and lines it leaves to the per-record path."""
        results = [cxx(line.encode()) for line in CORPUS]
        assert None in results and any(isinstance(r, tuple) for r in results)

    @settings(max_examples=500, deadline=None)
    @given(
        month=st.sampled_from(["Nov", "Dec", "Jan", "Foo", "nov", "No"]),
        day=st.sampled_from([" 6", "26", "06", "6 ", "x6", "  "]),
        clock=st.sampled_from(["04:57:45", "4:57:45 ", "04:57:4x", "04-57-45", "04:57:45.1"]),
        host=st.text(alphabet="ab:[]\x7f\x00é \t", max_size=4) | st.sampled_from(
            ["h" * 255, "h" * 256, "node-1"]),
        tag=st.text(alphabet="sd[]1:/ é\x7f", max_size=5) | st.sampled_from(
            ["t" * 100, "t" * 101, "sshd[1]"]),
        sep=st.sampled_from([": ", ":", ":x", " : ", ": : "]),
        rest=st.sampled_from(["", "Invalid user x from 203.0.113.9 port 1", ": x"]),
    )
    def test_hostile_headers_read_alike(self, month: str, day: str, clock: str, host: str,
                                        tag: str, sep: str, rest: str) -> None:
        """Each part of the header on and off its edges (month names, day padding,
        host and tag lengths 255/256 and 100/101, characters outside [!-~],
        colons, NULs) is read alike by C++ and the Python definition."""
        data = f"{month} {day} {clock} {host} {tag}{sep}{rest}".encode()
        assert python(data) == cxx(data), data
        assert python(data, ("sshd",)) == cxx(data, ("sshd",)), data
