"""Filters: loading, compiling, matching, and hostile input."""

from __future__ import annotations

import calendar
import functools
import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.matching import (
    Filter,
    FilterError,
    load_filter,
    parse_filter,
    shipped_filter_names,
)
from kfwguard.matching.jsonpath import MISSING, json_equal, lookup, parse_path
from kfwguard.matching.patterns import (
    expand_host,
    has_top_level_alternation,
    literal_prefixes,
    strip_group_names,
)
from kfwguard.matching.prefix import strip_klog, strip_syslog
from kfwguard.matching.testing import parse_annotation, read_samples, run_filter
from kfwguard.model import MAX_LINE, Record
from kfwguard.timestamps import parse_rfc3339

NOW = parse_rfc3339("2026-11-26T12:00:00Z") or 0.0


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def text_filter(rules: str, extra: str = "") -> str:
    return f"format: text\n{extra}rules:\n{rules}"


SIMPLE = text_filter(
    "  - name: bad\n    regex: '^bad login from <HOST>$'\n"
    "  - name: worse\n    regex: '^worse login by (?P<user>\\S+) from <HOST> port \\d+$'\n"
)


class TestLoadFilter:
    def test_by_name_from_shipped(self) -> None:
        """A bare name finds the shipped filter; its name is the file stem."""
        f = load_filter("sshd")
        assert ("sshd", "text") == (f.name, f.format)

    def test_dirs_come_first(self, tmp_path: Path) -> None:
        """A filter in an operator dir shadows the shipped one of the same name."""
        (tmp_path / "sshd.yaml").write_text(SIMPLE)
        assert ("bad", "worse") == load_filter("sshd", [tmp_path]).rules

    def test_by_path(self, tmp_path: Path) -> None:
        """A value with '/' or ending in .yaml is a path; the name is the stem."""
        p = tmp_path / "mine.yaml"
        p.write_text(SIMPLE)
        assert "mine" == load_filter(str(p)).name

    def test_unknown_name(self) -> None:
        """An unknown name is a FilterError that lists what is shipped."""
        with pytest.raises(FilterError) as exc:
            load_filter("nope", [])
        assert "sshd" in str(exc.value)

    def test_invalid_name(self) -> None:
        """Names cannot climb out of the filter dirs."""
        with pytest.raises(FilterError, match="not a valid filter name"):
            load_filter("..")

    def test_missing_path(self, tmp_path: Path) -> None:
        """A missing file is a FilterError naming it."""
        with pytest.raises(FilterError, match="no such file"):
            load_filter(str(tmp_path / "x.yaml"))

    def test_all_shipped_compile(self) -> None:
        """Every shipped filter compiles."""
        assert all(load_filter(n).rules for n in shipped_filter_names())


