"""A paired filter (sshd: PAM + sshd lines of one attempt count once, Accepted
forgives) settled in C++ inside the block pass decides exactly what the
reference decides: per-record matching, matching.sessions.Sessions, then
Jail.add_hits on the Python windows."""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kfwguard.addresses import IgnoreList
from kfwguard.config import JailConfig
from kfwguard.jails import windows
from kfwguard.jails.jail import Jail
from kfwguard.matching import Filter, load_filter
from kfwguard.matching.sessions import NativeSessions, Sessions, block_sessions, sessions_for
from kfwguard.model import BanRequest
from kfwguard.pipeline import JailFeed
from kfwguard.sources.formats import TextBlock
from tests.conftest import need

NOW = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
MODES = ("normal", "ddos", "extra", "aggressive")


@pytest.fixture(autouse=True)
def built() -> None:
    need(windows.NativeWindows is not None and NativeSessions is not None,
         "the C++ extension was not built (needs g++ and libre2-dev)")


@functools.cache
def sshd(mode: str, accelerate: bool = True) -> Filter:
    return load_filter(f"sshd[mode={mode}]", accelerate=accelerate)


def cfg(maxretry: int, findtime: float) -> JailConfig:
    return JailConfig(name="sshd", source="auth", filter="sshd", maxretry=maxretry,
                      findtime=findtime, bantime=3600.0)


# Messages of every kind the sshd filter pairs: failures, helpers (PAM, invalid
# user, root refused), Accepted, session ends / once lines, noise, a bad host.
MESSAGES = [
    "Failed password for {user} from {ip} port {port} ssh2",
    "Failed password for invalid user {user} from {ip} port {port} ssh2",
    "Invalid user {user} from {ip} port {port}",
    "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
    "rhost={ip}  user={user}",
    "PAM: Authentication failure for {user} from {ip}",
    "ROOT LOGIN REFUSED FROM {ip} port {port}",
    "Accepted password for {user} from {ip} port {port} ssh2",
    "Accepted publickey for {user} from {ip} port {port} ssh2: ED25519 SHA256:abc",
    "Connection closed by {ip} port {port} [preauth]",
    "Connection closed by authenticating user {user} {ip} port {port} [preauth]",
    "Disconnected from invalid user {user} {ip} port {port} [preauth]",
    "Received disconnect from {ip} port {port}:11: Bye Bye [preauth]",
    "Did not receive identification string from {ip} port {port}",
    "Failed publickey for {user} from {ip} port {port} ssh2: RSA SHA256:xyz",
    "pam_unix(sshd:session): session opened for user {user}(uid=0) by (uid=0)",
    "Failed password for {user} from 999.1.1.1 port {port} ssh2",
    # an origin, and lines without an address that count under it
    "Connection from {ip} port {port} on 10.0.0.1 port 22",
    "Disconnecting: Too many authentication failures [preauth]",
    "error: kex_exchange_identification: Connection closed by remote host",
    "fatal: Unable to negotiate a key exchange method [preauth]",
    "banner exchange: Connection from {ip} port {port}: invalid format",
    # summaries and refusals that count once per connection
    "User {user} from {ip} not allowed because not listed in AllowUsers",
    "error: maximum authentication attempts exceeded for {user} from {ip} port {port} ssh2 "
    "[preauth]",
    "Received disconnect from {ip} port {port}:3: com.jcraft.jsch.JSchException: Auth fail "
    "[preauth]",
]
IPS = ["203.0.113.9", "203.0.113.10", "198.51.100.7", "2001:db8::1", "2001:db8::2",
       "::ffff:203.0.113.9", "10.9.9.9"]
# The tag of the line: sshd's own with a pid (the session), without one (the
# address stands for it), another program (never matches), odd pids.
TAGS = ["sshd[{pid}]", "sshd[{pid}]", "sshd[{pid}]", "sshd-session[{pid}]", "sshd",
        "sshd[{pid}x]", "sudo[{pid}]", "[{pid}]"]


