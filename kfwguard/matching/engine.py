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
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import re2

from kfwguard.addresses import IPAddress, IPNetwork, host_key, parse_host, split_host_port
from kfwguard.matching import patterns, prefix, timeparse
from kfwguard.matching.jsonpath import MISSING, Step, json_equal, lookup, parse_path
from kfwguard.matching.spec import (
    FilterError,
    JsonFilterSpec,
    JsonScalar,
    Lines,
    TextFilterSpec,
)
from kfwguard.model import MAX_LINE, Match, Record, lines_fit
from kfwguard.timestamps import parse_rfc3339

if TYPE_CHECKING:
    from kfwguard.matching import _native

_HOST_CACHE_MAX: Final = 16384  # per generation of a filter's host cache

# "success": a rule of kind success matched (sshd's "Accepted ..."): it never
# counts, and matching/sessions.py uses it to forgive the session's helpers.
Status = Literal["match", "nomatch", "ignored", "bad-host", "too-long", "success"]
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


@dataclass(frozen=True, slots=True)
class _TextRule:
    name: str
    index: int  # in file order: what the block scanners report
    spans: Callable[[bytes, int, int], Spans]  # anchored at pos; (-1, -1) first: no match
    host: int
    fields: tuple[tuple[str, int], ...]
    kind: str = "failure"
    # Count only addresses outside these networks; None: no such condition. An
    # empty tuple (the set is unknown) counts nothing.
    outside: tuple[IPNetwork, ...] | None = None


def _outside(rule_outside: tuple[IPNetwork, ...] | None, host: IPAddress) -> bool:
    """Whether ``host`` may count under a rule's ``outside`` condition."""
    if rule_outside is None:
        return True
    return bool(rule_outside) and not any(host in net for net in rule_outside)


Networks = Mapping[str, Sequence[IPNetwork]]


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