class TestFilterErrors:
    def test_unknown_key(self) -> None:
        """Unknown keys are refused, naming file, line and key."""
        with pytest.raises(FilterError) as exc:
            parse_filter(SIMPLE + "colour: red\n", "x", "f.yaml")
        assert "f.yaml: line 7: colour: unknown key" == str(exc.value)

    def test_unknown_rule_key(self) -> None:
        """Unknown keys inside a rule are refused too."""
        text = text_filter("  - name: a\n    regex: '^a <HOST>$'\n    regx: b\n")
        with pytest.raises(FilterError, match=r"line 5: rules\[0\]\.regx: unknown key"):
            parse_filter(text, "x", "f.yaml")

    @pytest.mark.parametrize(
        "regex", [r"^(a)\1 <HOST>$", r"^(?=a)a <HOST>$", r"^a(?!b) <HOST>$", r"^(?<=a)b <HOST>$"]
    )
    def test_re2_rejects(self, regex: str) -> None:
        """Backreferences and lookaround are refused with file, rule and reason."""
        text = text_filter(f"  - name: slow\n    regex: '{regex}'\n")
        with pytest.raises(FilterError) as exc:
            parse_filter(text, "x", "f.yaml")
        message = str(exc.value)
        assert message.startswith("f.yaml: line 4: rules[0].regex (rule 'slow'): RE2 cannot")
        assert "lookaround" in message

    def test_no_host(self) -> None:
        """A rule without <HOST> is refused."""
        with pytest.raises(FilterError, match="no <HOST>"):
            parse_filter(text_filter("  - name: a\n    regex: '^a$'\n"), "x")

    def test_two_hosts(self) -> None:
        """A rule with two <HOST> is refused: the address must be unambiguous."""
        with pytest.raises(FilterError, match="more than one <HOST>"):
            parse_filter(text_filter("  - name: a\n    regex: '^<HOST> <HOST>$'\n"), "x")

    def test_bad_ignoreregex(self) -> None:
        """A bad ignoreregex is refused with its position."""
        text = SIMPLE + "ignoreregex: ['(?!x)']\n"
        with pytest.raises(FilterError, match=r"ignoreregex\[0\]"):
            parse_filter(text, "x", "f.yaml")

    def test_repeated_rule(self) -> None:
        """Rule names are unique within a filter."""
        text = text_filter(
            "  - {name: a, regex: '^a <HOST>$'}\n  - {name: a, regex: '^b <HOST>$'}\n"
        )
        with pytest.raises(FilterError, match="repeated rule 'a'"):
            parse_filter(text, "x")

    def test_bad_format(self) -> None:
        """Only text and json formats exist."""
        with pytest.raises(FilterError, match="must be 'text' or 'json'"):
            parse_filter("format: xml\nrules: []\n", "x")

    def test_invalid_yaml(self) -> None:
        """Broken YAML is a FilterError with a line, not a traceback."""
        with pytest.raises(FilterError, match="line 2: invalid YAML"):
            parse_filter("rules: [\n", "x")

    def test_json_bad_path(self) -> None:
        """A malformed JSON field path is refused."""
        text = "format: json\nhost: a..b\nrules:\n  - {name: r, match: {a: 1}}\n"
        with pytest.raises(FilterError, match="empty key"):
            parse_filter(text, "x")

    def test_json_needs_host(self) -> None:
        """A JSON rule must say where the host is."""
        with pytest.raises(FilterError, match="no host path"):
            parse_filter("format: json\nrules:\n  - {name: r, match: {a: 1}}\n", "x")

    def test_error_is_readable(self) -> None:
        """FilterError's str is one 'path: problem' line per problem."""
        assert "a.yaml: one\na.yaml: two" == str(FilterError("a.yaml", ["one", "two"]))


