"""Alerts: typed events (events.py) behind a durable outbox with retries
(outbox.py, service.py), delivered by one sender per action.

One file per alert kind (its config model, registered in ``SENDERS``, builds
the sender); kinds.py names the built-in ones. A new kind is one file plus
its name there.
"""
