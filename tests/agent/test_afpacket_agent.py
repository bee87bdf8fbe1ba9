"""The agent process on the AF_PACKET backend (the comparison baseline) with
the host runtime on AF_PACKET at the other end of a veth pair."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import afxdp_required

from mux_rpc._workers import _die_with_parent as die_with_parent

pytestmark = pytest.mark.afxdp  # root and a veth pair, like the AF_XDP tests

REPO = Path(__file__).resolve().parents[2]


def test_agent_over_afpacket() -> None:
    afxdp_required()
    from xport._afpacket import AfPacketBackend
    from xport._topology import VethPair

    with VethPair(queues=1) as veth:
        backend = AfPacketBackend.open(veth.host.ifname)
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--ifname", veth.agent.ifname, "--backend",
             "afpacket", "--no-stats-socket"], cwd=REPO, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)  # noqa: PLW1509 - no agent outlives a killed pytest
        try:
            asyncio.run(asyncio.wait_for(_echo(backend), 30))
            agent.terminate()
            assert agent.wait(10) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(5)
            backend.close()


async def _echo(backend: Any) -> None:
    from mux_rpc._linkport import link_port
    from mux_rpc._offload import Host

    host = Host([link_port(backend)])
    await host.start()
    lst = await host.listen(0, "length", auto_consume=True)

    async def serve() -> None:
        conn = await lst.accept()
        with contextlib.suppress(Exception):
            while (m := await conn.recv()) is not None:
                await conn.send(m.payload)
    srv = asyncio.ensure_future(serve())
    r, w = await asyncio.open_connection("127.0.0.1", lst.port)
    w.write(b"".join(struct.pack("!I", 4) + i.to_bytes(4, "big") for i in range(200)))
    for i in range(200):
        assert await r.readexactly(8) == struct.pack("!I", 4) + i.to_bytes(4, "big")
    w.close()
    srv.cancel()
    await host.close()
