/* test_http.c - the HTTP API (--http) of real `amesh node` processes on
 * 127.0.6.x, spoken to over plain sockets by a small HTTP/1.1 client:
 *
 *   - three nodes with a cluster key: a call to an actor another node owns,
 *     through each node (forwarded to the owner); status, members and ring
 *     as JSON; every error status reached for real: 400 (bad JSON, invalid
 *     argument, malformed HTTP), 401 (no token, another token), 404
 *     (unknown type, action, path), 405 (with Allow), 413 (body over
 *     --max-payload, then closed), 429 (pipelined calls over a --mailbox
 *     of 1, answered in order), 431 (headers over 8 KiB), 504 then 503
 *     (the owner SIGSTOPped past a short --forward-timeout, then its stream
 *     in backoff), 503 from a stopping node (readiness and calls); a slow
 *     client closed after --http-timeout; /metrics before and after a load
 *     (counters moved by exactly the load; `promtool check metrics` when
 *     promtool is installed); every node still serving afterwards and
 *     exiting 0;
 *   - one node with a token file and --http-auth all that cannot join:
 *     not ready (503), /metrics guarded, --max-connections refused with 503. */
#define _GNU_SOURCE /* memmem */
#include "cluster.h"
#include "proc.h"

#include "err.h"
#include "http.h"
#include "ring.h"
#include "seal.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NODES 4
#define IO_MS 10000
#define MAX_PAYLOAD 65536

static struct {
    char dir[256];
    struct proc_node nodes[NODES];
    char names[NODES][CLUSTER_NAME_MAX];
    char http[NODES][32];
    char key_file[300];
    char token[AM_HTTP_TOKEN_MAX + 1];
    int stopped; /* a SIGSTOPped node to resume at teardown, or -1 */
} w;

static const struct cluster cluster = {CLUSTER_OF(w), .key_file = w.key_file,
                                       .stopped = &w.stopped};

static void setup(void)
{
    memset(&w, 0, sizeof w);
    cluster_setup(&cluster, "http");
}

static void teardown(void)
{
    cluster_teardown(&cluster, NULL);
}

TestSuite(http, .init = setup, .fini = teardown);

/* ---- a small HTTP/1.1 client ---------------------------------------------- */

struct hc {
    int fd;
    char *in;
    size_t len, cap;
};

struct hresp {
    int code;
    char head[2048];
    char body[65536];
    size_t body_len;
};

/* 0 or a negated errno (then c->fd is -1). */
static int hc_open(struct hc *c, const char *addr)
{
    memset(c, 0, sizeof *c);
    c->fd = proc_tcp_connect(addr, NULL);
    cr_assert(c->fd != -EINVAL, "bad address %s", addr);
    return c->fd < 0 ? c->fd : 0;
}

static void hc_close(struct hc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    c->len = c->cap = 0;
}

static int hc_send(struct hc *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (size_t)n;
    }
    return 0;
}

/* Reads more into c->in; 0, -EPIPE at EOF or reset, -ETIMEDOUT. */
static int hc_fill(struct hc *c, int64_t deadline)
{
    int left = (int)(deadline - proc_now_ms());
    if (left <= 0)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, left) <= 0)
        return -ETIMEDOUT;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->in = realloc(c->in, c->cap);
        cr_assert_not_null(c->in);
    }
    ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
        return -EPIPE;
    if (n > 0)
        c->len += (size_t)n;
    return 0;
}

/* The next response: 0, -EPIPE (closed first) or -ETIMEDOUT. */
static int hc_read(struct hc *c, struct hresp *r, int timeout_ms)
{
    int64_t deadline = proc_now_ms() + timeout_ms;
    memset(r, 0, sizeof *r);
    for (;;) {
        char *end = c->len ? memmem(c->in, c->len, "\r\n\r\n", 4) : NULL;
        if (end) {
            size_t hlen = (size_t)(end - c->in) + 4;
            cr_assert(hlen < sizeof r->head, "a response head of %zu bytes", hlen);
            memcpy(r->head, c->in, hlen);
            r->head[hlen] = '\0';
            cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d ", &r->code), 1, "%s", r->head);
            const char *cl = strstr(r->head, "Content-Length: ");
            cr_assert_not_null(cl, "%s", r->head);
            size_t blen = (size_t)atol(cl + 16);
            cr_assert(blen < sizeof r->body, "a body of %zu bytes", blen);
            while (c->len < hlen + blen) {
                int rc = hc_fill(c, deadline);
                if (rc)
                    return rc;
            }
            memcpy(r->body, c->in + hlen, blen);
            r->body[blen] = '\0';
            r->body_len = blen;
            memmove(c->in, c->in + hlen + blen, c->len - hlen - blen);
            c->len -= hlen + blen;
            if (r->code == 100)
                continue;
            return 0;
        }
        int rc = hc_fill(c, deadline);
        if (rc)
            return rc;
    }
}

