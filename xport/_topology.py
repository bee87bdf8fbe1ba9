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

What no handler can catch (SIGKILL, the OOM killer, a crashed interpreter) is
caught afterwards, by the names. Every name a pair makes up for itself says who
made it, in one strict pattern (:func:`owned_name`)::

    mx <role> <pid: 5 base-36 digits> <random: 6 hex digits>      (14 bytes)

    role  a = agent end, h = host end, n = network namespace
    e.g.  mxa00ilx3f9a1c, mxh00ilx3f9a1c, mxn00ilx3f9a1c  (pid 24117)

The three names of one pair share the pid and the random part (the *token*).
Both veth ends also carry an interface alias (``IFLA_IFALIAS``, ``ip link``
shows it) recording the owner's start time (field 22 of ``/proc/<pid>/stat``)
and pid namespace, which a reused pid cannot fake. :func:`sweep_stale` removes
veth pairs and namespaces whose name matches the pattern exactly **and** whose
owner is gone: no such pid, a zombie, or a process with another start time.
Anything else - other names, other link kinds, an owner that is alive, a
foreign alias, an owner in another pid namespace - is never a target. The first
:meth:`VethPair.create` of each process sweeps once (``MUX_RPC_NO_SWEEP=1``
turns that off); ``mux-rpc cleanup`` runs it by hand.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import secrets
import signal
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

from ._netns import run_in_netns

log = logging.getLogger("xport.topology")

__all__ = [
    "LinkEnd",
    "OwnedName",
    "Owner",
    "SweepResult",
    "VethPair",
    "install_cleanup_handlers",
    "link_exists",
    "owned_name",
    "owner_alive",
    "parse_owned_name",
    "random_suffix",
    "sweep_stale",
]

_live_pairs: set["VethPair"] = set()
_live_lock = threading.Lock()


