"""The CLI as a new user meets it: clean errors, no noise from libraries, and
pipelines that stop early are not errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kfwguard(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kfwguard", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, **kw)  # type: ignore[call-overload, no-any-return]


class TestTestFilter:
    def test_bad_regex_is_one_clean_error(self, tmp_path: Path) -> None:
        """A regex RE2 rejects gives kfwguard's error naming file, line and rule and
        RE2's reason, with no raw absl/RE2 log line and no <HOST> expansion."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("description: bad\nformat: text\nrules:\n"
                       "  - name: r\n    regex: '^Failed (password <HOST>'\n"
                       "  - name: s\n    regex: '^a{1001} <HOST>'\n")
        log = tmp_path / "log"
        log.write_text("x\n")
        r = kfwguard("test-filter", str(bad), str(log))
        assert 1 == r.returncode
        assert "" == r.stdout
        lines = r.stderr.splitlines()
        assert 2 == len(lines), r.stderr
        assert lines[0].startswith(f"kfwguard test-filter: {bad}: line 5: rules[0].regex "
                                   "(rule 'r'): RE2 cannot compile it: missing );")
        assert lines[1].startswith(f"{bad}: line 7: rules[1].regex (rule 's'): RE2 cannot "
                                   "compile it: invalid repetition size: {1001};")
        assert "absl" not in r.stderr and "re2.cc" not in r.stderr
        assert "(?P<host>" not in r.stderr

    def test_json_into_head_is_not_an_error(self, tmp_path: Path) -> None:
        """`test-filter … --json | head -1`: the reader leaving early ends the command
        quietly (exit 0), not with "Broken pipe" blamed on the log file."""
        log = tmp_path / "auth.log"
        log.write_text("".join(
            f"Nov 30 05:00:00 host sshd[1]: Invalid user u{i} from 192.0.2.{i % 250 + 1} "
            "port 22\n" for i in range(5000)))
        proc = subprocess.Popen([sys.executable, "-m", "kfwguard", "test-filter", "sshd",
                                 str(log), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after its line
        err = proc.stderr.read().decode()
        proc.stderr.close()
        rc = proc.wait(timeout=120)
        assert "invalid-user" == json.loads(first)["rule"]
        assert (0, "") == (rc, err)
