// SPDX-License-Identifier: Apache-2.0
/*
 * xsk_floor: the C floor for the mux-rpc transport benchmark.
 *
 * It does over AF_XDP what bench/bench_xport.py does from Python, with
 * libxdp's xsk.h used directly and nothing else in the loop, so that the
 * Python backend's frames/s can be quoted as a fraction of this program's.
 *
 *   xsk_floor recv --ifname X [--queue 0] [--bpf-obj bpf/mux_xdp.o] ...
 *   xsk_floor send --ifname Y [--queue 0] --frame-size 64 --seconds 2 ...
 *   xsk_floor echo --ifname X --bpf-obj bpf/mux_xdp.o        (round trips: the host)
 *   xsk_floor ping --ifname Y --bpf-obj bpf/mux_xdp.o --frames 1 --seconds 2
 *
 * Theory of operation
 * -------------------
 * recv: one UMEM (4096 frames of 4 KiB), every frame posted on the fill
 * ring. With --bpf-obj the XDP program is loaded with libbpf and attached
 * with bpf_xdp_attach (native mode by default), otherwise the program
 * already attached to the interface is used (e.g. loaded by Python); either
 * way the socket is created with XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD and
 * inserted into the program's `xsks_map` with xsk_socket__update_xskmap.
 * The loop peeks up to --batch RX descriptors, counts them, and gives the
 * same addresses straight back to the fill ring; when the RX ring is empty
 * it sleeps in poll() for at most 10 ms (with --rx-wait spin, only after
 * 1 ms of empty ring: a sleeping receiver makes the sender's softirq pay
 * for a wake-up per RX flush, a fifth of the sender CPU on veth). It stops after --count frames,
 * after --idle-ms without a frame once something arrived, after --seconds
 * since the first frame (plus a grace), or on SIGINT/SIGTERM/SIGUSR1.
 * The rate is frames / (time of last frame - time of first frame).
 *
 * send: one UMEM used for TX only. Each round reclaims completions, reserves
 * as many TX descriptors as are free (at most --batch: the reserve is
 * all-or-nothing), copies a template frame (EtherType 0x88B5, a sequence
 * number) into each, submits, and kicks with sendto() while the TX ring is
 * not empty: in copy mode (every veth) one kick moves at most 32 descriptors
 * and a missing kick stalls TX silently.
 *
 * echo / ping: the least a process can spend per wake-up on this link, for
 * bench/bench_wakeup.py. ping (the agent's stand-in) sends --frames frames,
 * waits until as many come back, and repeats for --seconds. echo (the
 * host's stand-in) sleeps in epoll_wait() the way the host's event loop does,
 * and per wake-up takes what the RX ring holds, copies each frame into a TX
 * frame, gives the RX buffers back to the fill ring, submits and kicks once
 * with sendto(): a host's wake-up with no work of its own. Both sockets do RX
 * and TX on one UMEM (half of it on the fill ring, half for TX).
 *
 * All roles print one JSON line on stdout at the end; recv and echo print
 * {"event":"ready"} first, once their socket is in the map. No link-level
 * flow control: received may be less than sent (reported, with the kernel's
 * XDP_STATISTICS drop counters).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#include "floor_clock.h"

#define ETHERTYPE_MUX 0x88B5
#define NUM_FRAMES 4096u
#define FRAME_SIZE XSK_UMEM__DEFAULT_FRAME_SIZE
#define RING_SIZE 2048u
#define MAX_BATCH 256u
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9 /* Linux 6.18; missing from Debian 12's headers */
#endif

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

struct opts {
	const char *role;
	const char *ifname;
	const char *bpf_obj;
	const char *netns;
	unsigned queue;
	unsigned frame_size;
	unsigned batch;
	unsigned long long count;
	double seconds;
	unsigned idle_ms;
	int skb_mode;
	int spin;
	unsigned tx_budget;
	unsigned frames;
};