class TestTextFilter:
    def test_match(self) -> None:
        """A matching line gives host, rule, filter and named groups."""
        f = parse_filter(SIMPLE, "simple")
        m = f.match(Record("worse login by bob from 192.0.2.1 port 22"), NOW)
        assert m is not None
        assert (ip("192.0.2.1"), "simple", "worse", {"user": "bob"}) == (
            m.host, m.filter, m.rule, dict(m.fields)
        )

    def test_rules_are_anchored_at_start(self) -> None:
        """Rules match from the message start even without '^'."""
        f = parse_filter(text_filter("  - {name: a, regex: 'bad from <HOST>'}\n"), "x")
        assert None is f.match(Record("very bad from 192.0.2.1"), NOW)

    def test_first_rule_wins(self) -> None:
        """When two rules match, the first in the file is reported."""
        f = parse_filter(
            text_filter(
                "  - {name: one, regex: 'x <HOST>'}\n  - {name: two, regex: 'x <HOST>$'}\n"
            ),
            "x",
        )
        m = f.match(Record("x 192.0.2.1"), NOW)
        assert m is not None and "one" == m.rule

    def test_set_path_without_literal_prefix(self) -> None:
        """Rules without a literal prefix go through the RE2 Set and still match in order."""
        f = parse_filter(
            text_filter(
                "  - {name: a, regex: '\\w+ failed from <HOST>$'}\n"
                "  - {name: b, regex: '(?i)LOGIN from <HOST>$'}\n"
            ),
            "x",
        )
        got = [f.match(Record(t), NOW) for t in ("x failed from 192.0.2.1", "login from ::1", "")]
        assert [("a", ip("192.0.2.1")), ("b", ip("::1")), None] == [
            (m.rule, m.host) if m else None for m in got
        ]

    def test_host_normalised(self) -> None:
        """IPv4-mapped IPv6 and brackets are normalised by parse_host."""
        f = parse_filter(SIMPLE, "x")
        hosts = [f.match(Record(f"bad login from {h}"), NOW) for h in ("::ffff:192.0.2.1", "[::1]")]
        assert [ip("192.0.2.1"), ip("::1")] == [m.host for m in hosts if m]

    def test_bad_host_never_matches(self) -> None:
        """Text in the host position that is not an address is never a match."""
        f = parse_filter(SIMPLE, "x")
        assert ("bad-host", None) == (
            f.evaluate(Record("bad login from 300.1.1.1"), NOW).status,
            f.match(Record("bad login from 300.1.1.1"), NOW),
        )

    def test_ignoreregex(self) -> None:
        """A line matching ignoreregex never matches."""
        f = parse_filter(SIMPLE + "ignoreregex: ['from 192\\.0\\.2\\.']\n", "x")
        outcome = f.evaluate(Record("bad login from 192.0.2.7"), NOW)
        assert ("ignored", "bad", None) == (outcome.status, outcome.rule, outcome.match)
        assert f.match(Record("bad login from 198.51.100.7"), NOW) is not None

    def test_time_from_record_then_now(self) -> None:
        """Without a stamp in the line, the record's time is used, else now."""
        f = parse_filter(SIMPLE, "x")
        with_time = f.match(Record("bad login from 192.0.2.1", time=123.0), NOW)
        without = f.match(Record("bad login from 192.0.2.1"), NOW)
        assert (123.0, NOW) == (with_time and with_time.time, without and without.time)

    def test_syslog_prefix_optional(self) -> None:
        """A syslog header is stripped when present; its stamp (no zone) is the time
        only for a record without a time of its own (journald's realtime wins)."""
        f = parse_filter(SIMPLE.replace("format: text\n", "format: text\nprefix: syslog\n"), "x")
        line = "Nov 26 04:57:45 host prog[1]: bad login from 192.0.2.1"
        m = f.match(Record(line, time=1.0), NOW)
        from_file = f.match(Record(line), NOW)
        bare = f.match(Record("bad login from 192.0.2.1", time=1.0), NOW)
        assert m is not None and bare is not None and from_file is not None
        assert (ip("192.0.2.1"), 1.0) == (bare.host, bare.time)
        assert 1.0 == m.time
        assert from_file.time not in (1.0, NOW)

    def test_programs(self) -> None:
        """With programs set, a syslog line from another program never matches."""
        extra = "prefix: [syslog]\nprograms: [sshd]\n"
        f = parse_filter(SIMPLE.replace("format: text\n", "format: text\n" + extra), "x")
        lines = [
            "Nov 26 04:57:45 host sshd[1]: bad login from 192.0.2.1",
            "Nov 26 04:57:45 host logger: bad login from 192.0.2.2",
        ]
        assert [1] == [n for n, _ in run_filter(f, lines, NOW)]

    def test_klog_time_preferred(self) -> None:
        """Behind a syslog header, klog's microsecond stamp is the time."""
        f = load_filter("kubelet")
        line = (
            "Nov 26 04:57:45 node kubelet[1]: I1126 04:57:45.250000    1 log.go:245] "
            "http: TLS handshake error from 192.0.2.1:5: "
            "tls: first record does not look like a TLS handshake"
        )
        m = f.match(Record(line), NOW)
        assert m is not None and 0.25 == pytest.approx(m.time % 1)


@functools.cache
def _every_shipped_filter() -> tuple[Filter, ...]:
    """Every shipped filter in every mode, compiled once for all hypothesis examples."""
    out = []
    for name in shipped_filter_names():
        base = load_filter(name)
        out += [base] + [load_filter(f"{name}[mode={m}]") for m in base.modes[1:]]
    return tuple(out)


