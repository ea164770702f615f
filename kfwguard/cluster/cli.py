"""``kfwguard cluster status``: every node sharing bans, as the local daemon sees them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from kfwguard.cli import config_option
from kfwguard.cli.control import _call, _client, format_table, json_option


@click.group()
def cluster() -> None:
    """Cluster mode: nodes sharing bans through etcd."""


@cluster.command()
@json_option
@config_option
def status(as_json: bool, config_path: Path | None) -> None:
    """List the nodes: missing ones, baselines differing from the majority or
    drifted from their own policy, and the ban propagation delay each last saw."""
    out = _call(_client(config_path).call("GET", "/cluster/status"))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"this node: {out['node']}  connected: {out['connected']}  "
               f"endpoint: {out.get('endpoint')}  outbox: {out.get('outbox')}")
    now = time.time()
    rows = []
    for m in out.get("nodes", []):
        prop = m.get("propagation_seconds")
        at = m.get("at")
        rows.append([m["node"], m["state"], str(m.get("bans", "-")),
                     str(m.get("drift_count", "-")),
                     f"{prop * 1000:.0f} ms" if isinstance(prop, int | float) else "-",
                     f"{now - at:.0f}s ago" if isinstance(at, int | float) else "-",
                     str(m.get("last_error") or "")[:60]])
    click.echo(format_table(rows, ["NODE", "STATE", "BANS", "DRIFTS", "PROPAGATION",
                                   "HEARTBEAT", "LAST ERROR"]))
    bad = [m for m in out.get("nodes", []) if m["state"] != "up"]
    if bad:
        raise SystemExit(1)
