"""Counters of a running process, served over a UNIX socket.

Protocol (deliberately trivial, so that any process can serve or read it
without importing mux_rpc): a client connects to the socket, the server
writes one JSON object (UTF-8, newline-terminated) and closes.

Where: ``$MUX_RPC_STATS_DIR`` if set, else ``/run/mux-rpc`` when it is writable
(root), else ``/tmp/mux-rpc-<uid>``. One socket per process, named
``<role>-<pid>.sock`` (``host-1234.sock``, ``agent-1240.sock``).
``mux-rpc stats`` reads every socket in that directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["StatsServer", "read_stats", "stats_dir", "stats_socket_path"]


def stats_dir() -> Path:
    """The directory holding the stats sockets (see module docstring)."""
    env = os.environ.get("MUX_RPC_STATS_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/mux-rpc")
    return Path(f"/tmp/mux-rpc-{os.geteuid()}")


def stats_socket_path(role: str, pid: int | None = None) -> Path:
    return stats_dir() / f"{role}-{pid if pid is not None else os.getpid()}.sock"


class StatsServer:
    """Serves ``snapshot()`` as JSON on a UNIX socket until closed."""

    def __init__(self, role: str, snapshot: Callable[[], dict[str, object]],
                 path: Path | None = None) -> None:
        self.path = path or stats_socket_path(role)
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self._snapshot(), default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the reader went away: nothing to report to
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def read_stats(path: Path, timeout: float = 2.0) -> dict[str, object]:
    """Read one snapshot from a stats socket (blocking, bounded by ``timeout``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        total = 0
        while total < (16 << 20):
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            total += len(b)
    obj = json.loads(b"".join(chunks))
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj
