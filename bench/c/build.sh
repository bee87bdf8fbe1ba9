#!/usr/bin/env bash
# Build the C floor of the transport benchmark (bench/c/xsk_floor).
# Idempotent: rebuilds only when xsk_floor.c (or this script) is newer than
# the binary. Needs gcc, libxdp-dev and libbpf-dev (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
src=xsk_floor.c
out=xsk_floor
if [[ -x $out && $out -nt $src && $out -nt build.sh ]]; then
    exit 0
fi
CC=${CC:-gcc}
CFLAGS=${CFLAGS:--O2 -g -Wall -Wextra -Wno-unused-parameter}
echo "[bench/c] building $out" >&2
# shellcheck disable=SC2086
$CC $CFLAGS -o "$out.tmp" "$src" -lxdp -lbpf
mv -f "$out.tmp" "$out"
