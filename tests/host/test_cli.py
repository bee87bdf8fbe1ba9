"""The mux-rpc command line: every --help exits 0 and explains."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mux_rpc import cli


def test_main_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for sub in ("agent", "serve", "demo", "bench", "stats"):
        assert f"\n  {sub} " in out


@pytest.mark.parametrize("sub,words", [
    ("serve", ["module:attribute", "--workers", "--ifname", "veth pair"]),
    ("demo", ["--clients", "veth pair", "removed on exit"]),
    ("bench", ["--connections", "--duration", "baseline"]),
    ("stats", ["UNIX", "--socket", "MUX_RPC_STATS_DIR"]),
])
def test_subcommand_help(sub: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main([sub, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for w in words:
        assert w in out, w


def test_agent_help_goes_to_the_agent() -> None:
    # through the installed entry points, in a fresh process (the agent's parser exits 0)
    r = subprocess.run([sys.executable, "-m", "mux_rpc", "agent", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode in (0, 2)
    text = r.stdout + r.stderr
    assert "--ifname" in text
    if r.returncode == 0:
        assert "--queues" in text and "--backend" in text


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "subcommands" in capsys.readouterr().out


def test_missing_demo_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *a: object) -> object:
        if name in ("mux_rpc.demo", "mux_rpc.bench"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    assert cli.main(["demo"]) == 2
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "mux_rpc.demo is not available" in err and "mux_rpc.bench" in err


def test_stats_reads_a_running_host(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from mux_rpc._stats import StatsServer

    monkeypatch.setenv("MUX_RPC_STATS_DIR", str(tmp_path))
    assert cli.main(["stats"]) == 1  # nothing running

    async def main() -> None:
        srv = StatsServer("host", lambda: {"role": "host", "messages_in": 42,
                                           "close_reasons": {"peer_reset": 1}})
        await srv.start()
        rc = await asyncio.to_thread(cli.main, ["stats"])
        assert rc == 0
        rc = await asyncio.to_thread(cli.main, ["stats", "--json"])
        assert rc == 0
        await srv.close()

    asyncio.run(main())
    out = capsys.readouterr().out
    assert "messages_in" in out and "42" in out and "close_reasons.peer_reset" in out
    assert '"messages_in": 42' in out
    assert not list(tmp_path.glob("*.sock"))


def test_help_loads_neither_cffi_nor_pyroute2() -> None:
    """``import mux_rpc`` and ``mux-rpc --help`` (fresh interpreter) import no cffi
    extension, no pyroute2 and no agent: those come with the commands that use them."""
    code = ("import sys\nfrom mux_rpc import cli\ntry:\n    cli.main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, check=True)
    loaded = set(r.stderr.split())
    banned = {m for m in loaded if m.split(".")[0] in ("pyroute2", "_cffi_backend", "cffi",
                                                       "agent")
              or m.startswith(("xport._xsk", "xport._afxdp", "xport._topology"))}
    assert not banned, sorted(banned)
