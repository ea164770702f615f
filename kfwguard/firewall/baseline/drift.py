"""The live table as the kernel holds it, and what changed in it."""

from __future__ import annotations

import re
from typing import Any

from kfwguard.firewall.nft import Nft, NftError

# --------------------------------------------------------------------------- live state

def _replace_table(table: str) -> str:
    # "add" then "delete" so the script works whether or not the table exists.
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def table_exists(nft: Nft, table: str) -> bool:
    return any(item.get("table", {}).get("name") == table
               for item in nft.json("list tables inet"))


def live_listing(nft: Nft, table: str) -> str | None:
    """``nft list table inet <table>`` text, or None when the table does not exist."""
    if not table_exists(nft, table):
        return None
    return nft.run(f"list table inet {table}")


_COUNTS = re.compile(r"packets \d+ bytes \d+")


def normalise_listing(text: str) -> str:
    """Listing text without the values that change by themselves (counters)."""
    return _COUNTS.sub("packets 0 bytes 0", text)


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items()
                if k not in ("handle", "packets", "bytes")}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def snapshot(nft: Nft, table: str) -> dict[str, Any] | None:
    """The table as the kernel holds it, reduced to what a policy decides; None if absent."""
    if not table_exists(nft, table):
        return None
    try:
        items = nft.json(f"list table inet {table}")
    except NftError:
        return None  # deleted between the two calls
    snap: dict[str, Any] = {"chains": {}, "rules": {}, "sets": {}, "counters": {}, "other": []}
    for item in items:
        for kind, body in item.items():
            body = _strip_volatile(body)
            if kind in ("metainfo", "table"):
                continue
            if kind == "chain":
                snap["chains"][body["name"]] = body
                snap["rules"].setdefault(body["name"], [])
            elif kind == "rule":
                snap["rules"].setdefault(body["chain"], []).append(body["expr"])
            elif kind == "set":
                snap["sets"][body["name"]] = body
            elif kind == "counter":
                snap["counters"][body["name"]] = body
            else:
                snap["other"].append({kind: body})
    return snap


def describe_drift(table: str, expected: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """A reason naming what changed between two snapshots, or None if they are the same."""
    if live is None:
        return f"table inet {table} was deleted"
    reasons: list[str] = []
    for name, chain in expected["chains"].items():
        got = live["chains"].get(name)
        want_rules, got_rules = expected["rules"][name], live["rules"].get(name, [])
        if got is None:
            reasons.append(f"chain {name} was deleted")
        elif got != chain:
            reasons.append(f"chain {name} was redefined (hook, priority or policy)")
        elif want_rules and not got_rules:
            reasons.append(f"chain {name} was flushed")
        elif got_rules != want_rules:
            reasons.append(f"rules of chain {name} were edited")
    for kind in ("chains", "sets", "counters"):
        noun = kind[:-1]
        for name in sorted(set(live[kind]) - set(expected[kind])):
            reasons.append(f"{noun} {name} was added")
        if kind == "chains":
            continue
        for name, body in expected[kind].items():
            if name not in live[kind]:
                reasons.append(f"{noun} {name} was deleted")
            elif live[kind][name] != body:
                reasons.append(f"{noun} {name} was changed")
    if live["other"] != expected["other"]:
        reasons.append("other objects of the table were changed")
    return "; ".join(reasons) or None