class TestHostileText:
    def test_user_name_carries_address(self) -> None:
        """An address inside an sshd user name is never the host."""
        f = load_filter("sshd")
        m = f.match(
            Record(
                "Failed password for invalid user x from 6.6.6.6 port 22 ssh2 "
                "from 1.2.3.4 port 5 ssh2"
            ),
            NOW,
        )
        assert m is not None and ip("1.2.3.4") == m.host

    def test_invalid_user_from(self) -> None:
        """'Invalid user from 6.6.6.6 from 1.2.3.4' bans only 1.2.3.4."""
        m = load_filter("sshd").match(Record("Invalid user from 6.6.6.6 from 1.2.3.4"), NOW)
        assert m is not None and ip("1.2.3.4") == m.host

    def test_user_agent_carries_srcip(self) -> None:
        """A srcIP inside a kubelet userAgent is never the host."""
        line = (
            'I1126 04:57:50.123456 1 httplog.go:132] "HTTP" verb="GET" URI="/pods" '
            'userAgent="a\\" srcIP=\\"6.6.6.6:1\\" resp=401" srcIP="10.1.1.1:4" resp=200'
        )
        assert None is load_filter("kubelet").match(Record(line), NOW)

    def test_accepted_never_matches(self) -> None:
        """Successful logins never match."""
        line = "Accepted password for root from 192.0.2.1 port 22 ssh2"
        assert None is load_filter("sshd").match(Record(line), NOW)

    def test_megabyte_line(self) -> None:
        """A 1 MiB line is skipped as too long, never matched."""
        line = "Failed password for " + "x" * (1 << 20) + " from 192.0.2.1 port 22 ssh2"
        outcome = load_filter("sshd").evaluate(Record(line), NOW)
        assert ("too-long", None) == (outcome.status, outcome.match)

    def test_long_line_under_cap(self) -> None:
        """A line just under the cap still matches in linear time."""
        user = "y" * (MAX_LINE - 100)
        line = f"Failed password for {user} from 192.0.2.1 port 22 ssh2"
        m = load_filter("sshd").match(Record(line), NOW)
        assert m is not None and ip("192.0.2.1") == m.host

    def test_nul_bytes(self) -> None:
        """NUL bytes are just bytes: matched around, never a crash."""
        m = load_filter("sshd").match(
            Record("Failed password for a\x00b from 192.0.2.1 port 22 ssh2"), NOW
        )
        assert m is not None and "a\x00b" == m.fields["user"]

    def test_invalid_utf8(self) -> None:
        """Lone surrogates (undecodable bytes) neither crash nor hide the host."""
        text = b"Failed password for \xff\xfe from 192.0.2.1 port 22 ssh2".decode(
            "utf-8", "surrogateescape"
        )
        m = load_filter("sshd").match(Record(text), NOW)
        assert m is not None and ip("192.0.2.1") == m.host

    def test_json_string_carries_address(self) -> None:
        """An address inside a JSON string value is never the host."""
        event = {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "stage": "ResponseStarted",
            "user": {}, "sourceIPs": ["192.0.2.9"], "userAgent": '"sourceIPs":["6.6.6.6"]',
            "responseStatus": {"code": 401},
        }
        m = load_filter("kube-apiserver-audit").match(Record(json.dumps(event)), NOW)
        assert m is not None and ip("192.0.2.9") == m.host

    def test_deeply_nested_json(self) -> None:
        """Deeply nested JSON is no match, not a RecursionError."""
        f = load_filter("etcd")
        deep = '{"msg":"rejected connection on client endpoint","x":' + "[" * 200000
        deep += "]" * 200000 + "}"
        assert None is f.match(Record(deep[: MAX_LINE - 1]), NOW)
        nested: dict[str, object] = {}
        cur = nested
        for _ in range(3000):
            cur["a"] = {}
            cur = cur["a"]  # type: ignore[assignment]
        assert None is f.match(Record(text="", fields=nested), NOW)

    def test_deep_json_under_line_cap(self) -> None:
        """A document nested deeper than the parser allows is no match."""
        text = '{"msg":"rejected connection on client endpoint","a":' + "[" * 30000 + "]" * 30000
        assert None is load_filter("etcd").match(Record(text + "}"), NOW)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_junk_never_crashes(self, junk: str) -> None:
        """Random text through every shipped filter (in every mode) never raises."""
        for f in _every_shipped_filter():
            f.evaluate(Record(junk), NOW)
            f.evaluate(Record("Nov 26 04:57:45 h sshd[1]: " + junk), NOW)

    @settings(max_examples=200, deadline=None)
    @given(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40),
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40),
        st.sampled_from(["Failed password for invalid user", "Invalid user",
                         "Connection closed by invalid user"]),
    )
    def test_address_only_in_user_never_host(self, before: str, after: str, kind: str) -> None:
        """An address that only appears in the user name is never the host."""
        user = f"{before} from 6.6.6.6 port 22 ssh2 6.6.6.6 port 1 [preauth]{after}"
        tail = {
            "Failed password for invalid user": " from 192.0.2.1 port 22 ssh2",
            "Invalid user": " from 192.0.2.1 port 22",
            "Connection closed by invalid user": " 192.0.2.1 port 22 [preauth]",
        }[kind]
        m = load_filter("sshd").match(Record(f"{kind} {user}{tail}"), NOW)
        assert m is None or ip("192.0.2.1") == m.host

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=30,
    ))
    def test_json_junk_never_crashes(self, doc: object) -> None:
        """Random JSON documents through the JSON filters never raise."""
        for name in ("etcd", "kube-apiserver-audit"):
            f = load_filter(name)
            f.evaluate(Record(json.dumps(doc)), NOW)
            if isinstance(doc, dict):
                f.evaluate(Record("", fields=doc), NOW)


