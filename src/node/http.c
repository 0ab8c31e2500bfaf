/* http.c - the HTTP/1.1 API (see http.h).
 *
 * A connection (struct hconn) owns an http-parser and a queue of requests
 * (struct hreq) in the order they were read. Each request is handled as soon
 * as http-parser has read all of it (on_message_complete): GETs are answered
 * at once, calls go to the route hook and the runtime and are answered by
 * their reply callback, whenever it runs. A request's response is built into
 * its own buffer; flush() moves the responses of the finished requests at
 * the head of the queue to the connection's output, so responses leave in
 * request order however the calls finish.
 *
 * The parser is paused after every request (http_parser_pause in
 * on_message_complete), so the loop in process_input() checks the bounds
 * between two requests: while max_pipeline requests wait or the unsent
 * output is over OUT_LIMIT, the rest of the input stays in `in`, reading
 * stops, and the loop-turn callback resumes once answers have gone. As in
 * server.c, that resumption never runs inside a reply callback, so the
 * runtime is not re-entered.
 *
 * Without a loop (am_http_new with NULL) there are no sockets: the tests and
 * the fuzz target feed bytes to am_http_conn_feed and read the output. */
#include "http.h"

#include "addr.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "mp.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
/* Unsent output per connection before reading pauses. */
#define OUT_LIMIT (8u << 20)
/* How long a stopping node waits for HTTP clients to read their last
 * responses (as server.c). */
#define DRAIN_MS 5000
/* After its last response a connection is not closed at once: the node
 * sends its FIN and reads (and drops) what the client still sends, for at
 * most this long, so that the client reads that response rather than a
 * reset (a client refused with 413 is typically still sending its body). */
#define LINGER_MS 2000
#define FIELD_MAX 32   /* header names looked at are shorter */
#define VALUE_MAX 1024 /* Authorization and Expect values kept */

