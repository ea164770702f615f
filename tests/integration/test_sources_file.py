"""The file source against real files: tailing, rotation, truncation, restart."""

# The tests write the log files with plain blocking calls on purpose: the
# writes must happen exactly between the awaits where the test puts them.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest
import structlog

from kfwguard.model import Record
from kfwguard.sources import Source, build_source
from kfwguard.sources import tail as file_module
from kfwguard.sources.base import Backlog
from kfwguard.sources.file import FileSourceConfig

Format = Literal["text", "json", "cri"]


class Tail:
    """A running file source and everything it delivered."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.records: list[Record] = []
        self.batches = 0
        self.arrived: list[float] = []

    def sink(self, batch: list[Record]) -> None:
        assert batch
        self.batches += 1
        self.records.extend(batch)
        self.arrived.extend([time.perf_counter()] * len(batch))

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]

    @property
    def position(self) -> str | None:
        return self.records[-1].position if self.records else None

    async def until(self, pred: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not pred():
            assert time.monotonic() < deadline, f"timed out; got {self.texts[-5:]}"
            await asyncio.sleep(0.005)

    async def until_text(self, text: str) -> None:
        await self.until(lambda: text in self.texts)


@asynccontextmanager
async def running(source: Source) -> AsyncIterator[Tail]:
    """Run ``source`` in a task for the duration of the block."""
    t = Tail(source)
    task = asyncio.create_task(t.source.run(t.sink))
    # Until ready, the starting point is not fixed: a line written now could
    # fall before it.
    async with asyncio.timeout(10):
        await t.source.ready.wait()
    try:
        yield t
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    assert task.cancelled(), "run() must only end by cancellation"


@asynccontextmanager
async def tail(path: Path, position: str | None = None, fmt: Format = "text",
               ) -> AsyncIterator[Tail]:
    cfg = FileSourceConfig(name="t", type="file", path=path, format=fmt)
    async with running(build_source(cfg, position)) as t:
        yield t


def append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


class TestFileSource:
    async def test_starts_at_end_on_first_run(self, tmp_path: Path) -> None:
        """Without a position, lines already in the file are not delivered."""
        log = tmp_path / "a.log"
        log.write_text("old 1\nold 2\n")
        async with tail(log) as t:
            append(log, "new 1\nnew 2\n")
            await t.until_text("new 2")
        assert ["new 1", "new 2"] == t.texts
        assert 2 == t.source.lines_read

    async def test_in_progress_line_at_start_is_delivered_whole(self, tmp_path: Path) -> None:
        """A line half written when tailing starts is delivered once complete."""
        log = tmp_path / "a.log"
        log.write_text("old\nhalf")
        async with tail(log) as t:
            append(log, " done\n")
            await t.until_text("half done")
        assert ["half done"] == t.texts

    async def test_resumes_at_position(self, tmp_path: Path) -> None:
        """A restart at the saved position delivers exactly the lines written
        while the source was stopped."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "1\n2\n")
            await t.until_text("2")
        append(log, "3\n4\n")
        async with tail(log, t.position) as t2:
            append(log, "5\n")
            await t2.until_text("5")
        assert ["3", "4", "5"] == t2.texts

    async def test_rotation_by_rename_with_late_writes(self, tmp_path: Path) -> None:
        """After a rename, lines the writer still appends to the old file are
        read before the new file, and nothing is lost or repeated."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            with open(log, "a", buffering=1) as writer:
                writer.write("a1\na2\n")
                await t.until_text("a2")
                os.rename(log, tmp_path / "a.log.1")
                writer.write("late1\n")
                await asyncio.sleep(0.05)
                writer.write("late2\n")
                await t.until_text("late2")
            append(log, "b1\nb2\n")
            await t.until_text("b2")
        assert ["a1", "a2", "late1", "late2", "b1", "b2"] == t.texts
        assert json.loads(t.position or "")["ino"] == os.stat(log).st_ino

    async def test_rotation_without_events_between(self, tmp_path: Path) -> None:
        """Rename, late write and new file in one go still lose nothing."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            with open(log, "a") as writer:
                writer.write("a1\n")
                writer.flush()
                os.rename(log, tmp_path / "a.log.1")
                writer.write("late\npartial-no-newline")
            append(log, "b1\n")
            await t.until_text("b1")
        assert ["a1", "late", "partial-no-newline", "b1"] == t.texts

    async def test_copytruncate(self, tmp_path: Path) -> None:
        """copytruncate (copy, then truncate in place) restarts at offset 0."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "one\ntwo\n")
            await t.until_text("two")
            shutil.copy(log, tmp_path / "a.log.1")
            with open(log, "r+") as f:
                f.truncate(0)
            append(log, "three\n")
            await t.until_text("three")
        assert ["one", "two", "three"] == t.texts

    async def test_truncation_then_regrowth_before_the_check(self, tmp_path: Path) -> None:
        """A file truncated and refilled past the old offset before the source
        looks is still noticed (by its bytes, not its size) and read from 0."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "x\n")
            await t.until_text("x")
            with open(log, "r+b") as f:
                f.truncate(0)
                f.write(b"after truncation, a longer line\n")
            await t.until_text("after truncation, a longer line")
            append(log, "y\n")
            await t.until_text("y")
        assert ["x", "after truncation, a longer line", "y"] == t.texts

    async def test_truncation_while_stopped(self, tmp_path: Path) -> None:
        """A saved offset past the end of the file restarts at its start."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "a long first line\n")
            await t.until_text("a long first line")
        log.write_text("b\n")
        async with tail(log, t.position) as t2:
            await t2.until_text("b")
        assert ["b"] == t2.texts

    async def test_missing_then_created(self, tmp_path: Path) -> None:
        """A missing file is waited for, then read from its start."""
        log = tmp_path / "later" / "a.log"
        async with tail(log) as t:
            await asyncio.sleep(0.05)
            log.parent.mkdir()
            log.write_text("first\n")
            append(log, "second\n")
            await t.until_text("second")
        assert ["first", "second"] == t.texts

    async def test_apiserver_rotation_with_restarts(self, tmp_path: Path) -> None:
        """kube-apiserver style rotation to audit-<timestamp>.log, with the source
        restarted between the steps, delivers every event exactly once."""
        log = tmp_path / "audit.log"
        log.write_text("")

        def event(i: int) -> str:
            return json.dumps({"auditID": str(i), "stage": "ResponseStarted"}) + "\n"

        def rotate(stamp: str) -> None:
            os.rename(log, tmp_path / f"audit-2026-11-26T04-57-{stamp}.log")

        seen: list[str] = []
        async with tail(log, fmt="json") as t:
            for i in range(1, 4):
                append(log, event(i))
            await t.until(lambda: len(t.records) == 3)
        seen += [r.fields["auditID"] for r in t.records]  # type: ignore[index]
        # Stopped: more events, a rotation, events in the new file.
        append(log, event(4) + event(5))
        rotate("45.123")
        append(log, event(6))
        async with tail(log, t.position, fmt="json") as t2:
            await t2.until(lambda: len(t2.records) == 3)
            # Stopped in the middle of the next rotation: after the rename,
            # before the new file exists.
        seen += [r.fields["auditID"] for r in t2.records]  # type: ignore[index]
        append(log, event(7))
        rotate("50.000")
        async with tail(log, t2.position, fmt="json") as t3:
            await t3.until(lambda: len(t3.records) == 1)
            append(log, event(8))
            await t3.until(lambda: len(t3.records) == 2)
            # And a rotation while running.
            with open(log, "a") as writer:
                rotate("55.500")
                writer.write(event(9))
            append(log, event(10))
            await t3.until(lambda: len(t3.records) == 4)
            await asyncio.sleep(0.1)
        seen += [r.fields["auditID"] for r in t3.records]  # type: ignore[index]
        assert [str(i) for i in range(1, 11)] == seen

    async def test_half_written_line_waits_for_its_newline(self, tmp_path: Path) -> None:
        """A line without its newline is not delivered, nor is a position
        inside it handed out, until the newline arrives."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "full\nhalf")
            await t.until_text("full")
            await asyncio.sleep(0.1)
            assert ["full"] == t.texts
            assert 5 == json.loads(t.position or "")["off"]
            append(log, "-and-rest\n")
            await t.until_text("half-and-rest")
        assert ["full", "half-and-rest"] == t.texts

    async def test_megabyte_line_is_skipped_and_counted(self, tmp_path: Path) -> None:
        """A 1 MiB line, written in pieces, is counted as too_long and the
        lines after it are delivered."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log) as t:
            append(log, "before\n")
            for _ in range(16):
                append(log, b"z" * 65536)
                await asyncio.sleep(0)
            append(log, "\nafter\n")
            await t.until_text("after")
        assert ["before", "after"] == t.texts
        assert {"too_long": 1} == t.source.skipped

    async def test_invalid_json_is_counted(self, tmp_path: Path) -> None:
        """In json format, lines that are not JSON objects are counted, not delivered."""
        log = tmp_path / "a.json"
        log.write_text("")
        async with tail(log, fmt="json") as t:
            append(log, '{"a": 1}\nnot json\n[1]\n{"b": 2}\n')
            await t.until(lambda: len(t.records) == 2)
        assert [{"a": 1}, {"b": 2}] == [r.fields for r in t.records]
        assert {"invalid_json": 2} == t.source.skipped

    async def test_cri_partial_lines_are_joined(self, tmp_path: Path) -> None:
        """CRI P/P/F lines become one record with the log's time, positioned after F."""
        log = tmp_path / "0.log"
        log.write_text("")
        ts = "2026-11-26T04:57:45.123456789Z"
        async with tail(log, fmt="cri") as t:
            append(log, f"{ts} stderr P Failed pass\n{ts} stderr P word for root\n")
            await asyncio.sleep(0.05)
            assert [] == t.records
            append(log, f"{ts} stderr F  from 203.0.113.9\n")
            await t.until(lambda: len(t.records) == 1)
        [rec] = t.records
        assert "Failed password for root from 203.0.113.9" == rec.text
        assert rec.time is not None and abs(rec.time - 1795669065.123457) < 1e-5
        assert os.path.getsize(log) == json.loads(rec.position or "")["off"]

    async def test_binary_junk_and_nul_bytes(self, tmp_path: Path) -> None:
        """NUL bytes and binary garbage never stop the source."""
        log = tmp_path / "a.log"
        log.write_text("")
        async with tail(log, fmt="json") as t:
            append(log, b"\0" * 5000 + b"\n" + os.urandom(100_000).replace(b"\n", b"") + b"\n")
            append(log, b'\xff\xfe{"x": "\xc3"}\n{"ok": 1}\n')
            await t.until(lambda: bool(t.records) and t.records[-1].fields == {"ok": 1})
        assert [{"ok": 1}] == [r.fields for r in t.records]
        assert {"invalid_json": 2, "too_long": 1} == t.source.skipped

    async def test_flood_is_batched_and_complete(self, tmp_path: Path) -> None:
        """200k lines arrive complete, in order, in bounded batches."""
        log = tmp_path / "a.log"
        log.write_text("")
        n = 200_000
        async with tail(log) as t:
            start = time.perf_counter()
            append(log, "".join(f"line {i}\n" for i in range(n)))
            await t.until(lambda: len(t.records) == n)
            took = time.perf_counter() - start
        assert [f"line {i}" for i in range(n)] == t.texts
        assert t.batches >= n // 2000
        print(f"\nfile source: {n / took:,.0f} lines/s")

    async def test_latency(self, tmp_path: Path) -> None:
        """Prints how soon an appended line reaches the sink (not asserted)."""
        log = tmp_path / "a.log"
        log.write_text("")
        delays: list[float] = []
        async with tail(log) as t:
            for i in range(50):
                sent = time.perf_counter()
                append(log, f"{i}\n")
                await t.until(lambda i=i: len(t.records) == i + 1)  # type: ignore[misc]
                delays.append(t.arrived[i] - sent)
                await asyncio.sleep(0.01)
        delays.sort()
        print(f"\nfile source latency: median {delays[25] * 1000:.2f} ms, "
              f"max {delays[-1] * 1000:.2f} ms")

    async def test_lag_is_unread_input(self, tmp_path: Path) -> None:
        """lag() is 0 once caught up, however long ago the last line came; bytes
        written but not read are the backlog, and lag() then counts from when the
        reader last stood at the end of the file."""
        log = tmp_path / "a.log"
        log.write_text("")
        now = [1000.0]
        cfg = FileSourceConfig(name="t", type="file", path=log)
        source = build_source(cfg, None, clock=lambda: now[0])
        assert source.lag() is None
        async with running(source) as t:
            append(log, "x\n")
            await t.until_text("x")
            now[0] = 5000.0  # an idle hour later
            assert 0.0 == source.lag()
            assert Backlog(unread_bytes=0, caught_up=True) == source.backlog()
            # No await between the write and the checks: the source cannot read it.
            append(log, "y" * 99 + "\n")
            assert Backlog(unread_bytes=100, caught_up=False) == source.backlog()
            assert 4000.0 == source.lag()
            await t.until_text("y" * 99)
            assert 0.0 == source.lag()
            assert Backlog(unread_bytes=0, caught_up=True) == source.backlog()