/* 1 when the node closes the connection within timeout_ms (responses
 * before the close are skipped). */
static int hc_closed(struct hc *c, int timeout_ms)
{
    int64_t deadline = proc_now_ms() + timeout_ms;
    struct hresp *r = malloc(sizeof *r);
    int rc = 0;
    while (rc != -EPIPE && rc != -ETIMEDOUT)
        rc = hc_read(c, r, (int)(deadline - proc_now_ms()));
    free(r);
    return rc == -EPIPE;
}

/* A request's bytes: auth adds the token. */
static void request(char *out, size_t outlen, const char *method, const char *path,
                    const char *body, int auth, const char *extra)
{
    char authz[400] = "";
    if (auth)
        snprintf(authz, sizeof authz, "Authorization: Bearer %s\r\n", w.token);
    snprintf(out, outlen, "%s %s HTTP/1.1\r\nHost: amesh\r\n%s%sContent-Length: %zu\r\n\r\n%s",
             method, path, authz, extra ? extra : "", body ? strlen(body) : 0, body ? body : "");
}

/* One request on a connection of its own; the response in *r. */
static void one(int node, const char *method, const char *path, const char *body, int auth,
                struct hresp *r)
{
    struct hc c;
    char req[4096];
    cr_assert_eq(hc_open(&c, w.http[node]), 0, "connect %s", w.http[node]);
    request(req, sizeof req, method, path, body, auth, NULL);
    cr_assert_eq(hc_send(&c, req, strlen(req)), 0);
    int rc = hc_read(&c, r, IO_MS);
    cr_assert_eq(rc, 0, "%s %s on %s: %s", method, path, w.names[node], strerror(-rc));
    hc_close(&c);
}

static struct hresp *resp(void)
{
    static struct hresp r;
    return &r;
}

/* The reply's JSON (caller json_decref's it). */
static json_t *json_of(const struct hresp *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, JSON_DECODE_ANY, &e);
    cr_assert_not_null(j, "not JSON (%s): %s", e.text, r->body);
    return j;
}

static void expect_error(const struct hresp *r, int code, const char *name)
{
    cr_assert_eq(r->code, code, "wanted %d %s, got:\n%s%s", code, name, r->head, r->body);
    json_t *j = json_of(r);
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")), name, "%s", r->body);
    cr_assert(json_is_string(json_object_get(j, "message")), "%s", r->body);
    json_decref(j);
}

static int has_header(const struct hresp *r, const char *line)
{
    return strstr(r->head, line) != NULL;
}

/* ---- nodes ------------------------------------------------------------------ */

static void node_start(int i, const char *const *more)
{
    cluster_node_init(&cluster, i, "127.0.6");
    snprintf(w.http[i], sizeof w.http[i], "127.0.6.%d:8080", i + 1);
    const char *extra[32];
    int k = 0;
    extra[k++] = "--http";
    extra[k++] = w.http[i];
    while (more && *more)
        extra[k++] = *more++;
    extra[k] = NULL;
    cluster_node_start(&cluster, i, -1, extra);
}

/* Three nodes with a cluster key, a mailbox of 1, a forward timeout of
 * 1 s and an HTTP timeout of 1.5 s, until each is ready by HTTP and they
 * agree on one ring. */
