"""``import framing`` must stay sans-I/O: no socket, asyncio, ssl or xport
module may come with it (checked in a fresh interpreter), and framing's
sources import nothing of mux_rpc, agent or xport."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import framing
framing.framer_from_spec("length:size=2")
print(json.dumps({"file": framing.__file__, "modules": sorted(sys.modules)}))
"""


def test_import_framing_pulls_in_no_io_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", CODE, str(REPO)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(out.stdout)
    assert Path(info["file"]).resolve().parent == REPO / "framing"
    banned = {
        "socket",
        "_socket",
        "asyncio",
        "ssl",
        "_ssl",
        "selectors",
        "xport",
        "mux_rpc",
        "agent",
    }
    loaded = {m.split(".")[0] for m in info["modules"]}
    assert not loaded & banned, sorted(loaded & banned)


def test_framing_sources_import_nothing_of_ours() -> None:
    pattern = re.compile(
        r"^\s*(from|import)\s+(mux_rpc|agent|xport|socket|asyncio|ssl)\b", re.MULTILINE
    )
    for path in (REPO / "framing").glob("*.py"):
        assert not pattern.search(path.read_text()), path
