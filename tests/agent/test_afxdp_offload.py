"""The agent as its own process over REAL AF_XDP, with the real host runtime
(mux_rpc's OffloadRuntime: veth pair, XDP program, one AF_XDP socket per queue
on each end, ``python -m agent`` as a child process) in this process.

TCP clients connect to the agent on loopback; the host echoes every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import frame, run
from conftest import afxdp_required

from mux_rpc._stats import read_stats, stats_socket_path

pytestmark = pytest.mark.afxdp


@pytest.fixture(autouse=True)
def _afxdp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afxdp_required()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    # the agent child serves its counters here
    monkeypatch.setenv("MUX_RPC_STATS_DIR", str(tmp_path / "stats"))


def agent_stats(rt: Any) -> dict[str, Any]:
    return read_stats(stats_socket_path("agent", rt.agent_proc.pid), timeout=5)


async def echo_server(listener: Any) -> None:
    async def one(conn: Any) -> None:
        with contextlib.suppress(Exception):
            while (m := await conn.recv()) is not None:
                await conn.send(m.payload)
    tasks = set()
    with contextlib.suppress(Exception):
        while True:
            conn = await listener.accept()
            t = asyncio.ensure_future(one(conn))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


def runtime(queues: int, **kw: Any) -> Any:
    from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime

    return OffloadRuntime(OffloadOptions(queues=queues, backend="afxdp",
                                         stats_socket=False, **kw))


async def one_client(port: int, idx: int, n: int, **kw: Any) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port, **kw)
    try:
        w.write(b"".join(frame(b"c%d-m%d" % (idx, i)) for i in range(n)))
        for i in range(n):
            (ln,) = struct.unpack("!I", await r.readexactly(4))
            got = await r.readexactly(ln)
            assert got == b"c%d-m%d" % (idx, i), (idx, i, got)
    finally:
        w.close()


@pytest.mark.parametrize("queues", [1, 4])
def test_thousand_connections_exactly_once_in_order(queues: int) -> None:
    n_conns, n_msgs = 1000, 10

    async def main() -> None:
        async with runtime(queues) as rt:
            lst = await rt.host.listen(0, "length", auto_consume=True)
            srv = asyncio.ensure_future(echo_server(lst))
            sem = asyncio.Semaphore(250)  # connect in waves; all stay open together

            opened = asyncio.Event()
            count = [0]

            async def client(i: int) -> None:
                async with sem:
                    r, w = await asyncio.open_connection("127.0.0.1", lst.port)
                count[0] += 1
                if count[0] == n_conns:
                    opened.set()
                await opened.wait()  # 1000 live connections at once
                try:
                    w.write(b"".join(frame(b"c%d-m%d" % (i, k)) for k in range(n_msgs)))
                    for k in range(n_msgs):
                        (ln,) = struct.unpack("!I", await r.readexactly(4))
                        assert await r.readexactly(ln) == b"c%d-m%d" % (i, k)
                finally:
                    w.close()

            t0 = time.monotonic()
            await asyncio.gather(*(client(i) for i in range(n_conns)))
            dt = time.monotonic() - t0
            st = agent_stats(rt)
            print(f"\n{n_conns} connections x {n_msgs} echoes over {queues} queue(s): "
                  f"{dt:.2f} s ({n_conns * n_msgs / dt:.0f} round trips/s)")
            assert st["messages_to_host"] == n_conns * n_msgs
            assert st["messages_from_host"] == n_conns * n_msgs
            assert st["connections_accepted"] == n_conns
            # lossless: at most the one seq gap of startup (the host's first frames
            # went out before the agent's sockets existed), nothing dropped since
            for link in st["links"]:
                assert set(link["dropped"]) <= {"seq_gap"}, link
                assert link["dropped"].get("seq_gap", 0) <= 1, link
            srv.cancel()
    run(main(), 60)


def test_stalled_reader_does_not_slow_the_others() -> None:
    async def main() -> None:
        async with runtime(2) as rt:
            lst = await rt.host.listen(0, "length", auto_consume=True)
            srv = asyncio.ensure_future(echo_server(lst))
            # the stalled client: tiny receive buffer, sends a lot, never reads
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", lst.port))
            sr, sw = await asyncio.open_connection(sock=s)
            blob = frame(b"s" * 16_000) * 1000  # 16 MB of requests
            sw.write(blob)
            await asyncio.sleep(0.5)  # it is stuck now: the echoes have nowhere to go
            t0 = time.monotonic()
            await asyncio.gather(*(one_client(lst.port, i, 200) for i in range(20)))
            dt = time.monotonic() - t0
            print(f"\n20 clients x 200 echoes beside a stalled one: {dt:.2f} s")
            st = agent_stats(rt)
            assert st["read_pauses"] >= 1
            assert st["buffered_bytes"] <= 2 * (1 << 20) + 256 * 1024
            assert sw.transport.get_write_buffer_size() > 0  # backpressure reached it
            assert dt < 10
            # it resumes when it reads
            sw.transport.pause_reading()
            sr._transport.resume_reading()  # type: ignore[attr-defined]
            for _ in range(1000):
                (ln,) = struct.unpack("!I", await sr.readexactly(4))
                await sr.readexactly(ln)
            sw.close()
            srv.cancel()
    run(main(), 60)


def test_malformed_client_among_good_ones() -> None:
    async def main() -> None:
        async with runtime(2) as rt:
            lst = await rt.host.listen(0, "length", auto_consume=True)
            accepted: list[Any] = []
            broken: list[str] = []

            async def serve() -> None:
                while True:
                    conn = await lst.accept()
                    accepted.append(conn)

                    async def one(conn: Any) -> None:
                        try:
                            while (m := await conn.recv()) is not None:
                                await conn.send(m.payload)
                        except Exception as exc:  # noqa: BLE001 - recorded, asserted
                            broken.append(getattr(exc, "reason", repr(exc)))
                    asyncio.ensure_future(one(conn))
            srv = asyncio.ensure_future(serve())
            good = asyncio.gather(*(one_client(lst.port, i, 100) for i in range(10)))
            r, w = await asyncio.open_connection("127.0.0.1", lst.port)
            w.write(frame(b"ok") + b"\xff\xff\xff\xff" + b"x" * 100)
            # the agent resets it at once (the echo of "ok" may not make it)
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(r.read(65536), 10):
                    pass
            await good
            for _ in range(100):
                if broken:
                    break
                await asyncio.sleep(0.02)
            assert broken == ["message_too_large"]
            st = agent_stats(rt)
            assert st["closed"].get("frame_too_long") == 1 and st["framing_errors"] == 1
            srv.cancel()
    run(main(), 60)


def test_tls_clients(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)

    async def main() -> None:
        async with runtime(2) as rt:
            lst = await rt.host.listen(0, "length", tls=(str(cert), str(key)),
                                       auto_consume=True)
            srv = asyncio.ensure_future(echo_server(lst))
            ctx = ssl.create_default_context(cafile=str(cert))
            await asyncio.gather(*(one_client(lst.port, i, 50, ssl=ctx,
                                              server_hostname="127.0.0.1")
                                   for i in range(20)))
            srv.cancel()
    run(main(), 60)
