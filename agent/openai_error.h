/* agent/openai_error.h — the server's own words from the body of a non-200
 * chat-completions answer (an OpenAI-compatible server's error object), for
 * the `openai` provider's error text. No I/O. */
#ifndef KITH_AGENT_OPENAI_ERROR_H
#define KITH_AGENT_OPENAI_ERROR_H

#include <stddef.h>

/* Most octets of a message kept (before the NUL). */
#define AGENT_OAI_ERROR_TEXT_MAX 300u
/* Containers nested in a body read as JSON; a deeper body is read as text
 * (yajl builds and frees its tree recursively). */
#define AGENT_OAI_ERROR_DEPTH_MAX 32u

/* Writes into out[0..cap) (cap ≥ 1) the message of body[0..len): the string
 * `error.message`, else a string `error`, else a string `message`, else the
 * body's own start. The text is one line (control octets become spaces),
 * well-formed UTF-8 (a cut character is dropped), without trailing spaces,
 * at most AGENT_OAI_ERROR_TEXT_MAX octets and NUL-terminated; "" for an
 * empty or NULL body. JSON is read up to the body's first NUL octet, if
 * any. body need not be NUL-terminated. */
void agent_oai_error_message(const char *body, size_t len, char *out, size_t cap);

/* A server's text t[0..n) as one line into out[0..cap) (cap ≥ 1): control
 * octets become spaces, at most `max` octets, cut on a code point,
 * trailing spaces dropped, NUL-terminated. Returns the octets written. */
size_t agent_oai_error_line(const char *t, size_t n, char *out, size_t cap, size_t max);

#endif
