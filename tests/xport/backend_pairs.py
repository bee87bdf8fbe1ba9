"""Connected backend pairs for the conformance suite and the benchmarks.

``backend_pair(kind)`` yields ``(a, b)``: two connected ends of one link for
``kind`` in :data:`BACKENDS` — the two ends of a fresh veth pair for
``"afxdp"`` and ``"afpacket"`` (the ``b`` end in its own netns for
``"afpacket"`` when ``netns=True``), a fresh shared-memory link for ``"shm"``.
Everything is removed on exit.

Also a small two-process harness (this file run as a script): a sender and a
receiver in separate processes, with link-level credits carried back on the
reverse direction (the receiver advertises ``rx_buffers_posted()``; the
sender never exceeds it), order and integrity checked, frames/s reported::

    .venv/bin/python tests/xport/backend_pairs.py bench --kind shm --count 200000
    .venv/bin/python tests/xport/backend_pairs.py bench --kind afpacket --count 200000
    .venv/bin/python tests/xport/backend_pairs.py bench --kind afxdp --count 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from xport._backend import FrameBackend
from xport._topology import random_suffix

BACKENDS = ("afxdp", "afpacket", "shm")
ETH_P_MUX = 0x88B5
ETH_HDR = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETH_P_MUX)
DATA = b"DATA"
CRED = b"CRED"
_DATA_HDR = struct.Struct("!4sI")  # tag, seq
_CRED = struct.Struct("!4sQ")  # tag, rx_buffers_posted



_T = TypeVar("_T")


def finish_child(proc: subprocess.Popen[str], work: Callable[[], _T], timeout: float,
                 who: str) -> tuple[_T, Any]:
    """Run ``work()`` beside the child ``proc``, then wait for the child, whose
    last stdout line is its JSON result: ``(work's result, child's result)``.

    The child is killed if ``work`` fails or the child hangs; a non-zero exit
    raises ``RuntimeError`` with the tail of its stderr (``who`` names it)."""
    try:
        res = work()
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{who} failed ({proc.returncode}): {err[-3000:]}")
    return res, json.loads(out.strip().splitlines()[-1])

def eth_frame(payload: bytes) -> bytes:
    """An Ethernet frame with our EtherType around ``payload`` (broadcast destination)."""
    return ETH_HDR + payload


def data_frame(seq: int, size: int = 64) -> bytes:
    """A numbered test frame of ``size`` bytes whose padding is derived from ``seq``."""
    head = ETH_HDR + _DATA_HDR.pack(DATA, seq & 0xFFFFFFFF)
    pad = size - len(head)
    if pad < 0:
        raise ValueError("size too small")
    return head + bytes([(seq + i) & 0xFF for i in range(min(pad, 64))]) + b"\xa5" * max(0, pad - 64)


def frame_seq(frame: bytes | memoryview) -> int:
    tag, seq = _DATA_HDR.unpack_from(frame, 14)
    if tag != DATA:
        raise ValueError(f"not a data frame: {bytes(frame[:24])!r}")
    return int(seq)


# -- pairs ------------------------------------------------------------------------


def _afxdp_required() -> None:
    try:
        from conftest import afxdp_required
    except ImportError:  # run as a script
        return
    afxdp_required()


@contextlib.contextmanager
def backend_pair(kind: str, *, ring: int = 256, frame_size: int = 2048,
                 netns: bool = False) -> Iterator[tuple[FrameBackend, FrameBackend]]:
    """Two connected ends of a fresh link of ``kind``, ``ring`` slots per ring."""
    if kind == "shm":
        from xport._shm import ShmBackend

        name = f"pair-{os.getpid()}-{random_suffix()}"
        with contextlib.ExitStack() as st:
            a = st.enter_context(ShmBackend.create(name, slots=ring, frame_size=frame_size))
            b = st.enter_context(ShmBackend.attach(name))
            yield a, b
        return
    if kind not in ("afpacket", "afxdp"):
        raise ValueError(f"unknown backend {kind!r}")
    _afxdp_required()  # root + veth; for afxdp also the cffi module and BPF object
    from xport._topology import VethPair

    with contextlib.ExitStack() as st:
        pair = st.enter_context(VethPair(queues=1, host_netns=netns and kind == "afpacket"))
        assert pair.agent is not None and pair.host is not None
        if kind == "afpacket":
            from xport._afpacket import AfPacketBackend

            a = st.enter_context(AfPacketBackend.open(pair.agent.ifname, frame_size=frame_size,
                                                      frame_count=ring))
            b = st.enter_context(AfPacketBackend.open(pair.host.ifname, frame_size=frame_size,
                                                      frame_count=ring, netns=pair.host.netns))
            yield a, b
            return
        a, b = _open_afxdp_pair(st, pair, ring=ring, frame_size=frame_size)
        yield a, b


def _open_afxdp_pair(st: contextlib.ExitStack, pair: Any, *, ring: int,
                     frame_size: int) -> tuple[FrameBackend, FrameBackend]:
    import importlib

    import pytest

    try:
        afxdp = importlib.import_module("xport._afxdp")
    except ImportError as exc:
        pytest.fail(f"xport._afxdp is not available yet: {exc}")
    backend = afxdp.AfXdpBackend
    ends = []
    for end in (pair.agent, pair.host):
        ends.append(st.enter_context(backend.open(
            end.ifname, queue_id=0, frame_count=2 * ring, frame_size=frame_size,
            rx_size=ring, tx_size=ring)))
    return ends[0], ends[1]


# -- helpers ------------------------------------------------------------------------


def send_all(be: FrameBackend, frames: Sequence[bytes], timeout: float = 5.0) -> None:
    """Send every frame, retrying partial batches (the peer must be draining)."""
    deadline = time.monotonic() + timeout
    i = 0
    while i < len(frames):
        i += be.send_batch(frames[i:])
        if i < len(frames):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sent {i} of {len(frames)}")
            be.flush()
            time.sleep(0.0005)


def recv_n(be: FrameBackend, n: int, timeout: float = 5.0, *, copy: bool = True) -> list[Any]:
    """Receive exactly ``n`` frames (bytes when ``copy``, else RxFrame), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    out: list[Any] = []
    while len(out) < n:
        got = be.recv_batch(min(64, n - len(out)), copy=copy)
        if got:
            out.extend(bytes(f.data) if copy else f for f in got)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"received {len(out)} of {n}")
        be.wait_readable(min(left, 0.2))
    return out


