"""``kfwguard baseline …``: render, apply (optionally commit-confirmed), confirm, diff,
rollback, remove.

Exit codes: 0 done; 1 the operation failed (nft refused, nothing to roll back,
nothing to confirm, or ``diff`` found differences); 2 the config or policy is
invalid; 3 a commit-confirmed apply was rolled back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kfwguard.cli import config_option, fail
from kfwguard.config import Config, ConfigError, load_config_or_default
from kfwguard.durations import format_duration, parse_duration
from kfwguard.firewall import baseline as bl
from kfwguard.firewall.nft import Nft, NftError


def _load(path: Path | None) -> tuple[Config, str]:
    try:
        return load_config_or_default(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def _render(cfg: Config, source: str) -> str:
    try:
        return bl.render(cfg.baseline)
    except bl.BaselineError as exc:
        fail("\n".join(f"{source}: {p}" for p in exc.problems), 2)


def _nft() -> Nft:
    try:
        return Nft()
    except NftError as exc:
        fail(f"nft: {exc}", 1)


def _say(message: str) -> None:
    # After SIGHUP the terminal is gone; a failed write must not stop the rollback.
    try:
        click.echo(message)
    except OSError:
        pass


@click.group()
def baseline() -> None:
    """The baseline deny-all policy of this node."""


@baseline.command()
@config_option
def render(config_path: Path | None) -> None:
    """Print the nft script that apply would run."""
    cfg, source = _load(config_path)
    click.echo(_render(cfg, source), nl=False)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be longer than zero")
    return seconds


@baseline.command(name="apply")
@config_option
@click.option("--confirm-within", callback=_duration, default=None, metavar="DURATION",
              help="stay in the foreground and roll back unless confirmed within DURATION "
                   "(e.g. 60s); SIGINT, SIGTERM and SIGHUP roll back at once")
@click.option("--force", is_flag=True,
              help="apply even though the SSH session this runs in could not reconnect")
def apply_cmd(config_path: Path | None, confirm_within: float | None, force: bool) -> None:
    """Check the policy with nft, then replace the baseline table in one transaction."""
    cfg, source = _load(config_path)
    script = _render(cfg, source)
    ssh = os.environ.get("SSH_CONNECTION")
    cut = bl.ssh_session_cut(cfg.baseline, ssh) if ssh else None
    if cut is not None:
        if not force:
            fail(f"{source}: refused: {cut}", 2)
        click.echo(f"warning (--force): {cut}", err=True)
    nft = _nft()
    table = cfg.baseline.table
    try:
        if confirm_within is None:
            saved = bl.apply(nft, table, script, cfg.state_dir)
            click.echo(f"applied table inet {table}; previous one saved in {saved}")
            return
        where = f" -c {Path(source).resolve()}" if not source.startswith("<") else ""
        how = (f"to keep it, run within {format_duration(confirm_within)}:\n"
               f"    kfwguard baseline confirm{where}")
        kept = bl.apply_confirmed(nft, table, script, cfg.state_dir, confirm_within,
                                  notify=_say, instructions=how)
    except NftError as exc:
        fail(f"nft refused the policy; the live ruleset is unchanged:\n{exc}", 1)
    except bl.BaselineError as exc:
        fail(str(exc), 1)
    if not kept:
        sys.exit(3)


@baseline.command(name="confirm")
@config_option
@click.option("--timeout", callback=_duration, default="5s", metavar="DURATION",
              help="how long to wait for the waiting apply to answer")
def confirm_cmd(config_path: Path | None, timeout: float) -> None:
    """Keep the policy that a commit-confirmed apply is waiting on."""
    cfg, _ = _load(config_path)
    try:
        bl.confirm(cfg.state_dir, timeout=timeout)
    except bl.BaselineError as exc:
        fail(str(exc), 1)
    click.echo(f"confirmed: table inet {cfg.baseline.table} stays")


@baseline.command(name="diff")
@config_option
def diff_cmd(config_path: Path | None) -> None:
    """Show how the live table differs from the policy (exit 1 when it does)."""
    cfg, source = _load(config_path)
    _render(cfg, source)  # refuse an invalid policy with exit 2 before touching nft
    nft = _nft()
    try:
        text = bl.diff(nft, cfg.baseline)
    except (NftError, bl.BaselineError) as exc:
        fail(str(exc), 2)
    try:
        foreign = bl.foreign_base_chains(nft, cfg.baseline.table)
    except NftError as exc:
        fail(str(exc), 2)
    if text:
        click.echo(text, nl=False)
    if foreign:
        click.echo(f"# other tables' base chains on our hooks that can override table inet "
                   f"{cfg.baseline.table} (priority {bl.PRIORITY}):")
        for c in foreign:
            why = ("its drop policy drops what we accept" if c.policy == "drop"
                   else "it runs first: its drops win")
            click.echo(f"#   {c.family} {c.table} {c.chain}: hook {c.hook}, priority "
                       f"{c.priority}, policy {c.policy} ({why})")
    if text:
        sys.exit(1)


@baseline.command(name="remove")
@config_option
def remove_cmd(config_path: Path | None) -> None:
    """Remove the baseline table (saved first: 'baseline rollback' brings it back)."""
    cfg, _ = _load(config_path)
    nft = _nft()
    table = cfg.baseline.table
    names = [table, *([t] if (t := bl.owned_table(cfg.state_dir)) and t != table else [])]
    removed = []
    try:
        for name in names:
            if nft.table_exists("inet", name):
                bl.save_for_rollback(nft, name, cfg.state_dir)
                bl.remove_table(nft, name)
                removed.append(name)
        bl.remember_owned(cfg.state_dir, None)
    except (NftError, OSError) as exc:
        fail(str(exc), 1)
    if not removed:
        fail(f"no table inet {table}: nothing to remove", 1)
    click.echo(f"removed table inet {', '.join(removed)}; 'kfwguard baseline rollback' "
               "puts it back")
    if cfg.baseline.enabled:
        click.echo("note: baseline.enabled is true, so a running daemon puts it back; set "
                   "enabled: false and reload to keep it off", err=True)


@baseline.command(name="rollback")
@config_option
def rollback_cmd(config_path: Path | None) -> None:
    """Restore the baseline table saved by the last apply."""
    cfg, _ = _load(config_path)
    nft = _nft()
    try:
        bl.rollback(nft, cfg.state_dir)
    except (NftError, bl.BaselineError) as exc:
        fail(str(exc), 1)
    click.echo(f"restored table inet {cfg.baseline.table} from "
               f"{bl.StateFiles(cfg.state_dir).previous}")


if __name__ == "__main__":
    baseline()
