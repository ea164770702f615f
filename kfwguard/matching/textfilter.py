"""The text filter format (``format: text``, the default): RE2 rules anchored at
the message start, after optional syslog/klog headers; its spec model and the
compiled filter. How a line is matched (the per-record reference path and the
C++ block scanner) is told in kfwguard/matching/engine.py; the file format in
spec.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import re2
from pydantic import BeforeValidator, Field

from kfwguard.addresses import IPAddress, IPNetwork, host_key, parse_host
from kfwguard.matching import patterns, prefix, timeparse
from kfwguard.matching.engine import (
    _HOST_CACHE_MAX,
    _NO_MATCH_T,
    _TOO_LONG_T,
    NO_ADDRESS,
    Accel,
    Check,
    Filter,
    Hit,
    HostCache,
    Spans,
    Status,
    _compile,
    _encode,
    _outside,
    _spans,
    select_rules,
    unwrap_repeat,
)
from kfwguard.matching.spec import (
    FilterError,
    FilterSpec,
    Lines,
    Networks,
    TextRuleSpec,
    _as_list,
    register_format,
)
from kfwguard.model import MAX_LINE, Match, Record, lines_fit
from kfwguard.timestamps import parse_rfc3339

if TYPE_CHECKING:
    from kfwguard.matching import _native


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




@register_format
class TextFilterSpec(FilterSpec):
    format: Literal["text"] = "text"
    # Headers that may precede the message, stripped in this order when present.
    prefix: Annotated[list[Literal["syslog", "klog"]], BeforeValidator(_as_list)] = Field(
        default_factory=list
    )
    # With a syslog header, the tag's program must be one of these (if given).
    programs: list[str] = Field(default_factory=list)
    rules: list[TextRuleSpec] = Field(min_length=1)
    ignoreregex: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)

    def build(self, name: str, path: str, lines: Lines, accelerate: bool = True,
              networks: Networks | None = None, mode: str | None = None) -> Filter:
        return TextFilter(name, self, path, lines, accelerate, networks, mode)


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
        full: list[str] = []
        for i, rule in enumerate(spec.rules):
            where = lines.where(["rules", i, "regex"])
            try:
                expanded = (_unaddressed(rule) if rule.kind == "unaddressed"
                            else patterns.expand_host(rule.regex))
                compiled = _compile(expanded)
                rule_set.Add(expanded)
            except (ValueError, re2.error) as exc:
                problems.append(f"{where} (rule {rule.name!r}): {exc}")
                continue
            index: dict[str, int] = compiled.groupindex
            full.append(expanded)
            rules.append(
                _TextRule(
                    name=rule.name,
                    index=len(rules),
                    spans=_spans(compiled),
                    # 0 (the whole match) for an unaddressed rule: no address
                    host=index.get("host", 0),
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
            rules, full, spec, ignore=ignore_pattern) if accelerate else None
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
            rule = rules[rule_id]
            if not rule.host:  # unaddressed: the scanner reported the whole match
                host: tuple[IPAddress, int] | None = (NO_ADDRESS, 0)
            else:
                text = data[host_start:host_end] if host_start >= 0 else b""
                try:
                    host = hosts[text]
                except KeyError:
                    host = self._new_host(text)
            if host is None:
                out.append((nl, "bad-host", name, None, 0, 0.0))
                continue
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
            elif not rule.host:
                out.append((nl, "session", name, None, 0, last_t))
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
        if rule.host:
            start, end = spans[rule.host]
            host = self._host(data[start:end].decode("ascii", "replace"))
            if host is None:
                return "bad-host", rule.name, None
        else:  # unaddressed: the session's origin may give it one
            host = NO_ADDRESS
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
        status: Status = ("success" if rule.kind == "success" else
                          "match" if rule.host else "session")
        return status, rule.name, Match(host, t, self.name, rule.name, fields)


def _unaddressed(rule: TextRuleSpec) -> str:
    """The regex of an ``unaddressed`` rule: it must name no address (a line that
    carries one is read by a rule that takes it), and can have no ``outside``."""
    if patterns.HOST_TAG in rule.regex or "(?P<host>" in rule.regex or "(?<host>" in rule.regex:
        raise ValueError("an unaddressed rule has no <HOST>: its session's origin gives the "
                         "address")
    if rule.outside is not None:
        raise ValueError("an unaddressed rule has no address to hold against 'outside'")
    return rule.regex


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


