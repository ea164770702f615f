"""Filters: log lines and JSON events in, failures (host, time, rule) out.

``load_filter`` finds and compiles a filter file; ``Filter.match`` is what
the daemon calls per record. Matching is linear-time (RE2) by construction.
"""

from kfwguard.matching.engine import Filter, Outcome
from kfwguard.matching.jsonfilter import JsonFilter
from kfwguard.matching.loader import (
    load_filter,
    parse_filter,
    shipped_dir,
    shipped_filter_names,
)
from kfwguard.matching.spec import FilterError
from kfwguard.matching.textfilter import TextFilter

__all__ = [
    "Filter",
    "FilterError",
    "JsonFilter",
    "Outcome",
    "TextFilter",
    "load_filter",
    "parse_filter",
    "shipped_dir",
    "shipped_filter_names",
]
