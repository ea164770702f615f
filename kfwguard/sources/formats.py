"""Byte stream → lines → records: the line splitter and the text/json/cri decoders.

Pure code with no I/O, so the tricky parts (partial lines, over-long lines,
CRI partial messages, positions) are tested without files or an event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Final, Literal, Protocol, overload

import re2

from kfwguard.model import MAX_LINE, Record, lines_fit
from kfwguard.timestamps import parse_rfc3339

# A complete line (without its b"\n") and the file offset just after its b"\n".
Line = tuple[bytes, int]
# Turns a file offset into the source's opaque position string.
PositionOf = Callable[[int], str]
# An empty line inside a block (what makes no record). RE2's DFA, as
# b"\n\n" in data searches a 2-byte needle about 8x slower.
_EMPTY_LINE: Final = re2.compile(rb"\n\r?\n").search


def count(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    skipped[reason] = skipped.get(reason, 0) + n


class LineSplitter:
    """Splits chunks of a file into complete lines, tracking file offsets.

    A trailing line without its newline stays buffered until the newline
    arrives. A line longer than ``cap`` is dropped as soon as it is known to be
    too long (counted as ``too_long``), so a 1 MiB line never sits in memory and
    is never copied again and again as its chunks arrive.
    """

    def __init__(self, offset: int, skipped: dict[str, int], cap: int = MAX_LINE) -> None:
        self.cap = cap
        self.skipped = skipped
        # Offset of the next byte to read.
        self.read_offset = offset
        # Offset where the line being assembled starts: always a line boundary,
        # so it is the only safe place to resume from.
        self.line_start = offset
        self._buf = bytearray()
        self._skipping = False
        # Skipping a fragment on purpose, not an over-long line: do not count it.
        self._quiet_skip = False

    @property
    def pending(self) -> int:
        """Bytes read but not yet part of a complete line."""
        return self.read_offset - self.line_start

    def skip_to_next_line(self) -> None:
        """Drop everything up to the next newline without counting it (e.g. a
        line that was already half written when tailing started)."""
        self._buf.clear()
        self._skipping = True
        self._quiet_skip = True

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        base = self.read_offset
        self.read_offset += len(data)
        start = 0
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            self._skipping = False
            if not self._quiet_skip:
                count(self.skipped, "too_long")
            self._quiet_skip = False
            start = nl + 1
            self.line_start = base + start
        elif self._buf:
            nl = data.find(b"\n")
            if nl < 0:
                if len(self._buf) + len(data) > self.cap:
                    self._buf.clear()
                    self._skipping = True
                else:
                    self._buf += data
                return out
            if len(self._buf) + nl > self.cap:
                count(self.skipped, "too_long")
            else:
                out.append((bytes(self._buf) + data[:nl], base + nl + 1))
            self._buf.clear()
            start = nl + 1
            self.line_start = base + start
        last = data.rfind(b"\n", start)
        if last >= 0:
            lines = data[start:last].split(b"\n")
            sizes = [len(line) + 1 for line in lines]
            ends = accumulate(sizes, initial=base + start)
            next(ends)
            if max(sizes) <= self.cap + 1:
                out.extend(zip(lines, ends, strict=False))
            else:
                for line, end in zip(lines, ends, strict=False):
                    if len(line) > self.cap:
                        count(self.skipped, "too_long")
                    else:
                        out.append((line, end))
            start = last + 1
            self.line_start = base + start
        rest = len(data) - start
        if rest > self.cap:
            self._skipping = True
        elif rest:
            self._buf += data[start:]
        return out

    def feed_block(self, data: bytes) -> tuple[bytes, int] | None:
        """``feed`` without a Python object per line, when nothing special happens.

        Returns the complete lines of ``data`` (with the line held from the
        previous chunk) as one bytes object ending in b"\\n", and the file
        offset of its first byte; or None, having changed nothing, when the
        chunk needs ``feed``: a line is being skipped, a complete line is
        over the cap, or there is no complete line.
        """
        if self._skipping:
            return None
        last = data.rfind(b"\n")
        if last < 0:
            return None
        # Every line must fit the cap.
        cap = self.cap
        held = len(self._buf)
        pos = 0
        if held:
            first = data.find(b"\n")
            if held + first > cap:
                return None
            pos = first + 1
        if not lines_fit(data, cap, pos, last + 1):
            return None
        start = self.line_start
        block = bytes(self._buf) + data[: last + 1] if held else data[: last + 1]
        self._buf.clear()
        self.read_offset += len(data)
        self.line_start = self.read_offset - (len(data) - last - 1)
        rest = len(data) - last - 1
        if rest > cap:
            self._skipping = True
        elif rest:
            self._buf += data[last + 1 :]
        return block, start

    def take_unterminated(self) -> Line | None:
        """The buffered partial line, as if its newline had arrived (used when a
        file is abandoned for its successor: its last line will never complete)."""
        if self._skipping:
            self._skipping = False
            self.line_start = self.read_offset
            return None
        if not self._buf:
            return None
        line = bytes(self._buf)
        self._buf.clear()
        self.line_start = self.read_offset
        # The position is the end of the file (not one past it): a restart
        # resumes there and finds nothing more to read in this file.
        return (line, self.read_offset)


def _decode(line: bytes) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode("utf-8", "replace")


class Decoder(Protocol):
    """Turns complete lines into records; may hold state across lines (CRI)."""

    def decode(self, lines: list[Line], position: PositionOf) -> list[Record]: ...

    def finish(self, position: PositionOf, end: int) -> list[Record]:
        """Records still held when the file ends for good (rotation)."""
        ...

    def reset(self) -> None:
        """Forget held state (the file was truncated)."""
        ...


class TextDecoder:
    """One record per non-empty line; the filter finds the time in the text."""

    def __init__(self, skipped: dict[str, int]) -> None:
        self.skipped = skipped

    def decode(self, lines: list[Line], position: PositionOf) -> list[Record]:
        # The hot path of a flooded source: positional arguments, no helper call.
        return [
            Record(line.decode("utf-8", "replace").removesuffix("\r"), None, None, position(end))
            for line, end in lines
            if line and line != b"\r"
        ]

    def finish(self, position: PositionOf, end: int) -> list[Record]:
        return []

    def reset(self) -> None:
        pass


class TextBlock(Sequence[Record]):
    """Complete lines of a text file as one bytes object: a batch for the sink.

    The daemon's filters read ``data`` whole (``Filter.scan_lines``), so a
    line nobody matches never becomes a Python object. Anything else sees
    the same records ``TextDecoder`` would make, built on first use.
    """

    __slots__ = ("_position", "_records", "data", "end_position", "start")

    def __init__(self, data: bytes, start: int, position: PositionOf) -> None:
        self.data = data
        self.start = start
        self._position = position
        # Where a restart resumes once this batch is handled.
        self.end_position = position(start + len(data))
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            lines: list[Line] = []
            offset = self.start
            for line in self.data[:-1].split(b"\n"):
                offset += len(line) + 1
                lines.append((line, offset))
            self._records = TextDecoder({}).decode(lines, self._position)
        return self._records

    def __len__(self) -> int:
        data = self.data
        if _EMPTY_LINE(data) is not None or data.startswith((b"\n", b"\r\n")):
            return len(self.records())  # empty lines make no record
        return data.count(b"\n")

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        return self.records()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())


def text_blocks(data: bytes, start: int, position: PositionOf,
                max_lines: int) -> Iterator[TextBlock]:
    """Complete lines from ``LineSplitter.feed_block`` as TextBlocks of at most
    ``max_lines`` lines each (a block of empty lines only makes none)."""
    while data:
        if data.count(b"\n") > max_lines:
            rest = data.split(b"\n", max_lines)[-1]  # C-level; short lines only
            cut = len(data) - len(rest)
        else:
            cut = len(data)
        block = TextBlock(data[:cut], start, position)
        data, start = data[cut:], start + cut
        if len(block):
            yield block


class JsonDecoder:
    """One record per line holding a JSON object; anything else is counted."""

    def __init__(self, skipped: dict[str, int]) -> None:
        self.skipped = skipped

    def decode(self, lines: list[Line], position: PositionOf) -> list[Record]:
        out: list[Record] = []
        loads = json.loads
        for line, end in lines:
            text = _decode(line)
            if not text:
                continue
            try:
                obj = loads(text)
            except (ValueError, RecursionError):
                count(self.skipped, "invalid_json")
                continue
            if not isinstance(obj, dict):
                count(self.skipped, "invalid_json")
                continue
            out.append(Record(text=text, fields=obj, position=position(end)))
        return out

    def finish(self, position: PositionOf, end: int) -> list[Record]:
        return []

    def reset(self) -> None:
        pass


@dataclass(slots=True)
class _Partial:
    start: int
    time: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    too_long: bool = False


_STREAMS = (b"stdout", b"stderr")


class CriDecoder:
    """Container runtime log lines: ``RFC3339Nano stream P|F message``.

    P (partial) lines are joined per stream up to the F line. A record's
    position never lies after the start of a message that is still being
    joined, so a restart re-reads that message whole (at the cost of
    repeating records of the other stream that were interleaved with it).
    """

    def __init__(self, skipped: dict[str, int]) -> None:
        self.skipped = skipped
        self._pending: dict[bytes, _Partial] = {}

    def _safe(self, end: int) -> int:
        if not self._pending:
            return end
        return min(end, min(p.start for p in self._pending.values()))

    def decode(self, lines: list[Line], position: PositionOf) -> list[Record]:
        out: list[Record] = []
        pending = self._pending
        for line, end in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 3:
                if line and line != b"\r":
                    count(self.skipped, "invalid_cri")
                continue
            stream, tag = parts[1], parts[2].split(b":", 1)[0]
            msg = parts[3] if len(parts) == 4 else b""
            t = parse_rfc3339(parts[0].decode("latin-1"), zone_required=True)
            if t is None or stream not in _STREAMS or tag not in (b"P", b"F"):
                count(self.skipped, "invalid_cri")
                continue
            if tag == b"P":
                p = pending.get(stream)
                if p is None:
                    p = pending[stream] = _Partial(start=end - len(line) - 1, time=t)
                if not p.too_long:
                    if p.size + len(msg) > MAX_LINE:
                        p.too_long = True
                        p.parts.clear()
                    else:
                        p.parts.append(msg)
                        p.size += len(msg)
                continue
            p = pending.pop(stream, None)
            if p is not None:
                if p.too_long or p.size + len(msg) > MAX_LINE:
                    count(self.skipped, "too_long")
                    continue
                p.parts.append(msg)
                msg = b"".join(p.parts)
                t = p.time
            out.append(Record(text=_decode(msg), time=t, position=position(self._safe(end))))
        return out

    def finish(self, position: PositionOf, end: int) -> list[Record]:
        # The runtime starts a new file for a new message; a message cut off
        # at rotation is delivered as it is rather than lost.
        out = []
        for p in sorted(self._pending.values(), key=lambda p: p.start):
            if p.too_long:
                count(self.skipped, "too_long")
            elif p.parts:
                out.append(Record(text=_decode(b"".join(p.parts)), time=p.time))
        self._pending.clear()
        for r in out:
            r.position = position(end)
        return out

    def reset(self) -> None:
        self._pending.clear()


# How a file's lines become records: plain text, one JSON object a line, or
# the container runtime's CRI log format (stamp, stream, partial flag).
LineFormat = Literal["text", "json", "cri"]


def make_decoder(fmt: LineFormat, skipped: dict[str, int]) -> Decoder:
    if fmt == "json":
        return JsonDecoder(skipped)
    if fmt == "cri":
        return CriDecoder(skipped)
    return TextDecoder(skipped)
