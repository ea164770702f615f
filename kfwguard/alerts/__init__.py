"""Alerts: chat webhooks and Alertmanager behind a durable outbox with retries."""

from kfwguard.alerts.base import AlertError, PermanentAlertError, Sender, ban_event
from kfwguard.alerts.outbox import AlertWorker, Outbox
from kfwguard.alerts.service import AlertService, build_sender, node_name

__all__ = [
    "AlertError",
    "AlertService",
    "AlertWorker",
    "Outbox",
    "PermanentAlertError",
    "Sender",
    "ban_event",
    "build_sender",
    "node_name",
]
