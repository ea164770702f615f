"""Event times read from log stamps."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.matching import timeparse
from kfwguard.matching.timeparse import parse_klog, parse_syslog, parse_time_value
from kfwguard.timestamps import format_rfc3339, parse_rfc3339


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the node's local time zone set to UTC, so local stamps are predictable."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    timeparse._pair_cache.clear()
    timeparse._pair_year[0] = 0
    timeparse._year_span[:] = [0.0, -1.0, 0.0]
    timeparse._local_cache.clear()
    yield
    monkeypatch.undo()
    time.tzset()
    timeparse._pair_cache.clear()
    timeparse._pair_year[0] = 0
    timeparse._year_span[:] = [0.0, -1.0, 0.0]
    timeparse._local_cache.clear()
    timeparse._last_syslog[0] = ("", 0.0, None)


def at(text: str) -> float:
    t = parse_rfc3339(text)
    assert t is not None
    return t


NOW = at("2026-11-26T12:00:00Z")


class TestRfc3339:
    def test_utc_with_fraction(self) -> None:
        """A Z stamp with microseconds is read exactly."""
        assert 1795669065.123456 == pytest.approx(at("2026-11-26T04:57:45.123456Z"), abs=1e-6)

    def test_nanoseconds(self) -> None:
        """Fractions longer than microseconds are accepted (Go's RFC3339Nano)."""
        assert at("2026-11-26T04:57:45.123456Z") == pytest.approx(
            at("2026-11-26T04:57:45.123456789Z"), abs=1e-6
        )

    @pytest.mark.parametrize("zone", ["+01:00", "+0100", "+01"])
    def test_offsets(self, zone: str) -> None:
        """Numeric zone offsets in their three spellings shift the time."""
        assert at("2026-11-26T03:57:45Z") == at(f"2026-11-26T04:57:45{zone}")

    def test_negative_offset(self) -> None:
        """A negative offset lies west of UTC."""
        assert at("2026-11-26T09:57:45Z") == at("2026-11-26T04:57:45-05:00")

    def test_space_separator(self) -> None:
        """A space may stand between date and time."""
        assert at("2026-11-26T04:57:45Z") == at("2026-11-26 04:57:45Z")

    def test_no_zone_is_local(self) -> None:
        """A stamp without a zone is the node's local time (UTC in this test)."""
        assert at("2026-11-26T04:57:45Z") == at("2026-11-26T04:57:45")

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-26T25:00:00Z",
            "2026-11-26T04:57:45.Z",
            "2026-11-26T04:57:45+25:00",
            "2026-11-26T04:57:45 garbage",
            "٢٠٢٦-11-26T04:57:45Z",
            "not a time at all, but long enough",
        ],
    )
    def test_invalid(self, text: str) -> None:
        """Anything that is not a valid stamp gives None, never an exception."""
        assert None is parse_rfc3339(text)


