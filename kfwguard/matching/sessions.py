"""One attempt, one failure: a paired filter's hits settled per session.

A failed sshd password writes two lines, PAM's
(``pam_unix(sshd:auth): authentication failure; … rhost=IP``) and sshd's own
(``Failed password for U from IP port N ssh2``), both from the same process
(``sshd[PID]``). Counting both bans after half the attempts ``maxretry``
allows; and a PAM failure followed by ``Accepted … for U from IP`` (pam_unix
failed, pam_sss or pam_ldap let the user in) is no failure at all. So the
rules of a filter have kinds (``spec.RuleKind``) and this object, one per
jail, holds a session's ``helper`` hits back until the session shows what they
were:

* a ``failure`` of the same session follows: the helpers were part of it and
  only the failure counts;
* a ``success`` follows: nothing counts;
* the session ends (an ``end`` or ``once`` line): the helpers count then;
* nothing follows for ``HOLD`` seconds (of log time, or of the daemon's clock
  since its oldest helper arrived): the helpers count then. A helper is never
  lost, only delayed.

The helpers a session holds when it is settled this way count **once**, as
its first helper (its line, its time): they are the lines of one attempt
(``Invalid user`` and the ``Failed none`` probe of a user enumeration; PAM's
line and ``error: PAM: …`` of one password), since every attempt that goes
further writes a failure, which takes the helpers before it.

A ``once`` hit (a pre-auth disconnect) counts only when its session has
nothing counted or pending yet.

Some of sshd's lines carry no address (``Disconnecting: Too many
authentication failures [preauth]``, ``fatal: Read from socket failed``,
``kex_exchange_identification: …`` and old negotiation failures): their rules
are of kind ``unaddressed`` and count as ``once`` under the address the same
session (``sshd[PID]``) named in an ``origin`` line (LogLevel VERBOSE's
``Connection from IP port N``) at most ``GRACE`` seconds of log time before.
A session's end or success forgets its origin (a PID is reused). With no
origin, or no PID, such a line counts nothing (``unattributed``): the address
is never guessed. The session is the writer's ``prog[PID]``
(journald's trusted ``_PID``, else the syslog tag); a line without one is
paired by its address instead.

Memory is bounded: past ``max_sessions`` pending sessions the oldest is
counted (never dropped); the sessions remembered as failed are forgotten
oldest first.

This class is the reference. The daemon's jails use its C++ twin
(``_native.Sessions``, from ``sessions_for``) where the extension was built:
the C++ block pass (``Jail.add_lines``) settles a block's hits there on the
way into the failure windows, without a Python object per hit, and its
``settle`` serves the per-record path's hits from the same state.
tests/unit/test_sessions_native.py proves both give the same bans and counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from kfwguard.addresses import IPAddress, key_host
from kfwguard.matching.engine import Filter, Hit
from kfwguard.matching.prefix import session_of
from kfwguard.model import Record

if TYPE_CHECKING:
    from kfwguard.matching import _native

try:  # the C++ twin of Sessions, built with the block scanner (setup.py)
    from kfwguard.matching._native import Sessions as NativeSessions
    from kfwguard.matching._native import tag_sessions
except ImportError:  # no compiler or RE2 headers at install time
    NativeSessions = None  # type: ignore[assignment,misc]
    tag_sessions = None  # type: ignore[assignment]

HOLD: Final = 30.0  # pam_faildelay is 2 s; an LDAP round trip a few more
# sshd's LoginGraceTime (120 s by default): a pre-auth session lives no longer,
# so an origin older than this is another connection's (a reused PID).
GRACE: Final = 120.0
MAX_SESSIONS: Final = 50_000


class Sessions:
    """Settles one jail's hits of a paired filter (``Filter.paired``)."""

    def __init__(self, kinds: Mapping[str, str], *, hold: float = HOLD,
                 max_sessions: int = MAX_SESSIONS, grace: float = GRACE) -> None:
        self._kinds = dict(kinds)
        self._hold = hold
        self._grace = grace
        self._max = max_sessions
        # session -> [(hit, daemon time it arrived)], oldest session first
        self._pending: dict[str, list[tuple[Hit, float]]] = {}
        self._failed: dict[str, None] = {}  # sessions with a counted failure
        # session -> (address, key, log time) its origin line named
        self._origins: dict[str, tuple[IPAddress, int, float]] = {}
        self._latest = float("-inf")  # the latest log time seen
        self.unattributed = 0  # unaddressed hits that no origin could count

    def __len__(self) -> int:
        """Sessions with hits held back."""
        return len(self._pending)

    def settle(self, hits: Sequence[Hit], sessions: Sequence[str | None],
               now: float) -> list[Hit]:
        """The hits that count now, from ``hits`` (with ``sessions[i]`` the
        session of ``hits[i]``) and from helpers held back earlier."""
        out: list[Hit] = []
        kinds = self._kinds
        pending = self._pending
        for hit, sid in zip(hits, sessions, strict=True):
            status, rule, host, key, t = hit[1], hit[2], hit[3], hit[4], hit[5]
            if t > self._latest:
                self._latest = t
            if status == "success":
                if sid is None:
                    sid = f"@{key}"
                pending.pop(sid, None)  # PAM failed, another module let the user in
                self._failed.pop(sid, None)
                self._origins.pop(sid, None)
                continue
            if status == "session":
                self._unaddressed(hit, sid, out)
                continue
            if status != "match" or host is None:
                out.append(hit)
                continue
            kind = kinds.get(rule or "", "failure")
            if sid is None:
                sid = f"@{key}"  # no session known: the address stands for it
            if kind == "failure":
                pending.pop(sid, None)  # its helpers were this same attempt
                self._mark_failed(sid)
                out.append(hit)
            elif kind == "helper":
                held = pending.get(sid)
                if held is None:
                    if len(pending) >= self._max:
                        out.extend(self._release(next(iter(pending))))
                    pending[sid] = [(hit, now)]
                else:
                    held.append((hit, now))
            elif kind == "once":
                if sid in pending:
                    out.extend(self._release(sid))  # the session is over
                    self._mark_failed(sid)
                elif sid not in self._failed:
                    self._mark_failed(sid)
                    out.append(hit)
            elif kind == "origin":
                if sid[0] != "@":  # by its address, a session has nothing to learn
                    origins = self._origins
                    origins.pop(sid, None)
                    if len(origins) >= self._max:
                        del origins[next(iter(origins))]
                    origins[sid] = (host, key, t)
            else:  # end: nothing of its own
                if sid in pending:
                    out.extend(self._release(sid))
                self._failed.pop(sid, None)
                self._origins.pop(sid, None)
        if pending:
            out.extend(self._expired(now))
        return out

    def _unaddressed(self, hit: Hit, sid: str | None, out: list[Hit]) -> None:
        """An unaddressed hit: ``once`` under its session's origin, else unattributed."""
        if sid is not None and sid in self._pending:
            out.extend(self._release(sid))  # the session is over
            self._mark_failed(sid)
            return
        if sid is not None and sid in self._failed:
            return
        origin = self._origins.get(sid) if sid is not None else None
        if origin is None or not 0.0 <= hit[5] - origin[2] <= self._grace:
            self.unattributed += 1
            out.append(hit)  # no address: the jail passes over it
            return
        assert sid is not None
        self._mark_failed(sid)
        out.append((hit[0], "match", hit[2], origin[0], origin[1], hit[5]))

    def flush(self) -> list[Hit]:
        """Every session's held hits, now, one count each (the input is over: a
        replay's end)."""
        out = [held[0][0] for held in self._pending.values()]
        self._pending.clear()
        return out

    def _mark_failed(self, sid: str) -> None:
        failed = self._failed
        failed.pop(sid, None)
        if len(failed) >= self._max:
            del failed[next(iter(failed))]
        failed[sid] = None

    def _release(self, sid: str) -> list[Hit]:
        """The one count of ``sid``'s held helpers (none if it holds none)."""
        held = self._pending.pop(sid, None)
        return [held[0][0]] if held else []

    def _expired(self, now: float) -> list[Hit]:
        """The sessions one of whose helpers has been held HOLD seconds, one count each."""
        hold = self._hold
        latest = self._latest
        done = [sid for sid, held in self._pending.items()
                if any(latest - h[5] >= hold or now - arrived >= hold for h, arrived in held)]
        return [hit for sid in done for hit in self._release(sid)]


