/* agent/provider.c — what every provider shares: releasing a completion,
 * destroying a provider, and making one from the settings. */
#include "agent/provider.h"

#include <stdio.h>
#include <stdlib.h>

void agent_completion_clear(agent_completion_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_calls; i++)
        proto_worker_tool_call_clear(&c->calls[i]);
    free(c->calls);
    c->calls = NULL;
    c->n_calls = 0;
    c->has_tokens_used = false;
    c->tokens_used = 0;
}

void agent_provider_destroy(agent_provider_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    (*self_p)->destroy(*self_p);
    *self_p = NULL;
}

agent_provider_t *agent_provider_new(const agent_provider_opts_t *o, char *err, size_t errcap)
{
    if (o->kind == AGENT_PROVIDER_OPENAI)
        return agent_provider_openai_new(o, err, errcap);
    agent_provider_t *p = agent_provider_scripted_new();
    if (!p)
        snprintf(err, errcap, "out of memory");
    return p;
}
