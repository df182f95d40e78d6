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

struct router_metrics_t {
    pthread_mutex_t mu;            /* guards registration and rendering */
    s_series_t series[ROUTER_METRICS_MAX];
    size_t count;                  /* series in use */
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
    rc = (long) used;
done:
    pthread_mutex_unlock(&self->mu);
    return rc;
}
