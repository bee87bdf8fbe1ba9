"""The dispatcher's C fast path (``mux_rpc._rpcfast``) against the pure-Python
Dispatcher, which states the rules: identical replies, identical stop index of
``dispatch_many``, identical handler calls, for random requests written with
random (not only the shortest) msgpack forms, malformed envelopes, unknown
methods, wrong arity, raising / async / unencodable handlers, notifications,
ext types, deep nesting and random bytes. Plus the C encoder and decoder
against msgpack itself, and reference leaks.

scripts/setup.sh always builds the accelerator: a missing build is a failure,
not a skip. Only a run that forces the fallback (MUX_RPC_PURE_PYTHON=1) skips."""

from __future__ import annotations

import collections
import enum
import gc
import logging
import math
import os
import struct
import subprocess
import sys
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mux_rpc
from mux_rpc import _dispatch
from mux_rpc._dispatch import DEFER, Dispatcher, PendingCall, ProtocolError

pytestmark = pytest.mark.skipif(
    os.environ.get("MUX_RPC_PURE_PYTHON") == "1",
    reason="MUX_RPC_PURE_PYTHON=1 forces the fallback",
)

REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_accelerator_is_built() -> None:
    assert _dispatch.ACCELERATED, "mux_rpc._rpcfast not built: run scripts/setup.sh"
    d = Dispatcher(mux_rpc.App())
    assert d.accelerated and type(d.dispatch_inline).__name__ == "builtin_function_or_method"
    assert not Dispatcher(mux_rpc.App(), accelerated=False).accelerated


# -- the app both dispatchers serve (one instance each: separate call logs) ----------


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class Fatal(BaseException):
    """Not an Exception: propagates out of dispatch, in both paths."""


def make_app() -> tuple[mux_rpc.App, list[Any]]:
    app = mux_rpc.App("diff")
    log: list[Any] = []

    def rec(name: str, *args: Any) -> None:
        log.append((name, repr(args)))

    @app.method
    def echo(*args: Any) -> list[Any]:
        rec("echo", *args)
        return list(args)

    @app.method
    def ident(x: Any) -> Any:
        rec("ident", x)
        return x

    @app.method
    def add(a: Any, b: Any = 0) -> Any:
        rec("add", a, b)
        return a + b  # TypeError for most random pairs: HANDLER_ERROR

    @app.method
    def two(a: Any, b: Any) -> tuple[Any, Any]:
        rec("two", a, b)
        return (b, a)

    @app.method
    def boom(*args: Any) -> None:
        rec("boom", *args)
        raise ValueError(f"boom {len(args)}")

    @app.method
    def refuse(*args: Any) -> None:
        rec("refuse", *args)
        raise mux_rpc.RemoteError("NOT_ALLOWED", "go away")

    @app.method
    def fatal(*args: Any) -> None:
        rec("fatal", *args)
        raise Fatal

    @app.method
    def odd(kind: Any = 0) -> Any:
        rec("odd", kind)
        k = kind if isinstance(kind, int) and not isinstance(kind, bool) else 0
        return [object(), 2**64, -(2**63) - 1, Color.RED, MyStr("s"), "\ud800",
                collections.OrderedDict(a=1), memoryview(b"mv"), {1, 2},
                msgpack.ExtType(5, b"x"), [[[[1]]]]][k % 11]

    @app.method
    def deep(n: Any = 0) -> Any:
        rec("deep", n)
        v: Any = "leaf"
        for _ in range(n % 140 if isinstance(n, int) else 0):
            v = [v]
        return v

    @app.method
    async def later(*args: Any) -> list[Any]:
        rec("later", *args)
        return list(args)

    @app.notification
    def note(*args: Any) -> int:
        rec("note", *args)
        return 1

    @app.notification
    def note1(a: Any) -> None:
        rec("note1", a)

    @app.notification
    def note_boom(*args: Any) -> None:
        rec("note_boom", *args)
        raise KeyError("nb")

    @app.notification
    async def note_later(*args: Any) -> None:
        rec("note_later", *args)

    return app, log


METHODS = ["echo", "echo", "ident", "add", "two", "boom", "refuse", "odd", "deep", "later"]
NOTES = ["note", "note", "note1", "note_boom", "note_later"]
NAMES = [*METHODS, *NOTES, "nope", "", "échø"]


@contextmanager
def quiet() -> Iterator[None]:
    """fail_call logs every handler error: keep hypothesis runs fast and quiet."""
    lg = logging.getLogger("mux_rpc.dispatch")
    old, lg.disabled = lg.disabled, True
    try:
        yield
    finally:
        lg.disabled = old


