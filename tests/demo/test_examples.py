"""The examples' own logic (pure), and each example end to end through the
offload path (one host process with an agent over AF_XDP for the module)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

import msgpack

import framing
from mux_rpc._loadgen import (
    HostProcess,
    MsgpackWorkload,
    NdjsonWorkload,
    NvmeWorkload,
    Workload,
    load_example,
    nvme_command,
    run_load,
)

nvme = load_example("nvme_pdu_handler")
calc = load_example("custom_framer_service")


# -- NVMe/TCP-style PDU handler ---------------------------------------------------------


def roundtrip(pdu: Any) -> Any:
    """Encode with framing's encoder and decode again, as the agent and a client would."""
    f = framing.NvmeTcpFramer()
    f.feed(f.encode(pdu))
    out = f.next_message()
    assert out is not None and f.next_message() is None
    return out


def test_write_then_read_returns_the_block() -> None:
    disk = nvme.RamDisk()
    block = bytes(range(256)) * 2
    cmd = roundtrip(nvme_command(nvme.NVM_WRITE, 7, 42, 0, block))
    reply = roundtrip(nvme.handle_pdu(cmd.header, cmd.data, disk))
    assert reply.pdu_type == framing.PduType.CAPSULE_RESP
    cid, status = struct.unpack_from("<HH", reply.header, 8 + 12)  # CQE CID, status
    assert (cid, status) == (7, 0)
    cmd = roundtrip(nvme_command(nvme.NVM_READ, 8, 42, 0))
    reply = roundtrip(nvme.handle_pdu(cmd.header, cmd.data, disk))
    assert reply.pdu_type == framing.PduType.C2H_DATA
    assert reply.flags & (nvme.C2H_LAST_PDU | nvme.C2H_SUCCESS) == 0x0C
    assert int.from_bytes(reply.header[8:10], "little") == 8
    assert reply.data == block


def test_unwritten_blocks_read_as_zeros_and_multi_block_io() -> None:
    disk = nvme.RamDisk()
    cmd = nvme_command(nvme.NVM_WRITE, 1, 10, 1, b"a" * 512 + b"b" * 512)
    assert struct.unpack_from("<H", nvme.handle_pdu(cmd.header, cmd.data, disk).header, 22)[0] == 0
    cmd = nvme_command(nvme.NVM_READ, 2, 9, 3)
    reply = nvme.handle_pdu(cmd.header, cmd.data, disk)
    assert reply.data == bytes(512) + b"a" * 512 + b"b" * 512 + bytes(512)


@pytest.mark.parametrize("cmd,status", [
    (lambda: nvme_command(0x7F, 3, 0), nvme.SC_INVALID_OPCODE),
    (lambda: nvme_command(nvme.NVM_READ, 3, nvme.MAX_BLOCKS), nvme.SC_LBA_OUT_OF_RANGE),
    (lambda: nvme_command(nvme.NVM_WRITE, 3, 0, 0, b"short"), nvme.SC_INVALID_FIELD),
])
def test_errors_complete_with_a_status(cmd: Any, status: int) -> None:
    pdu = cmd()
    reply = nvme.handle_pdu(pdu.header, pdu.data, nvme.RamDisk())
    cid, st = struct.unpack_from("<HH", reply.header, 20)
    assert reply.pdu_type == framing.PduType.CAPSULE_RESP and cid == 3 and st >> 1 == status


def test_icreq_gets_icresp_and_other_pdus_no_reply() -> None:
    ic = framing.make_nvme_pdu(framing.PduType.ICREQ, bytes(120))
    reply = roundtrip(nvme.handle_pdu(ic.header, ic.data, nvme.RamDisk()))
    assert reply.pdu_type == framing.PduType.ICRESP and reply.plen == 128
    h2c = framing.make_nvme_pdu(framing.PduType.H2C_DATA, bytes(16), b"x")
    assert nvme.handle_pdu(h2c.header, h2c.data, nvme.RamDisk()) is None


def test_nvme_app_declares_its_stream_handler() -> None:
    (spec,) = nvme.app.stream_handlers
    assert spec.framer == "nvme-tcp" and spec.port == nvme.PORT


# -- custom framer (ndjson) service --------------------------------------------------------


