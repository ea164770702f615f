"""Config parsing: the contract keys, unknown keys, errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfwguard.config import ConfigError, default_config_text, load_config, parse_config
from kfwguard.durations import format_duration, parse_duration

CONTRACT = """
state_dir: /var/lib/kfwguard
control_socket: /run/kfwguard/control.sock
nftables: {table: kfwguard}
filters_dirs: []
ignoreip: [192.0.2.0/24]
sources:
  - {name: auth, type: file, path: /var/log/auth.log}
jails:
  - name: sshd
    source: auth
    filter: sshd
    maxretry: 5
    findtime: 10m
    bantime: 1h
    bantime_increment: {factor: 2, max: 1w}
    ignoreip: []
"""


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("30s", 30), ("10m", 600), ("1h", 3600), ("1w", 604800), ("1h30m", 5400),
         ("2d", 172800), (45, 45), ("15", 15), ("250ms", 0.25)],
    )
    def test_parses_operator_forms(self, text: object, seconds: float) -> None:
        """Durations accept s/m/h/d/w suffixes, combinations and bare seconds."""
        assert seconds == parse_duration(text)

    @pytest.mark.parametrize("text", ["", "1x", "h", "-5", "1h-", True, None, [1]])
    def test_rejects_garbage(self, text: object) -> None:
        """Anything that is not a duration is refused with ValueError."""
        with pytest.raises(ValueError):
            parse_duration(text)

    def test_formats_compactly(self) -> None:
        """format_duration renders the largest units first."""
        assert "1h30m" == format_duration(5400)


class TestConfig:
    def test_contract_keys_load(self) -> None:
        """The keys the issue lists as a contract load into typed values."""
        cfg = parse_config(CONTRACT)
        jail = cfg.jails[0]
        assert (5, 600.0, 3600.0) == (jail.maxretry, jail.findtime, jail.bantime)
        assert jail.bantime_increment is not None
        assert 604800.0 == jail.bantime_increment.max
        assert "kfwguard" == cfg.nftables.table
        assert "192.0.2.0/24" == str(cfg.ignoreip[0])

    def test_unknown_key_names_line_and_key(self) -> None:
        """An unknown key is refused, naming the file, its line and its path."""
        text = CONTRACT.replace("    maxretry: 5", "    maxretry: 5\n    maxretries: 3")
        with pytest.raises(ConfigError) as err:
            parse_config(text, "kfw.yaml")
        assert "kfw.yaml: line 14: jails[0].maxretries: unknown key" == str(err.value)

    def test_bad_value_names_line(self) -> None:
        """A value of the wrong type names the line of the offending key."""
        text = CONTRACT.replace("findtime: 10m", "findtime: soon")
        with pytest.raises(ConfigError) as err:
            parse_config(text, "kfw.yaml")
        assert "line 14: jails[0].findtime: invalid duration" in str(err.value)

    def test_missing_required_key_named(self) -> None:
        """A missing required key is named with its parent's line."""
        with pytest.raises(ConfigError) as err:
            parse_config("sources:\n  - {name: a, type: file}\n", "x.yaml")
        assert "sources[0].path: Field required" in str(err.value)

    def test_undefined_source_refused(self) -> None:
        """A jail naming a source that does not exist is refused."""
        text = CONTRACT.replace("source: auth", "source: nope")
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert "names source 'nope'" in str(err.value)

    def test_undefined_source_names_its_line(self) -> None:
        """A jail naming an unknown source is blamed on the line of its source key."""
        text = CONTRACT.replace("source: auth", "source: nope")
        with pytest.raises(ConfigError) as err:
            parse_config(text, "k.yaml")
        assert ("k.yaml: line 11: jails[0].source: jail 'sshd' names source 'nope', which "
                "is not defined (defined: auth)") == str(err.value)

    def test_duplicate_jail_names_the_repeat(self) -> None:
        """A repeated jail name is blamed on the line of the second jail's name."""
        text = CONTRACT + "  - {name: sshd, source: auth, filter: sshd}\n"
        with pytest.raises(ConfigError) as err:
            parse_config(text, "k.yaml")
        assert ("k.yaml: line 18: jails[1].name: jail names must be unique; 'sshd' is "
                "repeated") == str(err.value)

    def test_duplicate_source_names_the_repeat(self) -> None:
        """A repeated source name is blamed on the line of the second source."""
        text = CONTRACT.replace(
            "jails:", "  - {name: auth, type: file, path: /var/log/x.log}\njails:")
        with pytest.raises(ConfigError) as err:
            parse_config(text, "k.yaml")
        assert ("k.yaml: line 9: sources[1].name: source names must be unique; 'auth' is "
                "repeated") == str(err.value)

    def test_missing_filter_names_its_line(self) -> None:
        """A jail whose filter is nowhere is blamed on the line of its filter key, in
        the config file (check-config and run both load filters this way)."""
        from kfwguard.pipeline import build_filters

        cfg = parse_config(CONTRACT.replace("filter: sshd", "filter: sshd-typo"), "k.yaml")
        with pytest.raises(ConfigError) as err:
            build_filters(cfg)
        assert str(err.value).startswith(
            "k.yaml: line 12: jails[0].filter: jail 'sshd': sshd-typo: no filter of that name")

    def test_invalid_yaml_names_line(self) -> None:
        """Broken YAML is reported with its line, not a traceback."""
        with pytest.raises(ConfigError) as err:
            parse_config("jails:\n  - name: [x\n", "bad.yaml")
        assert str(err.value).startswith("bad.yaml: line ")

    def test_non_mapping_refused(self) -> None:
        """A config that is not a mapping is refused clearly."""
        with pytest.raises(ConfigError):
            parse_config("- a\n- b\n")

    def test_bad_cidr_refused(self) -> None:
        """An ignoreip entry that is not an address or CIDR is refused."""
        with pytest.raises(ConfigError) as err:
            parse_config("ignoreip: [10.0.0.300/8]\n")
        assert "ignoreip[0]" in str(err.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file is a ConfigError naming the path."""
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / "none.yaml")
        assert "no such file" in str(err.value)

    def test_embedded_default_is_valid(self) -> None:
        """The config shipped in the package validates."""
        cfg = parse_config(default_config_text(), "<embedded default>")
        assert cfg.jails
