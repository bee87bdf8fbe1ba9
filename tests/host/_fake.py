"""A message-level in-memory port pair and a scripted fake agent for host tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from xport import _protocol as P


class MemoryPort:
    """One end of an in-memory, in-order, lossless message pipe (a LinkPort)."""

    link_managed = False

    def peer_hello(self) -> P.Hello | None:
        return None

    def tick(self, now: float) -> bool:
        return False

    def reset(self) -> None:
        pass

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[list[P.Message] | None] = asyncio.Queue()
        self.peer: MemoryPort | None = None
        self.closed = False

    async def send(self, msgs: Sequence[P.Message]) -> None:
        if self.closed:
            raise EOFError("port closed")
        assert self.peer is not None
        # round-trip through the wire encoding so that the host only ever sees
        # what the protocol can carry
        self.peer.inbox.put_nowait([P.decode(P.encode(m))[0] for m in msgs])

    async def recv(self) -> Sequence[P.Message]:
        item = await self.inbox.get()
        if item is None:
            raise EOFError("port closed")
        return item

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait(None)


def port_pair() -> tuple[MemoryPort, MemoryPort]:
    a, b = MemoryPort(), MemoryPort()
    a.peer, b.peer = b, a
    return a, b


class FakeAgent:
    """Speaks the agent's side of the protocol on a list of ports, under test control."""

    def __init__(self, ports: list[MemoryPort]) -> None:
        self.ports = ports
        self.received: list[tuple[int, P.Message]] = []
        self._cond = asyncio.Condition()
        self._tasks = [asyncio.get_running_loop().create_task(self._rx(q, p))
                       for q, p in enumerate(ports)]
        self.auto_listen_port = 40000
        self.refuse_listen = False

    async def _rx(self, q: int, port: MemoryPort) -> None:
        while True:
            try:
                msgs = await port.recv()
            except EOFError:
                return
            for m in msgs:
                self.received.append((q, m))
                if isinstance(m, P.Listen):
                    if self.refuse_listen:
                        await self.send(0, P.ListenResult(m.listener_id, P.Status.OS_ERROR, 0,
                                                          "address in use"))
                    else:
                        await self.send(0, P.ListenResult(
                            m.listener_id, P.Status.OK, m.port or self.auto_listen_port))
            async with self._cond:
                self._cond.notify_all()

    async def send(self, q: int, *msgs: P.Message) -> None:
        await self.ports[q].send(list(msgs))

    #: the fake agent's incarnation (docs/protocol.md §3.1); a restart changes it
    session = 0xA6E27
    #: the per-connection window the fake agent grants the host (its HELLO)
    window = (64, 2 << 20)

    async def hello(self) -> None:
        for q in range(len(self.ports)):
            await self.send(q, P.Hello(P.Role.AGENT, session=self.session,
                                       window_messages=self.window[0],
                                       window_bytes=self.window[1]))

    def of_type(self, t: type) -> list[P.Message]:
        return [m for _, m in self.received if isinstance(m, t)]

    async def wait_for(self, t: type, n: int = 1, timeout: float = 2.0) -> list[P.Message]:
        async def check() -> list[P.Message]:
            async with self._cond:
                await self._cond.wait_for(lambda: len(self.of_type(t)) >= n)
            return self.of_type(t)
        return await asyncio.wait_for(check(), timeout)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
