"""What the kernel sync's worker thread runs: nft I/O and nothing else.

Each function takes the ban table and the elements planned on the event
loop, talks to the kernel, and returns what the kernel refused; it reads no
daemon state and changes none (kfwguard.bans.enforcer settles the result on
the event loop).

One refused element (a full set, a conflicting interval) fails a whole nft
transaction, so a refused batch is split until each refused element stands
alone and the others go in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfwguard.firewall.bantable import BanTable, Element
from kfwguard.firewall.nft import NftError

Refused = list[tuple[str, NftError]]


@dataclass
class Batch:
    """One pass's changes, planned on the event loop."""
    adds: set[str]
    removes: set[str]
    mono: float
    new: list[Element] = field(default_factory=list)
    refresh: list[Element] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    # element -> the expiry it is given, exactly (now + timeout is not, and a
    # piece whose recorded expiry drifts would be refreshed on every pass)
    planned: dict[str, float] = field(default_factory=dict)


@dataclass
class Rebuilt:
    """What a whole-table rebuild met."""
    first_error: NftError | None = None  # why the one-transaction rebuild failed
    refused: Refused = field(default_factory=list)  # then, the elements refused


def send(table: BanTable, batch: Batch) -> Refused:
    """The batch's removals and additions, in one transaction if the kernel
    takes it. Returns the elements it refused, each with its refusal."""
    refused: Refused = []
    try:
        if batch.gone:
            table.update(batch.gone, batch.new, batch.refresh)
        else:
            refused += [(str(e.target), exc)
                        for e, exc in add_isolating(table, batch.new, batch.refresh)]
    except NftError:
        # Something in the batch was refused: removals on their own, then
        # the additions split until each refused element stands alone.
        try:
            table.remove(batch.gone)
        except NftError as exc:
            refused += [(k, exc) for k in batch.gone]
        refused += [(str(e.target), exc)
                    for e, exc in add_isolating(table, batch.new, batch.refresh)]
    return refused


def add_isolating(table: BanTable, new: list[Element],
                  refresh: list[Element]) -> list[tuple[Element, NftError]]:
    """Add in one transaction; if the kernel refuses it (e.g. a full set), split
    it so that the elements that can go in do. Returns the refused elements."""
    if not new and not refresh:
        return []
    try:
        table.add(new, refresh)
        return []
    except NftError as exc:
        if len(new) + len(refresh) == 1:
            return [((new or refresh)[0], exc)]
        if not table.exists():
            return [(e, exc) for e in (*new, *refresh)]
    hn, hr = (len(new) + 1) // 2, (len(refresh) + 1) // 2
    return (add_isolating(table, new[:hn], refresh[:hr])
            + add_isolating(table, new[hn:], refresh[hr:]))


def send_all(table: BanTable, want: dict[str, float], now: float) -> Rebuilt:
    """The table holding every ban in force (element -> expiry), in one
    transaction; if the kernel refuses that, an empty table and then the
    bans, split until each refused element stands alone. Raises NftError
    only if not even an empty table can be made."""
    try:
        table.replace_expiring(list(want.items()), now)
        return Rebuilt()
    except NftError as exc:
        first = exc
    table.replace([])
    new = [Element(k, x - now) for k, x in want.items()]
    return Rebuilt(first, [(str(e.target), exc) for e, exc in add_isolating(table, new, [])])
