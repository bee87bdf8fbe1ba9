"""NVMe/TCP PDU framing (NVM Express TCP Transport Specification, revision
1.0; section numbers below refer to that revision).

Theory of operation
-------------------
Every PDU starts with the 8-byte common header, CH (section 3.6.1, "Common
Header"): PDU-Type (byte 0), FLAGS (byte 1), HLEN (byte 2), PDO (byte 3) and
PLEN (bytes 4-7, little-endian u32, the whole PDU). The layout of a PDU is::

    | CH + PSH (HLEN) | HDGST (4, if HDGSTF) | PAD | DATA | DDGST (4, if DDGSTF) |
    0                 HLEN                   PDO    PDO   PLEN-4               PLEN

The first 4 bytes of a CH (type, flags, hlen, pdo) are read as one integer and
classified once: the PDU type must be defined (section 3.6.2), HLEN must be the
fixed header length of that type, the digest flags must agree with the digests
negotiated by ICReq/ICResp (section 3.6.2.1 ICReq DGST / 3.6.2.2 ICResp DGST)
and be allowed for the type, PDO must not point inside the header or its
digest. The result (the PLEN range allowed and where data starts) is cached,
so the per-PDU work is one ``unpack_from``, one dict lookup, two comparisons
and two slices. PLEN is checked against the range and ``max_message_size``
before the PDU is buffered. When the whole PDU is there, the header digest
(CRC32C of the HLEN header bytes) and the data digest (CRC32C of DATA), both
little-endian, are verified (section 3.6.1 "FLAGS", and "Digests" in section
3.3). A PDU comes out as a :class:`~framing.NvmePdu` with the header and the
data (from PDO, without pad or digests) as separate ``bytes``.

Digest negotiation: ``hdgst``/``ddgst`` give the initial state (use them when the
connection's negotiation was seen elsewhere); with ``learn_digests`` (default)
an ICReq or ICResp decoded or encoded by this framer sets them from its DGST
field (bit 0 HDGST_ENABLE, bit 1 DDGST_ENABLE).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ._base import Framer, parse_spec_value
from ._errors import (
    BadDigest,
    BadDigestFlags,
    BadFramerSpec,
    BadHeaderLength,
    BadLength,
    BadPduOffset,
    EncodeError,
    FramerConfigError,
    FrameTooLong,
    UnknownPduType,
)
from ._messages import NvmePdu, _speedups, build_pdus, pdu_maker

__all__ = ["NvmeTcpFramer", "PduType", "make_nvme_pdu"]


class PduType:
    """PDU-Type values (section 3.6.1, figure "PDU Type")."""

    ICREQ = 0x00
    ICRESP = 0x01
    H2C_TERM_REQ = 0x02
    C2H_TERM_REQ = 0x03
    CAPSULE_CMD = 0x04
    CAPSULE_RESP = 0x05
    H2C_DATA = 0x06
    C2H_DATA = 0x07
    R2T = 0x09


HDGSTF = 0x01  # section 3.6.1 FLAGS bit 0: header digest present
DDGSTF = 0x02  # section 3.6.1 FLAGS bit 1: data digest present
C2H_LAST_PDU = 0x04  # section 3.6.2.8 C2HData FLAGS bit 2 (also H2CData, 3.6.2.7)
C2H_SUCCESS = 0x08  # section 3.6.2.8 C2HData FLAGS bit 3

# Fixed HLEN per PDU type (section 3.6.2.x: ICReq/ICResp 128, TermReq 24,
# CapsuleCmd 72 = 8 + 64-byte SQE, CapsuleResp 24 = 8 + 16-byte CQE,
# H2CData/C2HData/R2T 24).
HLEN = {0x00: 128, 0x01: 128, 0x02: 24, 0x03: 24, 0x04: 72, 0x05: 24, 0x06: 24, 0x07: 24, 0x09: 24}
# PDUs that carry a header digest when it is enabled (all but ICReq, ICResp,
# H2CTermReq and C2HTermReq: sections 3.6.2.1-3.6.2.4 declare no HDGST).
_HD_TYPES = frozenset({0x04, 0x05, 0x06, 0x07, 0x09})
# PDUs that carry data, and a data digest when enabled.
_DATA_TYPES = frozenset({0x04, 0x06, 0x07})
_TERM_TYPES = frozenset({0x02, 0x03})
_TERM_MAX_PLEN = 152  # sections 3.6.2.3/3.6.2.4: header + up to 128 bytes of error data
_IC_PLEN = 128  # sections 3.6.2.1/3.6.2.2: PLEN shall be 128
_ALLOWED_FLAGS = {  # flag bits defined per type; others are reserved
    0x00: 0,
    0x01: 0,
    0x02: 0,
    0x03: 0,
    0x04: HDGSTF | DDGSTF,
    0x05: HDGSTF,
    0x06: HDGSTF | DDGSTF | C2H_LAST_PDU,
    0x07: HDGSTF | DDGSTF | C2H_LAST_PDU | C2H_SUCCESS,
    0x09: HDGSTF,
}

_CH4 = struct.Struct("<II")  # (type|flags<<8|hlen<<16|pdo<<24, plen)
_CH = struct.Struct("<BBBBI")
_U32 = struct.Struct("<I")
_DGST_OFFSET = 11  # ICReq/ICResp byte 11: DGST
_split_nvme: Any = _speedups.split_nvme if _speedups is not None else None


def _load_crc32c() -> Callable[[bytes], int]:
    """The hardware-accelerated CRC32C of the ``crc32c`` package, imported on
    first use: its ``__init__`` imports ``importlib.metadata``, which pulls in
    ``socket``, and ``import framing`` must stay free of socket modules."""
    from crc32c import crc32c

    return crc32c


class NvmeTcpFramer(Framer[NvmePdu]):
    """NVMe/TCP PDUs in, header/data-split :class:`~framing.NvmePdu` out.

    ``max_message_size`` bounds PLEN (the whole PDU on the wire).
    """

    name: ClassVar[str] = "nvme-tcp"

    def __init__(
        self,
        *,
        hdgst: bool = False,
        ddgst: bool = False,
        learn_digests: bool = True,
        max_message_size: int = (1 << 20) + 4096,
    ) -> None:
        super().__init__(max_message_size=max_message_size)
        if max_message_size < _IC_PLEN:
            raise FramerConfigError("max_message_size must be at least 128 (ICReq/ICResp)")
        self._hdgst = bool(hdgst)
        self._ddgst = bool(ddgst)
        self.learn_digests = bool(learn_digests)
        """Update the digest settings from ICReq/ICResp PDUs seen."""
        self._cache: dict[int, tuple[int, int, int, int, int, int, int, int]] = {}
        self._need = 8
        self._crc = _load_crc32c()
        self._cache_max = max_message_size
        self._fast = _speedups is not None
        """Use the C split loop (the tests turn it off to compare with the Python one)."""

    @property
    def hdgst(self) -> bool:
        """Header digests are enabled on this connection."""
        return self._hdgst

    @property
    def ddgst(self) -> bool:
        """Data digests are enabled on this connection."""
        return self._ddgst

    def set_digests(self, *, hdgst: bool, ddgst: bool) -> None:
        """Set the negotiated digests (e.g. from an ICReq/ICResp seen elsewhere)."""
        self._hdgst = bool(hdgst)
        self._ddgst = bool(ddgst)
        self._cache.clear()

    # -- decoding -------------------------------------------------------------

    def _classify(self, key: int) -> tuple[int, int, int, int, int, int, int, int]:
        """Validate the first 4 CH bytes; return (min_plen, max_plen,
        data_start, hd, dd, hlen, type, pdo)."""
        ptype, flags, hlen, pdo = key & 0xFF, (key >> 8) & 0xFF, (key >> 16) & 0xFF, key >> 24
        fixed = HLEN.get(ptype)
        if fixed is None:  # section 3.6.1: PDU-Type values not defined are reserved
            raise UnknownPduType(f"unknown PDU type 0x{ptype:02x}")
        if hlen != fixed:  # section 3.6.2.x: HLEN is fixed per type
            raise BadHeaderLength(f"PDU type 0x{ptype:02x}: HLEN {hlen}, expected {fixed}")
        if flags & ~_ALLOWED_FLAGS[ptype]:
            raise BadDigestFlags(f"PDU type 0x{ptype:02x}: reserved flag bits set (0x{flags:02x})")
        hd = 4 if flags & HDGSTF else 0
        dd = 4 if flags & DDGSTF else 0
        # Section 3.6.1 FLAGS / 3.6.2.1 DGST: digests are present exactly when
        # negotiated (the data digest only when the PDU has data).
        if hd and not self._hdgst:
            raise BadDigestFlags("HDGSTF set but header digest not negotiated")
        if not hd and self._hdgst and ptype in _HD_TYPES:
            raise BadDigestFlags("header digest negotiated but HDGSTF clear")
        if dd and not self._ddgst:
            raise BadDigestFlags("DDGSTF set but data digest not negotiated")
        hend = hlen + hd
        top = self.max_message_size
        if ptype in (PduType.ICREQ, PduType.ICRESP):
            if pdo != 0:
                raise BadPduOffset("ICReq/ICResp PDO shall be 0")
            return (_IC_PLEN, _IC_PLEN, hlen, 0, 0, hlen, ptype, pdo)
        if ptype in _TERM_TYPES:
            # Sections 3.6.2.3/3.6.2.4: error data follows the header directly.
            if pdo not in (0, hlen):
                raise BadPduOffset(f"TermReq PDO {pdo} must be 0 or {hlen}")
            return (hlen, min(_TERM_MAX_PLEN, top), hlen, 0, 0, hlen, ptype, pdo)
        if pdo == 0:
            if dd:
                raise BadDigestFlags("DDGSTF set on a PDU without data (PDO 0)")
            return (hend, hend, hend, hd, 0, hlen, ptype, pdo)
        if ptype not in _DATA_TYPES:
            raise BadPduOffset(f"PDU type 0x{ptype:02x} carries no data but PDO is {pdo}")
        if pdo < hend:  # PDO inside the header or its digest
            raise BadPduOffset(f"PDO {pdo} points inside the header ({hend} bytes)")
        if self._ddgst and not dd:
            raise BadDigestFlags("data digest negotiated but DDGSTF clear on a PDU with data")
        # Data must be non-empty when PDO is set.
        return (pdo + dd + 1, top, pdo, hd, dd, hlen, ptype, pdo)

    def _parse(self, data: bytes) -> int:
        n = len(data)
        pos = 0
        unpack = _CH4.unpack_from
        u32 = _U32.unpack_from
        cache = self._cache
        if self._cache_max != self.max_message_size:  # limit changed since classified
            cache.clear()
            self._cache_max = self.max_message_size
        crc32c = self._crc
        headers: list[bytes] = []
        bodies: list[bytes] = []
        types: list[int] = []
        add_header = headers.append
        add_body = bodies.append
        add_type = types.append
        fast = self._fast and not (self._hdgst or self._ddgst)
        try:
            while n - pos >= 8:
                if fast:  # PDUs of classified types without digests: in C
                    if headers:  # keep the order: what Python took goes first
                        build_pdus(self._out, headers, bodies, types)
                        headers.clear()
                        bodies.clear()
                        types.clear()
                    pos = _split_nvme(data, pos, cache, self._out, pdu_maker)
                    if n - pos < 8:
                        break
                key, plen = unpack(data, pos)
                ent = cache.get(key)
                if ent is None:
                    ent = self._classify(key)
                    cache[key] = ent
                minp, maxp, ds, hd, dd, hlen, ptype, _ = ent
                if plen < minp or plen > maxp:
                    self._bad_plen(plen, ent)
                e = pos + plen
                if e > n:
                    self._need = plen
                    return pos
                hend = pos + hlen
                header = data[pos:hend]
                if hd and crc32c(header) != u32(data, hend)[0]:
                    raise BadDigest(f"header digest mismatch (PDU type 0x{ptype:02x})")
                if dd:
                    body = data[pos + ds : e - 4]
                    if crc32c(body) != u32(data, e - 4)[0]:
                        raise BadDigest(f"data digest mismatch (PDU type 0x{ptype:02x})")
                else:  # no data digest: no CRC call
                    body = data[pos + ds : e]
                add_header(header)
                add_body(body)
                add_type(ptype)
                pos = e
                if ptype <= PduType.ICRESP and self.learn_digests:
                    self._learn(header)
                    cache = self._cache
                    fast = self._fast and not (self._hdgst or self._ddgst)
            self._need = 8
            return pos
        finally:  # also the PDUs before an error
            if headers:
                build_pdus(self._out, headers, bodies, types)

    def _bad_plen(self, plen: int, ent: tuple[int, ...]) -> None:
        minp, maxp, _, hd, dd, hlen, ptype, pdo = ent
        if plen > self.max_message_size:
            raise FrameTooLong(f"PLEN {plen} exceeds {self.max_message_size}")
        if plen < hlen + hd:
            raise BadLength(f"PLEN {plen} < header length {hlen + hd}")
        if pdo and plen < pdo + dd + 1:
            raise BadPduOffset(f"PDO {pdo} (+ digest {dd}) at or beyond PLEN {plen}")
        raise BadLength(f"PLEN {plen} outside [{minp}, {maxp}] for PDU type 0x{ptype:02x}")

    def _learn(self, header: bytes) -> None:
        dgst = header[_DGST_OFFSET]
        self.set_digests(hdgst=bool(dgst & 0x01), ddgst=bool(dgst & 0x02))

    # -- encoding -------------------------------------------------------------

    def encode(self, message: NvmePdu) -> bytes:
        """Wire bytes: header, header digest, pad up to PDO, data, data digest
        (digests computed here when the PDU's flags say so)."""
        m = message
        h = m.header
        if len(h) < 8 or len(h) != h[2]:
            raise EncodeError(f"header is {len(h)} bytes, HLEN says {h[2] if len(h) > 2 else '?'}")
        ptype, flags, hlen, pdo, plen = _CH.unpack_from(h, 0)
        if ptype != m.pdu_type:
            raise EncodeError("pdu_type disagrees with the header's PDU-Type byte")
        crc32c = self._crc
        parts = [h]
        size = len(h)
        if flags & HDGSTF:
            parts.append(_U32.pack(crc32c(h)))
            size += 4
        if m.data:
            start = pdo if pdo else hlen
            if start < size:
                raise EncodeError(f"PDO {pdo} inside the header")
            parts.append(bytes(start - size))
            parts.append(m.data)
            size = start + len(m.data)
        if flags & DDGSTF:
            parts.append(_U32.pack(crc32c(m.data)))
            size += 4
        if size != plen:
            raise EncodeError(f"PDU is {size} bytes, PLEN says {plen}")
        if ptype <= PduType.ICRESP and self.learn_digests:
            self._learn(h)
        return b"".join(parts)

    def split_parts(self, message: NvmePdu) -> tuple[bytes, bytes]:
        """``(header, data)``: header without digest, data from PDO without
        pad or digest."""
        return message.header, message.data

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> NvmeTcpFramer:
        names = {
            "hdgst": "hdgst",
            "ddgst": "ddgst",
            "learn": "learn_digests",
            "max": "max_message_size",
        }
        kwargs: dict[str, object] = {}
        for key, value in params.items():
            name = names.get(key.lower())
            if name is None:
                raise BadFramerSpec(
                    f"nvme-tcp: unknown parameter {key!r} (known: hdgst, ddgst, learn, max)"
                )
            v = parse_spec_value(value)
            if name == "max_message_size":
                if not isinstance(v, int) or isinstance(v, bool):
                    raise BadFramerSpec(f"nvme-tcp: max must be an integer, got {value!r}")
            elif v not in (0, 1):  # True/False compare equal to 1/0
                raise BadFramerSpec(f"nvme-tcp: {key} must be 0/1 or true/false, got {value!r}")
            else:
                v = bool(v)
            kwargs[name] = v
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except FramerConfigError as exc:
            raise BadFramerSpec(f"nvme-tcp: {exc}") from exc


def make_nvme_pdu(
    pdu_type: int,
    psh: bytes = b"",
    data: bytes = b"",
    *,
    flags: int = 0,
    hdgst: bool = False,
    ddgst: bool = False,
    pda: int = 0,
) -> NvmePdu:
    """Build a PDU to send: ``psh`` is the PDU specific header (padded with
    zeros to the type's fixed HLEN - 8), ``data`` the PDU data. ``hdgst`` and
    ``ddgst`` set the digest flags (digests are computed by ``encode``);
    ``pda`` aligns PDO to a multiple of ``(pda + 1) * 4`` bytes (HPDA/CPDA)."""
    fixed = HLEN.get(pdu_type)
    if fixed is None:
        raise EncodeError(f"unknown PDU type 0x{pdu_type:02x}")
    if len(psh) > fixed - 8:
        raise EncodeError(f"PDU specific header of {len(psh)} bytes exceeds {fixed - 8}")
    psh = psh + bytes(fixed - 8 - len(psh))
    flags &= ~(HDGSTF | DDGSTF)
    if hdgst and pdu_type in _HD_TYPES:
        flags |= HDGSTF
    hend = fixed + (4 if flags & HDGSTF else 0)
    if pdu_type in _TERM_TYPES:
        pdo = 0
        plen = fixed + len(data)
    elif data:
        if pdu_type not in _DATA_TYPES:
            raise EncodeError(f"PDU type 0x{pdu_type:02x} carries no data")
        align = (pda + 1) * 4
        pdo = -(-hend // align) * align
        if ddgst:
            flags |= DDGSTF
        plen = pdo + len(data) + (4 if ddgst else 0)
    else:
        pdo = 0
        plen = hend
    if pdo > 255:
        raise EncodeError(f"PDO {pdo} does not fit one byte")
    header = _CH.pack(pdu_type, flags, fixed, pdo, plen) + psh
    return NvmePdu(header, bytes(data), pdu_type)
