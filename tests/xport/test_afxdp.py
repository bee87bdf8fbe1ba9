"""AfXdpBackend over a real veth pair, in one process: data path, steering, zero copy,
in-place TX, statistics, multi-queue, teardown."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import afxdp_required

pytestmark = pytest.mark.afxdp

SRC = b"\x02\x00\x00\x00\x00\x01"
DST = b"\x02\x00\x00\x00\x00\x02"
ETH_P_ALL = 0x0003


def frame(seq: int, size: int = 64, ethertype: int = 0x88B5) -> bytes:
    head = DST + SRC + struct.pack("!HI", ethertype, seq)
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


def pump(tx: Any, rx: Any, frames: list[bytes], *, copy: bool = True,
         timeout: float = 5.0) -> list[bytes]:
    """Send ``frames`` in batches while receiving; never more in flight than ``rx`` posted."""
    deadline = time.monotonic() + timeout
    base = rx.rx_buffers_posted()
    got: list[bytes] = []
    sent = 0
    while len(got) < len(frames):
        # link credit: every buffer posted since we started, plus the free ones then
        credit = rx.rx_buffers_posted() - base + _initial_room(rx)
        room = min(64, len(frames) - sent, credit - sent)
        if room > 0:
            sent += tx.send_batch(frames[sent:sent + room])
        else:
            tx.flush()
        for f in rx.recv_batch(64, copy=copy):
            got.append(bytes(f.data))
            f.release()
        if time.monotonic() > deadline:
            raise TimeoutError(f"sent {sent}, received {len(got)} of {len(frames)}")
    return got


def _initial_room(rx: Any) -> int:
    return int(rx.socket.umem.layout.rx_frames)


@contextlib.contextmanager
def afxdp_pair(queues: int = 1, **kw: Any) -> Iterator[tuple[Any, Any, Any]]:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._topology import VethPair

    with VethPair(queues=queues) as pair, contextlib.ExitStack() as st:
        assert pair.agent is not None and pair.host is not None
        a = st.enter_context(AfXdpBackend.open(pair.agent.ifname, **kw))
        h = st.enter_context(AfXdpBackend.open(pair.host.ifname, **kw))
        yield a, h, pair


def test_frames_arrive_intact_in_order_both_ways() -> None:
    with afxdp_pair() as (a, h, _):
        assert a.name == "afxdp" and a.mode == "copy" and a.xdp_mode == "native"
        assert a.frame_size == 1514  # MTU 1500 + Ethernet header, below 2048 - 256
        frames = [frame(i, 60 + i % 1400) for i in range(3000)]
        assert pump(a, h, frames) == frames
        back = [frame(i, 1514 if i % 2 else 60) for i in range(500)]
        assert pump(h, a, back) == back
        sa, sh = a.statistics(), h.statistics()
        assert sa.tx_frames == 3000 and sh.rx_frames == 3000
        assert sa.tx_bytes == sh.rx_bytes == sum(map(len, frames))
        assert sh.tx_frames == 500 and sa.rx_frames == 500
        assert sh.rx_dropped == 0 and sh.rx_fill_empty == 0
        assert sh.extra["bpf_redirected"] == 3000
        assert set(sh.extra) >= {"xdp_rx_dropped", "xdp_rx_invalid_descs", "xdp_tx_invalid_descs",
                                 "xdp_rx_ring_full", "xdp_rx_fill_ring_empty_descs",
                                 "xdp_tx_ring_empty_descs", "bpf_passed", "bpf_too_short"}
        assert h.rx_buffers_posted() == 2048 + 3000


def test_send_batch_validates_and_takes_prefix() -> None:
    with afxdp_pair(frame_count=64, rx_size=32, tx_size=16) as (a, h, _):
        with pytest.raises(ValueError):
            a.send_batch([frame(0), b"x" * (a.frame_size + 1)])
        assert a.statistics().tx_frames == 0
        assert a.send_batch([]) == 0
        # 32 TX frames, a 16-slot TX ring: one batch of 40 takes a prefix and says so
        n = a.send_batch([frame(i) for i in range(40)])
        assert 0 < n <= 32
        assert a.statistics().tx_ring_full >= 1 or n == 40
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            a.flush()
            got += [bytes(f.data) for f in h.recv_batch(64)]
        assert got == [frame(i) for i in range(n)]
        assert a.tx_pending() == 0


def test_other_ethertypes_reach_the_stack_not_the_socket() -> None:
    with afxdp_pair() as (a, h, pair):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with tap:
            tap.bind((pair.host.ifname, 0))
            tap.settimeout(0.2)
            mixed = []
            for i in range(40):
                mixed.append(frame(i, 80, 0x88B5))
                mixed.append(frame(i, 80, 0x88B6 if i % 2 else 0x0800))
            assert a.send_batch(mixed) == len(mixed)
            xsk: list[bytes] = []
            deadline = time.monotonic() + 3
            while len(xsk) < 40 and time.monotonic() < deadline:
                xsk += [bytes(f.data) for f in h.recv_batch(64)]
            seen: list[bytes] = []
            with contextlib.suppress(TimeoutError):
                while len(seen) < 40:
                    seen.append(tap.recv(4096))
        ours = [f for f in mixed if f[12:14] == b"\x88\xb5"]
        others = [f for f in mixed if f[12:14] != b"\x88\xb5"]
        assert xsk == ours  # the socket sees only 0x88B5, all of it, in order
        assert seen == others  # the stack sees everything else, and none of ours
        c = h.program.counters()
        assert c["redirected"] == 40 and c["passed"] >= 40


def test_zero_copy_views_and_release() -> None:
    from xport._backend import BufferReleasedError

    with afxdp_pair(frame_count=64, rx_size=32, tx_size=32) as (a, h, _):
        frames = [frame(i, 200) for i in range(20)]
        assert a.send_batch(frames) == 20
        views: list[Any] = []
        deadline = time.monotonic() + 3
        while len(views) < 20 and time.monotonic() < deadline:
            views += h.recv_batch(64, copy=False)
        assert [bytes(v.data) for v in views] == frames
        assert isinstance(views[0].data, memoryview) and views[0].data.readonly is False
        posted = h.rx_buffers_posted()
        assert h.socket.counters()["rx_held"] == 20
        for v in views[:5]:
            v.release()
        with pytest.raises(BufferReleasedError):
            _ = views[0].data
        with pytest.raises(BufferReleasedError):
            len(views[0])
        assert h.rx_buffers_posted() == posted + 5  # released buffers went to the fill ring
        # Hold every remaining RX buffer: the fill ring runs dry and the kernel counts it.
        more = [frame(100 + i) for i in range(32)]
        assert a.send_batch(more) == 32
        deadline = time.monotonic() + 3
        while len(views) < 20 + 17 and time.monotonic() < deadline:
            views += h.recv_batch(64, copy=False)
        time.sleep(0.05)
        st = h.statistics()
        assert st.rx_fill_empty > 0 and st.rx_dropped >= st.rx_fill_empty
        n_views = len(views)
        for v in views:
            v.release()
        assert h.rx_buffers_posted() == 32 + n_views  # every held buffer is back
        assert h.socket.counters()["rx_held"] == 0
        # With buffers back, frames flow again.
        assert pump(a, h, [frame(7, 99)]) == [frame(7, 99)]


def test_in_place_tx() -> None:
    with afxdp_pair() as (a, h, _):
        slots = a.reserve_tx(8)
        assert len(slots) == 8
        expect = []
        for i, s in enumerate(slots):
            f = frame(i, 64 + i)
            s.buf[:len(f)] = f
            s.length = len(f)
            expect.append(f)
        assert a.submit_tx(slots[:3]) == 3
        with pytest.raises(ValueError):
            a.submit_tx(slots[:1])  # already sent
        with pytest.raises(ValueError):
            slots[0].buf[0] = 1  # the view was released on submit
        assert a.submit_tx(slots[3:]) == 5
        got: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(got) < 8 and time.monotonic() < deadline:
            got += [bytes(f.data) for f in h.recv_batch(64)]
        assert got == expect
        spare = a.reserve_tx(4)
        before = a.socket.tx_free
        a.cancel_tx(spare)
        assert a.socket.tx_free == before + 4
        bad = a.reserve_tx(1)
        bad[0].length = a.frame_size + 1
        with pytest.raises(ValueError):
            a.submit_tx(bad)
        a.cancel_tx(bad)


def test_fileno_polls_readable_and_wait_readable() -> None:
    import select

    with afxdp_pair() as (a, h, _):
        assert h.wait_readable(0.05) is False
        p = select.poll()
        p.register(h.fileno(), select.POLLIN)
        assert p.poll(0) == []
        a.send_batch([frame(1)])
        assert h.wait_readable(2.0) is True
        assert p.poll(1000) != []
        assert len(h.recv_batch()) == 1


def test_busy_poll_receive() -> None:
    with afxdp_pair(busy_poll=True) as (a, h, _):
        assert h.busy_poll
        assert h.wait_readable(0.02) is False
        a.send_batch([frame(3)])
        assert h.wait_readable(2.0)
        assert [bytes(f.data) for f in h.recv_batch()] == [frame(3)]


def test_generic_mode_and_teardown_leaves_nothing() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._bpfload import attached_prog_id
    from xport._topology import VethPair, link_exists

    with VethPair() as pair:
        assert pair.agent is not None and pair.host is not None
        a = AfXdpBackend.open(pair.agent.ifname, mode="generic")
        h = AfXdpBackend.open(pair.host.ifname, mode="generic")
        try:
            assert a.xdp_mode == h.xdp_mode == "generic"
            assert attached_prog_id(pair.host.ifindex, "generic") != 0
            frames = [frame(i) for i in range(200)]
            assert pump(a, h, frames) == frames
        finally:
            a.close()
            h.close()
        h.close()  # idempotent
        for end in (pair.agent, pair.host):
            assert attached_prog_id(end.ifindex) == 0  # generic detach used the same flag
        with pytest.raises(ValueError):
            h.recv_batch()
        name = pair.agent.ifname
    assert not link_exists(name)


def test_rebind_same_queue_right_after_close() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._bpfload import XdpProgram
    from xport._topology import VethPair

    with VethPair() as pair, XdpProgram() as prog:
        assert pair.host is not None
        prog.attach(pair.host.ifname)
        for _ in range(4):  # EBUSY for ~20 ms after close: open retries
            be = AfXdpBackend.open(pair.host.ifname, bpf=prog, frame_count=256,
                                   rx_size=128, tx_size=128)
            assert be.xdp_mode == "native"
            be.close()
        assert prog.attachments  # a shared program stays attached: the caller owns it


def test_open_failure_cleans_up() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._bpfload import attached_prog_id
    from xport._topology import VethPair

    with VethPair() as pair:
        assert pair.host is not None
        with pytest.raises(OSError):
            AfXdpBackend.open(pair.host.ifname, queue_id=5)  # the veth has one queue
        assert attached_prog_id(pair.host.ifindex) == 0
        with pytest.raises(OSError):
            AfXdpBackend.open(pair.host.ifname, zerocopy=True)  # veth offers no zero copy
        assert attached_prog_id(pair.host.ifindex) == 0
        with pytest.raises(ValueError):
            AfXdpBackend.open(pair.host.ifname, rx_size=1000)
        assert attached_prog_id(pair.host.ifindex) == 0


def test_redirect_verdict_with_socket_in_map() -> None:
    from xport._xsk import lib

    with afxdp_pair() as (_, h, _pair):
        assert h.program.test_run(frame(1)) == lib.XDP_REDIRECT  # queue 0 has our socket
        assert h.program.test_run(frame(1, ethertype=0x0800)) == lib.XDP_PASS


def test_multi_queue_native_queue_i_to_queue_i() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._bpfload import XdpProgram
    from xport._topology import VethPair

    q = 3
    with VethPair(queues=q) as pair, contextlib.ExitStack() as st:
        assert pair.agent is not None and pair.host is not None
        pa = st.enter_context(XdpProgram())
        ph = st.enter_context(XdpProgram())
        assert pa.attach(pair.agent.ifname, "native") == "native"
        assert ph.attach(pair.host.ifname, "native") == "native"
        kw: dict[str, Any] = {"frame_count": 512, "rx_size": 256, "tx_size": 256}
        tx = [st.enter_context(AfXdpBackend.open(pair.agent.ifname, i, bpf=pa, **kw))
              for i in range(q)]
        rx = [st.enter_context(AfXdpBackend.open(pair.host.ifname, i, bpf=ph, **kw))
              for i in range(q)]
        for i in range(q):
            assert tx[i].send_batch([frame(i * 1000 + k) for k in range(50)]) == 50
        got: list[list[bytes]] = [[] for _ in range(q)]
        deadline = time.monotonic() + 3
        while sum(map(len, got)) < 50 * q and time.monotonic() < deadline:
            for i in range(q):
                got[i] += [bytes(f.data) for f in rx[i].recv_batch(64)]
        for i in range(q):
            assert got[i] == [frame(i * 1000 + k) for k in range(50)], f"queue {i}"
        assert ph.counters()["redirected"] == 50 * q


def test_large_frames_with_4k_umem_frames() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._topology import VethPair

    with VethPair(mtu=3500) as pair, contextlib.ExitStack() as st:
        assert pair.agent is not None and pair.host is not None
        kw: dict[str, Any] = {"frame_count": 256, "frame_size": 4096, "rx_size": 128,
                              "tx_size": 128}
        a = st.enter_context(AfXdpBackend.open(pair.agent.ifname, **kw))
        h = st.enter_context(AfXdpBackend.open(pair.host.ifname, **kw))
        assert a.frame_size == 3514  # MTU + Ethernet header (below 4096 - 256)
        frames = [frame(i, 3514 - i) for i in range(100)]
        assert pump(a, h, frames) == frames
        views = h.recv_batch(8, copy=False)
        assert views == []


def test_open_in_named_netns_from_this_process() -> None:
    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._bpfload import attached_prog_id
    from xport._topology import VethPair

    with VethPair(host_netns=True) as pair, contextlib.ExitStack() as st:
        assert pair.agent is not None and pair.host is not None
        a = st.enter_context(AfXdpBackend.open(pair.agent.ifname))
        h = AfXdpBackend.open(pair.host.ifname, netns=pair.host.netns, mode="generic")
        try:
            assert h.xdp_mode == "generic"
            frames = [frame(i) for i in range(300)]
            assert pump(a, h, frames) == frames
            assert pump(h, a, frames[:50]) == frames[:50]
        finally:
            h.close()  # from the main thread (root namespace): detaches in the host's
        from test_bpf import _xdp_attr

        assert _xdp_attr(pair.host.ifindex, pair.host.netns)["attached"] == "none"
        assert attached_prog_id(pair.agent.ifindex) != 0  # the other end is untouched
        with pytest.raises(OSError):
            AfXdpBackend.open(pair.host.ifname, netns="no-such-netns-here")
