/* test_http_api.c - the HTTP API's pieces without sockets: request targets,
 * the status -> HTTP code table, bodies to payloads, the token, the flags,
 * and whole connections driven through am_http_conn_feed with a scripted
 * node behind the hooks (pipelining, bounds, errors, authentication), and
 * the Prometheus text of /metrics. */
#define _GNU_SOURCE /* memmem */
#include "config.h"
#include "err.h"
#include "http.h"
#include "metrics.h"
#include "mp.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

/* ---- request targets -------------------------------------------------------- */

static enum am_http_endpoint target(const char *url, struct am_http_target *t, char *err)
{
    return am_http_parse_target(url, strlen(url), t, err, 300);
}

Test(http_target, names_the_fixed_endpoints_and_ignores_the_query)
{
    struct am_http_target t;
    char err[300];
    cr_assert_eq(target("/v1/status", &t, err), AM_HTTP_EP_STATUS);
    cr_assert_eq(target("/v1/members?x=1", &t, err), AM_HTTP_EP_MEMBERS);
    cr_assert_eq(target("/v1/ring#frag", &t, err), AM_HTTP_EP_RING);
    cr_assert_eq(target("/health/live", &t, err), AM_HTTP_EP_LIVE);
    cr_assert_eq(target("/health/ready", &t, err), AM_HTTP_EP_READY);
    cr_assert_eq(target("/metrics", &t, err), AM_HTTP_EP_METRICS);
    cr_assert_eq(target("http://node:8080/metrics", &t, err), AM_HTTP_EP_METRICS);
    cr_assert_eq(target("/metrics/", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert_eq(target("/v1/STATUS", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert_eq(target("/", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert_eq(target("*", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert_eq(am_http_parse_target("", 0, &t, err, sizeof err), AM_HTTP_EP_NOT_FOUND);
}

Test(http_target, splits_and_decodes_an_actor_call)
{
    struct am_http_target t;
    char err[300];
    cr_assert_eq(target("/v1/actors/counter/c1/add", &t, err), AM_HTTP_EP_ACTOR, "%s", err);
    cr_assert_str_eq(t.type, "counter");
    cr_assert_str_eq(t.id, "c1");
    cr_assert_str_eq(t.action, "add");
    cr_assert_eq(t.type_len, 7);
    /* An id may hold '/' (escaped) and any byte; '+' is a plus. */
    cr_assert_eq(target("/v1/actors/kv/users%2F42%20a+b%00z/get?q=1", &t, err), AM_HTTP_EP_ACTOR);
    cr_assert_eq(t.id_len, 14);
    cr_assert_eq(memcmp(t.id, "users/42 a+b\0z", 14), 0);
    cr_assert_eq(target("/v1/actors/kv/%e2%82%AC/get", &t, err), AM_HTTP_EP_ACTOR);
    cr_assert_str_eq(t.id, "\xe2\x82\xac");
}

Test(http_target, applies_the_protocol_name_limits)
{
    struct am_http_target t;
    char err[300], url[1024];
    char type63[64], type64[65], id255[256], id256[257];
    memset(type63, 't', 63);
    type63[63] = '\0';
    memset(type64, 't', 64);
    type64[64] = '\0';
    memset(id255, 'i', 255);
    id255[255] = '\0';
    memset(id256, 'i', 256);
    id256[256] = '\0';
    snprintf(url, sizeof url, "/v1/actors/%s/%s/%s", type63, id255, type63);
    cr_assert_eq(target(url, &t, err), AM_HTTP_EP_ACTOR, "%s", err);
    cr_assert_eq(t.type_len, 63);
    cr_assert_eq(t.id_len, 255);
    cr_assert_eq(t.action_len, 63);
    snprintf(url, sizeof url, "/v1/actors/%s/x/get", type64);
    cr_assert_eq(target(url, &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "type is longer than 63"), "%s", err);
    snprintf(url, sizeof url, "/v1/actors/kv/%s/get", id256);
    cr_assert_eq(target(url, &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "id is longer than 255"), "%s", err);
    snprintf(url, sizeof url, "/v1/actors/kv/x/%s", type64);
    cr_assert_eq(target(url, &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "action"), "%s", err);
    /* Escapes count as one byte each. */
    char esc[1024] = "/v1/actors/kv/";
    for (int i = 0; i < 255; i++)
        strcat(esc, "%41");
    strcat(esc, "/get");
    cr_assert_eq(target(esc, &t, err), AM_HTTP_EP_ACTOR, "%s", err);
    cr_assert_eq(t.id_len, 255);
}

Test(http_target, refuses_empty_or_badly_escaped_segments_and_slashes_in_types)
{
    struct am_http_target t;
    char err[300];
    cr_assert_eq(target("/v1/actors/counter//add", &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "id is empty"), "%s", err);
    cr_assert_eq(target("/v1/actors//c1/add", &t, err), AM_HTTP_EP_BAD);
    cr_assert_eq(target("/v1/actors/counter/c1/", &t, err), AM_HTTP_EP_BAD);
    cr_assert_eq(target("/v1/actors/counter/c%2/add", &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "%-escape"), "%s", err);
    cr_assert_eq(target("/v1/actors/counter/c%zz/add", &t, err), AM_HTTP_EP_BAD);
    cr_assert_eq(target("/v1/actors/counter/c1/ad%", &t, err), AM_HTTP_EP_BAD);
    cr_assert_eq(target("/v1/actors/a%2Fb/c1/add", &t, err), AM_HTTP_EP_BAD);
    cr_assert(strstr(err, "'/'"), "%s", err);
    /* Not three segments: no such endpoint. */
    cr_assert_eq(target("/v1/actors/counter/c1", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert(strstr(err, "TYPE/ID/ACTION"), "%s", err);
    cr_assert_eq(target("/v1/actors/counter/c1/add/more", &t, err), AM_HTTP_EP_NOT_FOUND);
    cr_assert_eq(target("/v1/actors/", &t, err), AM_HTTP_EP_NOT_FOUND);
}

/* ---- statuses, bodies, tokens ----------------------------------------------- */

Test(http_pieces, maps_every_wire_status_to_its_http_code)
{
    static const int want[AM_ST__COUNT] = {
        [AM_ST_OK] = 200,           [AM_ST_BAD_REQUEST] = 400,    [AM_ST_TOO_LARGE] = 413,
        [AM_ST_UNKNOWN_TYPE] = 404, [AM_ST_UNKNOWN_ACTION] = 404, [AM_ST_INVALID_ARG] = 400,
        [AM_ST_HANDLER] = 500,      [AM_ST_BUSY] = 429,           [AM_ST_OVERLOADED] = 429,
        [AM_ST_STORAGE] = 500,      [AM_ST_SHUTTING_DOWN] = 503,  [AM_ST_INTERNAL] = 500,
        [AM_ST_TIMEOUT] = 504,      [AM_ST_UNAVAILABLE] = 503,
    };
    for (int st = 0; st < AM_ST__COUNT; st++) {
        cr_assert_eq(am_http_status_code(st), want[st], "%s", am_status_name(st));
        int code = am_http_status_code(st);
        int counted = 0;
        for (int i = 0; i < AM_HTTP_NCODES; i++)
            counted |= am_http_codes[i] == code;
        cr_assert(counted, "%d is not among the counted codes", code);
        cr_assert_str_neq(am_http_reason(code), "Unknown");
    }
    cr_assert_eq(am_http_status_code(AM_ST__COUNT), 502);
    cr_assert_eq(am_http_status_code(200), 502);
    cr_assert_eq(am_http_status_code(-1), 502);
}

Test(http_pieces, converts_bodies_to_payloads_and_explains_bad_ones)
{
    struct am_buf out;
    char err[300];
    am_buf_init(&out);
    cr_assert_eq(am_http_payload("", 0, &out, err, sizeof err), 0);
    cr_assert_eq(out.len, 1);
    cr_assert_eq(out.data[0], 0xc0);
    cr_assert_eq(am_http_payload(" \r\n\t", 4, &out, err, sizeof err), 0);
    cr_assert_eq(out.len, 1);
    cr_assert_eq(out.data[0], 0xc0);
    cr_assert_eq(am_http_payload("5", 1, &out, err, sizeof err), 0);
    cr_assert_eq(out.len, 1);
    cr_assert_eq(out.data[0], 0x05);
    cr_assert_eq(am_http_payload("{\"a\":[1,\"x\"]}", 13, &out, err, sizeof err), 0);
    cr_assert_eq(am_mp_check_one(out.data, out.len), 0);
    cr_assert_eq(am_http_payload("{\"a\":", 5, &out, err, sizeof err), AM_EPROTO);
    cr_assert(strstr(err, "not one JSON value") && strstr(err, "line 1"), "%s", err);
    cr_assert_eq(out.len, 0);
    cr_assert_eq(am_http_payload("1 2", 3, &out, err, sizeof err), AM_EPROTO);
    cr_assert_eq(am_http_payload("{\"a\":1,\"a\":2}", 13, &out, err, sizeof err), AM_EPROTO);
    cr_assert_eq(am_http_payload("99999999999999999999", 20, &out, err, sizeof err), AM_EPROTO);
    char deep[80];
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    cr_assert_eq(am_http_payload(deep, 66, &out, err, sizeof err), AM_EPROTO);
    cr_assert(strstr(err, "nested deeper"), "%s", err);
    cr_assert_eq(am_http_payload(deep + 1, 64, &out, err, sizeof err), 0);
    am_buf_close(&out);
}

Test(http_pieces, derives_the_token_from_the_cluster_key)
{
    uint8_t key[32];
    char tok[65];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    cr_assert_eq(am_http_token_derive(key, tok), 0);
    /* Python: hashlib.blake2b(b"amesh http token", key=bytes(range(32)),
     * digest_size=32).hexdigest() */
    cr_assert_str_eq(tok, "eb8081afd12c1775d84fd3e42b4e47c6aab3844089ebb2831cfc062209bc122d");
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(path, mode), 0);
}

Test(http_pieces, loads_a_token_file_only_when_private_and_well_formed)
{
    char dir[] = "/tmp/amesh-http-token.XXXXXX", path[64], tok[300], err[300];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/token", dir);
    write_file(path, "s3cr3t-t0ken-0123456789\n", 0600);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(tok, "s3cr3t-t0ken-0123456789");
    write_file(path, "s3cr3t-t0ken-0123456789\n", 0644);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), -EPERM);
    cr_assert(strstr(err, "chmod 600"), "%s", err);
    write_file(path, "short\n", 0600);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), -EINVAL);
    write_file(path, "has a space in it, so no\n", 0600);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), -EINVAL);
    write_file(path, "line-one-of-the-file\nline-two\n", 0600);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), -EINVAL);
    unlink(path);
    cr_assert_eq(am_http_token_load(path, tok, sizeof tok, err, sizeof err), -ENOENT);
    rmdir(dir);
}

/* ---- flags --------------------------------------------------------------------- */

Test(http_config, parses_the_http_flags)
{
    struct am_config c;
    char err[300];
    unsetenv("AMESH_CONFIG");
    unsetenv("AMESH_HTTP");
    char *none[] = {"node", NULL};
    cr_assert_eq(am_config_parse(&c, 1, none, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.http, "");
    cr_assert_str_eq(c.http_token_file, "");
    cr_assert_eq(c.http_auth_all, 0);
    cr_assert_eq(c.http_timeout_ms, 10000);
    char *all[] = {"node",
                   "--http",
                   "127.0.0.1:8080",
                   "--http-auth",
                   "all",
                   "--http-token-file",
                   "/etc/t",
                   "--http-timeout",
                   "250",
                   NULL};
    cr_assert_eq(am_config_parse(&c, 9, all, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.http, "127.0.0.1:8080");
    cr_assert_str_eq(c.http_token_file, "/etc/t");
    cr_assert_eq(c.http_auth_all, 1);
    cr_assert_eq(c.http_timeout_ms, 250);
    char *bad_auth[] = {"node", "--http-auth", "none", NULL};
    cr_assert_eq(am_config_parse(&c, 3, bad_auth, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "neither api nor all"), "%s", err);
    char *bad_addr[] = {"node", "--http", "8080", NULL};
    cr_assert_eq(am_config_parse(&c, 3, bad_addr, err, sizeof err), -EINVAL);
    char *bad_timeout[] = {"node", "--http-timeout", "0", NULL};
    cr_assert_eq(am_config_parse(&c, 3, bad_timeout, err, sizeof err), -EINVAL);
}

/* ---- connections, with a scripted node ------------------------------------------ */

struct pending {
    am_reply_fn cb;
    void *ctx;
    uint64_t id;
};

static struct {
    int route_rc; /* 1: hold the call (answered by answer()), or an error code */
    int status;   /* with route_rc 2: answer at once with this status and body */
    uint8_t body[64];
    size_t body_len;
    struct pending pending[64];
    int npending;
    int calls;
    char type[64], id[256], action[64];
    uint8_t payload[256];
    size_t payload_len;
    int ready;
} fake;

static int fake_status(void *arg, msgpack_packer *pk)
{
    (void)arg;
    return msgpack_pack_map(pk, 2) || am_mp_pack_str(pk, "node", 4) || am_mp_pack_str(pk, "a", 1) ||
           am_mp_pack_str(pk, "actors", 6) || msgpack_pack_map(pk, 1) ||
           am_mp_pack_str(pk, "calls", 5) || msgpack_pack_uint64(pk, 7);
}

static int fake_members(void *arg, msgpack_packer *pk)
{
    (void)arg;
    return msgpack_pack_map(pk, 1) || am_mp_pack_str(pk, "members", 7) || msgpack_pack_array(pk, 0);
}

static int fake_route(void *arg, const struct am_request *r, am_reply_fn cb, void *ctx, char *err,
                      size_t errlen)
{
    (void)arg;
    fake.calls++;
    snprintf(fake.type, sizeof fake.type, "%.*s", (int)r->type_len, r->type);
    snprintf(fake.id, sizeof fake.id, "%.*s", (int)r->actor_len, r->actor);
    snprintf(fake.action, sizeof fake.action, "%.*s", (int)r->action_len, r->action);
    fake.payload_len = r->payload_len < sizeof fake.payload ? r->payload_len : 0;
    memcpy(fake.payload, r->payload, fake.payload_len);
    if (fake.route_rc < 0)
        return am_errf(err, errlen, fake.route_rc, "refused by the fake node");
    if (fake.route_rc == 2) {
        cb(ctx, r->id, fake.status, fake.body, fake.body_len);
        return 1;
    }
    cr_assert(fake.npending < 64);
    fake.pending[fake.npending++] = (struct pending){cb, ctx, r->id};
    return 1;
}

static int fake_ready(void *arg, char *why, size_t len)
{
    (void)arg;
    if (!fake.ready)
        snprintf(why, len, "not joined yet");
    return fake.ready;
}

/* Answers the i-th held call with status and body (msgpack). */
static void answer(int i, int status, const void *body, size_t len)
{
    cr_assert(i < fake.npending);
    fake.pending[i].cb(fake.pending[i].ctx, fake.pending[i].id, status, body, len);
}

static struct am_http *server(size_t max_body, unsigned pipeline, const char *token_file,
                              int auth_all, const uint8_t *key)
{
    struct am_http *s;
    char err[300];
    struct am_http_opts o = {
        .max_body = max_body,
        .max_connections = 10,
        .max_pipeline = pipeline,
        .timeout_ms = 1000,
        .key = key,
        .token_file = token_file,
        .auth_all = auth_all,
    };
    struct am_http_hooks h = {fake_status, fake_members, NULL, fake_route, fake_ready, NULL};
    memset(&fake, 0, sizeof fake);
    fake.route_rc = 1;
    fake.ready = 1;
    cr_assert_eq(am_http_new(&s, NULL, NULL, &o, &h, err, sizeof err), 0, "%s", err);
    return s;
}

struct resp {
    int code;
    char head[1024];
    char body[4096];
    size_t body_len;
};

/* Takes the next whole response out of c's output; 0 when there is none. */
static int next_response(struct am_http_conn *c, struct resp *r)
{
    struct am_buf *out = am_http_conn_output(c);
    memset(r, 0, sizeof *r);
    for (;;) {
        const char *p = (const char *)out->data;
        const char *end = out->len ? memmem(p, out->len, "\r\n\r\n", 4) : NULL;
        if (!end)
            return 0;
        size_t hlen = (size_t)(end - p) + 4;
        cr_assert(hlen < sizeof r->head);
        memcpy(r->head, p, hlen);
        r->head[hlen] = '\0';
        cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d ", &r->code), 1, "%s", r->head);
        if (r->code == 100) { /* an interim response: skip it */
            am_buf_consume(out, hlen);
            continue;
        }
        const char *cl = strstr(r->head, "Content-Length: ");
        cr_assert_not_null(cl, "%s", r->head);
        size_t blen = (size_t)atol(cl + 16);
        cr_assert(out->len >= hlen + blen);
        cr_assert(blen < sizeof r->body);
        memcpy(r->body, p + hlen, blen);
        r->body_len = blen;
        am_buf_consume(out, hlen + blen);
        return 1;
    }
}

static void expect(struct am_http_conn *c, int code, const char *body_part)
{
    struct resp r;
    cr_assert(next_response(c, &r), "no response (wanted %d)", code);
    cr_assert_eq(r.code, code, "%s%s", r.head, r.body);
    if (body_part)
        cr_assert(strstr(r.body, body_part), "wanted %s in %s", body_part, r.body);
}

static int feed(struct am_http_conn *c, const char *s)
{
    return am_http_conn_feed(c, s, strlen(s));
}

Test(http_conn, answers_a_call_with_its_reply_as_json)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "POST /v1/actors/counter/c%2F1/add HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n42"),
                 0);
    cr_assert_eq(fake.calls, 1);
    cr_assert_str_eq(fake.type, "counter");
    cr_assert_str_eq(fake.id, "c/1");
    cr_assert_str_eq(fake.action, "add");
    cr_assert_eq(fake.payload_len, 1);
    cr_assert_eq(fake.payload[0], 42);
    struct resp r;
    cr_assert_eq(next_response(c, &r), 0, "answered before the reply");
    answer(0, AM_ST_OK, "\x81\xa1k\x92\x01\xc3", 6); /* {"k": [1, true]} */
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 200);
    cr_assert(strstr(r.head, "Content-Type: application/json\r\n"));
    cr_assert_eq(strstr(r.head, "Connection: close"), NULL);
    cr_assert_str_eq(r.body, "{\"k\":[1,true]}");
    /* No body: a nil payload. */
    feed(c, "POST /v1/actors/counter/c1/get HTTP/1.1\r\n\r\n");
    cr_assert_eq(fake.payload_len, 1);
    cr_assert_eq(fake.payload[0], 0xc0);
    answer(1, AM_ST_OK, "\xc0", 1);
    expect(c, 200, "null");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, answers_pipelined_requests_in_order_however_calls_finish)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "POST /v1/actors/kv/a/get HTTP/1.1\r\n\r\n"
                         "GET /health/live HTTP/1.1\r\n\r\n"
                         "POST /v1/actors/kv/b/get HTTP/1.1\r\n\r\n"
                         "GET /v1/status HTTP/1.1\r\n\r\n"),
                 0);
    cr_assert_eq(fake.npending, 2);
    struct resp r;
    cr_assert_eq(next_response(c, &r), 0);
    answer(1, AM_ST_OK,
           "\xa1"
           "b",
           2); /* the second call first: held back */
    cr_assert_eq(next_response(c, &r), 0);
    answer(0, AM_ST_OK,
           "\xa1"
           "a",
           2);
    expect(c, 200, "\"a\"");
    expect(c, 200, "{\"status\":\"live\"}");
    expect(c, 200, "\"b\"");
    expect(c, 200, "{\"node\":\"a\",\"actors\":{\"calls\":7}}");
    cr_assert_eq(next_response(c, &r), 0);
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, holds_back_requests_beyond_the_pipeline_bound)
{
    struct am_http *s = server(1024, 2, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    for (int i = 0; i < 5; i++)
        feed(c, "POST /v1/actors/kv/a/get HTTP/1.1\r\n\r\n");
    cr_assert_eq(fake.npending, 2, "%d calls made", fake.npending);
    answer(0, AM_ST_OK, "\x01", 1);
    answer(1, AM_ST_OK, "\x02", 1);
    am_http_conn_poll(c);
    cr_assert_eq(fake.npending, 4);
    answer(2, AM_ST_OK, "\x03", 1);
    answer(3, AM_ST_OK, "\x04", 1);
    am_http_conn_poll(c);
    cr_assert_eq(fake.npending, 5);
    answer(4, AM_ST_OK, "\x05", 1);
    for (int i = 1; i <= 5; i++) {
        char want[4];
        snprintf(want, sizeof want, "%d", i);
        expect(c, 200, want);
    }
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, maps_call_errors_to_http_codes_with_a_json_error)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    struct resp r;
    static const char call[] = "POST /v1/actors/counter/c1/add HTTP/1.1\r\n\r\n";
    fake.route_rc = AM_EBUSY;
    feed(c, call);
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 429);
    cr_assert(strstr(r.head, "Retry-After: 1\r\n"), "%s", r.head);
    cr_assert_str_eq(r.body, "{\"error\":\"busy\",\"message\":\"refused by the fake node\"}");
    fake.route_rc = AM_EUNAVAIL;
    feed(c, call);
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 503);
    cr_assert(strstr(r.head, "Retry-After: 1\r\n"));
    cr_assert(strstr(r.body, "\"error\":\"unavailable\""));
    fake.route_rc = 2;
    fake.status = AM_ST_TIMEOUT;
    memcpy(fake.body, "\xa2hi", 3);
    fake.body_len = 3;
    feed(c, call); /* answered inside the route hook */
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 504);
    cr_assert_str_eq(r.body, "{\"error\":\"timeout\",\"message\":\"hi\"}");
    const int st[] = {AM_ST_UNKNOWN_TYPE, AM_ST_UNKNOWN_ACTION, AM_ST_INVALID_ARG,
                      AM_ST_HANDLER,      AM_ST_STORAGE,        AM_ST_TOO_LARGE,
                      AM_ST_OVERLOADED,   AM_ST_SHUTTING_DOWN};
    const int code[] = {404, 404, 400, 500, 500, 413, 429, 503};
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
        fake.status = st[i];
        feed(c, call);
        cr_assert(next_response(c, &r));
        cr_assert_eq(r.code, code[i], "%s", am_status_name(st[i]));
        char want[64];
        snprintf(want, sizeof want, "{\"error\":\"%s\"", am_status_name(st[i]));
        cr_assert(strncmp(r.body, want, strlen(want)) == 0, "%s", r.body);
        cr_assert_eq(strstr(r.head, "Retry-After") != NULL, am_status_retryable(st[i]));
    }
    /* A message that is not UTF-8 still gives JSON. */
    fake.status = AM_ST_HANDLER;
    memcpy(fake.body, "\xa2\xff\xfe", 3);
    feed(c, call);
    expect(c, 500, "\"message\":\"\xef\xbf\xbd\xef\xbf\xbd\"");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, refuses_bad_json_wrong_methods_and_unknown_paths_and_goes_on)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    struct resp r;
    cr_assert_eq(feed(c, "POST /v1/actors/counter/c1/add HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
                         "{\"a\":"),
                 0);
    expect(c, 400, "\"error\":\"bad_request\",\"message\":\"the body is not one JSON value");
    feed(c, "GET /v1/actors/counter/c1/add HTTP/1.1\r\n\r\n");
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 405);
    cr_assert(strstr(r.head, "Allow: POST\r\n"));
    feed(c, "DELETE /v1/status HTTP/1.1\r\n\r\n");
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 405);
    cr_assert(strstr(r.head, "Allow: GET, HEAD\r\n"));
    feed(c, "GET /nothing/here HTTP/1.1\r\n\r\n");
    expect(c, 404, "\"error\":\"not_found\"");
    feed(c, "POST /v1/actors/counter//add HTTP/1.1\r\n\r\n");
    expect(c, 400, "id is empty");
    feed(c, "GET /v1/ring HTTP/1.1\r\n\r\n"); /* no ring hook: not served */
    expect(c, 404, "without membership");
    cr_assert_eq(fake.calls, 0);
    /* The connection still serves. */
    feed(c, "GET /v1/members HTTP/1.1\r\n\r\n");
    expect(c, 200, "{\"members\":[]}");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, closes_after_malformed_http_oversized_headers_or_bodies)
{
    struct am_http *s = server(100, 16, NULL, 0, NULL);
    struct resp r;
    struct am_http_conn *c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "HELLO\r\n\r\nGET /health/live HTTP/1.1\r\n\r\n"), 1);
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 400);
    cr_assert(strstr(r.head, "Connection: close\r\n"));
    cr_assert(strstr(r.body, "malformed HTTP request"), "%s", r.body);
    cr_assert_eq(next_response(c, &r), 0, "nothing is read after it");
    am_http_conn_close(c);

    /* Headers over 8 KiB, sent in small pieces. */
    c = am_http_conn_open(s);
    feed(c, "GET /health/live HTTP/1.1\r\n");
    int done = 0;
    for (int i = 0; i < 200 && !done; i++)
        done =
            feed(c, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    cr_assert(done);
    expect(c, 431, "header_too_large");
    am_http_conn_close(c);

    /* A long URL counts too. */
    c = am_http_conn_open(s);
    char big[9000] = "GET /v1/";
    memset(big + 8, 'a', 8500);
    strcpy(big + 8508, " HTTP/1.1\r\n\r\n");
    cr_assert_eq(feed(c, big), 1);
    expect(c, 431, NULL);
    am_http_conn_close(c);

    /* Content-Length over max_body: refused before the body. */
    c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "POST /v1/actors/kv/a/put HTTP/1.1\r\nContent-Length: 101\r\n\r\n"), 1);
    expect(c, 413, "\"error\":\"too_large\"");
    am_http_conn_close(c);

    /* A chunked body that grows over it. */
    c = am_http_conn_open(s);
    feed(c, "POST /v1/actors/kv/a/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    cr_assert_eq(
        feed(c, "40\r\n\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\r\n"), 0);
    cr_assert_eq(
        feed(c, "40\r\n\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\r\n"), 1);
    expect(c, 413, NULL);
    cr_assert_eq(fake.calls, 0);
    am_http_conn_close(c);

    /* One exactly at the limit is a call. */
    c = am_http_conn_open(s);
    char body[101];
    memset(body, ' ', 100);
    body[0] = '7';
    body[100] = '\0';
    feed(c, "POST /v1/actors/kv/a/put HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
    cr_assert_eq(feed(c, body), 0);
    cr_assert_eq(fake.calls, 1);
    answer(0, AM_ST_OK, "\xc3", 1);
    expect(c, 200, "true");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, answers_head_with_the_headers_of_get_and_dates_every_response)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    feed(c, "HEAD /health/live HTTP/1.1\r\n\r\nHEAD /v1/actors/kv/a/get HTTP/1.1\r\n\r\n"
            "GET /health/live HTTP/1.1\r\n\r\n");
    struct am_buf *out = am_http_conn_output(c);
    cr_assert_eq(am_buf_append(out, "", 1), 0);
    out->len--;
    const char *t = (const char *)out->data;
    const char *second = strstr(t + 1, "HTTP/1.1 ");
    cr_assert_not_null(second);
    cr_assert(strncmp(t, "HTTP/1.1 200 OK\r\nDate: ", 23) == 0, "%s", t);
    cr_assert(strstr(t, " GMT\r\n"));
    cr_assert(strstr(t, "Content-Length: 17\r\n"));
    cr_assert(strncmp(second - 4, "\r\n\r\n", 4) == 0, "no body after a HEAD's headers");
    cr_assert(strncmp(second, "HTTP/1.1 405 ", 13) == 0, "%s", second);
    cr_assert(strstr(second, "Allow: POST\r\n"));
    const char *third = strstr(second + 1, "HTTP/1.1 ");
    cr_assert_not_null(third);
    cr_assert(strncmp(third - 4, "\r\n\r\n", 4) == 0);
    am_buf_consume(out, (size_t)(third - t));
    expect(c, 200, "{\"status\":\"live\"}");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, ends_the_connection_after_connection_close_or_http_1_0)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct resp r;
    struct am_http_conn *c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n"
                         "GET /health/live HTTP/1.1\r\n\r\n"),
                 1);
    cr_assert(next_response(c, &r));
    cr_assert(strstr(r.head, "Connection: close\r\n"));
    cr_assert_eq(next_response(c, &r), 0);
    am_http_conn_close(c);
    c = am_http_conn_open(s);
    cr_assert_eq(feed(c, "GET /health/live HTTP/1.0\r\n\r\n"), 1);
    expect(c, 200, "live");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, a_closed_connection_waits_for_its_calls_before_it_is_freed)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    feed(c, "POST /v1/actors/kv/a/get HTTP/1.1\r\n\r\nPOST /v1/actors/kv/b/get HTTP/1.1\r\n\r\n");
    cr_assert_eq(fake.npending, 2);
    am_http_conn_close(c);
    answer(1, AM_ST_OK, "\x01", 1);
    answer(0, AM_ST_OK, "\x01", 1); /* the last one frees it */
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, reports_readiness_from_the_node)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    struct resp r;
    feed(c, "GET /health/ready HTTP/1.1\r\n\r\n");
    expect(c, 200, "{\"status\":\"ready\"}");
    fake.ready = 0;
    feed(c, "GET /health/ready HTTP/1.1\r\n\r\n");
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 503);
    cr_assert(strstr(r.head, "Retry-After: 1\r\n"));
    cr_assert_str_eq(r.body, "{\"error\":\"unavailable\",\"message\":\"not joined yet\"}");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

