"""Apply a policy in one checked transaction, keep what rolls it back, show the diff."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfwguard.config import BaselineConfig
from kfwguard.firewall.baseline.drift import (
    _replace_table,
    live_listing,
    normalise_listing,
    strip_dynamic,
)
from kfwguard.firewall.baseline.policy import BaselineError
from kfwguard.firewall.baseline.render import render
from kfwguard.firewall.nft import Nft

# --------------------------------------------------------------------------- state files

@dataclass(frozen=True)
class StateFiles:
    """Where apply keeps what it needs to roll back and to be confirmed, under state_dir."""

    state_dir: Path

    @property
    def previous(self) -> Path:
        return self.state_dir / "baseline.previous.nft"

    @property
    def pending(self) -> Path:
        return self.state_dir / "baseline.pending.json"

    @property
    def confirm(self) -> Path:
        return self.state_dir / "baseline.confirm"

    @property
    def outcome(self) -> Path:
        return self.state_dir / "baseline.outcome.json"

    @property
    def owned(self) -> Path:
        """The baseline table the daemon put in the kernel, so a renamed or
        disabled baseline can remove it (and only it)."""
        return self.state_dir / "baseline.owned.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rollback_script(nft: Nft, table: str) -> str:
    """A script that puts ``table`` back exactly as it is now (or removes it if absent)."""
    listing = live_listing(nft, table)
    if listing is None:
        return (f"# kfwguard baseline rollback: table inet {table} did not exist\n"
                + _replace_table(table))
    return (f"# kfwguard baseline rollback: table inet {table} as it was\n"
            + _replace_table(table) + strip_dynamic(listing))


def save_for_rollback(nft: Nft, table: str, state_dir: Path) -> Path:
    """Save ``table`` as it is now where ``rollback`` finds it; the script is checked."""
    back = rollback_script(nft, table)
    nft.check(back)
    path = StateFiles(state_dir).previous
    _write_atomic(path, back)
    return path


def apply(nft: Nft, table: str, script: str, state_dir: Path) -> Path:
    """Check ``script``, save the live table for rollback, then apply in one transaction.

    Raises NftError (nothing changed) when nft refuses the script. Returns the
    rollback file.
    """
    nft.check(script)
    back = rollback_script(nft, table)
    # A rollback that nft cannot parse would be discovered exactly when it is needed.
    nft.check(back)
    files = StateFiles(state_dir)
    _write_atomic(files.previous, back)
    nft.run(script)
    return files.previous


def rollback(nft: Nft, state_dir: Path) -> str:
    """Restore the table saved by the last apply. Returns the script that was run."""
    path = StateFiles(state_dir).previous
    try:
        script = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"no previous baseline saved at {path}: nothing to roll back") from None
    nft.run(script)
    return script


_PROBE = """
import sys
from kfwguard.firewall.nft import Nft
nft = Nft()
nft.run(sys.stdin.read())
sys.stdout.write(nft.run("list table inet " + sys.argv[1]))
"""


def desired_listing(script: str, table: str) -> str:
    """How the kernel lists ``script``'s table, learnt in a private, throwaway network namespace.

    Applying it there is the only way to get nft's own canonical form of our
    script without touching the live ruleset.
    """
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.run(
            ["unshare", "--net", "--", sys.executable, "-c", _PROBE, table],
            input=script, capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineError(f"cannot run nft in a private network namespace: {exc}") from None
    if proc.returncode != 0:
        raise BaselineError("cannot list the desired table in a private network namespace "
                            f"(needs CAP_SYS_ADMIN and unshare): {proc.stderr.strip()}")
    return proc.stdout


def diff(nft: Nft, cfg: BaselineConfig) -> str:
    """Unified diff from the live table to the desired one; empty when they are the same."""
    live = live_listing(nft, cfg.table)
    want = normalise_listing(desired_listing(render(cfg), cfg.table))
    have = normalise_listing(live) if live is not None else ""
    label = f"live table inet {cfg.table}" + (" (absent)" if live is None else "")
    return "".join(difflib.unified_diff(
        have.splitlines(keepends=True), want.splitlines(keepends=True),
        fromfile=label, tofile="desired"))


# --------------------------------------------------------------------------- ownership

def owned_table(state_dir: Path) -> str | None:
    """The table name recorded by the last daemon that enforced a baseline here."""
    data = _read_json(StateFiles(state_dir).owned)
    name = data.get("table") if data is not None else None
    return name if isinstance(name, str) and name else None


def remember_owned(state_dir: Path, table: str | None) -> None:
    path = StateFiles(state_dir).owned
    if table is None:
        path.unlink(missing_ok=True)
    else:
        _write_atomic(path, json.dumps({"table": table}))


def remove_table(nft: Nft, table: str) -> bool:
    """Delete ``table inet <table>`` if it exists; True if it was there."""
    if not nft.table_exists("inet", table):
        return False
    nft.run(_replace_table(table))
    return True


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, json.dumps(data))


def confirmation_received(files: StateFiles, token: str) -> bool:
    """``kfwguard baseline confirm`` wrote this change's token."""
    try:
        return files.confirm.read_text(encoding="utf-8").strip() == token
    except OSError:
        return False
