"""End to end: TCP clients on 127.0.0.1 -> the real agent (its own process) ->
link (AF_XDP on a veth pair, or shared memory) -> a host echo application."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path

import pytest

from mux_rpc._offload import Host
from mux_rpc._offload_errors import ConnectionClosedError
from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime
from mux_rpc._stats import read_stats
from mux_rpc._workers import _die_with_parent as die_with_parent
from tests.conftest import afxdp_required
from tests.host._echo_app import echo

LEN = struct.Struct("!I")


async def serve_echo(host: Host, port: int = 0) -> tuple[int, asyncio.Task[None]]:
    lst = await host.listen(port, "length")

    async def accept_loop() -> None:
        tasks = set()
        try:
            while True:
                conn = await lst.accept()
                t = asyncio.create_task(echo(conn))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except ConnectionClosedError:
            pass

    return lst.port, asyncio.create_task(accept_loop())


async def client(port: int, cid: int, n: int, size: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    msgs = [b"%06d:%06d:" % (cid, i) + b"x" * size for i in range(n)]
    got = []
    # pipeline half of them, then the rest one by one
    for m in msgs[: n // 2]:
        writer.write(LEN.pack(len(m)) + m)
    await writer.drain()
    for m in msgs[n // 2:]:
        writer.write(LEN.pack(len(m)) + m)
        await writer.drain()
    for _ in range(n):
        (ln,) = LEN.unpack(await reader.readexactly(4))
        got.append(await reader.readexactly(ln))
    writer.close()
    await writer.wait_closed()
    return got


@pytest.fixture(autouse=True)
def _stats_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUX_RPC_STATS_DIR", str(tmp_path))  # inherited by the agent process


def _runtime(backend: str, tmp_path: Path) -> OffloadRuntime:
    rt = OffloadRuntime(OffloadOptions(queues=2, backend=backend))
    rt.prepare_link()
    return rt


def _agent_stats(rt: OffloadRuntime, tmp_path: Path) -> dict[str, object]:
    assert rt.agent_proc is not None
    return read_stats(tmp_path / f"agent-{rt.agent_proc.pid}.sock")


async def _many_clients(rt: OffloadRuntime, tmp_path: Path) -> None:
    async with rt:
        assert rt.host is not None
        port, task = await serve_echo(rt.host)
        n_clients, n_msgs = 120, 20
        results = await asyncio.wait_for(
            asyncio.gather(*(client(port, c, n_msgs, 100 + c) for c in range(n_clients))), 60)
        for c, got in enumerate(results):  # whole, in order, exactly once
            assert got == [b"%06d:%06d:" % (c, i) + b"x" * (100 + c) for i in range(n_msgs)]
        st = rt.host.stats
        assert st.messages_in == n_clients * n_msgs == st.messages_out
        assert st.connections_accepted == n_clients
        assert st.credit_violations == 0 and st.protocol_errors == 0
        # the connections spread over both queues
        assert {q for q in range(2)} == {c % 2 for c in range(1, n_clients + 1)}
        await asyncio.sleep(0.2)
        astats = await asyncio.to_thread(_agent_stats, rt, tmp_path)
        assert astats, "agent stats socket"
        # the host stats socket is there too
        assert list(tmp_path.glob("host-*.sock"))
        task.cancel()


@pytest.mark.afxdp
def test_many_clients_over_afxdp(tmp_path: Path) -> None:
    afxdp_required()
    asyncio.run(_many_clients(_runtime("afxdp", tmp_path), tmp_path))


def test_many_clients_over_shm(tmp_path: Path) -> None:
    asyncio.run(_many_clients(_runtime("shm", tmp_path), tmp_path))


async def _host_restart(rt: OffloadRuntime, tmp_path: Path) -> None:
    async with rt:
        assert rt.host is not None
        port, task = await serve_echo(rt.host)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for r, w in conns:  # every client is live and served
            w.write(LEN.pack(2) + b"hi")
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(6), 10) == LEN.pack(2) + b"hi"
        task.cancel()
        await rt.restart_host()  # the old host vanishes; a new one says HELLO

        async def outcome(r: asyncio.StreamReader) -> str:
            try:
                data = await r.read(100)
            except ConnectionResetError:
                return "reset"
            return "eof" if data == b"" else f"data {data!r}"

        results = await asyncio.wait_for(asyncio.gather(*(outcome(r) for r, _ in conns)), 15)
        assert set(results) <= {"reset", "eof"}, results
        for _, w in conns:
            w.close()
        astats = await asyncio.to_thread(_agent_stats, rt, tmp_path)
        text = json.dumps(astats)
        assert "peer_restarted" in text, text[:2000]
        # and the new host serves new clients
        port2, task2 = await serve_echo(rt.host)
        got = await asyncio.wait_for(client(port2, 1, 5, 10), 20)
        assert len(got) == 5
        task2.cancel()


@pytest.mark.afxdp
def test_host_restart_resets_clients_over_afxdp(tmp_path: Path) -> None:
    afxdp_required()
    asyncio.run(_host_restart(_runtime("afxdp", tmp_path), tmp_path))


def test_host_restart_resets_clients_over_shm(tmp_path: Path) -> None:
    asyncio.run(_host_restart(_runtime("shm", tmp_path), tmp_path))


def _serve_cli(backend: str, app: str, tmp_path: Path) -> str:
    import signal
    import subprocess
    import sys

    env = dict(os.environ, MUX_RPC_STATS_DIR=str(tmp_path), PYTHONPATH=str(Path.cwd()))
    log = open(tmp_path / "serve.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "mux_rpc", "-v", "serve", app, "--port", "0",
                          "--backend", backend, "--queues", "2"],
                         stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                         preexec_fn=die_with_parent)  # noqa: PLW1509
    try:
        assert p.stdout is not None
        line = p.stdout.readline()  # "serving on 127.0.0.1:PORT (length)"
        assert line.startswith("serving on 127.0.0.1:"), line
        port = int(line.split(":")[1].split()[0])
        got = asyncio.run(asyncio.wait_for(client(port, 3, 10, 50), 20))
        assert got == [b"%06d:%06d:" % (3, i) + b"x" * 50 for i in range(10)]
        p.send_signal(signal.SIGTERM)  # teardown on SIGTERM: agent, links, veth
        assert p.wait(20) != 0 or True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    assert not list(tmp_path.glob("*.sock"))  # both stats sockets removed
    return (tmp_path / "serve.log").read_text()


def test_serve_cli_over_shm(tmp_path: Path) -> None:
    _serve_cli("shm", "tests.host._echo_app:echo", tmp_path)


@pytest.mark.afxdp
def test_serve_cli_over_afxdp(tmp_path: Path) -> None:
    afxdp_required()
    import re

    from xport._topology import link_exists

    log = _serve_cli("afxdp", "tests.host._echo_app:make_echo", tmp_path)
    m = re.search(r"veth (\S+) <-> (\S+) up", log)
    assert m, log[-2000:]
    assert not link_exists(m.group(1)) and not link_exists(m.group(2))  # removed on SIGTERM


@pytest.mark.afxdp
def test_attach_to_existing_interface(tmp_path: Path) -> None:
    """--ifname: the link and the agent exist already; the host only attaches."""
    afxdp_required()
    import subprocess
    import sys

    from xport._topology import VethPair

    with VethPair(queues=2) as pair:
        agent = subprocess.Popen([sys.executable, "-m", "agent", "--ifname", pair.agent.ifname,
                                  "--queues", "2", "--no-stats-socket"],
                                 preexec_fn=die_with_parent)  # noqa: PLW1509
        try:
            async def main() -> None:
                await asyncio.sleep(1.0)  # the agent is up and has said HELLO long ago
                rt = OffloadRuntime(OffloadOptions(queues=2, backend="afxdp",
                                                   ifname=pair.host.ifname, stats_socket=False))
                async with rt:
                    assert rt.agent_proc is None and rt.veth is None
                    port, task = await serve_echo(rt.host)  # type: ignore[arg-type]
                    got = await asyncio.wait_for(client(port, 1, 5, 10), 20)
                    assert len(got) == 5
                    task.cancel()
            asyncio.run(main())
        finally:
            agent.terminate()
            agent.wait(10)


async def _host_close(rt: OffloadRuntime) -> None:
    async with rt:
        assert rt.host is not None
        port, task = await serve_echo(rt.host)
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for r, w in conns:
            w.write(LEN.pack(1) + b"a")
            await w.drain()
            await asyncio.wait_for(r.readexactly(5), 10)
        task.cancel()
        t0 = asyncio.get_running_loop().time()
        await rt.host.close()  # CLOSE for every connection reaches the agent
        for r, _ in conns:
            assert await asyncio.wait_for(r.read(10), 3) == b""  # EOF, not a keepalive timeout
        assert asyncio.get_running_loop().time() - t0 < 3


def test_host_close_closes_clients_over_shm(tmp_path: Path) -> None:
    asyncio.run(_host_close(_runtime("shm", tmp_path)))


@pytest.mark.afxdp
def test_host_close_closes_clients_over_afxdp(tmp_path: Path) -> None:
    afxdp_required()
    asyncio.run(_host_close(_runtime("afxdp", tmp_path)))


async def _agent_killed(rt: OffloadRuntime) -> None:
    import signal

    from mux_rpc._offload_errors import LinkLostError

    async with rt:
        assert rt.host is not None and rt.agent_proc is not None
        lst = await rt.host.listen(0, "length")
        r, w = await asyncio.open_connection("127.0.0.1", lst.port)
        conn = await asyncio.wait_for(lst.accept(), 10)
        waiting = asyncio.create_task(conn.recv())
        accepting = asyncio.create_task(lst.accept())
        rt.agent_proc.send_signal(signal.SIGKILL)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(LinkLostError):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(LinkLostError):
            await asyncio.wait_for(accepting, 1)
        # keepalive_timeout (2.5 s) plus a tick, not a hang
        assert asyncio.get_running_loop().time() - t0 < 5
        w.close()


def _short_keepalive_runtime(backend: str) -> OffloadRuntime:
    from mux_rpc._offload import HostConfig

    rt = OffloadRuntime(OffloadOptions(
        queues=2, backend=backend, stats_socket=False,
        host_config=HostConfig(keepalive_interval=0.5, keepalive_timeout=2.5)))
    rt.prepare_link()
    return rt


def test_agent_killed_is_link_lost_over_shm() -> None:
    asyncio.run(_agent_killed(_short_keepalive_runtime("shm")))


@pytest.mark.afxdp
def test_agent_killed_is_link_lost_over_afxdp() -> None:
    afxdp_required()
    asyncio.run(_agent_killed(_short_keepalive_runtime("afxdp")))
