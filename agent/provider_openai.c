/* agent/provider_openai.c — the `openai` provider: any OpenAI-compatible
 * POST {base_url}/chat/completions with stream: true, over libcurl's multi
 * interface so the turn keeps reading its socket while bytes arrive (a stop
 * aborts the transfer at once) and every wait is bounded (connect timeout,
 * idle timeout, the turn's deadline through sink->yield). The body is read
 * by agent/openai_stream.c as it comes.
 *
 * Retries: a 429 or 5xx answer, or a connection that could not be made, is
 * tried again up to max_attempts times, waiting backoff_ms, doubled each
 * time, or the server's Retry-After (seconds) when it sends one — but never
 * once any text of the answer has been streamed to the client. Every
 * failure is AGENT_COMPLETE_ERROR with "openai: …" and the server's own
 * message where it sent one. The API key goes out as a Bearer token (curl
 * sends it to the configured host only) and is never logged or copied into
 * an error. */
#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "agent/json_buf.h"
#include "agent/openai_error.h"
#include "agent/openai_stream.h"
#include "agent/provider.h"
#include "router/clock.h"
#include "router/log.h"

typedef struct {
    agent_provider_t base;
    char *url;            /* {base_url}/chat/completions */
    char *model;
    char *api_key;        /* NULL: no Authorization header; wiped on destroy */
    CURLM *multi;         /* keeps connections between completions */
    int connect_ms, idle_ms, attempts, backoff_ms;
} s_openai_t;

/* One HTTP exchange. */
typedef struct {
    const agent_sink_t *sink;
    agent_oai_stream_t *stream;
    CURL *easy;
    char *errbody;        /* a non-200 answer's body, bounded */
    size_t errlen, errcap;
    long retry_after_ms;  /* -1: none */
    uint64_t last_byte_ms;
    bool aborted;         /* the sink said stop */
    bool stream_failed;   /* the reader refused the body */
    bool ended;           /* [DONE] was read: the rest of the body is not waited for */
    char head[1024];      /* a 200 body's first octets, for one that is no event stream */
    size_t head_len;
} s_xfer_t;

static pthread_once_t s_curl_once = PTHREAD_ONCE_INIT;

static void s_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ================================================================ request body */

static void s_put_message(agent_json_buf_t *b, const proto_worker_chat_msg_t *m)
{
    agent_json_buf_puts(b, "{\"role\":");
    agent_json_buf_quote(b, proto_worker_role_str(m->role), strlen(proto_worker_role_str(m->role)));
    agent_json_buf_puts(b, ",\"content\":");
    if (m->n_tool_calls && m->content.len == 0)
        agent_json_buf_puts(b, "null");
    else
        agent_json_buf_quote(b, m->content.p ? m->content.p : "", m->content.len);
    if (m->tool_call_id.p) {
        agent_json_buf_puts(b, ",\"tool_call_id\":");
        agent_json_buf_quote(b, m->tool_call_id.p, m->tool_call_id.len);
    }
    if (m->n_tool_calls) {
        agent_json_buf_puts(b, ",\"tool_calls\":[");
        for (size_t i = 0; i < m->n_tool_calls; i++) {
            const proto_worker_tool_call_t *c = &m->tool_calls[i];
            agent_json_buf_puts(b, i ? ",{\"id\":" : "{\"id\":");
            agent_json_buf_quote(b, c->id.p, c->id.len);
            agent_json_buf_puts(b, ",\"type\":\"function\",\"function\":{\"name\":");
            agent_json_buf_quote(b, c->name.p, c->name.len);
            /* arguments is a JSON string holding JSON text. */
            agent_json_buf_puts(b, ",\"arguments\":");
            agent_json_buf_quote(b, c->arguments.p, c->arguments.len);
            agent_json_buf_puts(b, "}}");
        }
        agent_json_buf_puts(b, "]");
    }
    agent_json_buf_puts(b, "}");
}

