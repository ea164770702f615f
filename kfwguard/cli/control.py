"""CLI commands that talk to the running daemon over its control socket:
``ban``, ``unban``, ``list``, ``status``, ``reload``.

Exit codes: 0 done; 1 the daemon refused or is not running; 2 bad input
(an invalid address or duration, a broken config), refused before asking.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kfwguard.addresses import parse_target
from kfwguard.cli import config_option, fail
from kfwguard.config import ConfigError, load_config_or_default
from kfwguard.durations import check_ban_duration, format_duration, parse_duration

if TYPE_CHECKING:
    from kfwguard.operator.client import ControlClient

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


def _client(config_path: Path | None) -> ControlClient:
    # aiohttp's client is imported here, not at module load: `kfwguard --help`
    # and `kfwguard run` should not pay for it twice.
    from kfwguard.operator.client import ControlClient

    try:
        cfg, _ = load_config_or_default(config_path)
    except ConfigError as exc:
        fail(str(exc), 2)
    return ControlClient(cfg.control_socket)


def _call(coro: Coroutine[Any, Any, T]) -> T:
    from kfwguard.operator.client import ControlError

    try:
        return asyncio.run(coro)
    except ControlError as exc:
        fail(str(exc), 1)


def _when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (out of range)"  # a row from an older daemon must not stop `list`


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


@click.command()
@click.argument("address")
@click.option("--jail", default=None, help="jail to ban in (default: manual)")
@click.option("--for", "duration", default=None, metavar="DURATION",
              help="ban length, e.g. 30m, 12h, 7d (default: the jail's bantime, else 1h)")
@click.option("--reason", default=None, help="why, for the list and the alerts")
@click.option("--force", is_flag=True,
              help="ban even if ADDRESS overlaps the cluster, pod or service CIDRs "
                   "(never the admin ones)")
@config_option
def ban(address: str, jail: str | None, duration: str | None, reason: str | None,
        force: bool, config_path: Path | None) -> None:
    """Ban ADDRESS (an IPv4 or IPv6 address, or a CIDR) by hand."""
    try:
        target = parse_target(address)
    except ValueError:
        fail(f"{address!r} is not an IPv4 or IPv6 address or CIDR", 2)
    seconds = None
    if duration is not None:
        try:
            seconds = check_ban_duration(parse_duration(duration))
        except ValueError as exc:
            fail(f"--for: {exc}", 2)
    out = _call(_client(config_path).ban(str(target), jail, seconds, reason, force))
    for row in out.get("banned", []):
        click.echo(f"banned {row['target']} in jail {row['jail']} for "
                   f"{format_duration(row['expires_at'] - row['banned_at'])} "
                   f"(until {_when(row['expires_at'])})")
    if not out.get("applied", True):
        why = out.get("kernel_error")
        click.echo("kfwguard: stored, but the kernel has not taken it yet"
                   + (f": {why}" if why else "")
                   + " (the daemon keeps retrying; see its log)", err=True)


@click.command()
@click.argument("address")
@click.option("--jail", default=None, help="lift only the ban in this jail")
@click.option("--cluster", "everywhere", is_flag=True,
              help="cluster mode: lift it on every node, whichever decided it")
@config_option
def unban(address: str, jail: str | None, everywhere: bool, config_path: Path | None) -> None:
    """Lift the bans of ADDRESS (in every jail, or in --jail)."""
    try:
        target = parse_target(address)
    except ValueError:
        fail(f"{address!r} is not an IPv4 or IPv6 address or CIDR", 2)
    if everywhere:
        _call(_client(config_path).call("POST", "/cluster/unban", {"target": str(target)}))
        click.echo(f"unbanned {target} on every node of the cluster")
        return
    out = _call(_client(config_path).unban(str(target), jail))
    for row in out.get("unbanned", []):
        click.echo(f"unbanned {row['target']} in jail {row['jail']}")


@click.command("list")
@json_option
@config_option
def list_bans(as_json: bool, config_path: Path | None) -> None:
    """List the bans in force."""
    rows = _call(_client(config_path).bans())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bans in force")
        return
    # MODE: "simulated" for a ban decided in observe mode (dry_run), which the
    # kernel does not hold.
    table = [[r["target"], r["jail"], "simulated" if r.get("simulated") else "enforced",
              _when(r["banned_at"]), _when(r["expires_at"]), r["reason"]] for r in rows]
    click.echo(format_table(table, ["ADDRESS", "JAIL", "MODE", "BANNED AT", "EXPIRES AT",
                                    "REASON"]))


@click.command()
@json_option
@config_option
def status(as_json: bool, config_path: Path | None) -> None:
    """Show sources, jails, bans, alerts and the baseline of the running daemon."""
    st = _call(_client(config_path).status())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(render_status(st))


def render_status(st: dict[str, Any]) -> str:
    b = st.get("bans", {})
    lines = [
        f"kfwguard {st.get('version', '?')}, up {format_duration(st.get('uptime', 0))}, "
        f"config {st.get('config')}, table {st.get('table')}",
        f"bans: {b.get('active', 0)} active, {b.get('pending', 0)} pending, "
        f"{b.get('total', 0)} decided, {b.get('unbans', 0)} lifted, "
        f"{b.get('refused', 0)} refused ({b.get('refused_manual', 0)} manual), "
        f"{b.get('kernel_errors', 0)} kernel errors"
        + (f", {b['simulated_active']} simulated (observe mode, not in the kernel)"
           if b.get("simulated_active") else ""),
        "state: " + ("persisting" if st.get("persisting") else
                     "NOT PERSISTING (bans live in memory and the kernel only)"),
    ]
    lines += [f"WARNING: {w}" for w in st.get("warnings") or ()]
    sources = st.get("sources") or {}
    if sources:
        rows = []
        for name, s in sorted(sources.items()):
            lag = s.get("lag")
            skipped = sum((s.get("skipped") or {}).values())
            rows.append([name, str(s.get("lines_read", 0)), str(skipped),
                         "-" if lag is None else f"{lag:.1f}s"])
        lines += ["", format_table(rows, ["SOURCE", "LINES", "SKIPPED", "LAG"])]
        lines += [f"WARNING: source {name}: {s['problem']}"
                  for name, s in sorted(sources.items()) if s.get("problem")]
    jails = st.get("jails") or {}
    if jails:
        rows = []
        for name, j in sorted(jails.items()):
            matches = sum((j.get("matches") or {}).values())
            rows.append([name, str(j.get("failures", "-")), str(matches),
                         str(j.get("stale", "-")),
                         str(j.get("bans_active", 0)), str(j.get("bans_total", "-"))])
        lines += ["", format_table(rows, ["JAIL", "FAILING", "MATCHES", "STALE", "BANNED",
                                          "BANS"])]
    alerts = st.get("alerts") or {}
    if alerts:
        rows = [[name, a.get("type", "?"), str(a.get("queued", 0)), str(a.get("sent", 0)),
                 str(a.get("failures", 0)), a.get("last_error") or ""]
                for name, a in sorted(alerts.items())]
        lines += ["", format_table(rows, ["ACTION", "TYPE", "QUEUED", "SENT", "FAILURES",
                                          "LAST ERROR"])]
    baseline = st.get("baseline")
    lines += ["", "baseline: " + (", ".join(f"{k}={v}" for k, v in baseline.items())
                                   if baseline else "not enforced")]
    return "\n".join(lines)


@click.command()
@config_option
def reload(config_path: Path | None) -> None:
    """Make the daemon re-read its config (bans are kept)."""
    out = _call(_client(config_path).reload())
    click.echo(f"reloaded: {len(out.get('sources', []))} sources, "
               f"{len(out.get('jails', []))} jails")
    if out.get("note"):
        click.echo(str(out["note"]))


