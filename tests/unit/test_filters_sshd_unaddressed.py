"""sshd lines that carry no address count only under their own session's origin."""

from __future__ import annotations

import pytest

from kfwguard.matching import Filter, load_filter
from kfwguard.matching.engine import Hit
from kfwguard.matching.sessions import NativeSessions, block_sessions, sessions_for
from tests.unit.test_matching_sshd import NOW, line

A = "203.0.113.50"
TOO_MANY = "Disconnecting: Too many authentication failures [preauth]"


@pytest.fixture(params=["native", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    if request.param == "native" and NativeSessions is None:
        pytest.skip("the C++ extension was not built (needs g++ and libre2-dev)")
    return bool(request.param == "native")


def counted(native: bool, lines: list[str], mode: str = "normal",
            ) -> tuple[list[str], int]:
    """(addresses counted, unaddressed hits no origin could count) for ``lines`` as
    one block, settled by the C++ or the Python Sessions, flushed at the end."""
    flt: Filter = load_filter(f"sshd[mode={mode}]", accelerate=native)
    sessions = sessions_for(flt, native=native)
    assert sessions is not None
    data = ("\n".join(lines) + "\n").encode()
    hits = flt.scan_lines(data, NOW)
    out: list[Hit] = sessions.settle(hits, block_sessions(data, hits), NOW)
    out += sessions.flush()
    return [str(h[3]) for h in out if h[1] == "match" and h[3] is not None], sessions.unattributed


class TestUnaddressed:
    def test_counts_under_its_session_s_origin(self, native: bool) -> None:
        """At LogLevel VERBOSE, 'Connection from A' names the session: its later
        address-less 'Too many authentication failures' counts once, against A."""
        lines = [line("00:01", 400, f"Connection from {A} port 5000 on 10.0.0.1 port 22"),
                 line("00:05", 400, TOO_MANY)]
        assert ([A], 0) == counted(native, lines)

    def test_without_an_origin_nothing_counts(self, native: bool) -> None:
        """At LogLevel INFO no line names the session's address: the line counts
        nothing (a counted skip), whatever other sessions said."""
        lines = [line("00:01", 401, f"Connection from {A} port 5000"),
                 line("00:05", 402, TOO_MANY)]
        assert ([], 1) == counted(native, lines)

    def test_a_reused_pid_does_not_inherit_an_ended_session(self, native: bool) -> None:
        """A session's end forgets its origin: the next connection with the same PID
        (and no origin of its own) is not charged to the old address."""
        lines = [line("00:01", 403, f"Connection from {A} port 5000"),
                 line("00:02", 403, f"Connection closed by {A} port 5000 [preauth]"),
                 line("00:03", 403, TOO_MANY)]
        assert ([], 1) == counted(native, lines)

    def test_an_origin_past_the_login_grace_time_is_another_connection(self,
                                                                        native: bool) -> None:
        """An origin older than LoginGraceTime (120 s) cannot be this pre-auth
        session's: its line counts nothing."""
        lines = [line("00:01", 404, f"Connection from {A} port 5000"),
                 line("03:01", 404, TOO_MANY)]
        assert ([], 1) == counted(native, lines)

    def test_after_the_session_s_failures_it_adds_nothing(self, native: bool) -> None:
        """'Too many authentication failures' after the session's own failures is
        their summary: the failures count, it does not."""
        lines = [line("00:01", 405, f"Connection from {A} port 5000")]
        lines += [line("00:02", 405, f"Failed password for root from {A} port 5000 ssh2")] * 3
        lines += [line("00:03", 405, "Disconnecting: Too many authentication failures for root "
                                     "[preauth]")]
        assert ([A] * 3, 0) == counted(native, lines)

    def test_the_user_name_cannot_name_the_address(self, native: bool) -> None:
        """A user name holding ' from 6.6.6.6 port 1 ssh2' on an address-less line
        changes nothing: the count goes to the session's origin."""
        lines = [line("00:01", 406, f"Connection from {A} port 5000"),
                 line("00:02", 406, "Disconnecting: Too many authentication failures for "
                                    "x from 6.6.6.6 port 1 ssh2 [preauth]")]
        assert ([A], 0) == counted(native, lines)

    def test_another_program_cannot_name_a_session_s_origin(self, native: bool) -> None:
        """A forged 'Connection from 6.6.6.6' from another program (logger -t x) is no
        origin of sshd's session, even with the same PID."""
        lines = ["Nov 26 11:00:01 node1 x[407]: Connection from 6.6.6.6 port 1",
                 line("00:02", 407, TOO_MANY)]
        assert ([], 1) == counted(native, lines)

    def test_a_line_without_a_pid_never_counts(self, native: bool) -> None:
        """Without a PID there is no session to take an address from."""
        lines = [line("00:01", 408, f"Connection from {A} port 5000"),
                 f"Nov 26 11:00:02 node1 sshd: {TOO_MANY}"]
        assert ([], 1) == counted(native, lines)

    def test_a_banner_failure_counts_once(self, native: bool) -> None:
        """OpenSSH 8.2+'s two lines of one failed banner exchange (the address-less
        kex_exchange_identification and 'banner exchange: Connection from A') count
        once in ddos mode."""
        lines = [line("00:01", 409, f"Connection from {A} port 5000 on 10.0.0.1 port 22"),
                 line("00:01", 409, "error: kex_exchange_identification: client sent invalid "
                                    'protocol identifier "GET / HTTP/1.1"'),
                 line("00:01", 409, f"banner exchange: Connection from {A} port 5000: "
                                    "invalid format")]
        assert ([A], 0) == counted(native, lines, "ddos")

    def test_a_valid_user_s_failed_keys_name_the_session(self, native: bool) -> None:
        """A valid user's failed keys are no attempt in normal mode, but name the
        session's address: the 'Too many authentication failures' that ends it counts
        once (fail2ban's gh-1263)."""
        lines = [line("00:01", 410, f"Failed publickey for git from {A} port 5000 ssh2: "
                                    "ECDSA SHA256:x"),
                 line("00:01", 410, f"Failed publickey for git from {A} port 5000 ssh2: "
                                    "RSA SHA256:y"),
                 line("00:01", 410, "Disconnecting: Too many authentication failures for git "
                                    "[preauth]"),
                 line("00:01", 410, f"Connection closed by {A} port 5000 [preauth]")]
        assert ([A], 0) == counted(native, lines)


class TestSummaries:
    def test_max_attempts_summary_adds_nothing_to_counted_failures(self, native: bool) -> None:
        """OpenSSH's 'maximum authentication attempts exceeded' and 'Disconnecting
        authenticating user … Too many authentication failures' after six counted
        passwords are their summary: six attempts count six, not eight."""
        lines = [line("00:02", 420, f"Failed password for root from {A} port 5000 ssh2")] * 6
        lines += [line("00:03", 420, f"error: maximum authentication attempts exceeded for root "
                                     f"from {A} port 5000 ssh2 [preauth]"),
                  line("00:03", 420, f"Disconnecting authenticating user root {A} port 5000: "
                                     "Too many authentication failures [preauth]")]
        assert ([A] * 6, 0) == counted(native, lines)

    def test_max_attempts_alone_counts_once(self, native: bool) -> None:
        """A connection whose attempts are not read one by one (a valid user's keys in
        normal mode) counts once on its summary lines."""
        lines = [line("00:02", 421, f"Failed publickey for git from {A} port 5001 ssh2: "
                                    "RSA SHA256:x")] * 6
        lines += [line("00:03", 421, f"error: maximum authentication attempts exceeded for git "
                                     f"from {A} port 5001 ssh2 [preauth]"),
                  line("00:03", 421, f"Disconnecting authenticating user git {A} port 5001: "
                                     "Too many authentication failures [preauth]")]
        assert ([A], 0) == counted(native, lines)

    def test_a_refused_user_s_passwords_count_once_each(self, native: bool) -> None:
        """'User root from A not allowed because …' is logged once per connection before
        its attempts (each then 'Failed password for invalid user root'): three
        passwords count three; the line alone counts once."""
        lines = [line("00:01", 422, f"User root from {A} not allowed because not listed in "
                                    "AllowUsers")]
        lines += [line("00:02", 422, f"Failed password for invalid user root from {A} port 5002 "
                                     "ssh2")] * 3
        lines += [line("00:03", 423, f"User root from {A} not allowed because listed in "
                                     "DenyUsers"),
                  line("00:03", 423, f"Connection closed by invalid user root {A} port 5003 "
                                     "[preauth]")]
        assert ([A] * 4, 0) == counted(native, lines)

    def test_a_client_giving_up_adds_nothing_to_its_failures(self, native: bool) -> None:
        """JSch's 'Auth fail' disconnect (code 3) and 'no more authentication methods'
        (code 14, extra mode) after the session's counted failures add nothing."""
        lines = [line("00:02", 424, f"Failed password for root from {A} port 5004 ssh2")] * 2
        lines += [line("00:03", 424, f"Received disconnect from {A} port 5004:3: "
                                     "com.jcraft.jsch.JSchException: Auth fail [preauth]")]
        lines += [line("00:04", 425, f"Failed password for root from {A} port 5005 ssh2"),
                  line("00:05", 425, f"Received disconnect from {A} port 5005:14: No more user "
                                     "authentication methods available. [preauth]")]
        assert ([A] * 3, 0) == counted(native, lines, "extra")
