/* router/metrics.c — the counter registry and its Prometheus rendering. */
#include "router/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[64];              /* metric name */
    char labels[96];            /* preformatted labels, "" for none */
    char help[128];             /* HELP text */
    router_metric_type_t type;  /* counter or gauge */
    router_metric_t value;      /* the cell handed out */
} s_series_t;

struct router_histogram {
    char name[64];
    char help[128];
    uint64_t bounds_ms[ROUTER_METRICS_BUCKETS_MAX];
    size_t nbounds;
    router_metric_t buckets[ROUTER_METRICS_BUCKETS_MAX + 1]; /* per bucket, +Inf last */
    router_metric_t sum_ms;
    router_metric_t count;
};

struct router_metrics_t {
    pthread_mutex_t mu;            /* guards registration and rendering */
    s_series_t series[ROUTER_METRICS_MAX];
    size_t count;                  /* series in use */
    struct router_histogram hist[ROUTER_METRICS_HISTOGRAMS_MAX];
    size_t nhist;                  /* histograms in use */
};

router_metrics_t *router_metrics_new(void)
{
    router_metrics_t *self = calloc(1, sizeof *self);
    if (self)
        pthread_mutex_init(&self->mu, NULL);
    return self;
}

void router_metrics_destroy(router_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pthread_mutex_destroy(&(*self_p)->mu);
    free(*self_p);
    *self_p = NULL;
}

router_metric_t *router_metrics_add(router_metrics_t *self, const char *name, const char *labels,
                                    router_metric_type_t type, const char *help)
{
    if (!self)
        return NULL;
    labels = labels ? labels : "";
    router_metric_t *cell = NULL;
    pthread_mutex_lock(&self->mu);
    for (size_t i = 0; i < self->count; i++) {
        s_series_t *s = &self->series[i];
        if (!strcmp(s->name, name) && !strcmp(s->labels, labels)) {
            cell = &s->value;
            goto done;
        }
    }
    if (self->count == ROUTER_METRICS_MAX || strlen(name) >= sizeof self->series[0].name ||
        strlen(labels) >= sizeof self->series[0].labels)
        goto done;
    s_series_t *s = &self->series[self->count++];
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->labels, sizeof s->labels, "%s", labels);
    snprintf(s->help, sizeof s->help, "%s", help ? help : "");
    s->type = type;
    atomic_init(&s->value, 0);
    cell = &s->value;
done:
    pthread_mutex_unlock(&self->mu);
    return cell;
}

router_histogram_t *router_metrics_add_histogram(router_metrics_t *self, const char *name,
                                                 const char *help, const uint64_t *bounds_ms,
                                                 size_t nbounds)
{
    if (!self || nbounds == 0 || nbounds > ROUTER_METRICS_BUCKETS_MAX ||
        strlen(name) >= sizeof self->hist[0].name)
        return NULL;
    for (size_t i = 1; i < nbounds; i++)
        if (bounds_ms[i] <= bounds_ms[i - 1])
            return NULL;
    router_histogram_t *h = NULL;
    pthread_mutex_lock(&self->mu);
    for (size_t i = 0; i < self->nhist; i++)
        if (!strcmp(self->hist[i].name, name)) {
            h = &self->hist[i];
            goto done;
        }
    if (self->nhist == ROUTER_METRICS_HISTOGRAMS_MAX)
        goto done;
    h = &self->hist[self->nhist++];
    snprintf(h->name, sizeof h->name, "%s", name);
    snprintf(h->help, sizeof h->help, "%s", help ? help : "");
    memcpy(h->bounds_ms, bounds_ms, nbounds * sizeof *bounds_ms);
    h->nbounds = nbounds;
done:
    pthread_mutex_unlock(&self->mu);
    return h;
}

void router_histogram_observe(router_histogram_t *h, uint64_t ms)
{
    if (!h)
        return;
    size_t i = 0;
    while (i < h->nbounds && ms > h->bounds_ms[i])
        i++;
    router_metric_inc(&h->buckets[i], 1);
    router_metric_inc(&h->sum_ms, ms);
    router_metric_inc(&h->count, 1);
}

/* The histograms, after the series: cumulative buckets, sum and count. */
static long s_render_histograms(router_metrics_t *self, char *out, size_t cap, size_t used)
{
    for (size_t i = 0; i < self->nhist; i++) {
        router_histogram_t *h = &self->hist[i];
        int n = snprintf(out + used, cap - used, "# HELP %s %s\n# TYPE %s histogram\n", h->name,
                         h->help, h->name);
        if (n < 0 || (size_t) n >= cap - used)
            return -1;
        used += (size_t) n;
        uint64_t cum = 0;
        for (size_t b = 0; b <= h->nbounds; b++) {
            cum += router_metric_get(&h->buckets[b]);
            char le[32];
            if (b < h->nbounds)
                snprintf(le, sizeof le, "%llu.%03llu",
                         (unsigned long long) (h->bounds_ms[b] / 1000),
                         (unsigned long long) (h->bounds_ms[b] % 1000));
            else
                snprintf(le, sizeof le, "+Inf");
            n = snprintf(out + used, cap - used, "%s_bucket{le=\"%s\"} %llu\n", h->name, le,
                         (unsigned long long) cum);
            if (n < 0 || (size_t) n >= cap - used)
                return -1;
            used += (size_t) n;
        }
        uint64_t sum = router_metric_get(&h->sum_ms);
        n = snprintf(out + used, cap - used, "%s_sum %llu.%03llu\n%s_count %llu\n", h->name,
                     (unsigned long long) (sum / 1000), (unsigned long long) (sum % 1000),
                     h->name, (unsigned long long) router_metric_get(&h->count));
        if (n < 0 || (size_t) n >= cap - used)
            return -1;
        used += (size_t) n;
    }
    return (long) used;
}

long router_metrics_render(router_metrics_t *self, char *out, size_t cap)
{
    size_t used = 0;
    long rc = -1;
    pthread_mutex_lock(&self->mu);
    for (size_t i = 0; i < self->count; i++) {
        s_series_t *s = &self->series[i];
        int first = 1;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(self->series[j].name, s->name))
                first = 0;
        if (!first)
            continue;
        int n = snprintf(out + used, cap - used, "# HELP %s %s\n# TYPE %s %s\n", s->name,
                         s->help, s->name, s->type == ROUTER_METRIC_COUNTER ? "counter" : "gauge");
        if (n < 0 || (size_t) n >= cap - used)
            goto done;
        used += (size_t) n;
        /* Every series of this name, together. */
        for (size_t j = i; j < self->count; j++) {
            s_series_t *t = &self->series[j];
            if (strcmp(t->name, s->name))
                continue;
            n = snprintf(out + used, cap - used, "%s%s%s%s %llu\n", t->name,
                         t->labels[0] ? "{" : "", t->labels, t->labels[0] ? "}" : "",
                         (unsigned long long) router_metric_get(&t->value));
            if (n < 0 || (size_t) n >= cap - used)
                goto done;
            used += (size_t) n;
        }
    }
    rc = s_render_histograms(self, out, cap, used);
done:
    pthread_mutex_unlock(&self->mu);
    return rc;
}
