"""The sshd filter counts attempts, not lines: sessions, repeats and modes."""

from __future__ import annotations

import time

import pytest

from kfwguard.addresses import parse_host
from kfwguard.matching import Filter, load_filter
from kfwguard.matching.engine import Hit
from kfwguard.matching.sessions import Sessions, block_sessions, record_sessions
from kfwguard.model import Record

NOW = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))


def counted(flt: Filter, lines: list[str], *, now: float = NOW, blocks: int = 1,
            sessions: Sessions | None = None) -> list[str]:
    """The addresses counted for ``lines`` fed as ``blocks`` consecutive blocks
    through one Sessions, as the daemon feeds a file source; pending helpers
    are flushed at the end only if ``sessions`` was not given."""
    own = sessions is None
    if sessions is None:
        sessions = Sessions(flt.kinds)
    out: list[Hit] = []
    size = max(1, -(-len(lines) // blocks))
    for i in range(0, len(lines), size):
        data = ("\n".join(lines[i : i + size]) + "\n").encode()
        hits = flt.scan_lines(data, now)
        out += sessions.settle(hits, block_sessions(data, hits), now)
    if own:
        out += sessions.flush()
    return sorted(str(h[3]) for h in out if h[3] is not None)


def line(t: str, pid: int, msg: str) -> str:
    return f"Nov 26 11:{t} node1 sshd[{pid}]: {msg}"


PAM = ("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
       "ruser= rhost={ip}  user=root")
FAILED = "Failed password for root from {ip} port 40000 ssh2"
ACCEPTED = "Accepted password for root from {ip} port 40000 ssh2"


class TestOneAttemptOneFailure:
    @pytest.fixture(params=[True, False], ids=["native", "per-record"])
    def sshd(self, request: pytest.FixtureRequest) -> Filter:
        return load_filter("sshd", accelerate=request.param)

    def test_pam_and_failed_count_once(self, sshd: Filter) -> None:
        """A failed password's PAM line and sshd's own line count as one failure."""
        lines = [line("00:01", 10, PAM.format(ip="203.0.113.1")),
                 line("00:03", 10, FAILED.format(ip="203.0.113.1"))]
        assert ["203.0.113.1"] == counted(sshd, lines)

    def test_pam_then_accepted_counts_nothing(self, sshd: Filter) -> None:
        """pam_unix fails, another PAM module lets the user in: no failure at all."""
        lines = [line("00:01", 11, PAM.format(ip="198.51.100.7")),
                 line("00:01", 11, ACCEPTED.format(ip="198.51.100.7"))]
        assert [] == counted(sshd, lines)

    def test_interleaved_sessions_pair_by_pid(self, sshd: Filter) -> None:
        """Interleaved sessions from one address pair each PAM line with its own
        session's outcome, across block boundaries: 3 attempts, one forgiven."""
        a, b = "203.0.113.2", "203.0.113.2"
        lines = [
            line("00:01", 20, PAM.format(ip=a)),
            line("00:01", 21, PAM.format(ip=b)),
            line("00:02", 22, PAM.format(ip=a)),
            line("00:03", 21, ACCEPTED.format(ip=b)),      # 21: PAM failed, then in
            line("00:03", 20, FAILED.format(ip=a)),        # 20: one attempt
            line("00:04", 22, FAILED.format(ip=a)),        # 22: one attempt
            line("00:05", 20, PAM.format(ip=a)),
            line("00:07", 20, FAILED.format(ip=a)),        # 20: its second attempt
        ]
        for blocks in (1, 2, 4, 8):
            assert [a, a, a] == counted(sshd, lines, blocks=blocks), blocks

    def test_invalid_user_then_failed_counts_once(self, sshd: Filter) -> None:
        """'Invalid user', PAM's line, 'Failed password for invalid user' and the
        pre-auth disconnect of one connection are one failure."""
        ip = "203.0.113.3"
        lines = [
            line("00:01", 30, f"Invalid user admin from {ip} port 40000"),
            line("00:01", 30, "pam_unix(sshd:auth): check pass; user unknown"),
            line("00:01", 30, PAM.format(ip=ip).replace("  user=root", "")),
            line("00:03", 30, f"Failed password for invalid user admin from {ip} port 40000 ssh2"),
            line("00:03", 30, f"Received disconnect from {ip} port 40000:11: Bye Bye [preauth]"),
            line("00:03", 30, f"Disconnected from invalid user admin {ip} port 40000 [preauth]"),
        ]
        assert [ip] == counted(sshd, lines)

    def test_helper_alone_counts_when_the_session_ends(self, sshd: Filter) -> None:
        """An 'Invalid user' line whose session ends without a failure counts once,
        at the session's end, without waiting for the hold."""
        ip = "203.0.113.4"
        sessions = Sessions(sshd.kinds)
        lines = [line("00:01", 40, f"Invalid user oracle from {ip} port 40000"),
                 line("00:02", 40, f"Connection closed by invalid user oracle {ip} port 40000 "
                                   "[preauth]")]
        assert [ip] == counted(sshd, lines, sessions=sessions)
        assert 0 == len(sessions)

    def test_helper_alone_counts_after_the_hold(self, sshd: Filter) -> None:
        """A PAM failure nothing follows is held, then counts once the hold has
        passed on the daemon's clock: delayed, never lost."""
        ip = "203.0.113.5"
        sessions = Sessions(sshd.kinds, hold=30.0)
        assert [] == counted(sshd, [line("00:01", 50, PAM.format(ip=ip))], sessions=sessions)
        assert [] == counted(sshd, [line("00:02", 51, "Server listening on :: port 22.")],
                             now=NOW + 10, sessions=sessions)
        assert [ip] == counted(sshd, [line("00:03", 52, "Server listening on :: port 22.")],
                               now=NOW + 31, sessions=sessions)

    def test_root_refused_and_failed_count_once(self, sshd: Filter) -> None:
        """ROOT LOGIN REFUSED and sshd's 'Failed password for root' of the same
        attempt count once."""
        ip = "203.0.113.6"
        lines = [line("00:01", 60, f"ROOT LOGIN REFUSED FROM {ip} port 40000"),
                 line("00:01", 60, FAILED.format(ip=ip))]
        assert [ip] == counted(sshd, lines)

    def test_journald_records_pair_by_trusted_pid(self) -> None:
        """journald MESSAGEs pair by the trusted _PID field."""
        sshd = load_filter("sshd")
        ip = "203.0.113.7"

        def rec(pid: str, msg: str) -> Record:
            return Record(msg, time=NOW, fields={"_PID": pid, "SYSLOG_IDENTIFIER": "sshd",
                                                 "MESSAGE": msg, "__CURSOR": "c"})
        records = [rec("70", PAM.format(ip=ip)), rec("71", PAM.format(ip=ip)),
                   rec("70", FAILED.format(ip=ip)), rec("71", ACCEPTED.format(ip=ip))]
        sessions = Sessions(sshd.kinds)
        hits = sshd.hits(records, NOW)
        out = sessions.settle(hits, record_sessions(records, hits), NOW) + sessions.flush()
        assert [ip] == [str(h[3]) for h in out]

    def test_pending_sessions_are_bounded_and_counted(self) -> None:
        """Past max_sessions pending sessions the oldest counts rather than grows
        memory or disappears."""
        sshd = load_filter("sshd")
        sessions = Sessions(sshd.kinds, max_sessions=10)
        lines = [line("00:01", 100 + i, PAM.format(ip=f"203.0.113.{i}")) for i in range(25)]
        early = counted(sshd, lines, sessions=sessions)
        assert 10 == len(sessions)
        assert 25 == len(early) + len(sessions.flush())


class TestRepeatedMessages:
    def test_repeat_counts_n_failures_on_every_engine(self) -> None:
        """rsyslog's 'message repeated 3 times: [ Failed password …]' is 3 failures,
        on every block engine and the per-record path alike."""
        data = (b"Nov 26 11:00:01 node1 sshd[1]: message repeated 3 times: "
                b"[ Failed password for root from 203.0.113.9 port 22 ssh2]\n")
        for accel in (True, False):
            flt = load_filter("sshd", accelerate=accel)
            assert 3 == len([h for h in flt.scan_lines(data, NOW) if h[1] == "match"])
            assert 3 == len(flt.hits([Record(data.decode().rstrip())], NOW))

    def test_repeat_is_capped(self) -> None:
        """A huge repeat count is capped, so one line cannot make unbounded work."""
        data = (b"Nov 26 11:00:01 node1 sshd[1]: message repeated 99999999 times: "
                b"[ Failed password for root from 203.0.113.9 port 22 ssh2]\n")
        assert 100 == len(load_filter("sshd").scan_lines(data, NOW))

    def test_repeat_of_another_program_is_not_read(self) -> None:
        """The wrapper is read only after sshd's own tag."""
        data = (b"Nov 26 11:00:01 node1 app[1]: message repeated 3 times: "
                b"[ Failed password for root from 203.0.113.9 port 22 ssh2]\n")
        assert [] == load_filter("sshd").scan_lines(data, NOW)


class TestModes:
    def test_default_mode_is_normal(self) -> None:
        """The default mode is normal: probes without a login attempt are not counted."""
        flt = load_filter("sshd")
        assert "normal" == flt.mode
        assert "no-identification" not in flt.rules
        assert "no-identification" in load_filter("sshd[mode=ddos]").rules

    def test_unknown_mode_is_refused(self) -> None:
        """A mode the filter does not have is a clear error, not the default."""
        from kfwguard.matching import FilterError
        with pytest.raises(FilterError, match="no mode 'paranoid'"):
            load_filter("sshd[mode=paranoid]")

    def test_ddos_disconnect_counts_once_per_connection(self) -> None:
        """In ddos mode a pre-auth disconnect counts, but not after the same
        connection's failure was counted."""
        flt = load_filter("sshd[mode=ddos]")
        lines = [line("00:01", 80, "Connection closed by 203.0.113.10 port 1 [preauth]"),
                 line("00:02", 81, FAILED.format(ip="203.0.113.11")),
                 line("00:02", 81, "Connection closed by authenticating user root "
                                   "203.0.113.11 port 40000 [preauth]")]
        assert ["203.0.113.10", "203.0.113.11"] == counted(flt, lines)


class TestHostileAddress:
    @pytest.mark.parametrize("text,host", [
        ("Failed password for invalid user test from 10.10.1.2 port 55555 ssh2 from "
         "127.0.0.1 port 58946 ssh2", "127.0.0.1"),
        ("Failed password for invalid user a from 6.6.6.6 port 1 ssh2: from 7.7.7.7 port 2 "
         "ssh2 from 127.0.0.1 port 3 ssh2", "127.0.0.1"),
        ("Failed publickey for invalid user x from 6.6.6.6 port 1 ssh2: RSA SHA256:a from "
         "127.0.0.1 port 2 ssh2: RSA SHA256:b", "127.0.0.1"),
        ("Disconnecting invalid user a 127.0.0.1 port 1: Change of username or service not "
         "allowed: (a,ssh-connection) -> (b,ssh-connection) [preauth]", "127.0.0.1"),
    ])
    def test_only_the_address_sshd_wrote(self, text: str, host: str) -> None:
        """Whatever the client put around it, the address is the one sshd's format
        puts there."""
        m = load_filter("sshd").match(Record(text), NOW)
        assert m is not None and parse_host(host) == m.host
