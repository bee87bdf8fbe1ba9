"""bench/c/tcp_floor: the TCP-on-loopback floor per wake-up (echo and ping roles).

Builds the binary with ``bench/c/build.sh``, runs one short echo/ping pair on
127.0.0.1 and checks the two JSON lines agree: the echo saw exactly the bytes
ping sent (nothing lost or invented), and both counted rounds and CPU. Also
the command line: usage errors exit 2 with a message, ``--help`` exits 0, and
ping exits 1 when nothing comes back. No speed assertion.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "bench", "c", "build.sh")
BINARY = os.path.join(ROOT, "bench", "c", "tcp_floor")


@pytest.fixture(scope="module")
def tcp_floor() -> str:
    proc = subprocess.run(["bash", BUILD], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stderr[-3000:]}"
    assert os.access(BINARY, os.X_OK)
    return BINARY


@pytest.fixture
def echo(tcp_floor: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A running ``tcp_floor echo`` and the port it announced."""
    proc = subprocess.Popen(
        [tcp_floor, "echo", "--seconds", "2", "--idle-ms", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 5.0)
        assert ready, "echo printed no ready line within 5 s"
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "ready"
        port = line["port"]
        assert isinstance(port, int) and 0 < port < 65536
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_echo_sees_exactly_what_ping_sent(
    tcp_floor: str, echo: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = echo
    ping = subprocess.run(
        [
            tcp_floor,
            "ping",
            "--port",
            str(port),
            "--seconds",
            "0.5",
            "--messages",
            "8",
            "--size",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert ping.returncode == 0, ping.stderr
    p = json.loads(ping.stdout)
    # ping closed the socket: echo sees EOF and ends on its own.
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    e = json.loads(out.decode().splitlines()[-1])

    assert p["role"] == "ping"
    assert p["messages_per_round"] == 8 and p["bytes_per_round"] == 128
    assert p["rounds"] > 0
    assert p["seconds"] >= 0.5
    assert p["rounds_per_s"] > 0

    assert e["role"] == "echo"
    assert e["end"] == "eof"
    assert e["bytes"] == p["rounds"] * 128
    assert e["rounds"] > 0
    # every round is a wake-up that read data; the EOF is one wake-up more
    assert e["wakeups"] >= e["rounds"] + 1
    assert e["cpu_user"] + e["cpu_sys"] > 0
    assert 0 < e["seconds"] < p["seconds"] + 1


def test_echo_stops_on_sigterm_before_a_connection(
    echo: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, _ = echo
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    e = json.loads(out.decode().splitlines()[-1])
    assert e["end"] == "signal"
    assert e["bytes"] == 0 and e["rounds"] == 0


def test_ping_fails_when_nothing_comes_back(tcp_floor: str) -> None:
    # A listener that accepts (the kernel completes the handshake) but never echoes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        ping = subprocess.run(
            [tcp_floor, "ping", "--port", str(port), "--seconds", "0.5"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    assert ping.returncode == 1
    assert "nothing came back within 1 s" in ping.stderr
    assert ping.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ping", "--port", "1", "--messages", "0"], "--messages"),
        (["ping", "--port", "1", "--messages", "4097"], "--messages"),
        (["ping", "--port", "1", "--size", "0"], "--size"),
        (["ping", "--port", "1", "--size", "65537"], "--size"),
        (["ping", "--port", "1", "--messages", "32", "--size", "65536"], "<= 1048576"),
        (["ping", "--port", "1", "--seconds", "abc"], "--seconds"),
        (["ping", "--port", "1", "--seconds", "0"], "--seconds"),
        (["ping"], "--port"),
        (["ping", "--port", "70000"], "--port"),
        (["echo", "--messages", "8"], "ping option"),
        (["ping", "--port", "1", "--idle-ms", "5"], "echo option"),
        (["echo", "--bogus"], "--bogus"),
        (["echo", "extra"], "extra"),
        (["pong"], "unknown role"),
        ([], "usage"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tcp_floor: str, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [tcp_floor, *args], capture_output=True, text=True, timeout=5, check=False
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


def test_help_exits_0_and_names_both_roles(tcp_floor: str) -> None:
    proc = subprocess.run(
        [tcp_floor, "--help"], capture_output=True, text=True, timeout=5, check=False
    )
    assert proc.returncode == 0
    assert "tcp_floor echo" in proc.stdout and "tcp_floor ping" in proc.stdout
    for option in ("--port", "--idle-ms", "--seconds", "--messages", "--size"):
        assert option in proc.stdout
