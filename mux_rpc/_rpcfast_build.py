"""Build the optional accelerator ``mux_rpc._rpcfast`` in place.

    .venv/bin/python mux_rpc/_rpcfast_build.py          # rebuild if the source changed
    .venv/bin/python mux_rpc/_rpcfast_build.py --force  (scripts/setup.sh runs the first)

Needs a C compiler and the Python headers (``python3-dev``). Without the built
module, mux_rpc._dispatch uses its pure-Python fallback (same results, slower); set
``MUX_RPC_PURE_PYTHON=1`` to force the fallback.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "_rpcfast.c"


def target() -> Path:
    return HERE / ("_rpcfast" + str(sysconfig.get_config_var("EXT_SUFFIX")))


def build(force: bool = False) -> Path:
    out = target()
    if not force and out.exists() and out.stat().st_mtime >= SRC.stat().st_mtime:
        return out
    cc = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")
    cflags = os.environ.get("CFLAGS", "-O2 -g -Wall -Wextra -Wno-unused-parameter")
    tmp = out.with_name(out.name + ".tmp")
    cmd = [
        *shlex.split(cc),
        *shlex.split(cflags),
        "-shared",
        "-fPIC",
        "-I",
        sysconfig.get_paths()["include"],
        str(SRC),
        "-o",
        str(tmp),
    ]
    print("[mux_rpc] " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(build(force="--force" in sys.argv[1:]))
