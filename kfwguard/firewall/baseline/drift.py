"""The live table as the kernel holds it, and what changed in it.

Everything here reads nft's *text* listing, never its JSON: nft 1.0.6 (Debian
12) frees a table's flag name before printing it in JSON, so with any table on
the node that carries exactly one flag (``flags owner``, which every
``nft_ctx`` owner-table has, or ``flags dormant``) ``nft -j list tables`` prints
garbage, invalid JSON, or corrupts libnftables' heap and aborts the process
that listed. A keep-in-force loop cannot depend on that printer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kfwguard.firewall.nft import Nft, NftError


def _replace_table(table: str) -> str:
    # "add" then "delete" so the script works whether or not the table exists.
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def live_listing(nft: Nft, table: str) -> str | None:
    """``nft list table inet <table>`` text, or None when the table does not exist."""
    if not nft.table_exists("inet", table):
        return None
    try:
        return nft.run(f"list table inet {table}")
    except NftError:
        return None  # deleted between the two calls


_COUNTS = re.compile(r"packets \d+ bytes \d+")


_NAMES_SET = re.compile(r"\tset names\d+[46] \{$")


def strip_dynamic(text: str) -> str:
    """A listing without the elements of the ``to_names`` sets: the daemon fills those
    from DNS answers, they are no part of the policy."""
    out, in_names, skipping = [], False, False
    for line in text.splitlines(keepends=True):
        if _NAMES_SET.match(line.rstrip("\n")):
            in_names = True
        elif in_names and line.rstrip("\n") == "\t}":
            in_names = skipping = False
        elif in_names and line.strip().startswith("elements ="):
            skipping = True
        if not skipping:
            out.append(line)
    return "".join(out)


def normalise_listing(text: str) -> str:
    """Listing text without the values that change by themselves (counters, the
    elements of the to_names sets)."""
    return strip_dynamic(_COUNTS.sub("packets 0 bytes 0", text))


_BLOCK = re.compile(r"(chain|set|map|counter|quota|limit|flowtable|ct \w+|secmark|synproxy)"
                    r" (\S+) \{$")


def parse_listing(text: str) -> dict[str, Any]:
    """A table's listing reduced to what a policy decides, by object.

    ``chains`` maps a chain to its header (type, hook, priority, policy),
    ``rules`` to its rule lines, ``sets`` and ``counters`` to their bodies,
    and ``other`` holds the table's own lines (flags, comment) and objects of
    kinds the policy never makes.
    """
    snap: dict[str, Any] = {"chains": {}, "rules": {}, "sets": {}, "counters": {}, "other": []}
    current: tuple[str, str] | None = None
    body: list[str] = []

    def close() -> None:
        if current is None:
            return
        kind, name = current
        if kind == "chain":
            header = [x for x in body if x.startswith("type ") or x.startswith("policy ")]
            snap["chains"][name] = " ".join(header)
            snap["rules"][name] = [x for x in body if x not in header]
        elif kind in ("set", "map"):
            if kind == "set" and re.fullmatch(r"names\d+[46]", name):
                # filled from DNS answers by the daemon: only the declaration is policy
                cut = next((i for i, x in enumerate(body) if x.startswith("elements =")),
                           len(body))
                snap["sets"][name] = " ".join(body[:cut])
            else:
                snap["sets"][name] = " ".join(body)
        elif kind == "counter":
            snap["counters"][name] = "counter"  # its values move by themselves
        else:
            snap["other"].append(f"{kind} {name} {{ {' '.join(body)} }}")

    for raw in normalise_listing(text).splitlines():
        line = raw.strip()
        if not line or raw.startswith("table ") or raw == "}":
            continue
        depth = len(raw) - len(raw.lstrip("\t"))
        if depth == 1:
            m = _BLOCK.fullmatch(line)
            if m is not None:
                close()
                current, body = (m.group(1), m.group(2)), []
            elif line == "}":
                close()
                current, body = None, []
            else:
                snap["other"].append(line)
        elif current is not None:
            body.append(line)
    close()
    return snap


def snapshot(nft: Nft, table: str) -> dict[str, Any] | None:
    """The table as the kernel holds it, reduced to what a policy decides; None if absent."""
    text = live_listing(nft, table)
    return None if text is None else parse_listing(text)


def describe_drift(table: str, expected: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """A reason naming what changed between two snapshots, or None if they are the same."""
    if live is None:
        return f"table inet {table} was deleted"
    reasons: list[str] = []
    if "flags dormant" in live["other"] and "flags dormant" not in expected["other"]:
        reasons.append(f"table inet {table} was made dormant (it filters nothing)")
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
    if not reasons and live["other"] != expected["other"]:
        reasons.append("other objects of the table were changed")
    return "; ".join(reasons) or None


# --------------------------------------------------------------------------- foreign chains

_CHAIN_HEADER = re.compile(
    r"type (\w+) hook (\w+)(?: device \S+)? priority ([^;]+); policy (\w+);")
# nft prints standard priorities by name; the numbers of the inet/ip/ip6 families.
_NAMED_PRIORITY = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0,
                   "security": 50, "srcnat": 100}


def priority_value(text: str) -> int | None:
    """``filter + 10`` → 10, ``-110`` → -110; None if nft printed something else."""
    m = re.fullmatch(r"\s*(-?\d+|[a-z]+)\s*(?:([+-])\s*(\d+))?\s*", text)
    if m is None:
        return None
    base = m.group(1)
    value = int(base) if base.lstrip("-").isdigit() else _NAMED_PRIORITY.get(base)
    if value is None:
        return None
    if m.group(2):
        value += int(m.group(3)) * (1 if m.group(2) == "+" else -1)
    return value


@dataclass(frozen=True)
class ForeignChain:
    family: str
    table: str
    chain: str
    hook: str
    priority: int
    policy: str


def foreign_base_chains(nft: Nft, own_table: str, hooks: tuple[str, ...] = (
        "input", "forward", "output"), own_priority: int = 10) -> list[ForeignChain]:
    """Other tables' filter base chains on our hooks that can override us: a drop
    policy (their drop is final whatever we accept) or a priority before ours."""
    text = nft.run("list ruleset")
    found: list[ForeignChain] = []
    family = table = chain = ""
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("table "):
            words = line.split()
            family, table = words[1], words[2]
        elif raw.startswith("\tchain "):
            chain = line.split()[1]
        elif line.startswith("type ") and (family, table) != ("inet", own_table):
            m = _CHAIN_HEADER.match(line)
            if m is None or m.group(2) not in hooks:
                continue
            prio = priority_value(m.group(3))
            if prio is None:
                continue
            if m.group(4) == "drop" or prio < own_priority:
                found.append(ForeignChain(family, table, chain, m.group(2), prio, m.group(4)))
    return found
