"""Shipped filters on real logs nobody on this project wrote: ``python -m bench.reallogs``.

Reads the corpus under tests/data/reallogs/ (sources and licences in its
README.md), runs each filter line by line in each mode, and prints per
corpus, filter and mode:

* recall: of the lines the corpus's own expectation says are an attack on
  this address, the share the filter counts;
* false positives: lines the expectation says are not an attack (or that
  the default config must leave alone) that the filter counts;
* wrong hosts: counted lines whose address is not the expected one;
* misses by reason, so a figure can be read: a line without any address
  (fail2ban pairs those over several lines), a host name instead of an
  address, a message kind out of scope.

Recall and wrong hosts are per line: does a rule read the line, with the
expected address (kinds success and end are not reads)? False positives are
counted as the daemon counts: the whole corpus runs as one log through the
filter and the session settlement (matching/sessions.py), so a PAM line
paired with sshd's own line, or forgiven by "Accepted", is not counted, and
a held line that nothing settles counts on its own line.
Expectations are the other tools' own, with the disagreements listed in
DISAGREE below.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kfwguard.addresses import parse_host
from kfwguard.matching import Filter, load_filter
from kfwguard.matching.testfilter import run
from kfwguard.matching.testing import check_samples, read_samples
from kfwguard.model import Record

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "reallogs"
NOW = 1795690800.0  # 2026-11-26, after every stamp in the corpus

# Lines of other tools' corpora where we decide otherwise, and why.
DISAGREE: dict[str, str] = {
    # fail2ban expects 127.0.0.1; OpenSSH 7.4+ writes nothing after "ssh2" for a
    # password failure, so the user name is "test from 127.0.0.1 port 58946 ssh2:"
    # and sshd's address is the last one.
    "Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from "
    "10.10.1.2 port 55555 ssh2": "10.10.1.2",
}


@dataclass
class Expect:
    line: str
    host: str | None  # None: must not be counted
    modes: frozenset[str] | None = None  # None: every mode


@dataclass
class Score:
    expected: int = 0
    counted: int = 0
    false_pos: int = 0
    wrong_host: int = 0
    missed: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)

    @property
    def recall(self) -> str:
        return f"{100 * self.counted / self.expected:.0f} %" if self.expected else "n/a"


def _fail2ban(path: Path) -> Iterator[Expect]:
    """fail2ban's failJSON annotations, with the modes of each filterOptions block."""
    modes: frozenset[str] | None = None
    pending: dict[str, object] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("# filterOptions:"):
            opts = json.loads(raw.split(":", 1)[1])
            opts = opts if isinstance(opts, list) else [opts]
            found = {o.get("mode", "normal") for o in opts if isinstance(o, dict)}
            modes = frozenset(found) if found else None
            continue
        if raw.startswith("# failJSON:"):
            pending = json.loads(raw.split(":", 1)[1])
            continue
        if raw.startswith("#") or not raw.strip() or pending is None:
            continue
        constraint = str(pending.get("constraint", ""))
        these = modes
        if "== 'aggressive'" in constraint:
            these = frozenset({"aggressive"})
        elif "!= 'aggressive'" in constraint and modes is not None:
            these = modes - {"aggressive"}
        host = pending.get("host") if pending.get("match") else None
        message = raw.split(": ", 1)[1] if ": " in raw else raw
        for text, decided in DISAGREE.items():
            if message.endswith(text):
                host = decided
        yield Expect(raw, str(host) if host is not None else None, these)
        pending = None


def _sshguard(path: Path) -> Iterator[Expect]:
    """sshguard's tests: a line, then "service host family danger" or "*"."""
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if not x.startswith("####")]
    i = 0
    while i + 2 < len(lines):
        text, verdict = lines[i], lines[i + 1]
        i += 3
        host = verdict.split()[1] if verdict != "*" else None
        yield Expect(text, host)


def _plain(path: Path, host: str) -> Iterator[Expect]:
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.strip():
            yield Expect(text, host)


def _why_missed(text: str) -> str:
    if not re.search(r"\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*", text):
        return "no address on the line"
    if re.search(r"from [a-z][\w.-]*\.[a-z]{2,}(?:\s|$)", text):
        return "host name, not an address"
    if "%" in text:
        return "address with a zone index"
    return "message kind not read"


