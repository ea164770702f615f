r"""The filter file format: YAML in, validated models out, errors with file, line and key.

One filter per file; its name is the file stem. Unknown keys are refused.

Text filters::

    description: OpenSSH authentication failures
    format: text                 # default
    prefix: [syslog]             # optional headers, each stripped when present:
                                 #   syslog: "Nov 26 04:57:45 host prog[pid]: " (or an
                                 #     RFC 3339 stamp first)
                                 #   klog: "I1126 04:57:45.123456 1 f.go:1] "
    programs: [sshd]             # optional: with a syslog header, the tag must be one of these
    modes: [normal, aggressive]  # optional rule sets; the first is the default,
                                 # a jail picks another with filter: NAME[mode=M]
    rules:                       # tried in order; the first that matches wins
      - name: failed-auth
        regex: '^Failed password for (?P<user>.*) from <HOST> port \d+ ssh2$'
      - name: pam-failure
        regex: '^pam_unix\(sshd:auth\): authentication failure; .* rhost=<HOST>$'
        kind: helper             # failure (default) | helper | success | once | end:
                                 # how the hit counts per session (RuleKind below)
        modes: [aggressive]      # only in these modes
        outside: control_plane   # count only addresses outside this set (none
                                 # while it is unknown)
    ignoreregex: ['...']         # searched in the message of a matched line; vetoes it

A named group ``repeat`` is not needed for rsyslog's ``message repeated N
times: [ msg ]``: after a syslog header the wrapper is unwrapped and the hit
counts N times (at most engine.REPEAT_MAX).

Rules are RE2 patterns matched at the start of the message (a leading ^
is implied) over the message after the headers. Each has exactly one
``<HOST>``; its text must parse as an IPv4/IPv6 address. Other named groups
become ``Match.fields``. The event time is read from the header (klog before
syslog), else the record's time, else ``now``.

JSON filters (one JSON object per line)::

    format: json
    host: sourceIPs[-1]          # field path of the address (default for all rules)
    host_port: false             # true: the value is IP:PORT / [IPv6]:PORT
    time: [requestReceivedTimestamp, stageTimestamp]  # first usable path wins
    fields: {uri: requestURI}    # copied into Match.fields
    rules:
      - name: unauthenticated
        match: {stage: ResponseStarted, responseStatus.code: [401]}  # all must hold;
                                                                     # a list is any-of
        absent: [user.username]  # missing or null
        regex: {requestURI: '^/api/v1/namespaces/[^/]+/secrets'}  # RE2, searched
        exclude: {requestURI: [/healthz]}  # any equal value vetoes
        # host, host_port, time, fields, modes and outside may be given per rule too

    prefix: [syslog]             # JSON after an optional syslog header (programs: as above)
    text_rules: [...]            # text rules for the lines that are not a JSON object

Paths: ``a.b``, ``list[0]``, ``list[-1]``, ``annotations["k8s.io/key"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from kfwguard.yamlkeys import SAFE_LOADER, key_lines

RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

JsonScalar = str | bool | int | float | None


class FilterError(Exception):
    """A filter that cannot be used, with enough context for an operator to fix it."""

    def __init__(self, path: str, problems: str | Sequence[str]) -> None:
        self.path = path
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {p}" for p in self.problems)


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What a rule's match means for the count (matching/sessions.py settles them
# per session, i.e. per sshd[PID]):
#   failure  counts; settles the session's pending helpers as part of it
#   helper   counts only if neither a failure nor a success of the same
#            session follows (a PAM line before sshd's own "Failed ..." line)
#   success  counts nothing and cancels the session's pending helpers
#            ("Accepted ... for U from IP")
#   once     counts only if the session has nothing counted or pending yet
#            (a pre-auth disconnect after failures already counted)
#   end      counts nothing; the session is over, its pending helpers count now
RuleKind = Literal["failure", "helper", "success", "once", "end"]
RULE_KINDS: tuple[str, ...] = ("failure", "helper", "success", "once", "end")
# Named address sets a rule may exclude (``outside``); the daemon fills them
# from the config (control_plane: baseline.control_plane_cidrs).
NETWORK_SETS: tuple[str, ...] = ("control_plane",)


class TextRuleSpec(_Model):
    name: str = Field(pattern=RULE_NAME)
    regex: str = Field(min_length=1)
    kind: RuleKind = "failure"
    # The filter modes this rule is part of (all when not given).
    modes: list[str] | None = None
    # Count only addresses outside this named set, and nothing while the set
    # is unknown (empty): e.g. etcd's peers, which must never be banned.
    outside: Literal["control_plane"] | None = None


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


class _FilterSpec(_Model):
    description: str = ""
    # Named rule sets, like fail2ban's ``mode``: the first is the default; a jail
    # picks another with ``filter: NAME[mode=M]``.
    modes: list[Annotated[str, Field(pattern=RULE_NAME)]] = Field(default_factory=list)


class TextFilterSpec(_FilterSpec):
    format: Literal["text"] = "text"
    # Headers that may precede the message, stripped in this order when present.
    prefix: Annotated[list[Literal["syslog", "klog"]], BeforeValidator(_as_list)] = Field(
        default_factory=list
    )
    # With a syslog header, the tag's program must be one of these (if given).
    programs: list[str] = Field(default_factory=list)
    rules: list[TextRuleSpec] = Field(min_length=1)
    ignoreregex: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)


class JsonFilterSpec(_FilterSpec):
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


FilterSpec = TextFilterSpec | JsonFilterSpec


class Lines:
    """Maps a key path in the YAML document to its line, for error messages."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[tuple[Any, ...], int] | None = None

    def where(self, loc: Sequence[Any]) -> str:
        """``line N: rules[2].regex`` for the deepest part of ``loc`` found in the file."""
        if self._lines is None:  # only an error needs them: a second parse
            self._lines = key_lines(self._text)
        line = None
        found: list[Any] = []
        for part in loc:
            if (*found, part) not in self._lines:
                break
            found.append(part)
            line = self._lines[tuple(found)]
        key = ""
        for p in loc:
            key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
        key = key or "(top level)"
        return f"line {line}: {key}" if line else key


