"""cffi build script for ``xport._xsk_cffi``: AF_XDP over libxdp/libbpf, API mode.

Run as ``python -m xport._xsk_build`` (``scripts/setup.sh`` does it when this
file or ``bpf/*.h`` changes). It compiles the extension in place as
``xport/_xsk_cffi.*.so``.

Theory of operation
-------------------
libxdp's ring operations (``xsk_ring_prod__reserve`` and friends) are inline
functions in ``<xdp/xsk.h>`` with no symbols, so they can only be reached from
C: API mode, never ABI-mode ``dlopen``. Python must also never cross into C
once per descriptor, so the C source below holds *burst helpers* that move a
whole batch per call, the way ``xsk.h``'s own examples do (reserve N, fill N,
submit N).

One ``struct mux_xsk`` per socket owns the four rings, a pointer to the UMEM
area (allocated and owned by Python, see :mod:`xport._umem`) and the TX
free-frame stack. The UMEM is split in two fixed pools:

* RX frames ``[0, n_rx)``: all of them sit in the fill ring at start. A frame
  travels fill ring -> kernel -> RX ring -> (copy out, or a zero-copy view
  held by the user) -> fill ring again. ``fill_posted`` counts every post to
  the fill ring, cumulatively: it is the link-credit base
  (``FrameBackend.rx_buffers_posted``). The fill ring is at least ``n_rx``
  entries, so a refill never finds it full.
* TX frames ``[n_rx, n_rx + n_tx)``: free stack -> (copy in, or built in
  place by the user) -> TX ring -> kernel -> completion ring -> free stack.

Copy mode (veth, generic XDP): one ``sendto`` kick sends at most 32
descriptors, so ``kick_tx`` repeats while the kernel has not consumed the TX
ring, and stops on EAGAIN/ENOBUFS/EBUSY (the device pushed back; the next
burst or ``flush`` kicks again). ``xsk_ring_prod__reserve`` is all or nothing,
so every reserve asks only for what ``xsk_prod_nb_free`` says is free.

A socket created with ``mux_xsk_attach_fake`` runs on rings in plain memory
(no kernel, no fd): the property tests drive the very same burst helpers
through u32 index wraparound with a Python model of the kernel side.
"""

from __future__ import annotations

import os
import pathlib

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "bpf"