static void cluster_start(void)
{
    struct proc_result pr;
    uint8_t key[AM_KEY_BYTES];
    char err[1200];
    snprintf(w.key_file, sizeof w.key_file, "%s/cluster.key", w.dir);
    cr_assert_eq(proc_runl(&pr, 10000, "keygen", w.key_file, (char *)NULL), 0);
    cr_assert_eq(pr.code, 0, "keygen: %s", pr.err);
    proc_result_free(&pr);
    cr_assert_eq(am_key_load(w.key_file, key, err, sizeof err), 0, "%s", err);
    cr_assert_eq(am_http_token_derive(key, w.token), 0);
    for (int i = 0; i < 3; i++) {
        const char *more[] = {"--key-file",
                              w.key_file,
                              "--mailbox",
                              "1",
                              "--forward-timeout",
                              "1000",
                              "--http-timeout",
                              "1500",
                              "--max-payload",
                              "64k",
                              "--idle-timeout",
                              "600000",
                              i ? "--join" : NULL,
                              w.nodes[0].addr,
                              NULL};
        node_start(i, more);
    }
    int64_t deadline = proc_now_ms() + 30000;
    for (;;) {
        char first[32] = "";
        int ok = 1;
        for (int i = 0; i < 3 && ok; i++) {
            struct hresp *r = resp();
            one(i, "GET", "/health/ready", NULL, 0, r);
            ok = r->code == 200;
            if (!ok)
                break;
            one(i, "GET", "/v1/ring", NULL, 1, r);
            cr_assert_eq(r->code, 200, "%s", r->body);
            json_t *j = json_of(r);
            const char *v = json_string_value(json_object_get(j, "version"));
            ok = v && json_array_size(json_object_get(j, "members")) == 3 &&
                 (i == 0 || strcmp(v, first) == 0);
            if (v && i == 0)
                snprintf(first, sizeof first, "%s", v);
            json_decref(j);
        }
        if (ok)
            break;
        cr_assert(proc_now_ms() < deadline, "the nodes were not ready on one ring in 30 s");
        proc_sleep_ms(100);
    }
    /* As test_routing: let gossip tell every node about every other before
     * peer streams open (an early one is refused and backs off). */
    proc_sleep_ms(1000);
}

/* An id of a counter owned by node `owner` on the ring of n0..n2. */
static void id_owned_by(int owner, char *out, size_t outlen, int skip)
{
    const char *names[3] = {"n0", "n1", "n2"};
    struct am_ring *ring;
    cr_assert_eq(am_ring_build(&ring, names, 3, AM_RING_VNODES), 0);
    for (int i = 0;; i++) {
        snprintf(out, outlen, "h%d", i);
        int o = am_ring_owner(ring, am_ring_key("counter", 7, out, strlen(out)));
        if (o >= 0 && strcmp(am_ring_member(ring, o), names[owner]) == 0 && skip-- == 0)
            break;
    }
    am_ring_free(ring);
}

static void call_ok(int node, const char *id, const char *action, const char *body, long long want)
{
    char path[128];
    struct hresp *r = resp();
    snprintf(path, sizeof path, "/v1/actors/counter/%s/%s", id, action);
    one(node, "POST", path, body, 1, r);
    cr_assert_eq(r->code, 200, "%s via %s: %s", path, w.names[node], r->body);
    cr_assert_eq(atoll(r->body), want, "%s via %s: %s", path, w.names[node], r->body);
}

/* Gets counter/id through node every 200 ms until the answer is 200, for
 * 15 s at most (the failure message is what, then the last code); the
 * answer is left in *r. */
static void get_until_ok(int node, const char *id, const char *what, struct hresp *r)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/actors/counter/%s/get", id);
    int64_t deadline = proc_now_ms() + 15000;
    for (;;) {
        one(node, "POST", path, NULL, 1, r);
        if (r->code == 200)
            return;
        cr_assert(proc_now_ms() < deadline, "%s %d", what, r->code);
        proc_sleep_ms(200);
    }
}

/* ---- /metrics ------------------------------------------------------------------ */

/* The value of the sample line `name` (labels included) in text, or -1. */
static double sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return atof(p + n + 1);
    return -1;
}

/* Every line is a comment or `name{labels} value`, every family has HELP
 * and TYPE before its samples, names start with amesh_ and counters end in
 * _total. */
