"""The run engine (``mux_rpc/_rpcfast.c``, ``RunEngine``; ``Host(run_engine=)``)
against the Python chain it stands for.

Each scenario drives the same received batches - runs ``(conn_id,
[payloads])`` as ``Link.raw_runs`` hands them over, mixed with control
messages - straight into ``Host._on_batch`` of a Host served by a Server over
the real xport link (``xport.testing``'s memory backend), once with the engine
and once without (the reference), and compares everything observable right
after each batch (before any task runs) and at the end: the messages each
batch queued for the agent (link queue and outbox together, per connection,
DATA and CREDIT in order), windows, host and server stats, limits, what
``recv()`` would return, the credit-dirty set, the replies and credit the
agent finally received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux_rpc import App, Server, ServerConfig
from mux_rpc._dispatch import _rpcfast
from mux_rpc._linkport import link_port
from mux_rpc._offload import Host, HostConfig, OffloadConnection
from xport import _protocol as P
from xport._link import LinkConfig
from xport.testing import memory_backend_pair

from ._fake import FakeAgent
from .test_offload import settle

# scripts/setup.sh always builds the engine: a missing build fails (Host(run_engine=True)
# raises), as in tests/mux_rpc/test_rpcfast.py; only a run that forces the Python chain skips
needs_engine = pytest.mark.skipif(
    bool(os.environ.get("MUX_RPC_PURE_PYTHON")),
    reason="MUX_RPC_PURE_PYTHON set: no run engine to compare (the Python chain runs alone)")

_CREDIT_BODY = struct.Struct("!II")


class Stop(BaseException):
    """Not an Exception: goes through everything, as KeyboardInterrupt would."""


class Nasty(Exception):
    """An Exception whose text cannot be made (its error reply says so)."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


def make_app(gate: asyncio.Event, notes: list[Any]) -> App:
    app = App()

    @app.method
    def echo(x: Any) -> Any:
        return x

    @app.method
    def boom() -> None:
        raise ValueError("no")

    @app.method
    def nasty() -> None:
        raise Nasty

    @app.method
    def halt() -> None:
        raise Stop

    @app.method
    def odd() -> Any:
        return {1, 2}  # msgpack packs no set: the reply is an error (BAD_RESULT)

    @app.method
    async def slow(x: Any) -> Any:
        await gate.wait()
        return x

    @app.notification
    def remember(x: Any) -> None:
        notes.append(x)

    return app


def agent_cfg(**kw: Any) -> LinkConfig:
    return LinkConfig(role=P.Role.AGENT, local_mac=b"\x02\x00\x00\x00\x00\x01",
                      peer_mac=b"\x02\x00\x00\x00\x00\x02", **kw)


@dataclasses.dataclass(frozen=True)
class Setup:
    conns: int = 3
    window: tuple[int, int] = (8, 4096)
    """The host's per-connection window (messages, bytes)."""
    agent_window: tuple[int, int] = (64, 1 << 20)
    """The agent's: what the host may send per connection."""
    per_conn: int = 128
    total: int = 8192
    coalesce: int = 1024
    """HostConfig.coalesce_replies: how many bytes of a run's replies go joined."""