class TextFilter(Filter):
    """Regex rules over a text message, anchored at the message start."""

    def __init__(self, name: str, spec: TextFilterSpec, path: str, lines: Lines,
                 accelerate: Accel = True, networks: Networks | None = None,
                 mode: str | None = None) -> None:
        self.name = name
        self.format = "text"
        self.description = spec.description
        self.path = path
        self.mode = mode if mode is not None else (spec.modes[0] if spec.modes else None)
        self.modes = tuple(spec.modes)
        spec = spec.model_copy(update={"rules": select_rules(spec.rules, spec.modes, mode, path)})
        if not spec.rules:
            raise FilterError(path, f"mode {self.mode!r} has no rules")
        networks = networks or {}
        problems: list[str] = []
        rules: list[_TextRule] = []
        literals: list[tuple[str, int]] = []
        rule_set = re2.Set.MatchSet()
        for i, rule in enumerate(spec.rules):
            where = lines.where(["rules", i, "regex"])
            try:
                expanded = patterns.expand_host(rule.regex)
                compiled = _compile(expanded)
                rule_set.Add(expanded)
            except (ValueError, re2.error) as exc:
                problems.append(f"{where} (rule {rule.name!r}): {exc}")
                continue
            index: dict[str, int] = compiled.groupindex
            rules.append(
                _TextRule(
                    name=rule.name,
                    index=len(rules),
                    spans=_spans(compiled),
                    host=index["host"],
                    fields=tuple((k, v) for k, v in sorted(index.items()) if k != "host"),
                    kind=rule.kind,
                    outside=None if rule.outside is None else tuple(
                        networks.get(rule.outside, ())),
                )
            )
            literals.extend(
                (lit, len(rules) - 1) for lit in patterns.literal_prefixes(expanded) or ("",)
            )
        ignores: list[str] = []
        for i, pattern in enumerate(spec.ignoreregex):
            where = lines.where(["ignoreregex", i])
            try:
                _compile(pattern)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            ignores.append("(?:" + patterns.strip_group_names(pattern) + ")")
        if problems:
            raise FilterError(path, problems)
        try:
            rule_set.Compile()
            ignore_pattern = "|".join(ignores) if ignores else None
            self._ignore: Any = None if ignore_pattern is None else re2.compile(ignore_pattern)
        except re2.error as exc:  # e.g. the joined program exceeds RE2's memory budget
            raise FilterError(path, f"rules cannot be combined: {exc}") from None
        # Dispatch on the first characters of the message: when every rule
        # starts with a literal, a dict lookup finds the few rules that can
        # match at all (usually one), so a line costs at most those RE2 calls
        # and most noise none. Otherwise one RE2 Set pass (a DFA over all
        # rules) says which match; either way only the matching rule's own
        # small regex runs for captures. A single alternation of all rules
        # with captures was measured 2-3x slower: RE2 falls back to its NFA.
        self._set_match = rule_set.Match
        self._rules = tuple(rules)
        self._names = tuple(r.name for r in rules)
        self.kinds = {r.name: r.kind for r in rules}
        # Python decides these rules' hits (networks): no C++ counting.
        self._has_outside = any(r.outside is not None for r in rules)
        self._head_len = 0
        self._heads: dict[str, tuple[_TextRule, ...]] = {}
        if all(lit for lit, _ in literals):
            self._head_len = min(len(lit) for lit, _ in literals)
            heads: dict[str, list[_TextRule]] = {}
            for lit, pos in literals:
                bucket = heads.setdefault(lit[: self._head_len], [])
                if rules[pos] not in bucket:
                    bucket.append(rules[pos])
            # Keep file order inside a bucket: the first rule that matches wins.
            self._heads = {h: tuple(sorted(b, key=rules.index)) for h, b in heads.items()}
        self._strippers = tuple(
            prefix.strip_syslog if p == "syslog" else prefix.strip_klog for p in spec.prefix
        )
        self._single = self._strippers[0] if len(self._strippers) == 1 else None
        self._programs = frozenset(spec.programs)
        # The headers a line may carry ("syslog", "klog"): a filter that takes
        # a syslog header reads text whose tag any local user can choose.
        self.headers = tuple(spec.prefix)
        self._host = HostCache()
        self._hosts: dict[bytes, tuple[IPAddress, int] | None] = {}
        self._hosts_old: dict[bytes, tuple[IPAddress, int] | None] = {}
        # The C++ block scanner, where it was built and can read these rules.
        self._native = _native_matcher(
            rules, [patterns.expand_host(r.regex) for r in spec.rules], spec,
            ignore=ignore_pattern) if accelerate else None
        self._header = bool(spec.prefix)

    @property
    def rules(self) -> tuple[str, ...]:
        return self._names

    def _block_scanner(self, data: bytes) -> _native.Matcher | None:
        """The C++ scanner, if it may scan ``data``; None: the per-record path must."""
        native = self._native
        if native is None:
            return None
        # A CR before the newline is dropped by the per-line decoding, which the
        # scanner does not know about. (One byte is a memchr; b"\r\n" in
        # data a slower search, worth it only when a CR is there at all.)
        if b"\r" in data and (b"\r\n" in data or data.endswith(b"\r")):
            return None
        if not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError:
                # The per-line path matches U+FFFD where RE2 sees invalid bytes.
                return None
        if not lines_fit(data, MAX_LINE):
            return None  # the per-record path says "too-long" for that line
        if self._header and (b"message repeated " in data or b"]: [ID " in data):
            return None  # rsyslog's repeats and Solaris ids: the per-record path unwraps them
        # The scanner checks each line's header itself (a line without the
        # plain header makes it refuse the block), in the same pass.
        return native

    def track_lines(self, data: bytes, now: float, windows: _native.Windows,
                    oldest: float, latest: float,
                    on_full: Callable[[int, int, list[float]], list[float] | None],
                    sessions: _native.Sessions | None = None,
                    ) -> tuple[dict[str | None, int], int, int] | None:
        if self._has_outside or (sessions is None and self.paired):
            return None
        native = self._block_scanner(data)
        if native is None:
            return None

        def stamp_time(stamp: bytes) -> float:  # called only for a filter with a header
            t = timeparse.parse_syslog(stamp.decode(), now)
            return now if t is None else t

        found = native.track(data, windows, now, oldest, latest, stamp_time, on_full,
                             sessions if self.paired else None)
        if found is None:  # a header of another shape: nothing was counted
            return None
        per_rule, ignored, stale = found
        counts: dict[str | None, int] = {self._names[i]: n for i, n in enumerate(per_rule) if n}
        return counts, ignored, stale

    def scan_lines(self, data: bytes, now: float) -> list[Hit]:
        native = self._block_scanner(data)
        if native is None:
            return super().scan_lines(data, now)
        try:
            found = native.scan(data)
        except ValueError:  # a header of another shape: the per-record path decides
            return super().scan_lines(data, now)
        return self._hits(data, now, found, self._header)

    def _hits(self, data: bytes, now: float, found: list[tuple[int, int, int, int]],
              header: bool) -> list[Hit]:
        """The hits of a block from the lines the C++ scanner found a rule match
        on: (line end, rule index, host start, host end; (-1, -1) for a host
        group that took no part), offsets into the block."""
        out: list[Hit] = []
        names = self._names
        rfind = data.rfind
        hosts = self._hosts
        ignore = self._ignore
        last_stamp = b""
        last_t = now  # without a header the record's time is unknown: now
        rules = self._rules
        for nl, rule_id, host_start, host_end in found:
            name = names[rule_id]
            text = data[host_start:host_end] if host_start >= 0 else b""
            try:
                host = hosts[text]
            except KeyError:
                host = self._new_host(text)
            if host is None:
                out.append((nl, "bad-host", name, None, 0, 0.0))
                continue
            rule = rules[rule_id]
            if rule.outside is not None and not _outside(rule.outside, host[0]):
                out.append((nl, "ignored", name, None, 0, 0.0))
                continue
            start = rfind(b"\n", 0, nl) + 1
            if ignore is not None:
                if header:  # the scanner checked it: plain_header cannot say None
                    message = data[(prefix.plain_header(data, start, nl) or (0, 0, start))[2]:nl]
                else:
                    message = data[start:nl]
                if ignore.search(message) is not None:
                    out.append((nl, "ignored", name, None, 0, 0.0))
                    continue
            if header:
                stamp = data[start : start + 15]
                if stamp != last_stamp:
                    last_stamp = stamp
                    t = timeparse.parse_syslog(stamp.decode(), now)
                    last_t = now if t is None else t
            if rule.kind == "success":
                out.append((nl, "success", name, None, host[1], last_t))
            else:
                out.append((nl, "match", name, host[0], host[1], last_t))
        return out

    @property
    def block_engine(self) -> str:
        return "per-record" if self._native is None else "native"

    def _new_host(self, text: bytes) -> tuple[IPAddress, int] | None:
        """A host text the block loops' cache (``_hosts``) does not hold. Two
        generations of at most _HOST_CACHE_MAX each: when the current one is full
        it becomes the old one and the older is dropped, and a text found in the
        old one moves back. An attack's working set of addresses stays cached
        (clearing one dict when full re-parsed 60 % of the hosts of the bench's
        1M-line corpus, 27k distinct addresses), and memory stays bounded."""
        try:
            value = self._hosts_old[text]
        except KeyError:
            addr = parse_host(text.decode("utf-8", "replace"))
            value = None if addr is None else (addr, host_key(addr))
        if len(self._hosts) >= _HOST_CACHE_MAX:
            self._hosts_old = self._hosts
            self._hosts = {}
        self._hosts[text] = value
        return value

    def _strip(self, text: str) -> tuple[str, prefix.Header | None]:
        """The message, and the most precise header; header None + "" = another program."""
        header = None
        for strip in self._strippers:
            found = strip(text)
            if found is None:
                continue
            program = found[3]
            if program is not None and self._programs and program not in self._programs:
                return "", None
            # klog's own stamp has microseconds; prefer it to syslog's.
            if header is None or found[2] == "klog":
                header = found
            text = found[0]
        return text, header

    def _check(self, record: Record, now: float) -> Check:
        # The daemon's hot path: plain tuples, locals, and no work for a line
        # whose first characters no rule can start with.
        text = record.text
        if len(text) > MAX_LINE:
            return _TOO_LONG_T
        header = None
        if self._single is not None:
            header = self._single(text)
            if header is not None:
                program = header[3]
                if program is not None and self._programs and program not in self._programs:
                    return _NO_MATCH_T
                text = header[0]
        elif self._strippers:
            text, header = self._strip(text)
        repeat = 1
        if header is not None and text.startswith("message repeated "):
            text, repeat = unwrap_repeat(text)
        data = None
        spans = None
        head_len = self._head_len
        if head_len:
            for rule in self._heads.get(text[:head_len], ()):
                if data is None:
                    data = _encode(text)
                found = rule.spans(data, 0, len(data))
                if found[0][0] >= 0:
                    spans = found
                    break
        elif text:
            data = _encode(text)
            which = self._set_match(data)
            if which:
                rule = self._rules[min(which)]  # rules are tried in file order
                found = rule.spans(data, 0, len(data))
                spans = found if found[0][0] >= 0 else None
        if spans is None or data is None:
            return _NO_MATCH_T
        start, end = spans[rule.host]
        host = self._host(data[start:end].decode("ascii", "replace"))
        if host is None:
            return "bad-host", rule.name, None
        if self._ignore is not None and self._ignore.search(data) is not None:
            return "ignored", rule.name, None
        if rule.outside is not None and not _outside(rule.outside, host):
            return "ignored", rule.name, None
        t: float | None = None
        if header is not None and record.time is None:
            # A stamp in the text (klog, syslog: no zone, read in our local time,
            # which a container may not share with the writer) counts only when
            # the record has no time of its own (journald's __REALTIME_TIMESTAMP,
            # a CRI stamp), which is exact.
            kind, stamp = header[2], header[1]
            if kind == "klog":
                t = timeparse.parse_klog(stamp, now)
            elif kind == "syslog":
                t = timeparse.parse_syslog(stamp, now)
            else:
                t = parse_rfc3339(stamp)
        if t is None:
            t = record.time if record.time is not None else now
        fields = {
            key: data[s:e].decode("utf-8", "replace")
            for key, idx in rule.fields
            if (s := spans[idx][0]) != -1 and (e := spans[idx][1]) >= s
        }
        if repeat > 1:
            fields["repeat"] = str(repeat)
        status: Status = "success" if rule.kind == "success" else "match"
        return status, rule.name, Match(host, t, self.name, rule.name, fields)