static void check_auth(struct am_http *s, const char *token, int metrics_guarded)
{
    struct resp r;
    char req[512];
    struct am_http_conn *c = am_http_conn_open(s);
    feed(c, "GET /v1/status HTTP/1.1\r\n\r\n");
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 401);
    cr_assert(strstr(r.head, "WWW-Authenticate: Bearer realm=\"amesh\"\r\n"), "%s", r.head);
    cr_assert(strstr(r.body, "\"error\":\"unauthorized\""));
    feed(c, "POST /v1/actors/kv/a/get HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n");
    cr_assert(next_response(c, &r));
    cr_assert_eq(r.code, 401);
    cr_assert(strstr(r.head, "error=\"invalid_token\""), "%s", r.head);
    cr_assert_eq(fake.calls, 0);
    snprintf(req, sizeof req, "GET /v1/status HTTP/1.1\r\nAuthorization: Basic %s\r\n\r\n", token);
    feed(c, req);
    expect(c, 401, NULL);
    /* A prefix of the token is not the token. */
    snprintf(req, sizeof req, "GET /v1/status HTTP/1.1\r\nAuthorization: Bearer %.*s\r\n\r\n",
             (int)strlen(token) - 1, token);
    feed(c, req);
    expect(c, 401, NULL);
    snprintf(req, sizeof req, "GET /v1/status HTTP/1.1\r\nauthorization:   bearer %s  \r\n\r\n",
             token);
    feed(c, req);
    expect(c, 200, "\"node\"");
    snprintf(req, sizeof req,
             "POST /v1/actors/kv/a/get HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n", token);
    feed(c, req);
    cr_assert_eq(fake.calls, 1);
    answer(0, AM_ST_OK, "\x01", 1);
    expect(c, 200, "1");
    feed(c, "GET /health/live HTTP/1.1\r\n\r\nGET /health/ready HTTP/1.1\r\n\r\n");
    expect(c, 200, NULL);
    expect(c, 200, NULL);
    feed(c, "GET /metrics HTTP/1.1\r\n\r\n");
    expect(c, metrics_guarded ? 401 : 200, NULL);
    snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n", token);
    feed(c, req);
    expect(c, 200, "amesh_http_requests_total{code=\"401\"}");
    am_http_conn_close(c);
}