/* The chat-completions request for req, or NULL with err set. */
static char *s_request_body(const s_openai_t *p, const agent_completion_req_t *req, size_t *len, char *err,
                            size_t errcap)
{
    agent_json_buf_t b;
    agent_json_buf_init(&b, AGENT_OPENAI_REQUEST_MAX);
    agent_json_buf_puts(&b, "{\"model\":");
    agent_json_buf_quote(&b, p->model, strlen(p->model));
    agent_json_buf_puts(&b, ",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[");
    for (size_t i = 0; i < req->n_msgs; i++) {
        if (i)
            agent_json_buf_puts(&b, ",");
        s_put_message(&b, &req->msgs[i]);
    }
    agent_json_buf_puts(&b, "]");
    if (req->n_tools) {
        agent_json_buf_puts(&b, ",\"tools\":[");
        for (size_t i = 0; i < req->n_tools; i++) {
            const proto_worker_tool_spec_t *t = &req->tools[i];
            if (!agent_json_valid(t->parameters.p, t->parameters.len)) {
                snprintf(err, errcap, "openai: the parameters of tool %.*s are not JSON",
                         (int) (t->name.len > 64 ? 64 : t->name.len), t->name.p);
                agent_json_buf_free(&b);
                return NULL;
            }
            agent_json_buf_puts(&b, i ? ",{\"type\":\"function\",\"function\":{\"name\":"
                                      : "{\"type\":\"function\",\"function\":{\"name\":");
            agent_json_buf_quote(&b, t->name.p, t->name.len);
            agent_json_buf_puts(&b, ",\"description\":");
            agent_json_buf_quote(&b, t->description.p, t->description.len);
            agent_json_buf_puts(&b, ",\"parameters\":");
            agent_json_buf_put(&b, t->parameters.p, t->parameters.len);
            agent_json_buf_puts(&b, "}}");
        }
        agent_json_buf_puts(&b, "]");
    }
    agent_json_buf_puts(&b, "}");
    /* Past the bound, or an allocation (of the text, or of take's "")? */
    bool past_max = b.failed && !b.no_memory;
    char *body = agent_json_buf_take(&b, len);
    if (!body && !past_max)
        snprintf(err, errcap, "openai: out of memory");
    else if (!body)
        snprintf(err, errcap, "openai: the request would pass %u bytes", (unsigned) AGENT_OPENAI_REQUEST_MAX);
    return body;
}

/* ================================================================ curl callbacks */

static long s_status(const s_xfer_t *x)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

static size_t s_on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    s_xfer_t *x = ud;
    size_t n = size * nmemb;
    x->last_byte_ms = router_clock_mono_ms();
    if (s_status(x) != 200) {
        size_t room = AGENT_OPENAI_ERROR_BODY_MAX - x->errlen;
        size_t k = n < room ? n : room;
        if (k) {
            char *e = realloc(x->errbody, x->errlen + k + 1);
            if (!e)
                return n; /* the message is a courtesy; keep reading */
            x->errbody = e;
            memcpy(x->errbody + x->errlen, p, k);
            x->errlen += k;
            x->errbody[x->errlen] = '\0';
        }
        return n;
    }
    if (x->head_len < sizeof x->head) {
        size_t k = n < sizeof x->head - x->head_len ? n : sizeof x->head - x->head_len;
        memcpy(x->head + x->head_len, p, k);
        x->head_len += k;
    }
    agent_oai_rc_t rc = agent_oai_stream_feed(x->stream, p, n);
    if (rc == AGENT_OAI_ABORTED) {
        x->aborted = true;
        return 0;
    }
    if (rc == AGENT_OAI_ERROR) {
        x->stream_failed = true;
        return 0;
    }
    if (agent_oai_stream_done(x->stream)) {
        x->ended = true; /* the answer is whole: stop the transfer here */
        return 0;
    }
    return n;
}

/* Keeps Retry-After (delta-seconds); an HTTP-date is not honoured. */
static size_t s_on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    s_xfer_t *x = ud;
    size_t n = size * nmemb;
    x->last_byte_ms = router_clock_mono_ms();
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        size_t i = sizeof name - 1;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        long secs = 0;
        size_t digits = 0;
        while (i < n && isdigit((unsigned char) p[i]) && digits < 9) {
            secs = secs * 10 + (p[i++] - '0');
            digits++;
        }
        if (digits)
            x->retry_after_ms = secs * 1000;
    }
    return n;
}

