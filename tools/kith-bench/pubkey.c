/* tools/kith-bench/pubkey.c — `kith-bench pubkey [--seed HEX]`: the text
 * form of the signing key the envelope modes use, for `kith peers add`. */
#include <getopt.h>
#include <stdio.h>

#include "proto/pubkey.h"
#include "tools/kith-bench/bench.h"

int bench_mode_pubkey(int argc, char **argv)
{
    static const struct option opts[] = {{"seed", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0, 0, 0, 0}};
    const char *seed = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 's') {
            seed = optarg;
        } else if (o == 'h') {
            printf("usage: kith-bench pubkey [--seed HEX]\n");
            return 0;
        } else {
            fprintf(stderr, "usage: kith-bench pubkey [--seed HEX]\n");
            return BENCH_EXIT_USAGE;
        }
    }
    bench_keys_t k;
    char text[PROTO_PUBKEY_TEXT_CAP];
    if (optind != argc || bench_keys_init(&k, seed, NULL) != 0)
        return BENCH_EXIT_USAGE;
    if (proto_pubkey_format(k.pk, text, sizeof text) != 0)
        return BENCH_EXIT_FAIL;
    printf("%s\n", text);
    return 0;
}
