"""Link topology: the veth pair that stands in for the shared hardware queue.

Theory of operation
-------------------
A :class:`VethPair` is two interfaces, ``agent`` end and ``host`` end, with
``queues`` TX/RX queues each. The host end may be moved into a network
namespace of its own (created and removed by the pair). Everything is done
over netlink with pyroute2; nothing shells out to ``ip``.

The link carries only our experimental-EtherType frames, so it gets no IP
address, and IPv6 is disabled on both ends *before* link up (the kernel would
otherwise send router solicitations and DAD probes on it). Moving a link into a
namespace brings it down and resets its IPv6 setting, so the host end is
configured after the move, from inside the namespace.

Teardown: deleting one end of a veth deletes the pair; deleting a namespace
deletes the links in it. :meth:`VethPair.close` does both and is idempotent; it
runs on ``with`` exit, on ``atexit`` and from the SIGINT/SIGTERM handlers that
:func:`install_cleanup_handlers` installs, so Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable

from pyroute2 import IPRoute, NetNS, netns

from ._netns import run_in_netns

log = logging.getLogger("xport.topology")

__all__ = ["VethPair", "LinkEnd", "install_cleanup_handlers", "link_exists", "random_suffix"]

_live_pairs: set["VethPair"] = set()
_live_lock = threading.Lock()


def random_suffix(n: int = 6) -> str:
    """A short random hex suffix so that concurrent tests never clash on names."""
    return secrets.token_hex(n // 2 + 1)[:n]


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """One end of the pair: interface name, ifindex and namespace (None = root)."""

    ifname: str
    ifindex: int
    netns: str | None


def _ipr(ns: str | None) -> Any:
    return NetNS(ns) if ns else IPRoute()


def _disable_ipv6(ifname: str, ns: str | None) -> None:
    """Write the interface's disable_ipv6 sysctl (netlink cannot turn IPv6 off)."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    if ns is None:
        _write_sysctl(path)
        return
    # /proc/sys/net reflects the namespace of the thread reading it
    run_in_netns(ns, lambda: _write_sysctl(path))


def _write_sysctl(path: str) -> None:
    try:
        with open(path, "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass  # IPv6 not compiled in: nothing to turn off


class VethPair:
    """A veth pair with ``queues`` queues; the host end optionally in its own netns.

    Use as a context manager. Names are unique per instance unless given.
    """

    def __init__(
        self,
        *,
        agent_name: str | None = None,
        host_name: str | None = None,
        queues: int = 1,
        mtu: int = 1500,
        host_netns: bool | str = False,
    ) -> None:
        if not 1 <= queues <= 64:
            raise ValueError(f"queues must be 1..64, got {queues}")
        if not 68 <= mtu <= 9000:
            raise ValueError(f"mtu must be 68..9000, got {mtu}")
        sfx = random_suffix()
        self.queues = queues
        self.mtu = mtu
        self._agent_name = agent_name or f"mxa{sfx}"
        self._host_name = host_name or f"mxh{sfx}"
        if host_netns is True:
            self.netns: str | None = f"mux{sfx}"
        elif host_netns:
            self.netns = str(host_netns)
        else:
            self.netns = None
        self._created_netns = False
        self._created_link = False
        self.agent: LinkEnd | None = None
        self.host: LinkEnd | None = None
        # The namespace the agent end lives in, held open so that close() can
        # delete the pair even if the calling thread has since moved elsewhere.
        self._home_ns_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------
    def create(self) -> "VethPair":
        with _live_lock:
            _live_pairs.add(self)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        self._home_ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with IPRoute() as ipr:
            ipr.link(
                "add",
                ifname=self._agent_name,
                kind="veth",
                peer={"ifname": self._host_name, "num_tx_queues": self.queues,
                      "num_rx_queues": self.queues},
                num_tx_queues=self.queues,
                num_rx_queues=self.queues,
            )
            self._created_link = True
            a_idx = ipr.link_lookup(ifname=self._agent_name)[0]
            h_idx = ipr.link_lookup(ifname=self._host_name)[0]
            if self.netns is not None:
                netns.create(self.netns)
                self._created_netns = True
                ipr.link("set", index=h_idx, net_ns_fd=self.netns)
            _disable_ipv6(self._agent_name, None)
            ipr.link("set", index=a_idx, mtu=self.mtu, state="up")
        with _ipr(self.netns) as nipr:
            h_idx = nipr.link_lookup(ifname=self._host_name)[0]
            _disable_ipv6(self._host_name, self.netns)
            nipr.link("set", index=h_idx, mtu=self.mtu, state="up")
        self.agent = LinkEnd(self._agent_name, a_idx, None)
        self.host = LinkEnd(self._host_name, h_idx, self.netns)
        log.info("veth %s <-> %s%s up, %d queue(s), mtu %d", self._agent_name,
                 self._host_name, f" (netns {self.netns})" if self.netns else "",
                 self.queues, self.mtu)

    def close(self) -> None:
        """Remove the pair and the namespace. Idempotent; never raises."""
        if self._created_link:
            try:
                run_in_netns(self._home_ns_fd, self._delete_agent_end)
            except Exception as exc:  # teardown must go on with the netns
                log.warning("removing veth %s: %s", self._agent_name, exc)
            self._created_link = False
        if self._home_ns_fd is not None:
            os.close(self._home_ns_fd)
            self._home_ns_fd = None
        if self._created_netns and self.netns is not None:
            try:
                netns.remove(self.netns)
            except Exception as exc:
                log.warning("removing netns %s: %s", self.netns, exc)
            self._created_netns = False
        with _live_lock:
            _live_pairs.discard(self)

    def _delete_agent_end(self) -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self._agent_name)
            if idx:
                ipr.link("del", index=idx[0])  # deletes the peer end too

    def __enter__(self) -> "VethPair":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VethPair({self._agent_name!r} <-> {self._host_name!r}, "
                f"queues={self.queues}, netns={self.netns!r})")


def link_exists(ifname: str, ns: str | None = None) -> bool:
    """True when ``ifname`` exists (in ``ns``, or the root namespace)."""
    if ns is not None and ns not in netns.listnetns():
        return False
    with _ipr(ns) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def _close_all() -> None:
    with _live_lock:
        pairs = list(_live_pairs)
    for p in pairs:
        p.close()


atexit.register(_close_all)

_handlers_installed = False


def install_cleanup_handlers() -> None:
    """Turn SIGTERM into SystemExit so ``with``/``atexit`` teardown runs.

    SIGINT already raises KeyboardInterrupt, which unwinds ``with`` blocks.
    Call once from a program's main thread (the demo, the benchmarks).
    """
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    prev: Callable[[int, types.FrameType | None], Any] | int | None = signal.getsignal(
        signal.SIGTERM)

    owner = os.getpid()

    def on_term(signum: int, frame: types.FrameType | None) -> None:
        # pyroute2 forks helpers (netns creation) that inherit this handler:
        # only the process that created the pairs may tear them down.
        if os.getpid() != owner:
            os._exit(128 + signum)
        _close_all()
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    _handlers_installed = True
