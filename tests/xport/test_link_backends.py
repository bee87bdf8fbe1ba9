"""The link over real backends that need no privileges (shared-memory rings)."""

from __future__ import annotations

import os
import tempfile


from xport._link import Link, LinkConfig
from xport._protocol import Data, Role


def test_link_over_shm_backend() -> None:
    from xport import _shm as shm
    with tempfile.TemporaryDirectory() as d:
        name = f"linktest{os.getpid()}"
        a_be = shm.ShmBackend.create(name, slots=8, frame_size=2048, directory=d)
        b_be = shm.ShmBackend.attach(name, directory=d)
        try:
            a = Link(a_be, LinkConfig(role=Role.AGENT))
            b = Link(b_be, LinkConfig(role=Role.HOST))
            sent = [Data(i % 3, bytes([i % 256]) * (i * 37 % 5000)) for i in range(300)]
            for m in sent:
                a.send(m)
            got = []
            for _ in range(20_000):
                moved = a.flush() + b.flush()
                got += b.poll()
                a.poll()
                if not moved and not a.queued_messages and len(got) == len(sent):
                    break
            assert got == sent
            assert b.peer_hello is not None
            assert a.statistics().dropped == {} and b.statistics().dropped == {}
        finally:
            a_be.close()
            b_be.close()
