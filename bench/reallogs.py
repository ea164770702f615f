"""Shipped filters on real logs nobody on this project wrote: ``python -m bench.reallogs``.

Reads the corpus under tests/data/reallogs/ (sources and licences in its
README.md), runs each filter line by line in each mode, and prints per
corpus, filter and mode (with --misses, every missed expected line on stderr):

* recall: of the lines the corpus's own expectation says are an attack on
  this address, the share the filter counts;
* false positives: lines the expectation says are not an attack (or that
  the default config must leave alone) that the filter counts;
* wrong hosts: counted lines whose address is not the expected one;
* kept safe: lines the filter counts that the default config's jail ignores
  (its ignoreip of the cluster's ranges), for the corpora judged as the
  default config runs them (DEFAULT_CONFIG_CORPORA);
* misses by reason, so a figure can be read: a line without any address
  (fail2ban pairs those over several lines), a syslog header form not read,
  a host name instead of an address, a zoned address, a message kind read
  only in other modes, a message kind not read.

Recall and wrong hosts are per line: does a rule read the line, with the
expected address (kinds success, end and origin are not reads)? A line
without an address (kind unaddressed) is read when the settlement counts it
under its session's origin, and a wrong host if that is not the expected
address. False positives are
counted as the daemon counts: the whole corpus runs as one log through the
filter and the session settlement (matching/sessions.py), so a PAM line
paired with sshd's own line, or forgiven by "Accepted", is not counted, and
a held line that nothing settles counts on its own line.
Expectations are the other tools' own, with the disagreements listed in
DISAGREE below.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kfwguard.addresses import parse_host
from kfwguard.matching import Filter, load_filter
from kfwguard.matching.prefix import split_syslog
from kfwguard.matching.testfilter import run
from kfwguard.matching.testing import check_samples, read_samples
from kfwguard.model import Record

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "reallogs"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "kfwguard" / "default.yaml"
NOW = 1795690800.0  # 2026-11-26, after every stamp in the corpus

# Lines of other tools' corpora where we decide otherwise, and why.
DISAGREE: dict[str, str] = {
    # fail2ban expects 127.0.0.1; OpenSSH 7.4+ writes nothing after "ssh2" for a
    # password failure, so the user name is "test from 127.0.0.1 port 58946 ssh2:"
    # and sshd's address is the last one.
    "Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from "
    "10.10.1.2 port 55555 ssh2": "10.10.1.2",
}
# fail2ban lines expected to match whose failJSON names no host: the address is
# their session's (sshd[PID]), from its other lines. An annotation of ours.
SESSION_HOSTS: dict[str, str] = {
    "sshd[32310]: Disconnecting: Too many authentication failures for git [preauth]":
        "192.0.2.111",
}


@dataclass
class Expect:
    line: str
    host: str | None  # None: must not be counted
    modes: frozenset[str] | None = None  # None: every mode
    # part of an attack that another line already stands for (PAM's line of a
    # password sshd also logs, a disconnect after the failures): it may count,
    # against ``host`` only, and is not scored for recall
    optional: bool = False


@dataclass
class Score:
    expected: int = 0
    counted: int = 0
    false_pos: int = 0
    wrong_host: int = 0
    missed: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    missed_lines: list[str] = field(default_factory=list)
    # lines the filter counts that the default config's jail ignores (its
    # ignoreip: the cluster's own ranges); only for DEFAULT_CONFIG corpora
    kept_safe: int = 0

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
        if pending.get("match") and host is None:
            host = next((h for text, h in SESSION_HOSTS.items() if raw.endswith(text)), None)
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


# Wazuh's sshd rules (ruleset/rules/0095-sshd_rules.xml) by what they mean for us;
# the modes are kfwguard's (fail2ban's): an annotation of ours, not Wazuh's.
_NORMAL = frozenset({"normal", "ddos", "extra", "aggressive"})
_DDOS = frozenset({"ddos", "aggressive"})
_EXTRA = frozenset({"extra", "aggressive"})
WAZUH_SSHD: dict[str, frozenset[str] | None] = {
    "5710": _NORMAL,  # invalid user
    "5712": _NORMAL,  # brute force (invalid users)
    "5716": _NORMAL,  # authentication failed
    "5718": _NORMAL,  # user not allowed (AllowUsers/DenyUsers)
    "5719": _NORMAL,  # the same, repeated
    "5758": _NORMAL,  # maximum authentication attempts exceeded
    "5760": _NORMAL,  # authentication failed (password, PAM)
    "5763": _NORMAL,  # brute force
    "5701": _DDOS,  # bad protocol version identification
    "5706": _DDOS,  # did not receive identification string
    "5722": _DDOS,  # connection closed [preauth] (level 0 in Wazuh)
    "5762": _DDOS,  # connection reset by authenticating user [preauth]
    "5752": _EXTRA,  # no matching key exchange
    "5753": _EXTRA,  # unable to negotiate
    # Everything else is no attack of a client: sshd's own configuration or I/O
    # errors, post-authentication events, reverse-DNS mismatches.
}
# Wazuh's "fail" lines (not THIS rule) that are an attack of their own.
WAZUH_FAIL_LINES: dict[str, frozenset[str]] = {
    "PAM: User not known to the underlying authentication module for illegal user": _NORMAL,
}


def _wazuh(path: Path) -> Iterator[Expect]:
    """Wazuh's ruleset tests: sections of "log N pass|fail = LINE" and the rule they
    must (pass) or must not (fail) raise. The address expected is the one address on
    the line (an annotation of ours: Wazuh's tests do not name it)."""
    section: list[tuple[str, str]] = []
    for raw in [*path.read_text(encoding="utf-8").splitlines(), "["]:
        if raw.startswith("[") and section:
            rule = next((v for k, v in section if k == "rule"), "")
            for key, text in section:
                if not key.startswith("log "):
                    continue
                modes = WAZUH_SSHD.get(rule) if key.endswith(" pass") else next(
                    (m for frag, m in WAZUH_FAIL_LINES.items() if frag in text), None)
                header = split_syslog(text)
                found = _addresses(header[0] if header is not None else text)
                host = (found[0] if found else "-") if modes is not None else None
                yield Expect(text, host, modes)
            section = []
        elif " = " in raw and not raw.startswith(";"):
            key, _, value = raw.partition(" = ")
            section.append((key.strip(), value))


# Elastic's auth logs (filebeat's system module tests) carry no verdict of an
# attack; our annotation, by message: sshd's failures are attacks of the address
# on the line, in these modes; sshd's other lines of an attacker's session may
# count (against that session's address); logins, sessions, sudo and account
# changes must not count.
_BEATS_ATTACKS: tuple[tuple[str, frozenset[str]], ...] = (
    (r"Failed password for .* from (\S+) port \d+ ssh2$", _NORMAL),
    (r"Invalid user .* from (\S+)$", _NORMAL),
    (r"Did not receive identification string from (\S+)$", _DDOS),
)
_BEATS_OPTIONAL = re.compile(
    r"pam_unix\(sshd:auth\): authentication failure|pam_succeed_if\(sshd:auth\)|PAM \d+ more "
    r"authentication failures|PAM service\(sshd\) ignoring max retries|fatal: Read from "
    r"socket failed|Received disconnect from \S+: 11:  \[preauth\]")


def _beats(path: Path) -> Iterator[Expect]:
    """Elastic's filebeat auth test logs, annotated by us (_BEATS_ATTACKS)."""
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    session_host: dict[str, str] = {}
    for text in lines:
        header = split_syslog(text)
        found = _addresses(header[0]) if header is not None else []
        if header is not None and header[4] is not None and found:
            session_host.setdefault(header[4], found[0])
    for text in lines:
        header = split_syslog(text)
        message = header[0] if header is not None else text
        attack = next(((m.group(1), modes) for pattern, modes in _BEATS_ATTACKS
                       if (m := re.search(pattern, message))), None)
        if attack is not None:
            yield Expect(text, attack[0], attack[1])
        elif _BEATS_OPTIONAL.search(message) and header is not None and header[4] is not None:
            yield Expect(text, session_host[header[4]], optional=True)
        else:
            yield Expect(text, None)


def _harmless(path: Path) -> Iterator[Expect]:
    """Lines that must never count (a comment line starts with #)."""
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.strip() and not text.startswith("#"):
            yield Expect(text, None)


def default_ignores(filter_name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The ignoreip of the embedded default config's jail that runs ``filter_name``."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    jail = next(j for j in config["jails"] if j["filter"] == filter_name)
    return [ipaddress.ip_network(n) for n in jail.get("ignoreip", [])]


def _plain(path: Path, host: str) -> Iterator[Expect]:
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.strip():
            yield Expect(text, host)


def _addresses(text: str) -> list[str]:
    """The tokens of ``text`` that are an address (a zone index counts as one)."""
    found = []
    for token in re.findall(r"[0-9A-Fa-f:.%\w]*[:.][0-9A-Fa-f:.%\w]*", text):
        token = token.strip(".:[]()")
        if parse_host(token.split("%", 1)[0]) is not None:
            found.append(token)
    return found


def _why_missed(text: str, elsewhere: list[str], unaddressed: bool = False) -> str:
    """Why no rule of this mode reads ``text`` (``elsewhere``: the modes that do)."""
    if elsewhere:
        return f"read in {'/'.join(elsewhere)} mode"
    header = split_syslog(text)
    if header is None and re.match(r"\S.{0,60}? \S*sshd\S*\[\d+\]:? ", text):
        return "syslog header form not read"
    message = header[0] if header is not None else text
    found = _addresses(message)
    if not found and elsewhere is not None and unaddressed:
        return "no address, its session counted once already or named none"
    if not found:
        if re.search(r"from [a-z][\w.-]*\.[a-z]{2,}(?:\s|$)", message):
            return "host name, not an address"
        return "no address on the line"
    if all("%" in a for a in found):
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


def _reads(flt: Filter, exp: Expect) -> bool:
    """A rule of ``flt`` reads ``exp`` with its expected address (not as success or end)."""
    out = flt.evaluate(Record(exp.line), NOW)
    kind = flt.kinds.get(out.rule or "", "failure")
    return (out.status == "match" and out.match is not None
            and kind not in ("success", "end", "origin")
            and exp.host is not None and parse_host(exp.host) == out.match.host)


def score(flt: Filter, expects: list[Expect], others: dict[str, Filter] | None = None,
          ignore: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None) -> Score:
    """Recall and wrong hosts line by line (does a rule read the line, with the
    expected address?); false positives after the session settlement (does the
    daemon count a line it must not?)."""
    s = Score()
    these = [e for e in expects if e.modes is None or flt.mode in e.modes]
    settled = counted_lines(flt, [e.line for e in these])
    for number, exp in enumerate(these, 1):
        if exp.optional:
            for h in settled.get(number, []):
                if parse_host(h) != parse_host(exp.host or ""):
                    s.wrong_host += 1
                    s.wrong.append(f"wrong host {h} (expected {exp.host}): {exp.line}")
            continue
        if exp.host is None:
            hosts = settled.get(number, [])
            if ignore is not None and hosts and all(
                    any(ipaddress.ip_address(h) in net for net in ignore) for h in hosts):
                s.kept_safe += 1
            elif hosts:
                s.false_pos += 1
                s.wrong.append(f"false positive: {exp.line}")
            continue
        s.expected += 1
        out = flt.evaluate(Record(exp.line), NOW)
        kind = flt.kinds.get(out.rule or "", "failure")
        if out.status == "session" and settled.get(number):
            # A line without an address, counted under its session's origin.
            if all(parse_host(h) == parse_host(exp.host) for h in settled[number]):
                s.counted += 1
            else:
                s.wrong_host += 1
                s.wrong.append(f"wrong host {settled[number]} (expected {exp.host}): "
                               f"{exp.line}")
            continue
        if (out.status != "match" or out.match is None or kind in ("success", "end", "origin")
                or parse_host(exp.host) is None):
            why = _why_missed(exp.line, [m for m, f in (others or {}).items()
                                         if m != flt.mode and _reads(f, exp)],
                              out.status == "session")
            s.missed[why] = s.missed.get(why, 0) + 1
            s.missed_lines.append(f"{why}: {exp.line}")
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
    s.missed_lines = [p for p in problems if "expected match" in p]
    s.counted = s.expected - sum("expected match" in p for p in problems)
    s.wrong += problems
    return s


def corpora() -> list[tuple[str, str, list[Expect] | Path]]:
    return [
        ("fail2ban sshd", "sshd", list(_fail2ban(CORPUS / "fail2ban" / "sshd"))),
        ("sshguard tests (SSH)", "sshd", list(_sshguard(CORPUS / "sshguard" / "tests-ssh.txt"))),
        ("CrowdSec hub ssh-bf", "sshd",
         list(_plain(CORPUS / "crowdsec" / "ssh-bf.log", "35.188.49.176"))),
        ("CrowdSec hub ssh-slow-bf", "sshd",
         list(_plain(CORPUS / "crowdsec" / "ssh-slow-bf.log", "103.100.210.198"))),
        ("Wazuh ruleset sshd tests", "sshd", list(_wazuh(CORPUS / "wazuh" / "sshd.ini"))),
        ("Elastic filebeat secure-rhel7", "sshd",
         list(_beats(CORPUS / "beats" / "secure-rhel7.log"))),
        ("Elastic filebeat auth test.log", "sshd", list(_beats(CORPUS / "beats" / "test.log"))),
        ("quoted kubelet lines", "kubelet", CORPUS / "quoted" / "kubelet.log"),
        ("quoted etcd lines", "etcd", CORPUS / "quoted" / "etcd.log"),
        ("fail2ban nginx-env", "ingress-nginx", list(_fail2ban(CORPUS / "fail2ban" / "nginx-env"))),
        ("CrowdSec hub nginx-http-sensitive-files", "ingress-nginx",
         list(_plain(CORPUS / "crowdsec" / "nginx-http-sensitive-files.log", "127.0.0.1"))),
        ("quoted ingress-nginx lines", "ingress-nginx",
         list(_harmless(CORPUS / "quoted" / "ingress-nginx.log"))),
        ("quoted kube-apiserver audit events", "kube-apiserver-audit",
         list(_harmless(CORPUS / "quoted" / "kube-apiserver-audit.jsonl"))),
    ]


# Corpora judged as the default config runs them: the jail's ignore list applies.
DEFAULT_CONFIG_CORPORA = {"quoted kube-apiserver audit events"}


def measure() -> list[tuple[str, str, str, Score]]:
    rows = []
    for corpus, name, data in corpora():
        base = load_filter(name)
        modes = {m: base if m == base.mode else load_filter(f"{name}[mode={m}]")
                 for m in base.modes}
        for mode in base.modes or (None,):
            flt = modes[mode] if mode is not None else base
            ignore = default_ignores(name) if corpus in DEFAULT_CONFIG_CORPORA else None
            s = (annotated(flt, data) if isinstance(data, Path)
                 else score(flt, data, modes, ignore))
            rows.append((corpus, name, mode or "-", s))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if set(args) - {"--misses"}:
        print("usage: python -m bench.reallogs [--misses]", file=sys.stderr)
        return 2
    print("| corpus | filter | mode | expected | counted (recall) | false positives "
          "| wrong hosts | kept safe by the default ignore list | misses by reason |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    details: list[str] = []
    for corpus, name, mode, s in measure():
        misses = "; ".join(f"{k}: {v}" for k, v in sorted(s.missed.items())) or "-"
        print(f"| {corpus} | {name} | {mode} | {s.expected} | {s.counted} ({s.recall}) "
              f"| {s.false_pos} | {s.wrong_host} | {s.kept_safe or '-'} | {misses} |")
        details += [f"{corpus} [{mode}]: {w}" for w in s.wrong]
        if "--misses" in args:
            details += [f"{corpus} [{mode}] missed: {m}" for m in s.missed_lines]
    for d in details:
        print(d, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
