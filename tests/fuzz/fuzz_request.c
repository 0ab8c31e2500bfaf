/* fuzz_request.c - libFuzzer target for the request path of a client
 * connection: am_frame_next over a byte stream, then am_request_decode on
 * each frame body; also am_request_decode on the whole input as one body.
 *
 * Invariants checked on every accepted request: every decoded string and the
 * payload lie inside the body, names respect their limits, the payload is
 * exactly one msgpack object, and re-encoding the request gives a frame that
 * decodes to the same fields. A refused request returns AM_EPROTO only. */
#include "buf.h"
#include "err.h"
#include "mp.h"
#include "antientropy.h"
#include "proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FRAME (1u << 20) /* the node's default frame limit */

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const void *s, size_t len, const uint8_t *lo, const uint8_t *hi)
{
    const uint8_t *p = s;
    return p && p >= lo && p <= hi && len <= (size_t)(hi - p);
}

static int same(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* Encodes r again and checks the copy decodes to the same request. */
static void check_reencode(const struct am_request *r)
{
    struct am_buf out;
    am_buf_init(&out);
    int rc;
    int simple = r->kind == AM_MSG_STATUS || r->kind == AM_MSG_MEMBERS || r->kind == AM_MSG_LEAVE ||
                 r->kind == AM_MSG_RING || r->kind == AM_MSG_ACTORS ||
                 r->kind == AM_MSG_HANDOFF_DONE;
    if (simple)
        rc = am_encode_simple(&out, r->kind, r->id);
    else if (r->kind == AM_MSG_SYNC)
        rc = am_encode_sync(&out, r->id, r->payload, r->payload_len);
    else if (r->kind == AM_MSG_FORWARD)
        rc = am_encode_forward(&out, r->id, r, r->hops, r->ring_version);
    else if (r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_REPLICATE)
        rc = am_encode_snapshot(&out, r->kind, r->id, r->type, r->type_len, r->epoch, r->seq,
                                r->payload, r->payload_len);
    else if (r->kind == AM_MSG_FETCH)
        rc = am_encode_fetch(&out, r->id, r->type, r->type_len);
    else if (r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS)
        rc = am_encode_digest(&out, r->kind, r->id, r->ring_version, r->payload, r->payload_len);
    else
        rc = am_encode_call(&out, r->kind, r->id, r->type, r->type_len, r->actor, r->actor_len,
                            r->action, r->action_len, r->payload, r->payload_len);
    CHECK(rc == 0);
    const uint8_t *body;
    size_t len;
    CHECK(am_frame_next(out.data, out.len, MAX_FRAME + 64, &body, &len) == (long)out.len);
    struct am_request q;
    CHECK(am_request_decode(&q, body, len) == 0);
    CHECK(q.kind == r->kind && q.id == r->id);
    if (r->kind == AM_MSG_FORWARD)
        CHECK(q.fwd_kind == r->fwd_kind && q.hops == r->hops && q.ring_version == r->ring_version);
    if (r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_REPLICATE) {
        CHECK(same(q.type, q.type_len, r->type, r->type_len));
        CHECK(q.epoch == r->epoch && q.seq == r->seq && q.payload_len == r->payload_len);
        CHECK(r->payload_len == 0 || memcmp(q.payload, r->payload, r->payload_len) == 0);
    }
    if (r->kind == AM_MSG_FETCH)
        CHECK(same(q.type, q.type_len, r->type, r->type_len));
    if (r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS) {
        CHECK(q.ring_version == r->ring_version && q.payload_len == r->payload_len);
        CHECK(r->payload_len == 0 || memcmp(q.payload, r->payload, r->payload_len) == 0);
    }
    if (r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_REPLICATE || r->kind == AM_MSG_FETCH ||
        r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS) {
        /* checked above */
    } else if (r->kind == AM_MSG_SYNC) {
        CHECK(q.payload_len == r->payload_len);
        CHECK(memcmp(q.payload, r->payload, r->payload_len) == 0);
    } else if (!simple) {
        CHECK(same(q.type, q.type_len, r->type, r->type_len));
        CHECK(same(q.actor, q.actor_len, r->actor, r->actor_len));
        CHECK(same(q.action, q.action_len, r->action, r->action_len));
        CHECK(q.payload_len == r->payload_len);
        CHECK(memcmp(q.payload, r->payload, r->payload_len) == 0);
    }
    am_buf_close(&out);
}

/* The fields of an accepted CALL, CAST or FORWARD. */
static void check_call(const struct am_request *r, const uint8_t *body, const uint8_t *end)
{
    CHECK(inside(r->type, r->type_len, body, end));
    CHECK(inside(r->actor, r->actor_len, body, end));
    CHECK(inside(r->action, r->action_len, body, end));
    CHECK(inside(r->payload, r->payload_len, body, end));
    CHECK(r->type_len >= 1 && r->type_len <= AM_MAX_TYPE);
    CHECK(r->actor_len >= 1 && r->actor_len <= AM_MAX_ID);
    CHECK(r->action_len >= 1 && r->action_len <= AM_MAX_ACTION);
    CHECK(!memchr(r->type, '/', r->type_len));
    CHECK(r->payload_len >= 1);
    CHECK(am_mp_check_one(r->payload, r->payload_len) == 0);
    CHECK(r->payload + r->payload_len == end);
    check_reencode(r);
}

static void check_request(const uint8_t *body, size_t len)
{
    const uint8_t *end = body + len;
    struct am_request r;
    int rc = am_request_decode(&r, body, len);
    if (rc) {
        CHECK(rc == AM_EPROTO);
        return;
    }
    CHECK(r.has_id);
    switch (r.kind) {
    case AM_MSG_FORWARD:
        CHECK(r.fwd_kind == AM_MSG_CALL || r.fwd_kind == AM_MSG_CAST);
        CHECK(r.hops <= 255);
        check_call(&r, body, end);
        break;
    case AM_MSG_CALL:
    case AM_MSG_CAST:
        check_call(&r, body, end);
        break;
    case AM_MSG_HELLO:
        CHECK(inside(r.role, r.role_len, body, end));
        CHECK(r.role_len >= 1 && r.role_len <= AM_MAX_ROLE);
        if (r.name) {
            CHECK(inside(r.name, r.name_len, body, end));
            CHECK(r.name_len >= 1 && r.name_len <= AM_MAX_PEER_NAME);
            CHECK(r.name + r.name_len == (const char *)end);
        } else {
            CHECK(r.role + r.role_len == (const char *)end);
        }
        break;
    case AM_MSG_HANDOFF:
    case AM_MSG_REPLICATE:
        CHECK(inside(r.type, r.type_len, body, end));
        CHECK(r.type_len >= 1 && r.type_len <= AM_MAX_TYPE + 1 + AM_MAX_ID);
        CHECK(inside(r.payload, r.payload_len, body, end));
        CHECK(r.payload + r.payload_len == end);
        check_reencode(&r);
        break;
    case AM_MSG_VERSIONS: {
        /* Its entries, as the receiver reads them. */
        const uint8_t *e = r.payload, *eend = r.payload + r.payload_len;
        const char *key;
        size_t klen;
        uint64_t ep, sq;
        while (am_ae_next_entry(&e, eend, &key, &klen, &ep, &sq) == 0) {
            CHECK(inside(key, klen, r.payload, eend));
            CHECK(klen >= 1 && klen <= AM_MAX_TYPE + 1 + AM_MAX_ID);
            CHECK(e <= eend);
        }
        CHECK(e <= eend);
        CHECK(inside(r.payload, r.payload_len, body, end));
        CHECK(r.payload + r.payload_len == end);
        check_reencode(&r);
        break;
    }
    case AM_MSG_DIGEST:
        CHECK(inside(r.payload, r.payload_len, body, end));
        CHECK(r.payload + r.payload_len == end);
        check_reencode(&r);
        break;
    case AM_MSG_FETCH:
        CHECK(inside(r.type, r.type_len, body, end));
        CHECK(r.type_len >= 1 && r.type_len <= AM_MAX_TYPE + 1 + AM_MAX_ID);
        CHECK(r.type + r.type_len == (const char *)end);
        check_reencode(&r);
        break;
    case AM_MSG_ACTORS:
    case AM_MSG_HANDOFF_DONE:
    case AM_MSG_STATUS:
    case AM_MSG_MEMBERS:
    case AM_MSG_LEAVE:
    case AM_MSG_RING:
        check_reencode(&r);
        break;
    case AM_MSG_SYNC:
        CHECK(inside(r.payload, r.payload_len, body, end));
        CHECK(r.payload + r.payload_len == end);
        check_reencode(&r);
        break;
    default:
        CHECK(!"accepted an unknown kind");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* As a stream of frames, the way a connection reads them. */
    const uint8_t *p = data;
    size_t left = size;
    for (;;) {
        const uint8_t *body = NULL;
        size_t len = 0;
        long n = am_frame_next(p, left, MAX_FRAME, &body, &len);
        if (n == 0) {
            CHECK(left < AM_FRAME_HEADER || am_be32_get(p) > left - AM_FRAME_HEADER);
            break;
        }
        if (n < 0) {
            CHECK(n == AM_ETOOBIG && am_be32_get(p) > MAX_FRAME);
            break;
        }
        CHECK((size_t)n <= left && (size_t)n == AM_FRAME_HEADER + len);
        CHECK(body == p + AM_FRAME_HEADER && len <= MAX_FRAME);
        check_request(body, len);
        p += n;
        left -= (size_t)n;
    }
    /* And the whole input as one body. */
    check_request(data, size);
    return 0;
}
