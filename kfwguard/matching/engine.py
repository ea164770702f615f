"""Compiled filters: one pass per line over all of a filter's rules, in linear time.

Text filters run on RE2 only (no backtracking, so no line can stall the
daemon). Each call into RE2 costs about a microsecond of binding overhead,
more than the scan itself on a log line, so the hot path avoids calls:

1. optional syslog/klog headers are split off with bounded string operations;
2. when every rule starts with literal text, the first characters of the
   message pick the rules that can match at all (a dict lookup; most noise
   stops here). Otherwise an anchored RE2 Set runs all rules in one DFA
   pass and says which match;
3. only the matching rule's own regex runs again, for its captures;
4. ignoreregex runs only for lines that matched, and the host text is
   validated and normalised by ``parse_host`` (cached per host string).

For a block of raw lines (``scan_lines``: what a text file source reads)
the C++ block scanner (``_native.cpp``, built where g++ and RE2's headers
are) does that per line without a Python object per line, and reports only
the lines some rule matched. Those are the two matching paths: the
per-record path above is the reference (and the fallback where the scanner
was not built, or a block it does not take), the C++ scanner the fast one;
tests/unit/test_matching_lines.py, test_header.py and test_windows.py prove
they agree.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import re2

from kfwguard.addresses import IPAddress, IPNetwork, host_key, parse_host
from kfwguard.matching.spec import FilterError
from kfwguard.model import Match, Record

if TYPE_CHECKING:
    from kfwguard.matching import _native

_HOST_CACHE_MAX: Final = 16384  # per generation of a filter's host cache

# "success": a rule of kind success matched (sshd's "Accepted ..."): it never
# counts, and matching/sessions.py uses it to forgive the session's helpers.
# "session": a rule of kind unaddressed matched a line that carries no address;
# only its session's origin can give it one (matching/sessions.py).
Status = Literal["match", "nomatch", "ignored", "bad-host", "too-long", "success", "session"]
# The Match.host of a "session" outcome: the unspecified address, a placeholder
# for explaining tools; its hit's host is None, so nothing counts it.
NO_ADDRESS: Final = ipaddress.IPv6Address("::")
# "message repeated N times: [ msg ]" (rsyslog) counts as N failures, at most this many.
REPEAT_MAX: Final = 100
# How a text filter may scan a block of lines: True = with the C++ block
# scanner where it was built, False = the per-record path alone. Both give
# the same hits; tests compare them.
Accel = bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a filter made of one record, for tools that explain themselves."""

    status: Status
    rule: str | None = None
    match: Match | None = None


_NO_MATCH: Final = Outcome("nomatch")
_TOO_LONG: Final = Outcome("too-long")
# The hot path passes plain tuples (status, rule, match): creating a frozen
# dataclass per line was measurable. Outcome is built only for evaluate().
Check = tuple[Status, str | None, Match | None]
_NO_MATCH_T: Final[Check] = ("nomatch", None, None)
_TOO_LONG_T: Final[Check] = ("too-long", None, None)


def _outcome(check: Check) -> Outcome:
    status = check[0]
    if status == "nomatch":
        return _NO_MATCH
    if status == "too-long":
        return _TOO_LONG
    return Outcome(status, check[1], check[2])

Spans = Sequence[tuple[int, int]]

# What ``scan_lines`` reports for a line: (offset of the line's end in the
# block, status, rule, host, host_key(host), time). host is None and the key
# 0 unless the status is "match". A plain tuple: one is built per failure.
Hit = tuple[int, Status, str | None, IPAddress | None, int, float]


def _hit(end: int, check: Check) -> Hit:
    m = check[2]
    if m is None:
        return end, check[0], check[1], None, 0, 0.0
    if check[0] == "session":  # no address: the session's origin gives it one
        return end, "session", check[1], None, 0, m.time
    if check[0] != "match":  # success: no host to count, the key for the session
        return end, check[0], check[1], None, host_key(m.host), m.time
    return end, check[0], check[1], m.host, host_key(m.host), m.time


