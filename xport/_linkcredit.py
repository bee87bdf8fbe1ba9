"""Link-level credits: never more frames in flight than the peer has receive buffers.

Theory of operation
-------------------
(DESIGN.md "Flow control: two levels" §1; docs/protocol.md §4.)  Each end
counts, cumulatively and wrapping at 2**32 on the wire:

* ``P``: receive buffers it has posted (``backend.rx_buffers_posted()``);
* ``A``: credit-only frames it has received *and released* (``credit_ack``).

Every frame header carries the sender's current ``(P, A)``. A sender keeps
``data_sent`` and ``co_sent`` (data and credit-only frames it has sent) and
the newest ``(P, A)`` from the peer. With a fixed ``reserve`` ``K ≥ 1``:

* a **data frame** may be sent when ``data_sent + 1 ≤ (P − A) − K``;
* a **credit-only frame** may be sent when ``co_sent − A < K``.

So data frames never use the last ``K`` advertised buffers, which are
reserved for credit-only frames, and a credit-only frame's buffer comes back
to the reserve once the peer acknowledges it (in ``A``).

Safety: never more frames in flight than posted buffers. The peer's free
buffers are at least ``P − S`` with ``S = data_sent + co_sent`` frames sent.
A receiver releases a credit-only frame (reposting its buffer, ``P += 1``)
before counting it in ``A``, so ``P − A`` never decreases across headers
(:meth:`LinkCredit.advertise` also clamps ``A`` to keep it so when a backend
reposts late). Hence, with the newest header, ``data_sent ≤ (P − A) − K``
and ``co_sent − A ≤ K``, and so
``S = data_sent + A + (co_sent − A) ≤ (P − A) − K + A + K = P``.

When to send a credit-only frame (no data to carry the credit). Let
``D = P − A`` now and ``D_adv`` the value last advertised; ``D − D_adv`` is
credit the peer does not know about. A credit-only frame is sent when
``D − D_adv ≥ 1``, the credit-only budget allows, and either

1. ``D − D_adv ≥ update_threshold`` (keep a streaming peer's pipeline full), or
2. the peer may be blocked: the data credit it has, as far as we can tell,
   ``D_adv − K − data_rx`` (``data_rx`` = data frames received), is ``< 1``.

Boundedness (no credit-only ping-pong). Receiving a credit-only frame moves
``P`` and ``A`` together, so it never increases ``D``: credit-only frames
never cause credit-only frames. Each one we send needs ``D`` to have grown
by ≥ 1 since the last advertisement, which only released *data* frames (or
freshly posted buffers) do. Hence credit-only frames sent ≤ data frames
received + buffers posted beyond the initial ring.

Liveness (no deadlock while data waits). Assume a ring of ``N ≥ K + 1``
buffers, both ends using the same ``K``, and received frames eventually
released. Suppose B has data and stays blocked, and consider the state once
every frame in flight has been delivered.
(a) A's credit-only budget is full: every credit-only frame strictly raises
``D_adv`` above any value B had used (B's data frames are bounded by what B
knew, minus ``K``), so B had ≥ 1 data credit right after receiving each one;
being blocked now, B sent a data frame after the last one arrived, and that
frame's ``credit_ack`` acknowledges them all.
(b) Clause 2 holds at A: B is blocked, so ``D_adv − K − data_sent_B < 1``,
and ``data_rx`` has caught up with ``data_sent_B``.
(c) ``D`` at A exceeds ``D_adv``: with every frame released,
``D = N + data_rx ≥ D_adv − K + N ≥ D_adv + 1``.
So A sends a credit-only frame, contradicting "stays blocked". The
hypothesis model test in tests/xport/test_linkcredit.py checks safety,
order, liveness and quiescence under random scheduling, including wrapping
counters and receivers that hold buffers.

Bootstrap. Before the first header from the peer arrives a sender assumes
``initial_peer_credit`` posted buffers (must be ``≥ K + 1`` so the first data
frame, normally HELLO, can leave, and must not exceed what any peer posts at
open).

Both ends must use the same ``reserve`` (it is part of the link
configuration). Counters are Python ints locally; wire values are unwrapped
against the last value seen, accepting forward steps below 2**31.

Public API
----------
``LinkCredit(reserve=2, initial_peer_credit=4, update_threshold=16, counter_base=0)``:
``data_credit()``, ``co_credit()``, ``next_seq``, ``on_data_sent(n)``,
``on_credit_only_sent()``, ``advertise(posted) -> (credit, credit_ack)``,
``on_frame(seq, credit, credit_ack, credit_only) -> str | None``,
``on_credit_only_released()``, ``want_credit_only(posted) -> bool``,
``peer_may_be_blocked()``.
"""

from __future__ import annotations

__all__ = ["LinkCredit", "unwrap_u32"]

_MASK = 0xFFFFFFFF
_HALF = 1 << 31


def unwrap_u32(last: int, wire: int) -> int:
    """The unbounded counter whose low 32 bits are ``wire``, nearest after ``last``.

    A step of 2**31 or more is read as a step backwards (returned value < last).
    """
    delta = (wire - last) & _MASK
    if delta >= _HALF:
        return last + delta - (1 << 32)
    return last + delta