def counted_lines(flt: Filter, lines: list[str]) -> dict[int, list[str]]:
    """Line number (from 1) -> the addresses counted for it, after the session
    settlement the daemon applies (a PAM line paired with sshd's own line, or
    forgiven by "Accepted", counts nothing; a held line counts on its own line)."""
    data = ("\n".join(lines) + "\n").encode()
    out = io.StringIO()
    run(flt, io.BytesIO(data), "lines", True, out, NOW)  # test-filter --json: the daemon's path
    counted: dict[int, list[str]] = {}
    for row in out.getvalue().splitlines():
        hit = json.loads(row)
        counted.setdefault(hit["line"], []).append(hit["host"])
    return counted


def score(flt: Filter, expects: list[Expect]) -> Score:
    """Recall and wrong hosts line by line (does a rule read the line, with the
    expected address?); false positives after the session settlement (does the
    daemon count a line it must not?)."""
    s = Score()
    these = [e for e in expects if e.modes is None or flt.mode in e.modes]
    settled = counted_lines(flt, [e.line for e in these])
    for number, exp in enumerate(these, 1):
        if exp.host is None:
            if settled.get(number):
                s.false_pos += 1
                s.wrong.append(f"false positive: {exp.line}")
            continue
        s.expected += 1
        out = flt.evaluate(Record(exp.line), NOW)
        kind = flt.kinds.get(out.rule or "", "failure")
        if out.status != "match" or out.match is None or kind in ("success", "end"):
            why = _why_missed(exp.line)
            s.missed[why] = s.missed.get(why, 0) + 1
        elif parse_host(exp.host) != out.match.host:
            s.wrong_host += 1
            s.wrong.append(f"wrong host {out.match.host} (expected {exp.host}): {exp.line}")
        else:
            s.counted += 1
    return s


def annotated(flt: Filter, path: Path) -> Score:
    """A corpus in kfwguard's sample format: every difference is a false positive
    (something counted that must not be) or a miss."""
    s = Score()
    for sample in read_samples(path):
        s.expected += sample.expect.status == "match"
    problems = [p for p in check_samples(flt, path, NOW) if "has no matching sample" not in p]
    s.false_pos = sum("got match" in p for p in problems)
    s.counted = s.expected - sum("expected match" in p for p in problems)
    s.wrong += problems
    return s


def corpora() -> list[tuple[str, str, list[Expect] | Path]]:
    return [
        ("fail2ban sshd", "sshd", list(_fail2ban(CORPUS / "fail2ban" / "sshd"))),
        ("sshguard tests (SSH)", "sshd", list(_sshguard(CORPUS / "sshguard" / "tests-ssh.txt"))),
        ("CrowdSec hub ssh-bf", "sshd",
         list(_plain(CORPUS / "crowdsec" / "ssh-bf.log", "35.188.49.176"))),
        ("quoted kubelet lines", "kubelet", CORPUS / "quoted" / "kubelet.log"),
        ("quoted etcd lines", "etcd", CORPUS / "quoted" / "etcd.log"),
    ]


def measure() -> list[tuple[str, str, str, Score]]:
    rows = []
    for corpus, name, data in corpora():
        base = load_filter(name)
        for mode in base.modes or (None,):
            flt = base if mode in (None, base.mode) else load_filter(f"{name}[mode={mode}]")
            s = annotated(flt, data) if isinstance(data, Path) else score(flt, data)
            rows.append((corpus, name, mode or "-", s))
    return rows


def main() -> int:
    print("| corpus | filter | mode | expected | counted (recall) | false positives "
          "| wrong hosts | misses by reason |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    details: list[str] = []
    for corpus, name, mode, s in measure():
        misses = "; ".join(f"{k}: {v}" for k, v in sorted(s.missed.items())) or "-"
        print(f"| {corpus} | {name} | {mode} | {s.expected} | {s.counted} ({s.recall}) "
              f"| {s.false_pos} | {s.wrong_host} | {misses} |")
        details += [f"{corpus} [{mode}]: {w}" for w in s.wrong]
    for d in details:
        print(d, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