class TestFileSourceWaiting:
    async def test_missing_file_is_reported_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Waiting for a missing file logs once, not on every re-check."""
        monkeypatch.setattr(file_module, "RECHECK", 0.01)
        log = tmp_path / "a.log"
        with structlog.testing.capture_logs() as logs:
            async with tail(log) as t:
                await asyncio.sleep(0.2)
                log.write_text("hi\n")
                await t.until_text("hi")
        events = [e["event"] for e in logs]
        assert 1 == events.count("source.waiting_for_file")
        assert 1 == events.count("source.file_appeared")

    async def test_problem_names_why_nothing_is_read(self, tmp_path: Path) -> None:
        """While its file is missing the source's problem (shown in status) says so;
        it clears once the file appears and is read."""
        log = tmp_path / "a.log"
        async with tail(log) as t:
            await t.until(lambda: t.source.problem is not None)
            assert f"{log}: no such file; waiting for it" == t.source.problem
            log.write_text("hi\n")
            await t.until_text("hi")
            assert None is t.source.problem

    async def test_cri_restart_inside_a_partial_message(self, tmp_path: Path) -> None:
        """A restart while a CRI message is half joined resumes before its
        first part, so the message is delivered whole."""
        log = tmp_path / "0.log"
        log.write_text("")
        ts = "2026-11-26T04:57:45Z"
        async with tail(log, fmt="cri") as t:
            append(log, f"{ts} stdout P first half \n{ts} stderr F other stream\n")
            await t.until_text("other stream")
        append(log, f"{ts} stdout F second half\n")
        async with tail(log, t.position, fmt="cri") as t2:
            await t2.until_text("first half second half")
        # The interleaved stderr record is read again: positions stay on
        # line boundaries before the unfinished message.
        assert ["other stream", "first half second half"] == t2.texts


class TestSymlinkOutsideDirectory:
    """A log path that is a symlink out of its directory (issue 11, item 12)."""

    @staticmethod
    def layout(tmp_path: Path) -> tuple[Path, Path]:
        logs = tmp_path / "log"
        secret_dir = tmp_path / "etc"
        logs.mkdir()
        secret_dir.mkdir()
        secret = secret_dir / "shadow"
        secret.write_text("")
        secret.chmod(0o600)
        link = logs / "auth.log"
        link.symlink_to(secret)
        return link, secret

    async def test_refused_by_default(self, tmp_path: Path) -> None:
        """A log path whose symlink resolves outside its directory (a root-only
        file elsewhere) is not read; the refusal is logged and counted."""
        link, secret = self.layout(tmp_path)
        with structlog.testing.capture_logs() as logs:
            async with tail(link) as t:
                append(secret, "root:$6$secret:19000\n")
                await t.until(lambda: t.source.skipped.get("outside_directory", 0) >= 1)
                # A later line in the target is not read either.
                append(secret, "daemon:*:19000\n")
                await asyncio.sleep(0)
            problem = t.source.problem
        assert [] == t.texts
        assert f"{link}: resolves outside its directory: not read (allow_outside_dir)" \
            == problem
        said = [e for e in logs if e["event"] == "source.outside_directory"]
        assert said and said[0]["resolves_to"] == str(secret)

    async def test_allowed_when_configured(self, tmp_path: Path) -> None:
        """With ``allow_outside_dir: true`` the link is followed as before."""
        link, secret = self.layout(tmp_path)
        cfg = FileSourceConfig(name="t", type="file", path=link, allow_outside_dir=True)
        async with running(build_source(cfg, None)) as t:
            append(secret, "line 1\n")
            await t.until_text("line 1")

    async def test_link_inside_directory_is_read(self, tmp_path: Path) -> None:
        """A symlink to a file in the same directory is not refused."""
        real = tmp_path / "auth.log.real"
        real.write_text("")
        link = tmp_path / "auth.log"
        link.symlink_to(real.name)
        async with tail(link) as t:
            append(real, "line 1\n")
            await t.until_text("line 1")
