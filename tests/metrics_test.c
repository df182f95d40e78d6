/* tests/metrics_test.c — registry and Prometheus text rendering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "router/metrics.h"

static void test_render(void **state)
{
    (void) state;
    router_metrics_t *m = router_metrics_new();
    router_metric_t *a = router_metrics_add(m, "kith_comms_rejected_total", "reason=\"oversize\"",
                                            ROUTER_METRIC_COUNTER, "Envelopes refused, by reason.");
    router_metric_t *b = router_metrics_add(m, "kith_inbox_depth", NULL, ROUTER_METRIC_GAUGE,
                                            "Entries waiting in the inbox.");
    router_metric_t *c = router_metrics_add(m, "kith_comms_rejected_total", "reason=\"replay\"",
                                            ROUTER_METRIC_COUNTER, "Envelopes refused, by reason.");
    assert_ptr_equal(router_metrics_add(m, "kith_inbox_depth", NULL, ROUTER_METRIC_GAUGE, ""), b);
    router_metric_inc(a, 2);
    router_metric_inc(c, 1);
    router_metric_set(b, 7);
    char out[1024];
    long n = router_metrics_render(m, out, sizeof out);
    assert_true(n > 0);
    assert_string_equal(out,
                        "# HELP kith_comms_rejected_total Envelopes refused, by reason.\n"
                        "# TYPE kith_comms_rejected_total counter\n"
                        "kith_comms_rejected_total{reason=\"oversize\"} 2\n"
                        "kith_comms_rejected_total{reason=\"replay\"} 1\n"
                        "# HELP kith_inbox_depth Entries waiting in the inbox.\n"
                        "# TYPE kith_inbox_depth gauge\n"
                        "kith_inbox_depth 7\n");
    assert_int_equal(router_metrics_render(m, out, 20), -1);
    router_metrics_destroy(&m);
    assert_null(m);
}

static void test_bounded(void **state)
{
    (void) state;
    router_metrics_t *m = router_metrics_new();
    char labels[32];
    for (int i = 0; i < ROUTER_METRICS_MAX; i++) {
        snprintf(labels, sizeof labels, "n=\"%d\"", i);
        assert_non_null(router_metrics_add(m, "x", labels, ROUTER_METRIC_COUNTER, "x"));
    }
    assert_null(router_metrics_add(m, "x", "n=\"full\"", ROUTER_METRIC_COUNTER, "x"));
    router_metric_inc(NULL, 1); /* a missing cell is a no-op */
    router_metrics_destroy(&m);
}

static void test_histogram(void **state)
{
    (void) state;
    router_metrics_t *m = router_metrics_new();
    static const uint64_t bounds[] = {100, 1000};
    static const uint64_t bad[] = {1000, 100};
    assert_null(router_metrics_add_histogram(m, "kith_bad_seconds", "h", bad, 2));
    router_histogram_t *h = router_metrics_add_histogram(m, "kith_d_seconds", "D", bounds, 2);
    assert_non_null(h);
    assert_ptr_equal(h, router_metrics_add_histogram(m, "kith_d_seconds", "D", bounds, 2));
    router_histogram_observe(h, 50);
    router_histogram_observe(h, 100);
    router_histogram_observe(h, 500);
    router_histogram_observe(h, 5000);
    router_histogram_observe(NULL, 1);
    char out[4096];
    assert_true(router_metrics_render(m, out, sizeof out) > 0);
    assert_non_null(strstr(out, "# TYPE kith_d_seconds histogram\n"
                                "kith_d_seconds_bucket{le=\"0.100\"} 2\n"
                                "kith_d_seconds_bucket{le=\"1.000\"} 3\n"
                                "kith_d_seconds_bucket{le=\"+Inf\"} 4\n"
                                "kith_d_seconds_sum 5.650\n"
                                "kith_d_seconds_count 4\n"));
    router_metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_histogram),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
