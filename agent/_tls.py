"""TLS termination with the standard library's ``ssl``: clients speak TLS to
the agent, the host only ever sees the plaintext messages."""

from __future__ import annotations

import ipaddress
import ssl

__all__ = ["client_context", "is_loopback", "server_context"]


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server-side context (TLS 1.2+) loading ``certfile``/``keyfile``.

    Raises ``ssl.SSLError`` or ``OSError`` when they cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_context(cafile: str | None) -> ssl.SSLContext:
    """A verifying client context (CONNECT with TLS)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def is_loopback(host: str) -> bool:
    """``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
