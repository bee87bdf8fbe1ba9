"""Shared-memory backend specifics: naming, lifetime, stale files, wraparound, no root.

The behaviour every backend shares is in test_conformance.py.
"""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from backend_pairs import data_frame, frame_seq, recv_n
from hypothesis import given, settings
from hypothesis import strategies as st

from xport._ring import U32_MASK
from xport._shm import HEADER_SIZE, ShmBackend, shm_path
from xport._topology import random_suffix

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture
def name() -> Iterator[str]:
    n = f"t-{os.getpid()}-{random_suffix()}"
    yield n
    for sfx in ("", ".c2a", ".a2c"):
        try:
            os.unlink(shm_path(n) + sfx)
        except FileNotFoundError:
            pass


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "x" * 65, "sp ace", "../x"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ValueError):
        ShmBackend.create(bad)


@pytest.mark.parametrize("kw", [{"slots": 3}, {"slots": 0}, {"frame_size": 32},
                                {"frame_size": 70000}])
def test_bad_geometry(name: str, kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ShmBackend.create(name, **kw)
    assert not os.path.exists(shm_path(name))


def test_attach_missing(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        ShmBackend.attach(name)


def test_lifetime_files_and_roles(name: str) -> None:
    path = shm_path(name)
    a = ShmBackend.create(name, slots=16, frame_size=256)
    for p in (path, path + ".c2a", path + ".a2c"):
        assert os.path.exists(p)
    assert stat.S_ISFIFO(os.stat(path + ".c2a").st_mode)
    with pytest.raises(FileExistsError):
        ShmBackend.create(name)  # a live creator holds it
    b = ShmBackend.attach(name)
    assert (b.slots, b.frame_size, b.creator) == (16, 256, False)
    with pytest.raises(ConnectionRefusedError):
        ShmBackend.attach(name)  # one attacher only
    b.close()
    assert os.path.exists(path)  # the attacher leaves the file
    b2 = ShmBackend.attach(name)  # and a new attacher may come
    b2.close()
    a.close()
    for p in (path, path + ".c2a", path + ".a2c"):
        assert not os.path.exists(p)


def test_stale_file_from_crashed_creator(name: str) -> None:
    path = shm_path(name)
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from xport._shm import ShmBackend
        be = ShmBackend.create({name!r}, slots=8)
        be.send_batch([b"left behind"])
        os._exit(0)  # crash: no close, no unlink
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert os.path.exists(path)
    with pytest.raises(ConnectionRefusedError):
        ShmBackend.attach(name)  # nobody holds the creator lock: stale
    with ShmBackend.create(name, slots=8) as a, ShmBackend.attach(name) as b:
        assert b.recv_batch() == []  # a fresh link, nothing of the old one
        a.send_batch([b"new"])
        assert [bytes(f.data) for f in b.recv_batch()] == [b"new"]


def test_garbage_file_is_refused(name: str) -> None:
    path = shm_path(name)
    with open(path, "wb") as f:
        f.write(b"\0" * HEADER_SIZE)
    with pytest.raises(ConnectionRefusedError):
        ShmBackend.attach(name)
    with ShmBackend.create(name, slots=8):  # replaced, as stale
        pass


def test_indices_wrap_at_2_32(name: str) -> None:
    start = U32_MASK - 20
    with ShmBackend.create(name, slots=8, initial_index=start) as a, \
            ShmBackend.attach(name) as b:
        seq = 0
        got: list[int] = []
        while seq < 100:
            n = a.send_batch([data_frame(seq + i) for i in range(5)])
            seq += n
            got += [frame_seq(f) for f in recv_n(b, n)]
        assert got == list(range(100))
        words = memoryview(a._mm)[:HEADER_SIZE].cast("I")
        try:
            assert words[256 // 4] == (start + 100) & U32_MASK  # ring 0 producer, wrapped
            assert words[320 // 4] == (start + 100) & U32_MASK
        finally:
            words.release()


@settings(max_examples=60, deadline=None)
@given(start=st.integers(U32_MASK - 40, U32_MASK) | st.integers(0, 40),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.booleans()), max_size=40))
def test_model_partial_sends_and_out_of_order_release(start: int,
                                                      ops: list[tuple[bool, int, bool]]) -> None:
    """Random sends and zero-copy receives across the wrap agree with a FIFO model."""
    name = f"h-{os.getpid()}-{random_suffix()}"
    slots = 8
    with ShmBackend.create(name, slots=slots, frame_size=128, initial_index=start) as a, \
            ShmBackend.attach(name) as b:
        sent = received = 0
        held: list[object] = []
        freed_prefix = 0  # frames released in order from the model's view
        released_set: set[int] = set()
        for send, n, reverse in ops:
            if send:
                free = slots - (sent - freed_prefix)
                k = a.send_batch([data_frame(sent + i, 64) for i in range(n)])
                assert k == min(n, free)
                sent += k
            else:
                frames = b.recv_batch(n, copy=False)
                assert len(frames) == min(n, sent - received)
                for f in frames:
                    assert frame_seq(f.data) == received
                    held.append((received, f))
                    received += 1
                order = list(reversed(held)) if reverse else list(held)
                for seq, f in order[: len(order) // 2 + 1] if order else []:
                    f.release()  # type: ignore[attr-defined]
                    released_set.add(seq)
                    held.remove((seq, f))
                while freed_prefix in released_set:
                    freed_prefix += 1
            assert b.rx_buffers_posted() == slots + freed_prefix


def test_self_wake_keeps_fd_readable(name: str) -> None:
    with ShmBackend.create(name, slots=64) as a, ShmBackend.attach(name) as b:
        a.send_batch([data_frame(i) for i in range(10)])
        a.send_batch([data_frame(10)])
        assert len(b.recv_batch(64)) == 11  # fast path: the wake bytes stay pending
        assert b.recv_batch() == []  # drains them
        assert not select.select([b], [], [], 0)[0]
        a.send_batch([data_frame(i) for i in range(10)])
        b.recv_batch(0)
        assert b.recv_batch(64) and b.recv_batch() == []
        # drained while frames were left behind: the backend wakes itself
        a.send_batch([data_frame(i) for i in range(10)])
        os.read(b.fileno(), 100)  # steal the wake byte: the ring still holds 10
        assert len(b.recv_batch(4)) == 4  # finds the ring non-empty, no drain
        assert b.recv_batch(0) == []
        b.recv_batch(6)
        a.send_batch([data_frame(i) for i in range(10)])
        assert len(b.recv_batch(3)) == 3
        assert select.select([b], [], [], 0)[0]


def test_works_without_root() -> None:
    """Creator and attacher as an unprivileged user (uid/gid 65534) in a forked child,
    in the default directory /dev/shm."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            n = f"nr-{os.getpid()}-{random_suffix()}"
            with ShmBackend.create(n, slots=16) as a, ShmBackend.attach(n) as b:
                a.send_batch([b"unprivileged"])
                ok = recv_n(b, 1) == [b"unprivileged"]
            os.write(w, f"{os.geteuid()} {ok}".encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, repr(exc).encode()[:500])
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    out = os.read(r, 1000).decode()
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.endswith("True")
    if os.geteuid() == 0:
        assert out.startswith("65534 ")


def test_writes_after_close_raise(name: str) -> None:
    a = ShmBackend.create(name, slots=8)
    a.close()
    with pytest.raises(ValueError):
        a.send_batch([b"x"])
    with pytest.raises(ValueError):
        a.recv_batch()


def test_zero_copy_tx_prefix_and_invalidation(name: str) -> None:
    with ShmBackend.create(name, slots=8, initial_index=U32_MASK - 1) as a, \
            ShmBackend.attach(name) as b:
        slots = a.reserve_tx(5)
        for i, s in enumerate(slots):
            s.buf[:3] = b"ab" + bytes([i])
            s.length = 3
        with pytest.raises(ValueError):
            a.submit_tx(slots[1:2])  # not a prefix
        assert a.submit_tx(slots[:2]) == 2
        assert a.submit_tx(slots[2:3]) == 1  # the rest of the reservation, in order
        assert [bytes(f.data) for f in b.recv_batch()] == [b"ab\x00", b"ab\x01", b"ab\x02"]
        a.send_batch([b"copy"])  # invalidates the two unsubmitted views
        with pytest.raises(ValueError):
            slots[3].buf[0] = 1
        with pytest.raises(ValueError):
            a.submit_tx(slots[3:])
        assert [bytes(f.data) for f in b.recv_batch()] == [b"copy"]


def test_peer_alive(name: str) -> None:
    a = ShmBackend.create(name, slots=8)
    assert not a.peer_alive()  # nobody attached yet
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from xport._shm import ShmBackend
        b = ShmBackend.attach({name!r})
        print("attached", b.peer_alive(), flush=True)
        sys.stdin.readline()
        os._exit(0)  # dies without closing
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "attached True"
        assert a.peer_alive()
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not a.peer_alive()  # the kernel dropped the dead attacher's lock
    with ShmBackend.attach(name) as b:  # and a new attacher is welcome
        assert a.peer_alive() and b.peer_alive()
        a.close()
        assert not b.peer_alive()
