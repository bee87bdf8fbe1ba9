"""Framer throughput next to a bare split of the same stream.

For each built-in framer and message size (16 B, 256 B, 4 KiB payloads) a
stream of messages is cut into 64 KiB chunks and fed through the framer
(``feed`` + ``drain``). The same chunks are split by a bare loop in the same
run: ``struct.unpack_from`` over ``bytes`` with the leftover carried to the next
chunk (length-prefixed, NVMe/TCP, ONC RPC), or a bare ``msgpack.Unpacker``
(msgpack-rpc). Reported: messages/s, MB/s (payload + framing bytes), and the
ratio framer time per message / bare time per message, each the median of
``--reps`` repetitions (framer and bare runs interleaved). Times are CPU time
of this process (``time.process_time``), so other jobs on a shared machine
inflate them less than wall-clock time would; the garbage collector is off
while timing (as in ``timeit``).

    .venv/bin/python bench/bench_framing.py            # table
    .venv/bin/python bench/bench_framing.py --json     # machine-readable summary
    FRAMING_PURE_PYTHON=1 .venv/bin/python bench/bench_framing.py   # without the C accelerator

Each bare loop collects its output in a new list per chunk, as ``drain()``
returns one list per ``feed``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
from crc32c import crc32c

from framing import (
    Frame,
    Framer,
    LengthFieldFramer,
    MsgpackRpcFramer,
    NvmeTcpFramer,
    OncRecord,
    OncRpcFramer,
    PduType,
    RpcRequest,
    make_nvme_pdu,
)
from framing import _messages as framing_messages

CHUNK = 64 * 1024
SIZES = (16, 256, 4096)


# -- bare loops: the same split, nothing else ---------------------------------


def bare_length(chunks: list[bytes]) -> int:
    unpack = struct.Struct(">I").unpack_from
    count = 0
    rest = b""
    for chunk in chunks:
        out: list[bytes] = []  # one list per chunk, as drain() returns
        append = out.append
        data = rest + chunk if rest else chunk
        n = len(data)
        pos = 0
        while n - pos >= 4:
            e = pos + 4 + unpack(data, pos)[0]
            if e > n:
                break
            append(data[pos + 4 : e])
            pos = e
        rest = data[pos:]
        count += len(out)
    return count


def bare_onc(chunks: list[bytes]) -> int:
    unpack = struct.Struct(">I").unpack_from
    count = 0
    rest = b""
    for chunk in chunks:
        out: list[bytes] = []  # one list per chunk, as drain() returns
        append = out.append
        data = rest + chunk if rest else chunk
        n = len(data)
        pos = 0
        while n - pos >= 4:
            word = unpack(data, pos)[0]
            e = pos + 4 + (word & 0x7FFFFFFF)
            if e > n:
                break
            append(data[pos + 4 : e])  # single-fragment records (last bit set)
            pos = e
        rest = data[pos:]
        count += len(out)
    return count


def _bare_nvme(digests: bool) -> Callable[[list[bytes]], int]:
    def bare(chunks: list[bytes]) -> int:
        unpack = struct.Struct("<BBBBI").unpack_from
        u32 = struct.Struct("<I").unpack_from
        count = 0
        rest = b""
        for chunk in chunks:
            out: list[tuple[bytes, bytes]] = []  # one list per chunk, as drain() returns
            append = out.append
            data = rest + chunk if rest else chunk
            n = len(data)
            pos = 0
            while n - pos >= 8:
                _, _, hlen, pdo, plen = unpack(data, pos)
                e = pos + plen
                if e > n:
                    break
                header = data[pos : pos + hlen]
                if digests:
                    body = data[pos + pdo : e - 4]
                    if (
                        crc32c(header) != u32(data, pos + hlen)[0]
                        or crc32c(body) != u32(data, e - 4)[0]
                    ):
                        raise ValueError("digest")
                else:
                    body = data[pos + pdo : e]
                append((header, body))
                pos = e
            rest = data[pos:]
            count += len(out)
        return count

    return bare


def bare_msgpack(chunks: list[bytes]) -> int:
    unp = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)
    count = 0
    for chunk in chunks:
        unp.feed(chunk)
        out: list[Any] = []  # one list per chunk, as drain() returns
        append = out.append
        for obj in unp:
            append(obj)
        count += len(out)
    return count


# -- cases --------------------------------------------------------------------


def _framer_run(make: Callable[[], Framer[Any]]) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        f = make()
        n = 0
        for chunk in chunks:
            f.feed(chunk)
            n += len(f.drain())
        return n

    return run


def _c2h(payload: bytes, digests: bool) -> Any:
    psh = struct.pack("<HHII", 1, 0, 0, len(payload)) + bytes(4)
    return make_nvme_pdu(PduType.C2H_DATA, psh, payload, hdgst=digests, ddgst=digests)


def cases(total: int) -> list[dict[str, Any]]:
    out = []
    for size in SIZES:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        count = max(total // (size + 8), 64)
        specs: list[
            tuple[str, Framer[Any], Any, Callable[[], Framer[Any]], Callable[..., int], str]
        ] = [
            (
                "length",
                LengthFieldFramer(initial_bytes_to_strip=4),
                Frame(payload),
                lambda: LengthFieldFramer(initial_bytes_to_strip=4),
                bare_length,
                "struct.unpack_from",
            ),
            (
                "msgpack-rpc",
                MsgpackRpcFramer(),
                RpcRequest(1, "method", [payload]),
                MsgpackRpcFramer,
                bare_msgpack,
                "msgpack.Unpacker",
            ),
            (
                "nvme-tcp",
                NvmeTcpFramer(),
                _c2h(payload, False),
                NvmeTcpFramer,
                _bare_nvme(False),
                "struct.unpack_from",
            ),
            (
                "nvme-tcp+digests",
                NvmeTcpFramer(hdgst=True, ddgst=True),
                _c2h(payload, True),
                lambda: NvmeTcpFramer(hdgst=True, ddgst=True),
                _bare_nvme(True),
                "struct.unpack_from+crc32c",
            ),
            (
                "onc-rpc",
                OncRpcFramer(),
                OncRecord(payload),
                OncRpcFramer,
                bare_onc,
                "struct.unpack_from",
            ),
        ]
        for name, enc, msg, make, bare, bare_name in specs:
            wire = enc.encode(msg) * count
            chunks = [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]
            out.append(
                {
                    "framer": name,
                    "size": size,
                    "count": count,
                    "bytes": len(wire),
                    "chunks": chunks,
                    "framer_run": _framer_run(make),
                    "bare_run": bare,
                    "baseline": bare_name,
                }
            )
    return out


def measure(case: dict[str, Any], reps: int, min_time: float) -> dict[str, Any]:
    ft: list[float] = []
    bt: list[float] = []
    chunks = case["chunks"]
    t0 = time.process_time()
    case["bare_run"](chunks)
    loops = max(1, round(min_time / max(time.process_time() - t0, 1e-6)))
    for _ in range(reps):
        for run, times in ((case["framer_run"], ft), (case["bare_run"], bt)):
            gc.collect()
            gc.disable()  # as timeit does: collector passes are noise here
            try:
                t0 = time.process_time()
                for _ in range(loops):
                    n = run(chunks)
                times.append((time.process_time() - t0) / loops)
            finally:
                gc.enable()
            if n != case["count"]:
                raise AssertionError(f"{case['framer']}: {n} messages, expected {case['count']}")
    f_med, b_med = statistics.median(ft), statistics.median(bt)
    count = case["count"]
    return {
        "framer": case["framer"],
        "size": case["size"],
        "messages": count,
        "baseline": case["baseline"],
        "framer_msgs_per_s": count / f_med,
        "framer_mb_per_s": case["bytes"] / f_med / 1e6,
        "bare_msgs_per_s": count / b_med,
        "bare_mb_per_s": case["bytes"] / b_med / 1e6,
        "framer_ns_per_msg": f_med / count * 1e9,
        "bare_ns_per_msg": b_med / count * 1e9,
        "ratio": f_med / b_med,
    }


def _accel_name() -> str:
    if getattr(framing_messages, "ACCELERATED", False):  # False in trees before the accelerator
        return "C (framing._speedups)"
    return "none: pure Python (FRAMING_PURE_PYTHON=1, or scripts/build_accelerators.py not run)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    ap.add_argument("--reps", type=int, default=7, help="repetitions (median reported)")
    ap.add_argument("--mb", type=float, default=2.0, help="stream size per case, MB")
    ap.add_argument(
        "--min-time",
        type=float,
        default=0.02,
        help="seconds per timed sample (the stream is re-run to reach it)",
    )
    ap.add_argument("--target", type=float, default=1.5, help="ratio target to report against")
    args = ap.parse_args(argv)
    results = [measure(c, args.reps, args.min_time) for c in cases(int(args.mb * 1e6))]
    meets = all(r["ratio"] <= args.target for r in results)
    if args.json:
        print(
            json.dumps(
                {
                    "chunk": CHUNK,
                    "reps": args.reps,
                    "target_ratio": args.target,
                    "python": sys.version.split()[0],
                    "accelerator": _accel_name(),
                    "all_within_target": meets,
                    "results": results,
                },
                indent=2,
            )
        )
        return 0
    print(f"64 KiB chunks, median of {args.reps}; ratio = framer ns/msg / bare ns/msg")
    print(f"framing accelerator: {_accel_name()}")
    print(
        f"{'framer':<18}{'size':>6}{'msgs/s':>12}{'MB/s':>9}{'ns/msg':>9}"
        f"{'bare msgs/s':>13}{'bare ns':>9}{'ratio':>7}  baseline"
    )
    for r in results:
        print(
            f"{r['framer']:<18}{r['size']:>6}{r['framer_msgs_per_s']:>12,.0f}"
            f"{r['framer_mb_per_s']:>9.0f}{r['framer_ns_per_msg']:>9.0f}"
            f"{r['bare_msgs_per_s']:>13,.0f}{r['bare_ns_per_msg']:>9.0f}{r['ratio']:>7.2f}"
            f"  {r['baseline']}"
        )
    print(f"all within {args.target}x: {meets}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
