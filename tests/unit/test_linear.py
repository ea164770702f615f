"""Matching is linear in the input: patterns that make a backtracking engine take
exponential time finish at once here. A regression would hang the test until
pytest-timeout fails it; nothing here measures time."""

from __future__ import annotations

import pytest

from kfwguard.matching import parse_filter
from kfwguard.model import Record

NOW = 1_800_000_000.0

EVIL = """
rules:
  - name: evil
    regex: '^(?:x+x+)+y from <HOST>$'
  - name: nested
    regex: '^(?:a|aa)+(?:b|bb)+ from <HOST> port \\d+$'
"""


class TestLinearTime:
    @pytest.mark.timeout(20)
    def test_catastrophic_patterns_do_not_backtrack(self) -> None:
        """(x+x+)+y against 50k x's with no y — seconds-to-forever for Python's re —
        is answered (no match) without stalling; so is (a|aa)+(b|bb)+ on 50k a's."""
        f = parse_filter(EVIL, "evil")
        for text in ("x" * 50_000, "a" * 50_000 + "c from 203.0.113.1 port 1"):
            assert f.match(Record(text), NOW) is None

    @pytest.mark.timeout(20)
    def test_hostile_lines_against_every_shipped_filter(self) -> None:
        """Long adversarial lines built from the filters' own vocabulary never stall
        any shipped filter."""
        from kfwguard.matching import load_filter, shipped_filter_names

        pieces = ["Failed password for ", "invalid user ", " from 1.2.3.4 port 22 ssh2",
                  'srcIP="1.2.3.4:1" ', "resp=401 ", "http: TLS handshake error from ",
                  '{"remote-addr":"', "[", "\\", '"']
        lines = [(p * (60_000 // len(p)))[:60_000] for p in pieces]
        lines.append("".join(pieces) * 300)
        for name in shipped_filter_names():
            f = load_filter(name)
            for line in lines:
                f.match(Record(line), NOW)
