"""Component kinds by their ``type:`` tag: one registry per pluggable sort
(log sources, alert senders).

A kind is one file: its config model (a subclass of the sort's base model,
with ``type: Literal["tag"]`` and unknown keys refused) carries its factory
(a ``build`` method) and registers itself with ``@REGISTRY.register``. Adding
a kind is that file plus one import line in the sort's ``kinds`` module,
which the registry imports when it is first asked about its kinds.
kfwguard.config validates each entry through ``Registry.validate``: the
``type:`` key picks the model, so the YAML format stays ``{name: ..., type:
file, ...}`` and an error names the key inside the entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar, cast, get_args, get_origin

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from kfwguard.configtypes import Model

B = TypeVar("B", bound=Model)
K = TypeVar("K", bound=type[Model])


def _tag_of(model: type[Model]) -> str:
    field = model.model_fields.get("type")
    annotation = field.annotation if field is not None else None
    args = get_args(annotation) if get_origin(annotation) is Literal else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{model.__name__} needs a field  type: Literal['its-tag']")
    return args[0]


def _error(loc: tuple[str, ...], kind: str, message: str, value: object) -> ValidationError:
    # A ValidationError raised inside a validator keeps its locations (below
    # the entry's own), so the config error names the file line of `type:`.
    return ValidationError.from_exception_data("kind", [InitErrorDetails(
        type=PydanticCustomError(kind, message), loc=loc, input=value)])


class Registry(Generic[B]):
    """The kinds of one sort: ``type:`` tag → config model (whose ``build`` is the factory)."""

    def __init__(self, sort: str, base: type[Model], builtins: str) -> None:
        # ``base`` is B (abstract: mypy takes no abstract class for a type[B]).
        self.sort = sort
        self.base = base
        # The module whose import registers the built-in kinds.
        self.builtins = builtins
        self._loaded = False
        self._kinds: dict[str, type[B]] = {}

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # before: the kinds' own register() calls land here
            importlib.import_module(self.builtins)

    def register(self, model: K) -> K:
        """Class decorator: make ``model`` the kind for its ``type:`` tag."""
        self._load()
        kind: type[Model] = model
        if not issubclass(kind, self.base):
            raise TypeError(f"a {self.sort} kind must subclass {self.base.__name__}")
        tag = _tag_of(kind)
        known = self._kinds.get(tag)
        if known is not None and known is not kind:
            raise ValueError(f"{self.sort} type {tag!r} is already {known.__module__}."
                             f"{known.__qualname__}")
        self._kinds[tag] = cast("type[B]", kind)
        return model

    def tags(self) -> list[str]:
        self._load()
        return sorted(self._kinds)

    def model(self, tag: str) -> type[B] | None:
        self._load()
        return self._kinds.get(tag)

    def validate(self, value: object) -> B:
        """A config entry (a mapping with ``type:``) → the model of its kind."""
        self._load()
        if isinstance(value, self.base):
            if type(value) is not self._kinds.get(_tag_of(type(value))):
                raise ValueError(f"{type(value).__name__} is not a registered {self.sort} kind")
            return value
        if not isinstance(value, Mapping):
            raise PydanticCustomError("model_type", "expected a mapping with a type: key")
        tag: Any = value.get("type")
        if tag is None:
            raise _error(("type",), "missing", "Field required; one of: {}".format(
                ", ".join(self.tags())), value)
        model = self._kinds.get(tag) if isinstance(tag, str) else None
        if model is None:
            raise _error(("type",), "unknown_kind",
                         f"unknown {self.sort} type {tag!r}; one of: {', '.join(self.tags())}",
                         tag)
        return model.model_validate(value)
