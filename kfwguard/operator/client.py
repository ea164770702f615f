"""The control API's client (the CLI's side): aiohttp's, imported when it is called."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote


class ControlError(Exception):
    """The daemon answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DaemonNotRunning(ControlError):
    """Nothing answers on the control socket."""


class ControlClient:
    """Talks to a running daemon over its control socket."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    async def call(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        import aiohttp  # the client side only: the daemon never loads it for this

        conn = aiohttp.UnixConnector(path=str(self.path))
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session, \
                    session.request(method, f"http://kfwguard{url}", json=body) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if resp.status >= 400:
                    msg = data.get("error") if isinstance(data, dict) else None
                    raise ControlError(msg or f"HTTP {resp.status}", resp.status)
                return data
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error
            if isinstance(err, PermissionError):
                raise ControlError(f"permission denied on {self.path}: "
                                   "the control socket answers root only") from None
            if isinstance(err, FileNotFoundError | ConnectionRefusedError):
                raise DaemonNotRunning(f"kfwguard is not running (nothing answers on "
                                       f"{self.path})") from None
            raise ControlError(f"cannot reach kfwguard on {self.path}: {err}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlError(f"kfwguard on {self.path} did not answer: "
                               f"{type(exc).__name__} {exc}") from None

    async def ban(self, target: str, jail: str | None = None, duration: float | None = None,
                  reason: str | None = None, force: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"target": target}
        if force:
            body["force"] = True
        if jail:
            body["jail"] = jail
        if duration is not None:
            body["duration"] = duration
        if reason:
            body["reason"] = reason
        out: dict[str, Any] = await self.call("POST", "/bans", body)
        return out

    async def unban(self, target: str, jail: str | None = None) -> dict[str, Any]:
        url = "/bans/" + quote(target, safe="")
        if jail:
            url += "?jail=" + quote(jail, safe="")
        out: dict[str, Any] = await self.call("DELETE", url)
        return out

    async def bans(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.call("GET", "/bans")
        return out

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.call("GET", "/status")
        return out

    async def reload(self) -> dict[str, Any]:
        out: dict[str, Any] = await self.call("POST", "/reload")
        return out
