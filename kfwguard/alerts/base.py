"""What every alert sender shares: the action config base and the registry of
alert kinds, the message formats, the URL secret and its redaction, and the
errors that decide retry or drop."""

from __future__ import annotations

import os
import string
from abc import abstractmethod
from collections.abc import Sequence
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml
from pydantic import model_validator

from kfwguard.alerts.events import AlertEvent
from kfwguard.configtypes import AbsolutePath, Duration, Model
from kfwguard.registry import Registry


class AlertError(Exception):
    """Delivery failed for now; the items are retried with backoff. The message is
    already redacted (it never carries the URL)."""


class PermanentAlertError(AlertError):
    """The receiver refused the message itself (e.g. HTTP 400): retrying the same
    payload cannot succeed, so the items are dropped and counted."""


class Sender(Protocol):
    """Delivers a batch of queued events to one receiver."""

    name: str
    # Events queued within this many seconds are sent together (0: as they come).
    aggregate: float

    async def send(self, events: Sequence[AlertEvent]) -> None: ...

    async def close(self) -> None: ...


class ActionConfig(Model):
    """What every alert kind's config has (an entry of ``actions:``). A kind
    subclasses it with ``type: Literal["its-tag"]`` and its own keys,
    implements ``build`` and registers with ``@SENDERS.register``
    (e.g. kfwguard/alerts/alertmanager.py)."""

    type: str

    @abstractmethod
    def build(self, name: str, node: str) -> Sender:
        """The sender for action ``name`` on node ``node``."""


SENDERS: Registry[ActionConfig] = Registry("action", ActionConfig, "kfwguard.alerts.kinds")


class URLActionConfig(ActionConfig):
    """An action that posts to a URL, which may carry a secret token: give it
    inline, from a file, or from an environment variable."""

    url: str | None = None
    url_file: AbsolutePath | None = None
    url_env: str | None = None
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_url(self) -> URLActionConfig:
        given = [x for x in (self.url, self.url_file, self.url_env) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of url, url_file, url_env")
        return self

    def secret_url(self) -> SecretURL:
        return SecretURL(self.url, self.url_file, self.url_env)


# -- message formats ---------------------------------------------------------------


def actions_dir() -> Traversable:
    """The shipped ``actions/`` folder: packaged as kfwguard.actions when installed,
    the repository's top-level folder when run from a checkout."""
    try:
        return resources.files("kfwguard.actions")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "actions"


def load_format(name: str) -> dict[str, Any]:
    """Read the shipped message format ``name`` (actions/NAME.yaml)."""
    text = actions_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"actions/{name}.yaml must be a mapping")
    return data


def render(template: str, **fields: object) -> str:
    """``${field}`` substitution. string.Template, not str.format: a template can
    reach no attribute or item of the values it is given."""
    return string.Template(template).safe_substitute({k: str(v) for k, v in fields.items()})


# -- the URL secret -------------------------------------------------------------------


class SecretURL:
    """A receiver URL from ``url``, ``url_file`` or ``url_env``. Chat webhook URLs
    carry their token in the path, so the value is read when needed (a rotated
    file or secret is picked up without a restart) and never printed."""

    def __init__(self, url: str | None, url_file: Path | None, url_env: str | None) -> None:
        self._url = url
        self._file = url_file
        self._env = url_env

    def __repr__(self) -> str:
        return "SecretURL(<redacted>)"

    def get(self) -> str:
        if self._url is not None:
            value = self._url
        elif self._file is not None:
            try:
                value = self._file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise AlertError(f"url_file {self._file} unreadable: {exc.strerror}") from None
        else:
            value = os.environ.get(self._env or "", "").strip()
            if not value:
                raise AlertError(f"environment variable {self._env} is not set")
        if not value.startswith(("http://", "https://")):
            raise PermanentAlertError("the URL must start with http:// or https://")
        return value


def redact(text: str, url: str) -> str:
    """Remove ``url`` and every part of it that may be a secret from ``text``.

    aiohttp and yarl put the request URL in exception messages; the path and
    the query (webhook tokens) must not reach logs, metrics or status."""
    parts = urlsplit(url)
    secrets = {url, url.rstrip("/")}
    if parts.path and parts.path != "/":
        secrets.add(parts.path)
        secrets.update(seg for seg in parts.path.split("/") if len(seg) >= 6)
    if parts.query:
        secrets.add(parts.query)
        secrets.update(v for _, v in parse_qsl(parts.query) if len(v) >= 4)
    if parts.password:
        secrets.add(parts.password)
    for s in list(secrets):
        secrets.update({quote(s, safe="/:"), unquote(s)})
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "<redacted>")
    return text


def describe_error(exc: BaseException, url: str) -> str:
    """A one-line, redacted description of a delivery error."""
    return redact(f"{type(exc).__name__}: {exc}", url)[:300]


# Receivers answer these when they are busy or briefly broken: try again later.
RETRY_STATUS = frozenset({408, 425, 429})


class JsonPoster:
    """One HTTP session that POSTs JSON to a secret URL and sorts the outcome into
    success, AlertError (retry) or PermanentAlertError (drop), never leaking the URL."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: Any = None

    async def post(self, url: str, body: object, secret: str) -> None:
        """POST ``body`` to ``url``; ``secret`` is what must be redacted from errors."""
        import aiohttp  # only senders need it; keeps it out of test-filter's start

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(url, json=body) as resp:
                status = resp.status
                text = (await resp.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AlertError(describe_error(exc, secret)) from None
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRY_STATUS:
            raise AlertError(f"HTTP {status}")
        raise PermanentAlertError(describe_error(
            PermanentAlertError(f"HTTP {status}: {text.strip()}"), secret))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
