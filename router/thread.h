/* router/thread.h — what kith's own threads say about themselves: a name
 * (seen in top -H, perf and /proc/PID/task/TID/comm, so an operator can
 * tell the loop from the store from the agents) and, for bulk work, a
 * lower scheduling weight than the router's loop. */
#ifndef KITH_ROUTER_THREAD_H
#define KITH_ROUTER_THREAD_H

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* How much nicer than the loop thread a background thread runs
 * (setpriority per thread on Linux): CFS then wakes the loop ahead of it,
 * so a GET /health or an ack is not queued behind its time slice. */
#define ROUTER_THREAD_BULK_NICE 5

/* Names the calling thread (at most 15 characters are kept). */
static inline void router_thread_name(const char *name)
{
    (void) pthread_setname_np(pthread_self(), name);
}

/* Names the calling thread and lowers its weight: for threads that run
 * background work beside the loop (the audit appends) whose latency
 * nobody waits on. Not the agent threads: a /ws/chat turn's round trip
 * waits for them (issue 13 measures both). Best effort: a failure leaves
 * the thread as it was. */
static inline void router_thread_bulk(const char *name)
{
    router_thread_name(name);
    int now = getpriority(PRIO_PROCESS, (id_t) syscall(SYS_gettid));
    (void) setpriority(PRIO_PROCESS, (id_t) syscall(SYS_gettid), now + ROUTER_THREAD_BULK_NICE);
}

#endif