# _native.cpp's Kind codes.
_KIND_CODES: Final = {"failure": 0, "helper": 1, "once": 2, "end": 3, "success": 4,
                      "origin": 5, "unaddressed": 6}


def sessions_for(flt: Filter, *, native: bool = True, hold: float = HOLD,
                 max_sessions: int = MAX_SESSIONS, grace: float = GRACE,
                 ) -> Sessions | _native.Sessions | None:
    """The settlement a jail reading ``flt`` needs: None for a filter that is not
    paired; else the C++ Sessions where the extension was built (and ``native``),
    which the C++ block pass can settle into, else the Python one."""
    if not flt.paired:
        return None
    if not native or NativeSessions is None:
        return Sessions(flt.kinds, hold=hold, max_sessions=max_sessions, grace=grace)
    names = flt.rules

    def make_hit(key: int, rule: int, t: float) -> Hit:
        """A hit the C++ pass held back, for the per-record path that releases it."""
        return 0, "match", names[rule], key_host(key), key, t

    return NativeSessions(list(names), [_KIND_CODES[flt.kinds.get(n, "failure")] for n in names],
                          make_hit, hold, max_sessions, grace)


def block_sessions(data: bytes, hits: Sequence[Hit]) -> list[str | None]:
    """The session of each hit of ``Filter.scan_lines(data)`` (from its line's header).
    Plain syslog headers are read in C++ where the extension was built
    (``_native.tag_sessions``); other lines as ``session_of`` reads them, a
    header shared by lines of one second and one process once."""
    out: list[str | bool | None]
    if tag_sessions is not None:
        out = tag_sessions(data, [hit[0] for hit in hits])
    else:
        out = [False] * len(hits)
    cache: dict[bytes, str | None] = {}
    for i, sid in enumerate(out):
        if sid is not False:
            continue
        end = hits[i][0]
        start = data.rfind(b"\n", 0, end) + 1
        colon = data.find(b": ", start, min(end, start + 400))
        head = data[start : colon + 2] if colon != -1 else data[start : min(end, start + 512)]
        try:
            out[i] = cache[head]
        except KeyError:
            found = session_of(data[start : min(end, start + 512)].decode("utf-8", "replace"))
            if len(cache) < 4096:
                cache[head] = found
            out[i] = found
    return out  # type: ignore[return-value]  # no False is left


def record_sessions(records: Sequence[Record], hits: Sequence[Hit]) -> list[str | None]:
    """The session of each hit of ``Filter.hits(records)`` (the first field is the index)."""
    return [session_of(records[h[0]].text[:512], records[h[0]].fields) for h in hits]