@st.composite
def log_line(draw: st.DrawFn, hostile: bool = True) -> bytes:
    """One auth.log line, mostly plain syslog, sometimes hostile or of a shape
    only the per-record path reads (repeats, CRLF, bad UTF-8, no host name)."""
    message = draw(st.sampled_from(MESSAGES)).format(
        user=draw(st.sampled_from(["root", "admin", "bob"])), ip=draw(st.sampled_from(IPS)),
        port=draw(st.integers(1024, 1030)))
    tag = draw(st.sampled_from(TAGS)).format(pid=draw(st.integers(100, 104)))
    # Log time wanders around NOW, also back in time and past the 30 s hold.
    second = draw(st.integers(-90, 90))
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(NOW + second))
    shape = draw(st.sampled_from(["plain"] * 30 + ["repeat", "crlf", "badutf8", "nohost"])
                 if hostile else st.just("plain"))
    if shape == "repeat":
        message = f"message repeated {draw(st.integers(2, 4))} times: [ {message}]"
    line = f"{stamp} host {tag}: {message}" if shape != "nohost" else f"{stamp} {tag}: {message}"
    raw = line.encode()
    if shape == "crlf":
        raw += b"\r"
    elif shape == "badutf8":
        raw += b" \xff"
    return raw


def seen(requests: list[BanRequest]) -> list[tuple[object, ...]]:
    return [(r.target, r.reason, r.duration, r.decided_at) for r in requests]


def compare(mode: str, blocks: list[bytes], steps: list[float], maxretry: int, findtime: float,
            max_sessions: int, ignore: IgnoreList) -> int:
    """Feeds ``blocks`` (the daemon's clock advancing by ``steps``) through the
    daemon's intake (JailFeed.take, C++ sessions) and through the reference;
    asserts the same bans, counts, stats, windows and held hits after each
    block. Returns how many blocks the C++ pass took whole."""
    flt = sshd(mode)
    ref = sshd(mode, accelerate=False)
    cc = Jail(cfg(maxretry, findtime), ignore, clock=lambda: NOW)
    py = Jail(cfg(maxretry, findtime), ignore, clock=lambda: NOW, native=False)
    native = sessions_for(flt, max_sessions=max_sessions)
    assert NativeSessions is not None and isinstance(native, NativeSessions)
    feed = JailFeed(cc, flt, native)
    reference = Sessions(ref.kinds, max_sessions=max_sessions)
    now = NOW
    taken = 0
    for data, step in zip(blocks, steps, strict=True):
        now += step
        hits = Filter.scan_lines(ref, data, now)  # the per-record path
        settled = reference.settle(hits, block_sessions(data, hits), now)
        expected = py.add_hits(settled, now, ref.name)
        probe = flt.track_lines(data, now, cc._windows, 0, 0, lambda k, r, t: None, None)
        assert probe is None  # a paired filter never counts without sessions
        got = feed.take(TextBlock(data, 0, str), now)
        assert feed.errors == 0
        assert (seen(got[0]), got[1]) == (seen(expected[0]), expected[1])
        assert cc.stats == py.stats
        assert len(native) == len(reference)
        assert native.unattributed == reference.unattributed
        taken += flt._block_scanner(data) is not None
    assert cc._windows.by_age() == py._windows.by_age()
    assert [cc._windows.count(k) for k in cc._windows.by_age()] == [
        py._windows.count(k) for k in py._windows.by_age()]
    assert [(h[2], h[4], h[5]) for h in native.flush()] == [
        (h[2], h[4], h[5]) for h in reference.flush()]
    return taken