# -- two processes --------------------------------------------------------------------


def _open_end(kind: str, spec: dict[str, Any]) -> FrameBackend:
    if kind == "shm":
        from xport._shm import ShmBackend

        if spec["create"]:
            return ShmBackend.create(spec["name"], slots=spec["ring"])
        return ShmBackend.attach(spec["name"])
    if kind == "afpacket":
        from xport._afpacket import AfPacketBackend

        return AfPacketBackend.open(spec["ifname"], frame_count=spec["ring"],
                                    netns=spec.get("netns"))
    if kind == "afxdp":
        from xport._afxdp import AfXdpBackend

        ring = spec["ring"]
        return AfXdpBackend.open(spec["ifname"], 0, frame_count=2 * ring, rx_size=ring,
                                 tx_size=ring)
    raise ValueError(f"two-process harness does not support {kind!r}")


def run_sender(be: FrameBackend, count: int, size: int, batch: int,
               timeout: float) -> dict[str, Any]:
    """Send ``count`` numbered frames, never more than the receiver's advertised credit."""
    credit = 0  # receiver's rx_buffers_posted as last advertised
    sent = 0
    deadline = time.monotonic() + timeout
    frames = [data_frame(i, size) for i in range(count)]
    t0 = time.perf_counter()
    while sent < count:
        for f in be.recv_batch(64):
            tag, posted = _CRED.unpack_from(f.data, 14)
            if tag == CRED:
                credit = max(credit, posted)
        room = min(batch, count - sent, credit - sent)
        if room <= 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sender stalled at {sent}/{count}, credit {credit}")
            be.wait_readable(0.2)
            continue
        out = frames[sent:sent + room]
        n = be.send_batch(out)
        sent += n
        if n < len(out):
            be.flush()
    while be.tx_pending() and time.monotonic() < deadline:
        be.flush()
        time.sleep(0.0005)
    return {"sent": sent, "seconds": time.perf_counter() - t0, "stats": be.statistics().as_dict()}