const double am_http_buckets[AM_HTTP_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const int am_http_codes[AM_HTTP_NCODES] = {200, 400, 401, 404, 405, 413,
                                           429, 431, 500, 502, 503, 504};

enum { H_NONE, H_AUTH, H_EXPECT };

struct hconn;

/* One request, answered in its turn. */
struct hreq {
    struct hreq *next;
    struct hconn *c;
    struct am_buf resp; /* the whole response once done */
    uint64_t t0;        /* uv_hrtime() when its call was made */
    uint8_t done;
    uint8_t last;      /* no request follows on this connection: Connection: close */
    uint8_t head_only; /* a HEAD: the headers of the GET, without its body */
    char type[AM_MAX_TYPE + 1];
};

struct hconn {
    struct am_http *srv;
    uv_tcp_t tcp;
    int has_tcp;
    struct hconn *prev, *next, *turn_next;
    http_parser p;
    struct am_buf in, out, wbuf;
    uv_write_t wreq;
    /* the request being parsed */
    struct am_buf url, body;
    char field[FIELD_MAX];
    size_t field_len;
    int field_over, in_value, hdr;
    char value[VALUE_MAX];
    size_t value_len;
    int value_over;
    char auth[VALUE_MAX];
    size_t auth_len;
    int has_auth, expect_continue;
    size_t header_bytes;
    int fail; /* an HTTP code set by a parser callback that refused the request */
    char fail_msg[200];
    /* requests read and not yet flushed, in order */
    struct hreq *head, **tail;
    unsigned queued;
    unsigned inflight; /* calls whose reply callback is still to run */
    uint64_t last_ms;  /* last sign of life: accepted, a request read, output written */
    uint8_t in_turn, writing, paused, stop, closing, closed, close_after_write;
    uint8_t lingering; /* FIN sent; reading only to drop, until EOF or linger_until */
    uint64_t linger_until;
    uv_shutdown_t sreq;
};

struct am_http {
    uv_loop_t *loop;
    struct am_runtime *rt;
    struct am_http_opts o;
    struct am_http_hooks hooks;
    char token[AM_HTTP_TOKEN_MAX + 1];
    size_t token_len;
    uint8_t token_hash[32];
    uv_tcp_t listener;
    uv_check_t turn_check;
    uv_idle_t turn_idle;
    uv_timer_t sweep, drain_timer;
    int handles_open, stopping, closing;
    struct hconn *conns;
    struct hconn *turn;
    struct am_http_stats st;
    uint64_t next_id;
    char where[32];
    time_t date_at; /* the second date[] shows */
    char date[40];  /* "Date: ...\r\n" */
    void (*close_done)(void *arg);
    void *close_arg;
};

static void conn_close(struct hconn *c);
static void process_input(struct hconn *c);
static void maybe_finish_close(struct am_http *s);
static void on_turn(uv_check_t *h);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* ---- pieces -------------------------------------------------------------- */

int am_http_status_code(int status)
{
    switch (status) {
    case AM_ST_OK:
        return 200;
    case AM_ST_BAD_REQUEST:
    case AM_ST_INVALID_ARG:
        return 400;
    case AM_ST_TOO_LARGE:
        return 413;
    case AM_ST_UNKNOWN_TYPE:
    case AM_ST_UNKNOWN_ACTION:
        return 404;
    case AM_ST_BUSY:
    case AM_ST_OVERLOADED:
        return 429;
    case AM_ST_SHUTTING_DOWN:
    case AM_ST_UNAVAILABLE:
        return 503;
    case AM_ST_TIMEOUT:
        return 504;
    case AM_ST_HANDLER:
    case AM_ST_STORAGE:
    case AM_ST_INTERNAL:
        return 500;
    default:
        return 502; /* a status this node does not know, from a newer owner */
    }
}

const char *am_http_reason(int code)
{
    switch (code) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 0x20;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Percent-decodes one path segment into out (max bytes, NUL added).
 * 0, or -1 for a bad escape, -2 when longer than max. */
static int decode_segment(const char *s, size_t len, char *out, size_t max, size_t *out_len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (len - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return -1;
            ch = hexval(s[i + 1]) << 4 | hexval(s[i + 2]);
            i += 2;
        }
        if (n == max)
            return -2;
        out[n++] = (char)ch;
    }
    out[n] = '\0';
    *out_len = n;
    return 0;
}

static int segment(const char *what, const char *s, size_t len, char *out, size_t max,
                   size_t *out_len, char *err, size_t errlen)
{
    int rc = decode_segment(s, len, out, max, out_len);
    if (rc == -1)
        return am_errf(err, errlen, AM_EPROTO, "bad %%-escape in the %s", what);
    if (rc == -2)
        return am_errf(err, errlen, AM_EPROTO, "the %s is longer than %zu bytes", what, max);
    if (*out_len == 0)
        return am_errf(err, errlen, AM_EPROTO, "the %s is empty", what);
    return 0;
}

#define ACTORS_PREFIX "/v1/actors/"

enum am_http_endpoint am_http_parse_target(const char *url, size_t len, struct am_http_target *t,
                                           char *err, size_t errlen)
{
    static const struct {
        const char *path;
        enum am_http_endpoint ep;
    } fixed[] = {
        {"/v1/status", AM_HTTP_EP_STATUS},   {"/v1/members", AM_HTTP_EP_MEMBERS},
        {"/v1/ring", AM_HTTP_EP_RING},       {"/health/live", AM_HTTP_EP_LIVE},
        {"/health/ready", AM_HTTP_EP_READY}, {"/metrics", AM_HTTP_EP_METRICS},
    };
    struct http_parser_url u;
    memset(t, 0, sizeof *t);
    if (errlen)
        err[0] = '\0';
    http_parser_url_init(&u);
    if (len == 0 || http_parser_parse_url(url, len, 0, &u) || !(u.field_set & (1 << UF_PATH)))
        return AM_HTTP_EP_NOT_FOUND;
    const char *path = url + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (plen == strlen(fixed[i].path) && memcmp(path, fixed[i].path, plen) == 0)
            return fixed[i].ep;
    size_t pre = strlen(ACTORS_PREFIX);
    if (plen < pre || memcmp(path, ACTORS_PREFIX, pre) != 0)
        return AM_HTTP_EP_NOT_FOUND;
    const char *seg[3];
    size_t seglen[3];
    const char *p = path + pre, *end = path + plen;
    for (int i = 0; i < 3; i++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        if ((i < 2) != (slash != NULL)) {
            snprintf(err, errlen,
                     "an actor call is POST /v1/actors/TYPE/ID/ACTION (an id holds "
                     "'/' as %%2F)");
            return AM_HTTP_EP_NOT_FOUND;
        }
        seg[i] = p;
        seglen[i] = (size_t)((slash ? slash : end) - p);
        p = slash ? slash + 1 : end;
    }
    if (segment("type", seg[0], seglen[0], t->type, AM_MAX_TYPE, &t->type_len, err, errlen) ||
        segment("id", seg[1], seglen[1], t->id, AM_MAX_ID, &t->id_len, err, errlen) ||
        segment("action", seg[2], seglen[2], t->action, AM_MAX_ACTION, &t->action_len, err, errlen))
        return AM_HTTP_EP_BAD;
    if (memchr(t->type, '/', t->type_len)) {
        snprintf(err, errlen, "a type name cannot hold '/'");
        return AM_HTTP_EP_BAD;
    }
    return AM_HTTP_EP_ACTOR;
}

int am_http_payload(const char *body, size_t len, struct am_buf *out, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    out->len = 0;
    if (i == len) /* no payload: nil, as `amesh call` sends */
        return am_buf_append(out, "\xc0", 1) ? -ENOMEM : 0;
    char why[300];
    int rc = am_json_to_msgpack(body, len, out, why, sizeof why);
    if (rc == -ENOMEM)
        return am_errf(err, errlen, -ENOMEM, "out of memory");
    if (rc)
        return am_errf(err, errlen, AM_EPROTO, "the body is not one JSON value: %s", why);
    return 0;
}

int am_http_token_derive(const uint8_t key[32], char out[65])
{
    uint8_t h[32];
    static const char label[] = AM_HTTP_TOKEN_LABEL;
    if (crypto_generichash(h, sizeof h, (const uint8_t *)label, sizeof label - 1, key, 32))
        return -EINVAL;
    sodium_bin2hex(out, 65, h, sizeof h);
    sodium_memzero(h, sizeof h);
    return 0;
}

int am_http_token_load(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    char buf[AM_HTTP_TOKEN_MAX + 64];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return am_errf(err, errlen, -errno, "cannot read the token file %s: %s", path,
                       strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return am_errf(err, errlen, -EINVAL, "token file %s is not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return am_errf(err, errlen, -EPERM,
                       "token file %s is readable by others; chmod 600 it (mode is %04o)", path,
                       (unsigned)(st.st_mode & 07777));
    }
    ssize_t n = read(fd, buf, sizeof buf);
    int read_errno = errno;
    close(fd);
    if (n < 0)
        return am_errf(err, errlen, -read_errno, "cannot read the token file %s: %s", path,
                       strerror(read_errno));
    size_t len = (size_t)n;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                   buf[len - 1] == '\t'))
        len--;
    size_t ok = 0;
    while (ok < len && buf[ok] >= '!' && buf[ok] <= '~')
        ok++;
    if ((size_t)n == sizeof buf || ok != len || len < AM_HTTP_TOKEN_MIN ||
        len > AM_HTTP_TOKEN_MAX || len >= outlen) {
        sodium_memzero(buf, sizeof buf);
        return am_errf(err, errlen, -EINVAL,
                       "token file %s must hold one token of %d to %d printable characters "
                       "without spaces",
                       path, AM_HTTP_TOKEN_MIN, AM_HTTP_TOKEN_MAX);
    }
    memcpy(out, buf, len);
    out[len] = '\0';
    sodium_memzero(buf, sizeof buf);
    return 0;
}

/* ---- responses ------------------------------------------------------------ */

