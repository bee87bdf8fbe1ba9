"""AF_PACKET (PACKET_MMAP) backend specifics. Needs root and veth (``afxdp_required``).

The behaviour every backend shares is in test_conformance.py.
"""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from backend_pairs import ETH_HDR, backend_pair, data_frame, frame_seq, recv_n, send_all
from conftest import afxdp_required
from hypothesis import given
from hypothesis import strategies as st

from xport._afpacket import (
    PACKET_QDISC_BYPASS,
    SOL_PACKET,
    AfPacketBackend,
    _ring_geometry,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

Pair = tuple[AfPacketBackend, AfPacketBackend]


@pytest.fixture
def pair() -> Iterator[Pair]:
    afxdp_required()
    with backend_pair("afpacket", ring=64) as p:
        yield p  # type: ignore[misc]


@given(fs=st.sampled_from([128, 256, 1024, 1536, 2048, 4096, 9216]), k=st.integers(1, 64))
def test_ring_geometry(fs: int, k: int) -> None:
    block = fs * mmap.PAGESIZE // __import__("math").gcd(fs, mmap.PAGESIZE)
    count = k * (block // fs)
    bs, nr = _ring_geometry(fs, count)
    assert bs % mmap.PAGESIZE == 0 and bs % fs == 0
    assert nr * (bs // fs) == count


def test_bad_geometry() -> None:
    with pytest.raises(ValueError):
        _ring_geometry(2048, 3)  # 2 frames per 4 KiB block
    with pytest.raises(ValueError):
        AfPacketBackend.open("lo", frame_size=100)
    with pytest.raises(ValueError):
        AfPacketBackend.open("lo", frame_size=2040)


def test_socket_options(pair: Pair) -> None:
    a, _ = pair
    assert a._sock.getsockopt(SOL_PACKET, PACKET_QDISC_BYPASS) == 1
    assert a.mode == "mmap" and a.name == "afpacket"
    assert a.frame_size == 1514  # min(2048 - 32, MTU 1500 + 14)
    assert a.rx_buffers_posted() == 64


def test_frame_size_follows_mtu() -> None:
    afxdp_required()
    from xport._topology import VethPair

    with VethPair(mtu=1000) as p:
        assert p.agent is not None
        with AfPacketBackend.open(p.agent.ifname, frame_count=16) as a:
            assert a.frame_size == 1014
            with pytest.raises(ValueError):
                a.send_batch([bytes(1015)])


def test_only_our_ethertype(pair: Pair) -> None:
    a, b = pair
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        raw.bind((a.ifname, 0))
        for et in (b"\x08\x00", b"\x88\xb6", b"\x86\xdd"):
            raw.send(ETH_HDR[:12] + et + bytes(46))
    finally:
        raw.close()
    send_all(a, [data_frame(7)])
    got = recv_n(b, 1)
    assert frame_seq(got[0]) == 7
    time.sleep(0.02)
    assert b.recv_batch() == []


def test_zero_copy_tx(pair: Pair) -> None:
    a, b = pair
    slots = a.reserve_tx(3)
    assert len(slots) == 3
    for i, s in enumerate(slots):
        f = data_frame(100 + i, 80)
        s.buf[: len(f)] = f
        s.length = len(f)
    with pytest.raises(ValueError):
        a.submit_tx(slots[1:])  # not the reserved prefix
    assert a.submit_tx(slots) == 3
    assert [frame_seq(f) for f in recv_n(b, 3)] == [100, 101, 102]
    assert a.statistics().tx_frames == 3
    assert len(a.reserve_tx(1000)) == 64  # never more than the ring


def test_drops_counted_when_receiver_does_not_read(pair: Pair) -> None:
    a, b = pair
    send_all(a, [data_frame(i) for i in range(64)])
    deadline = time.monotonic() + 2
    while a.tx_pending() and time.monotonic() < deadline:
        time.sleep(0.001)
    send_all(a, [data_frame(64 + i) for i in range(40)])  # the RX ring is full
    deadline = time.monotonic() + 2
    while b.statistics().rx_dropped < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    st = b.statistics()
    assert st.rx_dropped == 40
    assert st.extra["kernel_rx_drops"] == 40
    assert [frame_seq(f) for f in recv_n(b, 64)] == list(range(64))
    assert b.statistics().rx_dropped == 40  # accumulated, not reset by the read


def test_host_end_in_netns_both_directions() -> None:
    afxdp_required()
    with backend_pair("afpacket", ring=64, netns=True) as (a, b):
        send_all(a, [data_frame(i) for i in range(20)])
        assert [frame_seq(f) for f in recv_n(b, 20)] == list(range(20))
        send_all(b, [data_frame(i) for i in range(20)])
        assert [frame_seq(f) for f in recv_n(a, 20)] == list(range(20))


def test_process_inside_netns() -> None:
    """A process that has entered the netns opens the interface with no netns= argument."""
    afxdp_required()
    from xport._topology import VethPair

    with VethPair(host_netns=True) as p, \
            AfPacketBackend.open(p.agent.ifname, frame_count=64) as a:  # type: ignore[union-attr]
        assert p.host is not None
        code = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {ROOT!r})
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            from pyroute2 import netns
            netns.setns({p.netns!r})
            from xport._afpacket import AfPacketBackend
            from backend_pairs import data_frame, send_all
            with AfPacketBackend.open({p.host.ifname!r}, frame_count=64) as b:
                send_all(b, [data_frame(i) for i in range(10)])
                time.sleep(0.2)
        """)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
        assert [frame_seq(f) for f in recv_n(a, 10)] == list(range(10))


def test_open_missing_interface() -> None:
    afxdp_required()
    with pytest.raises(OSError):
        AfPacketBackend.open("mxnope0000", frame_count=16)


def test_short_frame_rejected_and_wrong_format_slot_recovered(pair: Pair) -> None:
    from xport._afpacket import TP_STATUS_WRONG_FORMAT

    a, b = pair
    with pytest.raises(ValueError):
        a.send_batch([bytes(13)])  # would make the kernel mark the slot WRONG_FORMAT
    # a slot the kernel refused is taken back, counted, and the ring goes on
    a._words[(a._tx_base + a._tx_head * a.ring_frame_size) >> 2] = TP_STATUS_WRONG_FORMAT
    send_all(a, [data_frame(5)])
    assert frame_seq(recv_n(b, 1)[0]) == 5
    assert a.statistics().extra["tx_wrong_format"] == 1