class TestSyslog:
    def test_this_year(self) -> None:
        """A stamp in the past of ``now`` belongs to now's year."""
        assert at("2026-11-26T04:57:45Z") == parse_syslog("Nov 26 04:57:45", NOW)

    def test_space_padded_day(self) -> None:
        """Single-digit days are space-padded."""
        assert at("2026-11-06T04:57:45Z") == parse_syslog("Nov  6 04:57:45", NOW)

    def test_fraction(self) -> None:
        """journalctl's short-precise stamps carry a fraction."""
        assert at("2026-11-26T04:57:45.25Z") == parse_syslog("Nov 26 04:57:45.25", NOW)

    def test_december_line_read_in_january(self) -> None:
        """A stamp more than a day in the future is last year's."""
        now = at("2027-01-01T00:00:10Z")
        assert at("2026-12-31T23:59:59Z") == parse_syslog("Dec 31 23:59:59", now)

    def test_january_line_read_on_new_years_eve(self) -> None:
        """``Jan  1 00:00:05`` read at ``Dec 31 23:59:50`` is 15 s ahead, next year:
        not a year old (which would drop it as stale)."""
        now = at("2026-12-31T23:59:50Z")
        assert at("2027-01-01T00:00:05Z") == parse_syslog("Jan  1 00:00:05", now)
        assert at("2027-01-01T00:00:05.5Z") == parse_syslog("Jan  1 00:00:05.5", now)

    def test_year_turn_in_local_time_west_of_utc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The year turns at local midnight: in Los Angeles, Dec 31 23:59:50 local
        (07:59:50 UTC on Jan 1) reading ``Jan  1 00:00:05`` is next (local) year."""
        monkeypatch.setenv("TZ", "America/Los_Angeles")
        time.tzset()
        timeparse._pair_cache.clear()
        timeparse._pair_year[0] = 0
        timeparse._year_span[:] = [0.0, -1.0, 0.0]
        timeparse._local_cache.clear()  # minutes cached as read in UTC
        timeparse._last_syslog[0] = ("", 0.0, None)
        now = at("2027-01-01T07:59:50Z")
        assert at("2027-01-01T08:00:05Z") == parse_syslog("Jan  1 00:00:05", now)
        assert at("2027-01-01T07:59:40Z") == parse_syslog("Dec 31 23:59:40", now)

    def test_slightly_future_is_this_year(self) -> None:
        """Clock skew of less than a day keeps the current year."""
        assert at("2026-11-26T20:00:00Z") == parse_syslog("Nov 26 20:00:00", NOW)

    def test_year_follows_injected_clock(self) -> None:
        """The year comes from ``now``, not from the wall clock."""
        assert at("2031-03-01T00:00:00Z") == parse_syslog(
            "Mar  1 00:00:00", at("2031-06-01T00:00:00Z")
        )

    @pytest.mark.parametrize(
        "stamp", ["Foo 26 04:57:45", "Nov 31 04:57:45", "Nov 26 24:57:45", "Nov 26 04:57", ""]
    )
    def test_invalid(self, stamp: str) -> None:
        """Malformed or impossible stamps give None."""
        assert None is parse_syslog(stamp, NOW)


class TestKlog:
    def test_month_day_and_micros(self) -> None:
        """``I1126 04:57:45.123456`` is Nov 26 with microseconds."""
        assert at("2026-11-26T04:57:45.123456Z") == pytest.approx(
            parse_klog("I1126 04:57:45.123456", NOW), abs=1e-6
        )

    def test_without_severity(self) -> None:
        """The severity letter is optional."""
        assert parse_klog("I1126 04:57:45.5", NOW) == parse_klog("1126 04:57:45.5", NOW)

    def test_future_means_last_year(self) -> None:
        """klog has no year either; the same inference applies."""
        assert at("2025-12-31T23:00:00Z") == parse_klog("E1231 23:00:00.000000", NOW)

    def test_january_line_read_on_new_years_eve(self) -> None:
        """klog's year turns as syslog's: ``I0101 00:00:05`` at Dec 31 23:59:50 is
        next year's."""
        now = at("2026-12-31T23:59:50Z")
        assert at("2027-01-01T00:00:05.25Z") == parse_klog("I0101 00:00:05.250000", now)

    @pytest.mark.parametrize("stamp", ["I1326 04:57:45.1", "I1126 04:57:45.x", "Ixxxx"])
    def test_invalid(self, stamp: str) -> None:
        """Malformed klog stamps give None."""
        assert None is parse_klog(stamp, NOW)


class TestTimeValue:
    def test_string(self) -> None:
        """A JSON string is an RFC 3339 stamp."""
        assert at("2026-11-26T04:57:45Z") == parse_time_value("2026-11-26T04:57:45Z")

    def test_epoch_number(self) -> None:
        """A JSON number is seconds since the epoch (zap's epoch encoder)."""
        assert 1795669065.5 == parse_time_value(1795669065.5)

    @pytest.mark.parametrize("value", [True, None, [], {}, -5, 1e30])
    def test_other_values(self, value: object) -> None:
        """Booleans, null, containers and absurd numbers are not times."""
        assert None is parse_time_value(value)


class TestFormat:
    def test_round_trip(self) -> None:
        """Formatting gives RFC 3339 in UTC with a Z and microseconds."""
        assert "2026-11-26T04:57:45.123456Z" == format_rfc3339(at("2026-11-26T04:57:45.123456Z"))


class TestPerMinuteCache:
    @settings(max_examples=500, deadline=None)
    @given(
        month=st.sampled_from(["Jan", "Feb", "Dec", "Foo", "01", "12", "13"]),
        day=st.sampled_from(["29", "28", " 1", "31", "30", "0x", "٣1"]),
        hh=st.sampled_from(["00", "23", "24", "1 "]),
        mm=st.sampled_from(["00", "59", "60"]),
        ss=st.sampled_from(["00", "07", "59", "60", "61", "99", "6x", "٣4", " 5"]),
        sep=st.sampled_from([":", ".", " "]),
        now=st.sampled_from([at("2026-11-26T12:00:00Z"), at("2027-01-01T00:30:00Z"),
                             at("2028-02-29T12:00:00Z"), at("2026-12-31T23:59:30Z")]),
    )
    def test_same_epoch_as_parsing_each_second(self, month: str, day: str, hh: str, mm: str,
                                               ss: str, sep: str, now: float) -> None:
        """The per-minute cache (a stamp's minute parsed once, its second added) gives
        for any syslog or klog stamp, valid or not, the epoch the whole stamp
        parsed on its own gives: leap seconds, Feb 29, the year boundary and the
        future slack included."""
        if month.isdigit():
            key = f"{month}{day} {hh}:{mm}{sep}{ss}"
        else:
            key = f"{month} {day} {hh}:{mm}{sep}{ss}"
        years = timeparse._pair(key, timeparse._year_of(now))
        expected = next((t for t in years if t is not None
                         and t <= now + timeparse.FUTURE_SLACK), None)
        assert expected == timeparse._no_year(key, now)