class Rig:
    """A Host (engine or not) + Server over a real link to a fake agent."""

    host: Host
    server: Server
    agent: FakeAgent
    task: asyncio.Task[None]

    def __init__(self, setup: Setup, engine: bool, receiver: bool = False,
                 count: bool = True) -> None:
        self.setup = setup
        self.engine = engine
        self.count = count  # wrap host._engine to count what it takes
        # batches fed to the engine's C receiver (RunEngine.receiver: what the
        # link's read callback calls) instead of Host._on_batch
        self.via_receiver = receiver
        self.receiver: Any = None
        self.gate = asyncio.Event()
        self.notes: list[Any] = []
        self.conns: dict[int, OffloadConnection] = {}
        self.handled = 0  # items the engine took off the batches
        self.snaps: list[Any] = []

    async def start(self) -> None:
        s = self.setup
        cfg = HostConfig(window_messages=s.window[0], window_bytes=s.window[1],
                         max_message_size=min(1024, s.window[1]), credit_delay=3600.0,
                         close_timeout=3600.0,  # no timer may fire within a scenario
                         coalesce_replies=s.coalesce)
        a, b = memory_backend_pair(rx_buffers=64, frame_size=1514)
        # keepalive timers far away: a stalled machine must not lose the link
        port = link_port(a, max_message_size=cfg.max_message_size, keepalive_interval=60.0,
                         peer_timeout=600.0, window_messages=s.window[0],
                         window_bytes=s.window[1])
        agent_port = link_port(b, link_config=agent_cfg(
            window_messages=s.agent_window[0], window_bytes=s.agent_window[1],
            max_message_size=min(1024, s.agent_window[1]), keepalive_interval=60.0,
            peer_timeout=600.0))
        self.agent = FakeAgent([agent_port])  # type: ignore[list-item]
        self.host = Host([port], cfg, run_timer=False, run_engine=self.engine)
        assert (self.host._engine is not None) == self.engine
        if self.engine and self.count:
            run = self.host._engine
            assert run is not None

            def counted(q: int, msgs: list[Any]) -> list[Any]:
                left = run(q, msgs)
                self.handled += len(msgs) - len(left)
                return left

            self.host._engine = counted
            if self.via_receiver:
                self.receiver = self.host._run_engine.receiver(0)
        await self.host.start()
        self.server = Server(make_app(self.gate, self.notes),
                             ServerConfig(max_inflight_per_connection=s.per_conn,
                                          max_inflight_total=s.total))
        lst = await self.host.listen(0, "msgpack-rpc")
        self.task = asyncio.get_running_loop().create_task(self.server.serve(lst))
        for cid in range(1, s.conns + 1):
            await self.agent.send(0, P.NewConnection(cid, lst.listener_id, "127.0.0.1", cid))
        for _ in range(500):
            await settle()
            if all(c in self.host._conns and self.host._conns[c]._rx_waiter is not None
                   for c in range(1, s.conns + 1)):
                break
        else:
            raise AssertionError("the server's connections never parked in recv()")
        self.conns = {c: self.host._conns[c] for c in range(1, s.conns + 1)}
        assert all(c._fast is not None for c in self.conns.values()) == (_rpcfast is not None)

    # -- one batch, and what it did ----------------------------------------------------
    def feed(self, items: list[Any], *, pushback: bool = False, outbox_busy: bool = False) -> Any:
        host = self.host
        port = host._ports[0]
        alink = port.alink  # type: ignore[attr-defined]
        link = alink.link
        if outbox_busy:
            host._send_ctl(0, P.Keepalive())
        mark_link, mark_ob = len(link._queue), len(host._outboxes[0].items)
        max_queued = alink._max_queued
        if pushback:
            alink._max_queued = -1  # the link pushes back everything
        raised = None
        try:
            batch = [(m[0], list(m[1])) if type(m) is tuple else m for m in items]
            if self.receiver is not None:
                self.receiver(batch)
            else:
                host._on_batch(0, batch)
        except Stop:
            raised = "Stop"
        finally:
            alink._max_queued = max_queued
        queued = [wire_of_entry(e) for e in list(link._queue)[mark_link:]]
        queued += [wire_of_msg(m) for m in list(host._outboxes[0].items)[mark_ob:]]
        snap = (raised, per_conn_wire(queued), self.state())
        self.snaps.append(snap)
        return snap

    def state(self) -> Any:
        host, server = self.host, self.server
        conns = {}
        for cid, c in self.conns.items():
            r, s = c._rwin, c._swin
            conns[cid] = (c.state.value, r.outstanding_messages, r.outstanding_bytes,
                          r.buffered_messages, r.buffered_bytes, r.pending_messages,
                          r.pending_bytes, s.messages, s.bytes, [m.payload for m in c._rx],
                          c._rx_waiter is not None)
        hs = dataclasses.asdict(host.stats)
        return (conns, hs, dataclasses.asdict(server.stats), server.limits._total,
                sorted(server.limits._by_conn.items()), list(server.limits._waiters),
                sorted(c.conn_id for c in host._credit_dirty), host._credit_timer is not None,
                server.dispatcher.inline_handled, list(self.notes))

    async def finish(self) -> Any:
        """Let everything run, grant what is held back, and report what the agent got."""
        self.gate.set()
        for _ in range(5):
            await settle()
        if self.host._credit_timer is not None:
            self.host._credit_timer.cancel()
            self.host._credit_sweep()
        for _ in range(5):
            await settle()
        got = [wire_of_msg(m) for _, m in self.agent.received
               if isinstance(m, (P.Data, P.Credit))]
        end = (per_conn_wire(got), self.state())
        await self.host.close()  # first: it ends the closes that wait for the agent
        await self.server.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.agent.close()
        return end


def wire_of_entry(e: tuple[int, int, int, Any]) -> tuple[Any, ...]:
    kind, cid, _hl, body = e
    if kind == int(P.MessageType.CREDIT):
        return ("C", cid, *_CREDIT_BODY.unpack(body))
    assert kind == int(P.MessageType.DATA)
    return ("D", cid, bytes(body))