static uint64_t now_ms(const struct am_http *s)
{
    return s->loop ? uv_now(s->loop) : 0;
}

static void count_code(struct am_http *s, int code)
{
    for (int i = 0; i < AM_HTTP_NCODES; i++)
        if (am_http_codes[i] == code) {
            s->st.by_code[i]++;
            return;
        }
}

/* The Date header line (RFC 9110 wants one from a server with a clock),
 * formatted once a second. */
static const char *date_line(struct am_http *s)
{
    time_t now = time(NULL);
    struct tm tm;
    if (now != s->date_at && gmtime_r(&now, &tm) &&
        strftime(s->date, sizeof s->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm))
        s->date_at = now;
    return s->date;
}

/* Builds q's whole response. extra: more header lines, each ending in CRLF. */
static void respond(struct hreq *q, int code, const char *ctype, const void *body, size_t len,
                    const char *extra)
{
    struct am_http *s = q->c->srv;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     code, am_http_reason(code), date_line(s), ctype, len, extra ? extra : "",
                     q->last ? "Connection: close\r\n" : "");
    if (q->head_only)
        len = 0; /* HEAD: the GET's headers, no body */
    q->resp.len = 0;
    if (n < 0 || (size_t)n >= sizeof head || am_buf_reserve(&q->resp, (size_t)n + len) ||
        am_buf_append(&q->resp, head, (size_t)n) || am_buf_append(&q->resp, body, len)) {
        /* Out of memory: the connection cannot go on in order. */
        static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        am_buf_close(&q->resp);
        q->resp.data = (uint8_t *)oom; /* never freed: see req_free */
        q->resp.len = sizeof oom - 1;
        q->resp.cap = 0;
        q->last = 1;
        code = 500;
    }
    q->done = 1;
    count_code(s, code);
}

/* {"error": name, "message": msg}, msg one msgpack object (a str), shown
 * as JSON (bytes that are not UTF-8 repaired). */
static void respond_error_mp(struct hreq *q, int code, const char *name, const uint8_t *msg,
                             size_t msg_len, const char *extra)
{
    struct am_buf js, b;
    am_buf_init(&js);
    am_buf_init(&b);
    int rc = am_msgpack_to_json(msg, msg_len, &js);
    if (rc)
        rc = am_buf_set(&js, "\"\"", 2);
    char head[96];
    int n = snprintf(head, sizeof head, "{\"error\":\"%s\",\"message\":", name);
    if (rc || am_buf_append(&b, head, (size_t)n) || am_buf_append(&b, js.data, js.len) ||
        am_buf_append(&b, "}", 1))
        b.len = 0;
    respond(q, code, "application/json", b.data ? (const char *)b.data : "", b.len, extra);
    am_buf_close(&js);
    am_buf_close(&b);
}

__attribute__((format(printf, 5, 6))) static void
respond_error(struct hreq *q, int code, const char *name, const char *extra, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct am_buf b;
    msgpack_packer pk;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    if (am_mp_pack_str(&pk, msg, strlen(msg)))
        b.len = 0;
    respond_error_mp(q, code, name, b.data, b.len, extra);
    am_buf_close(&b);
}

static const char *retry_header(int status)
{
    return am_status_retryable(status) ? "Retry-After: 1\r\n" : NULL;
}

/* ---- connections: the queue ------------------------------------------------ */

static void req_free(struct hreq *q)
{
    if (q->resp.cap)
        am_buf_close(&q->resp);
    am_free(q);
}

static struct hreq *req_new(struct hconn *c)
{
    struct hreq *q = am_calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->c = c;
    am_buf_init(&q->resp);
    *c->tail = q;
    c->tail = &q->next;
    c->queued++;
    return q;
}

static void conn_free(struct hconn *c)
{
    while (c->head) {
        struct hreq *q = c->head;
        c->head = q->next;
        req_free(q);
    }
    am_buf_close(&c->in);
    am_buf_close(&c->out);
    am_buf_close(&c->wbuf);
    am_buf_close(&c->url);
    am_buf_close(&c->body);
    sodium_memzero(c->auth, sizeof c->auth);
    sodium_memzero(c->value, sizeof c->value);
    am_free(c);
}

static void on_idle(uv_idle_t *h)
{
    (void)h;
}

static void turn_add(struct hconn *c)
{
    struct am_http *s = c->srv;
    if (c->in_turn || c->closed || !c->has_tcp)
        return;
    c->in_turn = 1;
    c->turn_next = s->turn;
    s->turn = c;
    uv_check_start(&s->turn_check, on_turn);
    uv_idle_start(&s->turn_idle, on_idle);
}

static size_t pending_out(const struct hconn *c)
{
    return c->out.len + c->wbuf.len;
}

static int over_limits(const struct hconn *c)
{
    return c->queued >= c->srv->o.max_pipeline || pending_out(c) > OUT_LIMIT;
}

/* Moves the finished responses at the head of the queue to the output. */
static void flush(struct hconn *c)
{
    while (c->head && c->head->done) {
        struct hreq *q = c->head;
        c->head = q->next;
        if (!c->head)
            c->tail = &c->head;
        c->queued--;
        if (c->out.len == 0 && q->resp.cap) {
            struct am_buf t = c->out;
            c->out = q->resp;
            q->resp = t;
        } else if (am_buf_append(&c->out, q->resp.data, q->resp.len)) {
            c->stop = 1; /* out of memory: the order is lost, so is the connection */
            c->close_after_write = 1;
        }
        if (q->last)
            c->close_after_write = 1;
        req_free(q);
    }
    if (c->queued == 0)
        c->last_ms = now_ms(c->srv);
    turn_add(c);
}

/* ---- calls ------------------------------------------------------------------ */

