/* fuzz_json_call.c - libFuzzer target for the HTTP API's request path:
 * bytes from a client through http-parser, the router, the bearer token
 * check and the JSON body -> msgpack payload of a call, to the responses.
 *
 * (fuzz_json.c already fuzzes am_json_to_msgpack on its own; this target
 * fuzzes what surrounds it in http.c.) The connection runs without a
 * socket (am_http_conn_feed); a scripted node stands behind the hooks and,
 * by the call's id, answers it at once, later (out of order), refuses it,
 * or fails it, so pipelined responses must still come out in order.
 *
 * The first input byte sets the size of the pieces the rest is fed in (so
 * requests split across reads are covered); answers to held calls are
 * given between pieces. Invariants: the output is a sequence of complete
 * HTTP/1.1 responses, each with a Content-Length that matches, at most one
 * final response per request read; a 200 to a call carries JSON that
 * jansson parses; nothing leaks (the connection is freed whether its calls
 * were answered before or after it closed). */
#define _GNU_SOURCE /* memmem */
#include "buf.h"
#include "err.h"
#include "http.h"
#include "mp.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct held {
    am_reply_fn cb;
    void *ctx;
    uint64_t id;
    uint8_t payload[64];
    size_t len;
};

static struct held held[64];
static int nheld;
static int ready_flag;

static int pack_status(void *arg, msgpack_packer *pk)
{
    (void)arg;
    return msgpack_pack_map(pk, 2) || am_mp_pack_str(pk, "node", 4) || am_mp_pack_str(pk, "f", 1) ||
           am_mp_pack_str(pk, "actors", 6) || msgpack_pack_map(pk, 1) ||
           am_mp_pack_str(pk, "calls", 5) || msgpack_pack_uint64(pk, 1);
}

static int pack_members(void *arg, msgpack_packer *pk)
{
    (void)arg;
    return msgpack_pack_map(pk, 1) || am_mp_pack_str(pk, "members", 7) || msgpack_pack_array(pk, 0);
}

/* What the node does with a call depends on its id's first byte. */
static int route(void *arg, const struct am_request *r, am_reply_fn cb, void *ctx, char *err,
                 size_t errlen)
{
    (void)arg;
    CHECK(am_mp_check_one(r->payload, r->payload_len) == 0);
    CHECK(r->type_len >= 1 && r->type_len <= AM_MAX_TYPE);
    CHECK(r->actor_len >= 1 && r->actor_len <= AM_MAX_ID);
    CHECK(r->action_len >= 1 && r->action_len <= AM_MAX_ACTION);
    switch ((unsigned char)r->actor[0] % 4) {
    case 0: /* echo the payload at once */
        cb(ctx, r->id, AM_ST_OK, r->payload, r->payload_len);
        return 1;
    case 1: /* hold it; answered later */
        if (nheld < 64 && r->payload_len <= sizeof held[0].payload) {
            held[nheld].cb = cb;
            held[nheld].ctx = ctx;
            held[nheld].id = r->id;
            memcpy(held[nheld].payload, r->payload, r->payload_len);
            held[nheld].len = r->payload_len;
            nheld++;
            return 1;
        }
        return am_errf(err, errlen, AM_EOVERLOAD, "too many held");
    case 2:
        return am_errf(err, errlen, AM_EBUSY, "busy \xff");
    default: /* an error reply, possibly a status this node does not know */
        cb(ctx, r->id, (unsigned char)r->action[0] % 20,
           (const uint8_t *)"\xa3"
                            "err",
           4);
        return 1;
    }
}

static int ready(void *arg, char *why, size_t len)
{
    (void)arg;
    snprintf(why, len, "not yet");
    return ready_flag ^= 1;
}

/* Answers the held calls, the newest first (out of order). */
static void answer_held(void)
{
    while (nheld > 0) {
        struct held *h = &held[--nheld];
        h->cb(h->ctx, h->id, AM_ST_OK, h->payload, h->len);
    }
}

/* Takes every whole response out of out; returns how many. */
static int take_responses(struct am_buf *out)
{
    int n = 0;
    for (;;) {
        const char *p = (const char *)out->data;
        const char *end = out->len ? memmem(p, out->len, "\r\n\r\n", 4) : NULL;
        if (!end)
            return n;
        size_t hlen = (size_t)(end - p) + 4;
        int code = 0;
        CHECK(out->len > 9 && memcmp(p, "HTTP/1.1 ", 9) == 0);
        code = atoi(p + 9);
        CHECK(code >= 100 && code <= 599);
        if (code == 100) {
            am_buf_consume(out, hlen);
            continue;
        }
        const char *cl = memmem(p, hlen, "Content-Length: ", 16);
        CHECK(cl != NULL);
        size_t blen = (size_t)strtoull(cl + 16, NULL, 10);
        CHECK(out->len >= hlen + blen); /* a response is queued whole */
        const char *ct = memmem(p, hlen, "Content-Type: application/json", 30);
        if (ct && blen) {
            json_error_t e;
            json_t *j = json_loadb(p + hlen, blen, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
            /* Valid JSON always; jansson alone refuses \u0000 in object keys. */
            CHECK(j != NULL || strstr(e.text, "NUL") != NULL);
            json_decref(j);
        }
        am_buf_consume(out, hlen + blen);
        n++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct am_http *srv;
    if (!srv) {
        static const uint8_t key[32] = {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                                        0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                                        0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                                        0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11};
        struct am_http_opts o = {
            .max_body = 4096,
            .max_connections = 1,
            .max_pipeline = 8,
            .timeout_ms = 1000,
            .key = key,
        };
        struct am_http_hooks h = {pack_status, pack_members, NULL, route, ready, NULL};
        char err[300];
        CHECK(am_http_new(&srv, NULL, NULL, &o, &h, err, sizeof err) == 0);
    }
    if (size == 0)
        return 0;
    size_t piece = 1 + data[0] % 64;
    if (data[0] >= 192)
        piece = size; /* a quarter of the runs: all at once */
    data++;
    size--;
    struct am_http_conn *c = am_http_conn_open(srv);
    CHECK(c != NULL);
    struct am_http_stats before, after;
    am_http_get_stats(srv, &before);
    int responses = 0, done = 0;
    for (size_t off = 0; off < size && !done; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        done = am_http_conn_feed(c, data + off, n);
        if (off / piece % 3 == 2)
            answer_held();
        am_http_conn_poll(c);
        responses += take_responses(am_http_conn_output(c));
    }
    /* Half the time the client goes away with calls still held. */
    if (size & 1) {
        for (int round = 0; round < 4; round++) {
            answer_held();
            am_http_conn_poll(c);
        }
        responses += take_responses(am_http_conn_output(c));
        am_http_get_stats(srv, &after);
        CHECK((uint64_t)responses <= after.requests - before.requests);
    }
    am_http_conn_close(c);
    answer_held(); /* frees the connection if it still had calls out */
    return 0;
}