def random_suffix(n: int = 6) -> str:
    """A short random hex suffix so that concurrent tests never clash on names."""
    return secrets.token_hex(n // 2 + 1)[:n]


# -- names that carry their owner ------------------------------------------------

Role = Literal["a", "h", "n"]
ROLES: tuple[Role, ...] = ("a", "h", "n")
#: the largest pid Linux can hand out (PID_MAX_LIMIT, include/linux/threads.h: 2**22)
PID_MAX_LIMIT = 4 * 1024 * 1024
_PID_DIGITS = 5  # base 36: 36**5 = 60,466,176 > PID_MAX_LIMIT
_RAND_DIGITS = 6
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_OWNED = re.compile(r"mx([ahn])([0-9a-z]{5})([0-9a-f]{6})")
_ALIAS = re.compile(r"mux-rpc owner pid=([1-9][0-9]{0,9}) start=([0-9]{1,20}) "
                    r"pidns=([0-9]{1,20})")


@dataclass(frozen=True, slots=True)
class OwnedName:
    """A parsed name of ours: role, owner pid and random part."""

    #: ``"a"`` agent end, ``"h"`` host end, ``"n"`` network namespace
    role: Role
    #: the pid of the process that created it (1..PID_MAX_LIMIT)
    pid: int
    #: six lower-case hex digits
    rand: str

    @property
    def token(self) -> str:
        """What the three names of one pair share: the pid and random digits."""
        return self.name[3:]

    @property
    def name(self) -> str:
        return owned_name(self.role, self.pid, self.rand)


def owned_name(role: Role, pid: int, rand: str) -> str:
    """``mx<role><pid, 5 base-36 digits><rand, 6 hex digits>``: 14 bytes."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not 1 <= pid <= PID_MAX_LIMIT:
        raise ValueError(f"pid must be 1..{PID_MAX_LIMIT}, got {pid}")
    if len(rand) != _RAND_DIGITS or any(c not in "0123456789abcdef" for c in rand):
        raise ValueError(f"rand must be {_RAND_DIGITS} lower-case hex digits, got {rand!r}")
    digits = []
    for _ in range(_PID_DIGITS):
        pid, d = divmod(pid, 36)
        digits.append(_B36[d])
    return f"mx{role}{''.join(reversed(digits))}{rand}"


def parse_owned_name(name: str) -> OwnedName | None:
    """The owner of ``name`` when it is exactly one of ours, else None.

    Strict: the whole name must match, the pid must be one Linux can have.
    """
    m = _OWNED.fullmatch(name)
    if m is None:
        return None
    pid = int(m.group(2), 36)
    if not 1 <= pid <= PID_MAX_LIMIT:
        return None
    role: Role = m.group(1)  # type: ignore[assignment]  # the regex allows only a/h/n
    return OwnedName(role, pid, m.group(3))


@dataclass(frozen=True, slots=True)
class Owner:
    """The process a pair belongs to, as its interface alias records it."""

    pid: int
    #: start time, clock ticks after boot (``/proc/<pid>/stat`` field 22); None: unknown
    start: int | None = None
    #: inode of its pid namespace (``/proc/<pid>/ns/pid``); None: unknown
    pidns: int | None = None

    @property
    def alias(self) -> str:
        return f"mux-rpc owner pid={self.pid} start={self.start} pidns={self.pidns}"

    @classmethod
    def parse_alias(cls, alias: str) -> "Owner | None":
        m = _ALIAS.fullmatch(alias)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc/<pid>/stat, or None: no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[19])  # field 3 (state), field 22 (starttime)


def _own_pidns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def current_owner() -> Owner:
    """This process, as an :class:`Owner`."""
    stat = _proc_stat(os.getpid())
    return Owner(os.getpid(), stat[1] if stat else None, _own_pidns())


def owner_alive(owner: Owner) -> bool:
    """False only when ``owner`` is certainly gone: no such pid, a zombie, or a
    process that started at another time (the pid was reused). An owner in
    another pid namespace cannot be judged from here and counts as alive."""
    return _owner_state(owner)[0]


def _owner_state(owner: Owner) -> tuple[bool, str]:
    """(:func:`owner_alive`, why): one look at /proc for both."""
    pid = owner.pid
    if owner.pidns is not None and owner.pidns != _own_pidns():
        return True, f"owner pid {pid} is in another pid namespace"
    stat = _proc_stat(pid)
    if stat is None:
        return False, f"owner pid {pid} is gone"
    if stat[0] in ("Z", "X"):
        return False, f"owner pid {pid} is dead (zombie)"
    if owner.start is None or stat[1] == owner.start:
        return True, f"owner pid {pid} is alive"
    return False, f"pid {pid} now belongs to another process (start {stat[1]}, not {owner.start})"


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

    Use as a context manager. Names are unique per instance unless given; the
    ones made up here follow :func:`owned_name` (the creating process's pid and
    six random hex digits), so that :func:`sweep_stale` can remove them once
    that process is gone. A given name is swept only if it matches that
    pattern itself (and the alias written here names the same pid).
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
        self.queues = queues
        self.mtu = mtu
        self._given = (agent_name, host_name, host_netns)
        self._name_pid = 0
        self._agent_name = self._host_name = ""
        self.netns: str | None = None
        self._make_names()
        self._created_netns = False
        self._created_link = False
        self.agent: LinkEnd | None = None
        self.host: LinkEnd | None = None
        # The namespace the agent end lives in, held open so that close() can
        # delete the pair even if the calling thread has since moved elsewhere.
        self._home_ns_fd: int | None = None

    def _make_names(self) -> None:
        agent_name, host_name, host_netns = self._given
        pid, sfx = os.getpid(), random_suffix(_RAND_DIGITS)
        self._name_pid = pid
        self._agent_name = agent_name or owned_name("a", pid, sfx)
        self._host_name = host_name or owned_name("h", pid, sfx)
        if host_netns is True:
            self.netns = owned_name("n", pid, sfx)
        elif host_netns:
            self.netns = str(host_netns)
        else:
            self.netns = None

    # -- lifecycle -----------------------------------------------------------
    def create(self) -> "VethPair":
        """Sweep stale pairs (once per process), then create this one."""
        if self._name_pid != os.getpid():  # built before a fork: the names carry the creator
            self._make_names()
        sweep_once()
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
            alias = current_owner().alias  # read by sweep_stale (pid reuse guard)
            ipr.link("set", index=a_idx, ifalias=alias)
            ipr.link("set", index=h_idx, ifalias=alias)
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


# -- the sweep ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What :func:`sweep_stale` removed (with ``dry_run``: would remove)."""

    #: veth interfaces removed from the sweeping thread's namespace (both ends
    #: of a pair are listed when both were there)
    links: tuple[str, ...] = ()
    #: network namespaces removed (``/run/netns/<name>``)
    netns: tuple[str, ...] = ()
    #: names of ours left in place, each with the reason (its owner is alive, ...)
    kept: tuple[tuple[str, str], ...] = ()
    #: names that could not be removed, each with the error
    errors: tuple[tuple[str, str], ...] = ()
    #: True when nothing was removed, only reported
    dry_run: bool = False

    @property
    def removed(self) -> tuple[str, ...]:
        return self.links + self.netns


def _verdict(pid: int, aliases: list[str | None]) -> tuple[bool, str]:
    """(stale?, why) for the pair whose names carry ``pid`` and whose ends
    carry ``aliases`` (None: no alias, e.g. killed between create and alias)."""
    owners: set[Owner] = set()
    for alias in aliases:
        if alias is None:
            continue
        owner = Owner.parse_alias(alias)
        if owner is None or owner.pid != pid:
            return False, f"alias {alias!r} is not one of ours"
        owners.add(owner)
    if len(owners) > 1:
        return False, "its two ends name different owners"
    alive, why = _owner_state(owners.pop() if owners else Owner(pid))
    return not alive, why


def sweep_stale(*, dry_run: bool = False) -> SweepResult:
    """Remove the veth pairs and namespaces left by processes that are gone.

    A target must (1) have a name that :func:`parse_owned_name` accepts - a
    veth interface (link kind ``veth``, in the calling thread's network
    namespace) or a named namespace in ``/run/netns`` - and (2) belong to an
    owner that is certainly gone (:func:`owner_alive`: no such pid, a zombie,
    or the pid reused by a process with another start time than the alias
    records). Nothing else is ever touched: other names, other link kinds,
    aliases that are not ours, owners alive or in another pid namespace.
    Deleting one veth end removes its peer; removing a namespace removes the
    veth end inside it.

    ``dry_run=True`` removes nothing and reports what would go. Each removal is
    logged (warning ``xport.topology``); a failed one is reported in
    :attr:`SweepResult.errors` and the sweep goes on. Needs CAP_NET_ADMIN to
    remove anything.
    """
    links: dict[str, list[tuple[str, str | None]]] = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME") or ""
            parsed = parse_owned_name(name)
            if parsed is None or parsed.role == "n":
                continue
            info = msg.get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
                continue  # one of our names on something that is not a veth: not ours
            links.setdefault(parsed.token, []).append((name, msg.get_attr("IFLA_IFALIAS")))
    spaces: dict[str, str] = {}
    for ns in netns.listnetns():
        parsed = parse_owned_name(ns)
        if parsed is not None and parsed.role == "n":
            spaces[parsed.token] = ns
    removed_links: list[str] = []
    removed_ns: list[str] = []
    kept: list[tuple[str, str]] = []
    errors: list[tuple[str, str]] = []
    verb = "would remove" if dry_run else "removing"
    for token in sorted(set(links) | set(spaces)):
        ends = links.get(token, [])
        names = [n for n, _ in ends] + ([spaces[token]] if token in spaces else [])
        stale, why = _verdict(int(token[:_PID_DIGITS], 36), [a for _, a in ends])
        if not stale:
            kept.extend((n, why) for n in names)
            log.debug("keeping %s: %s", ", ".join(names), why)
            continue
        for name, _ in ends:
            log.warning("%s stale veth %s: %s", verb, name, why)
            try:
                if not dry_run:
                    _delete_link(name)
                removed_links.append(name)
            except Exception as exc:  # noqa: BLE001 - reported; the sweep goes on
                log.warning("cannot remove veth %s: %s", name, exc)
                errors.append((name, str(exc)))
        if token in spaces:
            ns = spaces[token]
            log.warning("%s stale network namespace %s: %s", verb, ns, why)
            try:
                if not dry_run:
                    netns.remove(ns)
                removed_ns.append(ns)
            except Exception as exc:  # noqa: BLE001 - reported; the sweep goes on
                log.warning("cannot remove network namespace %s: %s", ns, exc)
                errors.append((ns, str(exc)))
    return SweepResult(tuple(removed_links), tuple(removed_ns), tuple(kept), tuple(errors),
                       dry_run)


def _delete_link(name: str) -> None:
    """Delete veth ``name`` if it is still there (its peer may have taken it along)."""
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # gone in between: with its peer, or swept
                    raise


_sweep_lock = threading.Lock()
_swept_pid = 0


def sweep_once(*, force: bool = False) -> SweepResult | None:
    """:func:`sweep_stale` once per process: the first call sweeps, later ones
    return None at once (``force=True`` sweeps again and counts as the
    process's sweep too). None as well when ``MUX_RPC_NO_SWEEP=1``, or when
    the sweep failed (logged: what calls it must never depend on it).
    ``VethPair.create`` calls it before the process's first pair; the demo
    and the bench call it first thing with ``force=True``."""
    global _swept_pid
    if os.environ.get("MUX_RPC_NO_SWEEP") == "1":
        return None
    with _sweep_lock:
        if _swept_pid == os.getpid() and not force:
            return None
        _swept_pid = os.getpid()
    try:
        return sweep_stale()
    except Exception as exc:  # noqa: BLE001 - creating our own pair must not depend on it
        log.warning("sweeping stale veth pairs and namespaces failed: %s", exc)
        return None


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
