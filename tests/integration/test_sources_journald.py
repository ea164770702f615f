"""The journald source against a running systemd-journald."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from kfwguard.model import Record
from kfwguard.sources import Source, build_source
from kfwguard.sources import journald as journald_module
from kfwguard.sources.base import MAX_BATCH
from kfwguard.sources.journald import JournaldSourceConfig
from tests.integration.test_sources_file import Tail, running

pytestmark = [pytest.mark.journald, pytest.mark.usefixtures("journald")]


def ident() -> str:
    return f"kfwtest-{uuid.uuid4().hex[:12]}"


def send(message: str, identifier: str, **fields: Any) -> None:
    import systemd.journal

    systemd.journal.send(message, SYSLOG_IDENTIFIER=identifier, **fields)


def send_raw(*fields: bytes) -> None:
    import systemd.journal

    systemd.journal.sendv(*fields)


def source(match: dict[str, str | list[str]], position: str | None = None) -> Source:
    cfg = JournaldSourceConfig(name="j", type="journald", match=match)
    return build_source(cfg, position)


async def stored(identifier: str, n: int, within: float = 30.0) -> None:
    """Wait until journald has stored ``n`` entries of ``identifier`` (sending is a
    datagram: journald stamps and stores it a moment later)."""
    deadline = time.monotonic() + within
    while True:
        proc = await asyncio.create_subprocess_exec(
            "journalctl", "-q", "-o", "cat", "-t", identifier, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        if len(out.splitlines()) >= n:
            return
        assert time.monotonic() < deadline, f"journald stored {len(out.splitlines())} of {n}"
        await asyncio.sleep(0.05)


async def quiet(t: Tail, seconds: float = 0.3) -> None:
    """Give the source time to deliver anything it should not."""
    del t
    await asyncio.sleep(seconds)


class TestJournaldSource:
    async def test_delivers_new_matching_entries(self) -> None:
        """Entries written after the start and matching are delivered with
        their fields, time and cursor; older ones and others are not."""
        me, other = ident(), ident()
        send("before start", me)
        await stored(me, 1)  # stamped before the source starts
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            send_raw(b"MESSAGE=hello \xff", f"SYSLOG_IDENTIFIER={me}".encode(), b"PRIORITY=4")
            send("not mine", other)
            send("second", me)
            await t.until_text("second")
            await quiet(t)
        assert ["hello \ufffd", "second"] == t.texts
        rec = t.records[0]
        assert me == rec.fields["SYSLOG_IDENTIFIER"]  # type: ignore[index]
        assert "4" == rec.fields["PRIORITY"]  # type: ignore[index]
        assert rec.position == rec.fields["__CURSOR"]  # type: ignore[index]
        assert rec.time is not None and abs(rec.time - time.time()) < 60
        assert 2 == t.source.lines_read

    async def test_first_entry_of_a_new_identifier_is_not_skipped(self) -> None:
        """Starting with a match that has no entries yet still delivers the
        first entries written (the seek_tail pitfall)."""
        me = ident()
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            for i in range(3):
                send(f"m{i}", me)
            await t.until_text("m2")
        assert ["m0", "m1", "m2"] == t.texts

    async def test_restart_resumes_at_cursor(self) -> None:
        """A restart at the saved cursor delivers the entries written while
        stopped, with no repeats and no loss."""
        me = ident()
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            send("a", me)
            send("b", me)
            await t.until_text("b")
        send("c", me)
        send("d", me)
        await asyncio.sleep(0.05)
        async with running(source({"SYSLOG_IDENTIFIER": me}, t.position)) as t2:
            send("e", me)
            await t2.until_text("e")
            await quiet(t2)
        assert ["a", "b"] == t.texts
        assert ["c", "d", "e"] == t2.texts

    async def test_list_of_values_is_ored_and_fields_anded(self) -> None:
        """Values of one field are alternatives; different fields must all match."""
        a, b, c = ident(), ident(), ident()
        match: dict[str, str | list[str]] = {"SYSLOG_IDENTIFIER": [a, b], "PRIORITY": "3"}
        async with running(source(match)) as t:
            send("a3", a, PRIORITY="3")
            send("a6", a, PRIORITY="6")
            send("b3", b, PRIORITY="3")
            send("c3", c, PRIORITY="3")
            send("end", b, PRIORITY="3")
            await t.until_text("end")
            await quiet(t)
        assert ["a3", "b3", "end"] == t.texts

    async def test_unusable_cursor_reads_from_the_head(self) -> None:
        """A cursor that cannot be parsed falls back to everything there is."""
        me = ident()
        send("old 1", me)
        send("old 2", me)
        await asyncio.sleep(0.05)
        async with running(source({"SYSLOG_IDENTIFIER": me}, "not-a-cursor")) as t:
            await t.until_text("old 2")
        assert ["old 1", "old 2"] == t.texts

    async def test_cursor_of_a_missing_entry_resumes_after_it(self) -> None:
        """When the cursor's entry is not there for this match (vacuumed, or
        the match changed), reading resumes at the next entry after it."""
        me, other = ident(), ident()
        async with running(source({"SYSLOG_IDENTIFIER": other})) as t:
            send("marker", other)
            await t.until_text("marker")
        send("after 1", me)
        send("after 2", me)
        await asyncio.sleep(0.05)
        async with running(source({"SYSLOG_IDENTIFIER": me}, t.position)) as t2:
            await t2.until_text("after 2")
            await quiet(t2)
        assert ["after 1", "after 2"] == t2.texts

    async def test_survives_journal_rotation(self) -> None:
        """Entries on both sides of a journal file rotation are all delivered once."""
        me = ident()
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            for i in range(50):
                send(f"pre {i}", me)
            await t.until_text("pre 49")
            rotate = await asyncio.create_subprocess_exec(
                "journalctl", "--rotate", stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            for i in range(50):
                send(f"mid {i}", me)
                await asyncio.sleep(0)
            await rotate.wait()
            for i in range(50):
                send(f"post {i}", me)
            await t.until_text("post 49")
            await quiet(t)
        expected = ([f"pre {i}" for i in range(50)] + [f"mid {i}" for i in range(50)]
                    + [f"post {i}" for i in range(50)])
        assert expected == t.texts

    async def test_lag_is_zero_at_the_tail_and_counts_a_backlog(self) -> None:
        """Resuming behind more entries than one batch, lag() is the age bound of
        the oldest unread entry while it catches up, and 0 at the tail however
        long ago the last entry came."""
        me = ident()
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            send("start", me)
            await t.until_text("start")
        total = MAX_BATCH + 100
        for i in range(total):
            send(f"b {i}", me)
        await stored(me, total + 1)
        offset = [0.0]
        cfg = JournaldSourceConfig(name="j", type="journald", match={"SYSLOG_IDENTIFIER": me})
        resumed = build_source(cfg, t.position, clock=lambda: time.time() + offset[0])
        assert resumed.lag() is None
        got: list[str] = []
        lags: list[float | None] = []

        def sink(batch: Sequence[Record]) -> None:
            lags.append(resumed.lag())
            got.extend(r.text for r in batch)

        offset[0] = 3600.0  # read an hour after they were written
        task = asyncio.create_task(resumed.run(sink))
        try:
            deadline = time.monotonic() + 30
            while len(got) < total or not resumed.backlog().caught_up:
                assert time.monotonic() < deadline, f"got {len(got)} of {total}"
                await asyncio.sleep(0.01)
            assert 0.0 == resumed.lag()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # While a second batch was still to come, the oldest unread entry was an
        # hour old; once at the tail, nothing is.
        assert any(lag is not None and lag >= 3600.0 for lag in lags), lags
        assert [f"b {i}" for i in range(total)] == got

    async def test_latency(self) -> None:
        """Prints how soon a journal entry reaches the sink (not asserted)."""
        me = ident()
        idle: list[float] = []
        busy: list[float] = []
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            # First a few lone entries after quiet spells, then a steady trickle.
            for i in range(3):
                await asyncio.sleep(3.5)
                sent = time.perf_counter()
                send(f"idle {i}", me)
                await t.until(lambda i=i: len(t.records) == i + 1)  # type: ignore[misc]
                idle.append(t.arrived[i] - sent)
            for i in range(60):
                sent = time.perf_counter()
                send(f"busy {i}", me)
                await t.until(lambda i=i: len(t.records) == i + 4)  # type: ignore[misc]
                busy.append(t.arrived[i + 3] - sent)
                await asyncio.sleep(0.03)
        busy.sort()
        print(f"\njournald latency: busy median {busy[30] * 1000:.1f} ms "
              f"(p90 {busy[54] * 1000:.1f} ms); after quiet spells "
              + ", ".join(f"{d * 1000:.0f} ms" for d in idle))


class TestJournaldSourceRecovery:
    async def test_reader_error_reopens_at_the_cursor(
        self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An OSError from the reader closes it and reopens the journal at the
        last cursor, with nothing lost or repeated."""
        monkeypatch.setattr(journald_module, "REOPEN_WAIT", 0.01)
        me = ident()
        src = source({"SYSLOG_IDENTIFIER": me})
        async with running(src) as t:
            send("a", me)
            await t.until_text("a")
            broken = src._reader  # type: ignore[attr-defined]

            def fail(*_: object) -> bool:
                raise OSError(74, "Bad message")

            broken._next = fail
            send("b", me)
            send("c", me)
            await t.until_text("c")
            await quiet(t)
            assert src._reader is not broken  # type: ignore[attr-defined]
        assert ["a", "b", "c"] == t.texts

    async def test_missing_journal_directory_is_waited_for(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A journal directory that does not exist is reported once and waited for."""
        monkeypatch.setattr(journald_module, "REOPEN_WAIT", 0.01)
        cfg = JournaldSourceConfig(name="j", type="journald", path=tmp_path / "nope")
        with structlog.testing.capture_logs() as logs:
            async with running(build_source(cfg, None)) as t:
                await asyncio.sleep(0.2)
        assert [] == t.records
        assert 1 == [e["event"] for e in logs].count("source.waiting_for_journal")


class TestFastPath:
    async def test_entries_are_read_through_the_private_fast_path(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Entries are read with the reader's private C calls (_next, _get_all:
        raw bytes, no per-field conversion), never through the public converting
        get_next: a systemd-python without that private API fails here, and a
        fallback to the slow path cannot hide."""
        import systemd.journal

        from systemd import _reader

        raw_reads = [0]

        def counting_get_all(self: Any) -> Any:
            raw_reads[0] += 1
            return _reader._Reader._get_all(self)

        def slow_path(*_: Any, **__: Any) -> Any:
            raise AssertionError("the public, converting read path was taken")

        monkeypatch.setattr(systemd.journal.Reader, "_get_all", counting_get_all)
        for name in ("get_next", "get_previous", "_convert_entry", "_convert_field",
                     "__next__"):
            monkeypatch.setattr(systemd.journal.Reader, name, slow_path)
        me = ident()
        async with running(source({"SYSLOG_IDENTIFIER": me})) as t:
            for i in range(3):
                send(f"m{i}", me, PRIORITY=4)
            await t.until_text("m2")
        assert ["m0", "m1", "m2"] == t.texts
        assert "4" == t.records[0].fields["PRIORITY"]  # type: ignore[index]
        assert raw_reads[0] >= 3