def run_receiver(be: FrameBackend, count: int, ring: int, timeout: float) -> dict[str, Any]:
    """Receive ``count`` frames, checking order; advertise credit every ring/4 frees."""
    threshold = max(1, ring // 4)
    advertised = be.rx_buffers_posted()
    send_all(be, [eth_frame(_CRED.pack(CRED, advertised))])
    expect = 0
    bad = 0
    deadline = time.monotonic() + timeout
    t0 = None
    while expect < count:
        got = be.recv_batch(64)
        if not got:
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver stalled at {expect}/{count}")
            if not be.wait_readable(0.05):
                # idle: re-advertise (the sender may have started after the last one)
                send_all(be, [eth_frame(_CRED.pack(CRED, advertised))])
            continue
        if t0 is None:
            t0 = time.perf_counter()
        for f in got:
            if frame_seq(f.data) != expect:
                bad += 1
            expect += 1
        posted = be.rx_buffers_posted()
        if posted - advertised >= threshold or expect >= count:
            advertised = posted
            send_all(be, [eth_frame(_CRED.pack(CRED, advertised))])
    secs = time.perf_counter() - (t0 or time.perf_counter())
    return {"received": expect, "out_of_order": bad, "seconds": secs,
            "stats": be.statistics().as_dict()}


def two_process(kind: str, *, count: int = 20000, size: int = 64, batch: int = 64,
                ring: int = 1024, timeout: float = 30.0) -> dict[str, Any]:
    """Receiver here, sender in a child process; returns both sides' results.

    afpacket: a fresh veth pair, the receiver on the host end inside its own
    netns. shm: this process creates the link, the child attaches by name.
    """
    with contextlib.ExitStack() as st:
        if kind == "shm":
            from xport._shm import ShmBackend

            name = f"tp-{os.getpid()}-{random_suffix()}"
            rx: FrameBackend = st.enter_context(ShmBackend.create(name, slots=ring))
            child_spec: dict[str, Any] = {"create": False, "name": name, "ring": ring}
        elif kind == "afpacket":
            from xport._afpacket import AfPacketBackend
            from xport._topology import VethPair

            pair = st.enter_context(VethPair(queues=1, host_netns=True))
            assert pair.agent is not None and pair.host is not None
            rx = st.enter_context(AfPacketBackend.open(pair.host.ifname, frame_count=ring,
                                                       netns=pair.host.netns))
            child_spec = {"ifname": pair.agent.ifname, "ring": ring}
        elif kind == "afxdp":
            from xport._topology import VethPair

            # both ends in the root namespace (AfXdpBackend.open has no netns= argument)
            pair = st.enter_context(VethPair(queues=1))
            assert pair.agent is not None and pair.host is not None
            rx = st.enter_context(_open_end("afxdp", {"ifname": pair.host.ifname,
                                                      "ring": ring}))
            child_spec = {"ifname": pair.agent.ifname, "ring": ring}
        else:
            raise ValueError(f"two-process harness does not support {kind!r}")
        cmd = [sys.executable, os.path.abspath(__file__), "send", "--kind", kind,
               "--spec", json.dumps(child_spec), "--count", str(count), "--size", str(size),
               "--batch", str(batch), "--timeout", str(timeout)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rres, sres = finish_child(proc, lambda: run_receiver(rx, count, ring, timeout), timeout,
                                  "sender")
        return {"receiver": rres, "sender": sres}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("role", choices=["send", "bench"])
    ap.add_argument("--kind", default="shm", choices=["shm", "afpacket", "afxdp"])
    ap.add_argument("--spec", default="{}")
    ap.add_argument("--count", type=int, default=200000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ring", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.role == "send":
        be = _open_end(args.kind, json.loads(args.spec))
        try:
            res = run_sender(be, args.count, args.size, args.batch, args.timeout)
        finally:
            be.close()
        print(json.dumps(res))
        return 0
    res = two_process(args.kind, count=args.count, size=args.size, batch=args.batch,
                      ring=args.ring, timeout=args.timeout)
    r = res["receiver"]
    print(f"{args.kind}: {r['received']} frames of {args.size} B in {r['seconds']:.3f} s = "
          f"{r['received'] / r['seconds']:,.0f} frames/s; out of order {r['out_of_order']}, "
          f"rx_dropped {r['stats']['rx_dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