static int type_slot(struct am_http *s, const char *type, int status)
{
    struct am_http_stats *st = &s->st;
    if (st->ntypes == 0) {
        snprintf(st->types[0].type, sizeof st->types[0].type, "(other)");
        st->ntypes = 1;
    }
    for (size_t i = 1; i < st->ntypes; i++)
        if (strcmp(st->types[i].type, type) == 0)
            return (int)i;
    /* A type gets its own series once an answer shows it exists (its
     * handler or mailbox was reached), so made-up names cannot fill the
     * table. */
    int exists = status == AM_ST_OK || status == AM_ST_UNKNOWN_ACTION ||
                 status == AM_ST_INVALID_ARG || status == AM_ST_HANDLER || status == AM_ST_BUSY ||
                 status == AM_ST_STORAGE;
    if (!exists || st->ntypes > AM_HTTP_MAX_TYPES)
        return 0;
    snprintf(st->types[st->ntypes].type, sizeof st->types[0].type, "%s", type);
    return (int)st->ntypes++;
}

static void record_call(struct am_http *s, struct hreq *q, int status)
{
    double secs = (double)(uv_hrtime() - q->t0) / 1e9;
    int i = 0;
    while (i < AM_HTTP_BUCKETS && secs > am_http_buckets[i])
        i++;
    if (i < AM_HTTP_BUCKETS)
        s->st.call_bucket[i]++;
    else
        s->st.call_over++;
    s->st.call_count++;
    s->st.call_sum += secs;
    int slot = type_slot(s, q->type, status);
    int idx = status >= 0 && status < AM_ST__COUNT ? status : AM_ST__COUNT;
    s->st.types[slot].by_status[idx]++;
}

static void finish_call(struct hreq *q, int status, const uint8_t *body, size_t len)
{
    struct hconn *c = q->c;
    record_call(c->srv, q, status);
    if (status == AM_ST_OK) {
        struct am_buf js;
        am_buf_init(&js);
        int rc = am_msgpack_to_json(body, len, &js);
        if (rc == 0)
            respond(q, 200, "application/json", js.data, js.len, NULL);
        else
            respond_error(q, 500, "internal", NULL, "the reply cannot be shown as JSON: %s",
                          am_strerror(rc));
        am_buf_close(&js);
    } else {
        respond_error_mp(q, am_http_status_code(status), am_status_name(status), body, len,
                         retry_header(status));
    }
}

/* The reply callback of a call (am_reply_fn). */
static void on_call_reply(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct hreq *q = ctx;
    struct hconn *c = q->c;
    (void)id;
    c->inflight--;
    if (c->closed) { /* its client is gone; the server may be too */
        q->done = 1;
        if (c->inflight == 0)
            conn_free(c);
        return;
    }
    finish_call(q, status, body, len);
    flush(c);
}

static void start_call(struct hconn *c, struct hreq *q, const struct am_http_target *t)
{
    struct am_http *s = c->srv;
    char err[400];
    struct am_buf payload;
    am_buf_init(&payload);
    int rc = am_http_payload(c->body.len ? (const char *)c->body.data : "", c->body.len, &payload,
                             err, sizeof err);
    if (rc) {
        respond_error(q, rc == -ENOMEM ? 500 : 400, rc == -ENOMEM ? "internal" : "bad_request",
                      NULL, "%s", err);
    } else if (payload.len > s->o.max_body) {
        respond_error(q, 413, "too_large", NULL,
                      "payload of %zu bytes exceeds the limit of %zu bytes", payload.len,
                      s->o.max_body);
    } else if (s->stopping) {
        respond_error(q, 503, "shutting_down", "Retry-After: 1\r\n",
                      "the node is stopping; retry on another node");
    } else {
        snprintf(q->type, sizeof q->type, "%s", t->type);
        q->t0 = uv_hrtime();
        struct am_request r = {
            .kind = AM_MSG_CALL,
            .id = ++s->next_id,
            .has_id = 1,
            .type = t->type,
            .type_len = (uint32_t)t->type_len,
            .actor = t->id,
            .actor_len = (uint32_t)t->id_len,
            .action = t->action,
            .action_len = (uint32_t)t->action_len,
            .payload = payload.data,
            .payload_len = (uint32_t)payload.len,
        };
        c->inflight++;
        rc = s->hooks.route ? s->hooks.route(s->hooks.arg, &r, on_call_reply, q, err, sizeof err)
                            : 0;
        if (rc == 0)
            rc = s->rt ? am_runtime_submit(s->rt, r.id, r.type, r.type_len, r.actor, r.actor_len,
                                           r.action, r.action_len, r.payload, r.payload_len,
                                           on_call_reply, q, err, sizeof err)
                       : am_errf(err, sizeof err, AM_EINTERNAL, "this server runs no actors");
        if (rc < 0) { /* refused at once: the callback will not run */
            c->inflight--;
            struct am_buf b;
            msgpack_packer pk;
            am_buf_init(&b);
            am_mp_packer_init(&pk, &b);
            am_mp_pack_str(&pk, err, strlen(err));
            finish_call(q, am_status_of(rc), b.data, b.len);
            am_buf_close(&b);
        }
        /* else q may be finished and freed already: not touched again */
    }
    am_buf_close(&payload);
}

/* ---- requests ---------------------------------------------------------------- */

/* The Authorization header holds "Bearer <token in force>"; compared as
 * hashes, so the time taken does not depend on the bytes that match. */
static int authorized(struct hconn *c)
{
    struct am_http *s = c->srv;
    if (!s->token_len)
        return 1;
    if (!c->has_auth || c->auth_len < 7 || strncasecmp(c->auth, "Bearer ", 7) != 0)
        return 0;
    const char *tok = c->auth + 7;
    size_t len = c->auth_len - 7;
    while (len && *tok == ' ') {
        tok++;
        len--;
    }
    while (len && (tok[len - 1] == ' ' || tok[len - 1] == '\t'))
        len--;
    uint8_t h[32];
    crypto_generichash(h, sizeof h, (const uint8_t *)tok, len, NULL, 0);
    int ok = sodium_memcmp(h, s->token_hash, sizeof h) == 0;
    sodium_memzero(h, sizeof h);
    return ok;
}

