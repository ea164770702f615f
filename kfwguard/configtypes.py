"""Config building blocks shared by the root config (kfwguard.config) and every
component's own model (a source kind, an alert kind): the base model that
refuses unknown keys, and the value types (durations, absolute paths, networks).

Kept apart from kfwguard.config so that a component file can define its model
without importing the root config, which imports the components to build its
unions (kfwguard.registry).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from kfwguard.durations import check_ban_duration, parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
# A ban length: 1s to durations.MAX_BAN (what every ban path accepts).
BanDuration = Annotated[float, BeforeValidator(parse_duration),
                        AfterValidator(check_ban_duration)]


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError("expected an address or CIDR string")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or CIDR") from exc


Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)
]


def _absolute(path: Path) -> Path:
    # The daemon runs from / under systemd and in the image: a relative path
    # would silently name another file than the one meant.
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, not {str(path)!r}")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class Model(BaseModel):
    """Base for every config model: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
