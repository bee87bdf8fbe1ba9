"""Build the optional C accelerators in place (scripts/setup.sh runs this).

    .venv/bin/python scripts/build_accelerators.py            # rebuild what changed
    .venv/bin/python scripts/build_accelerators.py --force    # rebuild all
    .venv/bin/python scripts/build_accelerators.py xport      # only xport._linkfast

Each is one C file compiled into a CPython extension next to it, rebuilt when
the source is newer than the built module. They need a C compiler and the
Python headers (``python3-dev``). Without a built module its package uses the
pure-Python reference it is tested against (same results, slower);
FRAMING_PURE_PYTHON=1, XPORT_PURE_PYTHON=1 and MUX_RPC_PURE_PYTHON=1 force it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: package -> C source; the module is named after the source (framing._speedups)
ACCELERATORS = {
    "framing": "framing/_speedups.c",
    "xport": "xport/_linkfast.c",
    "mux_rpc": "mux_rpc/_rpcfast.c",
}


def build(package: str, force: bool = False) -> Path:
    """Compile ``package``'s accelerator unless the built module is current."""
    src = ROOT / ACCELERATORS[package]
    out = src.with_name(src.stem + str(sysconfig.get_config_var("EXT_SUFFIX")))
    if not force and out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")
    cflags = os.environ.get("CFLAGS", "-O2 -g -Wall -Wextra -Wno-unused-parameter")
    tmp = out.with_name(out.name + ".tmp")  # never a half-written module under the real name
    cmd = [*shlex.split(cc), *shlex.split(cflags), "-shared", "-fPIC",
           "-I", sysconfig.get_paths()["include"], str(src), "-o", str(tmp)]
    print(f"[{package}] " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str]) -> int:
    force = "--force" in argv
    names = [a for a in argv if not a.startswith("-")] or list(ACCELERATORS)
    unknown = [n for n in names if n not in ACCELERATORS]
    if unknown:
        print(f"unknown accelerator(s) {unknown}; known: {', '.join(ACCELERATORS)}",
              file=sys.stderr)
        return 2
    for name in names:
        print(build(name, force))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
