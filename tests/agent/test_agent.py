"""The agent end to end on one machine: real TCP clients on loopback, the real
xport link over the in-memory backend pair, and a fake host speaking the
transport protocol message by message."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeHost, frame, run

from agent import Agent, AgentConfig
from xport import _protocol as P
from xport.testing import memory_backend_pair

ST = P.Status


@contextlib.asynccontextmanager
async def rig(queues: int = 1, host_window: tuple[int, int] = (64, 0),
              **cfg: Any) -> AsyncIterator[tuple[Agent, FakeHost]]:
    pairs = [memory_backend_pair(rx_buffers=64) for _ in range(queues)]
    config = AgentConfig(queues=queues, **cfg)
    agent = Agent([a for a, _ in pairs], config)
    await agent.start()
    host = FakeHost([h for _, h in pairs], window=host_window)
    try:
        yield agent, host
    finally:
        await agent.close()
        host.close()


async def listen(host: FakeHost, spec: str = "length", lid: int = 1, **kw: Any) -> int:
    host.send(P.Listen(lid, kw.pop("bind", "127.0.0.1"), 0, spec, **kw), q=0)
    res = await host.expect(P.ListenResult)
    assert res.status == ST.OK, res
    return int(res.port)


async def client(port: int, **kw: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, **kw)


async def read_frames(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        (ln,) = struct.unpack("!I", await reader.readexactly(4))
        out.append(await reader.readexactly(ln))
    return out


def test_accept_forward_reply_close() -> None:
    run(_accept_forward_reply_close())


def test_accept_forward_reply_close_on_uvloop() -> None:
    import uvloop  # installed by scripts/setup.sh; the agent's default loop

    async def main() -> None:
        await asyncio.wait_for(_accept_forward_reply_close(), 30)
    uvloop.run(main())


async def _accept_forward_reply_close() -> None:
    if True:
        async with rig() as (agent, host):
            port = await listen(host)
            r, w = await client(port)
            nc = await host.expect(P.NewConnection)
            assert nc.listener_id == 1 and nc.peer_host == "127.0.0.1"
            cid = nc.conn_id
            assert 0 < cid < 0x8000_0000
            w.write(frame(b"one") + frame(b"two") + frame(b"three")[:5])
            w.write(frame(b"three")[5:])
            msgs = await host.collect(P.Data, cid, 3)
            assert [bytes(m.payload) for m in msgs] == [frame(b"one"), frame(b"two"),
                                                          frame(b"three")]
            assert all(m.header_length == 4 for m in msgs)
            host.send(P.Data(cid, b"reply-1"))
            host.send(P.Data(cid, frame(b"reply-2"), 4))
            assert await read_frames(r, 2) == [b"reply-1", b"reply-2"]
            w.close()
            # a FIN is a half-close as far as TCP tells: EOF, then the host closes
            await host.expect(P.Eof, cid)
            assert host.take(P.Closed) == []
            host.send(P.Close(cid))
            closed = await host.expect(P.Closed, cid)
            assert closed.reason == ST.LOCAL_CLOSE and closed.text == "closed_by_host"
            st = agent.statistics()
            assert st["messages_to_host"] == 3 and st["closed"] == {"closed_by_host": 1}
            assert st["half_closes"] == 1 and st["connections_open"] == 0


def test_listen_refusals() -> None:
    async def main() -> None:
        async with rig() as (agent, host):
            host.send(P.Listen(1, "0.0.0.0", 0, "length"), q=0)
            r = await host.expect(P.ListenResult)
            assert r.status == ST.OS_ERROR and "loopback" in r.text
            host.send(P.Listen(2, "127.0.0.1", 0, "no-such-framer"), q=0)
            r = await host.expect(P.ListenResult)
            assert r.status == ST.UNKNOWN and r.listener_id == 2
            host.send(P.Listen(3, "127.0.0.1", 0, "length", tls=True), q=0)
            r = await host.expect(P.ListenResult)
            assert r.status == ST.TLS_ERROR
            host.send(P.Listen(4, "127.0.0.1", 0, "length", tls=True,
                               cert_path="/nonexistent.pem", key_path="/nonexistent.key"), q=0)
            r = await host.expect(P.ListenResult)
            assert r.status == ST.TLS_ERROR
            assert agent.statistics()["listen_failed"] == 4
    run(main())


def test_out_of_credit_connection_stops_reading_others_continue() -> None:
    async def main() -> None:
        async with rig(host_window=(8, 1 << 20)) as (agent, host):
            port = await listen(host)
            _ra, wa = await client(port)
            a = (await host.expect(P.NewConnection)).conn_id
            _rb, wb = await client(port)
            b = (await host.expect(P.NewConnection)).conn_id
            body = b"x" * 1000
            big = b"".join(frame(body + i.to_bytes(4, "big")) for i in range(2000))
            wa.write(big)  # 2 MB: far beyond the window, and beyond socket buffers
            got_a = await host.collect(P.Data, a, 8)
            # B flows while A is stuck
            for i in range(20):
                wb.write(frame(b"b%d" % i))
                m = await host.expect(P.Data, b)
                assert bytes(m.payload) == frame(b"b%d" % i)
                host.send(P.Credit(b, 1, len(m.payload)))
            await asyncio.sleep(0.05)
            assert host.take(P.Data, a) == []
            conn_a = agent.conns[a]
            assert conn_a.reading_paused
            # bounded: the agent holds at most one read's worth for A
            assert conn_a.accounted <= 256 * 1024 + 2 * 1004
            # credit resumes A, in order, exactly once
            for _k in range(8, 2000, 8):
                host.send(P.Credit(a, 8, 8 * 1008))
                got_a += await host.collect(P.Data, a, 8)
            host.send(P.Credit(a, 8, 8 * 1008))
            assert [bytes(m.payload)[-4:] for m in got_a] == [i.to_bytes(4, "big")
                                                             for i in range(2000)]
            assert agent.statistics()["read_pauses"] >= 1
            await asyncio.sleep(0.05)
            assert host.take(P.Data, a) == []
            for w in (wa, wb):
                w.close()
    run(main())


def test_malformed_client_closes_only_its_connection() -> None:
    async def main() -> None:
        async with rig() as (agent, host):
            port = await listen(host)
            good = []
            for _ in range(3):
                good.append(await client(port))
                good[-1] = (*good[-1], (await host.expect(P.NewConnection)).conn_id)
            rbad, wbad = await client(port)
            bad = (await host.expect(P.NewConnection)).conn_id
            wbad.write(frame(b"fine") + struct.pack("!I", 0x7FFF_FFFF) + b"junk")
            m = await host.expect(P.Data, bad)
            assert bytes(m.payload) == frame(b"fine")
            closed = await host.expect(P.Closed, bad)
            assert closed.reason == ST.TOO_LARGE and closed.text.startswith("frame_too_long")
            with contextlib.suppress(ConnectionError):
                assert await rbad.read() == b""  # the agent reset it
            for r, w, cid in good:
                w.write(frame(b"still here"))
                assert bytes((await host.expect(P.Data, cid)).payload) == frame(b"still here")
                host.send(P.Data(cid, b"ok"))
                assert await read_frames(r, 1) == [b"ok"]
            st = agent.statistics()
            assert st["closed"] == {"frame_too_long": 1} and st["connections_open"] == 3
            assert st["framing_errors"] == 1
    run(main())


def test_connection_limit() -> None:
    async def main() -> None:
        async with rig(max_connections=2) as (agent, host):
            port = await listen(host)
            c1 = await client(port)
            c2 = await client(port)
            await host.collect(P.NewConnection, None, 2)  # type: ignore[arg-type]
            r3, _w3 = await client(port)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r3.read(), 5) == b""
            assert agent.statistics()["too_many_connections"] == 1
            assert len(agent.conns) == 2
            await asyncio.sleep(0.02)
            assert host.take(P.NewConnection) == []
            for _, w in (c1, c2):
                w.close()
    run(main())


def test_host_close_flushes_replies_then_confirms() -> None:
    async def main() -> None:
        async with rig() as (_agent, host):
            port = await listen(host)
            r, _w = await client(port)
            cid = (await host.expect(P.NewConnection)).conn_id
            host.send(P.Data(cid, b"last words"))
            host.send(P.Close(cid))
            closed = await host.expect(P.Closed, cid)
            assert closed.reason == ST.LOCAL_CLOSE and closed.text == "closed_by_host"
            assert await read_frames(r, 1) == [b"last words"]
            assert await r.read() == b""
            # CLOSE for an id that is gone is confirmed, not ignored
            host.send(P.Close(cid))
            again = await host.expect(P.Closed, cid)
            assert again.text == "unknown_connection"
    run(main())


def test_credit_to_host_only_as_the_client_reads() -> None:
    async def main() -> None:
        async with rig(initial_window_messages=16, initial_window_bytes=8 << 20,
                       max_write_buffer=16 << 20) as (agent, host):
            port = await listen(host)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            r, _w = await asyncio.open_connection(sock=sock)
            cid = (await host.expect(P.NewConnection)).conn_id
            conn = agent.conns[cid]
            # the client does not read: the kernel buffers fill, then the agent's
            payload = b"y" * 400_000
            for _ in range(16):
                host.send(P.Data(cid, payload))
            await asyncio.sleep(0.3)
            early = host.take(P.Credit, cid)
            granted = sum(c.messages for c in early)
            assert granted < 16  # not everything drained: some credit withheld
            assert conn.transport is not None and conn.transport.get_write_buffer_size() > 0
            # a 17th+ message beyond the window is a violation
            # (not sent here: the host would be at fault); now the client reads
            got = await read_frames(r, 16)
            assert all(g == payload for g in got)
            # everything drained: credit went back in batches; what is still owed
            # is less than half the window (xport._flow rule, §5.2)
            total = granted
            while total + conn.recv_window.pending_messages < 16 or conn.tracker:
                with contextlib.suppress(TimeoutError):
                    total += (await host.expect(P.Credit, cid, timeout=0.2)).messages
            total += sum(c.messages for c in host.take(P.Credit, cid))
            assert total + conn.recv_window.pending_messages == 16
            assert conn.recv_window.pending_messages < 16 // 2
    run(main())


def test_host_beyond_window_is_a_credit_violation() -> None:
    async def main() -> None:
        async with rig(initial_window_messages=2, initial_window_bytes=1 << 20) as (agent, host):
            port = await listen(host)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            _r, _w = await asyncio.open_connection(sock=sock)
            cid = (await host.expect(P.NewConnection)).conn_id
            tsock = agent.conns[cid].transport.get_extra_info("socket")
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for _ in range(3):  # nothing drains: the third is beyond the window
                host.send(P.Data(cid, b"z" * 400_000))
            closed = await host.expect(P.Closed, cid)
            assert closed.reason == ST.CREDIT_VIOLATION
            assert closed.text.startswith("credit_exceeded")
            assert host.take(P.Credit, cid) == []
            assert agent.statistics()["closed"] == {"credit_exceeded": 1}



def _self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


def test_tls_termination(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files

    async def main() -> None:
        async with rig(tls_handshake_timeout=0.2) as (agent, host):
            port = await listen(host, tls=True, cert_path=cert, key_path=key)
            ctx = ssl.create_default_context(cafile=cert)
            r, w = await client(port, ssl=ctx, server_hostname="127.0.0.1")
            cid = (await host.expect(P.NewConnection)).conn_id
            w.write(frame(b"secret request"))
            m = await host.expect(P.Data, cid)
            assert bytes(m.payload) == frame(b"secret request")  # plaintext at the host
            host.send(P.Data(cid, b"secret reply"))
            assert await read_frames(r, 1) == [b"secret reply"]
            # a plaintext client on the TLS port never reaches the host
            r2, w2 = await client(port)
            w2.write(frame(b"not tls"))
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await asyncio.wait_for(r2.read(), 5)
            w.close()
            closed = await host.expect(P.Closed, cid)
            assert closed.reason == ST.PEER_CLOSED
            await asyncio.sleep(0.05)
            assert host.take(P.NewConnection) == [] and host.take(P.Data) == []
            assert "tls" in str(agent.statistics()["listeners"])
            # the failed handshake holds nothing for long
            await asyncio.sleep(0.8)
            st = agent.statistics()
            assert st["connections_handshaking"] == 0 and st["tls_handshake_failed"] == 1
    run(main())


def test_outbound_connect() -> None:
    async def main() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        sport = server.sockets[0].getsockname()[1]
        try:
            async with rig(queues=2) as (_agent, host):
                cid = 0x8000_0001
                host.send(P.Connect(cid, "127.0.0.1", sport, "length"))
                ok = await host.expect(P.Connected, cid)
                assert ok.status == ST.OK
                host.send(P.Data(cid, b"ping"))
                m = await host.expect(P.Data, cid)
                assert bytes(m.payload) == frame(b"ping")
                host.send(P.Connect(0x8000_0002, "127.0.0.1", 1, "length"))
                bad = await host.expect(P.Connected, 0x8000_0002)
                assert bad.status == ST.OS_ERROR and bad.text.startswith("connect_failed")
                host.send(P.Connect(0x8000_0003, "192.0.2.1", 80, "length"))
                bad = await host.expect(P.Connected, 0x8000_0003)
                assert bad.status == ST.OS_ERROR and "loopback" in bad.text
                host.send(P.Close(cid))
                assert (await host.expect(P.Closed, cid)).reason == ST.LOCAL_CLOSE
        finally:
            server.close()
    run(main())


def test_host_restart_resets_connections_and_listeners() -> None:
    async def main() -> None:
        async with rig(queues=2) as (agent, host):
            # the new host's links have new sessions: each agent link resets
            # itself and reports it once (docs/protocol.md §3.1.4)
            port = await listen(host)
            conns = [await client(port) for _ in range(4)]
            await host.collect(P.NewConnection, None, 4)  # type: ignore[arg-type]
            host.restart()
            for r, _w in conns:
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(r.read(), 5) == b""
            st = agent.statistics()
            assert st["host_restarts"] == 1 and st["closed"] == {"peer_restarted": 4}
            assert st["listeners"] == {} and st["connections_open"] == 0
            assert [p.link.peer_restarts for p in agent._ports] == [1, 1]
            # the agent answered: the new host's links are established
            for _ in range(100):
                if all(l.established for l in host.links):
                    break
                await asyncio.sleep(0.02)
            assert all(l.established for l in host.links)
            # and the new host can listen again on the same port
            host.send(P.Listen(1, "127.0.0.1", port, "length"), q=0)
            res = await host.expect(P.ListenResult)
            assert res.status == ST.OK and res.port == port
            r, w = await client(port)
            cid = (await host.expect(P.NewConnection)).conn_id
            w.write(frame(b"again"))
            assert bytes((await host.expect(P.Data, cid)).payload) == frame(b"again")
    run(main())


def test_link_lost_resets_everything() -> None:
    async def main() -> None:
        now = [0.0]
        pairs = [memory_backend_pair()]
        agent = Agent([pairs[0][0]], AgentConfig(keepalive_interval=1.0, keepalive_timeout=3.0),
                      clock=lambda: now[0], tick_interval=None)
        await agent.start()
        host = FakeHost([pairs[0][1]], clock=lambda: now[0])
        try:
            port = await listen(host)
            r, _w = await client(port)
            await host.expect(P.NewConnection)
            host._timer.cancel()  # the host goes silent
            now[0] += 2.0
            agent.tick()
            assert agent.statistics()["link_up"] is True
            now[0] += 2.0
            agent.tick()
            st = agent.statistics()
            assert st["link_up"] is False and st["closed"] == {"link_lost": 1}
            assert st["listeners"] == {} and st["links_lost"] == 1
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), 5) == b""
            with pytest.raises(OSError):
                await client(port)
        finally:
            await agent.close()
            host.close()
    run(main())


def test_link_backpressure_stops_reading_until_the_link_drains() -> None:
    async def main() -> None:
        async with rig() as (agent, host):
            port = await listen(host)
            loop = asyncio.get_running_loop()
            clients = []
            for _ in range(6):
                clients.append(await client(port))
                await host.expect(P.NewConnection)
            loop.remove_reader(host.backends[0].fileno())  # the host stops taking frames
            body = b"d" * 16_000
            for _, w in clients:
                w.write(frame(body) * 100)  # 1.6 MB each: more than one window (1 MiB)
            await asyncio.sleep(0.5)
            st = agent.statistics()
            assert st["link_backpressure"] >= 1
            link = agent._ports[0].link
            # bounded: the link's limit plus what one loop iteration can add
            assert link.queued_bytes <= link.config.max_queued_bytes + 2 * (1 << 20)
            assert all(c.reading_paused for c in agent.conns.values())
            loop.add_reader(host.backends[0].fileno(), host._readable, 0)
            host._readable(0)
            for _ in range(100):
                if not any(agent._link_blocked):
                    break
                await asyncio.sleep(0.02)
            assert not any(agent._link_blocked)
            assert not any(c.link_blocked for c in agent.conns.values())
            for _, w in clients:
                w.close()
    run(main())


def test_first_host_hello_long_after_ours_is_answered() -> None:
    async def main() -> None:
        pairs = [memory_backend_pair()]
        agent = Agent([pairs[0][0]], AgentConfig())
        await agent.start()
        try:
            await asyncio.sleep(0.15)  # the host comes up later than the agent
            host = FakeHost([pairs[0][1]])
            for _ in range(100):  # the handshake completes on both ends
                host._readable(0)
                if host.links[0].established and agent._ports[0].link.established:
                    break
                await asyncio.sleep(0.01)
            assert host.links[0].established and agent._ports[0].link.established
            assert "host_restarts" not in agent.statistics()
            port = await listen(host)
            _r, w = await client(port)
            assert (await host.expect(P.NewConnection)).listener_id == 1
            w.close()
            host.close()
        finally:
            await agent.close()
    run(main())


def test_handshake_and_duplicate_hellos_are_not_a_restart() -> None:
    async def main() -> None:
        async with rig() as (agent, host):
            await listen(host)
            host.links[0]._queue_hello()  # a duplicate (same session)
            host.flush()
            await listen(host, lid=2)
            st = agent.statistics()
            assert "host_restarts" not in st and st["links"][0]["peer_restarts"] == 0
            assert len(st["listeners"]) == 2
    run(main())


def test_global_buffer_stall_closes_the_largest_partial_holder() -> None:
    async def main() -> None:
        async with rig(max_buffered_total=200_000, buffer_stall_timeout=0.2) as (agent, host):
            port = await listen(host)
            conns = []
            for size in (150_000, 120_000):
                r, w = await client(port)
                cid = (await host.expect(P.NewConnection)).conn_id
                w.write(struct.pack("!I", 500_000) + b"p" * size)  # a partial message
                conns.append((r, w, cid))
                await asyncio.sleep(0.1)
            closed = await host.expect(P.Closed, timeout=5)
            assert closed.conn_id == conns[0][2]  # the largest first
            assert closed.text.startswith("buffer_limit")
            st = agent.statistics()
            assert st["closed"]["buffer_limit"] >= 1 and st["buffer_stall_closes"] >= 1
            assert st["buffered_bytes"] <= 200_000
    run(main())


def test_shutdown_tells_the_host_and_closes_clients() -> None:
    async def main() -> None:
        pairs = [memory_backend_pair()]
        agent = Agent([pairs[0][0]], AgentConfig())
        await agent.start()
        host = FakeHost([pairs[0][1]])
        try:
            port = await listen(host)
            r, _w = await client(port)
            cid = (await host.expect(P.NewConnection)).conn_id
            await agent.close()
            closed = await host.expect(P.Closed, cid)
            assert closed.text == "agent_shutdown" and closed.reason == ST.INTERNAL
            assert await asyncio.wait_for(r.read(), 5) == b""  # a clean FIN
            with pytest.raises(OSError):
                await client(port)
        finally:
            await agent.close()
            host.close()
    run(main())


def test_outbound_connect_with_tls(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files

    async def main() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
            w.close()

        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(cert, key)
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=sctx)
        sport = server.sockets[0].getsockname()[1]
        try:
            async with rig(tls_client_cafile=cert) as (_agent, host):
                cid = 0x8000_0010
                host.send(P.Connect(cid, "127.0.0.1", sport, "length", tls=True))
                ok = await host.expect(P.Connected, cid)
                assert ok.status == ST.OK, ok
                host.send(P.Data(cid, b"over tls"))
                assert bytes((await host.expect(P.Data, cid)).payload) == frame(b"over tls")
            async with rig() as (_agent, host):  # no CA for it: verification fails
                host.send(P.Connect(cid, "127.0.0.1", sport, "length", tls=True))
                bad = await host.expect(P.Connected, cid)
                assert bad.status == ST.TLS_ERROR and bad.text.startswith("tls_error")
        finally:
            server.close()
    run(main())


def test_host_misuse_is_counted_never_fatal() -> None:
    async def main() -> None:
        async with rig() as (agent, host):
            host.send(P.Data(4242, b"nobody"), q=0)
            host.send(P.Credit(4242, 1, 1), q=0)
            host.send(P.NewConnection(5, 1, "1.2.3.4", 5), q=0)  # an agent-only message
            host.send(P.Error(0, 99, "host trouble"), q=0)
            host.send(P.Connect(0x8000_0001, "127.0.0.1", 1, "no-such-framer"), q=0)
            bad = await host.expect(P.Connected)
            assert bad.status == ST.UNKNOWN
            port = await listen(host)  # still serving
            _r, w = await client(port)
            cid = (await host.expect(P.NewConnection)).conn_id
            w.write(frame(b"fine"))
            assert bytes((await host.expect(P.Data, cid)).payload) == frame(b"fine")
            errs = agent.statistics()["host_errors"]
            assert errs == {"data_unknown_conn": 1, "credit_unknown_conn": 1,
                            "unexpected_newconnection": 1, "error_from_host": 1}
    run(main())


# -- credit the host does not need yet rides the next frame (AgentConfig.credit_delay) --


async def _replied(host: FakeHost, port: int, n: int,
                   ) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client whose first request the host answers with ``n`` replies, all read."""
    r, w = await client(port)
    cid = (await host.expect(P.NewConnection)).conn_id
    w.write(frame(b"first"))
    await host.expect(P.Data, cid)
    for i in range(n):
        host.send(P.Data(cid, f"reply-{i}".encode()))
    assert len(await read_frames(r, n)) == n
    return cid, r, w


