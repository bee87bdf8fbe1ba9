"""Load ``bpf/mux_xdp.o`` with libbpf and attach it to interfaces.

Theory of operation
-------------------
:class:`XdpProgram` opens and loads the BPF object once (its ``xsks_map``
XSKMAP and per-CPU ``mux_counters`` array come with it) and attaches the
program to one or more interfaces with explicit mode flags: ``"native"``
(``XDP_FLAGS_DRV_MODE``), ``"generic"`` (``XDP_FLAGS_SKB_MODE``), or
``"auto"``, which tries native then generic and records what it got.

Two ways to attach, tried in this order for each mode (``via="auto"``):

1. a **bpf_link** (``bpf_link_create(prog_fd, ifindex, BPF_XDP)``, Linux
   5.9+): the attachment lives as long as the link's fd, so the kernel detaches
   the program by itself when the process that holds it dies - SIGKILL and the
   OOM killer included, where no handler of ours runs. A link never replaces
   an attached program (the kernel answers EBUSY), and nothing but closing or
   ``BPF_LINK_DETACH`` of its fd removes it (netlink cannot).
2. **netlink** (``bpf_xdp_attach`` with ``XDP_FLAGS_UPDATE_IF_NOEXIST``, which
   keeps it from replacing somebody else's program): the fallback when the
   link cannot be created (older kernel: EINVAL; anything but EBUSY). Such an
   attachment outlives every fd and process; after a SIGKILL it stays until
   its interface is deleted (``xport._topology.sweep_stale`` deletes our veth
   pairs) or someone detaches it.

``via="link"`` or ``via="netlink"`` asks for one of them only;
:meth:`XdpProgram.via_on` says which one an interface got. The AF_XDP sockets
do not care: they go into the program's XSKMAP (``xsk_socket__update_xskmap``),
which is the same map however the program is attached.

Detaching a netlink attachment is the subtle part: it is undone only by "fd -1
with the *same* mode flag" (``bpf_xdp_detach(ifindex, mode_flag)``); a detach
without the flag silently leaves a generic-mode program in place. Before
detaching we check (``bpf_xdp_query_id``) that the program there is still ours.
A link is detached with ``BPF_LINK_DETACH`` (which also holds when a forked
child inherited the fd) and its fd closed.

Detaching must not be left to the garbage collector alone:
:meth:`XdpProgram.close` detaches and is idempotent; it runs on ``with`` exit,
on failure inside :meth:`attach`, and from a ``weakref.finalize`` backstop
(which also runs at interpreter exit).

Namespaces: ifindex lookup and netlink both act in the namespace of the
calling thread, so a process that has entered a netns (``pyroute2.netns.setns``)
attaches to the interfaces it sees there. Each attachment keeps an fd of the
attaching thread's namespace; a netlink detach from a thread in another
namespace (a program attached from a throwaway thread that entered the host's
netns, closed later from the main thread) runs in a thread that re-enters it.
A link needs no namespace: its fd names the attachment.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import socket
import weakref
from dataclasses import dataclass
from typing import Literal, Self

from xport._netns import run_in_netns
from xport._xsk import check, check_ptr, ffi, lib, libbpf_log, oserror

__all__ = ["DEFAULT_OBJECT", "AttachMode", "AttachVia", "XdpAttachment", "XdpProgram",
           "attached_prog_id"]

log = logging.getLogger("xport.bpf")

DEFAULT_OBJECT = pathlib.Path(__file__).resolve().parent.parent / "bpf" / "mux_xdp.o"
PROG_NAME = b"mux_xdp_steer"
XSKS_MAP_NAME = b"xsks_map"
COUNTERS_MAP_NAME = b"mux_counters"
COUNTER_NAMES = ("redirected", "passed", "too_short")

AttachMode = Literal["native", "generic"]
#: how an attachment was made: a bpf_link (gone with its fd) or netlink (outlives it)
AttachVia = Literal["link", "netlink"]
_MODE_FLAGS: dict[str, int] = {
    "native": lib.XDP_FLAGS_DRV_MODE,
    "generic": lib.XDP_FLAGS_SKB_MODE,
}


@dataclass(frozen=True, slots=True)
class XdpAttachment:
    """One interface the program is attached to, and how."""

    ifindex: int
    ifname: str
    mode: AttachMode
    #: the network namespace the attaching thread was in (an open fd, and its inode)
    netns_fd: int = -1
    netns_ino: int = 0
    #: ``"link"``: a bpf_link, detached when ``link_fd`` closes; ``"netlink"``: stays
    via: AttachVia = "netlink"
    #: the bpf_link's fd (``via == "link"``), else -1
    link_fd: int = -1


_THREAD_NETNS = "/proc/thread-self/ns/net"


def _current_netns_ino() -> int:
    return os.stat(_THREAD_NETNS).st_ino


def _ifindex(ifname_or_index: str | int) -> tuple[int, str]:
    if isinstance(ifname_or_index, int):
        return ifname_or_index, socket.if_indextoname(ifname_or_index)
    try:
        return socket.if_nametoindex(ifname_or_index), ifname_or_index
    except OSError as exc:
        raise OSError(exc.errno, f"no interface {ifname_or_index!r} in this namespace") from exc


def attached_prog_id(ifindex: int, mode: AttachMode | None = None) -> int:
    """The id of the XDP program attached to ``ifindex`` in ``mode`` (0 = none).

    ``mode=None`` asks for whichever program is attached in any mode.
    """
    pid = ffi.new("uint32_t *")
    flags = _MODE_FLAGS[mode] if mode else 0
    check(lib.bpf_xdp_query_id(ifindex, flags, pid), f"bpf_xdp_query_id({ifindex})")
    return int(pid[0])


def _prog_id(prog_fd: int) -> int:
    # bpf_prog_info.id is the first u32 after type; read it via fdinfo (no struct decl needed)
    with open(f"/proc/self/fdinfo/{prog_fd}") as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise OSError(f"cannot read prog_id of fd {prog_fd}")


def _cleanup(obj: object, attachments: list[XdpAttachment], prog_id: int) -> None:
    """Detach everything and close the object. Never raises (runs in finalizers)."""
    while attachments:
        att = attachments.pop()
        try:
            _detach(att, prog_id)
        except Exception as exc:  # noqa: BLE001  (teardown goes on with the other links)
            log.warning("detaching XDP from %s (ifindex %d): %s", att.ifname, att.ifindex, exc)
    if obj is not None and obj != ffi.NULL:
        lib.bpf_object__close(obj)


def _detach(att: XdpAttachment, prog_id: int) -> None:
    """Detach in the namespace the program was attached in, then close its fd."""
    try:
        if att.link_fd >= 0:
            _detach_link(att)
        elif att.netns_fd >= 0 and _current_netns_ino() != att.netns_ino:
            # an ifindex means nothing in another namespace: go back to the original one
            run_in_netns(att.netns_fd, lambda: _detach_here(att, prog_id))
        else:
            _detach_here(att, prog_id)
    finally:
        if att.netns_fd >= 0:
            os.close(att.netns_fd)


def _detach_link(att: XdpAttachment) -> None:
    """BPF_LINK_DETACH, then close the link's fd (the detach also holds for copies
    of the fd a forked child may have inherited)."""
    try:
        rc = lib.bpf_link_detach(att.link_fd)
        # EOPNOTSUPP: a kernel without forced detach; closing the fd detaches
        if rc < 0 and -rc != errno.EOPNOTSUPP:
            raise oserror(-rc, f"bpf_link_detach({att.ifname})")
    finally:
        os.close(att.link_fd)
    log.info("XDP program detached from %s (%s, bpf_link)", att.ifname, att.mode)


def _link_create(prog_fd: int, ifindex: int, mode: AttachMode) -> int:
    """A bpf_link attaching ``prog_fd`` to ``ifindex`` in ``mode``: its fd, or -errno."""
    opts = ffi.new("struct bpf_link_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_link_create_opts")
    opts.flags = _MODE_FLAGS[mode]  # a link takes mode flags only (no UPDATE_IF_NOEXIST)
    return int(lib.bpf_link_create(prog_fd, ifindex, lib.BPF_XDP, opts))


def _detach_here(att: XdpAttachment, prog_id: int) -> None:
    try:
        current = attached_prog_id(att.ifindex, att.mode)
    except OSError as exc:
        if exc.errno in (19, 6):  # ENODEV, ENXIO: the interface is gone, and the program with it
            return
        raise
    if current == 0:
        return
    if current != prog_id:
        log.warning("XDP program on %s is no longer ours (id %d, ours %d); leaving it",
                    att.ifname, current, prog_id)
        return
    # fd -1 with the same mode flag: without the flag a generic program stays.
    check(lib.bpf_xdp_detach(att.ifindex, _MODE_FLAGS[att.mode], ffi.NULL),
          f"bpf_xdp_detach({att.ifname}, {att.mode})", with_log=True)
    log.info("XDP program detached from %s (%s)", att.ifname, att.mode)


class XdpProgram:
    """The loaded mux XDP program; attach it to interfaces, read its counters.

    Use as a context manager; :meth:`close` detaches from every interface.
    ``via``: ``"auto"`` (a bpf_link where the kernel has them, else netlink),
    ``"link"`` or ``"netlink"`` only (see the module docstring).
    """

    def __init__(self, path: str | pathlib.Path = DEFAULT_OBJECT, *,
                 via: Literal["auto", "link", "netlink"] = "auto") -> None:
        if via not in ("auto", "link", "netlink"):
            raise ValueError(f"via must be 'auto', 'link' or 'netlink', got {via!r}")
        self.via = via
        self.path = pathlib.Path(path)
        self._attachments: list[XdpAttachment] = []
        self._obj = ffi.NULL
        self._closed = False
        if not self.path.exists():
            raise FileNotFoundError(f"BPF object {self.path} not built; run scripts/setup.sh")
        libbpf_log()  # drop stale messages
        obj = check_ptr(lib.bpf_object__open_file(str(self.path).encode(), ffi.NULL),
                        f"bpf_object__open_file({self.path})", with_log=True)
        self._obj = obj
        self._finalizer = weakref.finalize(self, _cleanup, obj, self._attachments, 0)
        try:
            check(lib.bpf_object__load(obj), "bpf_object__load", with_log=True)
            prog = check_ptr(lib.bpf_object__find_program_by_name(obj, PROG_NAME),
                             "find program mux_xdp_steer")
            self.prog_fd = check(lib.bpf_program__fd(prog), "bpf_program__fd")
            self.xskmap_fd = check(lib.bpf_object__find_map_fd_by_name(obj, XSKS_MAP_NAME),
                                   "find map xsks_map")
            self.counters_fd = check(
                lib.bpf_object__find_map_fd_by_name(obj, COUNTERS_MAP_NAME),
                "find map mux_counters")
            self.prog_id = _prog_id(self.prog_fd)
        except BaseException:
            self.close()
            raise
        # re-arm the finalizer with the real program id
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, obj, self._attachments, self.prog_id)

    # -- attach/detach -------------------------------------------------------
    def attach(self, ifname: str | int, mode: Literal["auto", "native", "generic"] = "auto"
               ) -> AttachMode:
        """Attach to ``ifname`` (or ifindex); returns the mode used.

        Per mode, a bpf_link first, netlink when that fails for any reason but
        EBUSY (unless ``via`` says otherwise). EBUSY: another program is
        attached there, which is never replaced (:class:`OSError` EBUSY).
        """
        if self._closed:
            raise ValueError("XdpProgram is closed")
        ifindex, name = _ifindex(ifname)
        if mode == "auto":
            tries: list[AttachMode] = ["native", "generic"]
        elif mode in _MODE_FLAGS:
            tries = [mode]
        else:
            raise ValueError(f"mode must be 'auto', 'native' or 'generic', got {mode!r}")
        errors: list[str] = []
        rc = 0
        for m in tries:
            libbpf_log()
            if self.via != "netlink":
                rc = _link_create(self.prog_fd, ifindex, m)
                if rc >= 0:
                    self._record(ifindex, name, m, "link", rc)
                    return m
                errors.append(f"{m} via bpf_link: {oserror(-rc, 'attach')}")
                self._refuse_if_foreign(-rc, ifindex, name)
                if self.via == "link":
                    continue
                log.info("bpf_link attach to %s (%s) failed (%s): netlink instead", name, m,
                         os.strerror(-rc))
            flags = _MODE_FLAGS[m] | lib.XDP_FLAGS_UPDATE_IF_NOEXIST
            rc = lib.bpf_xdp_attach(ifindex, self.prog_fd, flags, ffi.NULL)
            if rc == 0:
                self._record(ifindex, name, m, "netlink", -1)
                return m
            errors.append(f"{m} via netlink: {oserror(-rc, 'attach')}")
            self._refuse_if_foreign(-rc, ifindex, name)
        raise OSError(-rc, f"cannot attach XDP program to {name}: " + "; ".join(errors))

    def _record(self, ifindex: int, name: str, mode: AttachMode, via: AttachVia,
                link_fd: int) -> None:
        try:
            nsfd = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            if link_fd >= 0:
                os.close(link_fd)  # detaches: the attachment would have no owner
            raise
        self._attachments.append(
            XdpAttachment(ifindex, name, mode, nsfd, os.fstat(nsfd).st_ino, via, link_fd))
        log.info("XDP program attached to %s (ifindex %d, %s, %s)", name, ifindex, mode,
                 "bpf_link" if via == "link" else "netlink")

    @staticmethod
    def _refuse_if_foreign(err: int, ifindex: int, name: str) -> None:
        if err == errno.EBUSY and attached_prog_id(ifindex) != 0:  # someone else's program
            raise oserror(errno.EBUSY, f"attach XDP to {name}",
                          "another XDP program is attached; not replacing it")

    def detach(self, ifname: str | int) -> None:
        """Detach from one interface (no-op when not attached there)."""
        ifindex, _ = _ifindex(ifname) if isinstance(ifname, str) else (ifname, "")
        for att in [a for a in self._attachments if a.ifindex == ifindex]:
            self._attachments.remove(att)
            _detach(att, self.prog_id)

    def _attachment_on(self, ifname: str | int) -> XdpAttachment | None:
        ifindex = ifname if isinstance(ifname, int) else _ifindex(ifname)[0]
        for att in self._attachments:
            if att.ifindex == ifindex:
                return att
        return None

    def mode_on(self, ifname: str | int) -> AttachMode | None:
        """The mode this program is attached with on ``ifname``, or None."""
        att = self._attachment_on(ifname)
        return att.mode if att is not None else None

    def via_on(self, ifname: str | int) -> AttachVia | None:
        """How this program is attached to ``ifname`` (``"link"``/``"netlink"``), or None."""
        att = self._attachment_on(ifname)
        return att.via if att is not None else None

    @property
    def attachments(self) -> tuple[XdpAttachment, ...]:
        return tuple(self._attachments)

    # -- counters ------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """The program's counters summed over CPUs: redirected, passed, too_short."""
        if self._closed:
            raise ValueError("XdpProgram is closed")
        out = ffi.new("uint64_t[]", len(COUNTER_NAMES))
        check(lib.mux_bpf_read_counters(self.counters_fd, out, len(COUNTER_NAMES)),
              "read mux_counters")
        return {name: int(out[i]) for i, name in enumerate(COUNTER_NAMES)}

    def test_run(self, frame: bytes) -> int:
        """Run the program once on ``frame`` (BPF_PROG_TEST_RUN); returns its XDP verdict.

        The test context has rx queue 0 and no socket in the XSKMAP, so a frame of
        ours comes back as ``XDP_PASS`` (the redirect's fallback) but is still counted
        as redirected.
        """
        if self._closed:
            raise ValueError("XdpProgram is closed")
        ret = ffi.new("uint32_t *")
        check(lib.mux_bpf_test_run(self.prog_fd, frame, len(frame), ret), "BPF_PROG_TEST_RUN")
        return int(ret[0])

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Detach from every interface and close the object. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()  # runs _cleanup once

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        atts = ", ".join(f"{a.ifname}:{a.mode}:{a.via}" for a in self._attachments)
        return f"XdpProgram(id={getattr(self, 'prog_id', 0)}, attached=[{atts}])"