# -- msgpack written in random (valid, not always shortest) forms --------------------


class BadUtf8(bytes):
    """Test-only leaf: a str header over bytes that are not UTF-8."""


def _int_forms(v: int) -> list[bytes]:
    forms = []
    if 0 <= v < 128:
        forms.append(bytes([v]))
    if -32 <= v < 0:
        forms.append(struct.pack(">b", v))
    for code, fmt, lo, hi in ((0xcc, ">B", 0, 2**8), (0xcd, ">H", 0, 2**16),
                              (0xce, ">I", 0, 2**32), (0xcf, ">Q", 0, 2**64),
                              (0xd0, ">b", -(2**7), 2**7), (0xd1, ">h", -(2**15), 2**15),
                              (0xd2, ">i", -(2**31), 2**31), (0xd3, ">q", -(2**63), 2**63)):
        if lo <= v < hi:
            forms.append(bytes([code]) + struct.pack(fmt, v))
    return forms


def _head(n: int, fix: int | None, fixmax: int, codes: list[tuple[int, str]],
          pick: Callable[[list[bytes]], bytes]) -> bytes:
    forms = [bytes([fix | n])] if fix is not None and n < fixmax else []
    for code, fmt in codes:
        if n < 2 ** (8 * struct.calcsize(fmt)):
            forms.append(bytes([code]) + struct.pack(fmt, n))
    return pick(forms)


