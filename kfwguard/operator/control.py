"""The control API: JSON over HTTP on a root-only Unix socket.

Two locks keep it root-only: the socket file is mode 0600 in a 0700
directory, and every request's peer credentials (SO_PEERCRED) are checked,
so a socket that someone chmods, or a file descriptor passed on, still
answers nobody but uid 0.

Endpoints:

- ``POST /bans`` ``{target, jail?, duration?, reason?, force?}``: a manual ban
  through the BanManager (stored, applied in a batch, alerted, restored after
  restart); ``applied`` says whether the kernel holds it. ``force`` allows a
  ban overlapping the cluster, pod or service CIDRs (never admin_cidrs)
- ``DELETE /bans/{target}?jail=NAME``: lift a ban (in one jail or all)
- ``GET /bans``: bans in force
- ``GET /status``: sources, jails, bans, persistence, baseline, alerts
- ``POST /reload``: re-read the config (like SIGHUP), errors reported back

The server is kfwguard.operator.http (no aiohttp in the daemon for this); the
client, used by the CLI only, is kfwguard.operator.client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from kfwguard.addresses import parse_target
from kfwguard.bans import DEFAULT_MANUAL_BANTIME, MANUAL_JAIL, BanManager, BanRefused
from kfwguard.config import Config, ConfigError, load_config_or_default
from kfwguard.durations import check_ban_duration, parse_duration
from kfwguard.matching import FilterError
from kfwguard.model import BanRequest
from kfwguard.operator.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Route,
    Router,
    error_response,
    json_response,
)
from kfwguard.pipeline import build_filters
from kfwguard.store import BanRow
from kfwguard.telemetry import Snapshot, Telemetry

log = structlog.get_logger("kfwguard.control")

_JAIL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PEERCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
# How long a manual ban waits for the kernel before answering; the ban is
# stored either way and the BanManager keeps retrying the kernel.
_APPLY_WAIT = 5.0
_MAX_REASON = 200

class ControlUnavailable(Exception):
    """The control socket cannot be served (e.g. another daemon answers on it)."""


def _json_error(status: int, message: str) -> Response:
    return error_response(status, message)


def ban_to_json(row: BanRow, now: float) -> dict[str, Any]:
    return {
        "target": row.target,
        "jail": row.jail,
        "reason": row.reason,
        "banned_at": row.banned_at,
        "expires_at": row.expires_at,
        "remaining": max(0.0, row.expires_at - now),
        "offence": row.offence,
        # Observe mode (dry_run): decided and stored, not in the kernel.
        "simulated": row.simulated,
    }


def peer_uid(transport: asyncio.BaseTransport | None) -> int | None:
    """The uid of the process at the other end of a Unix socket, or None if unknown."""
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


def status_json(snap: Snapshot) -> dict[str, Any]:
    """Everything ``kfwguard status`` shows, from one telemetry snapshot."""
    bans = snap.bans
    per_jail_active = bans.in_force_by_jail() if bans is not None else {}
    per_jail_simulated = bans.in_force_by_jail(simulated=True) if bans is not None else {}
    matches: dict[str, dict[str, int]] = {}
    for (jail_name, rule), n in snap.matches.items():
        matches.setdefault(jail_name, {})[rule] = n
    sources = {
        s.name: {
            "lines_read": s.lines_read,
            "skipped": dict(s.skipped),
            "lag": None if s.lag is None else round(s.lag, 3),
            "errors": s.errors,
            "jails": list(s.jails),
            # Why it reads nothing, when it knows (journald not running).
            "problem": s.problem,
        } for s in snap.sources}
    jails: dict[str, Any] = {
        j.name: {
            "source": j.source,
            "filter": j.filter,
            "failures": j.tracked,
            "matches": matches.get(j.name, {}),
            "bans_total": bans.per_jail_total.get(j.name, 0) if bans is not None else 0,
            "bans_active": per_jail_active.get(j.name, 0),
            "ignored": j.ignored,
            # Failures dropped as older than findtime by their log time: many
            # here on a live log means the stamps are read in the wrong zone.
            "stale": j.stale,
            # Lines without an address whose session named none: counted nothing.
            "unattributed": j.unattributed,
            "actions": list(j.actions),
            "dry_run": j.dry_run,
            "simulated_active": per_jail_simulated.get(j.name, 0),
        } for j in snap.jails}
    for name, n in per_jail_active.items():
        # Manual bans and jails removed by a reload still hold bans.
        if name not in jails:
            jails[name] = {"bans_active": n}
    out: dict[str, Any] = {
        "version": snap.version,
        "config": snap.config,
        "uptime": round(snap.uptime, 1),
        "warnings": list(snap.warnings),
        "table": snap.table,
        "sources": sources,
        "jails": jails,
        "bans": {
            "active": bans.enforced_in_force if bans is not None else 0,
            "simulated_active": bans.simulated_in_force if bans is not None else 0,
            "simulated_total": bans.simulated_total if bans is not None else 0,
            "pending": bans.pending if bans is not None else 0,
            "total": bans.total if bans is not None else 0,
            "unbans": bans.unbans if bans is not None else 0,
            "refused": bans.refused if bans is not None else 0,
            "refused_manual": bans.refused_manual if bans is not None else 0,
            "kernel_errors": bans.kernel_errors if bans is not None else 0,
            "table_restores": bans.table_restores if bans is not None else 0,
        },
        "persisting": bans.persisting if bans is not None else False,
        "baseline": (dict(snap.baseline.enforced)
                     if snap.baseline is not None and snap.baseline.enforced is not None
                     else None),
    }
    if snap.alerts is not None:
        out["alerts"] = {a.name: {"type": a.type, "queued": a.queued, "sent": a.sent,
                                  "messages": a.messages, "failures": a.failures,
                                  "dropped": a.dropped, "last_error": a.last_error}
                         for a in snap.alerts}
    if snap.cluster is not None:
        out["cluster"] = dict(snap.cluster.status)
    return out


class Controlled(Protocol):
    """What the control API acts on (kfwguard.daemon.Daemon)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def cfg_path(self) -> str | None: ...
    @property
    def bans(self) -> BanManager | None: ...
    @property
    def sources(self) -> Mapping[str, object]: ...
    @property
    def jails(self) -> Mapping[str, object]: ...
    @property
    def last_reload_error(self) -> str | None: ...
    @property
    def last_reload_note(self) -> str | None: ...
    async def reload(self) -> bool: ...