def wire_of_msg(m: Any) -> tuple[Any, ...]:
    if isinstance(m, P.Credit):
        return ("C", m.conn_id, m.messages, m.bytes)
    if isinstance(m, P.Data):
        return ("D", m.conn_id, bytes(m.payload))
    return ("X", type(m).__name__)


def per_conn_wire(entries: list[tuple[Any, ...]]) -> dict[Any, list[Any]]:
    """DATA in order per connection, and CREDIT in order per connection (the
    engine sends a batch's CREDITs after its DATA: the two never cross in one
    connection's own stream of either kind)."""
    out: dict[Any, list[Any]] = {}
    for e in entries:
        out.setdefault((e[0], e[1]), []).append(e[2:])
    return out


# -- scenarios -----------------------------------------------------------------------------

KINDS = ["echo", "echo", "echo", "echo", "note", "boom", "nasty", "slow", "bad", "big", "halt",
         "odd"]


def payload(kind: str, msgid: int) -> bytes:
    if kind == "echo":
        return msgpack.packb([0, msgid, "echo", ["x" * (msgid % 50)]])
    if kind == "note":
        return msgpack.packb([2, "remember", [msgid]])
    if kind == "boom":
        return msgpack.packb([0, msgid, "boom", []])
    if kind == "nasty":
        return msgpack.packb([0, msgid, "nasty", []])
    if kind == "halt":
        return msgpack.packb([0, msgid, "halt", []])
    if kind == "odd":
        return msgpack.packb([0, msgid, "odd", []])
    if kind == "slow":
        return msgpack.packb([0, msgid, "slow", [msgid]])
    if kind == "bad":
        return b"\xc1"  # never valid msgpack: the task path closes the connection
    if kind == "big":
        return msgpack.packb([0, msgid, "echo", ["y" * 1100]])  # over max_message_size
    raise AssertionError(kind)


def build(batches: list[Any]) -> list[Any]:
    """Scenario items -> the batches as the link hands them over (msgids numbered)."""
    msgid = iter(range(1, 10**6))
    out = []
    for items, pushback, outbox_busy, settle_after in batches:
        msgs: list[Any] = []
        for it in items:
            if it[0] == "run":
                msgs.append((it[1], [payload(k, next(msgid)) for k in it[2]]))
            elif it[0] == "credit":
                msgs.append(P.Credit(it[1], it[2], it[3]))
            elif it[0] == "data":
                msgs.append(P.Data(it[1], payload("echo", next(msgid))))
            else:
                msgs.append(P.Keepalive())
        out.append((msgs, pushback, outbox_busy, settle_after))
    return out


async def play(setup: Setup, batches: list[Any], engine: bool,
               receiver: bool = False) -> tuple[Any, int]:
    rig = Rig(setup, engine, receiver)
    await rig.start()
    for msgs, pushback, outbox_busy, settle_after in batches:
        rig.feed(msgs, pushback=pushback, outbox_busy=outbox_busy)
        if settle_after:
            await settle()
    end = await rig.finish()
    return (rig.snaps, end), rig.handled


def compare(setup: Setup, batches: list[Any]) -> int:
    """Every way - the engine from Host._on_batch, the engine's C receiver,
    the Python chain; equal outcomes; the number of items the engine handled."""
    got, handled = asyncio.run(asyncio.wait_for(play(setup, batches, True), 20))
    want, none = asyncio.run(asyncio.wait_for(play(setup, batches, False), 20))
    direct, _ = asyncio.run(asyncio.wait_for(play(setup, batches, True, receiver=True), 20))
    assert none == 0
    for i, (g, w, d) in enumerate(zip(got[0], want[0], direct[0], strict=True)):
        assert g == w, f"after batch {i}"
        assert d == w, f"after batch {i}, through the receiver"
    assert got[1] == want[1] == direct[1], "at the end"
    return handled


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Setup, list[Any]]:
    conns = draw(st.integers(1, 4))
    setup = Setup(
        conns=conns,
        window=(draw(st.integers(1, 12)), draw(st.sampled_from([1024, 1500, 4096]))),
        agent_window=(draw(st.integers(1, 16)), draw(st.sampled_from([200, 800, 1 << 20]))),
        per_conn=draw(st.integers(1, 12)),
        total=draw(st.integers(1, 24)),
        coalesce=draw(st.sampled_from([0, 12, 40, 1024])),
    )
    cid = st.integers(1, conns + 1)  # conns + 1: an unknown connection
    item = st.one_of(
        st.tuples(st.just("run"), cid, st.lists(st.sampled_from(KINDS), min_size=1, max_size=6)),
        st.tuples(st.just("run"), cid, st.lists(st.just("echo"), min_size=1, max_size=6)),
        st.tuples(st.just("credit"), cid, st.integers(0, 4), st.integers(0, 400)),
        st.tuples(st.just("data"), cid),
        st.tuples(st.just("keepalive")),
    )
    batches = draw(st.lists(st.tuples(
        st.lists(item, min_size=1, max_size=8),
        st.booleans(),                                   # the link pushes back
        st.sampled_from([False, False, False, True]),    # something waits in the outbox
        st.booleans(),                                   # tasks run before the next batch
    ), min_size=1, max_size=5))
    return setup, batches