static void serve_map(struct hconn *c, struct hreq *q, int (*fn)(void *, msgpack_packer *))
{
    struct am_http *s = c->srv;
    struct am_buf mp, js;
    msgpack_packer pk;
    am_buf_init(&mp);
    am_buf_init(&js);
    am_mp_packer_init(&pk, &mp);
    if (!fn)
        respond_error(q, 404, "not_found", NULL, "this node runs without membership");
    else if (fn(s->hooks.arg, &pk) || am_msgpack_to_json(mp.data, mp.len, &js))
        respond_error(q, 500, "internal", NULL, "out of memory");
    else
        respond(q, 200, "application/json", js.data, js.len, NULL);
    am_buf_close(&mp);
    am_buf_close(&js);
}

static void serve_metrics(struct hconn *c, struct hreq *q)
{
    struct am_http *s = c->srv;
    struct am_buf mp, text;
    msgpack_packer pk;
    am_buf_init(&mp);
    am_buf_init(&text);
    am_mp_packer_init(&pk, &mp);
    if (s->hooks.status && s->hooks.status(s->hooks.arg, &pk))
        mp.len = 0;
    if (am_metrics_render(&text, mp.len ? mp.data : NULL, mp.len, &s->st))
        respond_error(q, 500, "internal", NULL, "out of memory");
    else
        respond(q, 200, AM_METRICS_CONTENT_TYPE, text.data ? (const char *)text.data : "", text.len,
                NULL);
    am_buf_close(&mp);
    am_buf_close(&text);
}

static void serve_ready(struct hconn *c, struct hreq *q)
{
    struct am_http *s = c->srv;
    char why[300] = "";
    static const char ready[] = "{\"status\":\"ready\"}";
    if (s->stopping)
        respond_error(q, 503, "shutting_down", "Retry-After: 1\r\n", "the node is stopping");
    else if (s->hooks.ready && !s->hooks.ready(s->hooks.arg, why, sizeof why))
        respond_error(q, 503, "unavailable", "Retry-After: 1\r\n", "%s", why);
    else
        respond(q, 200, "application/json", ready, sizeof ready - 1, NULL);
}

/* One whole request was read: answer it or start its call. */
static void dispatch(struct hconn *c, int keep)
{
    struct am_http *s = c->srv;
    struct hreq *q = req_new(c);
    if (!q) { /* out of memory: the order cannot be kept */
        c->stop = 1;
        c->close_after_write = 1;
        turn_add(c);
        return;
    }
    q->last = !keep || s->stopping || c->p.upgrade;
    q->head_only = c->p.method == HTTP_HEAD;
    struct am_http_target t;
    char err[300];
    enum am_http_endpoint ep = am_http_parse_target(c->url.len ? (const char *)c->url.data : "",
                                                    c->url.len, &t, err, sizeof err);
    int want = ep == AM_HTTP_EP_ACTOR || ep == AM_HTTP_EP_BAD ? HTTP_POST : HTTP_GET;
    int guarded = ep == AM_HTTP_EP_ACTOR || ep == AM_HTTP_EP_BAD || ep == AM_HTTP_EP_STATUS ||
                  ep == AM_HTTP_EP_MEMBERS || ep == AM_HTTP_EP_RING ||
                  (ep == AM_HTTP_EP_METRICS && s->o.auth_all);
    static const char live[] = "{\"status\":\"live\"}";
    if (ep == AM_HTTP_EP_NOT_FOUND) {
        respond_error(q, 404, "not_found", NULL, "%s",
                      err[0] ? err
                             : "no such endpoint (POST /v1/actors/TYPE/ID/ACTION, GET "
                               "/v1/status, /v1/members, /v1/ring, /health/live, "
                               "/health/ready, /metrics)");
    } else if (guarded && !authorized(c)) {
        respond_error(q, 401, "unauthorized",
                      c->has_auth ? "WWW-Authenticate: Bearer realm=\"amesh\", "
                                    "error=\"invalid_token\"\r\n"
                                  : "WWW-Authenticate: Bearer realm=\"amesh\"\r\n",
                      "%s",
                      c->has_auth ? "the bearer token is not this node's"
                                  : "this node's HTTP API needs Authorization: Bearer TOKEN");
    } else if (ep == AM_HTTP_EP_BAD) {
        respond_error(q, 400, "bad_request", NULL, "%s", err);
    } else if (c->p.method != want && !(want == HTTP_GET && c->p.method == HTTP_HEAD)) {
        respond_error(q, 405, "method_not_allowed",
                      want == HTTP_POST ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n", "use %s",
                      want == HTTP_POST ? "POST" : "GET");
    } else {
        switch (ep) {
        case AM_HTTP_EP_ACTOR:
            start_call(c, q, &t); /* q may be answered and gone after this */
            break;
        case AM_HTTP_EP_STATUS:
            serve_map(c, q, s->hooks.status);
            break;
        case AM_HTTP_EP_MEMBERS:
            serve_map(c, q, s->hooks.members);
            break;
        case AM_HTTP_EP_RING:
            serve_map(c, q, s->hooks.ring);
            break;
        case AM_HTTP_EP_LIVE:
            respond(q, 200, "application/json", live, sizeof live - 1, NULL);
            break;
        case AM_HTTP_EP_READY:
            serve_ready(c, q);
            break;
        default:
            serve_metrics(c, q);
            break;
        }
    }
    flush(c);
}

/* ---- http-parser callbacks ------------------------------------------------------ */

static int refuse(struct hconn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(struct hconn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fail_msg, sizeof c->fail_msg, fmt, ap);
    va_end(ap);
    c->fail = code;
    return -1;
}

static int count_header(struct hconn *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > AM_HTTP_MAX_HEADER)
        return refuse(c, 431, "the request line and headers exceed %d bytes", AM_HTTP_MAX_HEADER);
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct hconn *c = p->data;
    c->url.len = c->body.len = 0;
    c->field_len = c->value_len = c->auth_len = c->header_bytes = 0;
    c->field_over = c->in_value = c->value_over = c->has_auth = c->expect_continue = 0;
    c->hdr = H_NONE;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct hconn *c = p->data;
    if (count_header(c, len))
        return -1;
    if (am_buf_append(&c->url, at, len))
        return refuse(c, 500, "out of memory");
    return 0;
}

