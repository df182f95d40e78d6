/* tests/uring_fail.h — a full io_uring submission queue, on demand. Every
 * unit test is linked with tests/uring_fail.c, whose strong
 * router_uring_sqe_refused() replaces the loop's weak one, so the io_uring
 * backend's paths for "no SQE to be had" (a kernel that cannot take more
 * submissions while its completion queue overflows) run in tests: a send,
 * a receive, a connect, a cancel, a poll or the accept poll that cannot be
 * queued.
 *
 * Arming is per thread, as in tests/alloc_fail.h: only the loop thread that
 * armed it sees refusals. The usual use: uring_fail_arm(0, 1), make the
 * loop want one SQE, then assert uring_fail_disarm() == 1 and what the
 * loop promises after it. */
#ifndef KITH_TESTS_URING_FAIL_H
#define KITH_TESTS_URING_FAIL_H

/* On this thread, after `skip` more SQEs are had, the next `count` are
 * refused (count < 0: every one until disarmed). */
void uring_fail_arm(long skip, long count);

/* Stops refusing; returns how many SQEs were refused since armed. */
unsigned uring_fail_disarm(void);

#endif
