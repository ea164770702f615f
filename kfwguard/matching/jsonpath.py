"""Field paths into parsed JSON: ``a.b.c``, ``list[-1]``, ``annotations["k8s.io/x"]``.

Lookup is a loop, not recursion, and a path has a fixed length, so a deeply
nested document costs no more than a flat one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

Step = str | int


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def parse_path(path: str) -> tuple[Step, ...]:
    """Split ``path`` into keys and indices; ValueError explains a malformed path."""
    steps: list[Step] = []
    i, n = 0, len(path)
    if n == 0:
        raise ValueError("empty field path")
    expect_name = True
    while i < n:
        c = path[i]
        if c == "[":
            close_quote = path[i + 1 : i + 2]
            if close_quote in ('"', "'"):
                end = path.find(close_quote + "]", i + 2)
                if end == -1:
                    raise ValueError(f"unterminated [{close_quote}…{close_quote}] in {path!r}")
                steps.append(path[i + 2 : end])
                i = end + 2
            else:
                end = path.find("]", i + 1)
                inner = path[i + 1 : end] if end != -1 else ""
                try:
                    steps.append(int(inner))
                except ValueError:
                    raise ValueError(
                        f"[{inner}] in {path!r} is not an index; quote keys: [\"key\"]"
                    ) from None
                i = end + 1
            expect_name = False
        elif c == ".":
            if expect_name:
                raise ValueError(f"empty key in {path!r}")
            expect_name = True
            i += 1
        else:
            if not expect_name:
                raise ValueError(f"expected '.' or '[' at position {i} in {path!r}")
            j = i
            while j < n and path[j] not in ".[]":
                j += 1
            if path[j : j + 1] == "]":
                raise ValueError(f"unbalanced ']' in {path!r}")
            steps.append(path[i:j])
            i = j
            expect_name = False
    if expect_name:
        raise ValueError(f"{path!r} ends with '.'")
    return tuple(steps)


def lookup(doc: Any, steps: tuple[Step, ...]) -> Any:
    """The value at ``steps`` in ``doc``, or MISSING if any step does not exist."""
    cur = doc
    for step in steps:
        if isinstance(step, str):
            if not isinstance(cur, Mapping):
                return MISSING
            cur = cur.get(step, MISSING)
            if cur is MISSING:
                return MISSING
        else:
            if not isinstance(cur, Sequence) or isinstance(cur, str | bytes):
                return MISSING
            try:
                cur = cur[step]
            except IndexError:
                return MISSING
    return cur


def json_equal(actual: Any, expected: Any) -> bool:
    """JSON equality: 401 == 401.0, but true != 1 and "401" != 401."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    if expected is None:
        return actual is None
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and actual == expected
    return False