static void die(const char *what, int err)
{
	fprintf(stderr, "xsk_floor: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: xsk_floor send|recv|echo|ping --ifname IF [options]\n"
		"  --queue N        queue id to bind (default 0)\n"
		"  --frame-size N   frame length in bytes, Ethernet header included (send, ping;\n"
		"                   default 64)\n"
		"  --count N        stop after N frames (default: no limit)\n"
		"  --seconds S      send for S seconds / receive at most S s after the first frame (default 2)\n"
		"  --batch N        descriptors per ring operation (default 64, max 256)\n"
		"  --bpf-obj PATH   recv: load this XDP object, attach it, detach on exit\n"
		"                   (default: use the program already attached to IF)\n"
		"  --skb            recv: attach in generic (skb) mode instead of native\n"
		"  --idle-ms N      recv: stop N ms after the last frame (default 500)\n"
		"  --rx-wait MODE   recv: poll (sleep in poll() as soon as the RX ring is empty,\n"
		"                   the default) or spin (sleep only after 1 ms without frames)\n"
		"  --tx-budget N    send: set XDP_MAX_TX_SKB_BUDGET (Linux >= 6.18) so one kick\n"
		"                   may move up to N descriptors instead of 32 (default: kernel's)\n"
		"  --frames N       ping: frames per round trip (default 1, max 256)\n"
		"  --netns NAME     enter network namespace NAME first\n"
		"echo and ping attach --bpf-obj to their own end, like recv. echo stops\n"
		"--idle-ms after its last frame; ping after --seconds, or with an error when\n"
		"a frame does not come back within a second.\n");
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"ifname", required_argument, 0, 'i'}, {"queue", required_argument, 0, 'q'},
		{"frame-size", required_argument, 0, 'f'}, {"count", required_argument, 0, 'c'},
		{"seconds", required_argument, 0, 's'}, {"batch", required_argument, 0, 'b'},
		{"bpf-obj", required_argument, 0, 'o'}, {"skb", no_argument, 0, 'k'},
		{"idle-ms", required_argument, 0, 'I'}, {"netns", required_argument, 0, 'n'},
		{"rx-wait", required_argument, 0, 'w'}, {"tx-budget", required_argument, 0, 't'},
		{"frames", required_argument, 0, 'F'},
		{"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
	};
	memset(o, 0, sizeof(*o));
	o->frame_size = 64;
	o->batch = 64;
	o->seconds = 2.0;
	o->idle_ms = 500;
	o->frames = 1;
	if (argc < 2) { usage(stderr); exit(2); }
	o->role = argv[1];
	if (!strcmp(o->role, "-h") || !strcmp(o->role, "--help")) { usage(stdout); exit(0); }
	if (strcmp(o->role, "send") && strcmp(o->role, "recv") && strcmp(o->role, "echo") &&
	    strcmp(o->role, "ping")) { usage(stderr); exit(2); }
	optind = 2;
	int c;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'i': o->ifname = optarg; break;
		case 'q': o->queue = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'f': o->frame_size = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'c': o->count = strtoull(optarg, NULL, 0); break;
		case 's': o->seconds = strtod(optarg, NULL); break;
		case 'b': o->batch = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'o': o->bpf_obj = optarg; break;
		case 'k': o->skb_mode = 1; break;
		case 'I': o->idle_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'n': o->netns = optarg; break;
		case 't': o->tx_budget = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'F': o->frames = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'w':
			if (!strcmp(optarg, "spin")) o->spin = 1;
			else if (!strcmp(optarg, "poll")) o->spin = 0;
			else { usage(stderr); exit(2); }
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (!o->ifname) { usage(stderr); exit(2); }
	if (o->frame_size < ETH_HLEN + 8 || o->frame_size > FRAME_SIZE) {
		fprintf(stderr, "xsk_floor: --frame-size must be %d..%d\n", ETH_HLEN + 8, FRAME_SIZE);
		exit(2);
	}
	if (o->frames < 1 || o->frames > MAX_BATCH) {
		fprintf(stderr, "xsk_floor: --frames must be 1..%u\n", MAX_BATCH);
		exit(2);
	}
	if (o->batch < 1 || o->batch > MAX_BATCH) {
		fprintf(stderr, "xsk_floor: --batch must be 1..%u\n", MAX_BATCH);
		exit(2);
	}
}

