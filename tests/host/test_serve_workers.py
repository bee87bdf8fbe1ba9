"""``mux-rpc serve``: the default framer, ``--workers N`` (one host process per
AF_XDP queue, connections spread over them), and the AF_PACKET backend of the
orchestration."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import mux_rpc
from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime, default_framer
from mux_rpc._stats import read_stats
from mux_rpc._workers import _die_with_parent
from mux_rpc.cli import build_parser, main
from tests.conftest import afxdp_required
from tests.host import _echo_app

REPO = Path(__file__).resolve().parents[2]


def test_serve_framer_defaults_to_the_app_shape() -> None:
    args = build_parser().parse_args(["serve", "m:a"])
    assert args.framer is None and args.workers == 1 and args.queues is None
    assert default_framer(mux_rpc.App("x")) == "msgpack-rpc"
    assert default_framer(mux_rpc.Server(mux_rpc.App("x"))) == "msgpack-rpc"
    assert default_framer(_echo_app.echo) == "length"
    assert build_parser().parse_args(["demo"]).queues == 2  # only serve's default moved


@pytest.mark.parametrize("extra", [
    ["--workers", "0"],
    ["--workers", "2", "--queues", "3"],
    ["--workers", "2", "--backend", "shm"],
    ["--workers", "2", "--ifname", "lo"],
])
def test_serve_workers_bad_arguments_exit_2(extra: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "tests.host._echo_app:echo", *extra]) == 2
    assert "mux-rpc serve:" in capsys.readouterr().err


@pytest.mark.parametrize(("app", "said"), [
    ("nonexistent.module:app", "cannot import 'nonexistent.module'"),
    ("tests.host._echo_app:nope", "has no attribute 'nope'"),
    ("tests.host._echo_app", "APP must be module:attribute"),
])
def test_serve_bad_app_is_one_line_exit_2(app: str, said: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", app]) == 2  # before any veth pair or agent exists
    err = capsys.readouterr().err
    assert err.startswith("mux-rpc serve: ") and said in err and err.count("\n") == 1, err


async def _calls(port: int, conns: int, calls: int) -> list[list[object]]:
    async def one(i: int) -> list[object]:
        async with await mux_rpc.Client.connect("127.0.0.1", port) as c:
            return [await c.call("echo", i, j) for j in range(calls)]

    return await asyncio.gather(*(one(i) for i in range(conns)))


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


@pytest.mark.afxdp
def test_serve_workers_spread_connections(tmp_path: Path) -> None:
    """Two workers, 20 msgpack-rpc clients (no --framer: an App gets msgpack-rpc):
    every reply right, each worker served some of the connections, and
    Ctrl-C removes every process, socket and link."""
    afxdp_required()
    from xport._topology import link_exists

    env = dict(os.environ, MUX_RPC_STATS_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    p = subprocess.Popen([sys.executable, "-m", "mux_rpc", "-v", "serve",
                          "examples.kv_service:app", "--workers", "2", "--port", "0"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                         preexec_fn=_die_with_parent)  # noqa: PLW1509
    worker_pids: list[int] = []
    try:
        assert p.stdout is not None
        line = p.stdout.readline()  # serving on 127.0.0.1:PORT (msgpack-rpc), 2 workers (pids A B)
        assert line.startswith("serving on 127.0.0.1:"), (line, (tmp_path / "serve.log").read_text()[-3000:])
        assert "(msgpack-rpc), 2 workers" in line, line
        port = int(line.split(":")[1].split()[0])
        worker_pids = [int(x) for x in line.rsplit("pids ", 1)[1].rstrip(")\n").split()]
        got = asyncio.run(asyncio.wait_for(_calls(port, 20, 5), 30))
        assert got == [[[i, j] for j in range(5)] for i in range(20)]
        hosts: list[dict[str, Any]] = [read_stats(s) for s in tmp_path.glob("host-*.sock")]
        agents: list[dict[str, Any]] = [read_stats(s) for s in tmp_path.glob("agent-*.sock")]
        assert sorted(h["worker"] for h in hosts) == [0, 1]
        accepted = {h["worker"]: h["connections_accepted"] for h in hosts}
        assert all(n > 0 for n in accepted.values()), accepted
        assert sum(accepted.values()) == 20, accepted
        assert all(h["queues"] == 1 for h in hosts)  # each worker owns one queue
        assert len(agents) == 1 and agents[0]["queues"] == 2
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    deadline = time.monotonic() + 5
    while _pids_alive(worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_alive(worker_pids)
    assert not list(tmp_path.glob("*.sock")), text[-2000:]  # workers' and agent's removed
    import re

    m = re.search(r"veth (\S+) <-> (\S+) up", text)
    assert m, text[-2000:]
    assert not link_exists(m.group(1)) and not link_exists(m.group(2))


@pytest.mark.afxdp
def test_afpacket_backend_end_to_end() -> None:
    """OffloadOptions(backend="afpacket"): veth pair, one queue, the real agent
    with --backend afpacket; a length-framed echo round trip."""
    afxdp_required()  # root; the agent process needs nothing more

    async def run() -> tuple[str, int, list[bytes], object]:
        opts = OffloadOptions(backend="afpacket", stats_socket=False)  # queues=2 asked: 1 used
        async with OffloadRuntime(opts) as rt:
            assert rt.host is not None
            lst = await rt.host.listen(0, "length")

            async def serve() -> None:
                conn = await lst.accept()
                while (m := await conn.recv()) is not None:
                    await conn.send(m.payload)
                    conn.on_consumed(m.nbytes)

            task = asyncio.ensure_future(serve())
            r, w = await asyncio.open_connection("127.0.0.1", lst.port)
            got = []
            for i in range(5):
                body = b"ping%d" % i
                w.write(len(body).to_bytes(4, "big") + body)
                n = int.from_bytes(await r.readexactly(4), "big")
                got.append(await r.readexactly(n))
            w.close()
            task.cancel()
            modes = {getattr(b, "mode", "?") for b in rt.backends}
            return rt.backend_name, rt.queues, got, modes

    name, queues, got, modes = asyncio.run(asyncio.wait_for(run(), 60))
    assert (name, queues) == ("afpacket", 1)
    assert got == [b"ping%d" % i for i in range(5)]
    assert modes == {"mmap"}


def test_afpacket_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rt = OffloadRuntime(OffloadOptions(backend="afpacket"))
    with pytest.raises(RuntimeError, match="AF_PACKET requested but unavailable"):
        rt.prepare_link()
    with pytest.raises(ValueError, match="backend must be one of"):
        OffloadRuntime(OffloadOptions(backend="afpackets"))


def test_workers_json_line_protocol_reports_errors(tmp_path: Path) -> None:
    """A worker that cannot start says why on its channel and exits 1."""
    cfg = {"app": "tests.host._echo_app:echo", "queue": 0, "queues": 1, "ifname": "nonexistent0",
           "netns": None, "xskmap_fd": 99999, "framer": "length", "bind": "127.0.0.1",
           "frame_size": 2048, "startup_timeout": 1}
    p = subprocess.run([sys.executable, "-c", "import mux_rpc._workers as w; w.worker_main()"],
                       input=json.dumps(cfg) + "\n", capture_output=True, text=True, cwd=REPO,
                       check=False,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert p.returncode == 1
    assert "error" in json.loads(p.stdout.splitlines()[-1])


@pytest.mark.afxdp
def test_workers_fail_fast_when_the_agent_dies() -> None:
    afxdp_required()
    from mux_rpc._workers import WorkerPool

    pool = WorkerPool("tests.host._echo_app:echo", 2, agent_args=("--no-such-option",),
                      startup_timeout=20.0)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="agent did not come up"), pool:
        pass
    assert time.monotonic() - t0 < 15
    assert pool.workers == [] and pool.agent_proc is None and pool.veth is None
