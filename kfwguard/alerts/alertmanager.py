"""Alertmanager API v2: one alert per ban, ``endsAt`` = ban expiry.

Alertmanager identifies an alert by its label set, so a re-ban refreshes the
same alert and an early unban re-sends it with ``endsAt`` = now to resolve it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from kfwguard.alerts.base import (
    Event,
    JsonPoster,
    SecretURL,
    load_format,
    render,
    rfc3339,
)
from kfwguard.config import AlertmanagerActionConfig
from kfwguard.durations import format_duration

_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")


def label_name(name: str) -> str:
    """A valid Prometheus label name: Alertmanager refuses the whole POST otherwise."""
    out = _LABEL_NAME.sub("_", name) or "_"
    return "_" + out if out[0].isdigit() else out


class AlertmanagerSender:
    """Posts alerts for one ``type: alertmanager`` action."""

    def __init__(self, name: str, cfg: AlertmanagerActionConfig, node: str) -> None:
        self.name = name
        self.cfg = cfg
        self.node = node
        self.url = SecretURL(cfg.url, cfg.url_file, cfg.url_env)
        self.format = load_format("alertmanager")
        self.extra_labels = {label_name(k): v for k, v in cfg.labels.items()}
        self._poster = JsonPoster(cfg.timeout)

    def alert(self, ev: Event) -> dict[str, Any]:
        banned_at = float(ev["banned_at"])
        expires_at = float(ev["expires_at"])
        ends = min(expires_at, float(ev["at"])) if ev["event"] == "unban" else expires_at
        drift = ev["event"] == "drift"
        alertname = (self.format.get("drift_alertname", "KfwguardBaselineDrift") if drift
                     else self.format.get("alertname", "KfwguardBan"))
        cluster = ev["event"] in ("baseline_differs", "baseline_agrees")
        if cluster:  # "baseline_agrees" resolves it: its expires_at is now
            alertname = self.format.get("cluster_baseline_alertname",
                                        "KfwguardClusterBaselineDiffers")
        labels = {
            **self.extra_labels,
            "alertname": str(alertname),
            "jail": str(ev["jail"]),
            "node": str(ev.get("node") or self.node),
            "address": str(ev["target"]),
        }
        if ev.get("simulated"):
            labels["simulated"] = "true"  # observe mode: route or silence it apart
        template = (self.format.get("drift_summary", "baseline ${address} drifted: ${reason}")
                    if drift else self.format.get("summary", "${address} banned"))
        if cluster:
            template = self.format.get("cluster_baseline_summary",
                                       "baseline of node ${address}: ${reason}")
        summary = render(str(template),
                         address=ev["target"], jail=ev["jail"], node=labels["node"],
                         duration=format_duration(expires_at - banned_at),
                         reason=ev.get("reason", ""), offence=ev.get("offence", 1))
        if ev.get("simulated"):
            summary = f"[simulated, not enforced] {summary}"
        return {
            "labels": labels,
            "annotations": {"summary": summary, "reason": str(ev.get("reason", "")),
                            "offence": str(ev.get("offence", 1))},
            "startsAt": rfc3339(banned_at),
            "endsAt": rfc3339(ends),
        }

    def body(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        # The last event of an address wins: a ban then an unban in one batch
        # must end resolved, and Alertmanager takes the alerts in order anyway.
        latest: dict[tuple[str, str], Event] = {}
        for ev in events:
            latest[(str(ev["target"]), str(ev["jail"]))] = ev
        return [self.alert(ev) for ev in latest.values()]

    async def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        base = self.url.get()
        await self._poster.post(base.rstrip("/") + "/api/v2/alerts", self.body(events), base)

    async def close(self) -> None:
        await self._poster.close()