class TestNativeSessions:
    @settings(max_examples=250, deadline=None)
    @given(
        mode=st.sampled_from(MODES),
        lines=st.booleans().flatmap(
            lambda hostile: st.lists(log_line(hostile), min_size=1, max_size=60)),
        cuts=st.lists(st.integers(0, 60), max_size=6),
        steps=st.lists(st.sampled_from([0.0, 1.0, 12.5, 29.0, 31.0, 120.0]), min_size=7,
                       max_size=7),
        maxretry=st.integers(1, 4),
        findtime=st.sampled_from([60.0, 600.0, 10 * 365 * 86400.0]),
        max_sessions=st.sampled_from([1, 2, 50_000]),
        ignored=st.sampled_from(["", "203.0.113.10", "2001:db8::/32"]),
    )
    def test_random_logs_agree(self, mode: str, lines: list[bytes], cuts: list[int],
                               steps: list[float], maxretry: int, findtime: float,
                               max_sessions: int, ignored: str) -> None:
        """Interleaved sessions (PIDs), PAM then sshd lines, Accepted forgiving,
        once/end lines, rsyslog repeats, hostile lines and blocks cut anywhere
        (mid-session), with the hold expiring by log time and by the daemon's
        clock and a full session table: the same bans, counts, stats, windows
        and held hits as the reference, block by block."""
        bounds = sorted({0, len(lines), *(c for c in cuts if c < len(lines))})
        blocks = [b"".join(line + b"\n" for line in lines[a:b])
                  for a, b in itertools.pairwise(bounds)]
        compare(mode, blocks, steps[:len(blocks)], maxretry, findtime, max_sessions,
                IgnoreList([ignored] if ignored else []))

    def test_paired_blocks_take_the_cxx_pass(self) -> None:
        """A plain sshd block with PAM helpers, failures and Accepted goes through
        the C++ pass whole (not the per-record path), and decides as the reference."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(NOW))
        lines = []
        for pid in range(100, 140):
            ip = f"203.0.113.{pid % 7}"
            lines.append(f"{stamp} host sshd[{pid}]: pam_unix(sshd:auth): authentication "
                         f"failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}  user=root")
            if pid % 5 == 0:
                lines.append(f"{stamp} host sshd[{pid}]: Accepted password for root from {ip} "
                             "port 22 ssh2")
            else:
                lines.append(f"{stamp} host sshd[{pid}]: Failed password for root from {ip} "
                             "port 22 ssh2")
        data = ("\n".join(lines) + "\n").encode()
        assert compare("normal", [data], [0.0], 3, 600.0, 50_000, IgnoreList()) == 1
        jail = Jail(cfg(3, 600.0), IgnoreList(), clock=lambda: NOW)
        feed = JailFeed.of(jail, sshd("normal"))  # what the daemon and test-filter build
        assert NativeSessions is not None and isinstance(feed.sessions, NativeSessions)
        done = jail.add_lines(sshd("normal"), data, NOW, feed.sessions)
        assert done is not None
        # 40 attempts, 8 forgiven: one count per attempt, PAM's line never a second.
        assert sum(done[1].values()) == 32 and done[1] == {"failed-auth": 32}

    def test_helpers_alone_count_after_the_hold(self) -> None:
        """PAM helpers with no sshd line after them count once the hold passes on
        the daemon's clock, in a later (empty) block, as the reference counts them."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(NOW))
        data = "".join(
            f"{stamp} host sshd[{pid}]: pam_unix(sshd:auth): authentication failure; "
            f"logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.7  user=root\n"
            for pid in range(200, 205)).encode()
        compare("normal", [data, b"", b""], [0.0, 10.0, 31.0], 5, 600.0, 50_000, IgnoreList())
        jail = Jail(cfg(5, 600.0), IgnoreList(), clock=lambda: NOW)
        sessions = sessions_for(sshd("normal"))
        first = jail.add_lines(sshd("normal"), data, NOW, sessions)
        assert first is not None and first[0] == [] and len(sessions) == 5
        later = jail.add_lines(sshd("normal"), b"", NOW + 31, sessions)
        assert later is not None and len(later[0]) == 1 and len(sessions) == 0

    def test_a_session_s_helpers_count_once_in_cxx(self) -> None:
        """In the C++ pass, a session's several held helpers (user enumeration:
        'Invalid user' + 'Failed none'; one password's two PAM lines) count once
        when it ends, after the hold, and at flush, as the reference counts them."""
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(NOW))
        ip = "198.51.100.8"
        lines = []
        for pid in range(300, 306):
            lines += [f"{stamp} host sshd[{pid}]: Invalid user test from {ip} port {pid}",
                      f"{stamp} host sshd[{pid}]: Failed none for invalid user test from {ip} "
                      f"port {pid} ssh2",
                      f"{stamp} host sshd[{pid}]: error: PAM: Authentication failure for "
                      f"illegal user test from {ip}"]
            if pid % 3 == 0:
                lines.append(f"{stamp} host sshd[{pid}]: Connection closed by invalid user test "
                             f"{ip} port {pid} [preauth]")
        data = ("\n".join(lines) + "\n").encode()
        assert compare("normal", [data, b""], [0.0, 31.0], 50, 600.0, 50_000, IgnoreList()) == 2
        jail = Jail(cfg(50, 600.0), IgnoreList(), clock=lambda: NOW)
        sessions = sessions_for(sshd("normal"))
        assert NativeSessions is not None and isinstance(sessions, NativeSessions)
        first = jail.add_lines(sshd("normal"), data, NOW, sessions)
        assert first is not None and sum(first[1].values()) == 2 and len(sessions) == 4
        later = jail.add_lines(sshd("normal"), b"", NOW + 31, sessions)
        assert later is not None and sum(later[1].values()) == 4 and len(sessions) == 0
        jail.add_lines(sshd("normal"), data, NOW + 32, sessions)
        assert 4 == len(sessions.flush())

    def test_unaddressed_lines_settle_alike_in_cxx(self) -> None:
        """Address-less lines counted under their session's origin (and not after its
        end, past the grace time, or without a PID) decide alike in the C++ pass and
        the reference, and the C++ pass takes such a block whole."""
        def at(second: int, pid: str, message: str) -> str:
            stamp = time.strftime("%b %d %H:%M:%S", time.localtime(NOW + second))
            return f"{stamp} host {pid}: {message}"
        too_many = "Disconnecting: Too many authentication failures [preauth]"
        lines = [at(0, "sshd[500]", "Connection from 203.0.113.60 port 1 on 10.0.0.1 port 22"),
                 at(1, "sshd[500]", too_many),  # counts
                 at(1, "sshd[501]", too_many),  # no origin
                 at(2, "sshd[502]", "Connection from 203.0.113.61 port 2"),
                 at(3, "sshd[502]", "Connection closed by 203.0.113.61 port 2 [preauth]"),
                 at(4, "sshd[502]", too_many),  # its origin ended
                 at(5, "sshd[503]", "Connection from 203.0.113.62 port 3"),
                 at(200, "sshd[503]", too_many),  # past the grace time
                 at(201, "sshd", too_many)]  # no PID
        data = ("\n".join(lines) + "\n").encode()
        assert compare("normal", [data], [0.0], 1, 600.0, 50_000, IgnoreList()) == 1
        jail = Jail(cfg(5, 600.0), IgnoreList(), clock=lambda: NOW)
        sessions = sessions_for(sshd("normal"))
        assert NativeSessions is not None and isinstance(sessions, NativeSessions)
        done = jail.add_lines(sshd("normal"), data, NOW + 200, sessions)
        assert done is not None and {"too-many-unaddressed": 1} == done[1]
        assert 4 == sessions.unattributed


