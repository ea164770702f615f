"""The ``type: alertmanager`` alert kind (Alertmanager API v2): one alert per
ban, ``endsAt`` = ban expiry.

Alertmanager identifies an alert by its label set, so a re-ban refreshes the
same alert and an early unban re-sends it with ``endsAt`` = now to resolve it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, assert_never

from pydantic import Field

from kfwguard.alerts.base import SENDERS, JsonPoster, Sender, URLActionConfig, load_format, render
from kfwguard.alerts.events import AlertEvent, Ban, BaselineAgrees, BaselineDiffers, Drift, Unban
from kfwguard.durations import format_duration
from kfwguard.timestamps import format_rfc3339

_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")
# A drift alert stays firing this long: the daemon heals drift at once, so
# there is no later "resolved" moment to wait for.
DRIFT_ALERT_SECONDS = 15 * 60.0
# Cluster mode's baseline alert fires this long unless raised again
# (kfwguard/cluster/service.py raises it again well before); an agreement
# resolves it at once.
CLUSTER_ALERT_SECONDS = 24 * 3600.0


@SENDERS.register
class AlertmanagerActionConfig(URLActionConfig):
    type: Literal["alertmanager"]
    # Added to every alert's labels (they cannot override alertname, jail, node, address).
    labels: dict[str, str] = Field(default_factory=dict)

    def build(self, name: str, node: str) -> Sender:
        return AlertmanagerSender(name, self, node)


def label_name(name: str) -> str:
    """A valid Prometheus label name: Alertmanager refuses the whole POST otherwise."""
    out = _LABEL_NAME.sub("_", name) or "_"
    return "_" + out if out[0].isdigit() else out


class AlertmanagerSender:
    """Posts alerts for one ``type: alertmanager`` action."""

    aggregate = 0.0  # one alert per event: nothing to gather

    def __init__(self, name: str, cfg: AlertmanagerActionConfig, node: str) -> None:
        self.name = name
        self.cfg = cfg
        self.node = node
        self.url = cfg.secret_url()
        self.format = load_format("alertmanager")
        self.extra_labels = {label_name(k): v for k, v in cfg.labels.items()}
        self._poster = JsonPoster(cfg.timeout)

    def _alert(self, alertname: object, jail: str, node: str, address: str, summary: str,
               reason: str, offence: int, starts: float, ends: float,
               simulated: bool) -> dict[str, Any]:
        labels = {**self.extra_labels, "alertname": str(alertname), "jail": jail,
                  "node": node or self.node, "address": address}
        if simulated:
            labels["simulated"] = "true"  # observe mode: route or silence it apart
            summary = f"[simulated, not enforced] {summary}"
        return {
            "labels": labels,
            "annotations": {"summary": summary, "reason": reason, "offence": str(offence)},
            "startsAt": format_rfc3339(starts, "milliseconds"),
            "endsAt": format_rfc3339(ends, "milliseconds"),
        }

    def alert(self, ev: AlertEvent) -> dict[str, Any]:
        match ev:
            case Ban() | Unban():
                summary = render(str(self.format.get("summary", "${address} banned")),
                                 address=ev.target, jail=ev.jail, node=ev.node or self.node,
                                 duration=format_duration(ev.expires_at - ev.banned_at),
                                 reason=ev.reason, offence=ev.offence)
                # An early unban resolves the alert now.
                ends = min(ev.expires_at, ev.at) if isinstance(ev, Unban) else ev.expires_at
                return self._alert(self.format.get("alertname", "KfwguardBan"), ev.jail,
                                   ev.node, ev.target, summary, ev.reason, ev.offence,
                                   ev.banned_at, ends, ev.simulated)
            case Drift():
                template = self.format.get("drift_summary",
                                           "baseline table ${address} on ${node}: ${reason}")
                summary = render(str(template), address=ev.table, jail="baseline",
                                 node=ev.node or self.node,
                                 duration=format_duration(DRIFT_ALERT_SECONDS),
                                 reason=ev.reason, offence=1)
                return self._alert(self.format.get("drift_alertname", "KfwguardBaselineDrift"),
                                   "baseline", ev.node, ev.table, summary, ev.reason, 1,
                                   ev.at, ev.at + DRIFT_ALERT_SECONDS, False)
            case BaselineDiffers() | BaselineAgrees():
                ends = ev.at + CLUSTER_ALERT_SECONDS if isinstance(ev, BaselineDiffers) else ev.at
                template = self.format.get("cluster_baseline_summary",
                                           "baseline of node ${address}: ${reason}")
                summary = render(str(template), address=ev.target, jail="cluster",
                                 node=ev.node or self.node,
                                 duration=format_duration(ends - ev.at), reason=ev.reason,
                                 offence=1)
                return self._alert(self.format.get("cluster_baseline_alertname",
                                                   "KfwguardClusterBaselineDiffers"),
                                   "cluster", ev.node, ev.target, summary, ev.reason, 1,
                                   ev.at, ends, False)
            case _:
                assert_never(ev)

    def body(self, events: Sequence[AlertEvent]) -> list[dict[str, Any]]:
        # The last event of an alert wins: a ban then an unban in one batch
        # must end resolved, and Alertmanager takes the alerts in order anyway.
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for ev in events:
            alert = self.alert(ev)
            latest[(alert["labels"]["address"], alert["labels"]["jail"])] = alert
        return list(latest.values())

    async def send(self, events: Sequence[AlertEvent]) -> None:
        if not events:
            return
        base = self.url.get()
        await self._poster.post(base.rstrip("/") + "/api/v2/alerts", self.body(events), base)

    async def close(self) -> None:
        await self._poster.close()