CDEF = r"""
#define MUX_ETHERTYPE 0x88B5
#define MUX_XSKS_MAP_MAX_ENTRIES 64
#define MUX_CNT_REDIRECTED 0
#define MUX_CNT_PASSED 1
#define MUX_CNT_TOO_SHORT 2
#define MUX_CNT_MAX 3

#define XDP_COPY ...
#define XDP_ZEROCOPY ...
#define XDP_USE_NEED_WAKEUP ...
#define XDP_OPTIONS_ZEROCOPY ...
#define XDP_PACKET_HEADROOM ...
#define XDP_FLAGS_UPDATE_IF_NOEXIST ...
#define XDP_FLAGS_SKB_MODE ...
#define XDP_FLAGS_DRV_MODE ...
#define XDP_FLAGS_HW_MODE ...
#define XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD ...
#define XDP_ABORTED ...
#define XDP_DROP ...
#define XDP_PASS ...
#define XDP_TX ...
#define XDP_REDIRECT ...

struct xdp_statistics {
    uint64_t rx_dropped;
    uint64_t rx_invalid_descs;
    uint64_t tx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t tx_ring_empty_descs;
};

struct xdp_desc {
    uint64_t addr;
    uint32_t len;
    uint32_t options;
};

/* ---- libbpf: load the object, find the program and maps, attach ---- */
struct bpf_object;
struct bpf_program;
struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_object__find_map_fd_by_name(const struct bpf_object *obj, const char *name);
int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const void *opts);
int bpf_xdp_detach(int ifindex, uint32_t flags, const void *opts);
int bpf_xdp_query_id(int ifindex, int flags, uint32_t *prog_id);
int libbpf_get_error(const void *ptr);
/* XDP through a bpf_link (Linux >= 5.9): the kernel detaches the program when
   the last fd of the link closes, so also when its process is SIGKILLed */
enum bpf_attach_type { BPF_XDP, ... };
struct bpf_link_create_opts { size_t sz; uint32_t flags; ...; };
int bpf_link_create(int prog_fd, int target_fd, enum bpf_attach_type attach_type,
                    const struct bpf_link_create_opts *opts);
int bpf_link_detach(int link_fd);

/* ---- our helpers ---- */
struct mux_xsk {
    /* cumulative counters, read directly from Python */
    uint64_t fill_posted;   /* every frame ever posted to the fill ring */
    uint64_t rx_frames;
    uint64_t rx_bytes;
    uint64_t tx_frames;     /* frames submitted to the TX ring */
    uint64_t tx_bytes;
    uint64_t tx_completed;
    uint64_t tx_ring_full;  /* bursts that could not take every frame */
    uint64_t kicks;         /* sendto calls */
    uint64_t kick_busy;     /* kicks answered EAGAIN/EBUSY/ENOBUFS */
    uint64_t fill_wakeups;  /* recvfrom calls for a flagged fill ring */
    uint32_t frame_size;
    uint32_t n_rx;
    uint32_t n_tx;
    uint32_t tx_free;       /* frames on the TX free stack */
    uint32_t rx_held;       /* RX frames out as zero-copy views */
    uint32_t tx_stalled;    /* last kick left descriptors in the TX ring */
    int fd;
    ...;
};

struct mux_fake_rings {
    uint32_t fill_prod, fill_cons, comp_prod, comp_cons;
    uint32_t rx_prod, rx_cons, tx_prod, tx_cons;
    uint32_t fill_flags, comp_flags, rx_flags, tx_flags;
    uint64_t *fill_ring;
    uint64_t *comp_ring;
    struct xdp_desc *rx_ring;
    struct xdp_desc *tx_ring;
    uint32_t fill_size, comp_size, rx_size, tx_size;
};

struct mux_xsk *mux_xsk_new(void *area, uint64_t area_size, uint32_t frame_size,
                            uint32_t n_rx, uint32_t n_tx);
int mux_xsk_open(struct mux_xsk *c, const char *ifname, uint32_t queue_id,
                 uint32_t rx_size, uint32_t tx_size, uint32_t fill_size,
                 uint32_t comp_size, uint16_t bind_flags);
int mux_xsk_attach_fake(struct mux_xsk *c, struct mux_fake_rings *f);
void mux_xsk_close(struct mux_xsk *c);
void mux_xsk_free(struct mux_xsk *c);
int mux_xsk_update_xskmap(struct mux_xsk *c, int map_fd);
int mux_xsk_options(struct mux_xsk *c);
int mux_xsk_stats(struct mux_xsk *c, struct xdp_statistics *out);
int mux_xsk_setsockopt_int(struct mux_xsk *c, int level, int name, int value);

int mux_xsk_tx_burst(struct mux_xsk *c, const char *buf, const uint32_t *lens, uint32_t n);
int mux_xsk_tx_stride(struct mux_xsk *c, const char *buf, uint32_t stride, const uint32_t *lens,
                      uint32_t n);
uint32_t mux_xsk_tx_reserve(struct mux_xsk *c, uint64_t *addrs, uint32_t n);
int mux_xsk_tx_submit(struct mux_xsk *c, const uint64_t *addrs, const uint32_t *lens,
                      uint32_t n);
void mux_xsk_tx_unreserve(struct mux_xsk *c, const uint64_t *addrs, uint32_t n);
uint32_t mux_xsk_complete(struct mux_xsk *c);
int mux_xsk_kick(struct mux_xsk *c);
uint32_t mux_xsk_tx_ring_pending(struct mux_xsk *c);

uint32_t mux_xsk_rx_burst(struct mux_xsk *c, char *out, uint32_t *lens, uint32_t max);
uint32_t mux_xsk_rx_peek(struct mux_xsk *c, uint64_t *addrs, uint32_t *lens, uint32_t max);
uint32_t mux_xsk_release_rx(struct mux_xsk *c, const uint64_t *addrs, uint32_t n);
uint32_t mux_xsk_rx_ready(struct mux_xsk *c);
int mux_xsk_wakeup_rx(struct mux_xsk *c);

int mux_bpf_read_counters(int map_fd, uint64_t *out, uint32_t n);
int mux_bpf_test_run(int prog_fd, const void *data, uint32_t len, uint32_t *retval);
void mux_libbpf_capture(void);
const char *mux_libbpf_last_log(void);
"""

