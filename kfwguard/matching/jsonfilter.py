"""The JSON filter format (``format: json``): field conditions over one JSON
object per line (the API server's audit log, zap loggers), with text rules for
the lines that are not an object; its spec model and the compiled filter."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field

from kfwguard.addresses import IPNetwork, split_host_port
from kfwguard.matching import prefix, timeparse
from kfwguard.matching.engine import (
    _NO_MATCH_T,
    _TOO_LONG_T,
    Accel,
    Check,
    Filter,
    HostCache,
    _compile,
    _outside,
    select_rules,
)
from kfwguard.matching.jsonpath import MISSING, Step, json_equal, lookup, parse_path
from kfwguard.matching.spec import (
    RULE_NAME,
    FilterError,
    FilterSpec,
    JsonScalar,
    Lines,
    Networks,
    TextRuleSpec,
    _as_list,
    _Model,
    register_format,
)
from kfwguard.matching.textfilter import TextFilter, TextFilterSpec
from kfwguard.model import MAX_LINE, Match, Record


class JsonRuleSpec(_Model):
    name: str = Field(pattern=RULE_NAME)
    # path -> value, or a list of values any of which is accepted
    match: dict[str, JsonScalar | list[JsonScalar]] = Field(default_factory=dict)
    # paths that must be missing or null
    absent: list[str] = Field(default_factory=list)
    # path -> RE2 pattern searched in the string value (a number is compared as
    # its decimal text); all must hold
    regex: dict[str, str] = Field(default_factory=dict)
    # path -> value(s) that make the rule not apply
    exclude: dict[str, JsonScalar | list[JsonScalar]] = Field(default_factory=dict)
    host: str | None = None
    host_port: bool | None = None
    time: Annotated[list[str] | None, BeforeValidator(_as_list)] = None
    fields: dict[str, str] = Field(default_factory=dict)
    modes: list[str] | None = None
    outside: Literal["control_plane"] | None = None


@register_format
class JsonFilterSpec(FilterSpec):
    format: Literal["json"]
    # A syslog header before the JSON object is stripped (zap behind syslog);
    # with one, the tag's program must be one of ``programs`` (if given).
    prefix: Annotated[list[Literal["syslog"]], BeforeValidator(_as_list)] = Field(
        default_factory=list
    )
    programs: list[str] = Field(default_factory=list)
    # Regex rules for the lines that are not a JSON object (an older text logger
    # of the same program), as in a text filter.
    text_rules: list[TextRuleSpec] = Field(default_factory=list)
    host: str | None = None
    host_port: bool = False
    time: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)
    fields: dict[str, str] = Field(default_factory=dict)
    rules: list[JsonRuleSpec] = Field(min_length=1)

    def rule_lists(self) -> list[tuple[str, Sequence[Any]]]:
        return [("rules", self.rules), ("text_rules", self.text_rules)]

    def build(self, name: str, path: str, lines: Lines, accelerate: bool = True,
              networks: Networks | None = None, mode: str | None = None) -> Filter:
        return JsonFilter(name, self, path, lines, networks, mode, accelerate)


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