static void check_exposition(const char *text)
{
    char family[160] = "", type[32] = "";
    int families = 0;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        cr_assert_not_null(nl, "the text must end with a newline");
        char l[1024];
        snprintf(l, sizeof l, "%.*s", (int)(nl - line), line);
        if (strncmp(l, "# HELP ", 7) == 0) {
            cr_assert(strncmp(l + 7, "amesh_", 6) == 0, "%s", l);
            sscanf(l + 7, "%159s", family);
            type[0] = '\0';
            families++;
        } else if (strncmp(l, "# TYPE ", 7) == 0) {
            char name[160];
            cr_assert_eq(sscanf(l + 7, "%159s %31s", name, type), 2, "%s", l);
            cr_assert_str_eq(name, family, "TYPE without its HELP: %s", l);
            cr_assert(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                          !strcmp(type, "histogram"),
                      "%s", l);
            if (!strcmp(type, "counter"))
                cr_assert(strlen(name) > 6 && !strcmp(name + strlen(name) - 6, "_total"), "%s", l);
        } else {
            cr_assert(type[0], "a sample before its TYPE: %s", l);
            cr_assert(strncmp(l, family, strlen(family)) == 0, "%s is not of %s", l, family);
            const char *sp = strrchr(l, ' ');
            cr_assert_not_null(sp, "%s", l);
            char *end;
            strtod(sp + 1, &end);
            cr_assert(*end == '\0' && end != sp + 1, "not a number: %s", l);
        }
        line = nl + 1;
    }
    cr_assert(families > 60, "only %d families", families);
}

