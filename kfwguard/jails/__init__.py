"""Jails: failures per address counted in sliding windows by log time, and the
ban decision (``jail``), the windows themselves (``windows``) and how long a
ban lasts (``policy``)."""
