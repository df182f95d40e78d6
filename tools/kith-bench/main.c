/* tools/kith-bench/main.c — kith's load generator: one binary, one mode per
 * figure of DESIGN §12 / issue 13 (tools/bench runs them all and prints the
 * table). Each mode measures from the outside (sockets, /metrics, /proc) and
 * prints `key: value` lines, or one JSON object with --json. */
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "tools/kith-bench/bench.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} s_modes[] = {
    {"envelopes", bench_mode_envelopes, "signed envelopes → acks/s, ack latency, crypto bound"},
    {"events", bench_mode_events, "plain event lines/s on one connection, /health under load"},
    {"ws", bench_mode_ws, "WebSocket echo: msgs/s, latency, server CPU per message"},
    {"sse", bench_mode_sse, "SSE subscribers: burst delivery latency, memory per subscriber"},
    {"webhook", bench_mode_webhook, "POST /webhook: requests/s and latency"},
    {"chat", bench_mode_chat, "/ws/chat scripted turns at a fixed rate: round-trip percentiles"},
    {"pubkey", bench_mode_pubkey, "print the public key of --seed (for `kith peers add`)"},
};

static void s_usage(FILE *f)
{
    fprintf(f, "usage: kith-bench MODE [options]   (kith-bench MODE --help for a mode's options)\n"
               "modes:\n");
    for (size_t i = 0; i < sizeof s_modes / sizeof s_modes[0]; i++)
        fprintf(f, "  %-10s %s\n", s_modes[i].name, s_modes[i].what);
    fprintf(f, "exit: 0 ran, 1 the run failed (lost, refused, timed out), 2 mode unavailable, "
               "64 usage\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return BENCH_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        s_usage(stdout);
        return 0;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "kith-bench: libsodium failed to initialise\n");
        return BENCH_EXIT_FAIL;
    }
    for (size_t i = 0; i < sizeof s_modes / sizeof s_modes[0]; i++)
        if (strcmp(argv[1], s_modes[i].name) == 0)
            return s_modes[i].run(argc - 1, argv + 1);
    fprintf(stderr, "kith-bench: unknown mode \"%s\"\n", argv[1]);
    s_usage(stderr);
    return BENCH_EXIT_USAGE;
}