class TestTagSessions:
    @settings(max_examples=400, deadline=None)
    @given(lines=st.lists(st.tuples(
        st.sampled_from(["Nov 26 04:57:45 ", "Nov 26 04:57:45 ", "Nov  6 04:57:45 ",
                         "Nov 6 04:57:45 ",
                         "Nov 26 04:57:45.123 ", "<38>Nov 26 04:57:45 ", "2026-11-26T04:57:45Z ",
                         "Foo 26 04:57:45 ", ""]),
        st.sampled_from(["host ", "host ", "host ", "h:", "h: ", "host auth.info ", "", "a:b "]),
        st.one_of(
            st.text(alphabet="sd[]0129:x -é", max_size=12),
            st.tuples(st.sampled_from(["sshd", "", "a[b", "s:d"]),
                      st.sampled_from(["[", "", "[["]),
                      st.text(alphabet="0129x]é ", max_size=4),
                      st.sampled_from(["]", "", "]]"])).map("".join)),
        st.sampled_from([": Failed", ":Failed", ": ", ""]),
    ), min_size=1, max_size=20))
    def test_cxx_reads_each_line_as_session_of(
            self, lines: list[tuple[str, str, str, str]]) -> None:
        """Any header-like line (odd stamps, hosts, tags with brackets, digits,
        colons, spaces, non-ASCII) gets the session prefix.session_of gives it,
        whether the C++ reader or Python reads it."""
        from kfwguard.matching.prefix import session_of

        texts = ["".join(parts) for parts in lines]
        data = "".join(t + "\n" for t in texts).encode()
        ends, pos = [], 0
        for t in texts:
            pos += len(t.encode())
            ends.append(pos)
            pos += 1
        hits = [(end, "match", "r", None, 0, 0.0) for end in ends for _ in range(2)]
        assert block_sessions(data, hits) == [session_of(t) for t in texts for _ in range(2)]


