"""Apps for ``mux-rpc serve`` tests: every accepted shape."""

from __future__ import annotations

from mux_rpc._conn import ConnectionClosedError, MessageConnection


async def echo(conn: MessageConnection) -> None:
    """Per-connection async callable."""
    try:
        while (m := await conn.recv()) is not None:
            await conn.send(m.payload)
            conn.on_consumed(m.nbytes)
    except ConnectionClosedError:
        return
    await conn.close()


def make_echo():  # type: ignore[no-untyped-def]
    """A zero-argument factory."""
    return echo