static void end_header(struct hconn *c)
{
    if (!c->in_value)
        return;
    if (c->hdr == H_AUTH && !c->value_over) {
        memcpy(c->auth, c->value, c->value_len);
        c->auth_len = c->value_len;
        c->has_auth = 1;
    } else if (c->hdr == H_EXPECT && c->value_len == 12 &&
               strncasecmp(c->value, "100-continue", 12) == 0) {
        c->expect_continue = 1;
    }
    c->in_value = c->value_over = c->field_over = 0;
    c->field_len = c->value_len = 0;
    c->hdr = H_NONE;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct hconn *c = p->data;
    if (count_header(c, len))
        return -1;
    end_header(c);
    if (c->field_len + len < FIELD_MAX) {
        memcpy(c->field + c->field_len, at, len);
        c->field_len += len;
    } else {
        c->field_over = 1;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct hconn *c = p->data;
    if (count_header(c, len))
        return -1;
    if (!c->in_value) {
        c->in_value = 1;
        c->hdr = H_NONE;
        if (!c->field_over && c->field_len == 13 && strncasecmp(c->field, "authorization", 13) == 0)
            c->hdr = H_AUTH;
        else if (!c->field_over && c->field_len == 6 && strncasecmp(c->field, "expect", 6) == 0)
            c->hdr = H_EXPECT;
    }
    if (c->hdr == H_NONE)
        return 0;
    if (c->value_len + len <= VALUE_MAX) {
        memcpy(c->value + c->value_len, at, len);
        c->value_len += len;
    } else {
        c->value_over = 1;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct hconn *c = p->data;
    struct am_http *s = c->srv;
    end_header(c);
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > s->o.max_body)
        return refuse(c, 413, "a body of %llu bytes exceeds the limit of %zu bytes",
                      (unsigned long long)p->content_length, s->o.max_body);
    /* A client that waits for 100 Continue before its body gets it when
     * nothing is queued before it (an answer now would be out of order). */
    if (c->expect_continue && !c->head && p->content_length > 0 &&
        am_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0)
        turn_add(c);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct hconn *c = p->data;
    struct am_http *s = c->srv;
    if (c->body.len + len > s->o.max_body)
        return refuse(c, 413, "the body exceeds the limit of %zu bytes", s->o.max_body);
    if (am_buf_append(&c->body, at, len))
        return refuse(c, 500, "out of memory");
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct hconn *c = p->data;
    struct am_http *s = c->srv;
    s->st.requests++;
    c->last_ms = now_ms(s);
    int keep = http_should_keep_alive(p);
    dispatch(c, keep);
    if (!keep || p->upgrade || s->stopping)
        c->stop = 1;
    if (c->body.cap > READ_CHUNK)
        am_buf_close(&c->body);
    /* One request at a time: process_input checks the bounds before the
     * next one. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Something http-parser or a callback refused: its answer goes last. */
static void parse_error(struct hconn *c, enum http_errno e)
{
    struct am_http *s = c->srv;
    struct hreq *q = req_new(c);
    s->st.requests++;
    c->stop = 1;
    c->close_after_write = 1;
    if (!q) {
        turn_add(c);
        return;
    }
    q->last = 1;
    if (c->fail == 413)
        respond_error(q, 413, "too_large", NULL, "%s", c->fail_msg);
    else if (c->fail == 431 || e == HPE_HEADER_OVERFLOW)
        respond_error(q, 431, "header_too_large", NULL,
                      "the request line and headers exceed %d "
                      "bytes",
                      AM_HTTP_MAX_HEADER);
    else if (c->fail)
        respond_error(q, c->fail, "internal", NULL, "%s", c->fail_msg);
    else
        respond_error(q, 400, "bad_request", NULL, "malformed HTTP request: %s",
                      http_errno_description(e));
    flush(c);
}

/* Parses what c->in holds, one request at a time, while the bounds allow. */
static void process_input(struct hconn *c)
{
    size_t off = 0;
    while (off < c->in.len && !c->stop && !c->closing) {
        if (over_limits(c)) {
            c->paused = 1;
            break;
        }
        size_t left = c->in.len - off;
        size_t n = http_parser_execute(&c->p, &settings, (const char *)c->in.data + off, left);
        off += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->p, 0);
            continue;
        }
        if (e != HPE_OK) {
            parse_error(c, e);
            off = c->in.len;
            break;
        }
        if (n < left) /* an upgrade: what follows is not HTTP */
            c->stop = 1;
    }
    if (c->stop || c->closing)
        off = c->in.len;
    am_buf_consume(&c->in, off);
    if (c->in.len == 0 && c->in.cap > READ_CHUNK)
        am_buf_close(&c->in);
    if (c->has_tcp && !c->closing && (c->paused || c->stop))
        uv_read_stop((uv_stream_t *)&c->tcp);
}

static void conn_init(struct hconn *c, struct am_http *s)
{
    c->srv = s;
    c->tail = &c->head;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    c->last_ms = now_ms(s);
}

/* ---- without a socket --------------------------------------------------------- */

struct am_http_conn *am_http_conn_open(struct am_http *s)
{
    struct hconn *c = am_calloc(1, sizeof *c);
    if (c)
        conn_init(c, s);
    return (struct am_http_conn *)c;
}

int am_http_conn_feed(struct am_http_conn *cc, const void *data, size_t len)
{
    struct hconn *c = (struct hconn *)cc;
    if (!c->stop && len && am_buf_append(&c->in, data, len) == 0)
        process_input(c);
    return c->stop;
}

int am_http_conn_poll(struct am_http_conn *cc)
{
    struct hconn *c = (struct hconn *)cc;
    if (c->paused && !over_limits(c)) {
        c->paused = 0;
        process_input(c);
    }
    return c->stop;
}