Test(http_conn, with_a_cluster_key_wants_the_derived_token_except_for_health_and_metrics)
{
    uint8_t key[32];
    char tok[65];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(i * 7);
    cr_assert_eq(am_http_token_derive(key, tok), 0);
    struct am_http *s = server(1024, 16, NULL, 0, key);
    cr_assert_str_eq(am_http_token(s), tok);
    check_auth(s, tok, 0);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, a_token_file_replaces_the_derived_token_and_auth_all_guards_metrics)
{
    char dir[] = "/tmp/amesh-http-token.XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/token", dir);
    write_file(path, "a-token-from-a-file-0123\n", 0600);
    uint8_t key[32] = {1};
    struct am_http *s = server(1024, 16, path, 1, key);
    cr_assert_str_eq(am_http_token(s), "a-token-from-a-file-0123");
    check_auth(s, "a-token-from-a-file-0123", 1);
    am_http_close(s, NULL, NULL);
    /* An unreadable one stops the start. */
    chmod(path, 0640);
    struct am_http *bad;
    char err[300];
    struct am_http_opts o = {.max_body = 1, .max_pipeline = 1, .token_file = path};
    struct am_http_hooks h = {0};
    cr_assert_eq(am_http_new(&bad, NULL, NULL, &o, &h, err, sizeof err), -EPERM);
    unlink(path);
    rmdir(dir);
    ASSERT_NO_LEAKS();
}

