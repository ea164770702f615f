"""Typed configuration: YAML in, validated models out, errors that name file, line and key."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from kfwguard.alerts.base import SENDERS, ActionConfig
from kfwguard.configtypes import AbsolutePath, BanDuration, Duration, Model, Network
from kfwguard.sources.base import SOURCES, SourceConfig
from kfwguard.yamlkeys import key_lines

DEFAULT_CONFIG_PATH = Path("/etc/kfwguard/kfwguard.yaml")

# One entry of `sources:` / `actions:`: its `type:` picks the kind's model in
# the registry (kfwguard/registry.py), so a kind added in its own file is
# accepted here without a change to this file.
SourceEntry = Annotated[SourceConfig, PlainValidator(SOURCES.validate), SerializeAsAny()]
ActionEntry = Annotated[ActionConfig, PlainValidator(SENDERS.validate), SerializeAsAny()]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics.listen {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9741") from None
    return text


class NftablesConfig(Model):
    table: str = Field("kfwguard", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    # Upper bound on elements per ban set; the kernel refuses more (counted, retried).
    set_size: int = Field(1_000_000, ge=16, le=16_777_216)
    # How often the daemon checks that its table is still there.
    check_interval: Duration = 2.0


class BantimeIncrement(Model):
    factor: float = Field(2.0, ge=1.0, allow_inf_nan=False)
    max: BanDuration = 7 * 86400.0


class JailConfig(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source: str
    filter: str
    enabled: bool = True
    maxretry: int = Field(5, ge=1)
    findtime: Duration = 600.0
    bantime: BanDuration = 3600.0
    bantime_increment: BantimeIncrement | None = None
    ignoreip: list[Network] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    # IPv6 failures count, and bans fall, per this prefix (unset: the global
    # ipv6_prefix); 128 counts and bans single addresses.
    ipv6_prefix: int | None = Field(None, ge=16, le=128)
    # Observe mode: bans decided, stored, listed, alerted as simulated, never
    # put in the kernel (unset: the global dry_run).
    dry_run: bool | None = None

    @field_validator("findtime")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be longer than zero")
        return v


class MetricsConfig(Model):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:9741"


class TrackerConfig(Model):
    # Most addresses with failures remembered per jail; the oldest are evicted
    # first, so a distributed attack cannot grow memory without bound.
    max_entries: int = Field(200_000, ge=100)


class PortRule(Model):
    proto: Literal["tcp", "udp"]
    ports: list[int | str]
    from_: list[Network] = Field(default_factory=list, alias="from")
    to: list[Network] = Field(default_factory=list)
    # allow_out only: hostnames, resolved by the daemon (TTL-bound nft set elements)
    to_names: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NodePortsConfig(Model):
    # None: open on workers, closed on control planes
    enabled: bool | None = None
    from_: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("0.0.0.0/0"),
                                 ipaddress.ip_network("::/0")], alias="from")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NameTTLConfig(Model):
    # element timeouts of to_names answers: the DNS TTL, clamped to [floor, ceiling]
    floor: Duration = 30.0
    ceiling: Duration = 3600.0


class BaselineConfig(Model):
    enabled: bool = False
    table: str = Field("kfwguard_baseline", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    role: Literal["worker", "control-plane"] = "worker"
    cni: Literal["flannel", "calico", "cilium", "none"] = "flannel"
    admin_cidrs: list[Network] = Field(default_factory=list)
    failsafe_ports: list[str] = Field(default_factory=lambda: ["tcp/22", "tcp/6443"])
    cluster_cidrs: list[Network] = Field(default_factory=list)
    control_plane_cidrs: list[Network] = Field(default_factory=list)
    pod_cidrs: list[Network] = Field(default_factory=list)
    service_cidrs: list[Network] = Field(default_factory=list)
    # who may reach 6443 besides nodes and pods; None: admin_cidrs
    api_cidrs: list[Network] | None = None
    nodeports: NodePortsConfig = Field(default_factory=NodePortsConfig)
    # egress 53 / 123 only to these; None: discovered from the node's own config
    dns_servers: list[Network] | None = None
    ntp_servers: list[Network] | None = None
    # interfaces pod traffic arrives on (nft wildcards like "cali*"); None: the CNI's
    pod_interfaces: list[str] | None = None
    # a daemon reload that changes the policy rolls back unless confirmed within
    confirm_within: Duration = 120.0
    name_ttl: NameTTLConfig = Field(default_factory=NameTTLConfig)
    reconcile_interval: Duration = 10.0
    allow_in: list[PortRule] = Field(default_factory=list)
    allow_out: list[PortRule] = Field(default_factory=list)


class ClusterTLS(Model):
    ca: Path
    cert: Path
    key: Path


class ClusterConfig(Model):
    """Cluster mode: share bans with the other nodes through etcd (docs/cluster.md)."""

    backend: Literal["etcd"] = "etcd"
    endpoints: list[str] = Field(min_length=1)
    tls: ClusterTLS | None = None
    # Default: the hostname (the DaemonSet passes spec.nodeName).
    node_name: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,253}$")
    prefix: str = Field("/kfwguard/v1", pattern=r"^/[A-Za-z0-9_./-]*[A-Za-z0-9_-]$")
    # Jails whose bans are shared; empty: all.
    share_jails: list[str] = Field(default_factory=list)
    heartbeat: Duration = 5.0

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for e in v:
            if not e.startswith(("https://", "http://")):
                raise ValueError(f"{e!r}: an endpoint is an http:// or https:// URL")
        return v

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, v: float) -> float:
        if not 1.0 <= v <= 300.0:
            raise ValueError("heartbeat must be between 1s and 5m")
        return v


class Config(Model):
    state_dir: AbsolutePath = Path("/var/lib/kfwguard")
    control_socket: AbsolutePath = Path("/run/kfwguard/control.sock")
    nftables: NftablesConfig = Field(default_factory=NftablesConfig)  # type: ignore[arg-type]
    filters_dirs: list[AbsolutePath] = Field(default_factory=list)
    ignoreip: list[Network] = Field(default_factory=list)
    # An IPv6 attacker holds a whole /64 (or more): failures count and bans fall
    # per this prefix, in every jail that does not set its own.
    ipv6_prefix: int = Field(64, ge=16, le=128)
    # Observe mode for every jail that does not set its own dry_run.
    dry_run: bool = False
    node_name: str | None = None
    sources: list[SourceEntry] = Field(default_factory=list)
    jails: list[JailConfig] = Field(default_factory=list)
    actions: dict[str, ActionEntry] = Field(default_factory=dict)
    metrics: MetricsConfig | None = None
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)  # type: ignore[arg-type]
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)  # type: ignore[arg-type]
    cluster: ClusterConfig | None = None
    # Key path -> line in the YAML this was parsed from (parse_config sets it).
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)
    _origin: str = PrivateAttr("<config>")

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [s.name for s in self.sources]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise _KeyProblem(("sources", i, "name"),
                                  f"source names must be unique; {n!r} is repeated")
        jnames = [j.name for j in self.jails]
        for i, n in enumerate(jnames):
            if n in jnames[:i]:
                raise _KeyProblem(("jails", i, "name"),
                                  f"jail names must be unique; {n!r} is repeated")
        for i, j in enumerate(self.jails):
            if j.source not in names:
                raise _KeyProblem(
                    ("jails", i, "source"),
                    f"jail {j.name!r} names source {j.source!r}, which is not defined "
                    f"(defined: {', '.join(names) or 'none'})"
                )
            for k, a in enumerate(j.actions):
                if a not in self.actions:
                    raise _KeyProblem(("jails", i, "actions", k),
                                      f"jail {j.name!r} names action {a!r}, which is not defined")
        return self

    def error_at(self, loc: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError naming file, line and key ``loc`` of the YAML this config was
        parsed from, for a problem found after parsing (a filter that is not there)."""
        key, line = _locate(loc, self._lines)
        return ConfigError(self._origin, (f"line {line}: {key}: {message}" if line
                                          else f"{key}: {message}",))


