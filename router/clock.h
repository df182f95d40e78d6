/* router/clock.h — the two clocks kith reads, in one place: wall time (Unix
 * ms) for what goes on the wire and into records, monotonic time for every
 * deadline and timeout, which must not move when the wall clock is stepped. */
#ifndef KITH_ROUTER_CLOCK_H
#define KITH_ROUTER_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Unix time in milliseconds (CLOCK_REALTIME): may step back or forward. */
static inline uint64_t router_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* Milliseconds since an arbitrary start (CLOCK_MONOTONIC): never steps. */
static inline uint64_t router_clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* Microseconds since an arbitrary start (CLOCK_MONOTONIC), for the
 * sub-millisecond waits of the inbox's group commit. */
static inline uint64_t router_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* The absolute time `us` microseconds from now on `clock`, normalised. */
static inline struct timespec router_clock_deadline_us(clockid_t clock, uint64_t us)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    ts.tv_sec += (time_t) (us / 1000000u);
    ts.tv_nsec += (long) (us % 1000000u) * 1000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* The absolute time `ms` from now on `clock`, normalised (tv_nsec below
 * one second), for pthread_cond_timedwait and the like. */
static inline struct timespec router_clock_deadline(clockid_t clock, uint64_t ms)
{
    return router_clock_deadline_us(clock, ms * 1000u);
}

#endif