struct am_buf *am_http_conn_output(struct am_http_conn *cc)
{
    return &((struct hconn *)cc)->out;
}

void am_http_conn_close(struct am_http_conn *cc)
{
    struct hconn *c = (struct hconn *)cc;
    if (!c)
        return;
    c->closed = c->closing = 1;
    if (c->inflight == 0)
        conn_free(c);
}

/* ---- sockets ------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct hconn *c = h->data;
    (void)suggested;
    if (am_buf_reserve(&c->in, READ_CHUNK)) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = (char *)c->in.data + c->in.len;
    buf->len = c->in.cap - c->in.len;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct hconn *c = stream->data;
    (void)buf;
    if (c->lingering) { /* only waiting for the client to close */
        if (nread < 0)
            conn_close(c);
        else
            c->srv->st.bytes_in += (uint64_t)nread;
        return;
    }
    if (nread == UV_EOF && c->queued) {
        /* The client sent all it will; its answers still go out. */
        c->stop = 1;
        c->close_after_write = 1;
        uv_read_stop(stream);
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->srv->st.bytes_in += (uint64_t)nread;
    c->in.len += (size_t)nread;
    process_input(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct hconn *c = req->data;
    c->writing = 0;
    c->srv->st.bytes_out += c->wbuf.len;
    c->wbuf.len = 0;
    if (c->wbuf.cap > OUT_LIMIT)
        am_buf_close(&c->wbuf);
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->last_ms = now_ms(c->srv);
    turn_add(c);
}

static void start_write(struct hconn *c)
{
    uv_buf_t direct = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &direct, 1);
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    if (n > 0) {
        c->srv->st.bytes_out += (uint64_t)n;
        c->last_ms = now_ms(c->srv);
        am_buf_consume(&c->out, (size_t)n);
        if (c->out.len == 0) {
            if (c->out.cap > OUT_LIMIT)
                am_buf_close(&c->out);
            if (c->paused || c->close_after_write)
                turn_add(c);
            return;
        }
    }
    struct am_buf t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    uv_buf_t b = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) == 0)
        c->writing = 1;
    else
        conn_close(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct hconn *c = req->data;
    if (status < 0 && !c->closing)
        conn_close(c);
}

/* Ends a connection whose last response is written: FIN, then reads what
 * the client still sends until it closes or LINGER_MS pass (on_sweep). A
 * closing server does not wait. */
static void conn_finish(struct hconn *c)
{
    if (c->srv->closing || c->lingering) {
        conn_close(c);
        return;
    }
    c->lingering = 1;
    c->linger_until = uv_now(c->srv->loop) + LINGER_MS;
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown)) {
        conn_close(c);
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc && rc != UV_EALREADY) /* the client had closed its side already */
        conn_close(c);
}

static int done_with(const struct hconn *c)
{
    return c->close_after_write && c->queued == 0 && !c->writing && !pending_out(c);
}

static void on_turn(uv_check_t *h)
{
    struct am_http *s = h->data;
    struct hconn *list = s->turn;
    s->turn = NULL;
    while (list) {
        struct hconn *c = list;
        list = c->turn_next;
        c->in_turn = 0;
        if (c->closing)
            continue;
        if (c->paused && !over_limits(c) && !s->closing) {
            c->paused = 0;
            process_input(c);
            if (!c->paused && !c->stop && !c->closing)
                uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        }
        if (!c->writing && c->out.len)
            start_write(c);
        if (!c->closing && !c->lingering && done_with(c))
            conn_finish(c);
    }
    if (!s->turn) {
        uv_check_stop(&s->turn_check);
        uv_idle_stop(&s->turn_idle);
    }
    maybe_finish_close(s);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct hconn *c = h->data;
    struct am_http *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->st.connections--;
    c->closed = 1;
    if (c->in_turn) {
        struct hconn **pp = &s->turn;
        while (*pp != c)
            pp = &(*pp)->turn_next;
        *pp = c->turn_next;
        c->in_turn = 0;
    }
    if (c->inflight == 0)
        conn_free(c);
    maybe_finish_close(s);
}

