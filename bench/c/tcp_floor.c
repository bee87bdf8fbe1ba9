// SPDX-License-Identifier: Apache-2.0
/*
 * tcp_floor: the least a process can spend per wake-up over TCP on loopback.
 *
 * It is xsk_floor's echo/ping pair (bench/c/xsk_floor.c) over a plain TCP
 * connection on 127.0.0.1: what the "direct" asyncio TCP server pays in the
 * kernel per wake-up, with no Python and no work of its own in the loop.
 *
 *   tcp_floor echo [--port 0] [--idle-ms 500] [--seconds 2]     (the host)
 *   tcp_floor ping --port P [--messages 8] [--size 16] [--seconds 2]
 *
 * Theory of operation
 * -------------------
 * echo listens on 127.0.0.1 only (port 0: an ephemeral port), prints
 * {"event":"ready","port":N} and accepts exactly one connection, which it
 * makes TCP_NODELAY and non-blocking. It then sleeps in epoll_wait()
 * (level-triggered EPOLLIN, 10 ms timeout) the way an event loop does, and
 * per wake-up does what asyncio's selector transport does: one read() of at
 * most 64 KiB, then write() of what was read (looping on short writes, so no
 * byte is ever dropped). "wakeups" counts epoll_wait() calls that returned
 * the socket, "rounds" those whose read() returned data. It stops on EOF
 * (the normal end: ping closes), on a reset, on SIGINT/SIGTERM, --idle-ms
 * after the last data, or --seconds + 30 s after it became ready if no data
 * ever came (exit 1 if no connection came at all). CPU (getrusage) and time
 * are counted from the first byte read; the tail after the last data is at
 * most one wake-up when ping closes.
 *
 * ping (the agent's stand-in) connects, sets TCP_NODELAY, and for --seconds
 * repeats a round: one write() of --messages messages of --size bytes back
 * to back (each message stamped with the round number), then poll() until
 * all those bytes came back, checked byte for byte. A non-blocking socket
 * and poll() for both directions keep rounds of up to 1 MiB from
 * deadlocking on full socket buffers. If nothing comes back for 1 s it
 * exits with an error. At the end it closes the socket (echo sees EOF).
 *
 * Both roles print one JSON line on stdout at the end. Exit codes: 0 ok,
 * 1 runtime error, 2 usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "floor_clock.h"

#define READ_BUF (64u * 1024u)
#define MAX_MESSAGES 4096u
#define MAX_SIZE 65536u
#define MAX_ROUND_BYTES (1024u * 1024u)
#define WAIT_MS 10		/* echo's epoll_wait timeout, as an idle event loop */
#define PING_POLL_MS 100	/* ping gives up after LOST_POLLS empty polls (1 s) */
#define LOST_POLLS 10

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

struct opts {
	const char *role;
	long port;		/* -1: not given */
	unsigned idle_ms;
	double seconds;
	unsigned messages;
	unsigned size;
};

static void die(const char *what, int err)
{
	fprintf(stderr, "tcp_floor: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tcp_floor echo [--port P] [--idle-ms N] [--seconds S]\n"
		"       tcp_floor ping --port P [--messages K] [--size S] [--seconds T]\n"
		"  echo: listen on 127.0.0.1:P (default 0: ephemeral), print\n"
		"        {\"event\":\"ready\",\"port\":N}, accept one connection and send back\n"
		"        what it reads: one read and one write per epoll wake-up\n"
		"  ping: connect to 127.0.0.1:P and for T seconds send K messages of S bytes\n"
		"        in one write, then wait until they all came back\n"
		"  --port P       TCP port (echo: 0..65535, default 0; ping: 1..65535, required)\n"
		"  --idle-ms N    echo: stop N ms after the last data (default 500)\n"
		"  --seconds S    ping: run for S seconds (default 2); echo: give up\n"
		"                 S + 30 s after ready if no data ever came\n"
		"  --messages K   ping: messages per round (1..%u, default 8)\n"
		"  --size S       ping: bytes per message (1..%u, default 16); K*S <= %u\n"
		"  Both roles print one JSON line at the end. Exit: 0 ok, 1 error, 2 usage.\n",
		MAX_MESSAGES, MAX_SIZE, MAX_ROUND_BYTES);
}

__attribute__((format(printf, 1, 2), noreturn))
static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "tcp_floor: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	fprintf(stderr, "tcp_floor: try 'tcp_floor --help'\n");
	exit(2);
}

static long parse_long(const char *name, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "tcp_floor: %s must be an integer in %ld..%ld, not '%s'\n",
			name, lo, hi, s);
		exit(2);
	}
	return v;
}

