/* router/comms/event_line.h — one line from the plain event listener (DESIGN §8,
 * comms.auth = "none"): a JSON object with a string "body", or plain text.
 * The line splitter (proto/line) has already removed the newline and enforced
 * the 64 KiB bound; this decides what the line says. */
#ifndef KITH_ROUTER_EVENT_LINE_H
#define KITH_ROUTER_EVENT_LINE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ROUTER_EVENT_LINE_OK = 0,
    ROUTER_EVENT_LINE_EMPTY,          /* blank line: skipped, not counted as an error */
    ROUTER_EVENT_LINE_BAD_JSON,       /* starts with '{' but is not one valid JSON text */
    ROUTER_EVENT_LINE_NO_BODY,        /* a JSON object without a string "body" */
    ROUTER_EVENT_LINE_BAD_UTF8,       /* a line (JSON or plain) that is not UTF-8 */
    ROUTER_EVENT_LINE_LONE_SURROGATE, /* a \uD800-\uDFFF escape without its other half */
    ROUTER_EVENT_LINE_DUPLICATE_KEY,  /* "body" more than once in the object */
    ROUTER_EVENT_LINE_NUL_IN_BODY,    /* the body holds U+0000 (escaped, or raw in plain text) */
    ROUTER_EVENT_LINE_NOMEM,
} router_event_line_reason_t;

/* Parses `line` (no newline). On ROUTER_EVENT_LINE_OK *body is a NUL-ended
 * UTF-8 copy of the event body that the caller frees, *body_len its length
 * (no NUL inside). A JSON line is an object whose "body" is a string; other
 * members are allowed and ignored. Any other line is taken as plain text,
 * trailing CR and surrounding spaces removed. A line is never altered to
 * fit: what cannot be taken exactly is refused with its reason, and *body
 * is then NULL. */
router_event_line_reason_t router_event_line_parse(const uint8_t *line, size_t len, char **body,
                                                   size_t *body_len)
    __attribute__((warn_unused_result));

/* Stable snake_case name of `r` ("bad_json", "lone_surrogate", …), for logs. */
const char *router_event_line_reason_str(router_event_line_reason_t r);

#endif
