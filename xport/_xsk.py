"""Thin wrappers over the compiled ``xport._xsk_cffi`` module.

Nothing here has state: it re-exports ``ffi``/``lib`` and turns the C
conventions (``-errno`` return codes, ``NULL`` pointers with ``errno`` set,
libbpf's ``libbpf_get_error``) into :class:`OSError` with the errno, the
operation and, for libbpf calls, the last messages libbpf printed.
The typed objects live in :mod:`xport._umem`, :mod:`xport._bpfload` and
:mod:`xport._afxdp`.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from xport._xsk_cffi import ffi, lib

__all__ = ["check", "check_ptr", "ffi", "lib", "libbpf_log", "oserror"]

# libbpf prints to stderr by default; keep its messages for error reports.
lib.mux_libbpf_capture()


def libbpf_log() -> str:
    """The libbpf messages printed since the last call (warnings and errors)."""
    raw: bytes = ffi.string(lib.mux_libbpf_last_log())
    return raw.decode("utf-8", "replace").strip()


def oserror(err: int, what: str, detail: str = "") -> OSError:
    """An OSError for a positive errno, naming the operation."""
    msg = f"{what}: {os.strerror(err)}"
    if detail:
        msg += f" ({detail})"
    return OSError(err, msg)


def check(rc: int, what: str, *, with_log: bool = False) -> int:
    """Return ``rc`` when it is >= 0, else raise OSError(-rc)."""
    if rc >= 0:
        return rc
    detail = libbpf_log() if with_log else ""
    raise oserror(-rc, what, detail)


def check_ptr(ptr: Any, what: str, *, with_log: bool = False) -> Any:
    """Return ``ptr`` unless it is NULL or a libbpf error pointer, else raise OSError."""
    if ptr == ffi.NULL:
        err = ffi.errno or _errno.EINVAL
    else:
        err = -lib.libbpf_get_error(ptr)
        if err == 0:
            return ptr
    detail = libbpf_log() if with_log else ""
    raise oserror(err, what, detail)