static void enter_netns(const char *name)
{
	char path[256];
	snprintf(path, sizeof(path), "/var/run/netns/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) die(path, errno);
	if (setns(fd, CLONE_NEWNET)) die("setns", errno);
	close(fd);
}

/* The XDP program: ours (loaded here) or the one already on the interface. */
struct prog {
	struct bpf_object *obj;
	int ifindex;
	__u32 attach_flags;
	int attached;
	int map_fd;
};

static int find_xsks_map_of_attached(int ifindex)
{
	__u32 prog_id = 0;
	int err = bpf_xdp_query_id(ifindex, 0, &prog_id);
	if (err) die("bpf_xdp_query_id", err);
	if (!prog_id) {
		fprintf(stderr, "xsk_floor: no XDP program on ifindex %d (use --bpf-obj)\n", ifindex);
		exit(1);
	}
	int pfd = bpf_prog_get_fd_by_id(prog_id);
	if (pfd < 0) die("bpf_prog_get_fd_by_id", errno);
	__u32 map_ids[16];
	struct bpf_prog_info info;
	memset(&info, 0, sizeof(info));
	info.nr_map_ids = 16;
	info.map_ids = (__u64)(uintptr_t)map_ids;
	__u32 len = sizeof(info);
	if (bpf_obj_get_info_by_fd(pfd, &info, &len)) die("prog info", errno);
	close(pfd);
	for (__u32 i = 0; i < info.nr_map_ids && i < 16; i++) {
		int mfd = bpf_map_get_fd_by_id(map_ids[i]);
		if (mfd < 0) continue;
		struct bpf_map_info mi;
		memset(&mi, 0, sizeof(mi));
		__u32 mlen = sizeof(mi);
		if (!bpf_obj_get_info_by_fd(mfd, &mi, &mlen) && mi.type == BPF_MAP_TYPE_XSKMAP)
			return mfd;
		close(mfd);
	}
	fprintf(stderr, "xsk_floor: the attached XDP program has no XSKMAP\n");
	exit(1);
}

static void prog_setup(struct prog *p, const struct opts *o)
{
	memset(p, 0, sizeof(*p));
	p->map_fd = -1;
	p->ifindex = (int)if_nametoindex(o->ifname);
	if (!p->ifindex) die(o->ifname, errno);
	if (!o->bpf_obj) {
		p->map_fd = find_xsks_map_of_attached(p->ifindex);
		return;
	}
	p->obj = bpf_object__open_file(o->bpf_obj, NULL);
	if (!p->obj) die(o->bpf_obj, errno);
	int err = bpf_object__load(p->obj);
	if (err) die("bpf_object__load", err);
	struct bpf_program *prog = bpf_object__next_program(p->obj, NULL);
	if (!prog) { fprintf(stderr, "xsk_floor: no program in %s\n", o->bpf_obj); exit(1); }
	struct bpf_map *map = bpf_object__find_map_by_name(p->obj, "xsks_map");
	if (!map) { fprintf(stderr, "xsk_floor: no map xsks_map in %s\n", o->bpf_obj); exit(1); }
	p->map_fd = bpf_map__fd(map);
	p->attach_flags = o->skb_mode ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
	err = bpf_xdp_attach(p->ifindex, bpf_program__fd(prog), p->attach_flags, NULL);
	if (err) die("bpf_xdp_attach", err);
	p->attached = 1;
}

static void prog_teardown(struct prog *p)
{
	/* Detaching needs the same mode flag, or a generic-mode program stays. */
	if (p->attached) bpf_xdp_detach(p->ifindex, p->attach_flags, NULL);
	p->attached = 0;
	if (p->obj) bpf_object__close(p->obj);
	else if (p->map_fd >= 0) close(p->map_fd);
	p->obj = NULL;
}

struct xsk {
	void *area;
	struct xsk_umem *umem;
	struct xsk_socket *sock;
	struct xsk_ring_prod fill, tx;
	struct xsk_ring_cons comp, rx;
};

static void xsk_open(struct xsk *x, const struct opts *o, int want_rx, int want_tx)
{
	memset(x, 0, sizeof(*x));
	size_t size = (size_t)NUM_FRAMES * FRAME_SIZE;
	x->area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (x->area == MAP_FAILED) die("mmap", errno);
	struct xsk_umem_config uc = {
		.fill_size = NUM_FRAMES, .comp_size = NUM_FRAMES,
		.frame_size = FRAME_SIZE, .frame_headroom = 0, .flags = 0,
	};
	int err = xsk_umem__create(&x->umem, x->area, size, &x->fill, &x->comp, &uc);
	if (err) die("xsk_umem__create", err);
	struct xsk_socket_config sc = {
		.rx_size = RING_SIZE, .tx_size = RING_SIZE,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.xdp_flags = 0, .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
	};
	/* The same (device, queue) stays busy for ~15-25 ms after a close. */
	for (int tries = 0;; tries++) {
		err = xsk_socket__create(&x->sock, o->ifname, o->queue, x->umem,
					 want_rx ? &x->rx : NULL, want_tx ? &x->tx : NULL, &sc);
		if (err != -EBUSY || tries >= 50) break;
		usleep(10000);
	}
	if (err) die("xsk_socket__create", err);
}

static void xsk_close(struct xsk *x)
{
	if (x->sock) xsk_socket__delete(x->sock);
	if (x->umem) xsk_umem__delete(x->umem);
	if (x->area) munmap(x->area, (size_t)NUM_FRAMES * FRAME_SIZE);
	memset(x, 0, sizeof(*x));
}

static void xdp_stats(struct xsk *x, struct xdp_statistics *st)
{
	memset(st, 0, sizeof(*st));
	socklen_t len = sizeof(*st);
	getsockopt(xsk_socket__fd(x->sock), SOL_XDP, XDP_STATISTICS, st, &len);
}

static int run_recv(const struct opts *o)
{
	struct prog p;
	struct xsk x;
	prog_setup(&p, o);
	xsk_open(&x, o, 1, 0);
	int err = xsk_socket__update_xskmap(x.sock, p.map_fd);
	if (err) { prog_teardown(&p); die("xsk_socket__update_xskmap", err); }

	__u32 idx;
	if (xsk_ring_prod__reserve(&x.fill, NUM_FRAMES, &idx) != NUM_FRAMES) die("fill reserve", EIO);
	for (__u32 i = 0; i < NUM_FRAMES; i++)
		*xsk_ring_prod__fill_addr(&x.fill, idx + i) = (__u64)i * FRAME_SIZE;
	xsk_ring_prod__submit(&x.fill, NUM_FRAMES);

	printf("{\"event\":\"ready\"}\n");
	fflush(stdout);

	unsigned long long frames = 0, bytes = 0;
	double t_first = 0, t_last = 0, t_start = now_s();
	double idle = o->idle_ms / 1000.0, t_empty = 0;
	int was_empty = 0;
	struct pollfd pfd = {.fd = xsk_socket__fd(x.sock), .events = POLLIN};
	while (!g_stop) {
		__u32 rx_idx, fill_idx;
		unsigned n = xsk_ring_cons__peek(&x.rx, o->batch, &rx_idx);
		if (!n) {
			double t = now_s();
			if (!was_empty) { was_empty = 1; t_empty = t; }
			if (frames && t - t_last > idle) break;
			if (!frames && t - t_start > o->seconds + 30.0) break;
			if (frames && t - t_first > o->seconds + 1.0) break;
			/* --rx-wait spin: sleep only after 1 ms without frames, so the
			 * sender's softirq never pays for waking us up while traffic flows. */
			if (!o->spin || t - t_empty > 1e-3)
				poll(&pfd, 1, 10);
			continue;
		}
		/* Every buffer we consume goes straight back: the fill ring holds them all. */
		while (xsk_ring_prod__reserve(&x.fill, n, &fill_idx) != n)
			;
		for (unsigned i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x.rx, rx_idx + i);
			bytes += d->len;
			*xsk_ring_prod__fill_addr(&x.fill, fill_idx + i) = xsk_umem__extract_addr(d->addr);
		}
		xsk_ring_prod__submit(&x.fill, n);
		xsk_ring_cons__release(&x.rx, n);
		was_empty = 0;
		t_last = now_s();
		if (!frames) t_first = t_last;
		frames += n;
		if (o->count && frames >= o->count) break;
	}
	struct xdp_statistics st;
	double cu, cs;
	cpu_times(&cu, &cs);
	xdp_stats(&x, &st);
	xsk_close(&x);
	prog_teardown(&p);
	double secs = t_last - t_first;
	double fps = secs > 0 ? frames / secs : 0;
	printf("{\"role\":\"recv\",\"frames\":%llu,\"bytes\":%llu,\"seconds\":%.6f,"
	       "\"frames_per_s\":%.1f,\"mb_per_s\":%.3f,\"rx_dropped\":%llu,"
	       "\"rx_ring_full\":%llu,\"rx_fill_ring_empty_descs\":%llu,"
	       "\"cpu_user\":%.3f,\"cpu_sys\":%.3f}\n",
	       frames, bytes, secs, fps, secs > 0 ? bytes / secs / 1e6 : 0.0,
	       (unsigned long long)st.rx_dropped, (unsigned long long)st.rx_ring_full,
	       (unsigned long long)st.rx_fill_ring_empty_descs, cu, cs);
	fflush(stdout);
	return 0;
}

