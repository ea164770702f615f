"""Pure tests of the line splitter, the record decoders and position parsing."""

from __future__ import annotations

import json

from kfwguard.model import MAX_LINE
from kfwguard.sources.formats import (
    CriDecoder,
    JsonDecoder,
    LineSplitter,
    TextDecoder,
)
from kfwguard.sources.tail import format_position, parse_position
from kfwguard.timestamps import parse_rfc3339


def pos(off: int) -> str:
    return str(off)


class TestLineSplitter:
    def test_splits_complete_lines_with_end_offsets(self) -> None:
        """Each complete line comes with the file offset just after its newline."""
        s = LineSplitter(100, {})
        assert [(b"ab", 103), (b"", 104), (b"cde", 108)] == s.feed(b"ab\n\ncde\n")
        assert 108 == s.line_start == s.read_offset

    def test_keeps_partial_line_until_newline(self) -> None:
        """A line without its newline is held back and delivered whole later."""
        s = LineSplitter(0, {})
        assert [(b"one", 4)] == s.feed(b"one\ntw")
        assert 4 == s.line_start
        assert 2 == s.pending
        assert [] == s.feed(b"o-and-")
        assert [(b"two-and-more", 17), (b"x", 19)] == s.feed(b"more\nx\n")

    def test_long_line_in_one_chunk_is_skipped_and_counted(self) -> None:
        """A line over the cap is dropped and counted; its neighbours survive."""
        skipped: dict[str, int] = {}
        s = LineSplitter(0, skipped, cap=10)
        out = s.feed(b"short\n" + b"x" * 11 + b"\nafter\n")
        assert [(b"short", 6), (b"after", 24)] == out
        assert {"too_long": 1} == skipped

    def test_long_line_across_chunks_is_not_buffered(self) -> None:
        """A line that grows past the cap over many chunks is dropped without
        being held in memory, and the offset only moves at its newline."""
        skipped: dict[str, int] = {}
        s = LineSplitter(0, skipped, cap=10)
        assert [] == s.feed(b"yyyyyy")
        for _ in range(100):
            assert [] == s.feed(b"y" * 7)
            assert 0 == len(s._buf)
        assert 0 == s.line_start
        assert [(b"next", 714)] == s.feed(b"yy\nnext\n")
        assert {"too_long": 1} == skipped

    def test_skip_to_next_line_drops_a_fragment_silently(self) -> None:
        """Starting in the middle of a line skips to the next one, uncounted."""
        skipped: dict[str, int] = {}
        s = LineSplitter(50, skipped)
        s.skip_to_next_line()
        assert [(b"whole", 61)] == s.feed(b"tail\nwhole\n")
        assert {} == skipped

    def test_take_unterminated_returns_the_held_line(self) -> None:
        """An abandoned file's last, unterminated line can still be delivered,
        positioned at the end of the file."""
        s = LineSplitter(0, {})
        s.feed(b"a\nlast")
        assert (b"last", 6) == s.take_unterminated()
        assert s.take_unterminated() is None
        assert 6 == s.line_start

    def test_nul_and_binary_bytes_pass_through(self) -> None:
        """Binary junk splits like anything else and never raises."""
        s = LineSplitter(0, {})
        junk = bytes(range(256)).replace(b"\n", b"")
        assert [(b"\0\0\0", 4), (junk, 4 + len(junk) + 1)] == s.feed(b"\0\0\0\n" + junk + b"\n")


class TestTextDecoder:
    def test_decodes_with_replacement_and_drops_cr(self) -> None:
        """Invalid UTF-8 becomes U+FFFD, CRLF endings lose the CR, blank lines go."""
        recs = TextDecoder({}).decode([(b"caf\xc3\xa9 \xff\r", 10), (b"", 11)], pos)
        assert [("café \ufffd", None, "10")] == [(r.text, r.time, r.position) for r in recs]


class TestJsonDecoder:
    def test_objects_become_fields(self) -> None:
        """A JSON object line is delivered with its parsed fields and raw text."""
        line = b'{"a": 1, "b": {"c": "d"}}'
        [rec] = JsonDecoder({}).decode([(line, 26)], pos)
        assert {"a": 1, "b": {"c": "d"}} == rec.fields
        assert line.decode() == rec.text
        assert "26" == rec.position

    def test_invalid_and_non_object_lines_are_counted(self) -> None:
        """Broken JSON, arrays, scalars and absurd nesting are skipped and counted."""
        skipped: dict[str, int] = {}
        lines = [b"{nope", b"[1, 2]", b"42", b"[" * 100_000 + b"]" * 100_000,
                 b"\x00\xff{", b'{"ok": true}']
        recs = JsonDecoder(skipped).decode([(ln, i) for i, ln in enumerate(lines)], pos)
        assert [{"ok": True}] == [r.fields for r in recs]
        assert {"invalid_json": 5} == skipped


