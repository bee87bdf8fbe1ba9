"""Connected backend pairs for the conformance suite and the benchmarks.

``backend_pair(kind)`` yields ``(a, b)``: two connected ends of one link for
``kind`` in :data:`BACKENDS` — the two ends of a fresh veth pair for
``"afxdp"`` and ``"afpacket"`` (the ``b`` end in its own netns for
``"afpacket"`` when ``netns=True``), a fresh shared-memory link for ``"shm"``.
Everything is removed on exit.

Also the one two-process send-window harness (:func:`two_process`, and this
file run as a script): a sender and a receiver in separate processes, with
link-level credits carried back on the reverse direction (the receiver
advertises its cumulative ``rx_buffers_posted()`` in CRED frames; the sender
never has sent more than that), so no frame may be lost; the receiver checks
every frame's number and every byte, and frames/s are reported::

    .venv/bin/python tests/xport/backend_pairs.py bench --kind shm --count 200000
    .venv/bin/python tests/xport/backend_pairs.py bench --kind afpacket --count 200000
    .venv/bin/python tests/xport/backend_pairs.py bench --kind afxdp --count 200000
    .venv/bin/python tests/xport/backend_pairs.py bench --kind afxdp --netns --count 200000
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


_PATTERN = bytes(range(256)) * 64  # padding source: 16 KiB, longer frames repeat it


def data_frame(seq: int, size: int = 64) -> bytes:
    """A numbered test frame of ``size`` bytes (broadcast destination) whose
    padding, every byte of it, depends on ``seq``: a frame mixed up with
    another, or a buffer holding part of an older one, does not compare equal."""
    head = ETH_HDR + _DATA_HDR.pack(DATA, seq & 0xFFFFFFFF)
    pad = size - len(head)
    if pad < 0:
        raise ValueError("size too small")
    off = (seq * 7) & 0xFF
    src = _PATTERN if off + pad <= len(_PATTERN) else _PATTERN[:256] * ((off + pad) // 256 + 1)
    return head + src[off:off + pad]


def frame_seq(frame: bytes | memoryview) -> int:
    """The number of a :func:`data_frame`; ``ValueError`` for any other frame."""
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
    """One end of a two-process link. ``spec``: ``ring``; ``name`` and ``create``
    (shm); ``ifname`` and ``netns`` (veth: afpacket opens in ``netns`` itself,
    afxdp cannot - see :func:`_child_end`); ``open``: extra keyword arguments
    for the backend's ``open`` (afpacket, afxdp: ring sizes)."""
    extra = spec.get("open") or {}
    ring = spec["ring"]
    if kind == "shm":
        from xport._shm import ShmBackend

        if spec["create"]:
            return ShmBackend.create(spec["name"], slots=ring)
        return ShmBackend.attach(spec["name"])
    if kind == "afpacket":
        from xport._afpacket import AfPacketBackend

        return AfPacketBackend.open(spec["ifname"], **{"frame_count": ring,
                                                       "netns": spec.get("netns"), **extra})
    if kind == "afxdp":
        from xport._afxdp import AfXdpBackend

        if spec.get("netns"):
            raise ValueError("AfXdpBackend.open has no netns=: open the end in a child "
                             "process that entered the namespace (_child_end)")
        return AfXdpBackend.open(spec["ifname"], 0, **{"frame_count": 2 * ring, "rx_size": ring,
                                                       "tx_size": ring, **extra})
    raise ValueError(f"two-process harness does not support {kind!r}")


def _child_end(kind: str, spec: dict[str, Any]) -> FrameBackend:
    """:func:`_open_end` in a child process, which first enters the end's netns
    for afxdp (before any socket: AF_XDP binds, and its XDP program loads, in
    the namespace the process is in when the socket is made)."""
    if kind == "afxdp" and spec.get("netns"):
        from pyroute2 import netns

        netns.setns(spec["netns"])
        spec = {k: v for k, v in spec.items() if k != "netns"}
    return _open_end(kind, spec)


def _describe(kind: str, be: FrameBackend) -> dict[str, Any]:
    """What a result says of its end besides statistics: AF_XDP's socket mode
    ("copy"/"zerocopy") and XDP attach mode ("native"/"generic")."""
    if kind != "afxdp":
        return {}
    from xport._afxdp import AfXdpBackend

    assert isinstance(be, AfXdpBackend)
    return {"mode": be.mode, "xdp_mode": be.xdp_mode}