static int run_send(const struct opts *o)
{
	struct xsk x;
	xsk_open(&x, o, 0, 1);
	int fd = xsk_socket__fd(x.sock);
	int budget_set = 0;
	if (o->tx_budget) {
		int v = (int)o->tx_budget;
		budget_set = !setsockopt(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &v, sizeof(v));
		if (!budget_set)
			fprintf(stderr, "xsk_floor: XDP_MAX_TX_SKB_BUDGET: %s (kept 32)\n", strerror(errno));
	}

	unsigned char tmpl[FRAME_SIZE];
	memset(tmpl, 0, sizeof(tmpl));
	memset(tmpl, 0xff, 6);                            /* dst: broadcast */
	memcpy(tmpl + 6, "\x02\x00\x00\x00\x00\x01", 6);  /* src: local admin */
	tmpl[12] = ETHERTYPE_MUX >> 8;
	tmpl[13] = ETHERTYPE_MUX & 0xff;

	/* Free list of UMEM frame addresses. */
	static __u64 freel[NUM_FRAMES];
	__u32 nfree = NUM_FRAMES;
	for (__u32 i = 0; i < NUM_FRAMES; i++) freel[i] = (__u64)i * FRAME_SIZE;
	__u32 tx_cap = RING_SIZE;

	unsigned long long sent = 0, completed = 0, kicks = 0, seq = 0;
	double t0 = now_s(), deadline = t0 + o->seconds, t_end = t0;
	unsigned check = 0;
	int done = 0;
	for (;;) {
		/* Reclaim completed buffers. */
		__u32 cidx;
		unsigned nc = xsk_ring_cons__peek(&x.comp, MAX_BATCH, &cidx);
		for (unsigned i = 0; i < nc; i++)
			freel[nfree++] = *xsk_ring_cons__comp_addr(&x.comp, cidx + i);
		if (nc) xsk_ring_cons__release(&x.comp, nc);
		completed += nc;

		if (!done) {
			done = g_stop || (o->count && sent >= o->count);
			if ((++check & 15) == 0 || done) {
				t_end = now_s();
				done = done || t_end >= deadline;
			}
		}
		if (done) {
			if (completed >= sent) break;
			if (now_s() > t_end + 1.0) break; /* don't wait forever on a stuck ring */
		} else {
			/* Ask only for what is free: the reserve is all-or-nothing. */
			unsigned want = o->batch;
			unsigned inflight = (unsigned)(sent - completed);
			unsigned room = tx_cap > inflight ? tx_cap - inflight : 0;
			if (want > room) want = room;
			if (want > nfree) want = nfree;
			if (o->count && want > o->count - sent) want = (unsigned)(o->count - sent);
			__u32 tidx;
			if (want && xsk_ring_prod__reserve(&x.tx, want, &tidx) == want) {
				for (unsigned i = 0; i < want; i++) {
					struct xdp_desc *d = xsk_ring_prod__tx_desc(&x.tx, tidx + i);
					__u64 addr = freel[--nfree];
					unsigned char *buf = xsk_umem__get_data(x.area, addr);
					memcpy(buf, tmpl, o->frame_size);
					memcpy(buf + ETH_HLEN, &seq, sizeof(seq));
					seq++;
					d->addr = addr;
					d->len = o->frame_size;
				}
				xsk_ring_prod__submit(&x.tx, want);
				sent += want;
			}
		}
		/* Copy mode: one kick moves at most 32 descriptors; kick while any are queued. */
		if (sent > completed && xsk_ring_prod__needs_wakeup(&x.tx)) {
			kicks++;
			if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
			    errno != EBUSY && errno != ENOBUFS && errno != ENETDOWN)
				die("sendto", errno);
		}
	}
	double secs = t_end - t0, cu, cs;
	cpu_times(&cu, &cs);
	unsigned long long bytes = completed * o->frame_size;
	xsk_close(&x);
	printf("{\"role\":\"send\",\"frames\":%llu,\"bytes\":%llu,\"seconds\":%.6f,"
	       "\"frames_per_s\":%.1f,\"mb_per_s\":%.3f,\"submitted\":%llu,\"kicks\":%llu,\"tx_budget\":%u,"
	       "\"cpu_user\":%.3f,\"cpu_sys\":%.3f}\n",
	       completed, bytes, secs, secs > 0 ? completed / secs : 0.0,
	       secs > 0 ? bytes / secs / 1e6 : 0.0, sent, kicks, budget_set ? o->tx_budget : 32,
	       cu, cs);
	fflush(stdout);
	return 0;
}

