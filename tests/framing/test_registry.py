"""Spec strings, the registry, import paths and entry-point discovery."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from framing_helpers import JsonMessage, NdjsonFramer, feed_all

import framing
from framing import (
    BadFramerSpec,
    Frame,
    Framer,
    LengthFieldFramer,
    MsgpackRpcFramer,
    NvmeTcpFramer,
    OncRpcFramer,
    UnknownFramer,
    framer_from_spec,
    parse_spec,
    register_framer,
    unregister_framer,
)


def test_builtin_specs() -> None:
    f = framer_from_spec("length:offset=0,size=4,order=big")
    assert isinstance(f, LengthFieldFramer) and f.config.length_field_length == 4
    assert isinstance(framer_from_spec("msgpack-rpc"), MsgpackRpcFramer)
    n = framer_from_spec("nvme-tcp:hdgst=1")
    assert isinstance(n, NvmeTcpFramer) and n.hdgst and not n.ddgst
    o = framer_from_spec(" onc-rpc : max=1048576 ")
    assert isinstance(o, OncRpcFramer) and o.max_message_size == 1048576
    assert framer_from_spec("length:size=2,order=little,failfast=false").config.fail_fast is False


def test_parse_spec() -> None:
    assert parse_spec("length:offset=0,size=4") == ("length", None, {"offset": "0", "size": "4"})
    assert parse_spec("pkg.mod:Cls:max=3") == ("pkg.mod", "Cls", {"max": "3"})


@pytest.mark.parametrize(
    "spec,words",
    [
        ("", "empty"),
        ("nope", "unknown framer 'nope'"),
        ("length:size=5", "1, 2, 3, 4 or 8"),
        ("length:colour=red", "unknown parameter 'colour'"),
        ("length:size", "bad parameter 'size'"),
        ("length:size=", "bad parameter"),
        ("length:size=2,size=4", "given twice"),
        ("length:size=two", "size must be an integer"),
        ("length:order=middle", "big or little"),
        ("nvme-tcp:hdgst=maybe", "hdgst must be"),
        ("onc-rpc:max=-1", "max_message_size"),
        ("msgpack-rpc:max=x", "max must be an integer"),
        ("no_such_module_xyz:Framer", "cannot import module"),
        ("framing:NoSuchClass", "has no attribute"),
        ("framing:ENTRY_POINT_GROUP", "not a framer"),
        ("a:b=1:c", "too many"),
        ("9bad", "bad framer name"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, words: str) -> None:
    with pytest.raises(BadFramerSpec) as info:
        framer_from_spec(spec)
    assert words in str(info.value)
    assert info.value.code in ("bad_spec", "unknown_framer")


def test_register_custom_framer_and_spec() -> None:
    register_framer("ndjson-test", NdjsonFramer)
    try:
        with pytest.raises(ValueError):
            register_framer("ndjson-test", NdjsonFramer)
        f = framer_from_spec("ndjson-test:max=100")
        assert isinstance(f, NdjsonFramer) and f.max_message_size == 100
        assert feed_all(f, [b'{"a":1}\n[2]\n']) == [JsonMessage({"a": 1}), JsonMessage([2])]
        assert "ndjson-test" in framing.available_framers()
    finally:
        unregister_framer("ndjson-test")


def test_register_factory_function() -> None:
    calls = []

    def factory(params: dict[str, str]) -> Framer[object]:
        calls.append(params)
        return OncRpcFramer(max_message_size=int(params["limit"]))

    register_framer("onc-small", factory)
    try:
        f = framer_from_spec("onc-small:limit=99")
        assert f.max_message_size == 99 and calls == [{"limit": "99"}]
    finally:
        unregister_framer("onc-small")


def test_import_path_spec() -> None:
    f = framer_from_spec("ndjson_framer:NdjsonFramer:max=77")
    assert isinstance(f, NdjsonFramer) and f.max_message_size == 77
    f = framer_from_spec("framing:OncRpcFramer:max=50")
    assert isinstance(f, OncRpcFramer) and f.max_message_size == 50
    # the default Framer.from_spec: values converted, passed as keywords
    c = framer_from_spec("framing_helpers:CrLfFramer:max_message_size=0x40,keep=true")
    assert c.max_message_size == 64 and c.keep is True  # type: ignore[attr-defined]
    assert feed_all(c, [b"a\r\nb\r\n"]) == [Frame(b"a\r\n"), Frame(b"b\r\n")]
    with pytest.raises(BadFramerSpec, match="bad parameters"):
        framer_from_spec("framing_helpers:CrLfFramer:nonsense=1")


@pytest.fixture
def entry_point_dist(tmp_path: Path) -> Iterator[str]:
    """A throwaway installed distribution declaring a mux_rpc.framers entry point."""
    pkg = tmp_path / "epframer_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from framing import OncRpcFramer

        class EpFramer(OncRpcFramer):
            name = "ep-framer"
    """)
    )
    dist = tmp_path / "epframer_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epframer-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mux_rpc.framers]\nep-framer = epframer_pkg:EpFramer\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield "ep-framer"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("epframer_pkg", None)
        from framing import _registry

        _registry._REGISTRY.pop("ep-framer", None)


def test_entry_point_discovery(entry_point_dist: str) -> None:
    assert entry_point_dist in framing.available_framers()
    f = framer_from_spec(f"{entry_point_dist}:max=1234")
    assert type(f).__name__ == "EpFramer" and f.max_message_size == 1234


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownFramer, match="length"):
        framer_from_spec("lenght")