def _send_credit(be: FrameBackend, posted: int, deadline: float) -> None:
    """Advertise ``posted`` (a CRED frame). Retried at once while the TX ring is
    full - the sender is waiting for it - until ``deadline``."""
    frame = [eth_frame(_CRED.pack(CRED, posted))]
    while be.send_batch(frame) == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"credit {posted} not sent: the TX ring stays full")
        be.flush()


def run_sender(be: FrameBackend, count: int, size: int, batch: int,
               timeout: float) -> dict[str, Any]:
    """Send ``count`` numbered frames of ``size`` bytes (:func:`data_frame`),
    ``batch`` at a time, never more than the receiver's advertised credit."""
    credit = 0  # receiver's rx_buffers_posted as last advertised
    sent = 0
    deadline = time.monotonic() + timeout
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
            be.flush()  # what is queued must go out for the credit to come back
            be.wait_readable(0.05)
            continue
        out = [data_frame(s, size) for s in range(sent, sent + room)]
        n = be.send_batch(out)
        sent += n
        if n < len(out):
            be.flush()
    while be.tx_pending() and time.monotonic() < deadline:
        be.flush()
        time.sleep(0.0005)
    return {"sent": sent, "seconds": time.perf_counter() - t0, "stats": be.statistics().as_dict()}