static void promtool_check(const char *text)
{
    char promtool[512], path[512];
    if (proc_which("promtool", promtool, sizeof promtool)) {
        cr_log_info("promtool is not installed: `promtool check metrics` skipped");
        return;
    }
    snprintf(path, sizeof path, "%s/metrics.txt", w.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    /* promtool reads the exposition from standard input. */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s check metrics < %s 2>&1", promtool, path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[4096] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    cr_assert_eq(st, 0, "promtool check metrics: %s", out);
    cr_assert_eq(n, 0, "promtool check metrics has findings: %s", out);
}

/* ---- the tests ------------------------------------------------------------------- */

Test(http, calls_through_any_node_and_each_error_status_over_http, .timeout = 120)
{
    int64_t t0 = proc_now_ms();
    cluster_start();
    cr_log_info("cluster ready in %lld ms", (long long)(proc_now_ms() - t0));
    struct hresp *r = resp();
    char far[16], near[16], path[256];
    id_owned_by(2, far, sizeof far, 0);
    id_owned_by(0, near, sizeof near, 0);

    /* A round trip to n2's actor through each node: forwarded by n0, n1. */
    snprintf(path, sizeof path, "/v1/actors/counter/%s/add", far);
    call_ok(0, far, "add", "5", 5);
    call_ok(1, far, "add", "5", 10);
    call_ok(2, far, "add", " 5 ", 15);
    call_ok(0, far, "add", "", 16); /* no body: nil, 1 for counter add */
    call_ok(1, far, "get", NULL, 16);
    one(0, "GET", "/v1/status", NULL, 1, r);
    cr_assert_eq(r->code, 200);
    json_t *st = json_of(r);
    cr_assert_str_eq(json_string_value(json_object_get(st, "node")), "n0");
    cr_assert(json_integer_value(json_object_get(json_object_get(st, "routing"), "forwarded")) >=
              2);
    json_decref(st);
    one(1, "GET", "/v1/members", NULL, 1, r);
    cr_assert_eq(r->code, 200);
    json_t *mem = json_of(r);
    json_t *list = json_object_get(mem, "members"), *m;
    size_t idx;
    cr_assert_eq(json_array_size(list), 3, "%s", r->body);
    json_array_foreach(list, idx, m)
        cr_assert_str_eq(json_string_value(json_object_get(m, "state")), "alive", "%s", r->body);
    json_decref(mem);

    /* 400: bad JSON, a payload the handler refuses, malformed HTTP. */
    one(1, "POST", path, "{\"a\":", 1, r);
    expect_error(r, 400, "bad_request");
    one(1, "POST", path, "\"x\"", 1, r);
    expect_error(r, 400, "invalid_argument");
    struct hc c;
    cr_assert_eq(hc_open(&c, w.http[0]), 0);
    cr_assert_eq(hc_send(&c, "HELLO\r\n\r\n", 9), 0);
    cr_assert_eq(hc_read(&c, r, IO_MS), 0);
    expect_error(r, 400, "bad_request");
    cr_assert(has_header(r, "Connection: close\r\n"));
    cr_assert(hc_closed(&c, IO_MS));
    hc_close(&c);

    /* 404: unknown type (answered by the owner of its key), action, path. */
    one(0, "POST", "/v1/actors/nosuchtype/x1/get", NULL, 1, r);
    expect_error(r, 404, "unknown_type");
    snprintf(path, sizeof path, "/v1/actors/counter/%s/mul", far);
    one(0, "POST", path, "2", 1, r);
    expect_error(r, 404, "unknown_action");
    one(0, "GET", "/v2/nothing", NULL, 1, r);
    expect_error(r, 404, "not_found");

    /* 405 with Allow. */
    snprintf(path, sizeof path, "/v1/actors/counter/%s/get", far);
    one(2, "GET", path, NULL, 1, r);
    expect_error(r, 405, "method_not_allowed");
    cr_assert(has_header(r, "Allow: POST\r\n"), "%s", r->head);
    one(2, "POST", "/v1/status", NULL, 1, r);
    expect_error(r, 405, "method_not_allowed");
    cr_assert(has_header(r, "Allow: GET, HEAD\r\n"), "%s", r->head);

    /* 401 without the token or with another; health and metrics open. */
    one(1, "GET", "/v1/status", NULL, 0, r);
    expect_error(r, 401, "unauthorized");
    cr_assert(has_header(r, "WWW-Authenticate: Bearer"), "%s", r->head);
    {
        char req[512];
        cr_assert_eq(hc_open(&c, w.http[1]), 0);
        snprintf(path, sizeof path, "/v1/actors/counter/%s/add", far);
        request(req, sizeof req, "POST", path, "1", 0,
                "Authorization: Bearer 00112233445566778899aabbccddeeff\r\n");
        cr_assert_eq(hc_send(&c, req, strlen(req)), 0);
        cr_assert_eq(hc_read(&c, r, IO_MS), 0);
        expect_error(r, 401, "unauthorized");
        cr_assert(has_header(r, "error=\"invalid_token\""), "%s", r->head);
        hc_close(&c);
    }
    one(1, "GET", "/health/live", NULL, 0, r);
    cr_assert_eq(r->code, 200);
    one(1, "GET", "/metrics", NULL, 0, r);
    cr_assert_eq(r->code, 200);
    call_ok(1, far, "get", NULL, 16); /* none of the refused calls ran */

    /* 413: a body over --max-payload, refused from its Content-Length. */
    {
        char *big = malloc(MAX_PAYLOAD + 2);
        cr_assert_not_null(big);
        memset(big, '1', MAX_PAYLOAD + 1);
        big[MAX_PAYLOAD + 1] = '\0';
        char *req = malloc(MAX_PAYLOAD + 1024);
        cr_assert_not_null(req);
        snprintf(path, sizeof path, "/v1/actors/counter/%s/add", far);
        request(req, MAX_PAYLOAD + 1024, "POST", path, big, 1, NULL);
        cr_assert_eq(hc_open(&c, w.http[0]), 0);
        hc_send(&c, req, strlen(req)); /* the node may close before the end */
        cr_assert_eq(hc_read(&c, r, IO_MS), 0);
        expect_error(r, 413, "too_large");
        cr_assert(hc_closed(&c, IO_MS));
        hc_close(&c);
        free(req);
        free(big);
    }

    /* 431: 10 KiB of headers, then closed. */
    {
        char *req = malloc(12000);
        cr_assert_not_null(req);
        int n = snprintf(req, 12000, "GET /health/live HTTP/1.1\r\nHost: amesh\r\n");
        for (int i = 0; i < 100; i++)
            n += snprintf(req + n, 12000 - (size_t)n, "X-Pad-%03d: %090d\r\n", i, 0);
        n += snprintf(req + n, 12000 - (size_t)n, "\r\n");
        cr_assert_eq(hc_open(&c, w.http[2]), 0);
        hc_send(&c, req, (size_t)n);
        /* The node reads and drops the rest before it closes, so the
         * answer arrives rather than a reset. */
        cr_assert_eq(hc_read(&c, r, IO_MS), 0);
        expect_error(r, 431, "header_too_large");
        cr_assert(hc_closed(&c, IO_MS));
        hc_close(&c);
        free(req);
    }

    /* 429: 30 pipelined adds to one counter over a mailbox of 1 (its own
     * node's actor): some busy, the others applied, all answered in order. */
    {
        char req[512];
        static char batch[30 * 512];
        size_t len = 0;
        snprintf(path, sizeof path, "/v1/actors/counter/%s/add", near);
        for (int i = 0; i < 30; i++) {
            request(req, sizeof req, "POST", path, "1", 1, NULL);
            memcpy(batch + len, req, strlen(req));
            len += strlen(req);
        }
        cr_assert_eq(hc_open(&c, w.http[0]), 0);
        cr_assert_eq(hc_send(&c, batch, len), 0);
        int ok = 0, busy = 0;
        long long last = 0;
        for (int i = 0; i < 30; i++) {
            cr_assert_eq(hc_read(&c, r, IO_MS), 0, "response %d", i);
            if (r->code == 200) {
                long long v = atoll(r->body);
                cr_assert_gt(v, last, "response %d: %s after %lld", i, r->body, last);
                last = v;
                ok++;
            } else {
                expect_error(r, 429, "busy");
                cr_assert(has_header(r, "Retry-After: 1\r\n"));
                busy++;
            }
        }
        cr_assert(ok >= 1 && busy >= 1, "%d ok, %d busy", ok, busy);
        hc_close(&c);
        call_ok(0, near, "get", NULL, ok);
        cr_log_info("pipelined: %d applied, %d busy", ok, busy);
    }

    /* /metrics of n0 before and after 10 calls to its own actor. */
    {
        static char before[200000];
        one(0, "GET", "/metrics", NULL, 0, r);
        cr_assert_eq(r->code, 200);
        cr_assert(has_header(r, "Content-Type: text/plain; version=0.0.4"), "%s", r->head);
        snprintf(before, sizeof before, "%s", r->body);
        check_exposition(before);
        char id2[16], req[512];
        id_owned_by(0, id2, sizeof id2, 1);
        snprintf(path, sizeof path, "/v1/actors/counter/%s/add", id2);
        cr_assert_eq(hc_open(&c, w.http[0]), 0); /* one keep-alive connection */
        for (int i = 1; i <= 10; i++) {
            request(req, sizeof req, "POST", path, "1", 1, NULL);
            cr_assert_eq(hc_send(&c, req, strlen(req)), 0);
            cr_assert_eq(hc_read(&c, r, IO_MS), 0);
            cr_assert_eq(r->code, 200, "%s", r->body);
            cr_assert_eq(atoi(r->body), i);
        }
        hc_close(&c);
        one(0, "GET", "/metrics", NULL, 0, r);
        cr_assert_eq(r->code, 200);
        const char *after = r->body;
        check_exposition(after);
        promtool_check(after);
        static const struct {
            const char *name;
            double delta;
        } moved[] = {
            /* the first scrape's own 200 counts in the second */
            {"amesh_http_requests_total{code=\"200\"}", 11},
            {"amesh_http_call_duration_seconds_count", 10},
            {"amesh_http_call_duration_seconds_bucket{le=\"+Inf\"}", 10},
            {"amesh_http_calls_total{type=\"counter\",status=\"ok\"}", 10},
            {"amesh_actors_calls_total", 10},
            {"amesh_actors_ok_total", 10},
            {"amesh_actor_messages_total{type=\"counter\",result=\"ok\"}", 10},
            {"amesh_actor_message_duration_seconds_count", 10},
            {"amesh_http_requests_total{code=\"429\"}", 0},
            {"amesh_routing_forwarded_total", 0},
        };
        for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
            double b = sample(before, moved[i].name), a = sample(after, moved[i].name);
            cr_assert(b >= 0 && a >= 0, "%s missing", moved[i].name);
            cr_assert_eq(a - b, moved[i].delta, "%s went from %g to %g", moved[i].name, b, a);
        }
        /* Each of the 10 calls, one at a time, waited for its own commit
         * (n0 may have committed replicas of other nodes' actors too). */
        cr_assert(sample(after, "amesh_store_commit_batch_writes_count") -
                          sample(before, "amesh_store_commit_batch_writes_count") >=
                      10,
                  "commit batch histogram did not move by the 10 calls");
        cr_assert(sample(after, "amesh_store_commit_batch_writes_bucket{le=\"+Inf\"}") ==
                  sample(after, "amesh_store_commit_batch_writes_count"));
        cr_assert_eq(sample(after, "amesh_actors_queued_messages"), 0);
        cr_assert(sample(after, "amesh_actors_active") >= 2);
        cr_assert_eq(sample(after, "amesh_membership_live_members"), 3);
        cr_assert_eq(sample(after, "amesh_ring_members"), 3);
        cr_assert(sample(after, "amesh_http_requests_total{code=\"400\"}") >= 1);
        cr_assert(sample(after, "amesh_http_requests_total{code=\"413\"}") >= 1);
    }

    /* A slow client: half a request, then nothing; closed after
     * --http-timeout (1.5 s, swept every 375 ms). */
    {
        cr_assert_eq(hc_open(&c, w.http[1]), 0);
        cr_assert_eq(hc_send(&c, "GET /health/live HTTP/1.1\r\nHost:", 32), 0);
        int64_t t = proc_now_ms();
        cr_assert(hc_closed(&c, 5000), "a slow client was not closed in 5 s");
        int64_t took = proc_now_ms() - t;
        cr_assert(took >= 1300, "closed after %lld ms", (long long)took);
        hc_close(&c);
    }

    /* 504, then 503: the owner stopped. The call times out after
     * --forward-timeout; its stream read nothing, so the owner is in
     * backoff and the next call is refused at once. */
    {
        snprintf(path, sizeof path, "/v1/actors/counter/%s/add", far);
        cr_assert_eq(kill(w.nodes[2].pid, SIGSTOP), 0);
        w.stopped = 2;
        int64_t t = proc_now_ms();
        one(0, "POST", path, "1", 1, r);
        expect_error(r, 504, "timeout");
        cr_assert(has_header(r, "Retry-After: 1\r\n"));
        cr_assert(proc_now_ms() - t >= 900, "timeout after %lld ms",
                  (long long)(proc_now_ms() - t));
        int unavailable = 0;
        for (int i = 0; i < 3 && !unavailable; i++) {
            one(0, "POST", path, "1", 1, r);
            cr_assert(r->code == 503 || r->code == 504, "%s", r->head);
            unavailable = r->code == 503;
        }
        cr_assert_eq(kill(w.nodes[2].pid, SIGCONT), 0);
        w.stopped = -1;
        expect_error(r, 503, "unavailable");
        cr_assert(has_header(r, "Retry-After: 1\r\n"));
        cr_log_info("owner stopped for %lld ms", (long long)(proc_now_ms() - t));
        /* Back once the backoff is over. */
        get_until_ok(0, far, "n2's actor still answers", r);
    }

    /* 503 from a stopping node: connections opened before SIGTERM get
     * readiness and calls refused, each response closing its connection. */
    {
        struct hc cs[6];
        char req[512];
        for (int i = 0; i < 6; i++) {
            cr_assert_eq(hc_open(&cs[i], w.http[1]), 0);
            request(req, sizeof req, "GET", "/health/live", NULL, 0, NULL);
            cr_assert_eq(hc_send(&cs[i], req, strlen(req)), 0);
            cr_assert_eq(hc_read(&cs[i], r, IO_MS), 0);
            cr_assert_eq(r->code, 200);
        }
        cr_assert_eq(kill(w.nodes[1].pid, SIGTERM), 0);
        int i = 0, saw_ready = 0, saw_call = 0;
        for (; i < 6 && !(saw_ready && saw_call); i++) {
            snprintf(path, sizeof path, "/v1/actors/counter/%s/add", near);
            request(req, sizeof req, saw_ready ? "POST" : "GET", saw_ready ? path : "/health/ready",
                    saw_ready ? "1" : NULL, 1, NULL);
            if (hc_send(&cs[i], req, strlen(req)) || hc_read(&cs[i], r, IO_MS))
                break; /* the node got there first */
            if (r->code == 200) {
                proc_sleep_ms(20);
                continue; /* the signal was not handled yet */
            }
            expect_error(r, 503, "shutting_down");
            cr_assert(has_header(r, "Retry-After: 1\r\n"));
            cr_assert(has_header(r, "Connection: close\r\n"));
            cr_assert(hc_closed(&cs[i], IO_MS));
            if (saw_ready)
                saw_call = 1;
            saw_ready = 1;
        }
        cr_assert(saw_ready && saw_call, "a stopping n1 did not answer 503 (after %d tries)", i);
        for (int k = 0; k < 6; k++)
            hc_close(&cs[k]);
        cluster_node_stop_ok(&cluster, 1);
    }

    /* The others still serve, and stop cleanly. */
    one(0, "GET", "/health/live", NULL, 0, r);
    cr_assert_eq(r->code, 200);
    get_until_ok(2, far, "n2's actor answers", r); /* n1 left: the ring is rebuilt without it */
    cr_assert_geq(atoll(r->body), 16);
    cluster_node_stop_ok(&cluster, 2);
    cluster_node_stop_ok(&cluster, 0);
    cr_log_info("whole test: %lld ms", (long long)(proc_now_ms() - t0));
}

