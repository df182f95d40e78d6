/* tools/kith/admin_http.h — the CLI's client for the running daemon's
 * loopback admin routes (WIRE §17.3, §28): finds the gateway from the
 * configuration (--home, --config), sends one HTTP/1.1 request with
 * `Connection: close` and reads the whole answer, within a deadline. */
#ifndef KITH_TOOLS_ADMIN_HTTP_H
#define KITH_TOOLS_ADMIN_HTTP_H

#include <stddef.h>

#define KITH_ADMIN_TIMEOUT_MS 10000u      /* the whole exchange */
#define KITH_ADMIN_ANSWER_MAX (1u << 20)  /* octets of an answer read */

/* One answer: its status and body (NUL-terminated; caller frees). */
typedef struct {
    int status;
    char *body;
    size_t body_len;
} kith_admin_answer_t;

/* Sends `method path` with `body` (NULL: none; sent as application/json)
 * to the daemon that home_flag/config_flag (may be NULL) configure. On
 * success fills *ans and returns 0; else writes one line for people, as
 * "the daemon is not running at http://…" (nothing accepted the
 * connection), "… did not answer within 10 s" (something did, and then
 * said nothing), an answer too large or not HTTP, or the configuration's
 * own complaint, into err and returns -1. `cmd` names the command in err. */
int kith_admin_call(const char *cmd, const char *home_flag, const char *config_flag,
                    const char *method, const char *path, const char *body,
                    kith_admin_answer_t *ans, char *err, size_t errcap);

void kith_admin_answer_free(kith_admin_answer_t *ans);

/* Octets of an answer's text an error line shows, and the room
 * kith_admin_line needs for them, a closing "…" and the NUL. */
#define KITH_ADMIN_SHOWN_MAX 200u
#define KITH_ADMIN_LINE_CAP (KITH_ADMIN_SHOWN_MAX + 4u)

/* text (an answer's body, or a string in it) made fit for a one-line
 * error: control characters (line breaks too) become spaces, trailing ones
 * go, and past KITH_ADMIN_SHOWN_MAX octets it is cut, ending in "…".
 * Returns out. */
const char *kith_admin_line(const char *text, char out[KITH_ADMIN_LINE_CAP]);

#endif
