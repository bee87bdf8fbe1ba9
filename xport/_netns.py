"""Run a function inside another network namespace without moving the process.

setns(2) moves only the calling thread, and a thread that entered a namespace
stays there: so the function runs on a throwaway thread that enters the
namespace first, and the caller's threads stay where they were. Sockets
created there keep their namespace for life and can be used from any thread.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

__all__ = ["run_in_netns"]

_T = TypeVar("_T")


def run_in_netns(ns: str | int | None, fn: Callable[[], _T]) -> _T:
    """``fn()`` run in namespace ``ns`` (a name, an open namespace fd, or None: here).

    A named namespace must exist (it is never created). Exceptions from
    entering the namespace or from ``fn`` are raised in the caller.
    """
    if ns is None:
        return fn()
    from pyroute2 import netns

    out: list[_T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(ns, flags=0)
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller below
            err.append(exc)

    t = threading.Thread(target=run, name=f"netns-{ns}")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