# Program names the C++ scanner compares as the tag's text up to "[" or ":":
# prefix._tag cuts a tag at its first "[", so a name holding one of the
# others' separators could be read two ways; such a filter stays per-record.
_TAG_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/@"
)


def _native_matcher(rules: Sequence[_TextRule], full: Sequence[str], spec: TextFilterSpec,
                    *, ignore: str | None) -> _native.Matcher | None:
    """The C++ block scanner for these rules (``full``: as RE2 compiles them; ``ignore``:
    the joined ignoreregex), or None where it cannot stand in for the per-record
    path: the extension was not built (no compiler or RE2 headers), a klog
    header (only the plain syslog header is read in C++), or programs it
    would compare differently."""
    if not rules or len(rules) != len(full):
        return None
    if spec.prefix and list(spec.prefix) != ["syslog"]:
        return None
    if any(not p or not set(p) <= _TAG_CHARS for p in spec.programs):
        return None
    try:
        from kfwguard.matching import _native
    except ImportError:
        return None
    # Each rule's literal heads, as the per-record path dispatches on them: the
    # scanner then runs only the rules a line's message can start with.
    heads = [[h.encode() for h in patterns.literal_prefixes(p)] for p in full]
    try:
        return _native.Matcher([p.encode() for p in full], [r.host for r in rules],
                               [p.encode() for p in spec.programs], bool(spec.prefix),
                               None if ignore is None else ignore.encode(),
                               heads if all(heads) else None)
    except ValueError:  # RE2 in C++ refused what the binding took: stay in Python
        return None


