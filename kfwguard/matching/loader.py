"""Finding and loading filter files: explicit paths, operator dirs, then the shipped library."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from kfwguard.matching.engine import Accel, Filter
from kfwguard.matching.spec import FilterError, Networks, parse_spec

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def shipped_dir() -> Traversable:
    """The shipped filter library (package data, or ./filters in a source tree)."""
    try:
        return resources.files("kfwguard.filters")
    except ModuleNotFoundError:
        # Running from a checkout without installing: filters/ sits beside kfwguard/.
        return Path(__file__).resolve().parents[2] / "filters"


def shipped_filter_names() -> list[str]:
    """Names of the filters shipped with kfwguard, sorted."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in shipped_dir().iterdir()
        if p.name.endswith(".yaml") and p.is_file()
    )


def parse_filter(text: str, name: str, path: str = "<filter>", *,
                 accelerate: Accel = True, networks: Networks | None = None,
                 mode: str | None = None) -> Filter:
    """Compile filter YAML ``text`` as filter ``name``; FilterError on any problem."""
    spec, lines = parse_spec(text, path)
    return spec.build(name, path, lines, accelerate, networks, mode)


def split_mode(name_or_path: str) -> tuple[str, str | None]:
    """``sshd[mode=aggressive]`` → ("sshd", "aggressive"); other names unchanged."""
    if name_or_path.endswith("]") and "[mode=" in name_or_path:
        base, _, rest = name_or_path.partition("[mode=")
        return base, rest[:-1]
    return name_or_path, None


class FilterNotFound(FilterError):
    """No filter by that name or path: the config naming it is what to fix."""


def _read(source: Traversable, path: str) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FilterNotFound(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FilterError(path, f"cannot read: {exc}") from None


def load_filter(name_or_path: str, dirs: Sequence[Path] = (), *,
                accelerate: Accel = True, networks: Networks | None = None) -> Filter:
    """Load a filter by path (contains '/' or ends in .yaml) or by name.

    A name is looked up as ``<name>.yaml`` in each of ``dirs`` in order, then
    in the shipped library; the filter's name is the file's stem. A suffix
    ``[mode=M]`` picks the filter's mode M (fail2ban's syntax). ``networks``
    fills the address sets rules may exclude (``outside: control_plane``).
    """
    name_or_path, mode = split_mode(name_or_path)
    if mode is not None and (not mode or set(mode) - _NAME_CHARS):
        raise FilterError(name_or_path, f"not a valid mode name: {mode!r}")
    if "/" in name_or_path or name_or_path.endswith(".yaml"):
        path = Path(name_or_path)
        return parse_filter(_read(path, str(path)), path.stem, str(path),
                            accelerate=accelerate, networks=networks, mode=mode)
    name_ok = 0 < len(name_or_path) <= 64 and set(name_or_path) <= _NAME_CHARS
    if not name_ok or name_or_path[0] in "._-":
        raise FilterError(name_or_path, "not a valid filter name (letters, digits, _ . -)")
    file = f"{name_or_path}.yaml"
    for d in dirs:
        candidate = Path(d) / file
        if candidate.is_file():
            return parse_filter(_read(candidate, str(candidate)), name_or_path,
                                str(candidate), accelerate=accelerate, networks=networks,
                                mode=mode)
    shipped = shipped_dir() / file
    if shipped.is_file():
        return parse_filter(_read(shipped, str(shipped)), name_or_path, str(shipped),
                            accelerate=accelerate, networks=networks, mode=mode)
    searched = [str(d) for d in dirs] + ["the shipped filters"]
    raise FilterNotFound(
        name_or_path,
        f"no filter of that name (looked in {', '.join(searched)}; "
        f"shipped: {', '.join(shipped_filter_names()) or 'none'})",
    )
