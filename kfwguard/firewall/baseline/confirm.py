"""Commit-confirmed apply: the policy rolls back by itself unless confirmed in time."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from kfwguard.firewall.baseline.apply import (
    StateFiles,
    _read_json,
    _write_atomic,
    rollback,
    rollback_script,
)
from kfwguard.firewall.baseline.policy import BaselineError
from kfwguard.firewall.baseline.watchdog import (
    GRACE,
    _alive,
    arm,
)
from kfwguard.firewall.nft import Nft, NftError


def apply_confirmed(nft: Nft, table: str, script: str, state_dir: Path, within: float, *,
                    notify: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep, poll: float = 0.1,
                    instructions: str = "") -> bool:
    """Apply, then wait for ``confirm``; roll back on the deadline, SIGINT, SIGTERM or SIGHUP.

    Returns True if confirmed (the policy stays), False if rolled back. The
    confirmation arrives as a token file in state_dir, so ``confirm`` works
    from any shell, network namespace or container that sees the state dir.
    Must run in the main thread (it installs signal handlers).
    """
    files = StateFiles(state_dir)
    pending = _read_json(files.pending)
    if pending is not None and (_alive(int(pending.get("pid", 0))) or _alive(
            int((pending.get("watchdog") or {}).get("pid", 0)))):
        raise BaselineError(f"another apply (pid {pending['pid']}) is waiting for confirmation; "
                            "confirm it or let it roll back first")
    token = secrets.token_hex(16)
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # Handlers go in before the policy does: a signal in between must roll back, not kill us.
    old = {s: signal.signal(s, on_signal) for s in watched}
    confirmed = False
    reason = "an error"
    applied = False
    armed = False
    try:
        files.confirm.unlink(missing_ok=True)
        # The rollback is armed outside this process before the policy goes in:
        # a kill -9 of this process from now on still rolls back on time.
        nft.check(script)
        back = rollback_script(nft, table)
        nft.check(back)
        _write_atomic(files.previous, back)
        deadline_wall = time.time() + within
        try:
            watchdog = arm(state_dir, token, deadline_wall, back)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BaselineError(f"cannot arm the rollback outside this process ({exc}); "
                                "nothing was applied") from exc
        armed = True
        _write_atomic(files.pending, json.dumps({
            "pid": os.getpid(), "token": token, "table": table,
            "deadline": deadline_wall, "watchdog": watchdog}))
        nft.run(script)
        applied = True
        notify(f"applied table inet {table}; it rolls back in {within:g}s unless confirmed"
               + (f"\n{instructions}" if instructions else ""))

        def has_confirmation() -> bool:
            try:
                return files.confirm.read_text(encoding="utf-8").strip() == token
            except OSError:
                return False

        deadline = clock() + within
        while True:
            # Confirmation wins a tie with a signal or the deadline: the operator said so.
            if has_confirmation():
                confirmed = True
                break
            if received:
                reason = f"got {signal.Signals(received[0]).name}"
                break
            if clock() >= deadline:
                reason = "the deadline passed"
                break
            sleep(poll)
    finally:
        try:
            outcome = "confirmed" if confirmed else "rolled back"
            failure: NftError | None = None
            if applied and not confirmed:
                try:
                    rollback(nft, state_dir)
                except NftError as exc:
                    outcome, failure = "rollback failed", exc
            if applied or armed:
                # also what stands the watchdog down
                _write_atomic(files.outcome, json.dumps({
                    "token": token, "outcome": outcome if applied else "not applied",
                    "reason": reason}))
            if failure is not None:
                raise BaselineError(
                    f"rolling back ({reason}) failed, the new policy is still live: {failure}; "
                    f"restore by hand with: nft -f {files.previous}") from failure
        finally:
            files.pending.unlink(missing_ok=True)
            files.confirm.unlink(missing_ok=True)
            for s, h in old.items():
                signal.signal(s, h)
    if confirmed:
        notify("confirmed: the new baseline stays")
    else:
        notify(f"rolled back: {reason}")
    return confirmed


def confirm(state_dir: Path, *, timeout: float = 5.0,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """Confirm the apply that is waiting; raise BaselineError if there is none or it is too late."""
    files = StateFiles(state_dir)
    pending = _read_json(files.pending)
    if pending is None:
        raise BaselineError("no apply is waiting for confirmation")
    pid, token = int(pending.get("pid", 0)), str(pending.get("token", ""))
    watchdog = pending.get("watchdog") if isinstance(pending.get("watchdog"), dict) else {}
    assert isinstance(watchdog, dict)

    def waiting() -> bool:
        """The applier, or the watchdog that answers for it once it is gone."""
        if _alive(pid):
            return True
        if watchdog.get("kind") == "process":
            return _alive(int(watchdog.get("pid", 0)))
        if watchdog.get("kind") == "systemd":
            return time.time() < float(pending.get("deadline", 0)) + GRACE
        return False

    if not waiting():
        files.pending.unlink(missing_ok=True)
        raise BaselineError(f"the apply that was waiting (pid {pid}) is gone without rolling back; "
                            "the live baseline stays as it is (use 'baseline rollback' to undo)")
    _write_atomic(files.confirm, token + "\n")

    def answered() -> bool:
        outcome = _read_json(files.outcome)
        if outcome is None or outcome.get("token") != token:
            return False
        if outcome.get("outcome") == "confirmed":
            return True
        raise BaselineError(f"too late: {outcome.get('outcome')} ({outcome.get('reason')})")

    end = clock() + timeout
    while clock() < end and waiting():
        if answered():
            return
        sleep(0.05)
    if answered():  # the waiter may have answered just before it exited
        return
    raise BaselineError(f"the waiting apply (pid {pid}) did not answer")
