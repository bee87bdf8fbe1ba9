"""Orchestration: veth pair, XDP, a separate agent process, teardown."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime
from tests.conftest import afxdp_required
from xport import _protocol as P

MINI = [sys.executable, str(Path(__file__).with_name("_mini_agent.py"))]


async def _bring_up_and_echo(rt: OffloadRuntime) -> dict[str, object]:
    seen: dict[str, object] = {}
    async with rt:
        assert rt.host is not None and rt.host.agent_hello is not None
        seen["backend"] = rt.backend_name
        seen["veth"] = rt.veth
        if rt.veth is not None:
            seen["names"] = (rt.veth.agent.ifname, rt.veth.host.ifname, rt.veth.netns)
        lst = await rt.host.listen(0, "length")
        seen["port"] = lst.port
        # the mini agent echoes DATA for a connection id it never announced:
        # the host keeps it as early data, proving the round trip
        rt.host._send_ctl(0, P.Data(7, b"ping"))
        for _ in range(200):
            if 7 in rt.host._early:
                break
            await asyncio.sleep(0.01)
        seen["echo"] = [bytes(m.payload) for m in rt.host._early.get(7, [])]  # type: ignore[attr-defined]
        seen["agent_pid"] = rt.agent_proc.pid if rt.agent_proc else None
        seen["shm_base"] = rt._shm_base
        proc = rt.agent_proc
    seen["agent_rc"] = proc.poll() if proc else None
    return seen


@pytest.mark.afxdp
@pytest.mark.parametrize("netns", [False, True])
def test_afxdp_runtime_up_and_down(netns: bool) -> None:
    afxdp_required()
    from xport._topology import link_exists

    opts = OffloadOptions(queues=2, backend="afxdp", host_netns=netns, agent_command=MINI,
                          stats_socket=False)
    rt = OffloadRuntime(opts)
    rt.prepare_link()  # before the loop (netns configuration forks)
    seen = asyncio.run(_bring_up_and_echo(rt))
    assert seen["backend"] == "afxdp"
    assert seen["port"] == 40000
    assert seen["echo"] == [b"ping"]
    assert seen["agent_rc"] is not None  # the agent process is gone
    agent_if, host_if, ns = seen["names"]  # type: ignore[misc]
    assert not link_exists(agent_if) and not link_exists(host_if, ns)
    if ns:
        from pyroute2 import netns as pnetns

        assert ns not in pnetns.listnetns()


def test_shm_runtime_up_and_down() -> None:
    opts = OffloadOptions(queues=2, backend="shm", agent_command=MINI, stats_socket=False)
    seen = asyncio.run(_bring_up_and_echo(OffloadRuntime(opts)))
    assert seen["backend"] == "shm" and seen["echo"] == [b"ping"]
    assert seen["agent_rc"] is not None
    # this runtime's ring files only: another test run may have its own meanwhile
    assert seen["shm_base"] and not list(Path("/dev/shm").glob(f"muxshm-{seen['shm_base']}*"))


def test_agent_that_dies_fails_startup_fast() -> None:
    opts = OffloadOptions(queues=1, backend="shm", stats_socket=False,
                          agent_command=[sys.executable, "-c", "raise SystemExit(3)"])

    async def main() -> None:
        async with OffloadRuntime(opts):
            pass

    with pytest.raises(RuntimeError, match="exit code 3"):
        asyncio.run(asyncio.wait_for(main(), 15))
