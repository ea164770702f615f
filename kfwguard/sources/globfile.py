"""A file source whose ``path`` is a glob: follows the newest matching file.

Static pods' logs live under names that change with every pod and container
instance (``/var/log/pods/kube-system_etcd-<node>_<uid>/etcd/<restart>.log``),
so a fixed path cannot name them. This source tails the newest file matching
the pattern (with all of the plain file source's rotation handling) and moves
to a newer match when one appears: a restarted container's new log is read
from its start. Positions are the inner file source's (device, inode, offset):
on restart the matching file with that inode is found again.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from kfwguard.sources.base import Backlog, Sink
from kfwguard.sources.formats import LineFormat
from kfwguard.sources.tail import FileSource, format_position, parse_position

# How often the pattern is re-evaluated for a newer file.
RESCAN = 2.0


def is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _matches(pattern: str) -> list[tuple[float, str, os.stat_result]]:
    out = []
    for p in glob.glob(pattern):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if os.path.isfile(p):
            out.append((st.st_mtime, p, st))
    return sorted(out)


class GlobFileSource:
    """``type: file`` with a glob ``path``: the newest matching file, followed."""


    def __init__(self, name: str, pattern: Path, position: str | None, *,
                 fmt: LineFormat = "text", allow_outside_dir: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.pattern = os.path.abspath(str(pattern))
        self.format: LineFormat = fmt
        self._allow_outside = allow_outside_dir
        self._clock = clock
        self._position = position
        self._inner: FileSource | None = None
        self._skipped_before: dict[str, int] = {}
        self._lines_before = 0
        self.ready = asyncio.Event()
        self._log = structlog.get_logger().bind(source=self.name, pattern=self.pattern)

    # -- the Source protocol ------------------------------------------------

    @property
    def lines_read(self) -> int:
        return self._lines_before + (self._inner.lines_read if self._inner else 0)

    @property
    def skipped(self) -> dict[str, int]:
        out = dict(self._skipped_before)
        if self._inner is not None:
            for k, v in self._inner.skipped.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def problem(self) -> str | None:
        if self._inner is not None:
            return self._inner.problem
        return f"no file matches {self.pattern}" if self.ready.is_set() else None

    def lag(self) -> float | None:
        if self._inner is not None:
            return self._inner.lag()
        return 0.0 if self.ready.is_set() else None

    def backlog(self) -> Backlog:
        if self._inner is not None:
            return self._inner.backlog()
        return Backlog(unread_bytes=0, caught_up=True)

    def position(self) -> str | None:
        if self._inner is not None:
            return self._inner.position()
        return self._position

    async def run(self, sink: Sink) -> None:
        current, position = self._resume_target()
        said_waiting = False
        task: asyncio.Task[None] | None = None
        try:
            while True:
                if current is None:
                    found = _matches(self.pattern)
                    if found:
                        current, position = found[-1][1], None
                        if said_waiting:
                            # Appeared after we started: it is new as a whole.
                            st = found[-1][2]
                            position = format_position(st.st_dev, st.st_ino, 0)
                    elif not said_waiting:
                        self._log.warning("source.waiting_for_match")
                        said_waiting = True
                        self.ready.set()
                if current is not None and task is None:
                    task = await self._start(current, position, sink)
                await asyncio.sleep(RESCAN)
                if task is not None and task.done():
                    task.result()  # a crashed inner source surfaces to the daemon
                newer = self._newer_than(current)
                if newer is not None and task is not None:
                    self._log.info("source.switching_file", old=current, new=newer[1])
                    await self._stop(task)
                    task = None
                    current = newer[1]
                    st = newer[2]
                    position = format_position(st.st_dev, st.st_ino, 0)
        finally:
            if task is not None:
                await self._stop(task)

    # -- helpers ------------------------------------------------------------

    def _resume_target(self) -> tuple[str | None, str | None]:
        saved = parse_position(self._position)
        if saved is None:
            return None, None
        dev, ino, _ = saved
        for _, path, st in _matches(self.pattern):
            if (st.st_dev, st.st_ino) == (dev, ino):
                return path, self._position
        self._log.warning("source.position_file_gone",
                          detail="reading the newest matching file from its start")
        found = _matches(self.pattern)
        if not found:
            return None, None
        st = found[-1][2]
        return found[-1][1], format_position(st.st_dev, st.st_ino, 0)

    def _newer_than(self, current: str | None) -> tuple[float, str, os.stat_result] | None:
        found = _matches(self.pattern)
        if not found or current is None:
            return None
        newest = found[-1]
        if newest[1] == current:
            return None
        try:
            cur_mtime = os.stat(current).st_mtime
        except OSError:
            return newest
        return newest if newest[0] > cur_mtime else None

    async def _start(self, path: str, position: str | None, sink: Sink) -> asyncio.Task[None]:
        inner = FileSource(self.name, Path(path), position, fmt=self.format,
                           allow_outside_dir=self._allow_outside, clock=self._clock)
        if self._inner is not None:
            self._lines_before += self._inner.lines_read
            for k, v in self._inner.skipped.items():
                self._skipped_before[k] = self._skipped_before.get(k, 0) + v
        self._inner = inner
        task = asyncio.create_task(inner.run(sink), name=f"source:{self.name}:{path}")
        await inner.ready.wait()
        self.ready.set()
        return task

    @staticmethod
    async def _stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
