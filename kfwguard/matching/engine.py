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

For batches (``scan``, ``match_many``) one unanchored RE2 search over the
joined lines finds the candidate lines, so lines no rule can match cost no
Python work at all; candidates then take the per-line path above.

For a block of raw lines (``scan_lines``: what a file source reads) text
filters go further. One RE2 DFA pass checks that every line has a plain
syslog header (else the block takes the per-record path whole); then one
hyperscan scan of the block, with every rule in one database, reports the
lines some rule could match, and only those lines run their rule's RE2
regex, for the verdict and the host. Other lines never become Python
objects. Where hyperscan is missing or cannot compile a rule, an RE2 search
for the lines whose message starts with a rule's literal head does the same
job, one call per candidate line.
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
from kfwguard.model import Match, Record, lines_fit

if TYPE_CHECKING:
    from kfwguard.matching import _native

# Longer lines are skipped (counted by callers), never matched: no real
# failure message is this long, and the cap bounds the work per line.
MAX_LINE: Final = 64 * 1024
_HOST_CACHE_MAX: Final = 16384  # per generation of a filter's host cache

# "success": a rule of kind success matched (sshd's "Accepted ..."): it never
# counts, and matching/sessions.py uses it to forgive the session's helpers.
Status = Literal["match", "nomatch", "ignored", "bad-host", "too-long", "success"]
# "message repeated N times: [ msg ]" (rsyslog) counts as N failures, at most this many.
REPEAT_MAX: Final = 100
# How a text filter may scan a block of lines: True = the fastest available
# (the C++ extension, else hyperscan), one of them by name, or False = RE2
# from Python alone. All give the same hits; tests compare them.
Accel = bool | Literal["native", "hyperscan"]


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


