"""Joining a run's replies into fewer DATA messages (HostConfig.coalesce_replies):
the greedy rule of ``mux_rpc._offload.coalesce``, its C twin in the run
engine, and which connections it applies to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux_rpc._offload import Host, HostConfig, coalesce
from tests.host._fake import FakeAgent, port_pair
from xport import _protocol as P

try:
    from mux_rpc import _rpcfast
except ImportError:  # the pure-Python build
    _rpcfast = None  # type: ignore[assignment]

payload_lists = st.lists(st.binary(max_size=40), max_size=24)
limits = st.integers(min_value=-2, max_value=120)


def reference(payloads: list[bytes], limit: int) -> list[bytes]:
    """The rule, stated by indices: a message starts at i and takes payloads
    while their total stays within limit (at least one)."""
    if limit <= 0:
        return list(payloads)
    out, i = [], 0
    while i < len(payloads):
        j, total = i + 1, len(payloads[i])
        while j < len(payloads) and total + len(payloads[j]) <= limit:
            total += len(payloads[j])
            j += 1
        out.append(b"".join(payloads[i:j]))
        i = j
    return out


@given(payload_lists, limits)
def test_coalesce_is_the_greedy_rule_and_keeps_the_bytes(payloads: list[bytes],
                                                          limit: int) -> None:
    out = coalesce(payloads, limit)
    assert out == reference(payloads, limit)
    assert b"".join(out) == b"".join(payloads)
    # within the limit, except a payload that alone exceeds it
    assert all(len(m) <= limit or m in payloads for m in out)
    # nothing left to join: a second pass changes nothing
    assert coalesce(out, limit) == out
    if len(out) == len(payloads):
        assert out is payloads  # no copy when nothing joins


@pytest.mark.skipif(_rpcfast is None, reason="the C accelerator is not built")
@given(payload_lists, limits)
def test_the_run_engine_joins_as_python_does(payloads: list[bytes], limit: int) -> None:
    out = _rpcfast.coalesce(payloads, limit)
    assert out == coalesce(payloads, limit)
    assert (out is payloads) == (len(out) == len(payloads))


@pytest.mark.skipif(_rpcfast is None, reason="the C accelerator is not built")
def test_the_run_engine_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError, match="payload 1 is bytearray"):
        _rpcfast.coalesce([b"a", bytearray(b"b")], 10)


@pytest.mark.parametrize(("framer", "config", "want"), [
    ("msgpack-rpc", HostConfig(), [b"abc" * 3]),
    (" msgpack-rpc : x=1", HostConfig(), [b"abc" * 3]),   # the framer's name decides
    ("msgpack-rpc", HostConfig(coalesce_replies=6), [b"abcabc", b"abc"]),
    ("msgpack-rpc", HostConfig(coalesce_replies=0), [b"abc"] * 3),
    ("length", HostConfig(), [b"abc"] * 3),       # the agent frames each DATA
    ("nvme-tcp", HostConfig(), [b"abc"] * 3),
])
def test_connections_join_replies_only_where_the_framer_allows(
        framer: str, config: HostConfig, want: list[bytes]) -> None:
    async def scenario() -> Any:
        a, b = port_pair()
        agent = FakeAgent([b])
        host = Host([a], config, run_timer=False)
        start = asyncio.create_task(host.start())
        await agent.wait_for(P.Hello)
        await agent.hello()
        await start
        try:
            lst = await host.listen(0, framer)
            await agent.send(0, P.NewConnection(5, lst.listener_id, "127.0.0.1", 5))
            conn = await asyncio.wait_for(lst.accept(), 5)
            return conn.coalesce_replies([b"abc"] * 3)
        finally:
            await host.close()
            await agent.close()

    assert asyncio.run(scenario()) == want


def test_the_agents_maximum_message_size_bounds_a_join() -> None:
    async def scenario() -> Any:
        a, b = port_pair()
        agent = FakeAgent([b])
        host = Host([a], HostConfig(), run_timer=False)
        start = asyncio.create_task(host.start())
        await agent.wait_for(P.Hello)
        await agent.hello()
        await start
        try:
            lst = await host.listen(0, "msgpack-rpc")
            await agent.send(0, P.NewConnection(5, lst.listener_id, "127.0.0.1", 5))
            conn = await asyncio.wait_for(lst.accept(), 5)
            host.max_send_size = 7  # as if the agent's HELLO had said so
            return conn.coalesce_replies([b"abc"] * 3)
        finally:
            await host.close()
            await agent.close()

    assert asyncio.run(scenario()) == [b"abcabc", b"abc"]