def run_receiver(be: FrameBackend, count: int, ring: int, timeout: float, *, size: int = 64,
                 copy: bool = True, credit_every: int | None = None) -> dict[str, Any]:
    """Receive frames numbered 0 to ``count - 1`` (:func:`data_frame` of ``size``
    bytes), advertising credit every ``credit_every`` (default ``ring // 4``)
    buffers posted, and at once when idle (the sender may have started after
    the last advertisement).

    Every frame is checked: a number other than the next expected counts in
    ``out_of_order`` (and the count resyncs to it, so a loss shows up as a count,
    not as a timeout); bytes other than :func:`data_frame`'s, or a frame that is
    not a data frame, count in ``damaged``. ``copy=False`` receives zero-copy
    views, released once checked. Ends when frame ``count - 1`` arrives."""
    threshold = credit_every or max(1, ring // 4)
    deadline = time.monotonic() + timeout
    advertised = be.rx_buffers_posted()
    _send_credit(be, advertised, deadline)
    expect = received = out_of_order = damaged = 0
    t0 = None
    while expect < count:
        got = be.recv_batch(64, copy=copy)
        if not got:
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver stalled at {expect}/{count}")
            if not be.wait_readable(0.05):
                advertised = be.rx_buffers_posted()
                _send_credit(be, advertised, deadline)
            continue
        if t0 is None:
            t0 = time.perf_counter()
        for f in got:
            d = f.data
            tag, seq = _DATA_HDR.unpack_from(d, 14)
            if tag != DATA:
                damaged += 1
            else:
                if seq != expect:
                    out_of_order += 1
                if d != data_frame(seq, size):
                    damaged += 1
                expect = seq + 1
                received += 1
            f.release()
        posted = be.rx_buffers_posted()
        if posted - advertised >= threshold or expect >= count:
            advertised = posted
            _send_credit(be, advertised, deadline)
    secs = time.perf_counter() - (t0 or time.perf_counter())
    return {"received": received, "out_of_order": out_of_order, "damaged": damaged,
            "seconds": secs, "stats": be.statistics().as_dict()}


def two_process(kind: str, *, count: int = 20000, size: int = 64, batch: int = 64,
                ring: int = 1024, timeout: float = 30.0, netns: bool | None = None,
                copy: bool = True, credit_every: int | None = None,
                receiver_open: dict[str, Any] | None = None,
                sender_open: dict[str, Any] | None = None) -> dict[str, Any]:
    """A sender and a receiver (:func:`run_sender`, :func:`run_receiver`) in two
    processes over a fresh link; returns ``{"receiver": ..., "sender": ...}``.

    shm: the receiver here creates the link, the sender in a child attaches
    by name. afpacket: a fresh veth pair, the receiver here on the host end,
    in its own netns unless ``netns=False``; the sender in a child. afxdp: a
    fresh veth pair; by default both ends in the root namespace, the receiver
    here; with ``netns=True`` the host end is in its own netns and the
    receiver is the child, which enters it before making its socket (and
    loads its own XDP program there), the sender here.

    ``ring`` sizes both ends; ``receiver_open`` / ``sender_open`` are extra
    keyword arguments for that end's backend ``open`` (veth kinds).
    ``copy=False``: the receiver takes zero-copy views."""
    netns = kind == "afpacket" if netns is None else netns
    if netns and kind == "shm":
        raise ValueError("shm has no network namespace")
    rspec: dict[str, Any] = {"ring": ring, "open": receiver_open or {}}
    sspec: dict[str, Any] = {"ring": ring, "open": sender_open or {}}
    with contextlib.ExitStack() as st:
        if kind == "shm":
            name = f"tp-{os.getpid()}-{random_suffix()}"
            rspec.update(create=True, name=name)
            sspec.update(create=False, name=name)
        elif kind in ("afpacket", "afxdp"):
            from xport._topology import VethPair

            pair = st.enter_context(VethPair(queues=1, host_netns=netns))
            assert pair.agent is not None and pair.host is not None
            rspec.update(ifname=pair.host.ifname, netns=pair.host.netns)
            sspec["ifname"] = pair.agent.ifname
        else:
            raise ValueError(f"two-process harness does not support {kind!r}")
        common = ["--kind", kind, "--count", str(count), "--size", str(size),
                  "--timeout", str(timeout)]
        env = None
        if kind == "afxdp" and netns:  # the receiver is the child
            here, child = "sender", "receiver"
            be = st.enter_context(_open_end(kind, sspec))
            cmd = ["recv", "--spec", json.dumps(rspec), "--ring", str(ring), *common]
            cmd += ([] if copy else ["--zero-copy"])
            cmd += ([] if credit_every is None else ["--credit-every", str(credit_every)])
            env = {**os.environ, "LIBXDP_SKIP_DISPATCHER": "1"}

            def work() -> dict[str, Any]:
                return run_sender(be, count, size, batch, timeout)
        else:
            here, child = "receiver", "sender"
            be = st.enter_context(_open_end(kind, rspec))
            cmd = ["send", "--spec", json.dumps(sspec), "--batch", str(batch), *common]

            def work() -> dict[str, Any]:
                return run_receiver(be, count, ring, timeout, size=size, copy=copy,
                                    credit_every=credit_every)
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        mine, theirs = finish_child(proc, work, timeout, child)
        mine.update(_describe(kind, be))
        return {here: mine, child: theirs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("role", choices=["send", "recv", "bench"])
    ap.add_argument("--kind", default="shm", choices=["shm", "afpacket", "afxdp"])
    ap.add_argument("--spec", default="{}")
    ap.add_argument("--count", type=int, default=200000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ring", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--zero-copy", action="store_true", help="the receiver takes views")
    ap.add_argument("--credit-every", type=int, default=None)
    ap.add_argument("--netns", action="store_true",
                    help="bench: the receiver's end in its own netns (afxdp: in the child)")
    args = ap.parse_args(argv)
    if args.role in ("send", "recv"):  # the child of two_process
        be = _child_end(args.kind, json.loads(args.spec))
        try:
            if args.role == "send":
                res = run_sender(be, args.count, args.size, args.batch, args.timeout)
            else:
                res = run_receiver(be, args.count, args.ring, args.timeout, size=args.size,
                                   copy=not args.zero_copy, credit_every=args.credit_every)
            res.update(_describe(args.kind, be))
        finally:
            be.close()
        print(json.dumps(res))
        return 0
    res = two_process(args.kind, count=args.count, size=args.size, batch=args.batch,
                      ring=args.ring, timeout=args.timeout, netns=args.netns or None,
                      copy=not args.zero_copy, credit_every=args.credit_every)
    r, s = res["receiver"], res["sender"]
    print(f"{args.kind}: {r['received']} frames of {args.size} B in {r['seconds']:.3f} s = "
          f"{r['received'] / max(r['seconds'], 1e-9):,.0f} frames/s; out of order "
          f"{r['out_of_order']}, damaged {r['damaged']}, rx_dropped {r['stats']['rx_dropped']}, "
          f"rx_fill_empty {r['stats']['rx_fill_empty']}"
          + (f"; sender kicks {s['stats']['extra']['kicks']} busy "
             f"{s['stats']['extra']['kick_busy']}" if args.kind == "afxdp" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
