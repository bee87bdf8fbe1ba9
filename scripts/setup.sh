#!/usr/bin/env bash
# Idempotent setup for mux-rpc on Debian 12 (run as root).
# Installs the Debian packages, the project virtualenv (.venv), the cffi
# extension over libxdp/libbpf and the BPF object. Each step checks first and
# does nothing when its output is already current, so a second run takes a
# second or two.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMPS=$ROOT/.stamps
mkdir -p "$STAMPS"
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages -----------------------------------------------------------
DEB_PKGS=(clang llvm libbpf-dev libxdp-dev libelf-dev zlib1g-dev gcc libc6-dev
          pkg-config python3 python3-venv python3-dev iproute2)
missing=()
for p in "${DEB_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]} (run as root, or install them yourself)"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Virtualenv ----------------------------------------------------------------
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "need Python 3.11 or newer, $PY is $("$PY" --version 2>&1)"
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
fi
VPY=$ROOT/.venv/bin/python
deps_hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $STAMPS/deps || $(cat "$STAMPS/deps") != "$deps_hash" ]]; then
    log "installing Python dependencies into .venv"
    "$VPY" -m pip install -q --upgrade pip setuptools wheel
    "$VPY" -m pip install -q -e ".[test,plot,fast]"
    echo "$deps_hash" > "$STAMPS/deps"
fi

# 2b. the optional C accelerators of framing, the link and the RPC dispatcher
#     (rebuilt only when their source changed; without one, its package uses
#     its pure-Python reference)
"$VPY" scripts/build_accelerators.py >/dev/null

# 3. cffi extension over libxdp/libbpf ----------------------------------------
if [[ -f xport/_xsk_build.py ]]; then
    src_hash=$(cat xport/_xsk_build.py bpf/*.h 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [[ ! -f $STAMPS/cffi || $(cat "$STAMPS/cffi") != "$src_hash" ]] || ! ls xport/_xsk_cffi*.so >/dev/null 2>&1; then
        log "building the cffi extension xport._xsk_cffi"
        "$VPY" -m xport._xsk_build
        echo "$src_hash" > "$STAMPS/cffi"
    fi
fi

# 4. BPF object ----------------------------------------------------------------
if [[ -f bpf/build.sh ]]; then
    bash bpf/build.sh
fi
# 5. The C floor of the transport benchmark --------------------------------------
if [[ -f bench/c/build.sh ]]; then
    bash bench/c/build.sh
fi
log "ready (.venv at $ROOT/.venv)"