@pytest.mark.parametrize("line,reply", [
    (b'{"id":1,"method":"add","params":[2,3]}\n', {"id": 1, "result": 5}),
    (b'{"id":2,"method":"echo","params":["a",1]}', {"id": 2, "result": ["a", 1]}),
    (b'{"id":3,"method":"upper","params":{"text":"x"}}', {"id": 3, "result": "X"}),
])
def test_calc_methods(line: bytes, reply: dict[str, Any]) -> None:
    assert json.loads(calc.handle_line(line)) == reply


@pytest.mark.parametrize("line", [b"{nope", b"[1,2]", b'{"id":4,"method":"nope"}',
                                  b'{"id":5,"method":"add","params":[1]}'])
def test_calc_errors_are_replies(line: bytes) -> None:
    reply = json.loads(calc.handle_line(line))
    assert "error" in reply and "result" not in reply


def test_calc_framer_spec_resolves_to_the_ndjson_framer() -> None:
    (spec,) = calc.app.stream_handlers
    f = framing.framer_from_spec(spec.framer)
    assert type(f).__name__ == "NdjsonFramer"
    f.feed(b'{"id":1}\n{"id"')
    msg = f.next_message()
    assert msg is not None and msg.value == {"id": 1}
    assert json.loads(calc.handle_line(f.message_bytes(msg))) == {
        "id": 1, "error": "expected an object with a method"}


# -- end to end, offloaded -------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> Iterator[HostProcess]:
    from conftest import afxdp_required

    afxdp_required()
    with HostProcess({"mode": "offload", "backend": "afxdp", "queues": 2,
                      "services": ["kv", "ndjson", "nvme"]}) as hp:
        yield hp


def drive(w: Workload, calls: int) -> None:
    asyncio.run(run_load([w], duration=20.0, max_calls=calls))
    r = w.result
    assert r.errors == 0 and r.lost == 0, r.error_samples
    assert r.calls == r.sent == calls


@pytest.mark.afxdp
def test_kv_service_offloaded(host: HostProcess) -> None:
    drive(MsgpackWorkload(host.info["ports"]["kv"], connections=4, depth=4, mix="kv"), 400)


@pytest.mark.afxdp
def test_custom_framer_service_offloaded(host: HostProcess) -> None:
    drive(NdjsonWorkload(host.info["ports"]["ndjson"], connections=3, depth=4), 300)


@pytest.mark.afxdp
def test_nvme_pdu_handler_offloaded(host: HostProcess) -> None:
    drive(NvmeWorkload(host.info["ports"]["nvme"], connections=3, depth=4), 300)
    stats = host.stats()
    assert stats["host"]["protocol_errors"] == 0
    assert stats["agent"]["messages_to_host"] == stats["host"]["messages_in"]
    assert host.info["backend"] == "afxdp"


@pytest.mark.afxdp
def test_pipelined_calls_come_back_joined_and_whole(host: HostProcess) -> None:
    # raw bytes, as any msgpack-rpc client sends them: 8 calls in one write.
    # The host joins the run's replies into fewer DATA messages
    # (HostConfig.coalesce_replies); the client still reads 8 whole responses
    def call(s: socket.socket, calls: list[Any]) -> list[Any]:
        s.sendall(b"".join(msgpack.packb(c) for c in calls))
        got: list[Any] = []
        stream = msgpack.Unpacker()
        while len(got) < len(calls):
            data = s.recv(65536)
            assert data, f"connection closed after {len(got)} responses"
            stream.feed(data)
            got.extend(stream)
        return got

    with socket.create_connection(("127.0.0.1", host.info["ports"]["kv"]), timeout=10) as s:
        # the first call: the server picks the connection up (its calls are
        # served on the receive path from then on)
        assert call(s, [[0, 1, "echo", []]]) == [[1, 1, None, []]]
        before = host.stats()["host"]["messages_out"]
        calls = [[0, 100 + i, "echo", ["x" * i, i]] for i in range(8)]
        got = call(s, calls)
        sent = host.stats()["host"]["messages_out"] - before
    assert sorted(got) == [[1, 100 + i, None, ["x" * i, i]] for i in range(8)]
    assert 1 <= sent < len(calls)
