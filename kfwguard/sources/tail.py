"""Tail a log file like ``tail -F``: follow appends, renames and truncation.

Position: ``{"dev": D, "ino": I, "off": O}`` — the file's identity and the
offset just after the last line delivered (always a line boundary). On
restart the file is found again by identity: at its path, or renamed away in
the same directory (``x.log.1``, ``audit-2026-11-26T04-57-45.123.log``, …),
in which case that file is read to its end before the current one is read
from its start.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import structlog

from kfwguard.model import MAX_LINE, Record
from kfwguard.sources.base import MAX_BATCH, Backlog, Sink
from kfwguard.sources.formats import Line, LineFormat, LineSplitter, make_decoder, text_blocks
from kfwguard.sources.inotify import (
    IN_IGNORED,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    DirWatch,
    Event,
)

# Large reads keep the syscall count low on a busy file; small enough that
# one read does not hold the event loop for long.
CHUNK = 256 * 1024
# Re-check the path this often even without inotify news: catches a file
# moved out of the directory, a recreated directory, or a lost event.
RECHECK = 1.0
# Without inotify (no instances left) the re-check is all there is.
RECHECK_NO_INOTIFY = 0.25
# Bytes before the read offset remembered to spot a file that was truncated
# and then grew past the old offset before we looked.
_SIG = 32

Identity = tuple[int, int]


def parse_position(position: str | None) -> tuple[int, int, int] | None:
    """(dev, ino, offset) from a position string, None when absent or unusable."""
    if not position:
        return None
    try:
        data = json.loads(position)
        dev, ino, off = data["dev"], data["ino"], data["off"]
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dev, ino, off)):
        return None
    return dev, ino, off


def format_position(dev: int, ino: int, off: int) -> str:
    return f'{{"dev":{dev},"ino":{ino},"off":{off}}}'


# Conditions (FileSource._said keys) under which no file is being read, in
# the order status names them, with what it says.
_NOT_READING = (
    ("nodir", "no such directory; waiting for it"),
    ("missing", "no such file; waiting for it"),
    ("outside", "resolves outside its directory: not read (allow_outside_dir)"),
    ("notreg", "not a regular file"),
    ("open", "cannot be opened"),
    ("stat", "cannot be examined"),
)


class FileSource:
    """A ``type: file`` source with a plain path (formats text, json, cri); the
    options are those of kfwguard.sources.file.FileSourceConfig."""


    def __init__(
        self,
        name: str,
        path: Path,
        position: str | None,
        *,
        fmt: LineFormat = "text",
        allow_outside_dir: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.path = Path(os.path.abspath(path))
        self.format = fmt
        self._allow_outside = allow_outside_dir
        self.lines_read = 0
        self.skipped: dict[str, int] = {}
        self._clock = clock
        self._saved = parse_position(position)
        self._bad_position: str | None = (
            position if position and self._saved is None else None
        )
        self._decoder = make_decoder(fmt, self.skipped)
        self._split = LineSplitter(0, self.skipped)
        self._fd: int | None = None
        self._ident: Identity = (0, 0)
        # Name in the directory of the file being read: the path's name, or
        # the name it was renamed to, so inotify events for it still wake us.
        self._name = self.path.name.encode()
        self._moved_cookie = 0
        self._prefix = ""
        self._sig = b""
        self._last_time: float | None = None
        # When the reader last stood at the end of the open file (or opened it):
        # unread bytes were written after it, so lag() is an upper bound.
        self._caught_up_at: float | None = None
        self._delivered: str | None = None
        # Set once the starting position is fixed: lines written after this
        # are read (the daemon reports READY only then).
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._said: set[str] = set()
        self._log = structlog.get_logger().bind(source=self.name, path=str(self.path))

    # -- API ------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        if self._fd is not None:
            return f"{self.path}: read error" if "io" in self._said else None
        for key, text in _NOT_READING:
            if key in self._said:
                return f"{self.path}: {text}"
        return None

    def position(self) -> str | None:
        return self._delivered

    def lag(self) -> float | None:
        if self._caught_up_at is None:
            return None
        if self.backlog().caught_up:
            return 0.0
        return max(0.0, self._clock() - self._caught_up_at)

    def backlog(self) -> Backlog:
        """Bytes of the open file past the read offset (size - offset); a file not
        open (missing) has none."""
        unread = 0
        if self._fd is not None:
            try:
                unread = max(0, os.fstat(self._fd).st_size - self._split.read_offset)
            except OSError:
                unread = 0
        return Backlog(unread_bytes=unread, caught_up=unread == 0)

    async def run(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        watch = DirWatch(self.path.parent, self._on_events)
        recheck = RECHECK
        try:
            watch.start(loop)
        except OSError as exc:
            self._log.warning("source.inotify_unavailable", error=str(exc))
            recheck = RECHECK_NO_INOTIFY
        try:
            self._watch(watch)
            self._caught_up_at = self._clock()
            self._start()
            self.ready.set()
            while True:
                self._wake.clear()
                try:
                    if self._fd is not None:
                        await self._drain(sink)
                    if await self._check_path(sink):
                        continue
                    self._said.discard("io")
                except OSError as exc:
                    # EIO, a stale NFS handle…: keep the position and retry
                    # at the next re-check rather than end the source.
                    self._once("io", "source.read_error", error=str(exc))
                try:
                    async with asyncio.timeout(recheck):
                        await self._wake.wait()
                except TimeoutError:
                    self._watch(watch)
        finally:
            watch.close()
            self._close()

    # -- opening --------------------------------------------------------------

    def _start(self) -> None:
        if self._bad_position is not None:
            self._log.warning("source.position_invalid", position=self._bad_position[:200])
        st = self._stat(self.path)
        if self._saved is None:
            # First run: only what is written from now on is new. A file
            # that appears later is new as a whole and is read from its start.
            if st is not None:
                self._open(self.path, "end")
            return
        dev, ino, off = self._saved
        if st is not None and (st.st_dev, st.st_ino) == (dev, ino):
            self._open(self.path, off)
            return
        rotated = self._find_inode(dev, ino)
        if rotated is not None:
            self._log.info("source.resume_rotated", file=str(rotated), offset=off)
            self._open(rotated, off)
        elif st is not None:
            self._log.warning(
                "source.position_file_gone",
                detail="the file of the saved position is gone; reading the current file "
                "from its start (lines written to the old file after the stop are lost)",
            )
            self._open(self.path, 0)

    def _find_inode(self, dev: int, ino: int) -> Path | None:
        try:
            with os.scandir(self.path.parent) as it:
                for entry in it:
                    if entry.name == self.path.name or entry.inode() != ino:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_dev == dev:
                        return Path(entry.path)
        except OSError:
            return None
        return None

    def _stat(self, path: Path) -> os.stat_result | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._once("stat", "source.stat_failed", error=str(exc))
            return None
        if not stat.S_ISREG(st.st_mode):
            self._once("notreg", "source.not_a_regular_file")
            return None
        self._said.discard("notreg")
        return st

    def _open(self, path: Path, offset: int | Literal["end"]) -> bool:
        try:
            # O_NONBLOCK: if the path is swapped for a FIFO between stat and
            # open, the open must not hang the event loop.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._once("open", "source.open_failed", error=str(exc))
            return False
        self._said.discard("open")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._once("notreg", "source.not_a_regular_file")
            return False
        if not self._allow_outside and not self._inside_dir(fd):
            os.close(fd)
            return False
        skip_fragment = False
        if offset == "end":
            offset, skip_fragment = self._tail_start(fd, st.st_size)
        elif offset > st.st_size:
            self._log.warning("source.truncated_while_stopped", offset=offset, size=st.st_size)
            offset = 0
        self._close()
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self._name = path.name.encode()
        self._prefix = f'{{"dev":{st.st_dev},"ino":{st.st_ino},"off":'
        self._split = LineSplitter(offset, self.skipped)
        if skip_fragment:
            self._split.skip_to_next_line()
        else:
            self._delivered = self._pos(offset)
        self._decoder.reset()
        self._sig = os.pread(fd, min(_SIG, offset), offset - min(_SIG, offset))
        self._said.discard("missing")
        return True

    def _inside_dir(self, fd: int) -> bool:
        """Whether the file open at ``fd`` lies in the configured directory. Read
        from the descriptor itself (not the path), so a symlink swapped in
        between check and open cannot slip past: a path under a log directory
        that resolves to, say, /etc/shadow is refused, not read."""
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            home = os.path.realpath(self.path.parent)
        except OSError:
            return True  # no /proc: nothing to compare with, as before
        if os.path.dirname(real) == home:
            self._said.discard("outside")
            return True
        if "outside" not in self._said:
            # Shown in status with the source's skips (once per refusal spell).
            self.skipped["outside_directory"] = self.skipped.get("outside_directory", 0) + 1
        self._once("outside", "source.outside_directory", resolves_to=real,
                   detail="the log path resolves outside its directory; not read "
                   "(set allow_outside_dir: true on the source if this is intended)")
        return False

    @staticmethod
    def _tail_start(fd: int, size: int) -> tuple[int, bool]:
        """Where tailing starts: after the last complete line, so a line being
        written right now is delivered once complete and never in pieces."""
        base = max(0, size - MAX_LINE)
        tail = os.pread(fd, size - base, base)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return base + nl + 1, False
        if base == 0:
            return 0, False
        return size, True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading --------------------------------------------------------------

    def _pos(self, off: int) -> str:
        return self._prefix + str(off) + "}"

    async def _drain(self, sink: Sink) -> None:
        """Read the open file to its current end, delivering complete lines."""
        fd = self._fd
        assert fd is not None
        split = self._split
        size = os.fstat(fd).st_size
        if size < split.read_offset or not self._same_bytes(fd):
            self._log.warning("source.truncated", offset=split.read_offset, size=size)
            split = self._split = LineSplitter(0, self.skipped)
            self._decoder.reset()
            self._sig = b""
        while self._fd == fd:
            data = os.pread(fd, CHUNK, split.read_offset)
            if not data:
                self._caught_up_at = self._clock()
                return
            self._sig = (self._sig + data[-_SIG:])[-_SIG:]
            block = split.feed_block(data) if self.format == "text" else None
            if block is not None:
                await self._deliver_block(sink, *block)
            elif lines := split.feed(data):
                await self._deliver(sink, self._decoder.decode(lines, self._pos))
            # Fairness: let other sources and the daemon run between chunks.
            await asyncio.sleep(0)
            if len(data) < CHUNK:
                self._caught_up_at = self._clock()
                return

    def _same_bytes(self, fd: int) -> bool:
        n = len(self._sig)
        if not n:
            return True
        return os.pread(fd, n, self._split.read_offset - n) == self._sig

    async def _deliver_block(self, sink: Sink, data: bytes, start: int) -> None:
        """Deliver complete lines as TextBlocks of at most MAX_BATCH lines each."""
        first = True
        for block in text_blocks(data, start, self._pos, MAX_BATCH):
            n = len(block)
            if not first:
                await asyncio.sleep(0)
            first = False
            sink(block)
            self.lines_read += n
            self._last_time = self._clock()
            self._delivered = block.end_position

    async def _deliver(self, sink: Sink, records: list[Record]) -> None:
        if not records:
            return
        for i in range(0, len(records), MAX_BATCH):
            if i:
                await asyncio.sleep(0)
            batch = records[i:i + MAX_BATCH]
            sink(batch)
            self.lines_read += len(batch)
            self._delivered = batch[-1].position
        last = records[-1].time
        self._last_time = last if last is not None else self._clock()

    async def _check_path(self, sink: Sink) -> bool:
        """At the end of the open file: has the path moved on to a new file?
        Returns True when another file was opened (read it at once)."""
        st = self._stat(self.path)
        if st is None:
            if self._fd is None:
                self._once("missing", "source.waiting_for_file")
            return False
        if self._fd is None:
            if self._open(self.path, 0):
                self._log.info("source.file_appeared")
                return True
            return False
        if (st.st_dev, st.st_ino) == self._ident:
            return False
        # Rotated: the writer may still have appended to the old file after
        # our last read, so read it to the end once more before switching.
        await self._drain(sink)
        split = self._split
        held: list[Line] = []
        last = split.take_unterminated()
        if last is not None:
            held.append(last)
        records = self._decoder.decode(held, self._pos)
        records += self._decoder.finish(self._pos, split.read_offset)
        await self._deliver(sink, records)
        self._log.info("source.rotated", old_size=split.read_offset)
        if self._open(self.path, 0):
            return True
        self._close()
        return False

    # -- notification -----------------------------------------------------------

    def _watch(self, watch: DirWatch) -> None:
        if watch.ensure():
            self._said.discard("nodir")
        elif not self.path.parent.is_dir():
            self._once("nodir", "source.waiting_for_directory")

    def _on_events(self, events: list[Event]) -> None:
        wake = False
        for mask, cookie, name in events:
            if mask & (IN_Q_OVERFLOW | IN_IGNORED) or not name:
                wake = True
            elif name == self._name or name == self.path.name.encode():
                wake = True
                if mask & IN_MOVED_FROM and name == self._name:
                    self._moved_cookie = cookie
            elif mask & IN_MOVED_TO and cookie and cookie == self._moved_cookie:
                # The file being read was renamed (rotation): keep hearing about
                # appends to it under its new name until we switch.
                self._name = name
                self._moved_cookie = 0
                wake = True
        if wake:
            self._wake.set()

    def _once(self, key: str, event: str, **kw: object) -> None:
        """Log a condition once until it clears, not on every re-check."""
        if key not in self._said:
            self._said.add(key)
            self._log.warning(event, **kw)
