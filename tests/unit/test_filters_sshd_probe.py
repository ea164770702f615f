"""sshd's "Failed none/gssapi" probes: no guess of a secret, so no failure of their own."""

from __future__ import annotations

import pytest

from kfwguard.matching import Filter, load_filter
from tests.unit.test_matching_sshd import counted, line


@pytest.fixture(params=["native", False])
def sshd(request: pytest.FixtureRequest) -> Filter:
    return load_filter("sshd", accelerate=request.param)


class TestMethodProbes:
    def test_verbose_good_logins_count_nothing(self, sshd: Filter) -> None:
        """At LogLevel VERBOSE each good login writes 'Failed none' (and GSSAPI) first:
        ten logins of one admin count nothing."""
        ip = "203.0.113.30"
        lines = []
        for pid in range(100, 110):
            lines += [line("00:01", pid, f"Failed none for alice from {ip} port {pid} ssh2"),
                      line("00:01", pid, f"Failed gssapi-with-mic for alice from {ip} port {pid} "
                                         "ssh2"),
                      line("00:02", pid, f"Accepted publickey for alice from {ip} port {pid} ssh2: "
                                         "ED25519 SHA256:abc")]
        assert [] == counted(sshd, lines)

    def test_probe_then_passwords_count_the_passwords(self, sshd: Filter) -> None:
        """An invalid user's 'none' probe and its three passwords are three failures."""
        ip = "203.0.113.31"
        lines = [line("00:01", 120, f"Invalid user oracle from {ip} port 4000"),
                 line("00:01", 120, f"Failed none for invalid user oracle from {ip} port 4000 "
                                    "ssh2")]
        lines += [line("00:02", 120, f"Failed password for invalid user oracle from {ip} port 4000 "
                                     "ssh2")] * 3
        lines += [line("00:03", 120, f"Disconnected from invalid user oracle {ip} port 4000 "
                                     "[preauth]")]
        assert [ip] * 3 == counted(sshd, lines)

    def test_probe_alone_counts_once_per_connection(self, sshd: Filter) -> None:
        """A connection that only probes (user enumeration: 'Invalid user' and its
        'Failed none', two helpers of one session) counts once when it ends."""
        ip = "203.0.113.32"
        lines = [line("00:01", 130, f"Invalid user test from {ip} port 4001"),
                 line("00:01", 130, f"Failed none for invalid user test from {ip} port 4001 ssh2"),
                 line("00:02", 130, f"Connection closed by invalid user test {ip} port 4001 "
                                    "[preauth]")]
        assert [ip] == counted(sshd, lines)

    def test_probe_alone_counts_once_after_the_hold(self, sshd: Filter) -> None:
        """The same connection with no end line counts once when its helpers have been
        held 30 s (here: a later line of the log shows the time has passed)."""
        ip = "203.0.113.33"
        lines = [line("00:01", 131, f"Invalid user test from {ip} port 4002"),
                 line("00:01", 131, f"Failed none for invalid user test from {ip} port 4002 ssh2"),
                 line("01:01", 132, "Failed password for root from 198.51.100.9 port 4003 ssh2")]
        assert sorted([ip, "198.51.100.9"]) == sorted(counted(sshd, lines))

    def test_one_password_s_two_pam_lines_count_once(self, sshd: Filter) -> None:
        """pam_unix's line and sshd's 'error: PAM: Authentication failure' of one attempt
        whose 'Failed' line never comes (the client left) count once."""
        ip = "203.0.113.34"
        lines = [line("00:01", 133, "pam_unix(sshd:auth): authentication failure; logname= "
                                    f"uid=0 euid=0 tty=ssh ruser= rhost={ip}  user=root"),
                 line("00:01", 133, f"error: PAM: Authentication failure for root from {ip}"),
                 line("00:02", 133, f"Connection closed by authenticating user root {ip} port "
                                    "4004 [preauth]")]
        assert [ip] == counted(sshd, lines)