class LinkCredit:
    """Link-credit state of one link end (pure: no I/O, no clock).

    All counters are unbounded ints sharing one origin (``counter_base``,
    0 on a real link; tests start near 2**32 to exercise wrapping); only
    differences between them are used, and only their low 32 bits travel.
    """

    __slots__ = (
        "adv_ack",
        "adv_posted",
        "co_recv",
        "co_rx",
        "co_sent",
        "frames_rx",
        "peer_ack",
        "peer_posted",
        "reserve",
        "sent",
        "update_threshold",
    )

    def __init__(
        self,
        *,
        reserve: int = 2,
        initial_peer_credit: int = 4,
        update_threshold: int = 16,
        counter_base: int = 0,
    ) -> None:
        if reserve < 1:
            raise ValueError("reserve must be >= 1")
        if initial_peer_credit < reserve + 1:
            raise ValueError("initial_peer_credit must be >= reserve + 1")
        if update_threshold < 1:
            raise ValueError("update_threshold must be >= 1")
        b = counter_base
        #: buffers kept for credit-only frames (K); the same at both ends
        self.reserve = reserve
        #: un-advertised credit worth a credit-only frame even if the peer is not blocked
        self.update_threshold = update_threshold
        #: frames sent (S), data and credit-only
        self.sent = b
        #: credit-only frames sent
        self.co_sent = b
        #: newest peer P; before any header, the assumed initial credit
        self.peer_posted = b + initial_peer_credit
        #: newest peer A
        self.peer_ack = b
        #: frames received
        self.frames_rx = b
        #: credit-only frames received
        self.co_recv = b
        #: credit-only frames received and released
        self.co_rx = b
        #: (P, A) last advertised; the peer starts by assuming initial_peer_credit
        self.adv_posted = b + initial_peer_credit
        self.adv_ack = b

    # -- sending -----------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """Sequence number of the next frame (wrapped to u32)."""
        return self.sent & _MASK

    def data_credit(self) -> int:
        """How many data frames may be sent now (§4.2).

        ``(P − A) − K − data_sent`` written with base-free differences:
        ``(P − S) − K + (co_sent − A)``.
        """
        return (self.peer_posted - self.sent) - self.reserve + (self.co_sent - self.peer_ack)

    def co_credit(self) -> int:
        """How many credit-only frames may be sent now (§4.2)."""
        return self.reserve - (self.co_sent - self.peer_ack)

    def on_data_sent(self, n: int = 1) -> None:
        if n > self.data_credit():
            raise ValueError("data frames sent beyond link credit")
        self.sent += n

    def on_credit_only_sent(self) -> None:
        if self.co_credit() < 1:
            raise ValueError("credit-only frame sent beyond the reserve")
        self.sent += 1
        self.co_sent += 1

    def _local(self, posted: int) -> tuple[int, int]:
        p = unwrap_u32(self.adv_posted, posted & _MASK)
        # a backend never un-posts; below the assumed initial credit is a
        # configuration error (initial_peer_credit too large): never advertise less
        p = max(p, self.adv_posted)
        # §4.1: clamp A so that P − A never decreases
        a = min(self.co_rx, p - (self.adv_posted - self.adv_ack))
        return p, a

    def advertise(self, posted: int) -> tuple[int, int]:
        """``(credit, credit_ack)`` for the header of a frame built now (wrapped).

        ``posted`` is ``backend.rx_buffers_posted()`` (cumulative, may wrap).
        """
        # _local(posted) with unwrap_u32 inline (once per flush)
        last = self.adv_posted
        delta = (posted - last) & _MASK
        if delta >= _HALF:
            p = last  # a step back: never advertise less (see _local)
        else:
            p = last + delta
        # §4.1: clamp A so that P − A never decreases
        a = min(self.co_rx, p - (last - self.adv_ack))
        self.adv_posted, self.adv_ack = p, a
        return p & _MASK, a & _MASK

    # -- receiving ---------------------------------------------------------
    def on_frame(self, seq: int, credit: int, credit_ack: int, credit_only: bool) -> str | None:
        """Account a received, well-formed frame header.

        Returns None, or a drop-counter name for an anomaly that was
        accounted anyway (``seq_gap``: frames were lost or reordered below
        us; ``credit_regress``: the peer's (P, A) went backwards and was ignored).
        """
        anomaly = None
        if seq != self.frames_rx & _MASK:
            # §4.3: a gap means the lossless property failed somewhere below us
            anomaly = "seq_gap"
            self.frames_rx = unwrap_u32(self.frames_rx, seq)
        self.frames_rx += 1
        if credit_only:
            self.co_recv += 1
        # unwrap_u32(self.peer_posted, credit) and unwrap_u32(self.peer_ack,
        # credit_ack), inline (once per received frame)
        last = self.peer_posted
        delta = (credit - last) & _MASK
        p = last + delta - (1 << 32 if delta >= _HALF else 0)
        last = self.peer_ack
        delta = (credit_ack - last) & _MASK
        a = last + delta - (1 << 32 if delta >= _HALF else 0)
        # §4.1: P, A and P − A never decrease
        if p < self.peer_posted or a < self.peer_ack or p - a < self.peer_posted - self.peer_ack:
            return anomaly or "credit_regress"
        self.peer_posted, self.peer_ack = p, a
        return anomaly

    def on_credit_only_released(self) -> None:
        """A received credit-only frame's buffer went back to the backend."""
        self.co_rx += 1

    def peer_may_be_blocked(self) -> bool:
        """§4.4 clause 2: the peer's data credit, as far as we know, is < 1."""
        data_rx = self.frames_rx - self.co_recv
        return (self.adv_posted - self.adv_ack) - self.reserve - data_rx < 1

    def want_credit_only(self, posted: int) -> bool:
        """§4.4: should a standalone credit-only frame be sent now?"""
        if self.co_credit() < 1:
            return False
        if posted & _MASK == self.adv_posted & _MASK:
            # nothing posted since the last advertisement (often: a data frame
            # of this flush carried it): P is unchanged, and A only grows from
            # what was advertised (co_rx >= adv_ack), so P − A cannot have
            # grown: what _local would give, without computing it
            return False
        p, a = self._local(posted)
        new = (p - a) - (self.adv_posted - self.adv_ack)
        if new < 1:
            return False
        return new >= self.update_threshold or self.peer_may_be_blocked()
