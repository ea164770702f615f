"""The built-in source kinds: importing a kind's module registers it in
``SOURCES`` (kfwguard/sources/base.py). A new kind is its file plus its name
here. The registry imports this module the first time a config is checked, so
what only reads lines (test-filter) does not load every kind."""

from kfwguard.sources import file, journald

__all__ = ["file", "journald"]
