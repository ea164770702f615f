"""The rollback of a commit-confirmed change, armed outside the process that made it.

A process that waits for ``confirm`` can be killed with SIGKILL, OOM-killed or
lose its session; its own timer dies with it. So before the policy goes in, the
rollback is armed elsewhere:

- where systemd is PID 1, as a transient timer (``systemd-run --on-active``)
  whose service runs ``python -m kfwguard.firewall.baseline.watchdog --fire``;
- else as a detached process in its own session (``setsid``) that holds the
  previous table in memory and restores it at the deadline.

Either way the rollback happens only if nobody decided first: the applying
process (or the daemon) writes ``baseline.outcome.json`` with its token when
the change is confirmed or rolled back, and the watchdog then stands down. If
the applier is gone, the watchdog also answers ``kfwguard baseline confirm``.
The watchdog's deadline is the applier's plus a grace period, so a living
applier always decides first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kfwguard.firewall.baseline.apply import StateFiles, _read_json, _write_atomic

GRACE = 1.0  # seconds after the applier's deadline
POLL = 0.1


def systemd_is_init() -> bool:
    """True when systemd manages this machine (PID 1), so a transient timer outlives us."""
    try:
        return (Path("/run/systemd/system").is_dir()
                and Path("/proc/1/comm").read_text().strip() == "systemd")
    except OSError:
        return False


def held_script(state_dir: Path, token: str) -> Path:
    return state_dir / f"baseline.rollback-{token}.nft"


def arm(state_dir: Path, token: str, deadline: float, script: str) -> dict[str, Any]:
    """Arm the rollback to ``script`` at wall-clock ``deadline`` (+ grace); returns how
    it was armed, for the pending file. Raises OSError if it could not be armed."""
    fire_at = deadline + GRACE
    held = held_script(state_dir, token)
    _write_atomic(held, script)
    cmd = [sys.executable, "-m", "kfwguard.firewall.baseline.watchdog",
           "--state-dir", str(state_dir), "--token", token, "--deadline", f"{fire_at:.3f}"]
    if systemd_is_init() and shutil.which("systemd-run"):
        unit = f"kfwguard-baseline-rollback-{token[:12]}"
        subprocess.run(
            ["systemd-run", "--quiet", f"--unit={unit}", "--collect",
             f"--on-active={max(fire_at - time.time(), 1):.0f}s",
             "--description=kfwguard: roll back an unconfirmed baseline",
             *cmd, "--fire"], check=True, capture_output=True, timeout=30)
        return {"kind": "systemd", "unit": unit}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, env=os.environ.copy())
    return {"kind": "process", "pid": proc.pid}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our applier died, nobody reaped it yet) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _decided(files: StateFiles, token: str) -> bool:
    outcome = _read_json(files.outcome)
    return outcome is not None and outcome.get("token") == token


def _confirmed(files: StateFiles, token: str) -> bool:
    try:
        return files.confirm.read_text(encoding="utf-8").strip() == token
    except OSError:
        return False


def _finish(files: StateFiles, token: str, outcome: str, reason: str) -> None:
    _write_atomic(files.outcome, json.dumps({"token": token, "outcome": outcome,
                                             "reason": reason}))
    pending = _read_json(files.pending)
    if pending is not None and pending.get("token") == token:
        files.pending.unlink(missing_ok=True)
    files.confirm.unlink(missing_ok=True)


def run(state_dir: Path, token: str, deadline: float, *, fire: bool = False) -> int:
    """Wait for a decision; if none comes by ``deadline``, roll back."""
    files = StateFiles(state_dir)
    held = held_script(state_dir, token)
    try:
        script = held.read_text(encoding="utf-8")  # held in memory from now on
    except OSError:
        return 1
    try:
        while not fire and time.time() < deadline:
            if _decided(files, token):
                return 0
            pending = _read_json(files.pending) or {}
            applier = int(pending.get("pid", 0)) if pending.get("token") == token else 0
            if _confirmed(files, token) and not _alive(applier):
                _finish(files, token, "confirmed", "confirmed (answered by the watchdog)")
                return 0
            time.sleep(POLL)
        if _decided(files, token):
            return 0
        if _confirmed(files, token):
            _finish(files, token, "confirmed", "confirmed (answered by the watchdog)")
            return 0
        from kfwguard.firewall.nft import Nft, NftError

        try:
            Nft().run(script)
        except NftError as exc:
            _finish(files, token, "rollback failed", f"the watchdog could not roll back: {exc}")
            return 1
        _finish(files, token, "rolled back",
                "the deadline passed and the applying process was gone (watchdog)")
        return 0
    finally:
        held.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kfwguard-baseline-watchdog")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--fire", action="store_true", help="the timer fired: decide now")
    args = parser.parse_args(argv)
    return run(args.state_dir, args.token, args.deadline, fire=args.fire)


if __name__ == "__main__":
    sys.exit(main())
