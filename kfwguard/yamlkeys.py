"""Where each key of a YAML document is, so config and filter errors can say
``file: line N: jails[0].findtime: ...``."""

from __future__ import annotations

from typing import Any

import yaml

KeyPath = tuple[Any, ...]

# libyaml's safe loader where PyYAML was built with it (Debian's and the wheels
# are): the same documents and marks, ~10x faster than the pure-Python one,
# which a filter's load at every start (and test-filter's) would otherwise pay.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def key_lines(text: str) -> dict[KeyPath, int]:
    """The 1-based line of every key path in ``text`` (``("jails", 0, "name")``):
    a mapping key's own line, a sequence item's first line, ``()`` the
    document's. Empty when ``text`` is not YAML (its parser says why)."""
    try:
        node = yaml.compose(text, Loader=SAFE_LOADER)
    except yaml.YAMLError:
        return {}
    out: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), out)
    return out


def _walk(node: yaml.Node, prefix: KeyPath, out: dict[KeyPath, int]) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            out[(*prefix, key)] = k.start_mark.line + 1
            _walk(v, (*prefix, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*prefix, i), out)
