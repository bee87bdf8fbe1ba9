"""Runs: a received batch's consecutive DATA of one connection delivered as one
group (``Host._on_batch`` -> ``OffloadConnection._deliver_run`` -> the Server's
batch hook). Each scenario runs twice against the fake agent: once with DATA
as the link gives it to a receiver (``Link.raw_runs``: ``(conn_id, [payload,
...])`` per run of consecutive DATA of one connection) and once as ``P.Data`` objects (delivered message by message, the
reference): every observable outcome must be the same."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux_rpc import Server, ServerConfig
from mux_rpc._connstate import ConnState
from mux_rpc._limits import InflightLimits
from mux_rpc._offload import (
    HOOK_DEFER,
    HOOK_DONE,
    HOOK_OWNED,
    Host,
    HostConfig,
    OffloadConnection,
)
from mux_rpc._offload_errors import ConnectionBrokenError
from xport import _protocol as P

from ._fake import FakeAgent, MemoryPort
from .test_fastpath import make_app
from .test_offload import settle


def to_runs(msgs: Sequence[Any]) -> list[Any]:
    """``msgs`` as ``Link.raw_runs`` hands them over: consecutive headerless
    DATA of one connection as one ``(conn_id, [payload, ...])``."""
    out: list[Any] = []
    for m in msgs:
        if isinstance(m, P.Data) and not m.header_length:
            if out and type(out[-1]) is tuple and out[-1][0] == m.conn_id:
                out[-1][1].append(bytes(m.payload))
            else:
                out.append((m.conn_id, [bytes(m.payload)]))
        else:
            out.append(m)
    return out


class RawPort(MemoryPort):
    """A MemoryPort that hands headerless DATA over as ``Link.raw_runs`` does."""

    async def recv(self) -> Sequence[P.Message]:
        return to_runs(await super().recv())


def pair(raw: bool) -> tuple[MemoryPort, MemoryPort]:
    a: MemoryPort = RawPort() if raw else MemoryPort()
    b = MemoryPort()
    a.peer, b.peer = b, a
    return a, b


async def started(raw: bool, config: HostConfig,
                  agent_window: tuple[int, int] | None = None) -> tuple[Host, FakeAgent]:
    """A started Host on one queue (a raw or a message port) and its fake agent."""
    a, b = pair(raw)
    agent = FakeAgent([b])
    if agent_window is not None:
        agent.window = agent_window  # what the host may send per connection
    host = Host([a], config, run_timer=False)
    start = asyncio.create_task(host.start())
    await agent.wait_for(P.Hello)
    await agent.hello()
    await start
    return host, agent


def run_both(fn: Callable[[bool], Awaitable[Any]]) -> Any:
    """``fn(raw)`` with runs and without: the outcomes must be equal."""
    grouped = asyncio.run(asyncio.wait_for(fn(True), 10))
    reference = asyncio.run(asyncio.wait_for(fn(False), 10))
    assert grouped == reference
    return grouped


def req(cid: int, msgid: int, method: str, *params: Any) -> P.Data:
    return P.Data(cid, msgpack.packb([0, msgid, method, list(params)]))


def note(cid: int, method: str, *params: Any) -> P.Data:
    return P.Data(cid, msgpack.packb([2, method, list(params)]))


class Rig:
    """Host + fake agent + Server over one queue."""

    def __init__(self, host: Host, agent: FakeAgent, server: Server, gate: asyncio.Event,
                 lid: int, task: asyncio.Task[None]) -> None:
        self.host, self.agent, self.server, self.gate = host, agent, server, gate
        self.lid, self.task = lid, task
        self.notes: list[Any] = []

    @classmethod
    async def start(cls, raw: bool, config: ServerConfig | None = None,
                    host_config: HostConfig | None = None) -> Rig:
        host, agent = await started(
            raw, dataclasses.replace(host_config or HostConfig(), close_timeout=0.05))
        gate = asyncio.Event()
        app = make_app(gate)
        rig: Rig

        @app.notification
        def remember(x: Any) -> None:
            rig.notes.append(x)

        server = Server(app, config)
        lst = await host.listen(0, "msgpack-rpc")
        task = asyncio.get_running_loop().create_task(server.serve(lst))
        rig = cls(host, agent, server, gate, lst.listener_id, task)
        return rig

    async def connect(self, *cids: int) -> None:
        for cid in cids:
            await self.agent.send(0, P.NewConnection(cid, self.lid, "127.0.0.1", cid))
        await settle()

    def replies(self, cid: int) -> list[Any]:
        """The values the client would read: a DATA may carry several joined
        replies (HostConfig.coalesce_replies)."""
        stream = msgpack.Unpacker()
        for m in self.agent.of_type(P.Data):
            if isinstance(m, P.Data) and m.conn_id == cid:
                stream.feed(m.payload)
        return list(stream)

    def granted(self, cid: int) -> tuple[int, int]:
        cs = [m for m in self.agent.of_type(P.Credit)
              if isinstance(m, P.Credit) and m.conn_id == cid]
        return sum(c.messages for c in cs), sum(c.bytes for c in cs)

    def accounted(self, cid: int) -> tuple[int, int]:
        """Credit granted back plus credit the host holds pending (inline_grant_rule's HOLD)."""
        g = self.granted(cid)
        w = self.host._conns[cid]._rwin
        return g[0] + w.pending_messages, g[1] + w.pending_bytes

    async def drain_credit(self) -> None:
        await asyncio.sleep(self.host.config.credit_delay * 3)
        await settle()

    async def finish(self) -> None:
        await self.server.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.host.close()
        await self.agent.close()


def nbytes(*msgs: P.Data) -> int:
    return sum(len(m.payload) for m in msgs)


# -- runs mixing connections and control messages ---------------------------------


def test_runs_mixing_connections_and_control_messages() -> None:
    async def scenario(raw: bool) -> Any:
        rig = await Rig.start(raw)
        await rig.connect(5, 6, 7)
        batch: list[P.Message] = [
            *(req(5, i, "echo", i) for i in range(4)),   # a run of 4
            req(6, 1, "echo", "a"),                      # a run of 1
            *(req(5, i, "echo", i) for i in range(4, 6)),  # 5 again: a new run
            P.Credit(5, 1, 10),                          # a control message cuts the run
            req(5, 6, "echo", 6), req(5, 7, "boom"), note(5, "remember", "n"),
            req(5, 8, "echo", 8),
            *(req(7, i, "echo", -i) for i in range(8)),
            P.Data(6, b"\x00\x00hdr" + msgpack.packb([0, 9, "echo", [9]]), 5),  # ULP header
        ]
        await rig.agent.send(0, *batch)
        await settle()
        await rig.drain_credit()
        data = [m for m in batch if isinstance(m, P.Data)]
        out = {cid: rig.replies(cid) for cid in (5, 6, 7)}
        credit = {cid: rig.accounted(cid) for cid in (5, 6, 7)}
        sent = {cid: (sum(1 for m in data if m.conn_id == cid),
                      nbytes(*(m for m in data if m.conn_id == cid))) for cid in (5, 6, 7)}
        buffered = [rig.host._conns[c].buffered for c in (5, 6, 7)]
        inline = rig.server.dispatcher.inline_handled
        stats = dataclasses.replace(rig.host.stats, close_reasons={})
        notes = list(rig.notes)
        await rig.finish()
        # everything inline was answered at once, in order, and all credit is
        # accounted for (granted back, or held while the agent has plenty)
        assert [r[1] for r in out[5]] == list(range(9)) and out[5][7][2]["code"] == "HANDLER_ERROR"
        assert out[7] == [[1, i, None, -i] for i in range(8)]
        assert [r[1] for r in out[6]] == [1, 9]  # the ULP-header message: the task path
        assert notes == ["n"]
        assert credit == sent and buffered == [(0, 0)] * 3
        assert inline == (4 + 2 + 4 + 8 if raw else 0)  # the runs went through dispatch_many
        # a run's replies go joined (HostConfig.coalesce_replies): one DATA
        # per run of 5 (three), 7, the run of one of 6, and 6's task-path call
        assert stats.messages_out == (6 if raw else 19)
        return out, credit, stats.messages_in, stats.bytes_in, stats.bytes_out

    run_both(scenario)


# -- the window: an overrun inside a run breaks on the same message -----------------


@pytest.mark.parametrize("hooked", [True, False])
def test_a_run_that_overruns_the_message_window_breaks_on_the_same_message(
        hooked: bool) -> None:
    async def scenario(raw: bool) -> Any:
        cfg = HostConfig(window_messages=4, close_timeout=0.05)
        if hooked:
            rig = await Rig.start(raw, host_config=cfg)
            await rig.connect(5, 6)
            conn = rig.host._conns[5]
            host, agent = rig.host, rig.agent
        else:
            host, agent = await started(raw, cfg)
            lst = await host.listen(0, "length")
            await agent.send(0, P.NewConnection(5, lst.listener_id, "127.0.0.1", 1))
            conn = await lst.accept()
        if hooked:
            # inline calls give credit back as they go (two at half the window,
            # here after the second), async ones hold it: the 7th overruns
            run = [req(5, 0, "echo", 0), req(5, 1, "echo", 1),
                   *(req(5, i, "slow", i) for i in range(2, 6)), req(5, 6, "echo", 6)]
        else:  # six on a window of four, nothing consumed: the 5th overruns
            run = [req(5, i, "echo", i) for i in range(6)]
        await agent.send(0, *run, *(req(6, i, "echo", i) for i in range(2)))
        await settle()
        st = host.stats
        closes = agent.of_type(P.Close)
        outcome: list[Any] = [st.credit_violations, st.messages_in, closes, conn.state]
        if hooked:
            outcome += [rig.replies(5), rig.replies(6), conn.buffered,
                        rig.server.limits.inflight()]
            await rig.finish()
        else:
            got = [await conn.recv() for _ in range(4)]
            with pytest.raises(ConnectionBrokenError) as ei:
                await conn.recv()
            outcome += [[m.payload if m else None for m in got], ei.value.reason]
            await host.close()
            await agent.close()
        assert outcome[0] == 1 and closes == [P.Close(5, abort=True)]
        if hooked:
            assert [r[1] for r in outcome[4]] == [0, 1] and len(outcome[5]) == 2
            # the 7th broke it: 2 inline, 4 queued, 1 refused; the server then
            # ends the broken connection: the 4 queued calls are cancelled
            # (before they ran) and give back their credit and slots
            assert outcome[1] == 6 + 2 and outcome[6] == (0, 0) and outcome[7] == 0
        return outcome

    run_both(scenario)


def test_a_run_that_overruns_the_byte_window_or_the_size_limit() -> None:
    async def scenario(raw: bool) -> Any:
        cfg = HostConfig(window_messages=64, window_bytes=100, max_message_size=60,
                         close_timeout=0.05)
        host, agent = await started(raw, cfg)
        lst = await host.listen(0, "length")
        for cid in (5, 6):
            await agent.send(0, P.NewConnection(cid, lst.listener_id, "127.0.0.1", cid))
        c5, c6 = await lst.accept(), await lst.accept()
        # 5: 40 + 40 fit in 100 bytes, the third does not; 6: one over max_message_size
        await agent.send(0, *(P.Data(5, bytes([i]) * 40) for i in range(3)),
                         P.Data(6, b"a" * 10), P.Data(6, b"b" * 61), P.Data(6, b"c"))
        await settle()
        out = [host.stats.credit_violations, c5.buffered, c6.buffered,
               [await c5.recv() for _ in range(2)], await c6.recv()]
        for c in (c5, c6):
            with pytest.raises(ConnectionBrokenError):
                await c.recv()
        await host.close()
        await agent.close()
        assert out[0] == 2 and out[1] == (2, 80) and out[2] == (1, 10)
        return out

    run_both(scenario)


# -- a run cut by a deferred call ------------------------------------------------------


@pytest.mark.parametrize("cut", ["slow", "nope", "malformed-args"])
def test_a_run_cut_by_a_deferred_call_keeps_order_and_every_reply(cut: str) -> None:
    async def scenario(raw: bool) -> Any:
        rig = await Rig.start(raw)
        await rig.connect(5, 6)
        deferred = (req(5, 3, "slow", 3) if cut == "slow" else req(5, 3, "nope") if
                    cut == "nope" else P.Data(5, msgpack.packb([0, 3, "echo", {"y": 1}])))
        await rig.agent.send(0, req(5, 1, "echo", 1), req(5, 2, "echo", 2), deferred,
                             req(5, 4, "echo", 4), req(5, 5, "slow", 5), req(5, 6, "echo", 6),
                             *(req(6, i, "echo", i) for i in range(3)))
        await settle()
        before_gate = [r[1] for r in rig.replies(5)]
        rig.gate.set()
        await settle()
        await rig.drain_credit()
        out: list[Any] = [before_gate, [r[1] for r in rig.replies(5)], [r[1] for r in rig.replies(6)],
               rig.granted(5)[0], rig.host._conns[5].buffered, rig.server.limits.inflight()]
        await rig.finish()
        assert sorted(out[1]) == [1, 2, 3, 4, 5, 6]  # every call answered once
        assert out[2] == [0, 1, 2] and out[3] == 6 and out[4] == (0, 0) and out[5] == 0
        return out

    out = run_both(scenario)
    # calls start in arrival order: 1 and 2 inline, then the task path in order
    assert out[0][:2] == [1, 2]
    if cut != "slow":
        assert out[0] == [1, 2, 3, 4, 6]  # 5 runs concurrently, waiting for the gate


# -- limits ----------------------------------------------------------------------------


def _watch_peak(limits: InflightLimits) -> list[int]:
    peak = [0]
    take = limits._take

    def watched(conn_id: int) -> None:
        take(conn_id)
        peak[0] = max(peak[0], limits._by_conn.get(conn_id, 0))

    limits._take = watched  # type: ignore[method-assign]
    return peak


@pytest.mark.parametrize("coalesce", [0, 12])
@pytest.mark.parametrize("per_connection", [2, 3, 8])
def test_late_replies_hold_slots_within_the_limits(per_connection: int, coalesce: int) -> None:
    async def scenario(raw: bool) -> Any:
        rig = await Rig.start(raw, ServerConfig(max_inflight_per_connection=per_connection),
                              HostConfig(window_messages=16, credit_delay=0.005,
                                         coalesce_replies=coalesce))
        peak = _watch_peak(rig.server.limits)
        await rig.connect(5, 6)
        conn: OffloadConnection = rig.host._conns[5]
        conn._swin.messages = 1  # the agent lets the host send one reply only
        reqs = [req(5, i, "echo", i) for i in range(6)]
        await rig.agent.send(0, *reqs, *(req(6, i, "echo", i) for i in range(3)))
        await settle()
        held: list[Any] = [conn.buffered, rig.server.limits.inflight(), [r[1] for r in rig.replies(5)]]
        await rig.agent.send(0, P.Credit(5, 16, 1 << 16))
        await settle()
        await rig.drain_credit()
        out: list[Any] = [held, [r[1] for r in rig.replies(5)], len(rig.replies(6)), conn.buffered,
               rig.server.limits.inflight(), rig.granted(5), peak[0]]
        await rig.finish()
        # one DATA went at once; the rest wait for credit, each keeping a
        # request's credit meanwhile. Joined, a DATA holds two 5-byte replies:
        # only a run served whole (raw, and the limits have room for all 6),
        # since message by message each reply goes alone
        joined = raw and coalesce and per_connection >= 6
        assert held[2] == ([0, 1] if joined else [0])
        assert held[0][0] == (2 if joined else 5)
        assert out[1] == list(range(6)) and out[2] == 3  # every reply, in order
        assert out[3] == (0, 0) and out[4] == 0 and out[5] == (6, nbytes(*reqs))
        assert out[6] <= per_connection
        return out[1:6]

    run_both(scenario)


def test_the_server_wide_limit_holds_runs_too() -> None:
    async def scenario(raw: bool) -> Any:
        rig = await Rig.start(raw, ServerConfig(max_inflight_total=2))
        await rig.connect(5, 6)
        await rig.agent.send(0, req(5, 1, "slow", 1), req(5, 2, "slow", 2))
        await settle()
        await rig.agent.send(0, *(req(6, i, "echo", i) for i in range(3)))
        await settle()
        stuck = [rig.replies(6), rig.server.limits.inflight(), rig.host._conns[6].buffered[0]]
        rig.gate.set()
        await settle()
        out = [stuck, [r[1] for r in rig.replies(5)], [r[1] for r in rig.replies(6)]]
        await rig.finish()
        assert stuck == [[], 2, 3] and out[2] == [0, 1, 2]
        return out

    run_both(scenario)


# -- send_many_nowait --------------------------------------------------------------------


def test_send_many_nowait_sends_the_prefix_the_window_allows() -> None:
    async def scenario() -> None:
        host, agent = await started(True, HostConfig(close_timeout=0.05), agent_window=(3, 10))
        lst = await host.listen(0, "length")
        await agent.send(0, P.NewConnection(5, lst.listener_id, "127.0.0.1", 1))
        conn = await lst.accept()
        assert conn.send_many_nowait([b"1234", b"5678", b"90ab"]) == 2  # bytes: 12 > 10
        assert conn.send_credit == (1, 2)
        assert conn.send_many_nowait([b"xyz"]) == 0 and conn.send_credit == (1, 2)
        assert conn.send_many_nowait([b"z", b"y"]) == 1 and conn.send_credit == (0, 1)
        assert conn.send_many_nowait([b""]) == 0
        await settle()
        got = [m.payload for m in agent.of_type(P.Data)]  # type: ignore[union-attr]
        assert got == [b"1234", b"5678", b"z"]
        assert host.stats.messages_out == 3 and host.stats.bytes_out == 9
        await agent.send(0, P.Credit(5, 10, 100))
        await settle()
        assert conn.send_many_nowait([b"a", b"b", b"c"]) == 3  # all in one window update
        assert conn.send_credit == (7, 98)
        await host.close()
        await agent.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


# -- credit arithmetic of runs (property) -----------------------------------------------

# per message: how the hook ends it, and when the application consumes it
_ACTION = st.sampled_from([HOOK_DONE, HOOK_DONE, HOOK_OWNED, HOOK_DEFER])


@st.composite
def _script(draw: st.DrawFn) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    window_messages = draw(st.integers(1, 12))
    window_bytes = draw(st.integers(64, 400))
    batches = draw(st.lists(
        st.lists(st.tuples(st.integers(5, 7), st.integers(4, 64), _ACTION), max_size=24),
        min_size=1, max_size=8))
    return window_messages, window_bytes, batches


async def _credit_run(raw: bool, window_messages: int, window_bytes: int,
                      batches: list[list[tuple[int, int, int]]],
                      consume_every: int) -> dict[int, tuple[int, int]]:
    """Deliver the script through Host._on_batch with stub hooks; the agent
    stays within its credit; the application consumes now and then. Checks
    the window invariant after every step; returns what was granted."""
    cfg = HostConfig(window_messages=window_messages, window_bytes=window_bytes,
                     max_message_size=64)
    host = Host([MemoryPort()], cfg, run_timer=False)
    host._agent_window = (64, 1 << 20)
    loop = asyncio.get_running_loop()
    conns: dict[int, OffloadConnection] = {}
    plan: dict[bytes, int] = {}  # what the hook does with each (unique) payload
    seq = itertools.count()
    sent = {cid: (0, 0) for cid in (5, 6, 7)}
    owned: dict[int, list[int]] = {}
    for cid in (5, 6, 7):
        conn = conns[cid] = host._conns[cid] = OffloadConnection(
            host, cid, None, "", ConnState.OPEN)
        conn._rx_waiter = loop.create_future()  # parked in recv()
        owned[cid] = []

        def single(payload: bytes, cid: int = cid) -> int:
            action = plan.pop(payload)
            if action == HOOK_OWNED:
                owned[cid].append(len(payload))
            return action

        def batch(payloads: list[bytes], single: Callable[[bytes], int] = single,
                  ) -> tuple[int, int, int]:
            o = ob = 0
            for i, p in enumerate(payloads):
                r = single(p)
                if r == HOOK_DEFER:
                    return i, o, ob
                o += r == HOOK_OWNED
                ob += len(p) if r == HOOK_OWNED else 0
            return len(payloads), o, ob

        conn.set_message_hook(single)
        conn.set_batch_hook(batch)
    credit = {cid: [window_messages, window_bytes] for cid in conns}  # the agent's view
    granted = {cid: (0, 0) for cid in conns}

    def read_credits() -> None:
        items = host._outboxes[0].items
        while items:
            m = items.popleft()
            if isinstance(m, P.Credit):
                credit[m.conn_id][0] += m.messages
                credit[m.conn_id][1] += m.bytes
                g = granted[m.conn_id]
                granted[m.conn_id] = (g[0] + m.messages, g[1] + m.bytes)

    def check() -> None:
        for cid, c in conns.items():
            w = c._rwin
            assert w.outstanding_messages + w.buffered_messages + w.pending_messages \
                == window_messages
            assert w.outstanding_bytes + w.buffered_bytes + w.pending_bytes == window_bytes
            assert (w.outstanding_messages, w.outstanding_bytes) == tuple(credit[cid])
            assert min(w.outstanding_messages, w.buffered_messages, w.pending_messages,
                       w.buffered_bytes, w.pending_bytes) >= 0
            # never more granted back than the application is done with
            assert granted[cid][0] <= sent[cid][0] - w.buffered_messages
            assert granted[cid][1] <= sent[cid][1] - w.buffered_bytes

    def consume(cid: int) -> None:
        c = conns[cid]
        while (m := c.recv_nowait()) is not None:
            c.on_consumed(m.nbytes)
        for n in owned[cid]:
            c.on_consumed(n)
        owned[cid].clear()
        if not c._rx:
            c._rx_waiter = loop.create_future()  # back in recv()

    step = 0
    for spec in batches:
        msgs: list[Any] = []
        for cid, size, action in spec:
            # the agent sends only within the credit it holds (§5.1)
            if credit[cid][0] < 1 or size > credit[cid][1]:
                continue
            credit[cid][0] -= 1
            credit[cid][1] -= size
            payload = next(seq).to_bytes(4, "big") + bytes(size - 4)
            plan[payload] = action
            sent[cid] = (sent[cid][0] + 1, sent[cid][1] + size)
            msgs.append(P.Data(cid, payload))
        host._on_batch(0, to_runs(msgs) if raw else msgs)
        read_credits()
        check()
        step += 1
        if step % consume_every == 0:
            for cid in conns:
                consume(cid)
            read_credits()
            check()
    assert host.stats.credit_violations == 0 and host.stats.protocol_errors == 0
    # eventually: the application is done with everything, the timer runs
    for cid in conns:
        consume(cid)
    host._credit_sweep()
    host._stop_credit_timer()
    read_credits()
    check()
    for cid, c in conns.items():
        w = c._rwin
        assert c.buffered == (0, 0)
        # what is not granted back is held only while the agent can still send
        # any message (one message and one largest message's bytes of credit),
        # and never half a window of it (inline_grant_rule's HOLD)
        assert (granted[cid][0] + w.pending_messages, granted[cid][1] + w.pending_bytes) \
            == sent[cid]  # nothing lost (never more than consumed: checked all along)
        assert w.outstanding_messages >= 1 and w.outstanding_bytes >= cfg.max_message_size
        assert w.pending_messages * 2 < window_messages and w.pending_bytes * 2 < window_bytes
    return granted


@settings(max_examples=300, deadline=None)
@given(_script(), st.integers(1, 3))
def test_run_credit_never_over_grants_and_never_leaves_the_agent_blocked(
        script: tuple[int, int, list[list[tuple[int, int, int]]]], consume_every: int) -> None:
    wm, wb, batches = script

    async def both() -> None:
        # runs, and the reference (message by message): grants differ in
        # timing (a run's go back at once), so the agent may send other
        # messages; either way nothing is lost and the agent is never left
        # unable to send
        await _credit_run(True, wm, wb, batches, consume_every)
        await _credit_run(False, wm, wb, batches, consume_every)

    asyncio.run(both())
