"""The ``kfwguard`` command."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import ClassVar, NoReturn

import click

from kfwguard import __version__

# The one -c option of every command (kfwguard.config.load_config_or_default).
config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    default=None, help="config file (default $KFWGUARD_CONFIG, else "
    "/etc/kfwguard/kfwguard.yaml, else the embedded default)",
)


def fail(message: str, code: int) -> NoReturn:
    """``kfwguard: message`` on stderr, then exit with ``code``."""
    click.echo(f"kfwguard: {message}", err=True)
    sys.exit(code)


class _LazyGroup(click.Group):
    """A group whose other commands are imported only when they run (or are listed):
    ``test-filter`` and ``run`` start without the config, baseline and control
    modules' imports (pydantic's schemas alone take a quarter of a second)."""

    LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "baseline": ("kfwguard.cli.baseline", "baseline"),
        "ban": ("kfwguard.cli.control", "ban"),
        "unban": ("kfwguard.cli.control", "unban"),
        "list": ("kfwguard.cli.control", "list_bans"),
        "status": ("kfwguard.cli.control", "status"),
        "reload": ("kfwguard.cli.control", "reload"),
        "cluster": ("kfwguard.cluster.cli", "cluster"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in self.LAZY:
            return found
        module, attr = self.LAZY[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kfwguard")
def main() -> None:
    """kfwguard: ban abusive addresses on Kubernetes nodes with nftables."""


@main.command()
@config_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: Path | None, log_level: str) -> None:
    """Run the daemon in the foreground."""
    from kfwguard.node import read_addresses_early

    read_addresses_early()  # while the daemon's modules load
    from kfwguard import app, logs

    logs.configure(log_level)
    sys.exit(app.run(config_path))


@main.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the config and every filter it uses."""
    from kfwguard.config import ConfigError, load_config_or_default
    from kfwguard.matching import FilterError
    from kfwguard.pipeline import build_filters, jail_filter

    try:
        cfg, origin = load_config_or_default(config_path)
    except ConfigError as exc:
        fail(str(exc), 2)
    problems = []
    # run skips a folder that is not there (the default names an optional
    # /etc/kfwguard/filters): say so, without failing the check. A jail whose
    # filter was expected from it fails below.
    for d in cfg.filters_dirs:
        if not d.is_dir():
            click.echo(f"{origin}: warning: filters_dirs: {str(d)!r} is not a directory; "
                       "no filter is read from it", err=True)
    for i, j in enumerate(cfg.jails):
        if not j.enabled:
            continue
        try:
            jail_filter(cfg, i)
        except ConfigError as exc:  # names the jail's own line already
            problems.append(str(exc))
        except FilterError as exc:
            problems.append(f"{origin}: jail {j.name!r}: {exc}")
    if cfg.baseline.enabled:
        from kfwguard.firewall.baseline import BaselineError, validate

        try:
            validate(cfg.baseline)
        except BaselineError as exc:
            problems.append(f"{origin}: baseline: {exc}")
    if problems:
        click.echo("\n".join(problems), err=True)
        sys.exit(2)
    from kfwguard.sources.trust import forgery_warnings

    for warning in forgery_warnings(cfg, build_filters(cfg)):
        click.echo(f"{origin}: warning: {warning}", err=True)
    click.echo(f"{origin}: OK ({len(cfg.sources)} sources, {len(cfg.jails)} jails)")


@main.command("test-filter")
@click.argument("filter_arg", metavar="FILTER")
@click.argument("logfile", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per matching line")
@click.option("--filters-dir", "dirs", multiple=True, type=click.Path(path_type=Path),
              help="search these folders before the shipped filters")
@click.option("--missed", is_flag=True,
              help="also list lines no rule matched that hold an address and a failure word")
def test_filter(filter_arg: str, logfile: Path, as_json: bool, dirs: tuple[Path, ...],
                missed: bool) -> None:
    """Run FILTER (a name or a path, NAME[mode=M] for a mode) over LOGFILE, like
    fail2ban-regex."""
    from kfwguard.matching import testfilter

    sys.exit(testfilter.main(filter_arg, logfile, as_json, list(dirs), sys.stdout,
                             missed=missed))

