"""Config fuzzing: no input makes config parsing crash instead of explaining."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.config import Config, ConfigError, parse_config

KEYS = ["state_dir", "control_socket", "nftables", "filters_dirs", "ignoreip", "sources",
        "jails", "actions", "metrics", "tracker", "baseline", "name", "type", "path",
        "format", "match", "source", "filter", "maxretry", "findtime", "bantime",
        "bantime_increment", "factor", "max", "table", "url", "listen", "enabled", "bogus"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["10m", "1h", "file", "journald", "sshd",
                                           "10.0.0.0/8", "::1", "-1s", "1e9w"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)


def outcome(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return exc


class TestConfigFuzz:
    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
    def test_structures_explained(self, data: dict[str, Any]) -> None:
        """Any mapping of plausible keys to arbitrary values validates or yields a
        ConfigError naming the file; nothing else escapes."""
        outcome(yaml.safe_dump(data))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_arbitrary_text_explained(self, text: str) -> None:
        """Arbitrary text (broken YAML, tabs, anchors, binary-ish) is explained."""
        outcome(text)

    def test_yaml_bombs_refused_or_bounded(self) -> None:
        """Aliases expanding into a huge structure do not crash validation."""
        text = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n" \
               "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nsources: [*c, *c]\n"
        assert isinstance(outcome(text), ConfigError)
