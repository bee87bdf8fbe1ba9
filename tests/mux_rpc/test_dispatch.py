"""The pure dispatch core: bytes in, reply bytes out, no I/O."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from muxrpc_apps import make_app

import mux_rpc
from mux_rpc import Dispatcher, PendingCall, ProtocolError

APP, NOTES = make_app()
D = Dispatcher(APP)

# msgpack values that survive a round trip unchanged with raw=False/use_bin_type
leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**64 - 1), c,
                                                        max_size=4),
    max_leaves=12,
)


def reply(req: list[Any]) -> list[Any]:
    out = D.dispatch(msgpack.packb(req, use_bin_type=True))
    assert isinstance(out, bytes)
    r = msgpack.unpackb(out, raw=False, strict_map_key=False)
    assert isinstance(r, list)
    return r


def run_pending(p: PendingCall) -> bytes | None:
    """Drive a coroutine that only yields bare (``asyncio.sleep(0)``), no loop needed."""
    for _ in range(10):
        try:
            p.coro.send(None)
        except StopIteration as stop:
            return D.complete(p, stop.value)
        except Exception as exc:  # noqa: BLE001 - what the server shell does too
            return D.fail(p, exc)
    raise AssertionError("coroutine kept suspending")


@given(st.lists(values, max_size=5), st.integers(0, 2**32 - 1))
def test_echo_round_trips_any_args(args: list[Any], msgid: int) -> None:
    assert reply([0, msgid, "echo", args]) == [1, msgid, None, args]


def test_prefixed_and_keyword_params() -> None:
    assert reply([0, 1, "kv.put", ["k", [1, 2]]]) == [1, 1, None, None]
    assert reply([0, 2, "kv.get", ["k"]]) == [1, 2, None, [1, 2]]
    assert reply([0, 3, "add", {"a": 2, "b": 3}]) == [1, 3, None, 5]
    assert reply([0, 4, b"add", [2]]) == [1, 4, None, 2]  # old clients: raw method names


@pytest.mark.parametrize("req, code, text", [
    ([0, 1, "nope", []], "NO_METHOD", "no method 'nope'"),
    ([0, 1, "note", []], "NO_METHOD", "registered as a notification"),
    ([0, 1, "add", []], "BAD_ARGS", "takes 1 to 2 argument(s), 0 given"),
    ([0, 1, "add", [1, 2, 3]], "BAD_ARGS", "3 given"),
    ([0, 1, "add", {"z": 1}], "BAD_ARGS", "missing a required argument: 'a'"),
    ([0, 1, "boom", ["bad thing"]], "HANDLER_ERROR", "ValueError: bad thing"),
    ([0, 1, "refuse", []], "NOT_ALLOWED", "go away"),
    ([0, 1, "unencodable", []], "BAD_RESULT", "cannot encode result"),
])
def test_errors_are_responses(req: list[Any], code: str, text: str) -> None:
    r = reply(req)
    assert r[0:2] == [1, 1] and r[3] is None
    assert r[2]["code"] == code
    assert text in r[2]["message"]


def test_async_handler_is_pending_until_run() -> None:
    p = D.dispatch(msgpack.packb([0, 9, "sleep_echo", ["v", 0]]))
    assert isinstance(p, PendingCall) and p.msgid == 9
    p.coro.close()
    p = D.dispatch(msgpack.packb([0, 10, "aboom", ["k"]]))
    assert isinstance(p, PendingCall)
    err = msgpack.unpackb(run_pending(p))
    assert err[2]["code"] == "HANDLER_ERROR" and "KeyError" in err[2]["message"]
    p = D.dispatch(msgpack.packb([0, 11, "sleep_echo", ["v", 0]]))
    assert isinstance(p, PendingCall)
    assert msgpack.unpackb(D.fail(p, TimeoutError()))[2]["code"] == "TIMEOUT"
    p.coro.close()


def test_notifications_never_reply() -> None:
    NOTES.clear()
    assert D.dispatch(msgpack.packb([2, "note", [1, "a"]])) is None
    assert D.dispatch(msgpack.packb([2, "unknown", []])) is None
    assert D.dispatch(msgpack.packb([2, "note", {"x": 1}])) is None  # bad args: dropped
    assert D.dispatch(msgpack.packb([2, "echo", []])) is None  # a method, not a notification
    p = D.dispatch(msgpack.packb([2, "anote", ["z"]]))
    assert isinstance(p, PendingCall) and p.msgid is None
    assert run_pending(p) is None
    assert NOTES == [[1, "a"], "z"]


@pytest.mark.parametrize("payload", [
    b"\xc1",                                    # never-used msgpack byte
    msgpack.packb([0, 1, "echo", []]) + b"\x00",  # trailing data
    msgpack.packb([0, 1, "echo", []])[:-1],       # truncated
    msgpack.packb({"a": 1}),
    msgpack.packb([0, 1, "echo"]),
    msgpack.packb([0, -1, "echo", []]),
    msgpack.packb([0, 2**32, "echo", []]),
    msgpack.packb([0, "1", "echo", []]),
    msgpack.packb([0, 1, 5, []]),
    msgpack.packb([0, 1, "echo", "notalist"]),
    msgpack.packb([1, 1, None, 5]),
    msgpack.packb([3, 1, "echo", []]),
    msgpack.packb([True, 1, "echo", []]),
    msgpack.packb([2, "note"]),
    msgpack.packb([0, 1, b"\xff", []]),
    b"\xa2\xff\xfe",                            # str with invalid UTF-8
])
def test_malformed_raises_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        D.dispatch(payload)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_bytes_reply_or_protocol_error(data: bytes) -> None:
    try:
        out = D.dispatch(data)
    except ProtocolError:
        return
    if isinstance(out, PendingCall):
        out.coro.close()
    else:
        assert out is None or isinstance(out, bytes)


def test_remote_error_from_wire_shapes() -> None:
    assert (mux_rpc.RemoteError.from_wire({"code": "X", "message": "m"}).code) == "X"
    e = mux_rpc.RemoteError.from_wire("plain string")
    assert (e.code, e.message) == ("ERROR", "plain string")
    e = mux_rpc.RemoteError.from_wire([7, "seven"])
    assert (e.code, e.message) == ("7", "seven")


def test_dispatch_inline_runs_sync_calls_and_defers_the_rest() -> None:
    import msgpack

    from mux_rpc import App
    from mux_rpc._dispatch import DEFER, Dispatcher

    app = App()

    @app.method
    def echo(x: object) -> object:
        return x

    @app.method
    def bad() -> object:
        return object()

    @app.method
    async def later() -> None:
        return None

    seen = []

    @app.notification
    def note(x: object) -> None:
        seen.append(x)

    d = Dispatcher(app)
    assert msgpack.unpackb(d.dispatch_inline(msgpack.packb([0, 1, "echo", ["hi"]]))) == \
        [1, 1, None, "hi"]
    out = d.dispatch_inline(msgpack.packb([0, 2, "bad", []]))
    assert isinstance(out, bytes) and msgpack.unpackb(out)[2]["code"] == "BAD_RESULT"
    # the packer is usable after the failure
    assert msgpack.unpackb(d.dispatch_inline(msgpack.packb([0, 3, "echo", [3]])))[3] == 3
    assert d.dispatch_inline(msgpack.packb([2, "note", [1]])) is None and seen == [1]
    for payload in (msgpack.packb([0, 4, "later", []]), msgpack.packb([0, 5, "nope", []]),
                    msgpack.packb([2, "echo", [1]]),
                    msgpack.packb([0, 6, "echo", []]), msgpack.packb([0, 7, b"echo", [1]]),
                    msgpack.packb([0, -1, "echo", [1]]), msgpack.packb({"a": 1}), b"\xc1",
                    msgpack.packb([0, 8, "echo", {"x": 1}])):
        assert d.dispatch_inline(payload) is DEFER


def test_dispatch_many_handles_in_order_and_stops_at_the_first_defer() -> None:
    from mux_rpc import App
    from mux_rpc._dispatch import Dispatcher

    app = App()
    calls: list[object] = []

    @app.method
    def echo(x: object) -> object:
        calls.append(x)
        return x

    @app.notification
    def note(x: object) -> None:
        calls.append(("note", x))

    d = Dispatcher(app)
    batch = [msgpack.packb([0, 1, "echo", ["a"]]), msgpack.packb([2, "note", [1]]),
             msgpack.packb([0, 2, "echo", ["b"]]), msgpack.packb([0, 3, "nope", []]),
             msgpack.packb([0, 4, "echo", ["c"]])]
    replies, stop = d.dispatch_many(batch)
    assert stop == 3 and calls == ["a", ("note", 1), "b"] and d.inline_handled == 3
    assert [msgpack.unpackb(r) for r in replies] == [[1, 1, None, "a"], [1, 2, None, "b"]]
    replies, stop = d.dispatch_many(batch, stop + 1)
    assert stop == 5 and calls[-1] == "c" and d.inline_handled == 4
    assert [msgpack.unpackb(r) for r in replies] == [[1, 4, None, "c"]]
    assert d.dispatch_many(batch, 5) == ([], 5) and d.dispatch_many([]) == ([], 0)
    # the deferred message itself is never touched
    assert d.dispatch_many(batch, 3) == ([], 3) and len(calls) == 4


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize("accelerated", [False, None])
def test_an_exception_whose_text_fails_still_gets_its_error_reply(accelerated: bool | None) -> None:
    # before: fail_call's f-string raised out of the dispatch, the call went
    # unanswered and (offloaded) its credit stayed held for good
    app = mux_rpc.App()

    @app.method
    def nasty() -> None:
        raise _Unprintable

    d = Dispatcher(app, accelerated=accelerated)
    for out in (d.dispatch(msgpack.packb([0, 3, "nasty", []])),
                d.dispatch_many([msgpack.packb([0, 4, "nasty", []])])[0][0]):
        assert isinstance(out, bytes)
        r = msgpack.unpackb(out)
        assert r[2]["code"] == "HANDLER_ERROR"
        assert r[2]["message"] == "_Unprintable: <str() of the exception failed>"
