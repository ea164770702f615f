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
``<HOST>`` (but a rule of kind ``unaddressed``, which has none); its text
must parse as an IPv4/IPv6 address. Other named groups
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

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kfwguard.yamlkeys import SAFE_LOADER, key_lines

if TYPE_CHECKING:
    from kfwguard.addresses import IPNetwork
    from kfwguard.matching.engine import Filter

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


F = TypeVar("F", bound="FilterSpec")


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
#   origin   counts nothing; names the session's address (sshd's VERBOSE
#            "Connection from IP port N") for its unaddressed lines
#   unaddressed  a line that carries no address (its regex has no <HOST>):
#            counts as ``once``, under the address its session's ``origin``
#            line named; nothing when no such line came (never a guess)
RuleKind = Literal["failure", "helper", "success", "once", "end", "origin", "unaddressed"]
RULE_KINDS: tuple[str, ...] = ("failure", "helper", "success", "once", "end", "origin",
                               "unaddressed")
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


class FilterSpec(_Model):
    """What every filter format shares. A format is one module holding its
    subclass (with ``format: Literal["tag"]``, unknown keys refused) whose
    ``build`` compiles it, registered with ``@register_format``; a new format
    is that module plus its import line in kfwguard/matching/formats.py."""

    description: str = ""
    # Named rule sets, like fail2ban's ``mode``: the first is the default; a jail
    # picks another with ``filter: NAME[mode=M]``.
    modes: list[Annotated[str, Field(pattern=RULE_NAME)]] = Field(default_factory=list)

    def rule_lists(self) -> list[tuple[str, Sequence[Any]]]:
        """Each list of rules under its key, in the order they are tried; their
        names are one namespace and their ``modes`` must be the filter's."""
        return [("rules", getattr(self, "rules", ()))]

    def build(self, name: str, path: str, lines: Lines, accelerate: bool = True,
              networks: Networks | None = None, mode: str | None = None) -> Filter:
        """The compiled filter (``accelerate=False``: without the C++ scanner)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it is built")


# Named address sets, filled from the config (spec.NETWORK_SETS).
Networks = Mapping[str, Sequence["IPNetwork"]]

# format: tag -> its spec model; the built-in formats register when the module
# named here is first imported (formats() and parse_spec do that).
_FORMATS: dict[str, type[FilterSpec]] = {}
_BUILTIN_FORMATS = "kfwguard.matching.formats"


def register_format(model: type[F]) -> type[F]:
    """Class decorator: ``model`` is the spec of the format its ``format:`` names."""
    field = model.model_fields.get("format")
    args = get_args(field.annotation) if field is not None else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__} needs a field  format: Literal['its-tag']")
    known = _FORMATS.get(args[0])
    if known is not None and known is not model:
        raise ValueError(f"filter format {args[0]!r} is already {known.__qualname__}")
    _FORMATS[args[0]] = model
    return model


def formats() -> dict[str, type[FilterSpec]]:
    """Every filter format by its ``format:`` tag, the built-in ones loaded."""
    importlib.import_module(_BUILTIN_FORMATS)
    return dict(_FORMATS)


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
    known = formats()
    model = known.get(fmt) if isinstance(fmt, str) else None
    if model is None:
        tags = " or ".join(repr(t) for t in known)  # in the order they registered
        raise FilterError(path, f"{lines.where(['format'])}: must be {tags}, not {fmt!r}")
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{lines.where(loc)}: {msg}")
        raise FilterError(path, problems) from None
    names: list[str] = []
    for key, rules in spec.rule_lists():
        for i, rule in enumerate(rules):
            if rule.name in names:
                raise FilterError(path, f"{lines.where([key, i, 'name'])}: "
                                  f"repeated rule {rule.name!r}")
            names.append(rule.name)
            for mode in rule.modes or ():
                if mode not in spec.modes:
                    raise FilterError(path, f"{lines.where([key, i, 'modes'])}: mode {mode!r} "
                                      f"is not one of the filter's modes {spec.modes}")
    return spec, lines
