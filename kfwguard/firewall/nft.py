"""In-process libnftables: one nft transaction per call, no process per address.

libnftables parses a whole ruleset script and sends it to the kernel as one
netlink batch, so thousands of set elements cost one round trip (measured
~310k elements/s). We load it with ctypes so it works inside a virtualenv,
where Debian's python3-nftables binding is not importable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON
_OUTPUT_HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE


class NftError(Exception):
    """The kernel or the nft parser refused a command."""


class NftUnavailable(NftError):
    """libnftables is not installed on this host."""


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise NftUnavailable(
            "libnftables is missing: install the nftables package (apt-get install nftables)"
        ) from exc
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.restype = ctypes.c_int
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.restype = ctypes.c_int
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    _lib = lib
    return lib


class Nft:
    """One libnftables context. Calls are serialised; each call is one transaction."""

    def __init__(self) -> None:
        self._lib = _load()
        self._ctx = self._lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def run(self, script: str, *, json_output: bool = False, dry_run: bool = False,
            handles: bool = False) -> str:
        """Run an nft script atomically; return its output. Raises NftError."""
        with self._lock:
            flags = (_OUTPUT_JSON if json_output else 0) | (_OUTPUT_HANDLE if handles else 0)
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            self._lib.nft_ctx_set_dry_run(self._ctx, dry_run)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
                out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
                err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
            finally:
                self._lib.nft_ctx_set_dry_run(self._ctx, False)
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft failed (rc={rc})")
        return str(out.decode(errors="replace"))

    def check(self, script: str) -> None:
        """Validate a script against the kernel without applying it (``nft -c``)."""
        self.run(script, dry_run=True)

    def json(self, command: str) -> list[dict[str, Any]]:
        """Run a list command and return the ``nftables`` array of its JSON output."""
        out = self.run(command, json_output=True)
        if not out.strip():
            return []
        data = json.loads(out)
        items: list[dict[str, Any]] = data.get("nftables", [])
        return items

    def tables(self, family: str | None = None) -> list[tuple[str, str]]:
        """(family, name) of every table, from the text listing: nft 1.0.6's
        JSON listing of tables can print garbage or abort the process (see
        kfwguard.firewall.baseline.drift)."""
        out = self.run(f"list tables {family}" if family else "list tables")
        found = []
        for line in out.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "table":
                found.append((words[1], words[2]))
        return found

    def table_exists(self, family: str, table: str) -> bool:
        """True if the table exists. Lists table names only: ``list table``
        would make nft fetch every set element (seconds at 200k bans)."""
        return (family, table) in self.tables(family)