def _expand(found: Iterable[tuple[int, Check]]) -> list[Hit]:
    """The hits of (line end or index, check) pairs: a repeated message
    (``repeat`` field) gives one hit per repetition."""
    out: list[Hit] = []
    for end, check in found:
        hit = _hit(end, check)
        out.append(hit)
        m = check[2]
        if m is not None and check[0] == "match" and "repeat" in m.fields:
            out.extend([hit] * (int(m.fields["repeat"]) - 1))
    return out


def unwrap_repeat(message: str) -> tuple[str, int]:
    """rsyslog's ``message repeated N times: [ msg]`` → (msg, N); else (message, 1).
    N is capped at REPEAT_MAX: beyond any maxretry, and it bounds the work."""
    if not message.startswith("message repeated "):
        return message, 1
    end = message.find(" times: [", 17, 17 + 12 + 9)  # up to 12 digits
    number = message[17:end] if end != -1 else ""
    if not (number.isascii() and number.isdigit()) or not message.endswith("]"):
        return message, 1
    inner = message[end + 9 : -1]
    return inner[1:] if inner.startswith(" ") else inner, max(1, min(int(number), REPEAT_MAX))


def split_block(data: bytes) -> tuple[list[Record], list[int]]:
    """The records of a block of lines (as a text file source makes them) and
    the offset of each one's line end in ``data``; empty lines make none."""
    records: list[Record] = []
    ends: list[int] = []
    pos = 0
    for line in data.split(b"\n"):
        end = pos + len(line)
        pos = end + 1
        if line and line != b"\r":
            records.append(Record(line.decode("utf-8", "replace").removesuffix("\r")))
            ends.append(end)
    return records, ends


def _compile(pattern: str) -> Any:
    # log_errors off: RE2 would otherwise print its own raw absl log line (with
    # the <HOST>-expanded pattern) to stderr before our error says it clearly.
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise ValueError(
            f"RE2 cannot compile it: {_re2_reason(exc)}; kfwguard matches in linear time, "
            "so backreferences and lookaround (?= (?! (?<= (?<! are not available"
        ) from None


def _re2_reason(exc: BaseException) -> str:
    """RE2's reason without the pattern it quotes (``missing )``, ``invalid
    repetition size: {1001}``): the pattern is the <HOST>-expanded one, which
    the filter's author never wrote."""
    raw = exc.args[0] if exc.args else exc
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    reason, sep, fragment = text.partition(": ")
    if not sep:
        return text
    if reason in ("missing )", "unexpected )"):  # these quote the whole pattern
        return reason
    return f"{reason}: {fragment[:80]}"


def _spans(regexp: Any) -> Callable[[bytes, int, int], Spans]:
    """``(data, pos, end)`` → spans of an anchored-at-start match ((-1, -1) first when
    none): the raw RE2 call without a Python frame around it where the binding has one.
    The public ``re2`` wrapper builds a generator and a match object per call (~4x
    the cost of the scan); it is only the fallback."""
    raw = getattr(regexp, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "ANCHOR_START", None)
    if raw is not None and anchor is not None and hasattr(raw, "Match"):
        return functools.partial(raw.Match, anchor)
    none = [(-1, -1)] * (regexp.groups + 1)

    def slow(data: bytes, pos: int, end: int) -> Spans:
        m = regexp.match(data[pos:end])
        return none if m is None else [
            (a + pos, b + pos) if a >= 0 else (a, b)
            for a, b in (m.span(i) for i in range(regexp.groups + 1))
        ]

    return slow


