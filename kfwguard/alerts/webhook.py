"""The ``type: webhook`` alert kind: chat webhooks, Slack-compatible JSON
(Mattermost, Rocket.Chat) or plain JSON.

One send is one message summarising every event given, one line per (event,
jail), so the outbox can turn a burst of bans into a single message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

from kfwguard.alerts.base import SENDERS, JsonPoster, Sender, URLActionConfig, load_format, render
from kfwguard.alerts.events import (
    AlertEvent,
    Ban,
    BaselineAgrees,
    BaselineDiffers,
    Drift,
    Unban,
    payload,
)
from kfwguard.configtypes import Duration
from kfwguard.durations import format_duration


@SENDERS.register
class WebhookActionConfig(URLActionConfig):
    type: Literal["webhook"]
    format: Literal["slack", "json"] = "slack"
    # Bans within this window are sent as one message.
    aggregate: Duration = 5.0

    def build(self, name: str, node: str) -> Sender:
        return WebhookSender(name, self, node)


@dataclass
class _Line:
    """The events of one message line: one kind, one jail (or table)."""

    targets: dict[str, None] = field(default_factory=dict)  # an ordered set
    reasons: Counter[str] = field(default_factory=Counter)
    longest: float = 0.0


_LineKey = tuple[str, str, bool, str]   # kind, jail, simulated, the reason if it splits lines


def _group(ev: AlertEvent) -> tuple[_LineKey, str, str, float]:
    """(line key, target, reason, duration) of ``ev``. Bans of one jail share a
    line; the node's own events get one line per distinct reason (a drift put
    back and a failure to keep the baseline in force are different news)."""
    match ev:
        case Ban() | Unban():
            return ((ev.kind, ev.jail, ev.simulated, ""), ev.target, ev.reason,
                    ev.expires_at - ev.banned_at)
        case Drift():
            return (ev.kind, "baseline", False, ev.reason), ev.table, ev.reason, 0.0
        case BaselineDiffers() | BaselineAgrees():
            return (ev.kind, "cluster", False, ev.reason), ev.target, ev.reason, 0.0
        case _:
            assert_never(ev)


def summarise(events: Sequence[AlertEvent], fmt: dict[str, Any], node: str) -> str:
    """The message text for ``events``: one line per (event, jail), in first-seen order
    (the node's own events: per distinct reason)."""
    groups: dict[_LineKey, _Line] = {}
    for ev in events:
        key, target, reason, duration = _group(ev)
        g = groups.setdefault(key, _Line())
        g.targets[target] = None
        g.reasons[reason] += 1
        g.longest = max(g.longest, duration)
    max_listed = int(fmt.get("max_listed", 10))
    lines = []
    for (kind, jail, simulated, _), g in groups.items():
        template = fmt.get(kind)
        if not isinstance(template, str):
            continue
        targets = list(g.targets)
        shown = [render(fmt.get("address", "${address}"), address=t)
                 for t in targets[:max_listed]]
        addresses = ", ".join(shown)
        if len(targets) > max_listed:
            addresses += f" … and {len(targets) - max_listed} more"
        line = render(
            template, count=len(targets), noun="address" if len(targets) == 1 else "addresses",
            jail=jail, node=node, addresses=addresses, duration=format_duration(g.longest),
            reason=g.reasons.most_common(1)[0][0],
        )
        # Observe mode (dry_run): the reader must not think these are blocked.
        lines.append(f"[simulated, not enforced] {line}" if simulated else line)
    if len(lines) > 1 and isinstance(fmt.get("header"), str):
        counts = Counter(e.kind for e in events)
        lines.insert(0, render(fmt["header"], node=node, bans=counts.get("ban", 0),
                               unbans=counts.get("unban", 0)))
    return "\n".join(lines)


class WebhookSender:
    """Posts chat messages for one ``type: webhook`` action."""

    def __init__(self, name: str, cfg: WebhookActionConfig, node: str) -> None:
        self.name = name
        self.cfg = cfg
        self.node = node
        self.aggregate = cfg.aggregate
        self.url = cfg.secret_url()
        self.format = load_format(cfg.format)
        self._poster = JsonPoster(cfg.timeout)

    def body(self, events: Sequence[AlertEvent]) -> dict[str, Any]:
        text = summarise(events, self.format, self.node)
        if self.cfg.format == "json":
            return {"text": text, "node": self.node, "events": [payload(e) for e in events]}
        return {"text": text}

    async def send(self, events: Sequence[AlertEvent]) -> None:
        if not events:
            return
        url = self.url.get()
        await self._poster.post(url, self.body(events), url)

    async def close(self) -> None:
        await self._poster.close()
