"""Alerts: typed events (events.py) behind a durable outbox with retries
(outbox.py, service.py), delivered by one sender per action.

One file per alert kind (its config model, registered in ``SENDERS``, builds
the sender); the import below loads the built-in kinds. A new kind is one
file plus its name on that line.
"""

from kfwguard.alerts import alertmanager, webhook  # noqa: F401  (each registers its kind)
from kfwguard.alerts.base import SENDERS, ActionConfig

__all__ = ["SENDERS", "ActionConfig"]
