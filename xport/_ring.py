"""Single-producer/single-consumer ring index arithmetic, as in libxdp's ``xsk.h``.

Theory of operation
-------------------
A ring of ``size`` slots (a power of two) has two free-running u32 indices in
shared memory: ``producer`` (written only by the producer) and ``consumer``
(written only by the consumer). They are never reduced modulo ``size``; a
slot is ``index & (size - 1)`` and every difference is taken modulo 2**32, so
the indices wrap at 2**32 without a special case:

* entries ready for the consumer: ``(producer - consumer) mod 2**32``
* free slots for the producer:    ``size - (producer - consumer) mod 2**32``

Each side also keeps *cached* copies of both indices in private memory, and
reloads the other side's index only when its cached view cannot satisfy a
request (``xsk_prod_nb_free`` / ``xsk_cons_nb_avail``). Like xsk.h the
producer caches ``consumer + size`` so that free slots are one subtraction.

``reserve`` is all-or-nothing, like ``xsk_ring_prod__reserve``: it returns
``n`` or ``0``, never a partial reservation — ask for :meth:`ProducerRing.free`
first. ``peek`` on the consumer side returns up to ``n`` (a partial count is
normal). ``submit`` / ``release`` publish the private index to the shared one.

This module is pure arithmetic over two callables (``load``/``store`` of the
peer's and one's own shared index); it does not know where the indices live.
The shared-memory backend (:mod:`xport._shm`) puts them in an mmap, and the
same reasoning applies to the AF_XDP fill/RX/TX/completion rings.

:class:`ReleaseTracker` turns out-of-order releases of zero-copy views into the
in-order consumer advances a ring requires.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "U32_MASK",
    "ConsumerRing",
    "ProducerRing",
    "ReleaseTracker",
    "check_ring_size",
    "ring_free",
    "ring_used",
    "u32_add",
]

U32_MASK = 0xFFFF_FFFF


def u32_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**32."""
    return (a + b) & U32_MASK


def ring_used(producer: int, consumer: int) -> int:
    """Entries produced and not yet consumed, with u32 wraparound."""
    return (producer - consumer) & U32_MASK


def ring_free(producer: int, consumer: int, size: int) -> int:
    """Slots the producer may still fill."""
    return size - ring_used(producer, consumer)


def check_ring_size(size: int) -> int:
    """Validate a ring size (a power of two, 1..2**31); returns it."""
    if not isinstance(size, int) or size < 1 or size > 1 << 31 or size & (size - 1):
        raise ValueError(f"ring size must be a power of two in 1..2**31, got {size!r}")
    return size


class ProducerRing:
    """The producer's side: cached indices, all-or-nothing reserve, submit.

    ``load_consumer()`` reads the shared consumer index (the peer's);
    ``store_producer(v)`` publishes our producer index. The caller fills slots
    ``[idx, idx + n)`` (masked) between :meth:`reserve` and :meth:`submit`.
    """

    __slots__ = ("_load_cons", "_store_prod", "cached_cons", "cached_prod", "mask", "size")

    def __init__(self, size: int, producer: int, consumer: int,
                 load_consumer: Callable[[], int], store_producer: Callable[[int], None]) -> None:
        self.size = check_ring_size(size)
        self.mask = size - 1
        self.cached_prod = producer & U32_MASK
        # xsk.h keeps cached_cons = consumer + size so free = cached_cons - cached_prod
        self.cached_cons = u32_add(consumer, size)
        self._load_cons = load_consumer
        self._store_prod = store_producer

    def free(self, wanted: int = 1) -> int:
        """Free slots; reloads the consumer index only when fewer than ``wanted`` are cached."""
        free = (self.cached_cons - self.cached_prod) & U32_MASK
        if free >= wanted:
            return free
        self.cached_cons = u32_add(self._load_cons(), self.size)
        return (self.cached_cons - self.cached_prod) & U32_MASK

    def reserve(self, n: int) -> tuple[int, int]:
        """Reserve ``n`` slots: ``(n, first_index)`` or ``(0, 0)`` if fewer are free."""
        if n <= 0 or self.free(n) < n:
            return 0, 0
        idx = self.cached_prod
        self.cached_prod = u32_add(idx, n)
        return n, idx

    def submit(self) -> int:
        """Publish every reserved slot; returns the new producer index."""
        self._store_prod(self.cached_prod)
        return self.cached_prod

    def in_flight(self) -> int:
        """Entries submitted and not yet consumed (reloads the consumer index)."""
        return ring_used(self.cached_prod, self._load_cons())


class ConsumerRing:
    """The consumer's side: cached indices, peek up to ``n``, release in order."""

    __slots__ = (
        "_load_prod",
        "_store_cons",
        "cached_cons",
        "cached_prod",
        "mask",
        "released",
        "size",
    )

    def __init__(self, size: int, producer: int, consumer: int,
                 load_producer: Callable[[], int], store_consumer: Callable[[int], None]) -> None:
        self.size = check_ring_size(size)
        self.mask = size - 1
        self.cached_prod = producer & U32_MASK
        self.cached_cons = consumer & U32_MASK
        #: the consumer index last published (entries up to here are free for the producer)
        self.released = consumer & U32_MASK
        self._load_prod = load_producer
        self._store_cons = store_consumer

    def available(self, wanted: int = 1) -> int:
        """Entries ready, capped at ``wanted``.

        Reloads the producer index when fewer than ``wanted`` are cached (xsk.h
        reloads only at zero; a reload here is one load, and fuller batches
        are what matter in Python).
        """
        entries = (self.cached_prod - self.cached_cons) & U32_MASK
        if entries < wanted:
            self.cached_prod = self._load_prod() & U32_MASK
            entries = (self.cached_prod - self.cached_cons) & U32_MASK
            if entries > self.size:
                raise RuntimeError(f"ring corrupt: {entries} entries in a ring of {self.size}")
        return min(entries, wanted)

    def peek(self, n: int) -> tuple[int, int]:
        """Take up to ``n`` entries: ``(count, first_index)``; ``(0, 0)`` when empty."""
        if n <= 0:
            return 0, 0
        count = self.available(n)
        if count == 0:
            return 0, 0
        idx = self.cached_cons
        self.cached_cons = u32_add(idx, count)
        return count, idx

    def release(self, n: int) -> int:
        """Give ``n`` peeked entries back to the producer (in order); returns the new index."""
        pending = (self.cached_cons - self.released) & U32_MASK
        if n < 0 or n > pending:
            raise ValueError(f"release({n}) with only {pending} entries peeked")
        self.released = u32_add(self.released, n)
        self._store_cons(self.released)
        return self.released


class ReleaseTracker:
    """Turns out-of-order releases of ring slots into in-order advances.

    Slots are handed out in ring order by sequence number (a u32 index).
    :meth:`release` marks one slot done and returns how many slots the ring
    head can now move forward (the contiguous released prefix), so an early
    view held by the application keeps later ones from being reused.
    """

    __slots__ = ("_done", "head")

    def __init__(self, head: int = 0) -> None:
        self.head = head & U32_MASK
        self._done: set[int] = set()

    def release(self, seq: int) -> int:
        seq &= U32_MASK
        if seq != self.head:
            self._done.add(seq)
            return 0
        advanced = 1
        self.head = u32_add(self.head, 1)
        while self._done:
            try:
                self._done.remove(self.head)
            except KeyError:
                break
            self.head = u32_add(self.head, 1)
            advanced += 1
        return advanced

    @property
    def outstanding_out_of_order(self) -> int:
        return len(self._done)
