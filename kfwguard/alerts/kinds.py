"""The built-in alert kinds: importing a kind's module registers it in
``SENDERS`` (kfwguard/alerts/base.py). A new kind is its file plus its name
here. The registry imports this module the first time a config is checked."""

from kfwguard.alerts import alertmanager, webhook

__all__ = ["alertmanager", "webhook"]
