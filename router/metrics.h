/* router/metrics.h — a small registry of counters and gauges, rendered in the
 * Prometheus text exposition format for GET /metrics.
 *
 * Registration happens at start-up and returns a cell; the hot path only does
 * a relaxed atomic add on it, from any thread. The registry is bounded
 * (ROUTER_METRICS_MAX series). */
#ifndef KITH_ROUTER_METRICS_H
#define KITH_ROUTER_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define ROUTER_METRICS_MAX 256

typedef struct router_metrics_t router_metrics_t;
typedef _Atomic uint64_t router_metric_t;

typedef enum { ROUTER_METRIC_COUNTER, ROUTER_METRIC_GAUGE } router_metric_type_t;

/* Returns NULL on allocation failure. Caller owns the result. */
router_metrics_t *router_metrics_new(void);
void router_metrics_destroy(router_metrics_t **self_p);

/* Registers (or finds) the series `name{labels}`; `labels` is either NULL or
 * preformatted like `reason="oversize"`. Series of one name share `help` and
 * `type`. Returns the cell, or NULL when the registry is full. The cell lives
 * as long as the registry. */
router_metric_t *router_metrics_add(router_metrics_t *self, const char *name, const char *labels,
                                    router_metric_type_t type, const char *help);

static inline void router_metric_inc(router_metric_t *m, uint64_t n)
{
    if (m)
        atomic_fetch_add_explicit(m, n, memory_order_relaxed);
}

static inline void router_metric_set(router_metric_t *m, uint64_t v)
{
    if (m)
        atomic_store_explicit(m, v, memory_order_relaxed);
}

static inline uint64_t router_metric_get(router_metric_t *m)
{
    return m ? atomic_load_explicit(m, memory_order_relaxed) : 0;
}

/* ------------------------------------------------------------ histograms */

/* Most histograms, and most buckets in one (the +Inf bucket not counted). */
#define ROUTER_METRICS_HISTOGRAMS_MAX 16
#define ROUTER_METRICS_BUCKETS_MAX 16

typedef struct router_histogram router_histogram_t;

/* Registers (or finds) histogram `name` (rendered as name_bucket{le=…},
 * name_sum, name_count, in seconds) with bucket upper bounds in
 * milliseconds, increasing. Returns the cell, or NULL when full or bad. */
router_histogram_t *router_metrics_add_histogram(router_metrics_t *self, const char *name,
                                                 const char *help, const uint64_t *bounds_ms,
                                                 size_t nbounds);

/* Counts one observation of `ms` milliseconds. Any thread; NULL: nothing. */
void router_histogram_observe(router_histogram_t *h, uint64_t ms);

/* Writes the exposition text into out[cap]. Returns the length written, or
 * -1 when it does not fit. */
long router_metrics_render(router_metrics_t *self, char *out, size_t cap);

#endif