class _KeyProblem(ValueError):
    """A problem found across keys (a reference, a repeat): ``loc`` is the key to blame,
    which a model validator's own error location (the whole config) does not say."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class ConfigError(Exception):
    """A config problem, with enough context for an operator to fix it."""

    path: str
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {p}" for p in self.problems)


def _locate(loc: Sequence[Any], lines: dict[tuple[Any, ...], int]) -> tuple[str, int | None]:
    # Keep only the parts of loc present in the YAML.
    path: list[Any] = []
    line = lines.get(())
    for part in loc:
        candidate = (*path, part)
        if candidate in lines:
            path.append(part)
            line = lines[candidate]
    key = ""
    for p in path:
        key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
    # The last loc component may be a key that is not in the YAML (a missing
    # field); one with "[" is pydantic's name for a union member, not a key.
    last = loc[-1] if loc else None
    if last is not None and last not in path and isinstance(last, str) and "[" not in last:
        key += f".{last}" if key else str(last)
    return key or "(top level)", line


def _yaml_error(path: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(path, (f"{where}invalid YAML: {problem}",))


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate config ``text``; raise ConfigError naming file, line and key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if data is None:
        # An empty file (or comments only) is almost always a mistake — a
        # truncated write, a template not filled in — and would silently run
        # (or reload into) a daemon with no sources and no jails.
        raise ConfigError(path, (
            "the config is empty; write the keys you need (see "
            "kfwguard/default.yaml), or `{}` for every default",))
    if not isinstance(data, dict):
        raise ConfigError(path, ("line 1: the config must be a mapping of keys to values",))
    lines = key_lines(text)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            blame = (err.get("ctx") or {}).get("error")
            loc = (*err["loc"], *blame.loc) if isinstance(blame, _KeyProblem) else err["loc"]
            key, line = _locate(loc, lines)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{key}: {msg}")
        raise ConfigError(path, tuple(problems)) from None
    cfg._lines, cfg._origin = lines, path
    return cfg


def load_config(path: Path | str) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ("no such file",)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), (f"cannot read: {exc}",)) from None
    return parse_config(text, str(p))


def default_config_text() -> str:
    """The config shipped with the package, used when none exists on the node."""
    return resources.files("kfwguard").joinpath("default.yaml").read_text(encoding="utf-8")


def load_config_or_default(path: Path | str | None) -> tuple[Config, str]:
    """Load ``path``; if no path was given, ``$KFWGUARD_CONFIG``; if neither and the
    default file is missing, use the embedded default. A path that was named
    (``-c`` or ``$KFWGUARD_CONFIG``) and is missing is an error, never a silent
    fallback. Returns the config and where it came from."""
    if path is None:
        env = os.environ.get("KFWGUARD_CONFIG")
        if env:
            return load_config(env), env
        path = DEFAULT_CONFIG_PATH
        if not Path(path).exists():
            return parse_config(default_config_text(), "<embedded default>"), "<embedded default>"
    return load_config(path), str(path)