class ControlServer:
    """Serves the control API for one daemon on ``path``."""

    def __init__(self, daemon: Controlled, path: Path, telemetry: Telemetry, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.daemon = daemon
        self.path = path
        self.telemetry = telemetry
        self.clock = clock
        self._server: HTTPServer | None = None
        self._reload_lock = asyncio.Lock()
        self.router = Router([
            Route("POST", "/bans", self.post_ban),
            Route("GET", "/bans", self.get_bans),
            Route("DELETE", "/bans/{target}", self.delete_ban),
            Route("GET", "/status", self.get_status),
            Route("POST", "/reload", self.post_reload),
        ])

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        sock = self._bind()
        server = HTTPServer(self._root_only, max_body=64 * 1024)
        try:
            await server.start_unix(sock)
        except BaseException:
            sock.close()
            raise
        self._server = server
        log.info("control_listening", socket=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()

    def _bind(self) -> socket.socket:
        path = self.path
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        if path.exists() or path.is_symlink():
            st = path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                raise ControlUnavailable(f"{path} exists and is not a socket")
            if _answers(path):
                raise ControlUnavailable(f"another kfwguard answers on {path}")
            path.unlink()  # left over by a daemon that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            # Tighten before listen(): until then every connect is refused,
            # so there is no moment when the socket answers with a wider mode.
            os.chmod(path, 0o600)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    # -- every request -------------------------------------------------------

    async def _root_only(self, request: Request) -> Response:
        """Refuse any peer but root before routing or reading a body."""
        uid = peer_uid(request.transport)
        if uid != 0:
            log.warning("control_refused", uid=uid, path=request.path)
            return _json_error(403, "the control socket answers root only")
        try:
            return await self.router(request)
        except HTTPError:
            raise
        except Exception as exc:  # one bad request must not take the API down
            log.exception("control_error", path=request.path)
            return _json_error(500, f"internal error: {type(exc).__name__}")

    # -- handlers ------------------------------------------------------------

    async def post_ban(self, request: Request) -> Response:
        bans = self.daemon.bans
        if bans is None:
            return _json_error(503, "the daemon is still starting")
        try:
            body = await request.json()
        except ValueError:
            return _json_error(400, "the body must be a JSON object")
        if not isinstance(body, dict) or not isinstance(body.get("target"), str):
            return _json_error(400, 'give {"target": ADDRESS[, "jail", "duration", "reason"]}')
        try:
            target = parse_target(body["target"])
        except ValueError as exc:
            return _json_error(400, str(exc))
        jail = body.get("jail") or MANUAL_JAIL
        if not isinstance(jail, str) or not _JAIL_NAME.match(jail):
            return _json_error(400, "a jail name is 1-64 letters, digits, '_', '.' or '-'")
        jail_cfg = {j.name: j for j in self.daemon.cfg.jails}.get(jail)
        if jail_cfg is None and jail != MANUAL_JAIL:
            # A typo must not quietly start a jail of its own.
            known = sorted({MANUAL_JAIL, *(j.name for j in self.daemon.cfg.jails)})
            return _json_error(400, f"no jail named {jail!r}; give one of {', '.join(known)} "
                                    "(or leave --jail out for a manual ban)")
        duration = jail_cfg.bantime if jail_cfg is not None else DEFAULT_MANUAL_BANTIME
        if body.get("duration") is not None:
            try:
                duration = check_ban_duration(parse_duration(body["duration"]))
            except ValueError as exc:
                return _json_error(400, str(exc))
        force = body.get("force", False)
        if not isinstance(force, bool):
            return _json_error(400, "force must be true or false")
        reason = body.get("reason") or "by operator"
        if not isinstance(reason, str):
            return _json_error(400, "reason must be a string")
        try:
            target = bans.check_target(target, force=force)
        except BanRefused as exc:
            bans.stats.refused += 1
            bans.stats.refused_manual += 1
            log.warning("manual_ban_refused", target=body["target"][:100], jail=jail,
                        why=str(exc))
            return _json_error(400, str(exc))
        now = self.clock()
        rows = bans.request([BanRequest(target=target, jail=jail, duration=duration,
                                        reason=f"manual: {reason[:_MAX_REASON]}",
                                        decided_at=now)], force=force)
        if not rows:
            return _json_error(400, f"{target} cannot be banned")
        # "applied" only if the kernel took it: a refused element waits for
        # its retry, and the answer says so.
        applied = await _wait_applied(bans.flush()) and bans.in_kernel(target)
        log.info("manual_ban", target=str(target), jail=jail, seconds=round(duration),
                 applied=applied)
        out: dict[str, Any] = {"banned": [ban_to_json(r, now) for r in rows], "applied": applied}
        if not applied and bans.last_kernel_error:
            out["kernel_error"] = bans.last_kernel_error
        return json_response(out)

    async def delete_ban(self, request: Request) -> Response:
        bans = self.daemon.bans
        if bans is None:
            return _json_error(503, "the daemon is still starting")
        try:
            target = parse_target(request.match_info["target"])
        except ValueError as exc:
            return _json_error(400, str(exc))
        jail = request.query.get("jail") or None
        rows = bans.unban(target, jail)
        if not rows:
            where = f" in jail {jail}" if jail else ""
            return _json_error(404, f"{target} is not banned{where}")
        applied = await _wait_applied(bans.flush()) and (
            bans.in_kernel(rows[0].target) if bans.active_target(rows[0].target)
            else bans.out_of_kernel(rows[0].target))
        now = self.clock()
        return json_response({"unbanned": [ban_to_json(r, now) for r in rows],
                              "applied": applied})

    async def get_bans(self, request: Request) -> Response:
        bans = self.daemon.bans
        now = self.clock()
        rows = sorted(bans.active() if bans is not None else [],
                      key=lambda r: (r.banned_at, r.target, r.jail))
        return json_response([ban_to_json(r, now) for r in rows])

    async def get_status(self, request: Request) -> Response:
        return json_response(status_json(self.telemetry.snapshot()))

    async def post_reload(self, request: Request) -> Response:
        async with self._reload_lock:
            # Validate first so the operator sees why a reload is refused, not
            # only the daemon's log.
            problem = await asyncio.to_thread(_config_problem, self.daemon.cfg_path)
            if problem is not None:
                return _json_error(400, f"reload refused, running on the old config:\n{problem}")
            ok = await self.daemon.reload()
        if not ok:
            why = self.daemon.last_reload_error or "see the log"
            return _json_error(400, f"reload refused, running on the old config: {why}")
        return json_response({"reloaded": True, "sources": sorted(self.daemon.sources),
                              "jails": sorted(self.daemon.jails),
                              "note": self.daemon.last_reload_note})


def _config_problem(path: str | None) -> str | None:
    try:
        cfg, _ = load_config_or_default(path)
        build_filters(cfg)
    except (ConfigError, FilterError) as exc:
        return str(exc)
    return None


async def _wait_applied(flush: Awaitable[None]) -> bool:
    try:
        await asyncio.wait_for(flush, timeout=_APPLY_WAIT)
    except TimeoutError:
        return False
    return True


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True