class TestHeadDispatch:
    @pytest.mark.parametrize("mode", MODES)
    def test_heads_pick_the_rule_the_set_picks(self, mode: str) -> None:
        """The C++ scanner's literal-head dispatch (only rules a message can start
        with run) finds the same rule and host span on every line of the sshd
        sample, repeated with every attacker address, as the RE2::Set pass; a
        mode with a rule that has no literal head cannot be given heads."""
        from pathlib import Path

        from kfwguard.matching import _native, patterns
        from kfwguard.matching.textfilter import TextFilter

        flt = sshd(mode)
        assert isinstance(flt, TextFilter) and flt._native is not None
        full = [r.regex if r.kind == "unaddressed" else patterns.expand_host(r.regex)
                for r in _spec_rules(mode)]
        heads = [[h.encode() for h in patterns.literal_prefixes(p)] for p in full]
        args = ([p.encode() for p in full], [r.host for r in flt._rules],
                [b"sshd", b"sshd-session", b"sshd-auth"], True, None)
        if not all(heads):  # a rule without a literal head: the Set pass serves this mode
            with pytest.raises(ValueError, match="literal head"):
                _native.Matcher(*args, heads)
            return
        sample = Path(__file__).resolve().parents[2] / "filters" / "samples" / "sshd.log"
        lines = [line for line in sample.read_text().splitlines()
                 if line[:3] in ("Nov", "Dec", "Jan") and line[15:16] == " "
                 and line[16:].split(" ", 1)[0][-1:] != ":"]
        data = "".join(line.replace("1", ip[-1]) + "\n"
                       for line in lines for ip in IPS).encode()
        with_heads = _native.Matcher(*args, heads).scan(data)
        assert with_heads == _native.Matcher(*args).scan(data)
        assert len(with_heads) > len(lines)


def _spec_rules(mode: str) -> list[Any]:
    from kfwguard.matching.engine import select_rules
    from kfwguard.matching.loader import shipped_dir
    from kfwguard.matching.textfilter import TextFilterSpec

    spec = TextFilterSpec.model_validate(
        yaml.safe_load((shipped_dir() / "sshd.yaml").read_text()))
    return list(select_rules(spec.rules, spec.modes, mode, "sshd.yaml"))
