"""One daemon per state_dir: an flock on ``<state_dir>/kfwguard.lock`` holding its pid."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import structlog

from kfwguard.lifecycle import StartupError

log = structlog.get_logger("kfwguard.daemon")

# In state_dir: held (flock) by the running daemon, holding its pid.
LOCK_NAME = "kfwguard.lock"


class StateLock:
    def __init__(self) -> None:
        self._fd: int | None = None

    def take(self, state_dir: Path) -> None:
        """One daemon per state_dir, decided before anything touches the kernel: a
        second `kfwguard run` on the same config must not restore bans into the
        first one's table before it finds out (the control socket tells only later).
        Raises StartupError naming the holder's pid."""
        path = state_dir / LOCK_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                # An unusable state_dir is reported by the store; the control
                # socket still keeps a second daemon out.
                log.warning("lock_unavailable", path=str(path), error=str(exc))
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError(f"another kfwguard{pid} is running with state_dir "
                               f"{state_dir}; not starting") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