static double parse_seconds(const char *s)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0) || v > 86400) {
		fprintf(stderr, "tcp_floor: --seconds must be a number in (0, 86400], not '%s'\n", s);
		exit(2);
	}
	return v;
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"port", required_argument, 0, 'p'}, {"idle-ms", required_argument, 0, 'I'},
		{"seconds", required_argument, 0, 's'}, {"messages", required_argument, 0, 'K'},
		{"size", required_argument, 0, 'S'}, {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	memset(o, 0, sizeof(*o));
	o->port = -1;
	o->idle_ms = 500;
	o->seconds = 2.0;
	o->messages = 8;
	o->size = 16;
	if (argc < 2) { usage(stderr); exit(2); }
	o->role = argv[1];
	if (!strcmp(o->role, "-h") || !strcmp(o->role, "--help")) { usage(stdout); exit(0); }
	int echo = !strcmp(o->role, "echo"), ping = !strcmp(o->role, "ping");
	if (!echo && !ping) usage_error("unknown role '%s' (echo or ping)", o->role);
	optind = 2;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 'p': o->port = parse_long("--port", optarg, 0, 65535); break;
		case 's': o->seconds = parse_seconds(optarg); break;
		case 'I':
			if (!echo) usage_error("%s is an echo option", "--idle-ms");
			o->idle_ms = (unsigned)parse_long("--idle-ms", optarg, 1, 3600000);
			break;
		case 'K':
			if (!ping) usage_error("%s is a ping option", "--messages");
			o->messages = (unsigned)parse_long("--messages", optarg, 1, MAX_MESSAGES);
			break;
		case 'S':
			if (!ping) usage_error("%s is a ping option", "--size");
			o->size = (unsigned)parse_long("--size", optarg, 1, MAX_SIZE);
			break;
		case 'h': usage(stdout); exit(0);
		default:
			usage_error("bad option or missing value: '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc) usage_error("unexpected argument '%s'", argv[optind]);
	if (echo && o->port < 0) o->port = 0;
	if (ping && o->port < 1) usage_error("%s", "ping needs --port 1..65535");
	if ((unsigned long)o->messages * o->size > MAX_ROUND_BYTES) {
		fprintf(stderr, "tcp_floor: --messages * --size must be <= %u bytes\n",
			MAX_ROUND_BYTES);
		exit(2);
	}
}

static struct sockaddr_in loopback(long port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static void set_nodelay_nonblock(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))) die("TCP_NODELAY", errno);
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK)) die("O_NONBLOCK", errno);
}

/* Listen on 127.0.0.1, announce the port, wait (bounded) for one connection. */
static int echo_accept(const struct opts *o, double deadline)
{
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) die("socket", errno);
	int one = 1;
	if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) die("SO_REUSEADDR", errno);
	struct sockaddr_in a = loopback(o->port);
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a))) die("bind 127.0.0.1", errno);
	if (listen(lfd, 1)) die("listen", errno);
	socklen_t alen = sizeof(a);
	if (getsockname(lfd, (struct sockaddr *)&a, &alen)) die("getsockname", errno);
	printf("{\"event\":\"ready\",\"port\":%u}\n", ntohs(a.sin_port));
	fflush(stdout);
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	while (!g_stop && now_s() < deadline) {
		int n = poll(&p, 1, 100);
		if (n < 0 && errno != EINTR) die("poll (accept)", errno);
		if (n <= 0) continue;
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) continue;
			die("accept", errno);
		}
		close(lfd);
		return fd;
	}
	close(lfd);
	return -1;
}

/* Write all n bytes to a non-blocking socket; 0 ok, -1 peer gone, -2 signal. */
static int write_all(int fd, const char *buf, size_t n)
{
	unsigned stalls = 0;
	while (n) {
		ssize_t w = write(fd, buf, n);
		if (w > 0) { buf += w; n -= (size_t)w; stalls = 0; continue; }
		if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) return -1;
		if (w < 0 && errno != EAGAIN && errno != EINTR) die("write", errno);
		if (g_stop) return -2;
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int r = poll(&p, 1, 100);
		if (r < 0 && errno != EINTR) die("poll (write)", errno);
		if (r == 0 && ++stalls >= 100) die("write: peer stopped reading for 10 s", ETIMEDOUT);
	}
	return 0;
}