def _found(nl: int, rule: int, begin: int, host: tuple[int, int]) -> tuple[int, int, int, int]:
    """A block scanner's finding: the host's span in a message starting at ``begin``
    moved to block offsets ((-1, -1), a host group that took no part, stays)."""
    return (nl, rule, -1, -1) if host[0] < 0 else (nl, rule, begin + host[0], begin + host[1])


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

    def scan(self, records: Sequence[Record], now: float) -> list[tuple[int, Outcome]]:
        """Outcomes of ``records`` other than "nomatch", as (index, Outcome), in order.

        Gives exactly what ``evaluate`` gives per record; text filters do it
        faster for a batch.
        """
        return [(i, _outcome(c)) for i, c in self._scan(records, now)]

    def match_many(self, records: Sequence[Record], now: float) -> list[tuple[int, Match]]:
        """Matches among ``records`` as (index, Match): ``match`` for a batch."""
        return [(i, c[2]) for i, c in self._scan(records, now)
                if c[2] is not None and c[0] == "match"]

    def hits(self, records: Sequence[Record], now: float) -> list[Hit]:
        """``scan`` as compact tuples (the index of the record first), for the daemon."""
        return _expand(self._scan(records, now))

    def scan_lines(self, data: bytes, now: float) -> list[Hit]:
        """``scan`` for a block of raw lines separated by b"\\n", in order.

        Each line is what a text file source would make a record of (UTF-8
        with invalid bytes replaced, one trailing b"\\r" dropped, empty lines
        skipped); the hits are what ``evaluate`` gives those records, without
        building a record for lines that do not match.
        """
        records, ends = split_block(data)
        return _expand((ends[i], c) for i, c in self._scan(records, now))

    @property
    def block_engine(self) -> str:
        """What scans blocks of lines (``scan_lines``): "native" (C++), "hyperscan",
        "re2" (from Python), or "per-record"."""
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
        self._outside = any(r.outside is not None for r in rules)
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
        self._scanner = _scanner([patterns.expand_host(r.regex) for r in spec.rules]
                                 # a repeat wrapper hides the rule's "$" behind its "]"
                                 + ([r"message repeated \d+ times: \["]
                                    if "syslog" in spec.prefix else []))
        self._hosts: dict[bytes, tuple[IPAddress, int] | None] = {}
        self._hosts_old: dict[bytes, tuple[IPAddress, int] | None] = {}
        self._lines = _LineProgram.build(
            spec, self._heads, self._head_len, rules,
            [r.regex.replace(patterns.HOST_TAG, _HS_HOST) for r in spec.rules]
            if accelerate in (True, "hyperscan") else (),
            [patterns.expand_host(r.regex) for r in spec.rules]
            if accelerate in (True, "native") else (),
            ignore_pattern,
        )

    @property
    def rules(self) -> tuple[str, ...]:
        return self._names

    def _scan(self, records: Sequence[Record], now: float) -> list[tuple[int, Check]]:
        """Batch form of ``_check``: one RE2 pass over all lines finds the candidates.

        The scanner is a superset of the rules (unanchored, any line), so
        every line that could match is a candidate and then goes through
        ``evaluate`` itself: results are identical, and lines that cannot
        match cost no Python work at all.
        """
        texts = [r.text if len(r.text) <= MAX_LINE else "" for r in records]
        joined = "\n".join(texts)
        if self._scanner is None or joined.count("\n") != len(texts) - 1:
            return super()._scan(records, now)  # some text holds a newline itself
        buf = _encode(joined)
        search = self._scanner
        check = self._check
        out: list[tuple[int, Check]] = []
        for i, r in enumerate(records):
            if len(r.text) > MAX_LINE:
                out.append((i, _TOO_LONG_T))
        index, line_start, pos, end = 0, 0, 0, len(buf)
        while pos <= end:
            found = search(buf, pos)
            if found < 0:
                break
            index += buf.count(b"\n", line_start, found)
            line_start = buf.rfind(b"\n", 0, found) + 1
            result = check(records[index], now)
            if result[0] != "nomatch":
                out.append((index, result))
                if index >= 64 and len(out) * 3 > index:
                    # Mostly failures (an attack): the scan only adds a call per
                    # line now, so finish the batch line by line.
                    for j in range(index + 1, len(records)):
                        if len(records[j].text) <= MAX_LINE:
                            result = check(records[j], now)
                            if result[0] != "nomatch":
                                out.append((j, result))
                    break
            nl = buf.find(b"\n", found)
            if nl == -1:
                break
            # Resume at the next line, not the match end: a scanner match may
            # run into the next line ([^"] matches a newline) and hide one there.
            pos = nl + 1
        if len(out) > 1:
            out.sort(key=lambda item: item[0])
        return out

    def _block_program(self, data: bytes) -> _LineProgram | None:
        """The block program, if it may scan ``data``; None: the per-record path must."""
        program = self._lines
        if program is None:
            return None
        # A CR before the newline is dropped by the per-line decoding, which the
        # block program does not know about. (One byte is a memchr; b"\r\n" in
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
        if program.valid is not None and (b"message repeated " in data or b"]: [ID " in data):
            return None  # rsyslog's repeats and Solaris ids: the per-record path unwraps them
        # The C++ scanner checks each line's header itself (a line without the
        # plain header makes it refuse the block), in the same pass.
        if (program.native is None and program.valid is not None
                and program.valid(data, 0, len(data))[0][0] < 0):
            return None
        return program

    def track_lines(self, data: bytes, now: float, windows: _native.Windows,
                    oldest: float, latest: float,
                    on_full: Callable[[int, int, list[float]], list[float] | None],
                    sessions: _native.Sessions | None = None,
                    ) -> tuple[dict[str | None, int], int, int] | None:
        if self._outside or (sessions is None and self.paired):
            return None
        program = self._block_program(data)
        if program is None or program.native is None:
            return None

        def stamp_time(stamp: bytes) -> float:  # called only for a filter with a header
            t = timeparse.parse_syslog(stamp.decode(), now)
            return now if t is None else t

        found = program.native.track(data, windows, now, oldest, latest, stamp_time, on_full,
                                     sessions if self.paired else None)
        if found is None:  # a header of another shape: nothing was counted
            return None
        per_rule, ignored, stale = found
        counts: dict[str | None, int] = {self._names[i]: n for i, n in enumerate(per_rule) if n}
        return counts, ignored, stale

    def scan_lines(self, data: bytes, now: float) -> list[Hit]:
        program = self._block_program(data)
        if program is None:
            return super().scan_lines(data, now)
        end = len(data)
        if program.native is not None:
            return self._scan_native(data, now, program.native, program.valid is not None)
        if program.lines is not None:
            return self._scan_events(data, now, program.lines, program.valid is not None)
        search = program.candidates
        head_len = program.head_len
        heads = program.heads
        find = data.find
        found: list[tuple[int, int, int, int]] = []
        pos = 0
        while pos < end:
            at = search(data, pos, end)[0][1]
            if at < 0:
                break
            nl = find(b"\n", at)
            if nl < 0:
                nl = end
            pos = nl + 1
            begin = at - head_len
            message = data[begin:nl]
            for rule in heads[message[:head_len]]:
                spans = rule.spans(message, 0, len(message))
                if spans[0][0] >= 0:
                    found.append(_found(nl, rule.index, begin, spans[rule.host]))
                    break
        return self._hits(data, now, found, program.valid is not None)

    def _scan_events(self, data: bytes, now: float, lines: _HsLines,
                     header: bool) -> list[Hit]:
        """``scan_lines`` over a checked block, from hyperscan's events: only the
        reported lines become Python work, one RE2 call each."""
        events = lines.events(data)
        shift = lines.shift
        mask = (1 << shift) - 1
        rules = lines.calls
        rfind = data.rfind
        find = data.find
        found: list[tuple[int, int, int, int]] = []
        done = -1
        for event in events:
            nl = event >> shift
            if nl == done:
                continue  # an earlier rule (in file order) matched this line
            begin = rfind(b"\n", 0, nl) + 1
            if header:  # the checked header: stamp (15), host up to a space, tag to ": "
                begin = find(b": ", find(b" ", begin + 16)) + 2
            rule_id = event & mask
            run, host_group = rules[rule_id]
            spans = run(data[begin:nl], 0, nl - begin)
            if spans[0][0] >= 0:
                done = nl
                found.append(_found(nl, rule_id, begin, spans[host_group]))
        return self._hits(data, now, found, header)

    def _scan_native(self, data: bytes, now: float, native: _native.Matcher,
                     header: bool) -> list[Hit]:
        """``scan_lines`` over a checked block by the C++ scanner: Python sees only the
        lines that matched, with their rule and the host's span."""
        try:
            found = native.scan(data)
        except ValueError:  # a header of another shape: the per-record path decides
            return Filter.scan_lines(self, data, now)
        return self._hits(data, now, found, header)

    def _hits(self, data: bytes, now: float, found: list[tuple[int, int, int, int]],
              header: bool) -> list[Hit]:
        """The hits of a checked block from the lines a scanner found a rule match
        on: (line end, rule index, host start, host end; (-1, -1) for a host
        group that took no part), offsets into the block. Every block scanner
        ends here, so the host cache, ignoreregex and stamps work one way."""
        out: list[Hit] = []
        names = self._names
        rfind = data.rfind
        find = data.find
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
                message = data[find(b": ", find(b" ", start + 16)) + 2 : nl] if header else (
                    data[start:nl])
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
        if self._lines is None:
            return "per-record"
        if self._lines.native is not None:
            return "native"
        return "hyperscan" if self._lines.lines is not None else "re2"

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
                t = timeparse.parse_rfc3339(stamp)
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


