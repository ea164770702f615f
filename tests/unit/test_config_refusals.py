"""A config that says nothing, or a named config that is missing, is refused:
never a silent run with no jails or on the embedded default (issue 11, item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kfwguard.config import ConfigError, load_config_or_default, parse_config


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kfwguard", "check-config", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class TestEmptyConfig:
    @pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
    def test_parse_refuses_empty(self, text: str) -> None:
        """An empty file, or one with only comments, is an error that says so."""
        with pytest.raises(ConfigError, match="the config is empty"):
            parse_config(text, "/etc/kfwguard/kfwguard.yaml")

    def test_explicit_empty_mapping_is_all_defaults(self) -> None:
        """``{}`` is a deliberate choice of every default, still accepted."""
        assert [] == parse_config("{}\n").jails

    def test_check_config_refuses_empty_file(self, tmp_path: Path) -> None:
        """``kfwguard check-config`` fails with a clear message on an empty file."""
        path = tmp_path / "kfwguard.yaml"
        path.write_text("")
        r = check_config("-c", str(path))
        assert 2 == r.returncode
        assert "the config is empty" in r.stderr
        assert str(path) in r.stderr

    def test_run_refuses_empty_file(self, tmp_path: Path) -> None:
        """``kfwguard run`` on an empty file stops at once with the reason, before
        touching anything."""
        path = tmp_path / "kfwguard.yaml"
        path.write_text("# nothing yet\n")
        r = subprocess.run([sys.executable, "-m", "kfwguard", "run", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
        assert 2 == r.returncode
        assert "the config is empty" in r.stdout + r.stderr


class TestMissingNamedConfig:
    def test_env_naming_missing_file_is_an_error(self, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """KFWGUARD_CONFIG naming a missing file is refused, not replaced by the
        embedded default."""
        missing = tmp_path / "typo.yaml"
        monkeypatch.setenv("KFWGUARD_CONFIG", str(missing))
        with pytest.raises(ConfigError, match="no such file") as exc:
            load_config_or_default(None)
        assert str(missing) in str(exc.value)

    def test_check_config_with_missing_env_file(self, tmp_path: Path) -> None:
        """check-config exits non-zero when KFWGUARD_CONFIG names a missing file."""
        missing = tmp_path / "typo.yaml"
        r = check_config(env={"KFWGUARD_CONFIG": str(missing)})
        assert 2 == r.returncode
        assert "no such file" in r.stderr

    def test_env_naming_existing_file_is_read(self, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """KFWGUARD_CONFIG naming a file loads that file."""
        path = tmp_path / "k.yaml"
        path.write_text("node_name: from-env\n")
        monkeypatch.setenv("KFWGUARD_CONFIG", str(path))
        cfg, origin = load_config_or_default(None)
        assert ("from-env", str(path)) == (cfg.node_name, origin)