/* Text streamed by the server goes to the sink. */
static int s_on_content(void *ud, const char *p, size_t n)
{
    const agent_sink_t *sink = ud;
    return sink->chunk(sink->ud, p, n);
}

static int s_on_reasoning(void *ud, const char *p, size_t n)
{
    const agent_sink_t *sink = ud;
    return sink->thinking(sink->ud, p, n);
}

/* ================================================================ one exchange */

typedef enum {
    S_X_OK,        /* 200 and a good stream */
    S_X_RETRY,     /* worth another attempt (err set) */
    S_X_ERROR,     /* err set */
    S_X_ABORTED,
} s_x_rc_t;

static s_x_rc_t s_exchange(s_openai_t *p, const char *body, size_t body_len, const agent_sink_t *sink,
                           agent_completion_t *out, long *retry_after_ms, char *err, size_t errcap)
{
    s_xfer_t x = {.sink = sink, .retry_after_ms = -1};
    agent_oai_cb_t cb = {s_on_content, s_on_reasoning, (void *) sink};
    s_x_rc_t rc = S_X_ERROR;
    struct curl_slist *headers = NULL;
    bool added = false;
    char curl_err[CURL_ERROR_SIZE] = "";

    x.stream = agent_oai_stream_new(&cb);
    x.easy = curl_easy_init();
    headers = curl_slist_append(headers, "Content-Type: application/json");
    if (headers)
        headers = curl_slist_append(headers, "Accept: text/event-stream");
    if (headers) /* no 100-continue round trip */
        headers = curl_slist_append(headers, "Expect:");
    if (!x.stream || !x.easy || !headers) {
        snprintf(err, errcap, "openai: out of memory");
        goto out;
    }
    curl_easy_setopt(x.easy, CURLOPT_URL, p->url);
    curl_easy_setopt(x.easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(x.easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x.easy, CURLOPT_POST, 1L);
    curl_easy_setopt(x.easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(x.easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
    curl_easy_setopt(x.easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(x.easy, CURLOPT_CONNECTTIMEOUT_MS, (long) p->connect_ms);
    curl_easy_setopt(x.easy, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt(x.easy, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(x.easy, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(x.easy, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(x.easy, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(x.easy, CURLOPT_USERAGENT, "kith/" KITH_VERSION);
    if (p->api_key) {
        curl_easy_setopt(x.easy, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
        curl_easy_setopt(x.easy, CURLOPT_XOAUTH2_BEARER, p->api_key);
    }
    if (curl_multi_add_handle(p->multi, x.easy) != CURLM_OK) {
        snprintf(err, errcap, "openai: cannot start the transfer");
        goto out;
    }
    added = true;

    x.last_byte_ms = router_clock_mono_ms();
    bool idle = false;
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(p->multi, &running);
        if (mc != CURLM_OK) {
            snprintf(err, errcap, "openai: %s", curl_multi_strerror(mc));
            goto out;
        }
        if (x.aborted || x.stream_failed || x.ended || !running)
            break;
        if (sink->yield(sink->ud, 0) < 0) {
            x.aborted = true;
            break;
        }
        if (router_clock_mono_ms() - x.last_byte_ms > (uint64_t) p->idle_ms) {
            idle = true;
            break;
        }
        mc = curl_multi_poll(p->multi, NULL, 0, AGENT_POLL_MS, NULL);
        if (mc != CURLM_OK) {
            snprintf(err, errcap, "openai: %s", curl_multi_strerror(mc));
            goto out;
        }
    }
    if (x.aborted) {
        rc = S_X_ABORTED;
        goto out;
    }
    if (x.stream_failed) {
        snprintf(err, errcap, "openai: %s", agent_oai_stream_error(x.stream));
        goto out;
    }
    if (idle) {
        snprintf(err, errcap, "openai: no data from the server for %d ms", p->idle_ms);
        goto out;
    }
    CURLcode cc = CURLE_OK;
    int left = 0;
    for (CURLMsg *m; (m = curl_multi_info_read(p->multi, &left));)
        if (m->msg == CURLMSG_DONE && m->easy_handle == x.easy)
            cc = m->data.result;
    if (x.ended)
        cc = CURLE_OK; /* stopped by s_on_body once [DONE] was read */
    if (cc != CURLE_OK) {
        snprintf(err, errcap, "openai: %s%s%s", curl_easy_strerror(cc), curl_err[0] ? ": " : "", curl_err);
        bool unreached = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
                         (cc == CURLE_OPERATION_TIMEDOUT && s_status(&x) == 0);
        rc = unreached && !agent_oai_stream_emitted(x.stream) ? S_X_RETRY : S_X_ERROR;
        goto out;
    }
    long status = s_status(&x);
    char *location = NULL;
    if (status >= 300 && status < 400 && curl_easy_getinfo(x.easy, CURLINFO_REDIRECT_URL, &location) == CURLE_OK &&
        location) {
        /* Not followed: a POST would turn into a GET, and the key would go
         * wherever the server says. The operator needs the new address. */
        char where[AGENT_OAI_ERROR_TEXT_MAX + 1];
        agent_oai_error_line(location, strlen(location), where, sizeof where, 200);
        snprintf(err, errcap, "openai: HTTP %ld: a redirect to %s, which is not followed (agent.base_url should "
                 "name the server's own address)", status, where);
        goto out;
    }
    if (status != 200) {
        char msg[320];
        agent_oai_error_message(x.errbody, x.errlen, msg, sizeof msg);
        snprintf(err, errcap, "openai: HTTP %ld%s%s", status, msg[0] ? ": " : "", msg);
        *retry_after_ms = x.retry_after_ms;
        rc = status == 429 || status >= 500 ? S_X_RETRY : S_X_ERROR;
        goto out;
    }
    agent_oai_rc_t fin = agent_oai_stream_finish(x.stream);
    if (fin != AGENT_OAI_OK && !agent_oai_stream_saw_data(x.stream)) {
        /* A whole JSON object (the server ignored stream: true, or sent its
         * error with a 200), a proxy's page, nothing: say what came. */
        char msg[320];
        agent_oai_error_message(x.head, x.head_len, msg, sizeof msg);
        if (msg[0])
            snprintf(err, errcap, "openai: the answer is not an event stream: %s", msg);
        else
            snprintf(err, errcap, "openai: the answer is empty (HTTP 200, no event stream)");
        goto out;
    }
    if (fin != AGENT_OAI_OK || agent_oai_stream_take(x.stream, out) != 0) {
        snprintf(err, errcap, "openai: %s", agent_oai_stream_error(x.stream));
        goto out;
    }
    rc = S_X_OK;
out:
    if (added)
        curl_multi_remove_handle(p->multi, x.easy);
    if (x.easy)
        curl_easy_cleanup(x.easy);
    curl_slist_free_all(headers);
    /* A transfer aborted mid-stream with text out cannot be retried either. */
    if (rc == S_X_RETRY && x.stream && agent_oai_stream_emitted(x.stream))
        rc = S_X_ERROR;
    agent_oai_stream_destroy(&x.stream);
    free(x.errbody);
    return rc;
}

/* ================================================================ the provider */

static agent_complete_rc_t s_complete(agent_provider_t *self, const agent_completion_req_t *req,
                                      const agent_sink_t *sink, agent_completion_t *out, char *err, size_t errcap)
{
    s_openai_t *p = (s_openai_t *) self;
    size_t body_len = 0;
    char *body = s_request_body(p, req, &body_len, err, errcap);
    if (!body)
        return AGENT_COMPLETE_ERROR;
    agent_complete_rc_t rc = AGENT_COMPLETE_ERROR;
    for (int attempt = 1;; attempt++) {
        long retry_after = -1;
        s_x_rc_t x = s_exchange(p, body, body_len, sink, out, &retry_after, err, errcap);
        if (x == S_X_OK) {
            rc = AGENT_COMPLETE_OK;
            break;
        }
        if (x == S_X_ABORTED) {
            rc = AGENT_COMPLETE_ABORTED;
            break;
        }
        if (x == S_X_ERROR || attempt >= p->attempts) {
            if (x == S_X_RETRY && attempt > 1) {
                size_t n = strlen(err);
                snprintf(err + n, errcap - n, " (after %d attempts)", attempt);
            }
            break;
        }
        long wait = retry_after >= 0 ? retry_after : (long) p->backoff_ms << (attempt - 1);
        if (wait > AGENT_OPENAI_RETRY_AFTER_MAX_MS)
            wait = AGENT_OPENAI_RETRY_AFTER_MAX_MS;
        ROUTER_LOG(ROUTER_LOG_WARN, "agent", "%s; attempt %d of %d in %ld ms", err, attempt + 1, p->attempts, wait);
        uint64_t until = router_clock_mono_ms() + (uint64_t) wait;
        bool stop = false;
        for (uint64_t now = router_clock_mono_ms(); !stop && now < until; now = router_clock_mono_ms())
            stop = sink->yield(sink->ud, (int) (until - now)) < 0;
        if (stop) {
            rc = AGENT_COMPLETE_ABORTED;
            break;
        }
        agent_completion_clear(out);
    }
    free(body);
    if (rc != AGENT_COMPLETE_OK)
        agent_completion_clear(out);
    return rc;
}

static void s_destroy(agent_provider_t *self)
{
    s_openai_t *p = (s_openai_t *) self;
    if (p->multi)
        curl_multi_cleanup(p->multi);
    if (p->api_key) {
        explicit_bzero(p->api_key, strlen(p->api_key));
        free(p->api_key);
    }
    free(p->url);
    free(p->model);
    free(p);
}

agent_provider_t *agent_provider_openai_new(const agent_provider_opts_t *o, char *err, size_t errcap)
{
    pthread_once(&s_curl_once, s_curl_init);
    const char *base = o->base_url && *o->base_url ? o->base_url : AGENT_OPENAI_BASE_URL;
    if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) {
        snprintf(err, errcap, "openai: agent.base_url must start with http:// or https://");
        return NULL;
    }
    if (!o->model || !*o->model) {
        snprintf(err, errcap, "openai: agent.model is required");
        return NULL;
    }
    const char *key = NULL;
    if (o->api_key_env && *o->api_key_env) {
        key = getenv(o->api_key_env);
        if (!key || !*key) {
            snprintf(err, errcap, "openai: agent.api_key_env names %s, which is not set", o->api_key_env);
            return NULL;
        }
    }
    s_openai_t *p = calloc(1, sizeof *p);
    if (!p)
        goto nomem;
    p->base.name = "openai";
    p->base.complete = s_complete;
    p->base.destroy = s_destroy;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    static const char path[] = "/chat/completions";
    p->url = malloc(blen + sizeof path);
    p->model = strdup(o->model);
    p->api_key = key ? strdup(key) : NULL;
    p->multi = curl_multi_init();
    if (!p->url || !p->model || (key && !p->api_key) || !p->multi)
        goto nomem;
    memcpy(p->url, base, blen);
    memcpy(p->url + blen, path, sizeof path);
    p->base.model = p->model;
    p->connect_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : AGENT_OPENAI_CONNECT_TIMEOUT_MS;
    p->idle_ms = o->idle_timeout_ms > 0 ? o->idle_timeout_ms : AGENT_OPENAI_IDLE_TIMEOUT_MS;
    p->attempts = o->max_attempts > 0 ? o->max_attempts : AGENT_OPENAI_ATTEMPTS;
    p->backoff_ms = o->backoff_ms > 0 ? o->backoff_ms : AGENT_OPENAI_BACKOFF_MS;
    /* At most one connection kept per host: one completion at a time. */
    curl_multi_setopt(p->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 1L);
    return &p->base;
nomem:
    snprintf(err, errcap, "openai: out of memory");
    if (p)
        s_destroy(&p->base);
    return NULL;
}
