"""The built-in filter formats: importing a format's module registers it
(spec.register_format). A new format is its module plus its name here; the
registry imports this module the first time a filter file is parsed."""

from kfwguard.matching import jsonfilter, textfilter

__all__ = ["jsonfilter", "textfilter"]