static void conn_close(struct hconn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_reject_closed(uv_handle_t *h)
{
    am_free(h);
}

/* Over --max-connections: accepted only to be told so, then closed. */
static void reject(struct am_http *s, uv_stream_t *listener, const char *msg)
{
    uv_tcp_t *t = am_malloc(sizeof *t);
    if (!t)
        return;
    uv_tcp_init(s->loop, t);
    if (uv_accept(listener, (uv_stream_t *)t) == 0) {
        char resp[512];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
                         strlen(msg), msg);
        uv_buf_t ub = uv_buf_init(resp, (unsigned)n);
        uv_try_write((uv_stream_t *)t, &ub, 1);
    }
    s->st.rejected++;
    count_code(s, 503);
    uv_close((uv_handle_t *)t, on_reject_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct am_http *s = listener->data;
    if (status < 0) {
        am_log_warn("HTTP accept failed: %s", uv_strerror(status));
        return;
    }
    if (s->st.connections >= s->o.max_connections) {
        reject(s, listener,
               "{\"error\":\"overloaded\",\"message\":\"the node has as many HTTP "
               "connections as it takes; retry later\"}");
        return;
    }
    struct hconn *c = am_calloc(1, sizeof *c);
    if (!c) {
        reject(s, listener, "{\"error\":\"overloaded\",\"message\":\"out of memory\"}");
        return;
    }
    conn_init(c, s);
    c->has_tcp = 1;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->st.connections++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    s->st.accepted++;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* Closes the connections that completed no request for timeout_ms while
 * nothing of theirs waits on the node: slow clients and idle ones. */
static void on_sweep(uv_timer_t *h)
{
    struct am_http *s = h->data;
    uint64_t now = uv_now(s->loop);
    for (struct hconn *c = s->conns; c; c = c->next) {
        if (c->closing)
            continue;
        if (c->lingering) {
            if (now >= c->linger_until)
                conn_close(c);
        } else if (s->o.timeout_ms && c->queued == 0 && now - c->last_ms >= s->o.timeout_ms) {
            s->st.timed_out++;
            conn_close(c);
        }
    }
}

/* ---- the server ------------------------------------------------------------------------- */

int am_http_new(struct am_http **out, uv_loop_t *loop, struct am_runtime *rt,
                const struct am_http_opts *o, const struct am_http_hooks *hooks, char *err,
                size_t errlen)
{
    struct am_http *s = am_calloc(1, sizeof *s);
    if (!s)
        return am_errf(err, errlen, -ENOMEM, "out of memory");
    s->loop = loop;
    s->rt = rt;
    s->o = *o;
    s->o.key = NULL;
    s->o.token_file = NULL;
    if (!s->o.max_pipeline)
        s->o.max_pipeline = 1;
    s->hooks = *hooks;
    int rc = 0;
    if (sodium_init() < 0)
        rc = am_errf(err, errlen, -EINVAL, "libsodium failed to initialise");
    if (!rc && o->token_file && o->token_file[0])
        rc = am_http_token_load(o->token_file, s->token, sizeof s->token, err, errlen);
    else if (!rc && o->key)
        rc = am_http_token_derive(o->key, s->token);
    if (rc) {
        sodium_memzero(s, sizeof *s);
        am_free(s);
        return rc;
    }
    s->token_len = strlen(s->token);
    if (s->token_len)
        crypto_generichash(s->token_hash, sizeof s->token_hash, (const uint8_t *)s->token,
                           s->token_len, NULL, 0);
    /* http-parser's own bound on the header section (process-wide; this is
     * the only parser user) gives 431 as the per-request count does. */
    http_parser_set_max_header_size(AM_HTTP_MAX_HEADER);
    if (loop) {
        uv_tcp_init(loop, &s->listener);
        uv_check_init(loop, &s->turn_check);
        uv_idle_init(loop, &s->turn_idle);
        uv_timer_init(loop, &s->sweep);
        uv_timer_init(loop, &s->drain_timer);
        s->listener.data = s->turn_check.data = s->turn_idle.data = s;
        s->sweep.data = s->drain_timer.data = s;
        s->handles_open = 5;
    }
    *out = s;
    return 0;
}

int am_http_listen(struct am_http *s, const struct sockaddr_in *addr, char *err, size_t errlen)
{
    am_addr_format(addr, s->where, sizeof s->where);
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc)
        return am_errf(err, errlen, rc, "cannot listen for HTTP on %s: %s", s->where,
                       uv_strerror(rc));
    uint64_t period = s->o.timeout_ms ? s->o.timeout_ms / 4 : 1000;
    period = period < 50 ? 50 : period > 1000 ? 1000 : period;
    uv_timer_start(&s->sweep, on_sweep, period, period);
    uv_unref((uv_handle_t *)&s->sweep);
    am_log_info("HTTP API on %s (%s)", s->where,
                s->token_len ? (s->o.auth_all ? "bearer token required, /metrics included"
                                              : "bearer token required")
                             : "open: no cluster key or token file");
    return 0;
}

int am_http_start(struct am_http **out, uv_loop_t *loop, const struct sockaddr_in *addr,
                  struct am_runtime *rt, const struct am_http_opts *o,
                  const struct am_http_hooks *hooks, char *err, size_t errlen)
{
    struct am_http *s;
    int rc = am_http_new(&s, loop, rt, o, hooks, err, errlen);
    if (rc)
        return rc;
    rc = am_http_listen(s, addr, err, errlen);
    if (rc) {
        am_http_close(s, NULL, NULL);
        return rc;
    }
    *out = s;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct am_http *s = h->data;
    if (--s->handles_open > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    sodium_memzero(s, sizeof *s);
    am_free(s);
    if (done)
        done(arg);
}

void am_http_stop_accepting(struct am_http *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = 1;
    if (s->loop && !uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, on_handle_closed);
}

/* Finishes am_http_close once every connection is gone: the handles close,
 * the last one frees the server. */
static void maybe_finish_close(struct am_http *s)
{
    if (s->closing != 1)
        return;
    for (struct hconn *c = s->conns; c; c = c->next)
        if (!c->closing && c->queued == 0 && !c->writing && !pending_out(c))
            conn_close(c);
    if (s->conns)
        return;
    s->closing = 2;
    uv_close((uv_handle_t *)&s->turn_check, on_handle_closed);
    uv_close((uv_handle_t *)&s->turn_idle, on_handle_closed);
    uv_close((uv_handle_t *)&s->sweep, on_handle_closed);
    uv_close((uv_handle_t *)&s->drain_timer, on_handle_closed);
}

static void on_drain_timeout(uv_timer_t *h)
{
    struct am_http *s = h->data;
    int n = 0;
    for (struct hconn *c = s->conns; c; c = c->next)
        if (!c->closing) {
            conn_close(c);
            n++;
        }
    if (n)
        am_log_warn("closed %d HTTP connections that did not read their last responses in %d ms", n,
                    DRAIN_MS);
}

void am_http_close(struct am_http *s, void (*done)(void *arg), void *arg)
{
    if (!s)
        return;
    if (!s->loop) { /* no sockets: the caller closed its connections */
        sodium_memzero(s, sizeof *s);
        am_free(s);
        if (done)
            done(arg);
        return;
    }
    am_http_stop_accepting(s);
    s->closing = 1;
    s->close_done = done;
    s->close_arg = arg;
    for (struct hconn *c = s->conns; c; c = c->next) {
        c->stop = 1;
        if (!c->closing)
            uv_read_stop((uv_stream_t *)&c->tcp);
    }
    uv_timer_start(&s->drain_timer, on_drain_timeout, DRAIN_MS, 0);
    maybe_finish_close(s);
}

void am_http_get_stats(const struct am_http *s, struct am_http_stats *st)
{
    *st = s->st;
}

const char *am_http_token(const struct am_http *s)
{
    return s->token;
}