def parse_spec(text: str, path: str) -> tuple[FilterSpec, Lines]:
    """Validate filter YAML ``text``; FilterError names file, line and key."""
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise FilterError(path, f"{where}invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise FilterError(path, "a filter file must be a mapping (description, format, rules …)")
    lines = Lines(text)
    fmt = data.get("format", "text")
    model: type[TextFilterSpec] | type[JsonFilterSpec]
    if fmt == "text":
        model = TextFilterSpec
    elif fmt == "json":
        model = JsonFilterSpec
    else:
        raise FilterError(path, f"{lines.where(['format'])}: must be 'text' or 'json', not {fmt!r}")
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{lines.where(loc)}: {msg}")
        raise FilterError(path, problems) from None
    names = [r.name for r in spec.rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise FilterError(path, f"{lines.where(['rules', i, 'name'])}: repeated rule {name!r}")
    if isinstance(spec, JsonFilterSpec):
        for i, text_rule in enumerate(spec.text_rules):
            if text_rule.name in names:
                raise FilterError(path, f"{lines.where(['text_rules', i, 'name'])}: "
                                  f"repeated rule {text_rule.name!r}")
            names.append(text_rule.name)
    rule_list: list[TextRuleSpec | JsonRuleSpec] = list(spec.rules)
    all_rules: list[tuple[str, int, list[str] | None]] = [
        ("rules", i, r.modes) for i, r in enumerate(rule_list)]
    if isinstance(spec, JsonFilterSpec):
        all_rules += [("text_rules", i, r.modes) for i, r in enumerate(spec.text_rules)]
    for key, i, rule_modes in all_rules:
        for mode in rule_modes or ():
            if mode not in spec.modes:
                raise FilterError(path, f"{lines.where([key, i, 'modes'])}: mode {mode!r} "
                                  f"is not one of the filter's modes {spec.modes}")
    return spec, lines