_MONTH_RE: Final = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
# A syslog header exactly as prefix.strip_syslog reads it, for whole-second
# stamps: host up to 255 characters (not ending in ":": that is a tag without
# a host, read differently), then a tag without spaces or colons up
# to the first ": ".
_STAMP_HOST_RE: Final = (
    _MONTH_RE + " [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9] [!-~]{0,254}[!-9;-~] "
)
_TAG_MAX: Final = 100  # strip_syslog allows 127; tags longer than this take the slow path
_ANY_TAG_RE: Final = f"[!-9;-~]{{1,{_TAG_MAX}}}: "
_TAG_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/@"
)


def _raw(pattern: str, anchor_name: str, *, never_nl: bool = False) -> Callable[..., Spans]:
    options = re2.Options()
    options.never_nl = never_nl
    options.never_capture = True
    options.max_mem = 64 << 20  # a bigger DFA cache keeps long scans off the NFA
    regexp = re2.compile(pattern, options)
    raw = getattr(regexp, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), anchor_name, None)
    if raw is None or anchor is None or not hasattr(raw, "Match"):
        raise re2.error("no raw RE2 object in this re2 binding")
    call = raw.Match

    def run(data: bytes, pos: int, end: int) -> Spans:
        spans: Spans = call(anchor, data, pos, end)
        return spans

    return run


