#!/usr/bin/env bash
# Build bpf/mux_xdp.o from bpf/mux_xdp.c. Idempotent and quick: does nothing
# when the object is newer than every bpf/*.c and bpf/*.h.
set -euo pipefail
cd "$(dirname "$0")"
OBJ=mux_xdp.o
SRC=mux_xdp.c
stale=0
if [[ ! -f $OBJ ]]; then
    stale=1
else
    for f in *.c *.h; do
        [[ -e $f && $f -nt $OBJ ]] && stale=1
    done
fi
((stale)) || exit 0
CLANG=${CLANG:-clang}
MULTIARCH=$(gcc -dumpmachine 2>/dev/null || echo "$(uname -m)-linux-gnu")
printf '[bpf] building %s\n' "$OBJ" >&2
# Build to a temporary name and rename: a reader never sees a half-written object.
"$CLANG" -O2 -g -Wall -Werror -target bpf -I"/usr/include/$MULTIARCH" -I. \
    -c "$SRC" -o "$OBJ.tmp.$$"
mv -f "$OBJ.tmp.$$" "$OBJ"
