// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * mux_xdp: steer mux-rpc link frames (EtherType MUX_ETHERTYPE) to the AF_XDP
 * socket bound to the receiving queue; pass everything else to the kernel
 * unchanged.
 *
 * The XSKMAP is keyed by rx queue index. bpf_redirect_map() falls back to
 * XDP_PASS (its flags argument, kernel >= 5.3) when no socket sits in that
 * slot, so a frame for a queue without a socket reaches the stack rather than
 * being dropped.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mux_xdp.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MUX_XSKS_MAP_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MUX_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mux_counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&mux_counters, &slot);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

SEC("xdp")
int mux_xdp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	/* Bounds check before the header read (verifier requirement too). */
	if ((void *)(eth + 1) > data_end) {
		count(MUX_CNT_TOO_SHORT);
		return XDP_PASS;
	}
	if (eth->h_proto != bpf_htons(MUX_ETHERTYPE)) {
		count(MUX_CNT_PASSED);
		return XDP_PASS;
	}
	count(MUX_CNT_REDIRECTED);
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