@dataclass(frozen=True, slots=True)
class _LineProgram:
    """How a text filter reads a block of lines without a record per line.

    ``valid`` (one DFA pass over the block, no captures) says whether every
    line is either empty or starts with a syslog header of the exact shape
    below; only then is ``candidates`` trusted. ``candidates`` finds, in one
    call per line, the next line whose header names an allowed program and
    whose message starts with one of the rules' literal heads (all of one
    length, so the match end says where the message starts). That is exactly
    the set of lines the per-line path would try a rule on; each then runs
    the rules of its head, as the per-line path does. A block that is not
    ``valid`` (other stamp forms, lines without a header) takes the per-line
    path whole.
    """

    valid: Callable[[bytes, int, int], Spans] | None
    candidates: Callable[[bytes, int, int], Spans]
    head_len: int
    heads: dict[bytes, tuple[_TextRule, ...]]
    # The hyperscan form of ``candidates``, when hyperscan can compile it.
    lines: _HsLines | None = None
    # The whole scan in C++ (kfwguard.matching._native), when it was built.
    native: _native.Matcher | None = None

    @staticmethod
    def build(spec: TextFilterSpec, heads: dict[str, tuple[_TextRule, ...]],
              head_len: int, rules: Sequence[_TextRule] = (),
              bodies: Sequence[str] = (), full: Sequence[str] = (),
              ignore: str | None = None) -> _LineProgram | None:
        if not head_len or not all(h.isascii() for h in heads):
            return None
        head_re = "(?:" + "|".join(re2.escape(h) for h in heads) + ")"
        try:
            if not spec.prefix:
                return _LineProgram(None, _raw("(?m)^" + head_re, "UNANCHORED"), head_len,
                                    {h.encode(): r for h, r in heads.items()},
                                    *_accelerators(rules, bodies, full, (), header=False,
                                                   hs_header="", ignore=ignore))
            if list(spec.prefix) != ["syslog"]:
                return None  # klog and mixed headers: the per-line path
            if any(h[:3] in _MONTHS_SET for h in heads):
                return None  # a head that looks like a stamp: lines could be misread
            if spec.programs:
                if any(not p or not set(p) <= _TAG_CHARS for p in spec.programs):
                    return None
                tag = "(?:" + "|".join(
                    re2.escape(p) + rf"(?:\[[!-9;-~]{{0,{_TAG_MAX - len(p) - 1}}})?"
                    for p in spec.programs if len(p) < _TAG_MAX
                ) + "): "
                # The same for hyperscan: unbounded, as ``valid`` bounds the tag.
                hs_tag = "(?:" + "|".join(
                    re2.escape(p) for p in spec.programs if len(p) < _TAG_MAX
                ) + r")(?:\[[!-9;-~]*)?: "
            else:
                tag = _ANY_TAG_RE
                hs_tag = "[!-9;-~]+: "
            line = _STAMP_HOST_RE + _ANY_TAG_RE + "[^\n]*"
            valid = _raw("(?:(?:" + line + ")?\n)*(?:" + line + ")?", "ANCHOR_BOTH")
            candidates = _raw("(?m)^" + _STAMP_HOST_RE + tag + head_re, "UNANCHORED",
                              never_nl=True)
        except re2.error:
            return None
        return _LineProgram(valid, candidates, head_len,
                            {h.encode(): r for h, r in heads.items()},
                            *_accelerators(rules, bodies, full, spec.programs, header=True,
                                           hs_header=_HS_HEADER + hs_tag, ignore=ignore))