class HostCache:
    """parse_host with a bounded memo: attackers repeat their addresses."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, IPAddress | None] = {}

    def __call__(self, text: str) -> IPAddress | None:
        try:
            return self._cache[text]
        except KeyError:
            pass
        addr = parse_host(text)
        if len(self._cache) >= _HOST_CACHE_MAX:
            self._cache.clear()
        self._cache[text] = addr
        return addr


class Filter:
    """A compiled filter. ``match`` is the daemon's hot path; ``evaluate`` explains."""

    name: str
    format: Literal["text", "json"]
    description: str
    path: str

    # rule name -> kind (spec.RULE_KINDS); rules not listed are failures
    kinds: Mapping[str, str] = {}
    mode: str | None = None  # the active mode, of ``modes`` (fail2ban's ``mode``)
    modes: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        """Rule names, in the order they are tried."""
        raise NotImplementedError

    @property
    def paired(self) -> bool:
        """Whether this filter's hits need a session settlement (matching.sessions)
        before they count: some rule is not a plain failure."""
        return any(k != "failure" for k in self.kinds.values())

    def _check(self, record: Record, now: float) -> Check:
        raise NotImplementedError

    def evaluate(self, record: Record, now: float) -> Outcome:
        """What this filter makes of ``record``: a match, or why not."""
        return _outcome(self._check(record, now))

    def match(self, record: Record, now: float) -> Match | None:
        """The failure ``record`` reports, or None."""
        check = self._check(record, now)
        return check[2] if check[0] == "match" else None

    def _scan(self, records: Sequence[Record], now: float) -> list[tuple[int, Check]]:
        check = self._check
        out = []
        for i, record in enumerate(records):
            result = check(record, now)
            if result[0] != "nomatch":
                out.append((i, result))
        return out

    def hits(self, records: Sequence[Record], now: float) -> list[Hit]:
        """What ``evaluate`` gives ``records``, other than "nomatch", as compact tuples
        (the index of the record first), in order: the daemon's per-record path."""
        return _expand(self._scan(records, now))

    def scan_lines(self, data: bytes, now: float) -> list[Hit]:
        """``hits`` for a block of raw lines separated by b"\\n", in order.

        Each line is what a text file source would make a record of (UTF-8
        with invalid bytes replaced, one trailing b"\\r" dropped, empty lines
        skipped); the hits are what ``evaluate`` gives those records, without
        building a record for lines that do not match.
        """
        records, ends = split_block(data)
        return _expand((ends[i], c) for i, c in self._scan(records, now))

    @property
    def block_engine(self) -> str:
        """What scans blocks of lines (``scan_lines``): "native" (the C++ block
        scanner) or "per-record"."""
        return "per-record"

    def track_lines(self, data: bytes, now: float, windows: _native.Windows,
                    oldest: float, latest: float,
                    on_full: Callable[[int, int, list[float]], list[float] | None],
                    sessions: _native.Sessions | None = None,
                    ) -> tuple[dict[str | None, int], int, int] | None:
        """``scan_lines`` fed straight into a jail's native failure windows
        (jails.Jail.add_lines is the caller): failures per rule name, jail-ignored,
        stale. A paired filter's hits are settled in ``sessions`` on the way (as
        ``Sessions.settle`` would before ``Jail.add_hits``). None when this filter
        cannot do that for ``data`` (no C++ scanner, a paired filter without C++
        sessions, or a block the per-record path must read): nothing was counted
        then."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} rules={list(self.rules)}>"


def _outside(rule_outside: tuple[IPNetwork, ...] | None, host: IPAddress) -> bool:
    """Whether ``host`` may count under a rule's ``outside`` condition."""
    if rule_outside is None:
        return True
    return bool(rule_outside) and not any(host in net for net in rule_outside)




def select_rules(spec_rules: Sequence[Any], modes: Sequence[str], mode: str | None,
                 path: str) -> list[Any]:
    """The rules of ``mode`` (the first of ``modes`` when None)."""
    if mode is not None and mode not in modes:
        known = ", ".join(modes) if modes else "none"
        raise FilterError(path, f"no mode {mode!r} in this filter (modes: {known})")
    active = mode if mode is not None else (modes[0] if modes else None)
    return [r for r in spec_rules if r.modes is None or active in r.modes]


def _encode(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates (from surrogateescape decoding) become invalid UTF-8,
        # which RE2 treats as bytes that match nothing in particular.
        return text.encode("utf-8", "surrogatepass")
