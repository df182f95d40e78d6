/* agent/provider_openai.c — placeholder until the streaming client lands. */
#include <stdio.h>

#include "agent/provider.h"

agent_provider_t *agent_provider_openai_new(const agent_provider_opts_t *o, char *err, size_t errcap)
{
    (void) o;
    snprintf(err, errcap, "openai provider not built yet");
    return NULL;
}