@needs_engine
@settings(max_examples=40, deadline=None)
@given(scenarios())
def test_engine_matches_the_python_chain(scenario: tuple[Setup, list[Any]]) -> None:
    setup, batches = scenario
    compare(setup, build(batches))


# -- targeted cases (each also checks that the engine did take the runs) -----------------


def runs(*spec: tuple[int, list[str]]) -> tuple[list[Any], bool, bool, bool]:
    return ([("run", c, kinds) for c, kinds in spec], False, False, False)


@needs_engine
def test_plain_runs_are_all_taken_by_the_engine() -> None:
    batch = runs((1, ["echo"] * 3), (2, ["echo"]), (3, ["echo", "note", "echo"]), (1, ["echo"]))
    handled = compare(Setup(), build([batch, batch, batch]))
    assert handled == 12


@needs_engine
def test_credit_granted_at_half_a_window_or_held() -> None:
    # window 8: 3 messages hold the credit back, the 4th grants 4
    batches = [runs((1, ["echo"] * 3)), runs((1, ["echo"])), runs((2, ["echo"] * 5))]
    assert compare(Setup(window=(8, 4096)), build(batches)) == 3


@needs_engine
def test_agent_out_of_message_credit_grants_at_once() -> None:
    batches = [runs((1, ["echo"] * 2)), runs((1, ["echo"]))]
    assert compare(Setup(window=(2, 4096)), build(batches)) == 2


@needs_engine
@pytest.mark.parametrize("kind", ["slow", "bad", "boom", "nasty", "big", "odd"])
def test_a_run_cut_in_the_middle(kind: str) -> None:
    batch = runs((2, ["echo"]), (1, ["echo", "echo", kind, "echo"]), (1, ["echo"]))
    handled = compare(Setup(), build([batch, runs((2, ["echo"]))]))
    # connection 2's first run at least is the engine's (a message over the
    # size limit breaks connection 1, whose CLOSE then waits in the outbox)
    assert handled >= (1 if kind == "big" else 2)


@needs_engine
@pytest.mark.parametrize("coalesce", [0, 12, 40])
def test_replies_joined_in_several_messages(coalesce: int) -> None:
    # a run's replies, encoded end to end, cut into several joined DATA
    # messages (or, 0, one per reply), errors among them: as the chain does
    batch = runs((1, ["echo", "echo", "boom", "echo", "odd", "echo", "note", "echo"]),
                 (2, ["echo"] * 6))
    assert compare(Setup(coalesce=coalesce), build([batch, batch])) == 4  # every run


@needs_engine
def test_send_window_exhausted_goes_to_the_tail() -> None:
    batch = runs((1, ["echo"] * 5), (2, ["echo"] * 2), (1, ["echo"] * 2))
    assert compare(Setup(agent_window=(3, 1 << 20)), build([batch])) >= 1


@needs_engine
def test_agent_credit_in_place_wakes_a_waiting_sender_or_is_refused() -> None:
    # replies beyond the agent's window wait in a sender task; the agent's
    # CREDIT must wake it (the method's path), and a CREDIT beyond the largest
    # window is counted as a protocol error and not applied, as in the chain
    batches = [([("run", 1, ["echo"] * 5)], False, False, True),  # then the sender waits
               ([("credit", 1, 8, 4096)], False, False, True),
               ([("credit", 2, 0xFFFFFFFF, 1)], False, False, False),
               ([("credit", 2, 1, 10)], False, False, False)]
    compare(Setup(agent_window=(3, 1 << 20)), build(batches))


@needs_engine
def test_limits_near_full() -> None:
    batch = runs((1, ["slow", "slow"]), (1, ["echo"]), (2, ["echo"] * 3), (3, ["echo"]))
    compare(Setup(per_conn=2, total=4), build([batch, batch]))