AUDIT_401 = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "stage": "ResponseStarted", "user": {},
    "sourceIPs": ["6.6.6.6", "192.0.2.5"], "responseStatus": {"code": 401},
    "requestReceivedTimestamp": "2026-11-26T04:57:45.5Z",
}


class TestJsonFilter:
    def test_match_from_text(self) -> None:
        """A JSON line is parsed; host is the path's value; time from the event."""
        m = load_filter("kube-apiserver-audit").match(Record(json.dumps(AUDIT_401)), NOW)
        assert m is not None
        assert (ip("192.0.2.5"), parse_rfc3339("2026-11-26T04:57:45.5Z"), "unauthenticated") == (
            m.host, m.time, m.rule
        )

    def test_match_from_fields(self) -> None:
        """A record that already carries the parsed object is not parsed again."""
        m = load_filter("kube-apiserver-audit").match(Record("not json", fields=AUDIT_401), NOW)
        assert m is not None and ip("192.0.2.5") == m.host

    def test_absent(self) -> None:
        """A user name present defeats an 'absent' condition."""
        event = {**AUDIT_401, "user": {"username": "bob"}}
        assert None is load_filter("kube-apiserver-audit").match(Record(json.dumps(event)), NOW)

    def test_invalid_json(self) -> None:
        """Invalid JSON and non-object JSON are no match."""
        f = load_filter("kube-apiserver-audit")
        texts = ['{"kind": "Event", 401', "[401]", "401", '"Event ResponseStarted 401"']
        assert [None] * 4 == [f.match(Record(t), NOW) for t in texts]

    def test_host_port_stripped(self) -> None:
        """host_port strips the port from IP:PORT and [IPv6]:PORT."""
        f = load_filter("etcd")
        hosts = []
        for addr in ("192.0.2.1:2379", "[2001:db8::1]:2379", "2001:db8::2"):
            doc = {"msg": "rejected connection on client endpoint", "remote-addr": addr}
            m = f.match(Record(json.dumps(doc)), NOW)
            hosts.append(m.host if m else None)
        assert [ip("192.0.2.1"), ip("2001:db8::1"), ip("2001:db8::2")] == hosts

    def test_non_string_host(self) -> None:
        """A host value that is not a string never matches."""
        f = load_filter("etcd")
        for value in (None, 1, ["192.0.2.1"], {"ip": "192.0.2.1"}):
            doc = {"msg": "rejected connection on peer endpoint", "remote-addr": value}
            assert "bad-host" == f.evaluate(Record(json.dumps(doc)), NOW).status

    def test_list_values_any_of_and_exclude(self) -> None:
        """match values may be lists (any of); exclude vetoes."""
        text = (
            "format: json\nhost: ip\nrules:\n"
            "  - name: r\n    match: {code: [401, 403]}\n    exclude: {uri: [/healthz]}\n"
        )
        f = parse_filter(text, "x")
        docs = [
            {"code": 401, "ip": "192.0.2.1"},
            {"code": 403.0, "ip": "192.0.2.2"},
            {"code": 404, "ip": "192.0.2.3"},
            {"code": 401, "ip": "192.0.2.4", "uri": "/healthz"},
            {"code": True, "ip": "192.0.2.5"},
        ]
        got = [f.match(Record(json.dumps(d)), NOW) for d in docs]
        assert [ip("192.0.2.1"), ip("192.0.2.2"), None, None, None] == [
            m.host if m else None for m in got
        ]

    def test_fields(self) -> None:
        """Declared fields are copied into Match.fields as strings."""
        event = {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "stage": "ResponseComplete",
            "user": {"username": "system:anonymous"}, "sourceIPs": ["192.0.2.8"],
            "responseStatus": {"code": 403}, "requestURI": "/api/v1/secrets", "verb": "list",
            "annotations": {"authorization.k8s.io/decision": "forbid"},
        }
        m = load_filter("kube-apiserver-audit").match(Record(json.dumps(event)), NOW)
        assert m is not None
        assert {"uri": "/api/v1/secrets", "verb": "list", "user": "system:anonymous"} == dict(
            m.fields
        )

    def test_time_falls_back(self) -> None:
        """Without a usable time field: the record's time, else now."""
        doc = {"msg": "rejected connection on client endpoint", "remote-addr": "192.0.2.1:1",
               "ts": "yesterday"}
        f = load_filter("etcd")
        a = f.match(Record(json.dumps(doc), time=5.0), NOW)
        b = f.match(Record(json.dumps(doc)), NOW)
        assert (5.0, NOW) == (a and a.time, b and b.time)

    def test_epoch_time(self) -> None:
        """A numeric time field is epoch seconds."""
        doc = {"msg": "rejected connection on client endpoint", "remote-addr": "192.0.2.1:1",
               "ts": 1795669065.25}
        m = load_filter("etcd").match(Record(json.dumps(doc)), NOW)
        assert m is not None and 1795669065.25 == m.time


