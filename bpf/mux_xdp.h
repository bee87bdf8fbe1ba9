/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Shared by the XDP program (bpf/mux_xdp.c) and user space (xport/_xsk_build.py,
 * bench/c/): the EtherType we steer, the XSKMAP layout, the counter slots.
 * Keep it free of kernel-only and libc-only includes: plain #defines only.
 */
#ifndef MUX_XDP_H
#define MUX_XDP_H

/* IEEE 802 "local experimental" EtherType 1 (IEEE Std 802-2014, 9.2.2). */
#define MUX_ETHERTYPE 0x88B5

/* The XSKMAP, keyed by rx queue index; one AF_XDP socket per queue. */
#define MUX_XSKS_MAP_NAME "xsks_map"
#define MUX_XSKS_MAP_MAX_ENTRIES 64

/* Per-CPU array of __u64 counters, one slot each. */
#define MUX_COUNTERS_MAP_NAME "mux_counters"
#define MUX_CNT_REDIRECTED 0 /* EtherType matched, bpf_redirect_map() called */
#define MUX_CNT_PASSED 1     /* any other frame, XDP_PASS */
#define MUX_CNT_TOO_SHORT 2  /* shorter than an Ethernet header, XDP_PASS */
#define MUX_CNT_MAX 3

/* Name of the XDP program (section "xdp") in bpf/mux_xdp.o. */
#define MUX_PROG_NAME "mux_xdp_steer"

#endif /* MUX_XDP_H */