/*
 * Round trips (echo, ping): one socket doing RX and TX on one UMEM. The
 * first half of the UMEM is posted on the fill ring (RX buffers go straight
 * back to it), the second half is the free list TX copies into.
 */
struct duplex {
	struct prog p;
	struct xsk x;
	int fd, epfd;
	__u64 freel[NUM_FRAMES / 2];
	__u32 nfree;
	unsigned long long kicks;
};

static void duplex_open(struct duplex *d, const struct opts *o)
{
	prog_setup(&d->p, o);
	xsk_open(&d->x, o, 1, 1);
	int err = xsk_socket__update_xskmap(d->x.sock, d->p.map_fd);
	if (err) { prog_teardown(&d->p); die("xsk_socket__update_xskmap", err); }
	__u32 half = NUM_FRAMES / 2, idx;
	if (xsk_ring_prod__reserve(&d->x.fill, half, &idx) != half) die("fill reserve", EIO);
	for (__u32 i = 0; i < half; i++)
		*xsk_ring_prod__fill_addr(&d->x.fill, idx + i) = (__u64)i * FRAME_SIZE;
	xsk_ring_prod__submit(&d->x.fill, half);
	for (__u32 i = 0; i < half; i++) d->freel[i] = (__u64)(half + i) * FRAME_SIZE;
	d->nfree = half;
	d->fd = xsk_socket__fd(d->x.sock);
	d->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d->epfd < 0) die("epoll_create1", errno);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = d->fd};
	if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->fd, &ev)) die("epoll_ctl", errno);
}

