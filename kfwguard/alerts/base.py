"""What every alert sender shares: the queued event, the message formats, the
URL secret and its redaction, and the errors that decide retry or drop."""

from __future__ import annotations

import os
import string
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml

from kfwguard.store import BanRow

Event = dict[str, Any]


class AlertError(Exception):
    """Delivery failed for now; the items are retried with backoff. The message is
    already redacted (it never carries the URL)."""


class PermanentAlertError(AlertError):
    """The receiver refused the message itself (e.g. HTTP 400): retrying the same
    payload cannot succeed, so the items are dropped and counted."""


class Sender(Protocol):
    """Delivers a batch of queued events to one receiver."""

    name: str

    async def send(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...


def ban_event(kind: str, row: BanRow, node: str, at: float | None = None) -> Event:
    """The queued form of a ban (``kind`` "ban") or an early unban ("unban")."""
    return {
        "event": kind,
        "target": row.target,
        "jail": row.jail,
        "reason": row.reason,
        "banned_at": row.banned_at,
        "expires_at": row.expires_at,
        "offence": row.offence,
        "node": node,
        "at": time.time() if at is None else at,
        # Observe mode (dry_run): decided, not enforced; receivers show it apart.
        "simulated": row.simulated,
    }


# A drift alert stays firing this long in Alertmanager: the daemon heals drift
# at once, so there is no later "resolved" moment to wait for.
DRIFT_ALERT_SECONDS = 15 * 60.0


def drift_event(table: str, reason: str, node: str, at: float) -> Event:
    """The queued form of a healed baseline drift (sent to every action)."""
    return {
        "event": "drift",
        "target": table,
        "jail": "baseline",
        "reason": reason,
        "banned_at": at,
        "expires_at": at + DRIFT_ALERT_SECONDS,
        "offence": 1,
        "node": node,
        "at": at,
    }


# Cluster mode's baseline alert (kfwguard/cluster/service.py _check_baselines):
# a node whose baseline is not the cluster's. Event "baseline_differs" fires
# (Alertmanager: until CLUSTER_ALERT_SECONDS later unless raised again),
# "baseline_agrees" resolves it; ``target`` is the node the alert is about.
CLUSTER_ALERT_SECONDS = 24 * 3600.0


def cluster_baseline_event(subject: str, firing: bool, reason: str, node: str,
                           at: float) -> Event:
    return {
        "event": "baseline_differs" if firing else "baseline_agrees",
        "target": subject,
        "jail": "cluster",
        "reason": reason,
        "banned_at": at,
        "expires_at": at + CLUSTER_ALERT_SECONDS if firing else at,
        "offence": 1,
        "node": node,
        "at": at,
    }


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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
