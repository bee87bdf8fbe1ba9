#!/usr/bin/env bash
# Build the C floors of the benchmarks: bench/c/xsk_floor (AF_XDP, needs
# libxdp-dev and libbpf-dev, which scripts/setup.sh installs) and
# bench/c/tcp_floor (TCP on loopback, no libraries).
# Idempotent: each binary is rebuilt only when its source (or this script,
# or the header they share, floor_clock.h) is newer than it.
set -euo pipefail
cd "$(dirname "$0")"
CC=${CC:-gcc}
CFLAGS=${CFLAGS:--O2 -g -Wall -Wextra -Wno-unused-parameter}

# build OUT SRC [LIBS...]
build() {
    local out=$1 src=$2
    shift 2
    if [[ -x $out && $out -nt $src && $out -nt build.sh && $out -nt floor_clock.h ]]; then
        return 0
    fi
    echo "[bench/c] building $out" >&2
    # A private temporary name: two builds at once must not clobber each other.
    local tmp="$out.tmp.$$"
    # shellcheck disable=SC2086
    if ! $CC $CFLAGS -o "$tmp" "$src" "$@"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$out"
}

# tcp_floor first: it needs no library, so it is there even where libxdp is not.
build tcp_floor tcp_floor.c
build xsk_floor xsk_floor.c -lxdp -lbpf