/* A keep-alive connection to node i that has been served once (the node
 * may still count the connections of earlier requests for a moment, and
 * refuse a new one over --max-connections meanwhile). */
static void open_served(struct hc *h, int i)
{
    char req[256];
    struct hresp *r = resp();
    request(req, sizeof req, "GET", "/health/live", NULL, 0, NULL);
    for (int tries = 0;; tries++) {
        cr_assert_eq(hc_open(h, w.http[i]), 0);
        if (hc_send(h, req, strlen(req)) == 0 && hc_read(h, r, IO_MS) == 0 && r->code == 200)
            return;
        hc_close(h);
        cr_assert(tries < 100, "no connection to %s was served", w.names[i]);
        proc_sleep_ms(50);
    }
}

Test(http, a_token_file_guards_metrics_and_a_node_that_has_not_joined_is_not_ready, .timeout = 60)
{
    char token_file[400];
    snprintf(token_file, sizeof token_file, "%s/http.token", w.dir);
    FILE *f = fopen(token_file, "w");
    cr_assert_not_null(f);
    fputs("a-token-for-the-test-0123456789\n", f);
    fclose(f);
    cr_assert_eq(chmod(token_file, 0600), 0);
    snprintf(w.token, sizeof w.token, "a-token-for-the-test-0123456789");
    const char *more[] = {"--http-token-file", token_file,          "--http-auth", "all", "--join",
                          "127.0.6.9:7946",    "--max-connections", "2",           NULL};
    node_start(3, more);
    struct hresp *r = resp();
    one(3, "GET", "/health/live", NULL, 0, r);
    cr_assert_eq(r->code, 200);
    one(3, "GET", "/health/ready", NULL, 0, r);
    expect_error(r, 503, "unavailable");
    cr_assert(strstr(r->body, "not joined"), "%s", r->body);
    one(3, "GET", "/metrics", NULL, 0, r);
    expect_error(r, 401, "unauthorized");
    one(3, "GET", "/metrics", NULL, 1, r);
    cr_assert_eq(r->code, 200);
    /* A node started with --join serves no actor before it has met the
     * cluster: it cannot know which are its own. */
    one(3, "POST", "/v1/actors/counter/x/add", "2", 1, r);
    expect_error(r, 503, "unavailable");
    cr_assert(strstr(r->body, "joining"), "%s", r->body);
    /* Two connections are the bound: a third is told 503 and closed. */
    struct hc a, b, c;
    open_served(&a, 3);
    open_served(&b, 3);
    cr_assert_eq(hc_open(&c, w.http[3]), 0);
    cr_assert_eq(hc_read(&c, r, IO_MS), 0);
    expect_error(r, 503, "overloaded");
    cr_assert(has_header(r, "Retry-After: 1\r\n"));
    cr_assert(hc_closed(&c, IO_MS));
    hc_close(&a);
    hc_close(&b);
    hc_close(&c);
    cluster_node_stop_ok(&cluster, 3);
}
