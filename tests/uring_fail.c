/* tests/uring_fail.c — the refusals tests/uring_fail.h describes. */
#include <stdbool.h>

#include "uring_fail.h"

bool router_uring_sqe_refused(void);

static _Thread_local long s_skip = -1;  /* SQEs still had before refusing; -1: off */
static _Thread_local long s_count;      /* refusals left; < 0: unbounded */
static _Thread_local unsigned s_refused; /* refusals since armed */

void uring_fail_arm(long skip, long count)
{
    s_skip = skip;
    s_count = count;
    s_refused = 0;
}

unsigned uring_fail_disarm(void)
{
    s_skip = -1;
    return s_refused;
}

bool router_uring_sqe_refused(void)
{
    if (s_skip < 0)
        return false;
    if (s_skip > 0) {
        s_skip--;
        return false;
    }
    if (s_count == 0) {
        s_skip = -1;
        return false;
    }
    if (s_count > 0)
        s_count--;
    s_refused++;
    return true;
}
