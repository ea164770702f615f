"""Helpers for testing filters: run one over lines, check annotated sample logs.

Sample log format (``filters/samples/<filter>.log`` or ``.jsonl``): every
log line is preceded by exactly one annotation line saying what the filter
must make of it::

    ## free text: a comment, ignored
    # match: failed-password host=203.0.113.5 user=root
    Nov 26 04:57:45 node sshd[123]: Failed password for root from 203.0.113.5 port 22 ssh2
    # nomatch
    Nov 26 04:57:46 node sshd[123]: Accepted password for root from 10.0.0.1 port 22 ssh2

Annotations: ``# match: RULE [key=value …]``, ``# nomatch``,
``# ignored: RULE`` (a rule matched but ignoreregex or an ``outside``
condition vetoed it), ``# bad-host: RULE`` (a rule matched but the host text
is not an address) and ``# success: RULE`` (a ``success`` rule matched: it
forgives, never counts) and ``# session: RULE`` (an ``unaddressed`` rule
matched a line without an address: only its session's origin can count it).

A filter with modes is checked in each of them: RULE may be a list
``a|b``, and the line must give the first of those rules that the mode has,
or nothing when the mode has none of them.
``host`` and ``time`` (RFC 3339) are compared with the match; any other key
is compared with the named group / field of that name. Values use shell
quoting (``user="x from 6.6.6.6"``). Blank lines are skipped.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.abc import Traversable
from pathlib import Path

from kfwguard.addresses import parse_host
from kfwguard.matching.engine import Filter
from kfwguard.model import Match, Record
from kfwguard.timestamps import parse_rfc3339

_STATUSES = ("match", "nomatch", "ignored", "bad-host", "success", "session")


def run_filter(
    filter: Filter, lines: Iterable[str], now: float
) -> list[tuple[int, Match]]:
    """Matches of ``filter`` over ``lines`` as (1-based line number, Match)."""
    out: list[tuple[int, Match]] = []
    for number, line in enumerate(lines, 1):
        m = filter.match(Record(text=line.rstrip("\r\n")), now)  # success lines are no match
        if m is not None:
            out.append((number, m))
    return out


@dataclass(frozen=True)
class Expectation:
    """What a sample line must give: a status, the rule, and values to compare."""

    status: str
    rule: str | None = None
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One annotated sample line."""

    line: int
    text: str
    expect: Expectation


def parse_annotation(text: str) -> Expectation:
    """``# match: rule host=1.2.3.4`` → Expectation; ValueError if malformed."""
    body = text[1:].strip()
    head, _, rest = body.partition(":")
    head = head.strip()
    if head not in _STATUSES:
        raise ValueError(f"unknown annotation {head!r}; use one of {', '.join(_STATUSES)}")
    if head == "nomatch":
        if rest.strip():
            raise ValueError("'# nomatch' takes nothing after it")
        return Expectation("nomatch")
    words = shlex.split(rest)
    if not words or "=" in words[0]:
        raise ValueError(f"'# {head}:' needs the rule name first")
    values: dict[str, str] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        values[key] = value
    return Expectation(head, words[0], values)


def read_samples(path: Path | Traversable) -> list[Sample]:
    """The annotated lines of a sample file; ValueError names the line of any problem."""
    samples: list[Sample] = []
    pending: tuple[int, Expectation] | None = None
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("##"):
            continue
        if line.startswith("#"):
            if pending is not None:
                raise ValueError(f"{path}:{pending[0]}: annotation without a log line after it")
            try:
                pending = (number, parse_annotation(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            continue
        if pending is None:
            raise ValueError(f"{path}:{number}: log line without an annotation before it")
        samples.append(Sample(number, line, pending[1]))
        pending = None
    if pending is not None:
        raise ValueError(f"{path}:{pending[0]}: annotation without a log line after it")
    return samples


def check_sample(filter: Filter, sample: Sample, now: float) -> list[str]:
    """Differences between what ``filter`` makes of ``sample`` and its annotation."""
    where = f"line {sample.line}"
    outcome = filter.evaluate(Record(text=sample.text), now)
    exp = sample.expect
    if exp.rule is not None:
        active = [r for r in exp.rule.split("|") if r in filter.rules]
        if not active:  # this mode has none of the rules: the line is left alone
            exp = Expectation("nomatch")
        else:
            exp = Expectation(exp.status, active[0], exp.values)
    if filter.mode is not None:
        where += f" (mode {filter.mode})"
    got = f"{outcome.status}" + (f": {outcome.rule}" if outcome.rule else "")
    want = f"{exp.status}" + (f": {exp.rule}" if exp.rule else "")
    if got != want:
        return [f"{where}: expected {want}, got {got}"]
    m = outcome.match
    if m is None:
        return []
    problems = []
    for key, value in exp.values.items():
        if key == "host":
            ok = parse_host(value) == m.host
            actual = str(m.host)
        elif key == "time":
            t = parse_rfc3339(value)
            ok = t is not None and abs(t - m.time) < 1e-5
            actual = repr(m.time)
        else:
            actual = repr(m.fields.get(key))
            ok = m.fields.get(key) == value
        if not ok:
            problems.append(f"{where}: {key}: expected {value!r}, got {actual}")
    return problems


def check_samples(filter: Filter, path: Path | Traversable, now: float) -> list[str]:
    """Every problem with ``filter`` on the samples at ``path``, including rules never matched."""
    problems: list[str] = []
    seen: set[str] = set()
    for sample in read_samples(path):
        problems.extend(check_sample(filter, sample, now))
        if (sample.expect.status in ("match", "success", "ignored", "session")
                and sample.expect.rule):
            seen.update(sample.expect.rule.split("|"))
    for rule in filter.rules:
        if rule not in seen:
            problems.append(f"rule {rule!r} has no matching sample")  # in any mode
    return [f"{path}: {p}" for p in problems]