@needs_engine
def test_pushback_and_a_busy_outbox() -> None:
    items = [("run", 1, ["echo"] * 4), ("run", 2, ["echo"]), ("run", 1, ["echo"])]
    assert compare(Setup(window=(8, 4096)), build([(items, True, False, True),
                                                   (items, False, False, False)])) == 6
    # something already waits in the outbox: nothing may overtake it
    assert compare(Setup(), build([(items, False, True, False)])) == 0


@needs_engine
def test_control_messages_keep_each_connections_order() -> None:
    items = [("run", 1, ["echo"]), ("credit", 1, 1, 10), ("run", 1, ["echo"]),
             ("run", 2, ["echo"]), ("data", 2), ("run", 2, ["echo"]), ("run", 3, ["echo"]),
             ("keepalive",), ("run", 3, ["echo"])]
    # 1: a CREDIT is added in place: all three; 2: the DATA object is left
    # (the message hook may run its call) and so is everything after it
    assert compare(Setup(), build([(items, False, False, False)])) == 4
    items = items[:4] + items[6:] + items[4:6]
    # now 3's runs come before it (a KEEPALIVE changes nothing)
    assert compare(Setup(), build([(items, False, False, False)])) == 6


@needs_engine
def test_a_base_exception_propagates_after_the_output_so_far() -> None:
    async def both(engine: bool) -> Any:
        rig = Rig(Setup(), engine)
        await rig.start()
        msgid = iter(range(1, 100))
        snap = rig.feed([(1, [payload("echo", next(msgid))]),
                         (2, [payload("echo", next(msgid)), payload("halt", next(msgid)),
                              payload("echo", next(msgid))]),
                         (3, [payload("echo", next(msgid))])])
        assert snap[0] == "Stop"
        return snap, await rig.finish()

    got = asyncio.run(both(True))
    assert got == asyncio.run(both(False))


def test_engine_is_used_exactly_when_the_accelerator_is() -> None:
    async def main() -> None:
        rig = Rig(Setup(conns=1), _rpcfast is not None)
        await rig.start()
        default = Host(rig.host._ports, rig.host.config, run_timer=False)
        assert (default._engine is not None) == (_rpcfast is not None)
        if _rpcfast is None:
            with pytest.raises(RuntimeError):
                Host(rig.host._ports, rig.host.config, run_timer=False, run_engine=True)
        await rig.finish()

    asyncio.run(main())


# -- the receiver (RunEngine.receiver): Host._on_batch in C on the read callback -----------


@needs_engine
def test_the_link_calls_the_receiver_only_with_the_hosts_own_engine() -> None:
    async def scenario() -> list[str]:
        rig = Rig(Setup(conns=1), engine=True, count=False)
        await rig.start()
        alink = rig.host._ports[0].alink  # type: ignore[attr-defined]
        own = type(alink._on_messages).__name__
        # its calls go through the receiver: served inline
        await rig.agent.send(0, P.Data(1, payload("echo", 7)), P.Data(1, payload("echo", 8)))
        for _ in range(50):
            await settle()
            if rig.server.dispatcher.inline_handled == 2:
                break
        handled = rig.server.dispatcher.inline_handled
        await rig.finish()
        return [own, str(handled)]

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == ["Receiver", "2"]


@needs_engine
def test_receiver_closed_host_clock_and_arguments() -> None:
    async def scenario() -> list[Any]:
        rig = Rig(Setup(conns=1), engine=True)
        await rig.start()
        host = rig.host
        alink = host._ports[0].alink  # type: ignore[attr-defined]
        # the rig wrapped host._engine (it counts): the link got the Python path
        wrapped = type(alink._on_messages).__name__
        receiver = host._run_engine.receiver(0)
        ticks = iter([100.0, 200.0])
        host._clock = lambda: next(ticks)
        batch = [(1, [payload("echo", 1), payload("echo", 2)])]
        receiver(list(batch))
        after_one = (host._last_rx, rig.server.dispatcher.inline_handled)
        host._closed = True  # closed: the batch is dropped, nothing runs, no clock
        receiver(list(batch))
        after_closed = (host._last_rx, rig.server.dispatcher.inline_handled)
        host._closed = False
        with pytest.raises(TypeError, match=r"receiver\(msgs\)"):
            receiver()
        with pytest.raises(TypeError, match="q is an int"):
            host._run_engine.receiver("0")
        await rig.finish()
        return [wrapped, after_one, after_closed]

    wrapped, after_one, after_closed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert wrapped == "partial"
    assert after_one == (100.0, 2) and after_closed == (100.0, 2)
