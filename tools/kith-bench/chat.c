/* tools/kith-bench/chat.c — `kith-bench chat`: scripted-provider turns over
 * /ws/chat at a fixed offered rate, round-trip percentiles (DESIGN §12:
 * p99 ≤ 1 ms at 1,000 turns/s). A stub until /ws/chat exists (issues 10
 * and 11): it says so and exits 2, which tools/bench reports as
 * "unavailable", never as a measurement. */
#include <stdio.h>

#include "tools/kith-bench/bench.h"

int bench_mode_chat(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    fprintf(stderr, "kith-bench chat: needs /ws/chat (issue 10/11), which this kith does not "
                    "serve yet\n");
    return BENCH_EXIT_UNAVAILABLE;
}
