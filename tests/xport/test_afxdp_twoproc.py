"""AF_XDP between two processes over a veth pair, the host end in its own netns.

The receiver runs in a child process that enters the namespace *before*
creating its socket (and loads and attaches its own XDP program there). A
simple application-level window keeps the sender from overrunning it: the
receiver sends CRED frames back over the same link carrying its cumulative
``rx_buffers_posted()``, and the sender never has sent more than that. With
the window, no frame may be lost: the test checks order, integrity, and that
the kernel counted no drop and no empty-fill-ring event.

Run directly for a quick throughput figure::

    .venv/bin/python tests/xport/test_afxdp_twoproc.py bench --count 500000
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ETH = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
DATA = struct.Struct("!4sI")
CRED = struct.Struct("!4sQ")


PATTERN = bytes(range(256)) * 8


def data_frame(seq: int, size: int) -> bytes:
    """A numbered frame whose padding depends on ``seq`` (so a mix-up cannot pass)."""
    head = ETH + DATA.pack(b"DATA", seq & 0xFFFFFFFF)
    off = (seq * 7) & 0xFF
    return head + PATTERN[off:off + size - len(head)]


def cred_frame(posted: int) -> bytes:
    return ETH + CRED.pack(b"CRED", posted)


def receiver(ifname: str, count: int, size: int, copy: bool, timeout: float) -> dict[str, Any]:
    from xport._afxdp import AfXdpBackend

    be = AfXdpBackend.open(ifname, frame_count=4096, rx_size=2048, tx_size=512)
    try:
        advertised = be.rx_buffers_posted()
        be.send_batch([cred_frame(advertised)])
        expect = bad = received = 0
        deadline = time.monotonic() + timeout
        last_rx = time.monotonic()
        t0 = None
        while expect < count:
            got = be.recv_batch(64, copy=copy)
            now = time.monotonic()
            if not got:
                if now > deadline:
                    raise TimeoutError(f"receiver stalled at {expect}/{count}")
                if now - last_rx > 0.1:  # the sender may have missed our window: repeat it
                    be.send_batch([cred_frame(be.rx_buffers_posted())])
                    last_rx = now
                be.wait_readable(0.05)
                continue
            last_rx = now
            if t0 is None:
                t0 = time.perf_counter()
            for f in got:
                d = f.data
                seq = DATA.unpack_from(d, 14)[1]
                if seq != expect or bytes(d) != data_frame(seq, size):
                    bad += 1  # lost, reordered or damaged: counted, and we resync
                expect = seq + 1
                received += 1
                f.release()
            posted = be.rx_buffers_posted()
            if posted - advertised >= 64 or expect >= count:
                advertised = posted
                while be.send_batch([cred_frame(advertised)]) == 0:
                    be.flush()
        secs = time.perf_counter() - (t0 or time.perf_counter())
        return {"received": received, "bad": bad, "seconds": secs, "mode": be.mode,
                "xdp_mode": be.xdp_mode, "stats": be.statistics().as_dict()}
    finally:
        be.close()


def sender(be: Any, count: int, size: int, timeout: float) -> dict[str, Any]:
    credit = 0
    sent = 0
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    while sent < count:
        for f in be.recv_batch(64):
            tag, posted = CRED.unpack_from(f.data, 14)
            if tag == b"CRED":
                credit = max(credit, posted)
        room = min(64, count - sent, credit - sent)
        if room <= 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sender stalled at {sent}/{count}, credit {credit}")
            be.flush()
            be.wait_readable(0.05)
            continue
        sent += be.send_batch([data_frame(s, size) for s in range(sent, sent + room)])
    while be.tx_pending() and time.monotonic() < deadline:
        be.flush()
    return {"sent": sent, "seconds": time.perf_counter() - t0,
            "stats": be.statistics().as_dict()}


def run_two_process(count: int, size: int, *, copy: bool = True,
                    timeout: float = 60.0) -> dict[str, Any]:
    from backend_pairs import finish_child
    from xport._afxdp import AfXdpBackend
    from xport._topology import VethPair

    with VethPair(queues=1, host_netns=True) as pair:
        assert pair.agent is not None and pair.host is not None and pair.host.netns
        with AfXdpBackend.open(pair.agent.ifname, frame_count=1024, rx_size=256,
                               tx_size=512) as tx:
            cmd = [sys.executable, os.path.abspath(__file__), "recv", "--netns", pair.host.netns,
                   "--ifname", pair.host.ifname, "--count", str(count), "--size", str(size),
                   "--timeout", str(timeout)] + ([] if copy else ["--zero-copy"])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "LIBXDP_SKIP_DISPATCHER": "1"})
            sres, rres = finish_child(proc, lambda: sender(tx, count, size, timeout), timeout,
                                      "receiver")
            return {"sender": sres, "receiver": rres}


@pytest.mark.afxdp
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero-copy-views"])
def test_two_processes_host_in_netns_lossless(copy: bool) -> None:
    from conftest import afxdp_required

    afxdp_required()
    count = 300_000 if copy else 100_000
    res = run_two_process(count, 64 if copy else 300, copy=copy, timeout=60)
    r, s = res["receiver"], res["sender"]
    assert s["sent"] == count
    assert r["received"] == count and r["bad"] == 0
    assert r["mode"] == "copy" and r["xdp_mode"] == "native"
    st = r["stats"]
    assert st["rx_dropped"] == 0 and st["rx_fill_empty"] == 0
    assert st["extra"]["xdp_rx_ring_full"] == 0
    assert st["extra"]["bpf_redirected"] == count
    assert st["rx_frames"] == count
    assert s["stats"]["tx_frames"] == count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["recv", "bench"])
    ap.add_argument("--netns")
    ap.add_argument("--ifname")
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--zero-copy", action="store_true")
    args = ap.parse_args(argv)
    if args.role == "recv":
        from pyroute2 import netns

        netns.setns(args.netns)  # before any socket: AF_XDP binds in this namespace
        res = receiver(args.ifname, args.count, args.size, not args.zero_copy, args.timeout)
        print(json.dumps(res))
        return 0
    res = run_two_process(args.count, args.size, copy=not args.zero_copy,
                          timeout=args.timeout)
    r = res["receiver"]
    print(f"afxdp two-process: {r['received']} frames of {args.size} B in {r['seconds']:.3f} s"
          f" = {r['received'] / max(r['seconds'], 1e-9):,.0f} frames/s; bad {r['bad']}, "
          f"rx_dropped {r['stats']['rx_dropped']}, fill_empty {r['stats']['rx_fill_empty']}, "
          f"sender kicks {res['sender']['stats']['extra']['kicks']} busy {res['sender']['stats']['extra']['kick_busy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