SOURCE = r"""
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#include "mux_xdp.h"

#ifndef SOL_XDP
#define SOL_XDP 283
#endif

struct mux_xsk {
    uint64_t fill_posted;
    uint64_t rx_frames;
    uint64_t rx_bytes;
    uint64_t tx_frames;
    uint64_t tx_bytes;
    uint64_t tx_completed;
    uint64_t tx_ring_full;
    uint64_t kicks;
    uint64_t kick_busy;
    uint64_t fill_wakeups;
    uint32_t frame_size;
    uint32_t n_rx;
    uint32_t n_tx;
    uint32_t tx_free;
    uint32_t rx_held;
    uint32_t tx_stalled;
    int fd;
    /* private */
    int use_wakeup;
    char *area;
    uint64_t area_size;
    uint64_t frame_mask;      /* ~(frame_size - 1): chunk base of an RX address */
    uint64_t *free_stack;     /* n_tx entries, tx_free of them valid */
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    struct xsk_ring_cons rx;
    struct xsk_ring_prod tx;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct mux_fake_rings *fake;
};

struct mux_fake_rings {
    uint32_t fill_prod, fill_cons, comp_prod, comp_cons;
    uint32_t rx_prod, rx_cons, tx_prod, tx_cons;
    uint32_t fill_flags, comp_flags, rx_flags, tx_flags;
    uint64_t *fill_ring;
    uint64_t *comp_ring;
    struct xdp_desc *rx_ring;
    struct xdp_desc *tx_ring;
    uint32_t fill_size, comp_size, rx_size, tx_size;
};

void mux_xsk_close(struct mux_xsk *c);

static void reset_pools(struct mux_xsk *c)
{
    uint32_t i;

    /* TX pool: frames [n_rx, n_rx + n_tx), lowest address on top. */
    for (i = 0; i < c->n_tx; i++)
        c->free_stack[i] = (uint64_t)(c->n_rx + c->n_tx - 1 - i) * c->frame_size;
    c->tx_free = c->n_tx;
    c->rx_held = 0;
}

struct mux_xsk *mux_xsk_new(void *area, uint64_t area_size, uint32_t frame_size,
                            uint32_t n_rx, uint32_t n_tx)
{
    struct mux_xsk *c;

    if (!area || frame_size == 0 || (frame_size & (frame_size - 1)) ||
        (uint64_t)(n_rx + (uint64_t)n_tx) * frame_size > area_size) {
        errno = EINVAL;
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->free_stack = calloc(n_tx ? n_tx : 1, sizeof(uint64_t));
    if (!c->free_stack) {
        free(c);
        return NULL;
    }
    c->area = area;
    c->area_size = area_size;
    c->frame_size = frame_size;
    c->frame_mask = ~(uint64_t)(frame_size - 1);
    c->n_rx = n_rx;
    c->n_tx = n_tx;
    c->fd = -1;
    reset_pools(c);
    return c;
}

/* Post RX addresses to the fill ring. The ring holds n_rx entries or more,
 * so this never has to leave a frame behind; it still asks only for what is
 * free (reserve is all or nothing) and reports what it posted. */
static uint32_t post_fill(struct mux_xsk *c, const uint64_t *addrs, uint32_t n)
{
    uint32_t idx = 0, i, k;

    if (n == 0)
        return 0;
    k = xsk_prod_nb_free(&c->fill, n);
    if (k > n)
        k = n;
    if (k == 0 || xsk_ring_prod__reserve(&c->fill, k, &idx) != k)
        return 0;
    for (i = 0; i < k; i++)
        *xsk_ring_prod__fill_addr(&c->fill, idx + i) = addrs[i] & c->frame_mask;
    xsk_ring_prod__submit(&c->fill, k);
    c->fill_posted += k;
    if (c->fd >= 0 && c->use_wakeup && xsk_ring_prod__needs_wakeup(&c->fill)) {
        c->fill_wakeups++;
        recvfrom(c->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    }
    return k;
}

static int fill_initial(struct mux_xsk *c)
{
    uint64_t addrs[256];
    uint32_t done = 0, i, k, chunk;

    while (done < c->n_rx) {
        chunk = c->n_rx - done;
        if (chunk > 256)
            chunk = 256;
        for (i = 0; i < chunk; i++)
            addrs[i] = (uint64_t)(done + i) * c->frame_size;
        k = post_fill(c, addrs, chunk);
        if (k != chunk)
            return -ENOSPC;
        done += k;
    }
    return 0;
}

int mux_xsk_open(struct mux_xsk *c, const char *ifname, uint32_t queue_id,
                 uint32_t rx_size, uint32_t tx_size, uint32_t fill_size,
                 uint32_t comp_size, uint16_t bind_flags)
{
    struct xsk_umem_config ucfg;
    struct xsk_socket_config scfg;
    int err;

    if (c->umem || c->fake)
        return -EALREADY;
    if (fill_size < c->n_rx || comp_size < c->n_tx)
        return -EINVAL;
    memset(&ucfg, 0, sizeof(ucfg));
    ucfg.fill_size = fill_size;
    ucfg.comp_size = comp_size;
    ucfg.frame_size = c->frame_size;
    ucfg.frame_headroom = 0;
    ucfg.flags = 0;
    err = xsk_umem__create(&c->umem, c->area, c->area_size, &c->fill, &c->comp, &ucfg);
    if (err) {
        c->umem = NULL;
        return err < 0 ? err : -err;
    }
    memset(&scfg, 0, sizeof(scfg));
    scfg.rx_size = rx_size;
    scfg.tx_size = tx_size;
    scfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
    scfg.xdp_flags = 0;
    scfg.bind_flags = bind_flags;
    err = xsk_socket__create(&c->xsk, ifname, queue_id, c->umem, &c->rx, &c->tx, &scfg);
    if (err) {
        c->xsk = NULL;
        xsk_umem__delete(c->umem);
        c->umem = NULL;
        return err < 0 ? err : -err;
    }
    c->fd = xsk_socket__fd(c->xsk);
    c->use_wakeup = (bind_flags & XDP_USE_NEED_WAKEUP) != 0;
    reset_pools(c);
    err = fill_initial(c);
    if (err) {
        mux_xsk_close(c);
        return err;
    }
    return 0;
}

static void fake_prod(struct xsk_ring_prod *r, uint32_t *prod, uint32_t *cons,
                      uint32_t *flags, void *ring, uint32_t size)
{
    r->producer = prod;
    r->consumer = cons;
    r->flags = flags;
    r->ring = ring;
    r->size = size;
    r->mask = size - 1;
    r->cached_prod = *prod;
    r->cached_cons = *cons + size;
}

static void fake_cons(struct xsk_ring_cons *r, uint32_t *prod, uint32_t *cons,
                      uint32_t *flags, void *ring, uint32_t size)
{
    r->producer = prod;
    r->consumer = cons;
    r->flags = flags;
    r->ring = ring;
    r->size = size;
    r->mask = size - 1;
    r->cached_prod = *prod;
    r->cached_cons = *cons;
}

int mux_xsk_attach_fake(struct mux_xsk *c, struct mux_fake_rings *f)
{
    if (c->umem || c->fake)
        return -EALREADY;
    if (f->fill_size < c->n_rx || f->comp_size < c->n_tx)
        return -EINVAL;
    fake_prod(&c->fill, &f->fill_prod, &f->fill_cons, &f->fill_flags, f->fill_ring,
              f->fill_size);
    fake_cons(&c->comp, &f->comp_prod, &f->comp_cons, &f->comp_flags, f->comp_ring,
              f->comp_size);
    fake_cons(&c->rx, &f->rx_prod, &f->rx_cons, &f->rx_flags, f->rx_ring, f->rx_size);
    fake_prod(&c->tx, &f->tx_prod, &f->tx_cons, &f->tx_flags, f->tx_ring, f->tx_size);
    c->fake = f;
    c->fd = -1;
    c->use_wakeup = 0;
    reset_pools(c);
    return fill_initial(c);
}

void mux_xsk_close(struct mux_xsk *c)
{
    if (!c)
        return;
    /* Sockets before the UMEM: the UMEM cannot go while a socket uses it. */
    if (c->xsk) {
        xsk_socket__delete(c->xsk);
        c->xsk = NULL;
    }
    if (c->umem) {
        xsk_umem__delete(c->umem);
        c->umem = NULL;
    }
    c->fake = NULL;
    c->fd = -1;
}

void mux_xsk_free(struct mux_xsk *c)
{
    if (!c)
        return;
    mux_xsk_close(c);
    free(c->free_stack);
    free(c);
}

int mux_xsk_update_xskmap(struct mux_xsk *c, int map_fd)
{
    int err;

    if (!c->xsk)
        return -ENOTCONN;
    err = xsk_socket__update_xskmap(c->xsk, map_fd);
    return err < 0 ? err : (err ? -err : 0);
}

int mux_xsk_options(struct mux_xsk *c)
{
    struct xdp_options opts;
    socklen_t len = sizeof(opts);

    if (c->fd < 0)
        return -ENOTCONN;
    if (getsockopt(c->fd, SOL_XDP, XDP_OPTIONS, &opts, &len) < 0)
        return -errno;
    return (int)opts.flags;
}

int mux_xsk_stats(struct mux_xsk *c, struct xdp_statistics *out)
{
    socklen_t len = sizeof(*out);

    memset(out, 0, sizeof(*out));
    if (c->fd < 0)
        return -ENOTCONN;
    if (getsockopt(c->fd, SOL_XDP, XDP_STATISTICS, out, &len) < 0)
        return -errno;
    return 0;
}

int mux_xsk_setsockopt_int(struct mux_xsk *c, int level, int name, int value)
{
    if (c->fd < 0)
        return -ENOTCONN;
    if (setsockopt(c->fd, level, name, &value, sizeof(value)) < 0)
        return -errno;
    return 0;
}

/* ---- TX ---- */

uint32_t mux_xsk_complete(struct mux_xsk *c)
{
    uint32_t idx = 0, n, i, total = 0;

    for (;;) {
        n = xsk_ring_cons__peek(&c->comp, 256, &idx);
        if (n == 0)
            break;
        for (i = 0; i < n; i++) {
            uint64_t addr = *xsk_ring_cons__comp_addr(&c->comp, idx + i);
            if (c->tx_free < c->n_tx)
                c->free_stack[c->tx_free++] = addr & c->frame_mask;
        }
        xsk_ring_cons__release(&c->comp, n);
        total += n;
    }
    c->tx_completed += total;
    return total;
}

uint32_t mux_xsk_tx_ring_pending(struct mux_xsk *c)
{
    if (!c->tx.producer)
        return 0;
    return *c->tx.producer - __atomic_load_n(c->tx.consumer, __ATOMIC_ACQUIRE);
}

int mux_xsk_kick(struct mux_xsk *c)
{
    uint32_t i, max_kicks;

    if (c->fd < 0)
        return 0;
    /* Copy mode sends at most 32 descriptors per kick: repeat while the
     * kernel has not consumed the whole ring. */
    max_kicks = c->tx.size / 32 + 2;
    c->tx_stalled = 0;
    for (i = 0; i < max_kicks; i++) {
        if (mux_xsk_tx_ring_pending(c) == 0)
            return 0;
        if (c->use_wakeup && !xsk_ring_prod__needs_wakeup(&c->tx))
            return 0; /* the kernel is processing the ring by itself */
        c->kicks++;
        if (sendto(c->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EBUSY || e == ENOBUFS)
                c->kick_busy++;
            /* The device pushed back: descriptors stay queued and must be
             * kicked again later (a missing kick stalls TX silently). */
            c->tx_stalled = mux_xsk_tx_ring_pending(c) != 0;
            return -e;
        }
    }
    c->tx_stalled = mux_xsk_tx_ring_pending(c) != 0;
    return 0;
}

/* Frames the TX ring and the free stack can both take right now. */
static uint32_t tx_room(struct mux_xsk *c, uint32_t n)
{
    uint32_t k = xsk_prod_nb_free(&c->tx, n);

    if (k > n)
        k = n;
    if (k > c->tx_free)
        k = c->tx_free;
    return k;
}

int mux_xsk_tx_stride(struct mux_xsk *c, const char *buf, uint32_t stride, const uint32_t *lens,
                      uint32_t n);

int mux_xsk_tx_burst(struct mux_xsk *c, const char *buf, const uint32_t *lens, uint32_t n)
{
    return mux_xsk_tx_stride(c, buf, 0, lens, n);
}

/* tx_burst with frame i at buf + i * stride (stride 0: frames back to back):
 * the link builds its frames in one buffer of fixed-size slots */
int mux_xsk_tx_stride(struct mux_xsk *c, const char *buf, uint32_t stride, const uint32_t *lens,
                      uint32_t n)
{
    uint32_t idx = 0, i, k;
    uint64_t off = 0, bytes = 0;
    int err;

    for (i = 0; i < n; i++)
        if (lens[i] > c->frame_size)
            return -EMSGSIZE;
    mux_xsk_complete(c);
    k = tx_room(c, n);
    if (k < n)
        c->tx_ring_full++;
    if (k > 0) {
        if (xsk_ring_prod__reserve(&c->tx, k, &idx) != k)
            return -EAGAIN; /* cannot happen: tx_room checked */
        for (i = 0; i < k; i++) {
            struct xdp_desc *d = xsk_ring_prod__tx_desc(&c->tx, idx + i);
            uint64_t addr = c->free_stack[--c->tx_free];
            memcpy(c->area + addr, buf + (stride ? (uint64_t)i * stride : off), lens[i]);
            d->addr = addr;
            d->len = lens[i];
            d->options = 0;
            off += lens[i];
        }
        xsk_ring_prod__submit(&c->tx, k);
        bytes = off;
        c->tx_frames += k;
        c->tx_bytes += bytes;
    }
    err = mux_xsk_kick(c);
    if (err && err != -EAGAIN && err != -EBUSY && err != -ENOBUFS && k == 0)
        return err;
    return (int)k;
}

uint32_t mux_xsk_tx_reserve(struct mux_xsk *c, uint64_t *addrs, uint32_t n)
{
    uint32_t i;

    mux_xsk_complete(c);
    if (n > c->tx_free)
        n = c->tx_free;
    for (i = 0; i < n; i++)
        addrs[i] = c->free_stack[--c->tx_free];
    return n;
}

void mux_xsk_tx_unreserve(struct mux_xsk *c, const uint64_t *addrs, uint32_t n)
{
    uint32_t i;

    for (i = n; i > 0; i--)
        if (c->tx_free < c->n_tx)
            c->free_stack[c->tx_free++] = addrs[i - 1] & c->frame_mask;
}

int mux_xsk_tx_submit(struct mux_xsk *c, const uint64_t *addrs, const uint32_t *lens,
                      uint32_t n)
{
    uint32_t idx = 0, i, k;
    uint64_t bytes = 0;
    int err;

    for (i = 0; i < n; i++)
        if (lens[i] > c->frame_size)
            return -EMSGSIZE;
    mux_xsk_complete(c);
    k = xsk_prod_nb_free(&c->tx, n);
    if (k > n)
        k = n;
    if (k < n)
        c->tx_ring_full++;
    if (k > 0) {
        if (xsk_ring_prod__reserve(&c->tx, k, &idx) != k)
            return -EAGAIN;
        for (i = 0; i < k; i++) {
            struct xdp_desc *d = xsk_ring_prod__tx_desc(&c->tx, idx + i);
            d->addr = addrs[i];
            d->len = lens[i];
            d->options = 0;
            bytes += lens[i];
        }
        xsk_ring_prod__submit(&c->tx, k);
        c->tx_frames += k;
        c->tx_bytes += bytes;
    }
    err = mux_xsk_kick(c);
    if (err && err != -EAGAIN && err != -EBUSY && err != -ENOBUFS && k == 0)
        return err;
    return (int)k;
}

/* ---- RX ---- */

uint32_t mux_xsk_rx_ready(struct mux_xsk *c)
{
    if (!c->rx.producer)
        return 0;
    return __atomic_load_n(c->rx.producer, __ATOMIC_ACQUIRE) - c->rx.cached_cons;
}

int mux_xsk_wakeup_rx(struct mux_xsk *c)
{
    if (c->fd < 0)
        return 0;
    c->fill_wakeups++;
    if (recvfrom(c->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

uint32_t mux_xsk_rx_burst(struct mux_xsk *c, char *out, uint32_t *lens, uint32_t max)
{
    uint64_t addrs[64];
    uint32_t idx = 0, n, i, total = 0, chunk;
    uint64_t off = 0;

    /* out holds max * frame_size (UMEM frame) bytes; frames are packed back to back. */
    while (total < max) {
        chunk = max - total;
        if (chunk > 64)
            chunk = 64;
        n = xsk_ring_cons__peek(&c->rx, chunk, &idx);
        if (n == 0)
            break;
        for (i = 0; i < n; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&c->rx, idx + i);
            uint32_t len = d->len;
            uint32_t room = c->frame_size - (uint32_t)(d->addr & (c->frame_size - 1));
            if (len > room) /* never read past the frame (the kernel never sends this) */
                len = room;
            memcpy(out + off, xsk_umem__get_data(c->area, d->addr), len);
            lens[total + i] = len;
            addrs[i] = d->addr;
            off += len;
        }
        xsk_ring_cons__release(&c->rx, n);
        post_fill(c, addrs, n);
        total += n;
    }
    c->rx_frames += total;
    c->rx_bytes += off;
    return total;
}

uint32_t mux_xsk_rx_peek(struct mux_xsk *c, uint64_t *addrs, uint32_t *lens, uint32_t max)
{
    uint32_t idx = 0, n, i;
    uint64_t bytes = 0;

    n = xsk_ring_cons__peek(&c->rx, max, &idx);
    for (i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&c->rx, idx + i);
        addrs[i] = d->addr;
        lens[i] = d->len;
        bytes += d->len;
    }
    if (n)
        xsk_ring_cons__release(&c->rx, n);
    c->rx_held += n;
    c->rx_frames += n;
    c->rx_bytes += bytes;
    return n;
}

uint32_t mux_xsk_release_rx(struct mux_xsk *c, const uint64_t *addrs, uint32_t n)
{
    uint32_t k = post_fill(c, addrs, n);

    c->rx_held -= k <= c->rx_held ? k : c->rx_held;
    return k;
}

/* ---- BPF counters (per-CPU array: sum over possible CPUs) ---- */

int mux_bpf_read_counters(int map_fd, uint64_t *out, uint32_t n)
{
    int ncpu = libbpf_num_possible_cpus();
    uint64_t *vals;
    uint32_t key;
    int cpu, err;

    if (ncpu <= 0)
        return ncpu < 0 ? ncpu : -EINVAL;
    vals = calloc((size_t)ncpu, sizeof(uint64_t));
    if (!vals)
        return -ENOMEM;
    for (key = 0; key < n; key++) {
        out[key] = 0;
        err = bpf_map_lookup_elem(map_fd, &key, vals);
        if (err) {
            err = -errno;
            free(vals);
            return err;
        }
        for (cpu = 0; cpu < ncpu; cpu++)
            out[key] += vals[cpu];
    }
    free(vals);
    return 0;
}

/* Run the program once on a frame (BPF_PROG_TEST_RUN): its verdict in *retval. */
int mux_bpf_test_run(int prog_fd, const void *data, uint32_t len, uint32_t *retval)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts,
        .data_in = data,
        .data_size_in = len,
        .repeat = 1,
    );
    int err = bpf_prog_test_run_opts(prog_fd, &opts);

    if (err)
        return err < 0 ? -errno : -err;
    *retval = opts.retval;
    return 0;
}

/* ---- libbpf log capture: keep the last messages for error reports ---- */

static char mux_log[4096];
static size_t mux_log_len;

static int mux_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char line[1024];
    int n;

    if (level == LIBBPF_DEBUG)
        return 0;
    n = vsnprintf(line, sizeof(line), fmt, ap);
    if (n <= 0)
        return 0;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    if (mux_log_len + (size_t)n >= sizeof(mux_log))
        mux_log_len = 0; /* keep the most recent messages */
    memcpy(mux_log + mux_log_len, line, (size_t)n);
    mux_log_len += (size_t)n;
    mux_log[mux_log_len] = 0;
    return 0;
}

void mux_libbpf_capture(void)
{
    libbpf_set_print(mux_libbpf_print);
}

const char *mux_libbpf_last_log(void)
{
    mux_log[mux_log_len] = 0;
    mux_log_len = 0;
    return mux_log;
}
"""


def make_ffi() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF)
    ffibuilder.set_source(
        "xport._xsk_cffi",
        SOURCE,
        libraries=["xdp", "bpf"],
        include_dirs=[str(BPF_DIR)],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    )
    return ffibuilder


ffibuilder = make_ffi()


def main() -> None:
    os.environ.setdefault("LIBXDP_SKIP_DISPATCHER", "1")
    out = ffibuilder.compile(tmpdir=str(ROOT), verbose=False)
    print(out)


if __name__ == "__main__":
    main()
