"""Restarts over REAL AF_XDP: the host restarting and the agent restarting
(a separate ``python -m agent`` process killed and started again), clients
reset with a clear reason, nothing hangs, nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import frame, run
from conftest import afxdp_required

from mux_rpc._stats import read_stats
from mux_rpc._workers import _die_with_parent as die_with_parent

pytestmark = pytest.mark.afxdp

REPO = Path(__file__).resolve().parents[2]
KA, KA_TIMEOUT = 0.5, 2.0


class Topo:
    """veth pair, XDP + AF_XDP on the host end, the agent as a child process."""

    def __init__(self, queues: int, stats_dir: Path) -> None:
        from xport._afxdp import AfXdpBackend
        from xport._bpfload import XdpProgram
        from xport._topology import VethPair

        self.queues = queues
        self.stats_dir = stats_dir
        self.veth = VethPair(queues=queues).create()
        self.agent: subprocess.Popen[bytes] | None = None
        self.program: Any = None
        self.backends: list[Any] = []
        try:
            self.program = XdpProgram()
            self.program.attach(self.veth.host.ifname, "native")
            for q in range(queues):
                self.backends.append(_retry(lambda q=q: AfXdpBackend.open(
                    self.veth.host.ifname, q, bpf=self.program)))
        except BaseException:
            self.close()
            raise

    def spawn_agent(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, MUX_RPC_STATS_DIR=str(self.stats_dir),
                   PYTHONPATH=str(REPO))
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--ifname", self.veth.agent.ifname,
             "--queues", str(self.queues), "--backend", "afxdp", "--keepalive", str(KA),
             "--keepalive-timeout", str(KA_TIMEOUT)], env=env, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)  # noqa: PLW1509 - no agent outlives a killed pytest
        return self.agent

    def agent_stats(self) -> dict[str, Any]:
        assert self.agent is not None
        path = self.stats_dir / f"agent-{self.agent.pid}.sock"
        for _ in range(100):
            if path.exists():
                break
            time.sleep(0.02)
        return read_stats(path, timeout=5)

    async def start_host(self) -> Any:
        from mux_rpc._linkport import link_port
        from mux_rpc._offload import Host, HostConfig

        hc = HostConfig(keepalive_interval=KA, keepalive_timeout=KA_TIMEOUT, tick_interval=0.1)
        ports = [link_port(b, keepalive_interval=KA, peer_timeout=KA_TIMEOUT)
                 for b in self.backends]
        host = Host(ports, hc)
        await host.start()
        return host

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(5)
        for b in self.backends:
            with contextlib.suppress(Exception):
                b.close()
        if self.program is not None:
            self.program.close()
        self.veth.close()


def _retry(fn: Any) -> Any:
    for i in range(30):
        try:
            return fn()
        except OSError as exc:
            if exc.errno != 16 or i == 29:
                raise
            time.sleep(0.01 * (i + 1))


@pytest.fixture
def topo(tmp_path: Path) -> Any:
    afxdp_required()
    t = Topo(2, tmp_path / "stats")
    try:
        yield t
    finally:
        t.close()


async def crash(host: Any) -> None:
    """The host process dies: nothing more leaves it (no CLOSE, no goodbye)."""
    for t in host._tasks:
        t.cancel()
    for p in host._ports:
        await p.aclose()


def echo(listener: Any, broken: list[str]) -> asyncio.Future[None]:
    async def one(conn: Any) -> None:
        try:
            while (m := await conn.recv()) is not None:
                await conn.send(m.payload)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            broken.append(getattr(exc, "reason", type(exc).__name__))

    async def serve() -> None:
        with contextlib.suppress(Exception):
            while True:
                conn = await listener.accept()
                asyncio.ensure_future(one(conn))
    return asyncio.ensure_future(serve())


async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> None:
    w.write(frame(body))
    (ln,) = struct.unpack("!I", await asyncio.wait_for(r.readexactly(4), 10))
    assert await r.readexactly(ln) == body


async def ends(r: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(r.read(65536), 10):
            pass


def test_host_restart_resets_clients_and_serves_again(topo: Topo) -> None:
    async def main() -> None:
        topo.spawn_agent()
        host = await topo.start_host()
        lst = await host.listen(0, "length", auto_consume=True)
        srv = echo(lst, [])
        clients = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(5)]
        for i, (r, w) in enumerate(clients):
            await roundtrip(r, w, b"before %d" % i)
        await crash(host)
        srv.cancel()
        host2 = await topo.start_host()  # a new host process on the same link
        t0 = time.monotonic()
        await asyncio.gather(*(ends(r) for r, _ in clients))
        print(f"\nclients reset {time.monotonic() - t0:.3f} s after the new host's HELLO")
        st = topo.agent_stats()
        assert st["host_restarts"] == 1
        assert st["closed"] == {"peer_restarted": 5}
        assert st["listeners"] == {} and st["connections_open"] == 0
        lst2 = await host2.listen(lst.port, "length", auto_consume=True)
        assert lst2.port == lst.port
        srv2 = echo(lst2, [])
        r, w = await asyncio.open_connection("127.0.0.1", lst.port)
        await roundtrip(r, w, b"after")
        w.close()
        srv2.cancel()
        await host2.close()
    run(main(), 60)


def test_agent_restart_breaks_host_connections_and_relistens(topo: Topo) -> None:
    from xport._bpfload import attached_prog_id

    async def main() -> None:
        first = topo.spawn_agent()
        host = await topo.start_host()
        lst = await host.listen(0, "length", auto_consume=True)
        broken: list[str] = []
        srv = echo(lst, broken)
        clients = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(5)]
        for i, (r, w) in enumerate(clients):
            await roundtrip(r, w, b"before %d" % i)
        first.kill()  # crash: no CLOSED, the XDP program stays attached
        first.wait(5)
        await asyncio.gather(*(ends(r) for r, _ in clients))
        second = topo.spawn_agent()
        # the host sees the new HELLO (or the keepalive timeout), breaks its
        # connections, re-issues LISTEN on the same port: clients get served again
        deadline = time.monotonic() + 20
        while True:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", lst.port)
                await roundtrip(r, w, b"after")
                break
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                assert time.monotonic() < deadline, "the agent never came back"
                await asyncio.sleep(0.1)
        for _ in range(100):
            if len(broken) == 5:
                break
            await asyncio.sleep(0.05)
        assert set(broken) <= {"link_lost", "peer_restarted"} and len(broken) == 5
        w.close()
        srv.cancel()
        await host.close()
        # a clean stop leaves nothing behind: SIGTERM, exit 0, XDP detached
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
        assert attached_prog_id(topo.veth.agent.ifindex) == 0
        assert not list(topo.stats_dir.glob(f"agent-{second.pid}.sock"))
    run(main(), 90)