Test(http_conn, sends_100_continue_to_a_client_that_waits_for_it)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    feed(c,
         "POST /v1/actors/kv/a/put HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    struct am_buf *out = am_http_conn_output(c);
    cr_assert_eq(out->len, 25);
    cr_assert_eq(memcmp(out->data, "HTTP/1.1 100 Continue\r\n\r\n", 25), 0);
    feed(c, "1");
    answer(0, AM_ST_OK, "\xc3", 1);
    expect(c, 200, "true");
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

Test(http_conn, counts_requests_codes_and_call_latency)
{
    struct am_http *s = server(1024, 16, NULL, 0, NULL);
    struct am_http_conn *c = am_http_conn_open(s);
    feed(c, "GET /health/live HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n");
    fake.route_rc = 2;
    fake.status = AM_ST_OK;
    fake.body[0] = 1;
    fake.body_len = 1;
    for (int i = 0; i < 3; i++)
        feed(c, "POST /v1/actors/counter/c1/get HTTP/1.1\r\n\r\n");
    fake.status = AM_ST_UNKNOWN_TYPE;
    fake.body[0] = 0xa0;
    feed(c, "POST /v1/actors/made-up/c1/get HTTP/1.1\r\n\r\n");
    struct am_http_stats st;
    am_http_get_stats(s, &st);
    cr_assert_eq(st.requests, 6);
    cr_assert_eq(st.by_code[0], 4); /* 200 */
    cr_assert_eq(st.by_code[3], 2); /* 404 */
    cr_assert_eq(st.call_count, 4);
    cr_assert_eq(st.ntypes, 2);
    cr_assert_str_eq(st.types[0].type, "(other)");
    cr_assert_eq(st.types[0].by_status[AM_ST_UNKNOWN_TYPE], 1);
    cr_assert_str_eq(st.types[1].type, "counter");
    cr_assert_eq(st.types[1].by_status[AM_ST_OK], 3);
    uint64_t in_buckets = st.call_over;
    for (int i = 0; i < AM_HTTP_BUCKETS; i++)
        in_buckets += st.call_bucket[i];
    cr_assert_eq(in_buckets, 4);
    am_http_conn_close(c);
    am_http_close(s, NULL, NULL);
    ASSERT_NO_LEAKS();
}

/* ---- /metrics ------------------------------------------------------------------- */

static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    return 0;
}

