"""The optional C accelerator (``framing._speedups``) against the pure-Python
fallback: the same messages (``raw`` included), the same errors, whatever the
chunking, for valid streams, streams with garbage appended, and random bytes.
Framers take the pure-Python path when their ``_fast`` attribute is False (set
before the first ``feed``); ``FRAMING_PURE_PYTHON=1`` turns the accelerator off
for the whole process (the rest of the suite then runs on the fallback)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from typing import Any

import msgpack
import pytest
from framing_helpers import KINDS, REPO, Kind, split_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framing
from framing import (
    Frame,
    FramingError,
    MsgpackRpcFramer,
    NvmePdu,
    OncRecord,
    RpcNotification,
    RpcRequest,
    RpcResponse,
)
from framing import _messages as M

# scripts/setup.sh always builds the accelerator: a missing build is a failure,
# not a skip. Only a run that forces the fallback (FRAMING_PURE_PYTHON=1) skips.
pytestmark = pytest.mark.skipif(
    os.environ.get("FRAMING_PURE_PYTHON") == "1", reason="FRAMING_PURE_PYTHON=1 forces the fallback"
)


def test_accelerator_is_built() -> None:
    assert M.ACCELERATED, "framing._speedups not built: run scripts/setup.sh"

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
C_KINDS = [k for k in KINDS if k.id != "ndjson"]
C_IDS = [k.id for k in C_KINDS]

# An over-long msgpack value is FrameTooLong on the C path (its length is read
# from the headers) and may be msgpack's own limit error (BadMsgpack) on the
# Unpacker path: the same outcome, a bounded failure.
_SAME_CODE = {"bad_msgpack": "too_long_or_bad", "frame_too_long": "too_long_or_bad"}


def _run(kind: Kind, chunks: list[bytes], fast: bool) -> tuple[list[Any], list[bytes], str | None]:
    f = kind.make()
    if not fast:
        f._fast = False  # type: ignore[attr-defined]
    msgs: list[Any] = []
    error = None
    try:
        for chunk in chunks:
            f.feed(chunk)
            msgs.extend(f.drain())
        f.feed_eof()
        msgs.extend(f.drain())
    except FramingError as exc:
        error = exc.code
        if isinstance(f, MsgpackRpcFramer):
            error = _SAME_CODE.get(error, error)
    # repr tells True from 1, 1.0 from 1, -0.0 from 0.0, str from bytes
    raws = [(repr(m), getattr(m, "raw", b"")) for m in msgs]
    return msgs, raws, error


def _same(kind: Kind, chunks: list[bytes]) -> None:
    fast = _run(kind, chunks, True)
    slow = _run(kind, chunks, False)
    if {fast[2], slow[2]} == {"too_long_or_bad", "truncated_message"}:
        # A value both over-long or invalid and cut by the end of the stream:
        # the C path reads an over-long value's length from its headers and
        # fails at once (the Unpacker waits for the bytes), while the Unpacker
        # reports e.g. invalid UTF-8 in a string as soon as it has decoded it
        # (the C path decodes whole values only). Same messages before it.
        assert fast[:2] == slow[:2]
        return
    assert fast == slow


@pytest.mark.parametrize("kind", C_KINDS, ids=C_IDS)
@SETTINGS
@given(data=st.data())
def test_c_and_python_paths_agree(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, max_size=10))
    enc = kind.make()
    wire = b"".join(enc.encode(m) for m in msgs)
    wire += data.draw(st.binary(max_size=40))  # trailing garbage, or nothing
    cuts = data.draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=10))
    _same(kind, [wire])
    _same(kind, split_at(wire, cuts))


@pytest.mark.parametrize("kind", C_KINDS, ids=C_IDS)
@SETTINGS
@given(blob=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_c_and_python_paths_agree_on_random_bytes(kind: Kind, blob: bytes, cuts: list[int]) -> None:
    _same(kind, split_at(blob, cuts))


@pytest.mark.parametrize("kind", C_KINDS, ids=C_IDS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_c_and_python_paths_agree_one_byte_at_a_time(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, min_size=1, max_size=3))
    enc = kind.make()
    wire = b"".join(enc.encode(m) for m in msgs)
    _same(kind, [wire[i : i + 1] for i in range(len(wire))])


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(
    values=st.lists(msgpack_values, max_size=6),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
    limit=st.sampled_from([64, 512, 1 << 20]),
    strict=st.booleans(),
)
def test_msgpack_scan_agrees_with_the_unpacker(
    values: list[Any], cuts: list[int], limit: int, strict: bool
) -> None:
    """mp_scan's value boundaries and mp_batch's decoding are msgpack's, for
    any value (ext types and strict_map_key violations included)."""
    packer = msgpack.Packer(use_bin_type=True)
    wire = b"".join(packer.pack([0, i, "m", [v]]) for i, v in enumerate(values))
    wire += b"".join(packer.pack([2, "n", [v, v]]) for v in values)
    wire += b"".join(packer.pack([1, i, None, v]) for i, v in enumerate(values))
    wire += b"".join(packer.pack([1, i, {"e": v, 1: [v]}, 1.5]) for i, v in enumerate(values))
    kind = Kind(
        "msgpack",
        lambda: MsgpackRpcFramer(max_message_size=limit, strict_map_key=strict),
        st.nothing(),
    )
    _same(kind, [wire])
    _same(kind, split_at(wire, cuts))


# mostly well-formed envelopes, each field sometimes just out of its range
_msgids = st.integers(-1, 1 << 32) | st.booleans()
_methods = st.text(max_size=5) | st.binary(max_size=3)
_params = st.lists(msgpack_values, max_size=2) | st.none()
_envelopes = (
    st.tuples(st.just(0), _msgids, _methods, _params).map(list)
    | st.tuples(st.just(1), _msgids, msgpack_values, msgpack_values).map(list)
    | st.tuples(st.just(2), _methods, _params).map(list)
)
rpc_shaped = _envelopes | _envelopes | _envelopes | msgpack_values


def _both_rpc_batches(values: list[Any], start: int, first: int) -> list[tuple[int, Any]]:
    """(stop, messages) from the C ``rpc_batch`` and from ``_py_rpc_batch``."""
    from framing import _msgpack_rpc as R

    assert R._rpc_batch is not R._py_rpc_batch
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack(v) for v in values]
    data = b"".join(parts)
    objs = [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in parts]
    offsets = list(itertools.accumulate((len(p) for p in parts), initial=start))
    first = min(first, len(objs))
    got = []
    for batch in (R._rpc_batch, R._py_rpc_batch):
        out: list[Any] = []
        stop = batch(objs, offsets[1:], data, start, offsets[first], first, out)
        got.append((stop, [(repr(m), m.raw) for m in out]))
    return got


@SETTINGS
@given(values=st.lists(rpc_shaped, max_size=8), start=st.integers(0, 50), first=st.integers(0, 3))
def test_rpc_batch_c_and_python_agree(values: list[Any], start: int, first: int) -> None:
    """The C ``rpc_batch`` (used whenever the accelerator is built, also on the
    Unpacker path) and its pure-Python twin ``_py_rpc_batch`` (used only under
    FRAMING_PURE_PYTHON=1) take the same envelopes and stop at the same value."""
    fast, slow = _both_rpc_batches(values, start, first)
    assert fast == slow


@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize(
    ("msgid", "ok"), [(0, True), ((1 << 32) - 1, True), (-1, False), (1 << 32, False), (True, False)]
)
def test_rpc_batch_msgid_bounds(kind: int, msgid: Any, ok: bool) -> None:
    values = [[0, 7, "m", []], [kind, msgid, "m", []] if kind == 0 else [kind, msgid, None, 1]]
    fast, slow = _both_rpc_batches(values, 5, 0)
    assert fast == slow
    assert fast[0] == (2 if ok else 1)


def test_mp_scan_boundaries_and_status() -> None:
    from framing import _speedups as S

    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack(v) for v in (1, "x" * 40, b"y" * 300, [1, [2, {"a": 3}]], 1.5, None)]
    wire = b"".join(parts)
    ends, stop, status, need = S.mp_scan(wire, 0, 1 << 20)
    offsets = list(memoryview(ends).cast("n"))
    expect = [sum(len(p) for p in parts[: i + 1]) for i in range(len(parts))]
    assert (offsets, stop, status) == (expect, len(wire), 0)
    ends, stop, status, need = S.mp_scan(wire[:-3], 0, 1 << 20)  # cut inside the float
    assert (stop, status) == (expect[3], 1) and need == 9
    ends, stop, status, need = S.mp_scan(b"\x91\xc1", 0, 100)
    assert (stop, status) == (0, 2)
    ends, stop, status, need = S.mp_scan(b"\xc6\x00\x01\x00\x00", 0, 1000)  # bin32 of 65536
    assert (stop, status) == (0, 3) and need == 5 + 65536


# -- message construction -----------------------------------------------------------


SAMPLES: list[tuple[type, tuple[Any, ...]]] = [
    (Frame, (b"payload",)),
    (OncRecord, (b"",)),
    (NvmePdu, (b"\x07" + bytes(23), b"data", 7)),
    (RpcRequest, (1, "m", [1, 2], b"raw")),
    (RpcResponse, (2, None, {"a": 1}, b"raw")),
    (RpcNotification, ("n", [], b"raw")),
]


@pytest.mark.parametrize(("cls", "values"), SAMPLES, ids=[c.__name__ for c, _ in SAMPLES])
def test_c_maker_and_python_builder_build_the_same_frozen_instances(
    cls: type, values: tuple[Any, ...]
) -> None:
    fast = M._c_maker(cls)(*values)
    out: list[Any] = []
    M._py_builder(cls)(out, *([v] for v in values))
    (slow,) = out
    assert type(fast) is type(slow) is cls
    assert fast == slow and repr(fast) == repr(slow)
    if cls in (Frame, OncRecord, NvmePdu):  # the others hold lists: unhashable
        assert hash(fast) == hash(slow) == hash(cls(*values))
    for name, value in zip(cls.__slots__, values, strict=True):
        assert getattr(fast, name) is value
    with pytest.raises(FrozenInstanceError):
        setattr(fast, cls.__slots__[0], values[0])
    assert not hasattr(fast, "__dict__")


def test_maker_rejects_what_it_cannot_build() -> None:
    from framing import _speedups as S

    class Plain:
        __slots__ = ("a",)

    with pytest.raises(TypeError):
        S.Maker(Frame, ("nope",))
    with pytest.raises(TypeError):
        S.Maker(dict, ("a",))
    with pytest.raises(TypeError):
        M._c_maker(Frame)()  # one value per slot
    assert S.Maker(Plain, ("a",))(5).a == 5


def test_pure_python_switch() -> None:
    code = "import framing._messages as m, sys; sys.exit(0 if not m.ACCELERATED else 1)"
    env = {"FRAMING_PURE_PYTHON": "1", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)
    assert framing.framer_from_spec("length")._fast  # type: ignore[attr-defined]
