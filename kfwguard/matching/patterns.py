"""Regex text handling for filters: ``<HOST>``, group renaming, literal prefixes.

These functions read RE2 pattern text without compiling it. They are used
only to build patterns that RE2 then compiles (and so validates); where the
text is too unusual to read with confidence they answer conservatively (no
literal prefix), which costs speed and never correctness.
"""

from __future__ import annotations

from typing import Final

_V4: Final = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
# Loose on purpose: the captured text is validated by parse_host, the pattern
# only has to delimit it. Covers ::, ::1, fe80::1, ::ffff:1.2.3.4, full forms.
_V6: Final = rf"(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_V4}|[0-9A-Fa-f]{{1,4}})?"
HOST_PATTERN: Final = rf"(?P<host>{_V4}|{_V6}|\[{_V6}\])"
HOST_TAG: Final = "<HOST>"

_META: Final = frozenset(".[](){}*+?|^$")
_QUANT: Final = frozenset("?*{")


def expand_host(pattern: str) -> str:
    """Replace the one ``<HOST>`` in ``pattern`` with the host capture group.

    Raises ValueError when the pattern has no host, or more than one: a rule
    with two candidate addresses is exactly the ambiguity attackers exploit.
    """
    tags = pattern.count(HOST_TAG)
    named = pattern.count("(?P<host>") + pattern.count("(?<host>")
    if tags + named == 0:
        raise ValueError("the regex has no <HOST>: a rule must say where the address is")
    if tags + named > 1:
        raise ValueError("the regex has more than one <HOST>: the address must be unambiguous")
    return pattern.replace(HOST_TAG, HOST_PATTERN)


def _scan(pattern: str) -> list[tuple[int, str, int]]:
    """Tokens outside character classes: (position, kind, paren depth before it).

    kind is "(" for a group opening, ")" for a closing, "|" for alternation.
    Escapes and character classes are skipped whole.
    """
    out: list[tuple[int, str, int]] = []
    depth = 0
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":  # a leading ] is a literal member
                i += 1
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\":
                    i += 1
                elif pattern.startswith("[:", i):  # [:alpha:] inside a class
                    end = pattern.find(":]", i + 2)
                    if end != -1:
                        i = end + 1
                i += 1
            i += 1
            continue
        if c == "(":
            out.append((i, "(", depth))
            depth += 1
        elif c == ")":
            depth -= 1
            out.append((i, ")", depth))
        elif c == "|":
            out.append((i, "|", depth))
        i += 1
    return out


def strip_group_names(pattern: str) -> str:
    """``(?P<name>x)`` → ``(x)``: numbering is kept, so names map by index.

    Needed to join rules into one alternation: RE2 refuses a group name that
    occurs twice, and every rule has a ``host`` group.
    """
    parts: list[str] = []
    last = 0
    for pos, kind, _ in _scan(pattern):
        if kind != "(":
            continue
        for opener in ("(?P<", "(?<"):
            if pattern.startswith(opener, pos):
                close = pattern.find(">", pos + len(opener))
                if close == -1:
                    break
                parts.append(pattern[last:pos])
                parts.append("(")
                last = close + 1
                break
    parts.append(pattern[last:])
    return "".join(parts)


def has_top_level_alternation(pattern: str) -> bool:
    """True if ``pattern`` is ``a|b`` at its outermost level."""
    return any(kind == "|" and depth == 0 for _, kind, depth in _scan(pattern))


def _literal_run(pattern: str, i: int) -> tuple[str, int, bool]:
    """Read literal characters from ``i``: (text, next index, ran to the end of the run).

    Stops before a character that a quantifier makes optional or repeated.
    """
    out: list[str] = []
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            # Only escaped punctuation is a literal; \d, \pL, \x41 … are not read.
            if not nxt or nxt.isalnum() or not nxt.isascii():
                return "".join(out), i, False
            ch, step = nxt, 2
        elif c in _META:
            return "".join(out), i, True
        else:
            ch, step = c, 1
        after = pattern[i + step : i + step + 1]
        if after and after in _QUANT:
            return "".join(out), i, False
        if after == "+":
            out.append(ch)
            return "".join(out), i, False
        out.append(ch)
        i += step
    return "".join(out), i, True


def literal_prefixes(pattern: str) -> tuple[str, ...]:
    """Strings one of which every match of ``pattern`` (matched at the start) begins with.

    Returns () when no useful prefix can be read, which disables the
    prefilter for the filter. Understands a leading ``^`` and one leading
    optional literal group, ``(?:error: )?maximum …``.
    """
    if has_top_level_alternation(pattern):
        return ()
    i = 1 if pattern.startswith("^") else 0
    optional = ""
    if pattern.startswith("(?:", i):
        inner, j, clean = _literal_run(pattern, i + 3)
        if not (clean and inner and pattern.startswith(")?", j)):
            return ()
        optional, i = inner, j + 2
        if pattern.startswith("?", i):  # lazy ?? is still optional
            i += 1
    rest, _, _ = _literal_run(pattern, i)
    if not rest:
        return ()
    return (optional + rest, rest) if optional else (rest,)
