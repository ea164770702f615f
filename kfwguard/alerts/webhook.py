"""Chat webhooks: Slack-compatible JSON (Mattermost, Rocket.Chat) or plain JSON.

One send is one message summarising every event given, one line per (event,
jail), so the outbox can turn a burst of bans into a single message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from kfwguard.alerts.base import (
    Event,
    JsonPoster,
    SecretURL,
    load_format,
    render,
)
from kfwguard.config import WebhookActionConfig
from kfwguard.durations import format_duration


def summarise(events: Sequence[Event], fmt: dict[str, Any], node: str) -> str:
    """The message text for ``events``: one line per (event, jail), in first-seen order."""
    groups: dict[tuple[str, str, bool], list[Event]] = {}
    for ev in events:
        groups.setdefault((ev["event"], ev["jail"], bool(ev.get("simulated"))), []).append(ev)
    max_listed = int(fmt.get("max_listed", 10))
    lines = []
    for (kind, jail, simulated), evs in groups.items():
        targets = list(dict.fromkeys(str(e["target"]) for e in evs))
        shown = [render(fmt.get("address", "${address}"), address=t)
                 for t in targets[:max_listed]]
        addresses = ", ".join(shown)
        if len(targets) > max_listed:
            addresses += f" … and {len(targets) - max_listed} more"
        reasons = Counter(str(e.get("reason", "")) for e in evs)
        longest = max(float(e["expires_at"]) - float(e["banned_at"]) for e in evs)
        template = fmt.get(kind)
        if not isinstance(template, str):
            continue
        line = render(
            template, count=len(targets), noun="address" if len(targets) == 1 else "addresses",
            jail=jail, node=node, addresses=addresses, duration=format_duration(longest),
            reason=reasons.most_common(1)[0][0],
        )
        # Observe mode (dry_run): the reader must not think these are blocked.
        lines.append(f"[simulated, not enforced] {line}" if simulated else line)
    if len(lines) > 1 and isinstance(fmt.get("header"), str):
        counts = Counter(e["event"] for e in events)
        lines.insert(0, render(fmt["header"], node=node, bans=counts.get("ban", 0),
                               unbans=counts.get("unban", 0)))
    return "\n".join(lines)


class WebhookSender:
    """Posts chat messages for one ``type: webhook`` action."""

    def __init__(self, name: str, cfg: WebhookActionConfig, node: str) -> None:
        self.name = name
        self.cfg = cfg
        self.node = node
        self.url = SecretURL(cfg.url, cfg.url_file, cfg.url_env)
        self.format = load_format(cfg.format)
        self._poster = JsonPoster(cfg.timeout)

    def body(self, events: Sequence[Event]) -> dict[str, Any]:
        text = summarise(events, self.format, self.node)
        if self.cfg.format == "json":
            return {"text": text, "node": self.node, "events": list(events)}
        return {"text": text}

    async def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        url = self.url.get()
        await self._poster.post(url, self.body(events), url)

    async def close(self) -> None:
        await self._poster.close()
