/* gateway/ingress_body.h — strict decoding of the JSON bodies of POST
 * /webhook and POST /sessions/{id}/external-events (WIRE §17.4): one JSON
 * object, UTF-8, no duplicate key at any depth, no NUL (raw or \u0000),
 * no lone surrogate escape, no member the route does not know. No I/O. */
#ifndef KITH_GATEWAY_INGRESS_BODY_H
#define KITH_GATEWAY_INGRESS_BODY_H

#include <stddef.h>

#define GATEWAY_INGRESS_ID_MAX 128u       /* octets of a session id or event type */
#define GATEWAY_INGRESS_DEPTH_MAX 64u     /* containers nested in a body */
#define GATEWAY_INGRESS_KEYS_MAX 1024u    /* members of one object */

typedef enum {
    GATEWAY_INGRESS_OK = 0,
    GATEWAY_INGRESS_INVALID_JSON,  /* not strict JSON: 400 invalid_json */
    GATEWAY_INGRESS_INVALID_BODY,  /* JSON of the wrong shape: 400 invalid_body */
    GATEWAY_INGRESS_NOMEM,         /* 503 */
} gateway_ingress_reason_t;

typedef enum {
    GATEWAY_INGRESS_WEBHOOK,       /* {"message": string, "session_id"?: string} */
    GATEWAY_INGRESS_EVENT,         /* {"kind":"generic_json","event_type":string,"payload":any} */
} gateway_ingress_shape_t;

/* What a body said; message is owned (free it with _clear). */
typedef struct {
    char *message;                              /* WEBHOOK: NUL-ended */
    size_t message_len;
    char session_id[GATEWAY_INGRESS_ID_MAX + 1];/* WEBHOOK: "" when absent */
    char event_type[GATEWAY_INGRESS_ID_MAX + 1];/* EVENT */
} gateway_ingress_body_t;

/* Decodes body[len] as `shape` into *out (zeroed first). On a refusal
 * why[cap] says what was wrong, for people. */
gateway_ingress_reason_t gateway_ingress_body_parse(gateway_ingress_shape_t shape,
                                                    const char *body, size_t len,
                                                    gateway_ingress_body_t *out, char *why,
                                                    size_t cap)
    __attribute__((warn_unused_result));

void gateway_ingress_body_clear(gateway_ingress_body_t *b);

/* True for a session id: 1..GATEWAY_INGRESS_ID_MAX of [A-Za-z0-9._:-]. */
int gateway_ingress_id_ok(const char *s, size_t len);

#endif