Condition = tuple[tuple[Step, ...], tuple[JsonScalar, ...]]


@dataclass(frozen=True, slots=True)
class _JsonRule:
    name: str
    match: tuple[Condition, ...]
    absent: tuple[tuple[Step, ...], ...]
    exclude: tuple[Condition, ...]
    host: tuple[Step, ...]
    host_port: bool
    time: tuple[tuple[Step, ...], ...]
    fields: tuple[tuple[str, tuple[Step, ...]], ...]
    literals: tuple[str, ...]
    outside: tuple[IPNetwork, ...] | None = None
    regex: tuple[tuple[tuple[Step, ...], Any], ...] = ()

    def applies(self, doc: Mapping[str, Any]) -> bool:
        for steps, wanted in self.match:
            value = lookup(doc, steps)
            if value is MISSING or not any(json_equal(value, w) for w in wanted):
                return False
        for steps in self.absent:
            if lookup(doc, steps) not in (MISSING, None):
                return False
        for steps, unwanted in self.exclude:
            value = lookup(doc, steps)
            if value is not MISSING and any(json_equal(value, w) for w in unwanted):
                return False
        for steps, pattern in self.regex:
            value = lookup(doc, steps)
            if isinstance(value, bool) or not isinstance(value, str | int):
                return False
            text = value if isinstance(value, str) else str(value)
            if len(text) > MAX_LINE or pattern.search(text) is None:
                return False
        return True


