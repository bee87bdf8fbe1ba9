"""An NVMe/TCP-style PDU handler: a tiny RAM block device behind offloaded PDUs.

The agent frames each client's stream with the ``nvme-tcp`` framer and hands
the host every PDU split in two: ``message.header`` is the PDU header (common
header + PDU specific header, HLEN bytes, header digest checked and removed),
``message.payload`` the PDU data (pad and data digest removed). The handler
never parses a byte stream; it answers with a PDU built by
:func:`framing.make_nvme_pdu` and sends its header and data separately
(``conn.send(pdu.data, header=pdu.header)``); the agent encodes the reply
(PLEN, PDO, digests when the connection negotiated them).

What it implements (NVMe/TCP transport spec 1.0, section 3.6.2; NVM command set):

* ICReq -> ICResp (no digests, CPDA 0, MAXH2CDATA 128 KiB);
* CapsuleCmd Write (opcode 0x01) with in-capsule data -> CapsuleResp (status 0);
* CapsuleCmd Read (opcode 0x02) -> one C2HData PDU with LAST_PDU | SUCCESS
  (the data, no separate CapsuleResp, section 3.6.2.8);
* anything else -> CapsuleResp with status "Invalid Opcode".

Blocks are 512 bytes; SLBA is CDW10-11 of the SQE and NLB (0-based) CDW12.
This is an example of the header/data split, not an NVMe target.

Run it offloaded (root: a veth pair, an agent process, AF_XDP; else shared memory)::

    .venv/bin/python examples/nvme_pdu_handler.py --port 18802
"""

from __future__ import annotations

import argparse
import struct
import sys
from typing import Any

if __name__ == "__main__":  # run as a script from a checkout: import this repo
    sys.path.insert(0, __file__.rsplit("/examples/", 1)[0])

import framing
import mux_rpc
from framing import NvmePdu, PduType

app = mux_rpc.App("nvme-ram")
PORT = 18802
FRAMER = "nvme-tcp"
BLOCK = 512
MAX_BLOCKS = 1 << 16
"""Device size in blocks (32 MiB): a write beyond it fails with LBA Out of Range."""

NVM_WRITE = 0x01
NVM_READ = 0x02
SC_SUCCESS = 0x0000
SC_INVALID_OPCODE = 0x0001  # generic command status (NVMe base spec, figure "Status Code")
SC_INVALID_FIELD = 0x0002
SC_LBA_OUT_OF_RANGE = 0x0080
C2H_LAST_PDU = 0x04
C2H_SUCCESS = 0x08

_SQE_HEAD = struct.Struct("<BBHI")  # SQE bytes 0-7: opcode, flags, CID, NSID
_SQE_LBA = struct.Struct("<QI")  # SQE bytes 40-51: CDW10-11 SLBA, CDW12 (NLB in bits 0-15)
_CQE = struct.Struct("<IIHHHH")  # DW0, DW1, SQHD, SQID, CID, status (phase bit 0)
_C2H = struct.Struct("<HHII")  # CCCID, reserved, DATAO, DATAL
_ICRESP = struct.Struct("<HBBI")  # PFV, CPDA, DGST, MAXH2CDATA


class RamDisk:
    """The device: ``MAX_BLOCKS`` blocks of ``BLOCK`` bytes, allocated on write."""

    def __init__(self, blocks: int = MAX_BLOCKS) -> None:
        self.blocks = blocks
        self.data: dict[int, bytes] = {}

    def write(self, lba: int, payload: bytes) -> int:
        n = -(-len(payload) // BLOCK)
        if lba + n > self.blocks:
            return SC_LBA_OUT_OF_RANGE
        for i in range(n):
            chunk = payload[i * BLOCK:(i + 1) * BLOCK]
            self.data[lba + i] = chunk.ljust(BLOCK, b"\0")
        return SC_SUCCESS

    def read(self, lba: int, count: int) -> bytes | None:
        if lba + count > self.blocks:
            return None
        zero = bytes(BLOCK)
        return b"".join(self.data.get(lba + i, zero) for i in range(count))


def capsule_resp(cid: int, status: int) -> NvmePdu:
    """A CapsuleResp PDU completing command ``cid`` with ``status`` (SC, phase 0)."""
    return framing.make_nvme_pdu(PduType.CAPSULE_RESP, _CQE.pack(0, 0, 0, 1, cid, status << 1))


def handle_pdu(header: bytes, data: bytes, disk: RamDisk) -> NvmePdu | None:
    """The reply to one PDU (header and data as the agent delivers them), or None.
    Pure: all the handler's logic, testable without any I/O."""
    ptype = header[0]
    if ptype == PduType.ICREQ:
        return framing.make_nvme_pdu(PduType.ICRESP, _ICRESP.pack(0, 0, 0, 128 * 1024))
    if ptype != PduType.CAPSULE_CMD or len(header) < 72:
        return None  # H2CData, TermReq, ...: not used by this device
    opcode, _flags, cid, _nsid = _SQE_HEAD.unpack_from(header, 8)
    slba, cdw12 = _SQE_LBA.unpack_from(header, 8 + 40)
    count = (cdw12 & 0xFFFF) + 1
    if opcode == NVM_WRITE:
        if len(data) != count * BLOCK:
            return capsule_resp(cid, SC_INVALID_FIELD)
        return capsule_resp(cid, disk.write(slba, data))
    if opcode == NVM_READ:
        blocks = disk.read(slba, count)
        if blocks is None:
            return capsule_resp(cid, SC_LBA_OUT_OF_RANGE)
        return framing.make_nvme_pdu(PduType.C2H_DATA, _C2H.pack(cid, 0, 0, len(blocks)),
                                     blocks, flags=C2H_LAST_PDU | C2H_SUCCESS)
    return capsule_resp(cid, SC_INVALID_OPCODE)


DISK = RamDisk()


@app.stream_handler(port=PORT, framer=FRAMER, host="127.0.0.1")
async def nvme_pdus(conn: mux_rpc.MessageConnection, message: mux_rpc.Message) -> None:
    """One PDU in (header and data apart), at most one PDU out."""
    reply = handle_pdu(message.header or b"", message.payload, DISK)
    if reply is not None:
        await conn.send(reply.data, header=reply.header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--backend", choices=("auto", "afxdp", "shm"), default="auto")
    parser.add_argument("--queues", type=int, default=2)
    args = parser.parse_args()

    import logging

    from mux_rpc.offload import run_offloaded

    logging.basicConfig(level=logging.INFO)

    async def serve(host: Any) -> None:
        async with mux_rpc.Server(app) as server:
            lst = await host.listen(args.port, FRAMER)
            print(f"NVMe/TCP-style PDU handler on 127.0.0.1:{lst.port} (offloaded)", flush=True)
            await server.serve(lst, handler=app.stream_handlers[0])

    try:
        run_offloaded(serve, backend=args.backend, queues=args.queues)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