class TestJsonPath:
    @pytest.mark.parametrize(
        ("path", "steps"),
        [
            ("a", ("a",)),
            ("a.b.c", ("a", "b", "c")),
            ("list[-1]", ("list", -1)),
            ("list[0].x", ("list", 0, "x")),
            ('annotations["authorization.k8s.io/decision"]',
             ("annotations", "authorization.k8s.io/decision")),
            ("m['x.y'].z", ("m", "x.y", "z")),
            ("remote-addr", ("remote-addr",)),
        ],
    )
    def test_parse(self, path: str, steps: tuple[object, ...]) -> None:
        """Paths split into keys and indices; quoted keys may hold dots."""
        assert steps == parse_path(path)

    @pytest.mark.parametrize("path", ["", "a.", ".a", "a..b", "a[x]", "a[\"x]", "a]b", "a[0]b"])
    def test_parse_errors(self, path: str) -> None:
        """Malformed paths raise ValueError."""
        with pytest.raises(ValueError):
            parse_path(path)

    def test_lookup(self) -> None:
        """Lookup follows keys and indices, negative ones from the end."""
        doc = {"a": {"b": [1, 2, {"c": "x"}]}}
        assert ["x", 2, MISSING, MISSING, MISSING] == [
            lookup(doc, parse_path("a.b[-1].c")),
            lookup(doc, parse_path("a.b[1]")),
            lookup(doc, parse_path("a.b[5]")),
            lookup(doc, parse_path("a.b.c")),
            lookup(doc, parse_path("a.b[0].c")),
        ]

    def test_lookup_string_is_not_a_list(self) -> None:
        """Indexing into a string is missing, not a character."""
        assert MISSING is lookup({"a": "xyz"}, ("a", 0))

    def test_json_equal(self) -> None:
        """JSON equality: numbers numerically, but true is not 1 and "1" is not 1."""
        assert [True, True, False, False, False, True] == [
            json_equal(401, 401),
            json_equal(401.0, 401),
            json_equal(True, 1),
            json_equal("401", 401),
            json_equal(None, "x"),
            json_equal(None, None),
        ]


class TestPatterns:
    def test_expand_host(self) -> None:
        """<HOST> becomes the named host group."""
        assert "(?P<host>" in expand_host("from <HOST>$")

    def test_strip_group_names(self) -> None:
        """Group names go, groups stay; escapes and classes are left alone."""
        assert r"(a)(b)\(?P<x>[(?P<y>]" == strip_group_names(r"(?P<u>a)(?<v>b)\(?P<x>[(?P<y>]")

    def test_top_level_alternation(self) -> None:
        """Alternation inside groups or classes is not top level."""
        assert [True, False, False, False] == [
            has_top_level_alternation(p) for p in ("a|b", "(a|b)", "[|]", r"a\|b")
        ]

    @pytest.mark.parametrize(
        ("pattern", "prefixes"),
        [
            ("^Failed (?:password)", ("Failed ",)),
            (r"^pam_unix\(sshd:auth\)", ("pam_unix(sshd:auth)",)),
            ("^(?:error: )?maximum auth", ("error: maximum auth", "maximum auth")),
            ("^abc?d", ("ab",)),
            ("^ab+c", ("ab",)),
            ("^a|b", ()),
            (r"^\d+ x", ()),
            ("(?i)failed", ()),
            ("^(?:a|b)?c", ()),
            ('^"HTTP" x', ('"HTTP" x',)),
        ],
    )
    def test_literal_prefixes(self, pattern: str, prefixes: tuple[str, ...]) -> None:
        """Literal prefixes are read conservatively: only text every match starts with."""
        assert prefixes == literal_prefixes(pattern)