static void duplex_close(struct duplex *d)
{
	close(d->epfd);
	xsk_close(&d->x);
	prog_teardown(&d->p);
}

/* Sleep until the socket is readable, as an event loop does; 0 on timeout. */
static int duplex_wait(struct duplex *d, int timeout_ms)
{
	struct epoll_event ev;
	int n = epoll_wait(d->epfd, &ev, 1, timeout_ms);
	if (n < 0 && errno != EINTR) die("epoll_wait", errno);
	return n > 0;
}

static void duplex_reclaim(struct duplex *d)
{
	__u32 cidx;
	unsigned nc = xsk_ring_cons__peek(&d->x.comp, MAX_BATCH, &cidx);
	for (unsigned i = 0; i < nc; i++)
		d->freel[d->nfree++] = *xsk_ring_cons__comp_addr(&d->x.comp, cidx + i);
	if (nc) xsk_ring_cons__release(&d->x.comp, nc);
}

/* Queue n frames (src[i] of len[i] bytes) for TX and kick once. */
static void duplex_send(struct duplex *d, unsigned n, const unsigned char *const *src,
			const __u32 *len)
{
	__u32 tidx;
	duplex_reclaim(d);
	if (n > d->nfree || xsk_ring_prod__reserve(&d->x.tx, n, &tidx) != n)
		die("tx reserve", ENOBUFS);
	for (unsigned i = 0; i < n; i++) {
		struct xdp_desc *td = xsk_ring_prod__tx_desc(&d->x.tx, tidx + i);
		__u64 addr = d->freel[--d->nfree];
		memcpy(xsk_umem__get_data(d->x.area, addr), src[i], len[i]);
		td->addr = addr;
		td->len = len[i];
	}
	xsk_ring_prod__submit(&d->x.tx, n);
	if (xsk_ring_prod__needs_wakeup(&d->x.tx)) {
		d->kicks++;
		if (sendto(d->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
		    errno != EBUSY && errno != ENOBUFS && errno != ENETDOWN)
			die("sendto", errno);
	}
}

/* Give n consumed RX descriptors (from rx_idx) back to the fill ring. */
static void duplex_refill(struct duplex *d, __u32 rx_idx, unsigned n)
{
	__u32 fidx;
	while (xsk_ring_prod__reserve(&d->x.fill, n, &fidx) != n)
		;
	for (unsigned i = 0; i < n; i++) {
		const struct xdp_desc *rd = xsk_ring_cons__rx_desc(&d->x.rx, rx_idx + i);
		*xsk_ring_prod__fill_addr(&d->x.fill, fidx + i) = xsk_umem__extract_addr(rd->addr);
	}
	xsk_ring_prod__submit(&d->x.fill, n);
	xsk_ring_cons__release(&d->x.rx, n);
}

/* echo: the host's stand-in. Every wake-up sends back what it received. */
static int run_echo(const struct opts *o)
{
	static struct duplex d;
	duplex_open(&d, o);
	printf("{\"event\":\"ready\"}\n");
	fflush(stdout);
	unsigned long long frames = 0, wakeups = 0, rounds = 0;
	double t_first = 0, t_last = 0, t_start = now_s(), cu0 = 0, cs0 = 0;
	const unsigned char *src[MAX_BATCH];
	__u32 len[MAX_BATCH];
	while (!g_stop) {
		__u32 rx_idx;
		unsigned n = xsk_ring_cons__peek(&d.x.rx, MAX_BATCH, &rx_idx);
		if (!n) {
			double t = now_s();
			if (frames && t - t_last > o->idle_ms / 1000.0) break;
			if (!frames && t - t_start > o->seconds + 30.0) break;
			wakeups += duplex_wait(&d, 10);
			continue;
		}
		if (!frames) { t_first = now_s(); cpu_times(&cu0, &cs0); }
		for (unsigned i = 0; i < n; i++) {
			const struct xdp_desc *rd = xsk_ring_cons__rx_desc(&d.x.rx, rx_idx + i);
			src[i] = xsk_umem__get_data(d.x.area, rd->addr);
			len[i] = rd->len;
		}
		duplex_send(&d, n, src, len);
		duplex_refill(&d, rx_idx, n);
		frames += n;
		rounds++;
		t_last = now_s();
	}
	double cu, cs;
	cpu_times(&cu, &cs);
	duplex_close(&d);
	/* CPU from the first frame on; the idle tail is --idle-ms of 10 ms epoll timeouts. */
	printf("{\"role\":\"echo\",\"frames\":%llu,\"rounds\":%llu,\"wakeups\":%llu,\"kicks\":%llu,"
	       "\"seconds\":%.6f,\"cpu_user\":%.6f,\"cpu_sys\":%.6f}\n",
	       frames, rounds, wakeups, d.kicks, t_last - t_first, cu - cu0, cs - cs0);
	fflush(stdout);
	return 0;
}

/* ping: the agent's stand-in. Sends --frames frames, waits for all to come back. */
static int run_ping(const struct opts *o)
{
	static struct duplex d;
	duplex_open(&d, o);
	static unsigned char tmpl[MAX_BATCH][FRAME_SIZE];
	const unsigned char *src[MAX_BATCH];
	__u32 len[MAX_BATCH];
	for (unsigned i = 0; i < o->frames; i++) {
		memset(tmpl[i], 0xff, 6);                           /* dst: broadcast */
		memcpy(tmpl[i] + 6, "\x02\x00\x00\x00\x00\x01", 6); /* src: local admin */
		tmpl[i][12] = ETHERTYPE_MUX >> 8;
		tmpl[i][13] = ETHERTYPE_MUX & 0xff;
		src[i] = tmpl[i];
		len[i] = o->frame_size;
	}
	unsigned long long rounds = 0, seq = 0;
	double t0 = now_s(), t_end = t0, cu0, cs0;
	cpu_times(&cu0, &cs0);
	int lost = 0;
	while (!g_stop && (t_end = now_s()) - t0 < o->seconds) {
		for (unsigned i = 0; i < o->frames; i++, seq++)
			memcpy(tmpl[i] + ETH_HLEN, &seq, sizeof(seq));
		duplex_send(&d, o->frames, src, len);
		unsigned got = 0, waits = 0;
		while (got < o->frames && !g_stop) {
			__u32 rx_idx;
			unsigned n = xsk_ring_cons__peek(&d.x.rx, o->frames - got, &rx_idx);
			if (n) { duplex_refill(&d, rx_idx, n); got += n; continue; }
			if (!duplex_wait(&d, 100) && ++waits >= 10) { lost = 1; break; }
		}
		if (lost) break;
		rounds++;
	}
	double cu, cs, secs = t_end - t0;
	cpu_times(&cu, &cs);
	duplex_close(&d);
	if (lost) {
		fprintf(stderr, "xsk_floor: ping: a frame did not come back within 1 s "
			"(round %llu)\n", rounds + 1);
		return 1;
	}
	printf("{\"role\":\"ping\",\"rounds\":%llu,\"frames_per_round\":%u,\"frame_size\":%u,"
	       "\"seconds\":%.6f,"
	       "\"rounds_per_s\":%.1f,\"kicks\":%llu,\"cpu_user\":%.6f,\"cpu_sys\":%.6f}\n",
	       rounds, o->frames, o->frame_size, secs, secs > 0 ? rounds / secs : 0.0, d.kicks,
	       cu - cu0, cs - cs0);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (o.netns) enter_netns(o.netns);
	if (!strcmp(o.role, "echo")) return run_echo(&o);
	if (!strcmp(o.role, "ping")) return run_ping(&o);
	return !strcmp(o.role, "send") ? run_send(&o) : run_recv(&o);
}