Test(metrics, writes_status_and_http_counters_in_the_text_format)
{
    struct am_buf mp, out;
    msgpack_packer pk;
    am_buf_init(&mp);
    am_buf_init(&out);
    am_mp_packer_init(&pk, &mp);
    cr_assert_eq(msgpack_pack_map(&pk, 6) || am_mp_pack_str(&pk, "node", 4) ||
                     am_mp_pack_str(&pk, "a\"b", 3) || am_mp_pack_str(&pk, "uptime_ms", 9) ||
                     msgpack_pack_uint64(&pk, 1500) || am_mp_pack_str(&pk, "actors", 6) ||
                     msgpack_pack_map(&pk, 3) || am_mp_pack_str(&pk, "calls", 5) ||
                     msgpack_pack_uint64(&pk, 12) || am_mp_pack_str(&pk, "active", 6) ||
                     msgpack_pack_uint64(&pk, 3) || am_mp_pack_str(&pk, "someday", 7) ||
                     msgpack_pack_uint64(&pk, 9) || am_mp_pack_str(&pk, "ring", 4) ||
                     msgpack_pack_map(&pk, 1) || am_mp_pack_str(&pk, "version", 7) ||
                     am_mp_pack_str(&pk, "00ff", 4) || am_mp_pack_str(&pk, "membership", 10) ||
                     msgpack_pack_map(&pk, 1) || am_mp_pack_str(&pk, "profile", 7) ||
                     am_mp_pack_str(&pk, "lan", 3) || am_mp_pack_str(&pk, "store", 5) ||
                     msgpack_pack_map(&pk, 1) || am_mp_pack_str(&pk, "map_size", 8) ||
                     msgpack_pack_uint64(&pk, 1 << 26),
                 0);
    struct am_http_stats hs;
    memset(&hs, 0, sizeof hs);
    hs.connections = 2;
    hs.by_code[0] = 5;
    hs.call_bucket[0] = 1;
    hs.call_bucket[3] = 2;
    hs.call_over = 1;
    hs.call_count = 4;
    hs.call_sum = 12.5;
    hs.ntypes = 2;
    snprintf(hs.types[0].type, sizeof hs.types[0].type, "(other)");
    snprintf(hs.types[1].type, sizeof hs.types[1].type, "counter");
    hs.types[1].by_status[AM_ST_BUSY] = 7;
    cr_assert_eq(am_metrics_render(&out, mp.data, mp.len, &hs), 0);
    cr_assert_eq(am_buf_append(&out, "", 1), 0);
    const char *t = (const char *)out.data;
    cr_assert(has_line(t, "# HELP amesh_actors_calls_total CALLs accepted into a mailbox here."),
              "%s", t);
    cr_assert(has_line(t, "# TYPE amesh_actors_calls_total counter"));
    cr_assert(has_line(t, "amesh_actors_calls_total 12"));
    cr_assert(has_line(t, "# TYPE amesh_actors_active gauge"));
    cr_assert(has_line(t, "amesh_actors_active 3"));
    cr_assert(has_line(t, "amesh_uptime_seconds 1.500"));
    cr_assert(has_line(t, "amesh_store_map_size_bytes 67108864"));
    cr_assert(has_line(t, "amesh_info{node=\"a\\\"b\",version=\"\",sync=\"\",profile=\"lan\"} 1"),
              "%s", t);
    cr_assert(has_line(t, "amesh_ring_info{version=\"00ff\"} 1"));
    cr_assert_null(strstr(t, "someday"), "an unknown key is not exported");
    cr_assert_null(strstr(t, "amesh_actors_ok_total"), "a missing key is not exported");
    cr_assert(has_line(t, "amesh_http_connections 2"));
    cr_assert(has_line(t, "amesh_http_requests_total{code=\"200\"} 5"));
    cr_assert(has_line(t, "amesh_http_requests_total{code=\"504\"} 0"));
    cr_assert(has_line(t, "amesh_http_calls_total{type=\"counter\",status=\"busy\"} 7"));
    cr_assert(has_line(t, "# TYPE amesh_http_call_duration_seconds histogram"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_bucket{le=\"0.0005\"} 1"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_bucket{le=\"0.0025\"} 1"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_bucket{le=\"0.005\"} 3"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_bucket{le=\"10\"} 3"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_bucket{le=\"+Inf\"} 4"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_sum 12.5"));
    cr_assert(has_line(t, "amesh_http_call_duration_seconds_count 4"));
    /* Every sample line belongs to a family announced just before. */
    char family[128] = "";
    for (const char *line = t; *line;) {
        const char *nl = strchr(line, '\n');
        cr_assert_not_null(nl, "the text ends with a newline");
        if (strncmp(line, "# TYPE ", 7) == 0) {
            sscanf(line + 7, "%127s", family);
        } else if (line[0] != '#') {
            cr_assert(strncmp(line, family, strlen(family)) == 0, "%.*s after TYPE %s",
                      (int)(nl - line), line, family);
        }
        line = nl + 1;
    }
    /* Not a STATUS map: the HTTP part alone. */
    out.len = 0;
    cr_assert_eq(am_metrics_render(&out, (const uint8_t *)"\x93", 1, &hs), 0);
    cr_assert_eq(am_buf_append(&out, "", 1), 0);
    cr_assert_null(strstr((const char *)out.data, "amesh_actors"));
    cr_assert_not_null(strstr((const char *)out.data, "amesh_http_connections 2"));
    am_buf_close(&mp);
    am_buf_close(&out);
}
