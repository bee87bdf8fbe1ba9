"""Agent configuration: one dataclass, a docstring per field, safe defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AgentConfig"]


@dataclass(slots=True)
class AgentConfig:
    """Everything the agent can be told. Every limit has a safe default."""

    queues: int = 1
    """Number of transport queues (one xport link each). Connection ``c`` uses
    queue ``c % queues``; listen and other control messages use queue 0."""

    max_connections: int = 10_000
    """Live TCP connections (accepted and outbound) at most. A client accepted
    beyond this is closed at once and counted as ``too_many_connections``."""

    max_buffered_per_connection: int = 1 << 20
    """Bytes read from one client and not yet handed to the link (parsed
    messages waiting for credit plus the framer's partial message). Above it
    the agent stops reading that socket until credit drains it."""

    max_buffered_total: int = 64 << 20
    """The same, summed over every connection. Above it every connection that
    receives data is paused until the total falls below half of this."""

    max_message_size: int = 1 << 20
    """Largest ULP message accepted from a client or the host (wire bytes,
    header included). Passed to framers as their limit and announced in HELLO;
    a larger message closes its connection with the framer's error code."""

    initial_window_messages: int = 64
    """Per-connection window the agent grants the host (host→agent DATA):
    messages the host may send on a new connection before any CREDIT."""

    initial_window_bytes: int = 2 << 20
    """Per-connection window the agent grants the host, in payload bytes
    (announced in HELLO; at least ``max_message_size``, docs/protocol.md §5.1).
    It is also the bound on the write buffer toward each client: credit goes
    back to the host only as that buffer drains. The window the host grants
    the agent comes from the host's HELLO: nothing to configure here."""

    max_write_buffer: int = 4 << 20
    """Hard bound on one connection's TCP write buffer (encoded bytes). Only a
    host that ignores credits can reach it; the connection is then closed as
    ``write_buffer_overflow``."""

    keepalive_interval: float = 1.0
    """Seconds between KEEPALIVEs on an idle link (announced in HELLO)."""

    keepalive_timeout: float = 5.0
    """Seconds without anything from the host before its link is declared lost
    and every connection on it is reset with reason ``link_lost``."""

    use_uvloop: bool = True
    """Run the entry point's event loop on uvloop when it is installed (the
    standard asyncio loop otherwise)."""

    allow_non_loopback: bool = False
    """Allow LISTEN/CONNECT on addresses other than loopback. Off by default:
    the agent only terminates TCP on 127.0.0.0/8 and ::1 unless told."""

    tls_certfile: str | None = None
    """Default server certificate (PEM) for LISTEN requests that ask for TLS
    without naming one."""

    tls_keyfile: str | None = None
    """Default private key (PEM) going with ``tls_certfile``."""

    tls_handshake_timeout: float = 10.0
    """Seconds a TLS client has to finish its handshake."""

    close_linger: float = 10.0
    """Seconds a connection closed by the host may spend flushing its replies
    to a client that does not read them; then it is reset."""

    half_close_timeout: float = 30.0
    """Seconds a half-closed connection may wait on the host. After a client's
    FIN (plain TCP) the agent delivers what it sent, tells the host EOF and
    keeps writing the host's replies until the host closes; if the host sends
    nothing and does not close for this long (counted from the EOF or its
    latest reply, whichever is later), the agent closes the socket itself
    (FIN; reset if replies are still buffered), reports CLOSED
    ``half_close_timeout`` to the host, counts ``half_close_timeouts`` and
    logs it, so a host that forgets the connection never pins its socket."""

    credit_delay: float = 0.002
    """Seconds a CREDIT the host does not need yet may wait to ride a frame
    with other messages for the host (a client's next request, as a rule)
    instead of a frame, and a wake-up of the host, of its own. "Not yet": the
    host still holds at least one message and one largest message's bytes of
    credit on that connection, so it cannot be blocked meanwhile; any other
    grant goes at once (docs/protocol.md §5.2). 0: every grant at once."""

    buffer_stall_timeout: float = 2.0
    """Seconds the total of buffered client bytes may stay above
    ``max_buffered_total`` with every holder paused before the connection
    holding the most is closed as ``buffer_limit``."""

    tls_client_cafile: str | None = None
    """CA bundle to verify servers for CONNECT with TLS (None: system default)."""

    connect_timeout: float = 10.0
    """Seconds an outbound CONNECT may take before it fails."""

    read_chunk_limit: int = 256 << 10
    """Advisory: largest chunk one read hands the framer (asyncio's own read
    size is 256 KiB). Used to size how far past a limit buffering can go."""

    def __post_init__(self) -> None:
        if not 1 <= self.queues <= 64:
            raise ValueError(f"queues must be 1..64, got {self.queues}")
        for name in ("max_connections", "max_buffered_per_connection", "max_buffered_total",
                     "max_message_size", "initial_window_messages", "initial_window_bytes",
                     "max_write_buffer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_buffered_per_connection < self.max_message_size:
            raise ValueError("max_buffered_per_connection must be >= max_message_size")
        if self.initial_window_bytes < self.max_message_size:
            raise ValueError(
                f"initial_window_bytes ({self.initial_window_bytes}) must be >= "
                f"max_message_size ({self.max_message_size}): a largest message from the "
                "host could never fit the window (docs/protocol.md §5.1)")
        if self.initial_window_messages > 0xFFFFFFFF or self.initial_window_bytes > 0xFFFFFFFF:
            raise ValueError("the initial window must fit in u32 (HELLO)")
        if self.initial_window_bytes > self.max_write_buffer:
            raise ValueError("initial_window_bytes must not exceed max_write_buffer")
        if self.keepalive_interval <= 0 or self.keepalive_timeout <= self.keepalive_interval:
            raise ValueError("need 0 < keepalive_interval < keepalive_timeout")
        if self.half_close_timeout <= 0:
            raise ValueError("half_close_timeout must be positive")
        if self.credit_delay < 0:
            raise ValueError("credit_delay must be >= 0")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
