"""Running one deferred (async) handler call to its reply bytes.

Shared by the offload-path server (``_server``) and the direct TCP baseline
(``_direct``) so that both apply deadlines and turn handler exceptions into
msgpack-rpc error replies the same way.
"""

from __future__ import annotations

import asyncio

from ._dispatch import Dispatcher, PendingCall

__all__ = ["finish_pending"]


async def finish_pending(
    dispatcher: Dispatcher, call: PendingCall, default_timeout: float | None
) -> tuple[bytes | None, bool]:
    """Await ``call`` under its deadline (the method's own, else ``default_timeout``).

    Returns the reply bytes (``None`` for a notification) and whether the
    handler failed (raised, or ran past its deadline).
    """
    timeout = call.spec.timeout if call.spec.timeout is not None else default_timeout
    try:
        if timeout is None:
            result = await call.coro
        else:
            async with asyncio.timeout(timeout):
                result = await call.coro
    except Exception as exc:  # noqa: BLE001 - becomes the error response
        return dispatcher.fail(call, exc), True
    return dispatcher.complete(call, result), False
