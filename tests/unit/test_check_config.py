"""check-config refuses what run would refuse or silently ignore."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kfwguard.cli import main
from kfwguard.config import ConfigError, parse_config

BASE = """\
state_dir: {tmp}/state
control_socket: {tmp}/c.sock
sources:
  - {{name: auth, type: file, path: {tmp}/auth.log}}
jails:
  - {{name: sshd, source: auth, filter: sshd}}
"""


def check(tmp_path: Path, extra: str = "", base: str = BASE) -> tuple[int, str]:
    cfg = tmp_path / "k.yaml"
    cfg.write_text(base.format(tmp=tmp_path) + extra)
    r = CliRunner().invoke(main, ["check-config", "-c", str(cfg)])
    # The base config reads a syslog file on purpose (no journald needed); the
    # warning that draws is pinned down in tests/integration/test_forged_logs.py.
    out = "".join(line for line in r.output.splitlines(keepends=True)
                  if "reads the syslog file" not in line)
    return r.exit_code, out


class TestCheckConfig:
    def test_valid_passes(self, tmp_path: Path) -> None:
        """The base config passes, so each failure below is the one change's."""
        assert (0, f"{tmp_path / 'k.yaml'}: OK (1 sources, 1 jails)\n") == check(tmp_path)

    @pytest.mark.parametrize("listen", ["localhost", "9741", "127.0.0.1:http", "[::1]:70000"])
    def test_metrics_listen_without_port(self, tmp_path: Path, listen: str) -> None:
        """metrics.listen that run could not bind (it ran on without metrics) is an
        error naming the line and the key."""
        code, out = check(tmp_path, f"metrics: {{listen: '{listen}'}}\n")
        assert 2 == code
        assert f"k.yaml: line 7: metrics.listen: '{listen}': expected HOST:PORT" in out

    def test_relative_log_path(self, tmp_path: Path) -> None:
        """A relative source path (run would read it relative to /) is refused."""
        base = BASE.replace("path: {tmp}/auth.log", "path: var/log/auth.log")
        code, out = check(tmp_path, base=base)
        assert 2 == code
        assert "line 4: sources[0].path: must be an absolute path, not 'var/log/auth.log'" in out

    @pytest.mark.parametrize("key", ["state_dir: state", "control_socket: c.sock",
                                     "filters_dirs: [filters]"])
    def test_relative_daemon_paths(self, key: str) -> None:
        """state_dir, control_socket and filters_dirs must be absolute too."""
        with pytest.raises(ConfigError, match="must be an absolute path"):
            parse_config(key + "\n")

    def test_missing_filters_dir(self, tmp_path: Path) -> None:
        """A filters_dirs entry that is not a folder (run skips it silently) is
        reported as a warning; a jail whose filter only it could hold fails."""
        (tmp_path / "k.yaml").write_text(BASE.format(tmp=tmp_path)
                                         + f"filters_dirs: [{tmp_path}/nope]\n")
        r = CliRunner().invoke(main, ["check-config", "-c", str(tmp_path / "k.yaml")])
        assert 0 == r.exit_code
        assert (f"warning: filters_dirs: '{tmp_path}/nope' is not a directory; no filter is "
                "read from it") in r.output
        mine = BASE.replace("filter: sshd", "filter: my-sshd")
        code, out = check(tmp_path, f"filters_dirs: [{tmp_path}/nope]\n", base=mine)
        assert 2 == code
        assert "jail 'sshd'" in out and "my-sshd" in out
        (tmp_path / "nope").mkdir()
        (tmp_path / "nope" / "my-sshd.yaml").write_text(
            (Path(__file__).resolve().parents[2] / "filters" / "sshd.yaml").read_text())
        assert (0, f"{tmp_path / 'k.yaml'}: OK (1 sources, 1 jails)\n") == check(
            tmp_path, f"filters_dirs: [{tmp_path}/nope]\n", base=mine)

    def test_embedded_default_passes(self) -> None:
        """The embedded default (its filters_dirs folder absent here) passes."""
        r = CliRunner().invoke(main, ["check-config"], env={"KFWGUARD_CONFIG": ""})
        assert 0 == r.exit_code, r.output