# A superset of _STAMP_HOST_RE for hyperscan, whose bounded repeats are slow:
# ``valid`` has already checked the exact shape of every line of the block.
_HS_HEADER: Final = "[A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9] [!-~]+ "
# A superset of patterns.HOST_PATTERN (its characters, any number): it halves
# hyperscan's compile time, and RE2 checks the exact host on reported lines.
_HS_HOST: Final = r"[0-9A-Fa-f:.\[\]]+"


def _block_safe(body: str) -> bool:
    """True when ``body`` (a rule without its leading ``^``) means the same inside a
    multi-line buffer: no ``^``, ``\\A``, ``\\z`` or flag groups, whose meaning
    would change there (a ``$`` only gains line ends, which is harmless)."""
    return not (
        "^" in body.replace("[^", "") or "\\A" in body or "\\z" in body or "(?" in (
            body.replace("(?:", "").replace("(?P<", "").replace("(?<", "")
        )
    )


@dataclass(frozen=True, slots=True)
class _HsLines:
    """All of a text filter's rules in one hyperscan database, scanned over a block.

    Pattern i is ``^`` + header + rule i + ``[^\\n]*$`` in multi-line mode, so
    hyperscan reports at most one event per (rule, line), at the line's end,
    for every line on which rule i could match the message (and for a few
    more: the host is any run of address characters, a final ``$`` is
    dropped, a class like ``[^x]`` may run across lines in hyperscan, and its
    character classes differ from RE2's at the edges). Each reported line
    then runs rule i's own RE2 regex on the message, exactly as the per-line
    path does, so the result is RE2's; hyperscan only saves the calls for
    the lines that cannot match, all in one C loop per block.
    """

    database: Any
    calls: tuple[tuple[Callable[[bytes, int, int], Spans], int], ...]  # run, host group
    shift: int

    @staticmethod
    def build(header: str, rules: Sequence[_TextRule],
              bodies: Sequence[str]) -> _HsLines | None:
        if not rules or len(rules) != len(bodies):
            return None
        try:
            import hyperscan
        except ImportError:  # a platform without a wheel: the RE2 candidates serve
            return None
        expressions = []
        for body in bodies:
            body = body[1:] if body.startswith("^") else body
            if body.endswith("$") and (len(body) - len(body[:-1].rstrip("\\"))) % 2:
                # Rule i + anything to the line end is a superset of rule i + "$"
                # (hyperscan refuses a "$" before more pattern).
                body = body[:-1]
            hs_body = patterns.for_hyperscan(patterns.strip_group_names(body))
            if hs_body is None or not _block_safe(body):
                return None
            expressions.append(("^" + header + "(?:" + hs_body + ")[^\n]*$").encode())
        database = hyperscan.Database()
        try:
            database.compile(
                expressions=expressions, ids=list(range(len(expressions))),
                elements=len(expressions),
                flags=hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_UTF8,
            )
        except hyperscan.error:  # syntax hyperscan lacks (\\C, \\pN...): RE2 alone
            return None
        return _HsLines(database, tuple((r.spans, r.host) for r in rules),
                        max(1, (len(rules) - 1).bit_length()))

    def events(self, data: bytes) -> list[int]:
        """(line end << shift | rule index) for each reported line, ascending: the
        lines in order, and on one line the rules in file order."""
        found: list[int] = []
        add = found.append
        shift = self.shift

        def on_match(rule: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
            add(end << shift | rule)

        self.database.scan(data, match_event_handler=on_match)
        found.sort()
        return found


def _accelerators(rules: Sequence[_TextRule], bodies: Sequence[str], full: Sequence[str],
                  programs: Sequence[str], *, header: bool,
                  hs_header: str, ignore: str | None,
                  ) -> tuple[_HsLines | None, _native.Matcher | None]:
    """(hyperscan lines, C++ scanner) for a block program: the C++ scanner when it
    was built, else hyperscan - never both, as the daemon would load and compile
    hyperscan (about 5 MiB, 0.05 s per filter) for nothing."""
    native = _native_matcher(rules, full, programs, header=header, ignore=ignore)
    return (None if native is not None else _HsLines.build(hs_header, rules, bodies)), native


def _native_matcher(rules: Sequence[_TextRule], full: Sequence[str],
                    programs: Sequence[str], *, header: bool, ignore: str | None,
                    ) -> _native.Matcher | None:
    """The C++ block scanner for these rules (``full``: as RE2 compiles them; ``ignore``:
    the joined ignoreregex), or None where the extension was not built (no
    compiler or RE2 headers)."""
    if not rules or len(rules) != len(full) or any(not p.isascii() for p in programs):
        return None
    try:
        from kfwguard.matching import _native
    except ImportError:
        return None
    try:
        return _native.Matcher([p.encode() for p in full], [r.host for r in rules],
                               [p.encode() for p in programs], header,
                               None if ignore is None else ignore.encode())
    except ValueError:  # RE2 in C++ refused what the binding took: stay in Python
        return None


_MONTHS_SET: Final = frozenset(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
)


def _scanner(rules: Sequence[str]) -> Callable[[bytes, int], int] | None:
    """Start offset of the first place at or after ``pos`` where any rule could match.

    None when a rule uses an anchor whose meaning would change in a
    multi-line buffer (``^`` inside, ``\\A``, ``\\z``, flag groups): then the
    scanner might miss a line, and the filter scans line by line instead.
    """
    parts = []
    for rule in rules:
        body = rule[1:] if rule.startswith("^") else rule
        if "^" in body.replace("[^", "") or "\\A" in body or "\\z" in body or "(?" in (
            body.replace("(?:", "").replace("(?P<", "").replace("(?<", "")
        ):
            return None
        parts.append(patterns.strip_group_names(body))
    options = re2.Options()
    options.never_capture = True
    options.max_mem = 64 << 20  # a bigger DFA cache keeps long scans off the NFA
    try:
        scanner = re2.compile("(?m)(?:" + "|".join(parts) + ")", options)
    except re2.error:
        return None
    raw = getattr(scanner, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    if raw is not None and anchor is not None and hasattr(raw, "Match"):
        call = raw.Match

        def fast(data: bytes, pos: int) -> int:
            start: int = call(anchor, data, pos, len(data))[0][0]
            return start

        return fast

    def slow(data: bytes, pos: int) -> int:
        m = scanner.search(data, pos)
        return -1 if m is None else int(m.start())

    return slow


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
    """The compiled filter for a validated spec; ``accelerate=False`` leaves hyperscan
    out (the results are the same: tests compare the two). ``networks`` fills the
    rules' ``outside`` sets; ``mode`` picks the filter's rule set."""
    if isinstance(spec, TextFilterSpec):
        return TextFilter(name, spec, path, lines, accelerate, networks, mode)
    return JsonFilter(name, spec, path, lines, networks, mode, accelerate)
