"""Lossless AF_XDP link: a flood into a deliberately slow receiver, through xport._link.

Two processes; the receiver (the host end) lives in its own netns and enters it
before opening its socket. It stalls on purpose (at start and periodically) so
the sender runs into the edge of its link credit again and again. Link-level
credits (xport._linkcredit) must keep every frame in flight within the
receiver's posted buffers: every message arrives, in order, and the kernel's
XDP statistics show no receive drop and no empty-fill-ring event.

Run directly for a throughput figure::

    .venv/bin/python tests/xport/test_lossless_afxdp.py bench --count 1000000
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

AGENT_MAC = b"\x02\x00\x00\x00\x00\x01"
HOST_MAC = b"\x02\x00\x00\x00\x00\x02"
SEQ = struct.Struct("!Q")
PATTERN = bytes(range(256)) * 8
#: one message per frame: two of these never fit in a 1514-byte frame
PAYLOAD = 760


def payload(seq: int) -> bytes:
    off = seq & 0xFF
    return SEQ.pack(seq) + PATTERN[off:off + PAYLOAD - SEQ.size]


def receiver(ifname: str, count: int, timeout: float, stall_every: int) -> dict[str, Any]:
    from xport._afxdp import AfXdpBackend
    from xport._link import Link, LinkConfig
    from xport._protocol import Data, Role

    # A small receive pool (256 buffers) so the credit window binds early and often.
    be = AfXdpBackend.open(ifname, frame_count=512, rx_size=256, tx_size=256)
    try:
        link = Link(be, LinkConfig(role=Role.HOST, local_mac=HOST_MAC, peer_mac=AGENT_MAC),
                    now=time.monotonic())
        link.flush()
        print("READY", flush=True)
        time.sleep(0.2)  # slow start: the sender fills the whole window and must stop
        expect = bad = 0
        deadline = time.monotonic() + timeout
        t0 = time.perf_counter()
        while expect < count:
            msgs = link.poll(64)
            link.flush()  # credit-only frames when the sender may be blocked
            if not msgs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"receiver stalled at {expect}/{count}")
                be.wait_readable(0.01)
                continue
            for m in msgs:
                if m.__class__ is not Data:
                    continue
                seq = SEQ.unpack_from(m.payload)[0]
                if seq != expect or (seq % 997 == 0 and bytes(m.payload) != payload(seq)):
                    bad += 1
                expect = seq + 1
                if stall_every and expect % stall_every == 0:
                    time.sleep(0.03)  # a slow application: buffers are not reposted meanwhile
        secs = time.perf_counter() - t0
        # let the last credit reach the sender so it can finish cleanly
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            link.poll(64)
            link.flush()
            be.wait_readable(0.01)
        st = link.statistics()
        return {"received": expect, "bad": bad, "seconds": secs,
                "dropped": dict(st.dropped), "frames_in": st.frames_in,
                "backend": st.backend.as_dict() if st.backend else {}}
    finally:
        be.close()


def sender(be: Any, proc: subprocess.Popen[str], count: int, timeout: float) -> dict[str, Any]:
    """The agent end: waits for the receiver's READY, then floods it through a Link."""
    from xport._link import Link, LinkConfig
    from xport._protocol import Role

    assert proc.stdout is not None
    line = proc.stdout.readline()  # the receiver's socket exists from here on
    if line.strip() != "READY":
        proc.wait(timeout=10)
        raise RuntimeError(f"receiver did not start: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    link = Link(be, LinkConfig(role=Role.AGENT, local_mac=AGENT_MAC,
                               peer_mac=HOST_MAC), now=time.monotonic())
    seq = 0
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    while seq < count or link.queued_messages:
        while seq < count and link.queued_messages < 256:
            link.send_data(seq & 7, payload(seq))
            seq += 1
        link.poll(64)  # credit from the receiver first, then send on it
        sent = link.flush()
        if not sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sender stalled at {seq}/{count}")
            be.wait_readable(0.005)
    while be.tx_pending() and time.monotonic() < deadline:
        be.flush()
    secs = time.perf_counter() - t0
    sst = link.statistics()
    return {"seconds": secs, "credit_stalls": sst.credit_stalls,
            "frames_out": sst.frames_out, "dropped": dict(sst.dropped),
            "backend": sst.backend.as_dict() if sst.backend else {}}


def run(count: int, *, timeout: float, stall_every: int) -> dict[str, Any]:
    from backend_pairs import finish_child
    from xport._afxdp import AfXdpBackend
    from xport._topology import VethPair

    with VethPair(queues=1, host_netns=True) as pair:
        assert pair.agent is not None and pair.host is not None and pair.host.netns
        with AfXdpBackend.open(pair.agent.ifname, frame_count=1024, rx_size=256,
                               tx_size=512) as be:
            cmd = [sys.executable, os.path.abspath(__file__), "recv", "--netns", pair.host.netns,
                   "--ifname", pair.host.ifname, "--count", str(count),
                   "--timeout", str(timeout), "--stall-every", str(stall_every)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "LIBXDP_SKIP_DISPATCHER": "1"})
            sres, rres = finish_child(proc, lambda: sender(be, proc, count, timeout), timeout,
                                      "receiver")
            return {"receiver": rres, "sender": sres}


@pytest.mark.afxdp
def test_flood_slow_receiver_nothing_lost() -> None:
    from conftest import afxdp_required

    afxdp_required()
    count = int(os.environ.get("MUX_LOSSLESS_FRAMES", "1000000"))
    res = run(count, timeout=90, stall_every=50_000)
    r, s = res["receiver"], res["sender"]
    assert r["received"] == count and r["bad"] == 0
    assert r["dropped"] == {} and s["dropped"] == {}
    b = r["backend"]
    assert b["rx_dropped"] == 0 and b["rx_fill_empty"] == 0
    assert b["extra"]["xdp_rx_fill_ring_empty_descs"] == 0
    assert b["extra"]["xdp_rx_ring_full"] == 0
    assert r["frames_in"] >= count  # one message per frame (plus HELLO and credit frames)
    assert s["credit_stalls"] > 0  # the credits really held the sender back


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["recv", "bench"])
    ap.add_argument("--netns")
    ap.add_argument("--ifname")
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--stall-every", type=int, default=50_000)
    args = ap.parse_args(argv)
    if args.role == "recv":
        from pyroute2 import netns

        netns.setns(args.netns)  # before any socket: AF_XDP binds in this namespace
        print(json.dumps(receiver(args.ifname, args.count, args.timeout, args.stall_every)))
        return 0
    res = run(args.count, timeout=args.timeout, stall_every=args.stall_every)
    r, s = res["receiver"], res["sender"]
    print(f"lossless afxdp: {r['received']} messages ({PAYLOAD} B, one per frame) in "
          f"{r['seconds']:.2f} s = {r['received'] / max(r['seconds'], 1e-9):,.0f}/s; bad "
          f"{r['bad']}, dropped {r['dropped']}, rx_fill_empty {r['backend']['rx_fill_empty']}, "
          f"sender credit stalls {s['credit_stalls']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
