"""Run benchmark peers (sender, receiver) as separate processes, optionally in a netns.

Theory of operation
-------------------
A :class:`Peer` is one child process started with ``subprocess.Popen``. Its
protocol on stdout is JSON lines: an optional ``{"event": "ready"}`` once it
can receive, then exactly one result object as its last line. stderr goes to
a temporary file that is shown when the child fails.

Children never outlive the benchmark: ``Peer`` is a context manager whose exit
sends SIGTERM, waits briefly, then SIGKILL; every child also asks the kernel
for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which covers a parent
killed with SIGKILL. Children stay in the parent's process group, so Ctrl-C
reaches them too (the C floor detaches its XDP program on SIGINT).

Entering a network namespace happens between fork and exec with ``setns(2)``
on ``/var/run/netns/<name>`` (what ``ip netns exec`` does, minus the /sys
remount), so the same helper serves Python workers and the C program.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Self

__all__ = ["Peer", "PeerError", "child_preexec"]

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


class PeerError(RuntimeError):
    """A peer process failed, timed out or printed no result."""


def child_preexec(netns: str | None) -> Any:
    """A ``preexec_fn`` that sets PDEATHSIG and enters ``netns`` (None = stay)."""
    parent = os.getpid()

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # parent already gone: don't run orphaned
            os._exit(1)
        if netns is not None:
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)

    return run


class Peer:
    """One benchmark peer process. Use as a context manager."""

    def __init__(self, argv: Sequence[str], *, name: str, netns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        self._buf = b""
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
            # preexec_fn: setns(2) and PR_SET_PDEATHSIG must run between fork and exec;
            # the benchmark driver starts no threads of its own
            preexec_fn=child_preexec(netns), env=env, close_fds=True,  # noqa: PLW1509
        )

    # -- protocol ------------------------------------------------------------
    def _readline(self, deadline: float) -> bytes | None:
        """One stdout line, or None at EOF. Raises PeerError at the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"{self.name}: timed out{self._stderr_tail()}")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the ``{"event": "ready"}`` line; returns it (it may carry more, a port)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline)
            if line is None:
                self.proc.wait(timeout=2)
                raise PeerError(f"{self.name}: exited with {self.proc.returncode} before "
                                f"ready{self._stderr_tail()}")
            msg = _parse(line)
            if msg.get("event") == "ready":
                return msg

    def result(self, timeout: float) -> dict[str, Any]:
        """The last JSON object the peer prints before it exits."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            line = self._readline(deadline)
            if line is None:
                break
            msg = _parse(line)
            if msg and "event" not in msg:
                last = msg
        try:
            rc = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name}: did not exit{self._stderr_tail()}") from None
        if rc != 0 or last is None:
            raise PeerError(f"{self.name}: exit status {rc}, result {last}{self._stderr_tail()}")
        return last

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stderr_text(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def _stderr_tail(self, n: int = 1500) -> str:
        text = self.stderr_text().strip()
        return f"\n--- {self.name} stderr ---\n{text[-n:]}" if text else ""

    # -- lifetime --------------------------------------------------------------
    def close(self) -> None:
        """Terminate the child if it still runs (SIGTERM, then SIGKILL). Idempotent."""
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3)
        if p.stdout is not None:
            p.stdout.close()
        self._err.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(line: bytes) -> dict[str, Any]:
    text = line.decode(errors="replace").strip()
    if not text.startswith("{"):
        if text:
            print(f"  | {text}", file=sys.stderr)
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}
