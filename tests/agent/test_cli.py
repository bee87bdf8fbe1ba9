"""The agent's command line, and the agent as a separate process over the
shared-memory backend with the real host runtime (no root needed)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import agent

REPO = Path(__file__).resolve().parents[2]


def test_help_explains() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, check=False,
                         text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0
    for word in ("--ifname", "--queues", "--netns", "--backend", "--shm-name", "afxdp",
                 "shm", "SIGTERM", "loopback", "--half-close-timeout"):
        assert word in out.stdout


def test_half_close_timeout_reaches_the_config() -> None:
    from agent._main import _config, build_parser

    args = build_parser().parse_args(["--backend", "shm", "--shm-name", "x",
                                      "--half-close-timeout", "2.5"])
    assert _config(args).half_close_timeout == 2.5
    default = build_parser().parse_args(["--backend", "shm", "--shm-name", "x"])
    assert _config(default).half_close_timeout == agent.AgentConfig().half_close_timeout


def test_bad_arguments_fail_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(["--backend", "shm"]) == 2
    assert "--shm-name" in capsys.readouterr().err
    assert agent.main(["--backend", "afxdp"]) == 2
    assert "--ifname" in capsys.readouterr().err
    assert agent.main(["--window-bytes", "0", "--backend", "shm", "--shm-name", "x"]) == 2
    assert agent.main(["--queues", "0", "--backend", "shm", "--shm-name", "x"]) == 2


def test_missing_netns_is_an_error_not_created(capsys: pytest.CaptureFixture[str]) -> None:
    name = "mxnone" + uuid.uuid4().hex[:8]
    out = subprocess.run([sys.executable, "-m", "agent", "--netns", name, "--backend", "shm",
                          "--shm-name", "x"], capture_output=True, text=True, timeout=30,
                         cwd=REPO, check=False)
    assert out.returncode == 2 and "cannot enter network namespace" in out.stderr
    assert not Path(f"/var/run/netns/{name}").exists()


def test_agent_process_over_shared_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime

    monkeypatch.setenv("MUX_RPC_STATS_DIR", str(tmp_path))

    async def main() -> None:
        async with OffloadRuntime(OffloadOptions(queues=2, backend="shm",
                                                 stats_socket=False)) as rt:
            lst = await rt.host.listen(0, "length", auto_consume=True)

            async def serve() -> None:
                conn = await lst.accept()
                while (m := await conn.recv()) is not None:
                    await conn.send(m.payload)
            srv = asyncio.ensure_future(serve())
            r, w = await asyncio.open_connection("127.0.0.1", lst.port)
            for i in range(50):
                w.write(struct.pack("!I", 4) + i.to_bytes(4, "big"))
            for i in range(50):
                (ln,) = struct.unpack("!I", await r.readexactly(4))
                assert await r.readexactly(ln) == i.to_bytes(4, "big")
            w.close()
            await asyncio.wait_for(srv, 10)
            assert list(tmp_path.glob("agent-*.sock"))  # the agent serves its counters

    asyncio.run(asyncio.wait_for(main(), 60))
