"""Directory change notification through inotify (ctypes, no dependency).

A source watches the directory of its file, not the file: that way it sees
the file being created, renamed away, replaced and appended to with one watch
that survives all of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
    | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_HEADER = struct.Struct("iIII")

# One inotify event: mask, rename cookie, name of the entry in the directory
# (b"" for events about the directory itself).
Event = tuple[int, int, bytes]

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


class DirWatch:
    """Calls ``on_events`` on the event loop with the events seen in ``directory``."""

    def __init__(self, directory: Path, on_events: Callable[[list[Event]], None]) -> None:
        self.directory = directory
        self._on_events = on_events
        self._fd = -1
        self._wd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the inotify instance; raises OSError when inotify is unavailable."""
        fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._loop = loop
        loop.add_reader(fd, self._readable)

    def ensure(self) -> bool:
        """(Re)add the watch; True when the directory is being watched.

        Cheap and idempotent, so it is called on every slow re-check: a
        directory that was missing or was deleted and created again gets
        watched again without any bookkeeping of why the watch went away.
        """
        if self._fd < 0:
            return False
        wd = _lib().inotify_add_watch(self._fd, os.fsencode(self.directory), _MASK)
        self._wd = int(wd)
        return int(wd) >= 0

    def _readable(self) -> None:
        events: list[Event] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not buf:
                break
            pos = 0
            while pos + _HEADER.size <= len(buf):
                _wd, mask, cookie, length = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                name = buf[pos:pos + length].rstrip(b"\0")
                pos += length
                events.append((mask, cookie, name))
        if events:
            self._on_events(events)

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