/* echo: the host's stand-in. One read and one write per wake-up. */
static int run_echo(const struct opts *o)
{
	double t_start = now_s(), deadline = t_start + o->seconds + 30.0;
	int fd = echo_accept(o, deadline);
	if (fd < 0 && !g_stop) {
		fprintf(stderr, "tcp_floor: echo: no connection within %.0f s\n", o->seconds + 30.0);
		return 1;
	}
	const char *end = "signal";
	unsigned long long bytes = 0, rounds = 0, wakeups = 0;
	double t_first = 0, t_last = 0, cu0 = 0, cs0 = 0;
	if (fd >= 0) {
		set_nodelay_nonblock(fd);
		int epfd = epoll_create1(EPOLL_CLOEXEC);
		if (epfd < 0) die("epoll_create1", errno);
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)) die("epoll_ctl", errno);
		static char buf[READ_BUF];
		end = NULL;
		while (!end) {
			if (g_stop) { end = "signal"; break; }
			int n = epoll_wait(epfd, &ev, 1, WAIT_MS);
			if (n < 0 && errno != EINTR) die("epoll_wait", errno);
			if (n <= 0) {
				double t = now_s();
				if (bytes && t - t_last > o->idle_ms / 1000.0) end = "idle";
				else if (!bytes && t > deadline) end = "timeout";
				continue;
			}
			wakeups++;
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r == 0) { end = "eof"; break; }
			if (r < 0) {
				if (errno == EAGAIN || errno == EINTR) continue;
				if (errno == ECONNRESET) { end = "reset"; break; }
				die("read", errno);
			}
			if (!bytes) { t_first = now_s(); cpu_times(&cu0, &cs0); }
			int w = write_all(fd, buf, (size_t)r);
			bytes += (unsigned long long)r;
			rounds++;
			t_last = now_s();
			if (w == -1) end = "reset";
			else if (w == -2) end = "signal";
		}
		close(epfd);
		close(fd);
	}
	double cu = cu0, cs = cs0;
	if (bytes) cpu_times(&cu, &cs);
	/* CPU from the first byte on; ping's close ends the run within one wake-up. */
	printf("{\"role\":\"echo\",\"bytes\":%llu,\"rounds\":%llu,\"wakeups\":%llu,"
	       "\"seconds\":%.6f,\"cpu_user\":%.6f,\"cpu_sys\":%.6f,\"end\":\"%s\"}\n",
	       bytes, rounds, wakeups, t_last - t_first, cu - cu0, cs - cs0, end);
	fflush(stdout);
	return 0;
}

/* ping: the agent's stand-in. K messages in one write, wait for all of them back. */
static int run_ping(const struct opts *o)
{
	size_t total = (size_t)o->messages * o->size;
	char *sbuf = calloc(total, 1), *rbuf = malloc(total);
	if (!sbuf || !rbuf) die("malloc", ENOMEM);
	for (size_t i = 0; i < total; i++) sbuf[i] = (char)(i * 7 + 1);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) die("socket", errno);
	struct sockaddr_in a = loopback(o->port);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) die("connect 127.0.0.1", errno);
	set_nodelay_nonblock(fd);
	unsigned long long rounds = 0;
	double t0 = now_s(), t_end = t0, cu0, cs0;
	cpu_times(&cu0, &cs0);
	const char *err = NULL;
	while (!err && !g_stop && (t_end = now_s()) - t0 < o->seconds) {
		/* Stamp each message with the round number: a stale echo would not match. */
		uint64_t stamp = rounds;
		for (size_t m = 0; m < o->messages; m++)
			memcpy(sbuf + m * o->size, &stamp, o->size < 8 ? o->size : 8);
		size_t sent = 0, got = 0;
		unsigned empty = 0;
		while (got < total) {
			if (sent < total) {
				ssize_t w = write(fd, sbuf + sent, total - sent);
				if (w >= 0) sent += (size_t)w;
				else if (errno == EPIPE || errno == ECONNRESET) { err = "echo reset the connection"; break; }
				else if (errno != EAGAIN && errno != EINTR) die("write", errno);
			}
			struct pollfd p = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
			int n = poll(&p, 1, PING_POLL_MS);
			if (n < 0 && errno != EINTR) die("poll", errno);
			if (g_stop) break;
			if (n <= 0) {
				if (++empty >= LOST_POLLS) { err = "nothing came back within 1 s"; break; }
				continue;
			}
			empty = 0;
			if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
			ssize_t r = read(fd, rbuf + got, total - got);
			if (r == 0) { err = "echo closed the connection"; break; }
			if (r < 0) {
				if (errno == EAGAIN || errno == EINTR) continue;
				if (errno == ECONNRESET) { err = "echo reset the connection"; break; }
				die("read", errno);
			}
			got += (size_t)r;
		}
		if (err || g_stop) break;
		if (memcmp(sbuf, rbuf, total)) { err = "the echo differs from what was sent"; break; }
		rounds++;
	}
	double cu, cs, secs = t_end - t0;
	cpu_times(&cu, &cs);
	close(fd);
	free(sbuf);
	free(rbuf);
	if (err) {
		fprintf(stderr, "tcp_floor: ping: %s (round %llu)\n", err, rounds + 1);
		return 1;
	}
	printf("{\"role\":\"ping\",\"rounds\":%llu,\"messages_per_round\":%u,"
	       "\"bytes_per_round\":%zu,\"seconds\":%.6f,\"rounds_per_s\":%.1f,"
	       "\"cpu_user\":%.6f,\"cpu_sys\":%.6f}\n",
	       rounds, o->messages, total, secs, secs > 0 ? rounds / secs : 0.0, cu - cu0, cs - cs0);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: a signal ends epoll_wait/poll */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	return !strcmp(o.role, "echo") ? run_echo(&o) : run_ping(&o);
}