class TestCriDecoder:
    def test_full_line(self) -> None:
        """An F line is one record with the prefix stripped and its time parsed."""
        [rec] = CriDecoder({}).decode(
            [(b"2026-11-26T04:57:45.123456789Z stderr F hello world", 52)], pos)
        assert "hello world" == rec.text
        assert abs(rec.time - 1795669065.123456789) < 1e-6  # type: ignore[operator]
        assert "52" == rec.position

    def test_partial_lines_are_joined_per_stream(self) -> None:
        """P parts are joined up to the F line of the same stream; a record's
        position never passes the start of a message still being joined."""
        d = CriDecoder({})
        t = b"2026-11-26T04:57:45Z"
        lines = [
            (t + b" stdout P hel", 100),
            (t + b" stderr F other", 200),
            (t + b" stdout P lo ", 300),
            (t + b" stdout F world", 400),
        ]
        recs = d.decode(lines, pos)
        assert ["other", "hello world"] == [r.text for r in recs]
        start_of_p = 100 - len(lines[0][0]) - 1
        assert [str(start_of_p), "400"] == [r.position for r in recs]

    def test_partial_split_across_decode_calls(self) -> None:
        """Joining state survives between batches of lines."""
        d = CriDecoder({})
        t = b"2026-11-26T04:57:45.5+01:00"
        assert [] == d.decode([(t + b" stdout P a", 10)], pos)
        [rec] = d.decode([(t + b" stdout F b", 20)], pos)
        assert "ab" == rec.text
        assert 1795665465.5 == rec.time

    def test_malformed_lines_are_counted(self) -> None:
        """Lines that are not CRI are skipped and counted as invalid_cri."""
        skipped: dict[str, int] = {}
        lines = [b"plain text", b"2026-13-45T00:00:00Z stdout F x",
                 b"2026-11-26T04:57:45Z stdin F x", b"2026-11-26T04:57:45Z stdout X x",
                 b"2026-11-26T04:57:45 stdout F no zone", b"\x00\xff junk \xfe F",
                 b"2026-11-26T04:57:45Z stdout F"]
        recs = CriDecoder(skipped).decode([(ln, 1) for ln in lines], pos)
        assert [""] == [r.text for r in recs]
        assert {"invalid_cri": 6} == skipped

    def test_overlong_joined_message_is_skipped(self) -> None:
        """A message joined past the line cap is dropped and counted, not kept."""
        skipped: dict[str, int] = {}
        d = CriDecoder(skipped)
        part = b"2026-11-26T04:57:45Z stdout P " + b"x" * (MAX_LINE // 2)
        recs = d.decode([(part, 1), (part, 2), (part, 3),
                         (b"2026-11-26T04:57:45Z stdout F end", 4),
                         (b"2026-11-26T04:57:45Z stdout F next", 5)], pos)
        assert ["next"] == [r.text for r in recs]
        assert {"too_long": 1} == skipped

    def test_finish_delivers_a_cut_off_message(self) -> None:
        """At rotation, a message still being joined is delivered as it is."""
        d = CriDecoder({})
        d.decode([(b"2026-11-26T04:57:45Z stdout P cut", 10)], pos)
        assert [("cut", "10")] == [(r.text, r.position) for r in d.finish(pos, 10)]


class TestParseRfc3339:
    def test_zones_and_fractions(self) -> None:
        """Z, offsets and up to nanosecond fractions parse to epoch seconds; a CRI
        stamp must carry its zone."""
        assert 0.0 == parse_rfc3339("1970-01-01T00:00:00Z", zone_required=True)
        assert 0.25 == parse_rfc3339("1970-01-01T01:00:00.25+01:00", zone_required=True)
        assert 0.5 == parse_rfc3339("1970-01-01T00:00:00.500000001Z", zone_required=True)
        assert parse_rfc3339("1970-01-01T00:00:00.5", zone_required=True) is None
        assert parse_rfc3339("1970-01-01T00:00:00.") is None
        assert parse_rfc3339("garbage-garbage-garbage") is None

    def test_cri_line_without_zone_is_skipped(self) -> None:
        """A CRI line whose stamp has no zone is counted invalid, not read in local time."""
        skipped: dict[str, int] = {}
        d = CriDecoder(skipped)
        assert [] == d.decode([(b"2026-11-26T04:57:45.5 stdout F x", 10)], pos)
        assert {"invalid_cri": 1} == skipped


class TestPosition:
    def test_round_trip_and_rejects(self) -> None:
        """File positions round-trip; anything malformed is None, never an error."""
        assert (1, 2, 3) == parse_position(format_position(1, 2, 3))
        assert {"dev": 1, "ino": 2, "off": 3} == json.loads(format_position(1, 2, 3))
        for bad in (None, "", "x", "[]", '{"dev": 1}', '{"dev":1,"ino":2,"off":-1}',
                    '{"dev":1,"ino":true,"off":0}'):
            assert parse_position(bad) is None


class TestFeedBlock:
    def test_same_lines_as_feed(self) -> None:
        """feed_block delivers the bytes and offsets feed would, a partial line held."""
        a, b = LineSplitter(10, {}), LineSplitter(10, {})
        for chunk in (b"ab\ncd", b"e\n\nfg\nh", b"ij\n"):
            lines = a.feed(chunk)
            found = b.feed_block(chunk)
            assert found is not None
            data, start = found
            assert b"".join(line + b"\n" for line, _ in lines) == data
            assert lines[0][1] - len(lines[0][0]) - 1 == start
            assert (a.line_start, a.read_offset) == (b.line_start, b.read_offset)

    def test_declines_over_long_lines(self) -> None:
        """A chunk with an over-long line is left to feed, which counts it."""
        s = LineSplitter(0, {}, cap=4)
        assert s.feed_block(b"ab\nabcdefgh\n") is None
        assert 0 == s.read_offset

    def test_text_block_records(self) -> None:
        """A TextBlock's records are TextDecoder's, with the same positions."""
        from kfwguard.sources.formats import TextBlock

        block = TextBlock(b"a\n\nb\r\n", 5, pos)
        expected = TextDecoder({}).decode([(b"a", 7), (b"", 8), (b"b\r", 11)], pos)
        assert expected == list(block)
        assert 2 == len(block)
        assert "11" == block.end_position
