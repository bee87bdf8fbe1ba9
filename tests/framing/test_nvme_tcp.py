"""NVMe/TCP PDU framer: golden vectors (hand-assembled per the NVMe/TCP
transport specification, with CRC32C digests), negotiation and bad input."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from framing_helpers import feed_all, one_byte_at_a_time

from framing import (
    BadDigest,
    BadDigestFlags,
    BadHeaderLength,
    BadLength,
    BadPduOffset,
    FrameTooLong,
    FramingError,
    NvmePdu,
    NvmeTcpFramer,
    PduType,
    UnknownPduType,
    framer_from_spec,
    make_nvme_pdu,
)


def le32(v: int) -> bytes:
    return struct.pack("<I", v)


def test_crc32c_known_vectors() -> None:
    # RFC 3720 (iSCSI) appendix B.4 CRC32C examples and the classic check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


# ICReq: CH (type 0, flags 0, HLEN 128, PDO 0, PLEN 128) + PFV 0, HPDA 0,
# DGST 0b11 (both digests), MAXR2T 0, reserved.
ICREQ = bytes([0x00, 0x00, 0x80, 0x00]) + le32(128) + b"\x00\x00\x00\x03" + le32(0) + bytes(112)
# ICResp: PFV 0, CPDA 0, DGST 0b11, MAXH2CDATA 0x20000.
ICRESP = (
    bytes([0x01, 0x00, 0x80, 0x00]) + le32(128) + b"\x00\x00\x00\x03" + le32(0x20000) + bytes(112)
)

# CapsuleCmd with header and data digests: HLEN 72, HDGST at 72, PDO 76, data
# "123456789", DDGST; PLEN 76 + 9 + 4 = 89.
SQE = bytes([0x01, 0x00, 0x34, 0x12]) + bytes(60)  # opcode write, CID 0x1234
CMD_HDR = bytes([0x04, 0x03, 72, 76]) + le32(89) + SQE
CMD = CMD_HDR + le32(crc32c(CMD_HDR)) + b"123456789" + bytes.fromhex("839206e3")

# CapsuleResp with header digest: HLEN 24, PLEN 28, no data.
CQE = bytes(8) + bytes([0x00, 0x00, 0x01, 0x00, 0x34, 0x12, 0x00, 0x00])
RESP_HDR = bytes([0x05, 0x01, 24, 0]) + le32(28) + CQE
RESP = RESP_HDR + le32(crc32c(RESP_HDR))


def test_golden_session_with_digests() -> None:
    stream = ICREQ + CMD + RESP
    expected = [
        NvmePdu(ICREQ, b"", PduType.ICREQ),
        NvmePdu(CMD_HDR, b"123456789", PduType.CAPSULE_CMD),
        NvmePdu(RESP_HDR, b"", PduType.CAPSULE_RESP),
    ]
    # digests learned from the ICReq (DGST = 0b11)
    assert feed_all(NvmeTcpFramer(), [stream]) == expected
    assert feed_all(NvmeTcpFramer(), one_byte_at_a_time(stream)) == expected
    f = NvmeTcpFramer()
    f.feed(stream + CMD[:40])  # trailing partial PDU stays buffered
    assert f.drain() == expected
    assert f.buffered == 40 and f.hdgst and f.ddgst
    # encode reproduces the wire bytes; split_parts gives header and data
    assert b"".join(f.encode(p) for p in expected) == stream
    assert f.split_parts(expected[1]) == (CMD_HDR, b"123456789")
    cmd = expected[1]
    assert (cmd.flags, cmd.hlen, cmd.pdo, cmd.plen, cmd.hdgst, cmd.ddgst) == (
        3,
        72,
        76,
        89,
        True,
        True,
    )
    # make_nvme_pdu builds the same PDU
    assert (
        make_nvme_pdu(PduType.CAPSULE_CMD, SQE, b"123456789", hdgst=True, ddgst=True) == expected[1]
    )


def test_icresp_learns_digests_and_spec_option() -> None:
    f = NvmeTcpFramer()
    f.feed(ICRESP + CMD)
    assert [p.pdu_type for p in f.drain()] == [1, 4]
    f = framer_from_spec("nvme-tcp:hdgst=1,ddgst=1")
    assert isinstance(f, NvmeTcpFramer)
    f.feed(CMD)
    assert f.drain()[0].data == b"123456789"


def test_plain_pdus_without_digests() -> None:
    c2h_hdr = (
        bytes([0x07, 0x0C, 24, 24]) + le32(29) + struct.pack("<HHII", 0x1234, 0, 0, 5) + bytes(4)
    )
    r2t_hdr = (
        bytes([0x09, 0x00, 24, 0]) + le32(24) + struct.pack("<HHII", 0x1234, 7, 0, 4096) + bytes(4)
    )
    term_hdr = bytes([0x03, 0x00, 24, 0]) + le32(24 + 8) + struct.pack("<HI", 1, 0) + bytes(10)
    stream = c2h_hdr + b"hello" + r2t_hdr + term_hdr + b"badpdu!!"
    got = feed_all(NvmeTcpFramer(), [stream])
    assert got == [
        NvmePdu(c2h_hdr, b"hello", 7),
        NvmePdu(r2t_hdr, b"", 9),
        NvmePdu(term_hdr, b"badpdu!!", 3),
    ]


def _expect(exc: type[FramingError], stream: bytes, **kw: bool) -> FramingError:
    f = NvmeTcpFramer(**kw)
    f.feed(stream)
    with pytest.raises(exc) as info:
        f.next_message()
        f.feed_eof()
        f.next_message()
    return info.value


def test_bad_header_digest() -> None:
    bad = bytearray(CMD)
    bad[10] ^= 1  # a header byte, after the CH
    assert _expect(BadDigest, bytes(bad), hdgst=True, ddgst=True).code == "bad_digest"


def test_bad_data_digest() -> None:
    bad = bytearray(CMD)
    bad[80] ^= 0x40  # a data byte
    _expect(BadDigest, bytes(bad), hdgst=True, ddgst=True)


def test_digest_flags_must_match_negotiation() -> None:
    _expect(BadDigestFlags, CMD)  # digests present, none negotiated
    plain = make_nvme_pdu(PduType.CAPSULE_RESP, CQE)
    _expect(BadDigestFlags, NvmeTcpFramer().encode(plain), hdgst=True)  # missing HDGST


@pytest.mark.parametrize("ptype", [0x08, 0x0A, 0x0B, 0x7F, 0xFF])
def test_unknown_pdu_type(ptype: int) -> None:
    assert _expect(UnknownPduType, bytes([ptype, 0, 24, 0]) + le32(24)).code == "unknown_pdu_type"


def test_wrong_hlen() -> None:
    _expect(BadHeaderLength, bytes([0x05, 0, 32, 0]) + le32(32))


def test_plen_less_than_hlen() -> None:
    assert _expect(BadLength, bytes([0x06, 0, 24, 0]) + le32(16)).code == "bad_length"


def test_pdo_inside_header() -> None:
    assert _expect(BadPduOffset, bytes([0x06, 0, 24, 8]) + le32(40)).code == "bad_data_offset"
    # PDO inside the header digest
    _expect(BadPduOffset, bytes([0x06, 0x01, 24, 26]) + le32(40), hdgst=True)
    # PDO at or beyond PLEN
    _expect(BadPduOffset, bytes([0x06, 0, 24, 40]) + le32(40))


def test_data_on_a_pdu_type_without_data() -> None:
    _expect(BadPduOffset, bytes([0x05, 0, 24, 24]) + le32(30))
    _expect(BadLength, bytes([0x05, 0, 24, 0]) + le32(30))


def test_icreq_plen_must_be_128() -> None:
    _expect(BadLength, bytes([0x00, 0, 128, 0]) + le32(200))


def test_plen_above_max_rejected_before_buffering() -> None:
    f = NvmeTcpFramer(max_message_size=4096)
    f.feed(bytes([0x06, 0, 24, 24]) + le32(1 << 30))
    with pytest.raises(FrameTooLong):
        f.next_message()
    assert f.buffered == 0


def test_nvme_pdu_constructor_checks_optional_header_fields() -> None:
    pdu = NvmePdu(CMD_HDR, b"123456789", PduType.CAPSULE_CMD, 3, 72, 76, 89)
    assert pdu == NvmePdu(CMD_HDR, b"123456789", PduType.CAPSULE_CMD)
    with pytest.raises(ValueError, match="plen"):
        NvmePdu(CMD_HDR, b"123456789", PduType.CAPSULE_CMD, 3, 72, 76, 90)


def test_lowering_max_message_size_after_construction_applies() -> None:
    f2 = NvmeTcpFramer(hdgst=True, ddgst=True)
    f2.feed(CMD)  # classifies the CapsuleCmd header with the default limit
    assert len(f2.drain()) == 1
    f2.max_message_size = 64  # e.g. the agent's own, smaller limit
    f2.feed(CMD)
    with pytest.raises(FrameTooLong):
        f2.next_message()