def wire(v: Any, pick: Callable[[list[bytes]], bytes]) -> bytes:
    """``v`` as msgpack, each header / int / float in a form ``pick`` chooses."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return pick(_int_forms(v))
    if isinstance(v, float):
        forms = [b"\xcb" + struct.pack(">d", v)]
        try:
            forms.append(b"\xca" + struct.pack(">f", v))
        except OverflowError:
            pass
        return pick(forms)
    if isinstance(v, BadUtf8):
        return _head(len(v), 0xa0, 32, [(0xd9, ">B"), (0xda, ">H"), (0xdb, ">I")], pick) + v
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return _head(len(b), 0xa0, 32, [(0xd9, ">B"), (0xda, ">H"), (0xdb, ">I")], pick) + b
    if isinstance(v, bytes):
        return _head(len(v), None, 0, [(0xc4, ">B"), (0xc5, ">H"), (0xc6, ">I")], pick) + v
    if isinstance(v, list):
        return (_head(len(v), 0x90, 16, [(0xdc, ">H"), (0xdd, ">I")], pick)
                + b"".join(wire(x, pick) for x in v))
    if isinstance(v, dict):
        return (_head(len(v), 0x80, 16, [(0xde, ">H"), (0xdf, ">I")], pick)
                + b"".join(wire(k, pick) + wire(x, pick) for k, x in v.items()))
    out: bytes = msgpack.packb(v)  # ExtType, Timestamp
    return out


ints = st.integers(-(2**63), 2**64 - 1) | st.sampled_from(
    [0, 1, -1, 127, 128, -32, -33, 255, 256, -128, -129, 65535, 65536, -32768, -32769,
     2**32 - 1, 2**32, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, -(2**63)])
floats = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e300])
texts = st.text(max_size=12) | st.sampled_from(["x" * 31, "x" * 32, "é" * 200, "y" * 300])
leaves = (st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=12)
          | st.sampled_from([b"z" * 300, b""]))
exotic = (st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=5))
          | st.builds(msgpack.Timestamp, st.integers(0, 2**33), st.integers(0, 999_999_999))
          | st.builds(BadUtf8, st.sampled_from([b"\xff", b"a\xc3", b"\xed\xa0\x80"])))
values = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=4)
    | st.dictionaries(texts | ints | st.binary(max_size=4) | st.none() | st.booleans(), c,
                      max_size=4),
    max_leaves=10,
)
params_values = st.recursive(
    leaves,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(texts | ints, c, max_size=3),
    max_leaves=8,
)


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """One payload: mostly well-formed calls, some of every way to be wrong."""
    pick: Callable[[list[bytes]], bytes] = lambda forms: draw(st.sampled_from(forms))  # noqa: E731
    shape = draw(st.sampled_from(["req"] * 6 + ["note"] * 3 + ["junk", "bytes", "cut", "extra"]))
    rare = st.integers(0, 9).map(lambda x: x == 0)  # one time in ten: a wrong field
    name = draw(st.sampled_from([b"echo", 7, None, *NAMES]) if draw(rare)
                else st.sampled_from(NOTES if shape == "note" else METHODS))
    params: Any = draw(st.lists(params_values, max_size=3))
    if params and draw(rare):  # a value the C decoder leaves to msgpack, somewhere
        params[-1] = draw(exotic) if draw(st.booleans()) else [{"k": draw(exotic)}]
    if draw(rare):
        params = draw(st.sampled_from([[nested(70)], [nested(200)], [0], [3], [135], [{1: []}],
                                       {"a": 1}, "p", None, 5]))
    if shape in ("req", "cut", "extra"):
        kind = draw(st.sampled_from([1, 2, True, 0.0]) if draw(rare) else st.just(0))
        msgid = draw(st.sampled_from([-1, 2**32, 2**64 - 1, "1", None, 1.0, False])
                     if draw(rare) else st.integers(0, 2**32 - 1))
        msg: Any = [kind, msgid, name, params]
    elif shape == "note":
        msg = [draw(st.sampled_from([0, 3, False]) if draw(rare) else st.just(2)), name, params]
    elif shape == "junk":
        msg = draw(values | st.lists(values, max_size=5))
    else:
        return draw(st.binary(max_size=24))
    data = wire(msg, pick)
    if shape == "cut":
        return data[:draw(st.integers(0, len(data) - 1))]
    if shape == "extra":
        return data + draw(st.binary(min_size=1, max_size=3))
    return data


def pair() -> tuple[Dispatcher, list[Any], Dispatcher, list[Any]]:
    app_py, log_py = make_app()
    app_c, log_c = make_app()
    return (Dispatcher(app_py, accelerated=False), log_py,
            Dispatcher(app_c, accelerated=True), log_c)


def outcome(f: Callable[[Any], Any], arg: Any) -> Any:
    """What one dispatch call did, in comparable form."""
    try:
        r = f(arg)
    except Fatal:
        return "Fatal"
    except ProtocolError as exc:
        return ("ProtocolError", exc.reason)
    if isinstance(r, PendingCall):
        r.coro.close()
        return ("pending", r.msgid, r.spec.name)
    return r


# -- differential: the three entry points ---------------------------------------------


@SETTINGS
@given(st.lists(message(), max_size=20))
def test_dispatch_inline_c_equals_python(batch: list[bytes]) -> None:
    d_py, log_py, d_c, log_c = pair()
    with quiet():
        for p in batch:
            assert outcome(d_c.dispatch_inline, p) == outcome(d_py.dispatch_inline, p)
            assert log_c == log_py
        for other in (bytearray, memoryview, lambda p: memoryview(p * 2)[::2], str):
            q = other(batch[0] if batch else b"\x90")
            assert outcome(d_c.dispatch_inline, q) == outcome(d_py.dispatch_inline, q)
            assert log_c == log_py


def _many(d: Dispatcher, batch: list[bytes]) -> list[Any]:
    """dispatch_many as a caller drives it: each deferred message goes elsewhere."""
    steps: list[Any] = []
    start = 0
    while True:
        replies, stop = d.dispatch_many(batch, start)
        steps.append((replies, stop))
        if stop >= len(batch):
            return steps
        start = stop + 1


@SETTINGS
@given(st.lists(message(), max_size=20))
def test_dispatch_many_c_equals_python(batch: list[bytes]) -> None:
    d_py, log_py, d_c, log_c = pair()
    with quiet():
        assert _many(d_c, batch) == _many(d_py, batch)
    assert log_c == log_py
    assert d_c.inline_handled == d_py.inline_handled


@SETTINGS
@given(st.lists(message(), max_size=20))
def test_dispatch_obj_c_equals_python(batch: list[bytes]) -> None:
    d_py, log_py, d_c, log_c = pair()
    with quiet():
        for p in batch:
            try:
                msg = msgpack.unpackb(p, raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001 - only decodable messages reach dispatch_obj
                continue
            assert outcome(d_c.dispatch_obj, msg) == outcome(d_py.dispatch_obj, msg)
            assert outcome(d_c.dispatch, p) == outcome(d_py.dispatch, p)
            assert log_c == log_py


def test_base_exceptions_propagate_from_both_paths() -> None:
    d_py, log_py, d_c, log_c = pair()
    ok = msgpack.packb([0, 1, "echo", [1]])
    fatal = msgpack.packb([0, 2, "fatal", ["x"]])
    for d in (d_py, d_c):
        with pytest.raises(Fatal):
            d.dispatch_inline(fatal)
        with pytest.raises(Fatal):
            d.dispatch_many([ok, fatal, ok])
        with pytest.raises(Fatal):
            d.dispatch_obj([0, 3, "fatal", []])
    assert log_c == log_py == [("fatal", "('x',)"), ("echo", "(1,)"), ("fatal", "('x',)"),
                               ("fatal", "()")]


def test_the_hot_case_never_leaves_c() -> None:
    """Calls, notifications, errors, defers and BAD_RESULT run without the Python
    dispatch methods; only params the C decoder leaves to msgpack go there."""
    from mux_rpc import _rpcfast  # type: ignore[attr-defined]

    app, log = make_app()
    slow: list[Any] = []
    py = Dispatcher(app, accelerated=False)

    def slow_inline(p: bytes) -> Any:
        slow.append(p)
        return py.dispatch_inline(p)

    core = _rpcfast.Core(app.methods, app.notifications, py.fail_call, _dispatch.encode_response,
                         msgpack.Packer(use_bin_type=True), DEFER, None, slow_inline)
    hot = [[0, 1, "echo", ["a", 1, 2.5, None, True, b"b", [1], {"k": {}}]], [2, "note", [1]],
           [0, 2, "boom", []], [0, 3, "odd", [0]], [2, "note_boom", []], [0, 4, "nope", []],
           [0, 5, "later", []], [0, 6, "two", [1]], [2, "note", {"a": 1}], [0, 7, "echo"],
           [0, 8, "deep", [100]], [0, 9, "echo", [nested(60)]]]
    with quiet():
        for m in hot:
            p = msgpack.packb(m)
            assert core.dispatch_inline(p) == py.dispatch_inline(p)
        assert slow == []
        for m in ([0, 10, "echo", [msgpack.ExtType(1, b"")]], [0, 11, "echo", [nested(70)]]):
            p = msgpack.packb(m)
            assert msgpack.unpackb(core.dispatch_inline(p))[3] is not None
            assert slow[-1] == p
    replies, stop = core.dispatch_many([msgpack.packb(m) for m in hot])
    assert stop == 5 and len(replies) == 3 and core.handled == 5


# -- the encoder and the decoder against msgpack --------------------------------------


def c_supports(v: Any, depth: int = 0) -> bool:
    """Values the C encoder must take itself (not hand to msgpack)."""
    t = type(v)
    if v is None or t is bool or t is float or t is bytes or t is bytearray:
        return True
    if t is int:
        return -(2**63) <= v < 2**64
    if t is str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if depth >= 64:
        return False
    if t is list or t is tuple:
        return all(c_supports(x, depth + 1) for x in v)
    if t is dict:
        return all(c_supports(k, depth + 1) and c_supports(x, depth + 1) for k, x in v.items())
    return False


enc_leaves = (leaves | st.integers(-(2**70), 2**70) | st.sampled_from(
    ["\ud800", Color.RED, MyStr("m"), 2**64, -(2**63) - 1, bytearray(b"ba"), memoryview(b"m"),
     msgpack.ExtType(1, b"e"), object(), nested(63), nested(64), nested(600)])
    | st.binary(max_size=300).map(bytearray))
enc_values = st.recursive(
    enc_leaves,
    lambda c: st.lists(c, max_size=5) | st.lists(c, max_size=3).map(tuple)
    | st.dictionaries(texts | ints | st.none(), c, max_size=4)
    | st.dictionaries(texts, c, max_size=2).map(collections.OrderedDict),
    max_leaves=14,
)


@SETTINGS
@given(enc_values)
def test_c_encoder_is_byte_identical_to_msgpack(v: Any) -> None:
    from mux_rpc import _rpcfast  # type: ignore[attr-defined]

    got = _rpcfast.packb(v)
    if c_supports(v):
        assert got is not None
    if got is not None:
        assert got == msgpack.packb(v, use_bin_type=True)


@pytest.mark.parametrize("n", [0, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_c_encoder_length_boundaries(n: int) -> None:
    from mux_rpc import _rpcfast  # type: ignore[attr-defined]

    for v in ("a" * n, b"b" * n, bytearray(n), [None] * n, tuple([1] * n),
              {i: None for i in range(n)}):
        assert _rpcfast.packb(v) == msgpack.packb(v, use_bin_type=True)


def same(a: Any, b: Any) -> bool:
    """Equal and of identical types all the way down (1 != 1.0 != True here; nan == nan)."""
    return repr(a) == repr(b)


@SETTINGS
@given(st.data(), values | params_values | exotic)
def test_c_decoder_equals_msgpack_on_any_form(data: st.DataObject, v: Any) -> None:
    from mux_rpc import _rpcfast  # type: ignore[attr-defined]

    raw = wire(v, lambda forms: data.draw(st.sampled_from(forms)))
    try:
        want = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - BadUtf8, unhashable keys: C defers too
        with pytest.raises(ValueError, match="deferred"):
            _rpcfast.unpackb(raw)
        return
    try:
        got = _rpcfast.unpackb(raw)
    except ValueError:
        assert b"\xc7" in raw or any(x in raw for x in b"\xc8\xc9\xd4\xd5\xd6\xd7\xd8"), raw
        return
    assert same(got, want)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_c_decoder_on_random_bytes_decodes_as_msgpack_or_defers(raw: bytes) -> None:
    from mux_rpc import _rpcfast  # type: ignore[attr-defined]

    try:
        got = _rpcfast.unpackb(raw)
    except ValueError:
        return
    assert same(got, msgpack.unpackb(raw, raw=False, strict_map_key=False))


# -- leaks, lifetime, fallback switch -------------------------------------------------


def test_no_reference_leaks_over_many_batches() -> None:
    app, log = make_app()
    d = Dispatcher(app, accelerated=True)
    batch = [msgpack.packb(m) for m in (
        [0, 1, "echo", ["a", [1, {"k": b"v"}], 2.5, 2**63]], [2, "note", [1, "x"]],
        [0, 2, "boom", [1]], [0, 3, "odd", [3]], [0, 4, "odd", [0]], [0, 5, "deep", [80]],
        [2, "note_boom", []], [0, 6, "echo", [msgpack.ExtType(1, b"e")]],
        [0, 7, "echo", list(range(40))], [0, 8, "later", []])]
    objs = [msgpack.unpackb(p, strict_map_key=False) for p in batch]
    spec = app.methods["echo"]

    def run(k: int) -> None:
        for _ in range(k):
            replies, stop = d.dispatch_many(batch)
            assert stop == 9 and len(replies) == 7
            for o in objs[:-1]:
                d.dispatch_obj(o)
            d.dispatch_inline(batch[0])
            log.clear()

    with quiet():
        run(200)
        gc.collect()
        watched = (spec, spec.func, DEFER, batch[0], objs[0], *objs[0][2:], *objs[0][3])
        refs = [sys.getrefcount(x) for x in watched]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            run(2000)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept over 2000 batches"
    assert refs == [sys.getrefcount(x) for x in watched]


def test_dispatcher_with_core_is_collected() -> None:
    app, _ = make_app()
    d = Dispatcher(app, accelerated=True)
    d.dispatch_inline(msgpack.packb([0, 1, "echo", [1]]))
    ref = weakref.ref(d)
    del d
    gc.collect()
    assert ref() is None


def test_tables_are_read_per_call_not_cached() -> None:
    app, _ = make_app()
    d = Dispatcher(app, accelerated=True)
    p = msgpack.packb([0, 1, "late", [2]])
    assert d.dispatch_inline(p) is DEFER

    @app.method
    def late(x: int) -> int:
        return x * 10

    assert msgpack.unpackb(d.dispatch_inline(p)) == [1, 1, None, 20]
    del app.methods["late"]
    assert d.dispatch_inline(p) is DEFER


def test_dispatch_many_arguments() -> None:
    d_py, _, d_c, _ = pair()
    batch = (msgpack.packb([0, 1, "echo", []]),) * 3
    for d in (d_py, d_c):
        assert d.dispatch_many(batch, start=2)[1] == 3
        assert d.dispatch_many(list(batch), 3) == ([], 3)
        with pytest.raises(ValueError):
            d.dispatch_many(batch, 4)
        with pytest.raises(ValueError):
            d.dispatch_many(batch, -1)


def test_pure_python_switch_and_build_script() -> None:
    env = dict(os.environ, MUX_RPC_PURE_PYTHON="1")
    code = ("import mux_rpc; from mux_rpc import _dispatch as d; assert not d.ACCELERATED\n"
            "assert not d.Dispatcher(mux_rpc.App()).accelerated\n"
            "try:\n    d.Dispatcher(mux_rpc.App(), accelerated=True)\n"
            "except RuntimeError:\n    pass\nelse:\n    raise SystemExit('no error')\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)
    out = subprocess.run([sys.executable, "scripts/build_accelerators.py", "mux_rpc"], cwd=REPO,
                         check=True,
                         timeout=120, capture_output=True, text=True).stdout
    assert out.strip().endswith(".so")