class TestPrefix:
    def test_syslog(self) -> None:
        """A BSD syslog header gives message, stamp and program."""
        line = "Nov 26 04:57:45 node1 sshd[123]: Failed x"
        assert ("Failed x", "Nov 26 04:57:45", "syslog", "sshd") == strip_syslog(line)

    def test_syslog_iso(self) -> None:
        """rsyslog's high-precision stamp is recognised."""
        line = "2026-11-26T04:57:45.123+00:00 node1 sshd: msg"
        assert ("msg", "2026-11-26T04:57:45.123+00:00", "iso", "sshd") == strip_syslog(line)

    @pytest.mark.parametrize(
        ("line", "stamp"),
        [
            ("2020-03-23 06:47:42.801612-0700  localhost sshd[3186]: msg",
             "2020-03-23 06:47:42.801612-0700"),  # macOS log show --style syslog
            ("2026-11-26T04:57:45+0000 node1 sshd[3186]: msg",
             "2026-11-26T04:57:45+0000"),  # journalctl -o short-iso
            ("<86>2026-11-26T04:57:45.5-08:00 node1 sshd[3186]: msg",
             "2026-11-26T04:57:45.5-08:00"),
            ("<86>1 2026-11-26T04:57:45.5-08:00 node1 sshd 3186 - - msg",
             "2026-11-26T04:57:45.5-08:00"),  # RFC 5424
            ("Thu 2026-11-26 04:57:45 UTC node1 sshd[3186]: msg",
             "2026-11-26 04:57:45Z"),  # journalctl -o short-full
            ("Thu 2026-11-26 04:57:45 CET node1 sshd[3186]: msg",
             "2026-11-26 04:57:45"),  # another zone's name: the node's local time
            ("1795697865.123456 node1 sshd[3186]: msg",
             "2026-11-26T12:57:45.123456Z"),  # journalctl -o short-unix
        ],
    )
    def test_iso_forms(self, line: str, stamp: str) -> None:
        """Headers with a dated stamp (macOS's space-separated ISO one, journalctl's
        short-iso, short-full and short-unix, RFC 5424) give the message, the stamp
        (as RFC 3339) and the program."""
        assert ("msg", stamp, "iso", "sshd") == strip_syslog(line)

    @pytest.mark.parametrize(
        ("line", "utc"),
        [
            ("2020-03-24 08:38:42.344447-0700  localhost sshd[2519]: ", (2020, 3, 24, 15, 38, 42)),
            ("2026-11-26T04:57:45-0800 node1 sshd[1]: ", (2026, 11, 26, 12, 57, 45)),
            ("<38>1 2026-11-26T04:57:45-05:00 node1 sshd 1 - - ", (2026, 11, 26, 9, 57, 45)),
            ("1795697865.000000 node1 sshd[1]: ", (2026, 11, 26, 12, 57, 45)),
        ],
    )
    def test_zones_west_of_utc_give_the_instant(self, line: str,
                                                utc: tuple[int, ...]) -> None:
        """A stamp with a zone west of UTC is read as the instant it names, whatever the
        node's own zone: an attempt's time is not shifted by hours."""
        flt = load_filter("sshd")
        got = flt.evaluate(Record(line + "Failed password for root from 192.0.2.9 port 22 ssh2"),
                           NOW)
        assert got.match is not None
        assert calendar.timegm((*utc, 0, 0, 0)) == int(got.match.time)

    @pytest.mark.parametrize(
        "line", ["Failed password for x", "Nov 26 04:57:45 node1 a b: x", "Nov 26 04:57:45 nohost",
                 "2020-03-23 06:47:4x node1 sshd[1]: x", "2020-03-23 nohost sshd[1]: x",
                 "2020-03-23 06:47:42.8-0700   node1 sshd[1]: x",
                 "Thu 2026-11-26 04:57:45 U1C node1 sshd[1]: x", "Thu 2026-11-26 04:57:45",
                 "179569786.123456 node1 sshd[1]: x", "1795697865.1234567 node1 sshd[1]: x"]
    )
    def test_not_syslog(self, line: str) -> None:
        """Lines without the exact header shape are left alone."""
        assert None is strip_syslog(line)

    def test_klog(self) -> None:
        """A klog header gives the message and stamp."""
        line = "I1126 04:57:45.123456    1234 server.go:3161] http: x"
        assert ("http: x", "I1126 04:57:45.123456", "klog", None) == strip_klog(line)