_SAFE_LITERAL: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.:-"
)


def _literal(value: JsonScalar) -> str | None:
    """Text that any JSON encoding of ``value`` must contain, if we can be sure."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # Other characters may be escaped (Go writes < as \u003c, some encoders / as \/).
    if isinstance(value, str) and value and set(value) <= _SAFE_LITERAL:
        return json.dumps(value)
    return None


class JsonFilter(Filter):
    """Field conditions over one JSON object per line (audit log, zap logs)."""

    def __init__(self, name: str, spec: JsonFilterSpec, path: str, lines: Lines,
                 networks: Networks | None = None, mode: str | None = None,
                 accelerate: Accel = True) -> None:
        self.name = name
        self.format = "json"
        self.description = spec.description
        self.path = path
        self.mode = mode if mode is not None else (spec.modes[0] if spec.modes else None)
        self.modes = tuple(spec.modes)
        networks = networks or {}
        spec = spec.model_copy(update={
            "rules": select_rules(spec.rules, spec.modes, mode, path),
            "text_rules": select_rules(spec.text_rules, spec.modes, mode, path),
        })
        if not spec.rules and not spec.text_rules:
            raise FilterError(path, f"mode {self.mode!r} has no rules")
        # Lines that are not a JSON object go to the text rules, as a text filter
        # with the same header and programs would read them.
        self._text: TextFilter | None = None
        if spec.text_rules:
            self._text = TextFilter(name, TextFilterSpec(
                description=spec.description, prefix=list(spec.prefix),
                programs=spec.programs, rules=spec.text_rules,
            ), path, _Shifted(lines, "text_rules"), accelerate=False, networks=networks)
        self._strip_header = bool(spec.prefix)
        self._programs = frozenset(spec.programs)
        problems: list[str] = []

        def parsed(p: str, loc: list[Any]) -> tuple[Step, ...]:
            try:
                return parse_path(p)
            except ValueError as exc:
                problems.append(f"{lines.where(loc)}: {exc}")
                return ()

        def compiled(pattern: str, loc: list[Any]) -> Any:
            try:
                return _compile(pattern)
            except ValueError as exc:
                problems.append(f"{lines.where(loc)}: {exc}")
                return None

        def conditions(
            items: Mapping[str, JsonScalar | list[JsonScalar]], loc: list[Any]
        ) -> tuple[Condition, ...]:
            return tuple(
                (parsed(p, [*loc, p]), tuple(v) if isinstance(v, list) else (v,))
                for p, v in items.items()
            )

        rules = []
        for i, r in enumerate(spec.rules):
            loc: list[Any] = ["rules", i]
            host = r.host if r.host is not None else spec.host
            if host is None:
                problems.append(f"{lines.where([*loc, 'host'])}: no host path (give host: here "
                                "or at the top of the file)")
                host = "_"
            match = conditions(r.match, [*loc, "match"])
            if not match:
                problems.append(f"{lines.where([*loc, 'match'])}: a rule needs at least one "
                                "match condition")
            literals = tuple(
                lit
                for _, wanted in match
                if len(wanted) == 1 and (lit := _literal(wanted[0])) is not None
            )
            rules.append(
                _JsonRule(
                    name=r.name,
                    match=match,
                    absent=tuple(parsed(p, [*loc, "absent"]) for p in r.absent),
                    regex=tuple(
                        (parsed(p, [*loc, "regex", p]), compiled(pattern, [*loc, "regex", p]))
                        for p, pattern in r.regex.items()),
                    exclude=conditions(r.exclude, [*loc, "exclude"]),
                    host=parsed(host, [*loc, "host"]),
                    host_port=spec.host_port if r.host_port is None else r.host_port,
                    time=tuple(parsed(p, [*loc, "time"]) for p in (r.time or spec.time)),
                    fields=tuple(
                        (k, parsed(p, [*loc, "fields", k]))
                        for k, p in {**spec.fields, **r.fields}.items()
                    ),
                    literals=literals,
                    outside=None if r.outside is None else tuple(networks.get(r.outside, ())),
                )
            )
        if problems:
            raise FilterError(path, problems)
        self._rules = tuple(rules)
        self._names = tuple(r.name for r in rules) + (
            self._text.rules if self._text is not None else ())
        self.kinds = dict.fromkeys(self._names, "failure")
        # Raw-text prefilter: skip json.loads when no rule's literals all occur.
        self._prefilter = (
            None if any(not r.literals for r in rules) else tuple(r.literals for r in rules)
        )
        self._host = HostCache()

    @property
    def rules(self) -> tuple[str, ...]:
        return self._names

    def _document(self, record: Record) -> Mapping[str, Any] | Check:
        if isinstance(record.fields, dict) and "__CURSOR" not in record.fields:
            return record.fields  # a JSON lines source parsed it (journald's fields are not it)
        text = record.text
        if len(text) > MAX_LINE:
            return _TOO_LONG_T
        if self._strip_header and not text.startswith("{"):
            header = prefix.strip_syslog(text)
            if header is not None:
                if self._programs and header[3] not in self._programs:
                    return _NO_MATCH_T
                text = header[0]
        if not text.startswith("{"):
            if self._text is not None:
                return _TEXT_T
            return _NO_MATCH_T
        if self._prefilter is not None and not any(
            all(lit in text for lit in lits) for lits in self._prefilter
        ):
            return _NO_MATCH_T
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            # RecursionError: a deeply nested document; it is not an event we know.
            return _NO_MATCH_T
        return doc if isinstance(doc, dict) else _NO_MATCH_T

    def _check(self, record: Record, now: float) -> Check:
        doc = self._document(record)
        if doc is _TEXT_T:
            assert self._text is not None
            return self._text._check(record, now)
        if isinstance(doc, tuple):
            return doc
        for rule in self._rules:
            if rule.applies(doc):
                break
        else:
            return _NO_MATCH_T
        value = lookup(doc, rule.host)
        if not isinstance(value, str):
            return "bad-host", rule.name, None
        host = self._host(split_host_port(value) if rule.host_port else value)
        if host is None:
            return "bad-host", rule.name, None
        if not _outside(rule.outside, host):
            return "ignored", rule.name, None
        t: float | None = None
        for steps in rule.time:
            t = timeparse.parse_time_value(lookup(doc, steps))
            if t is not None:
                break
        if t is None:
            t = record.time if record.time is not None else now
        fields: dict[str, str] = {}
        for key, steps in rule.fields:
            v = lookup(doc, steps)
            if isinstance(v, str):
                fields[key] = v
            elif isinstance(v, bool):
                fields[key] = "true" if v else "false"
            elif isinstance(v, int | float):
                fields[key] = str(v)
        return "match", rule.name, Match(host, t, self.name, rule.name, fields)


class _Shifted(Lines):
    """``lines`` with every key path moved under ``key`` (text_rules of a JSON filter)."""

    def __init__(self, lines: Lines, key: str) -> None:
        self._inner = lines
        self._key = key

    def where(self, loc: Sequence[Any]) -> str:
        loc = list(loc)
        if loc and loc[0] == "rules":
            loc[0] = self._key
        return self._inner.where(loc)


# A JSON filter's marker for "not a JSON object: the text rules decide".
_TEXT_T: Final[Check] = ("nomatch", "", None)


def build(name: str, spec: TextFilterSpec | JsonFilterSpec, path: str, lines: Lines,
          accelerate: Accel = True, networks: Networks | None = None,
          mode: str | None = None) -> Filter:
    """The compiled filter for a validated spec; ``accelerate=False`` leaves the C++
    block scanner out (the results are the same: tests compare the two).
    ``networks`` fills the rules' ``outside`` sets; ``mode`` picks the rule set."""
    if isinstance(spec, TextFilterSpec):
        return TextFilter(name, spec, path, lines, accelerate, networks, mode)
    return JsonFilter(name, spec, path, lines, networks, mode, accelerate)
