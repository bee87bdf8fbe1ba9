// SPDX-License-Identifier: Apache-2.0
/*
 * floor_clock.h: the clocks bench/c's floors report with, one definition for
 * xsk_floor.c and tcp_floor.c (static inline: each program is one file).
 */
#ifndef MUX_BENCH_FLOOR_CLOCK_H
#define MUX_BENCH_FLOOR_CLOCK_H

#include <sys/resource.h>
#include <time.h>

/* Monotonic seconds, for rates. */
static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds this process spent in user space and in the kernel so far. */
static inline void cpu_times(double *user, double *sys)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	*user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6;
	*sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

#endif