class TestSampleFormat:
    def test_parse_annotation(self) -> None:
        """Annotations carry status, rule and shell-quoted key=value pairs."""
        got = parse_annotation('# match: failed host=1.2.3.4 user="a b"')
        assert ("match", "failed", {"host": "1.2.3.4", "user": "a b"}) == (
            got.status, got.rule, got.values
        )

    @pytest.mark.parametrize("text", ["# maybe", "# match:", "# nomatch: x", "# match: r k"])
    def test_bad_annotation(self, text: str) -> None:
        """Malformed annotations are refused."""
        with pytest.raises(ValueError):
            parse_annotation(text)

    def test_unannotated_line(self, tmp_path: Path) -> None:
        """A log line without an annotation is an error naming the line."""
        p = tmp_path / "s.log"
        p.write_text("## comment\n# nomatch\na\nb\n")
        with pytest.raises(ValueError, match=r"s\.log:4: log line without an annotation"):
            read_samples(p)

    def test_run_filter(self) -> None:
        """run_filter returns 1-based line numbers with their matches."""
        f = parse_filter(SIMPLE, "x")
        got = run_filter(f, ["noise", "bad login from 192.0.2.1\n"], NOW)
        assert [(2, ip("192.0.2.1"))] == [(n, m.host) for n, m in got]


SCAN_LINES = [
    "Nov 26 04:57:45 node1 sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
    "Nov 26 04:57:45 node1 sshd[1]: Accepted password for root from 10.0.0.1 port 22 ssh2",
    "Invalid user x from 6.6.6.6 from 192.0.2.2",
    'x "Invalid user a from 192.0.2.3"',
    "Failed password for root from 999.0.0.1 port 22 ssh2",
    "Nov 26 04:57:45 node1 other[1]: Invalid user a from 192.0.2.4",
    "",
    "I1126 04:57:45.123456 1 log.go:1] http: TLS handshake error from 192.0.2.5:1: EOF",
    'I1126 04:57:45.123456 1 httplog.go:1] "HTTP" userAgent="\n srcIP=\\"6.6.6.6:1\\" resp=401',
    '"HTTP" srcIP="192.0.2.6:1" resp=403',
]


class TestScan:
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.sampled_from(SCAN_LINES) | st.text(max_size=60) | st.just("x" * (MAX_LINE + 1)),
            max_size=120,
        ),
        st.sampled_from(["sshd", "kubelet", "etcd"]),
    )
    def test_hits_equal_per_record(self, texts: list[str], name: str) -> None:
        """A batch's hits (the daemon's per-record path) are exactly what evaluate
        gives record by record, in order, and nothing for "nomatch"."""
        f = load_filter(name)
        records = [Record(t) for t in texts]
        expected = [
            (i, o.status, o.rule, o.match.host if o.match and o.status == "match" else None)
            for i, r in enumerate(records) if (o := f.evaluate(r, NOW)).status != "nomatch"
        ]
        assert expected == [h[:4] for h in f.hits(records, NOW)]

    def test_hits_of_a_batch(self) -> None:
        """hits gives (index, status, rule, host, ...) for the matching records of a batch."""
        got = load_filter("sshd").hits([Record(t) for t in SCAN_LINES], NOW)
        assert [(0, ip("192.0.2.1")), (2, ip("192.0.2.2"))] == [
            (h[0], h[3]) for h in got if h[1] == "match"]

    def test_dense_batch(self) -> None:
        """A batch of nothing but failures (an attack) is matched whole."""
        lines = [f"Invalid user u{i} from 192.0.2.{i % 250 + 1}" for i in range(500)]
        assert list(range(500)) == [
            h[0] for h in load_filter("sshd").hits([Record(t) for t in lines], NOW)
        ]

    def test_embedded_newline(self) -> None:
        """Records whose text holds a newline are still matched one by one."""
        records = [Record("noise\nmore"), Record("Invalid user a from 192.0.2.9")]
        assert [1] == [h[0] for h in load_filter("sshd").hits(records, NOW)]


class TestRe2FastPath:
    def test_rules_run_on_the_raw_re2_call(self) -> None:
        """Every rule of the shipped text filters runs on google-re2's raw Match call
        (engine._spans' fast path), not the public wrapper it falls back to when a
        release drops the private API: that fallback costs ~4x per line."""
        import functools as ft

        for name in ("sshd", "kubelet"):
            flt = load_filter(name)
            for rule in flt._rules:  # type: ignore[attr-defined]
                assert isinstance(rule.spans, ft.partial), (name, rule.name)