def test_credit_the_host_does_not_need_yet_rides_the_next_request() -> None:
    async def main() -> None:
        # a window of 4: 2 replies drained make a grant, the host still holds 2
        async with rig(initial_window_messages=4, credit_delay=5.0) as (agent, host):
            port = await listen(host)
            cid, _r, w = await _replied(host, port, 2)
            await asyncio.sleep(0.1)
            assert host.take(P.Credit, cid) == []  # held: the host has credit left
            assert agent.lazy_credit(cid)[0] == 2
            w.write(frame(b"second"))  # the client's next request: it rides along
            await host.expect(P.Data, cid)
            credit = await host.expect(P.Credit, cid, timeout=1.0)
            assert credit.messages == 2 and agent.lazy_credit(cid) == (0, 0)
            w.close()
    run(main())


def test_held_credit_goes_after_the_delay_without_traffic() -> None:
    async def main() -> None:
        async with rig(initial_window_messages=4, credit_delay=0.2) as (agent, host):
            port = await listen(host)
            cid, _r, w = await _replied(host, port, 2)
            t0 = asyncio.get_running_loop().time()
            credit = await host.expect(P.Credit, cid, timeout=3.0)
            assert credit.messages == 2
            assert asyncio.get_running_loop().time() - t0 >= 0.1  # not at once
            w.close()
    run(main())


def test_credit_the_host_may_be_blocked_without_goes_at_once() -> None:
    async def main() -> None:
        # a window of 2, both replies sent: the host holds nothing until a grant
        async with rig(initial_window_messages=2, credit_delay=5.0) as (agent, host):
            port = await listen(host)
            cid, _r, w = await _replied(host, port, 2)
            t0 = asyncio.get_running_loop().time()
            credit = await host.expect(P.Credit, cid, timeout=1.0)  # well before 5 s
            assert credit.messages >= 1 and asyncio.get_running_loop().time() - t0 < 1.0
            w.close()
    run(main())
