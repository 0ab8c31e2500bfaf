/* test_proto.c - frames, request/reply decoding and encoding (src/base/proto.h).
 *
 * Encoded messages round-trip through am_frame_next and the decoders; hand-
 * built bodies (packed with msgpack-c) probe every refusal. Bodies are
 * decoded from heap blocks of exactly their size so that AddressSanitizer
 * reports any read past the end. */
#include "err.h"
#include "mem.h"
#include "mp.h"
#include "proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

#define MAX_FRAME (1u << 20)

/* ---- helpers ---------------------------------------------------------- */

static uint8_t *exact(const void *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    cr_assert_not_null(c);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* A body under construction, packed by msgpack-c. */
struct msg {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void msg_init(struct msg *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void msg_close(struct msg *m)
{
    msgpack_sbuffer_destroy(&m->sb);
}

static void str(struct msg *m, const char *s)
{
    msgpack_pack_str_with_body(&m->pk, s, strlen(s));
}

/* A string of n copies of c. */
static void str_n(struct msg *m, size_t n, char c)
{
    char s[512];
    cr_assert(n <= sizeof s);
    memset(s, c, n);
    msgpack_pack_str_with_body(&m->pk, s, n);
}

/* Starts [kind, id, ...] with n elements in all. */
static void head(struct msg *m, size_t n, uint64_t kind, uint64_t id)
{
    msgpack_pack_array(&m->pk, n);
    msgpack_pack_uint64(&m->pk, kind);
    msgpack_pack_uint64(&m->pk, id);
}

static int decode_req(struct am_request *r, const struct msg *m)
{
    uint8_t *in = exact(m->sb.data, m->sb.size);
    int rc = am_request_decode(r, in, m->sb.size);
    if (rc == 0) {
        /* Every field lies inside the body; the test only compares values. */
        const uint8_t *lo = in, *hi = in + m->sb.size;
        if (r->type)
            cr_assert((const uint8_t *)r->type >= lo &&
                      (const uint8_t *)r->type + r->type_len <= hi);
        if (r->payload)
            cr_assert(r->payload >= lo && r->payload + r->payload_len <= hi);
    } else {
        cr_assert_eq(rc, AM_EPROTO, "rc=%d", rc);
    }
    free(in);
    /* The fields pointed into the freed copy: only the scalars are usable. */
    r->type = r->actor = r->action = r->role = NULL;
    r->payload = NULL;
    return rc;
}

static int decode_reply(struct am_reply *r, const struct msg *m)
{
    uint8_t *in = exact(m->sb.data, m->sb.size);
    int rc = am_reply_decode(r, in, m->sb.size);
    if (rc)
        cr_assert_eq(rc, AM_EPROTO, "rc=%d", rc);
    free(in);
    r->body = NULL;
    return rc;
}

/* Takes the single frame in out, checks it is whole and exact, and returns
 * its body (pointing into out). */
static const uint8_t *one_frame(const struct am_buf *out, size_t *len)
{
    const uint8_t *body = NULL;
    long n = am_frame_next(out->data, out->len, MAX_FRAME, &body, len);
    cr_assert_eq(n, (long)out->len, "frame of %ld bytes in a buffer of %zu", n, out->len);
    cr_assert_eq(body, out->data + AM_FRAME_HEADER);
    cr_assert_eq(*len, out->len - AM_FRAME_HEADER);
    return body;
}

static int streq(const char *s, uint32_t len, const char *want)
{
    return len == strlen(want) && memcmp(s, want, len) == 0;
}

/* ---- round trips ------------------------------------------------------- */

Test(proto, round_trips_a_call)
{
    static const uint8_t payload[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x92, 0xc3, 0xc0};
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_call(&out, AM_MSG_CALL, 42, "account", 7, "alice", 5, "deposit", 7,
                                payload, sizeof payload),
                 0);
    size_t len;
    const uint8_t *body = one_frame(&out, &len);
    struct am_request r;
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_CALL);
    cr_assert_eq(r.id, 42);
    cr_assert_eq(r.has_id, 1);
    cr_assert(streq(r.type, r.type_len, "account"));
    cr_assert(streq(r.actor, r.actor_len, "alice"));
    cr_assert(streq(r.action, r.action_len, "deposit"));
    cr_assert_eq(r.payload_len, sizeof payload);
    cr_assert(memcmp(r.payload, payload, sizeof payload) == 0);
    cr_assert(r.payload >= body && r.payload + r.payload_len == body + len);
    am_buf_close(&out);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_cast_with_extreme_ids_and_longest_names)
{
    static const uint64_t ids[] = {0,         1, 127, 128, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                                   UINT64_MAX};
    char type[AM_MAX_TYPE], actor[AM_MAX_ID], action[AM_MAX_ACTION];
    memset(type, 't', sizeof type);
    memset(actor, '/', sizeof actor); /* '/' is refused in types only */
    memset(action, 'a', sizeof action);
    static const uint8_t nil = 0xc0;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        struct am_buf out;
        am_buf_init(&out);
        cr_assert_eq(am_encode_call(&out, AM_MSG_CAST, ids[i], type, sizeof type, actor,
                                    sizeof actor, action, sizeof action, &nil, 1),
                     0);
        size_t len;
        const uint8_t *body = one_frame(&out, &len);
        struct am_request r;
        cr_assert_eq(am_request_decode(&r, body, len), 0);
        cr_assert_eq(r.kind, AM_MSG_CAST);
        cr_assert_eq(r.id, ids[i]);
        cr_assert_eq(r.type_len, AM_MAX_TYPE);
        cr_assert_eq(r.actor_len, AM_MAX_ID);
        cr_assert_eq(r.action_len, AM_MAX_ACTION);
        cr_assert_eq(r.payload_len, 1);
        cr_assert_eq(*r.payload, 0xc0);
        am_buf_close(&out);
    }
}

Test(proto, round_trips_hello_and_status)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_hello(&out, 7, "client"), 0);
    size_t len;
    const uint8_t *body = one_frame(&out, &len);
    struct am_request r;
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_HELLO);
    cr_assert_eq(r.id, 7);
    cr_assert_eq(r.version, AM_PROTO_VERSION);
    cr_assert(streq(r.role, r.role_len, "client"));

    am_buf_close(&out);
    am_buf_init(&out);
    cr_assert_eq(am_encode_status(&out, UINT64_MAX), 0);
    body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_STATUS);
    cr_assert_eq(r.id, UINT64_MAX);
    cr_assert_eq(r.has_id, 1);
    cr_assert_null(r.payload);
    am_buf_close(&out);
}

Test(proto, round_trips_members_leave_and_sync)
{
    struct am_buf out;
    size_t len;
    struct am_request r;
    static const int kinds[] = {AM_MSG_MEMBERS, AM_MSG_LEAVE, AM_MSG_RING, AM_MSG_ACTORS,
                                AM_MSG_HANDOFF_DONE};
    for (int k = 0; k < 5; k++) {
        am_buf_init(&out);
        cr_assert_eq(am_encode_simple(&out, kinds[k], 9), 0);
        const uint8_t *body = one_frame(&out, &len);
        cr_assert_eq(am_request_decode(&r, body, len), 0);
        cr_assert_eq(r.kind, kinds[k]);
        cr_assert_eq(r.id, 9);
        am_buf_close(&out);
    }
    static const uint8_t pp[] = {1, 2, 3, 0, 255};
    am_buf_init(&out);
    cr_assert_eq(am_encode_sync(&out, 3, pp, sizeof pp), 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_SYNC);
    cr_assert_eq(r.payload_len, sizeof pp);
    cr_assert_eq(memcmp(r.payload, pp, sizeof pp), 0);
    am_buf_close(&out);
    /* SYNC carries a bin: a str in its place is refused. */
    am_buf_init(&out);
    cr_assert_eq(am_encode_call(&out, AM_MSG_SYNC, 4, "t", 1, "i", 1, "a", 1, pp, 1), 0);
    body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), AM_EPROTO);
    am_buf_close(&out);
}

Test(proto, round_trips_a_peer_hello_and_forwards_of_calls_casts_and_forwards)
{
    struct am_buf out;
    size_t len;
    struct am_request r, f, g;
    am_buf_init(&out);
    cr_assert_eq(am_encode_hello_peer(&out, 0, "node-a"), 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_HELLO);
    cr_assert(streq(r.role, r.role_len, "peer"));
    cr_assert(streq(r.name, r.name_len, "node-a"));
    am_buf_close(&out);

    /* A client's CAST, forwarded: names and payload bytes unchanged. */
    static const uint8_t payload[] = {0x92, 0x01, 0xa1, 'x'};
    struct am_buf call;
    am_buf_init(&call);
    cr_assert_eq(am_encode_call(&call, AM_MSG_CAST, 77, "kv", 2, "k/1", 3, "put", 3, payload,
                                sizeof payload),
                 0);
    body = one_frame(&call, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    am_buf_init(&out);
    cr_assert_eq(am_encode_forward(&out, (uint64_t)5 << 32 | 3, &r, 1, 0xfedcba9876543210ull), 0);
    body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&f, body, len), 0);
    cr_assert_eq(f.kind, AM_MSG_FORWARD);
    cr_assert_eq(f.fwd_kind, AM_MSG_CAST);
    cr_assert_eq(f.id, (uint64_t)5 << 32 | 3);
    cr_assert_eq(f.hops, 1);
    cr_assert_eq(f.ring_version, 0xfedcba9876543210ull);
    cr_assert(streq(f.type, f.type_len, "kv"));
    cr_assert(streq(f.actor, f.actor_len, "k/1"));
    cr_assert(streq(f.action, f.action_len, "put"));
    cr_assert_eq(f.payload_len, sizeof payload);
    cr_assert_eq(memcmp(f.payload, payload, sizeof payload), 0);

    /* Forwarded again: the kind stays the client's. */
    struct am_buf again;
    am_buf_init(&again);
    cr_assert_eq(am_encode_forward(&again, 9, &f, 2, 1), 0);
    body = one_frame(&again, &len);
    cr_assert_eq(am_request_decode(&g, body, len), 0);
    cr_assert_eq(g.fwd_kind, AM_MSG_CAST);
    cr_assert_eq(g.hops, 2);
    cr_assert_eq(g.payload_len, sizeof payload);
    am_buf_close(&again);
    am_buf_close(&out);
    am_buf_close(&call);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_handoff_and_refuses_a_str_for_its_state)
{
    static const uint8_t state[] = {0xcd, 0x01, 0x00}; /* 256 */
    struct am_buf out;
    size_t len;
    struct am_request r;
    am_buf_init(&out);
    cr_assert_eq(am_encode_handoff(&out, 3, "counter/c1", 10, 7, UINT64_MAX, state, sizeof state),
                 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_HANDOFF);
    cr_assert_eq(r.id, 3);
    cr_assert(streq(r.type, r.type_len, "counter/c1"));
    cr_assert_eq(r.epoch, 7);
    cr_assert_eq(r.seq, UINT64_MAX);
    cr_assert_eq(r.payload_len, sizeof state);
    cr_assert_eq(memcmp(r.payload, state, sizeof state), 0);
    am_buf_close(&out);
    /* The same fields with the state as a str: refused. */
    struct msg m;
    msg_init(&m);
    head(&m, 6, AM_MSG_HANDOFF, 4);
    str(&m, "counter/c1");
    msgpack_pack_uint64(&m.pk, 1);
    msgpack_pack_uint64(&m.pk, 1);
    str(&m, "state");
    cr_assert_eq(decode_req(&r, &m), AM_EPROTO);
    msg_close(&m);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_replicate_with_an_empty_state)
{
    struct am_buf out;
    size_t len;
    struct am_request r;
    am_buf_init(&out);
    cr_assert_eq(am_encode_snapshot(&out, AM_MSG_REPLICATE, 4, "kv/k", 4, 2, 9, NULL, 0), 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_REPLICATE);
    cr_assert_eq(r.id, 4);
    cr_assert(streq(r.type, r.type_len, "kv/k"));
    cr_assert_eq(r.epoch, 2);
    cr_assert_eq(r.seq, 9);
    cr_assert_eq(r.payload_len, 0, "a tombstone travels as an empty bin");
    am_buf_close(&out);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_fetch_and_refuses_a_malformed_one)
{
    struct am_buf out;
    size_t len;
    struct am_request r;
    am_buf_init(&out);
    cr_assert_eq(am_encode_fetch(&out, 5, "counter/c1", 10), 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_FETCH);
    cr_assert_eq(r.id, 5);
    cr_assert(streq(r.type, r.type_len, "counter/c1"));
    am_buf_close(&out);
    struct msg m;
    /* A fourth element, an empty key, a key over 319 bytes: refused. */
    msg_init(&m);
    head(&m, 4, AM_MSG_FETCH, 6);
    str(&m, "counter/c1");
    msgpack_pack_uint64(&m.pk, 1);
    cr_assert_eq(decode_req(&r, &m), AM_EPROTO);
    msg_close(&m);
    msg_init(&m);
    head(&m, 3, AM_MSG_FETCH, 7);
    str(&m, "");
    cr_assert_eq(decode_req(&r, &m), AM_EPROTO);
    msg_close(&m);
    char big[AM_MAX_TYPE + 1 + AM_MAX_ID + 2];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = 0;
    msg_init(&m);
    head(&m, 3, AM_MSG_FETCH, 8);
    str(&m, big);
    cr_assert_eq(decode_req(&r, &m), AM_EPROTO);
    msg_close(&m);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_digest_and_refuses_a_str_for_its_digests)
{
    uint8_t dig[512];
    for (size_t i = 0; i < sizeof dig; i++)
        dig[i] = (uint8_t)i;
    struct am_buf out;
    size_t len;
    struct am_request r;
    am_buf_init(&out);
    cr_assert_eq(am_encode_digest(&out, AM_MSG_DIGEST, 9, UINT64_MAX - 1, dig, sizeof dig), 0);
    const uint8_t *body = one_frame(&out, &len);
    cr_assert_eq(am_request_decode(&r, body, len), 0);
    cr_assert_eq(r.kind, AM_MSG_DIGEST);
    cr_assert_eq(r.id, 9);
    cr_assert_eq(r.ring_version, UINT64_MAX - 1);
    cr_assert_eq(r.payload_len, sizeof dig);
    cr_assert_eq(memcmp(r.payload, dig, sizeof dig), 0);
    am_buf_close(&out);
    struct msg m;
    msg_init(&m);
    head(&m, 4, AM_MSG_DIGEST, 2);
    msgpack_pack_uint64(&m.pk, 1);
    str(&m, "digests");
    cr_assert_eq(decode_req(&r, &m), AM_EPROTO);
    msg_close(&m);
    CHECK_LEAKS();
}

Test(proto, round_trips_a_reply)
{
    static const uint8_t reply[] = {0x81, 0xa7, 'b', 'a',  'l',  'a',
                                    'n',  'c',  'e', 0xcd, 0x01, 0x00};
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_reply(&out, 9, AM_ST_OK, reply, sizeof reply), 0);
    size_t len;
    const uint8_t *body = one_frame(&out, &len);
    struct am_reply r;
    cr_assert_eq(am_reply_decode(&r, body, len), 0);
    cr_assert_eq(r.id, 9);
    cr_assert_eq(r.status, AM_ST_OK);
    cr_assert_eq(r.body_len, sizeof reply);
    cr_assert(memcmp(r.body, reply, sizeof reply) == 0);
    am_buf_close(&out);
}

Test(proto, round_trips_every_error_status_with_its_message)
{
    for (int st = 1; st < AM_ST__COUNT; st++) {
        struct am_buf out;
        am_buf_init(&out);
        const char *msg = am_strerror(AM_E(st));
        cr_assert_eq(am_encode_error(&out, (uint64_t)st * 1000, st, msg), 0);
        size_t len;
        const uint8_t *body = one_frame(&out, &len);
        struct am_reply r;
        cr_assert_eq(am_reply_decode(&r, body, len), 0);
        cr_assert_eq(r.id, (uint64_t)st * 1000);
        cr_assert_eq(r.status, st);
        const uint8_t *p = r.body;
        const char *s;
        uint32_t sl;
        cr_assert_eq(am_mp_read_str(&p, r.body + r.body_len, &s, &sl), 0);
        cr_assert(streq(s, sl, msg));
        cr_assert_eq(p, r.body + r.body_len);
        am_buf_close(&out);
    }
}

Test(proto, encoders_append_frames_back_to_back)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_hello(&out, 1, "client"), 0);
    cr_assert_eq(am_encode_status(&out, 2), 0);
    cr_assert_eq(
        am_encode_call(&out, AM_MSG_CALL, 3, "t", 1, "i", 1, "a", 1, (const uint8_t *)"\x90", 1),
        0);
    cr_assert_eq(am_encode_error(&out, 4, AM_ST_BUSY, "busy"), 0);
    const uint8_t *p = out.data;
    size_t left = out.len;
    static const int kinds[] = {AM_MSG_HELLO, AM_MSG_STATUS, AM_MSG_CALL};
    for (int i = 0; i < 4; i++) {
        const uint8_t *body;
        size_t len;
        long n = am_frame_next(p, left, MAX_FRAME, &body, &len);
        cr_assert_gt(n, 0, "frame %d", i);
        if (i < 3) {
            struct am_request r;
            cr_assert_eq(am_request_decode(&r, body, len), 0);
            cr_assert_eq(r.kind, kinds[i]);
            cr_assert_eq(r.id, (uint64_t)i + 1);
        } else {
            struct am_reply r;
            cr_assert_eq(am_reply_decode(&r, body, len), 0);
            cr_assert_eq(r.status, AM_ST_BUSY);
        }
        p += n;
        left -= (size_t)n;
    }
    cr_assert_eq(left, 0);
    am_buf_close(&out);
    CHECK_LEAKS();
}

/* ---- encoders under allocation failure --------------------------------- */

/* Fails the allocation numbered fail_at (0-based), succeeds otherwise. */
static int alloc_count, fail_at = -1;

static int should_fail(void)
{
    return alloc_count++ == fail_at;
}

static void *f_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

static void *f_calloc(size_t n, size_t m)
{
    return should_fail() ? NULL : calloc(n, m);
}

static void *f_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

static const struct am_allocator flaky = {f_malloc, f_calloc, f_realloc, free};

Test(proto, encoders_leave_the_buffer_as_it_was_when_allocation_fails)
{
    /* A payload large enough that the buffer grows several times. */
    static uint8_t payload[5 + 3000];
    payload[0] = 0xc6;
    am_be32_put(payload + 1, 3000);
    /* 64 bytes: the buffer's first capacity, so any encoder must grow it. */
    static const char prefix[64] = "earlier frames";
    for (int which = 0; which < 5; which++) {
        for (int k = 0;; k++) {
            struct am_buf out;
            am_buf_init(&out);
            cr_assert_eq(am_buf_append(&out, prefix, sizeof prefix), 0);
            alloc_count = 0;
            fail_at = k;
            am_mem_set(&flaky);
            int rc = -1;
            switch (which) {
            case 0:
                rc = am_encode_call(&out, AM_MSG_CALL, 1, "t", 1, "i", 1, "a", 1, payload,
                                    sizeof payload);
                break;
            case 1:
                rc = am_encode_reply(&out, 1, 0, payload, sizeof payload);
                break;
            case 2:
                rc = am_encode_hello(&out, 1, "client");
                break;
            case 3:
                rc = am_encode_status(&out, 1);
                break;
            default: {
                static char msg[400];
                memset(msg, 'm', sizeof msg - 1);
                rc = am_encode_error(&out, 1, AM_ST_INTERNAL, msg);
                break;
            }
            }
            am_mem_set(NULL);
            int failed = alloc_count > k;
            if (failed) {
                cr_assert_eq(rc, -ENOMEM, "encoder %d, allocation %d", which, k);
                cr_assert_eq(out.len, sizeof prefix);
                cr_assert(memcmp(out.data, prefix, sizeof prefix) == 0);
            } else {
                cr_assert_eq(rc, 0);
                const uint8_t *body;
                size_t len;
                long n = am_frame_next(out.data + sizeof prefix, out.len - sizeof prefix, MAX_FRAME,
                                       &body, &len);
                cr_assert_eq(n, (long)(out.len - sizeof prefix));
            }
            am_buf_close(&out);
            if (!failed)
                break;
        }
    }
    CHECK_LEAKS();
}

/* ---- framing ----------------------------------------------------------- */

Test(proto, frame_next_asks_for_more_bytes_until_the_frame_is_whole)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_status(&out, 5), 0);
    for (size_t k = 0; k < out.len; k++) {
        uint8_t *in = exact(out.data, k);
        const uint8_t *body = NULL;
        size_t len = 99;
        cr_assert_eq(am_frame_next(in, k, MAX_FRAME, &body, &len), 0, "prefix %zu", k);
        free(in);
    }
    uint8_t *in = exact(out.data, out.len);
    const uint8_t *body;
    size_t len;
    cr_assert_eq(am_frame_next(in, out.len, MAX_FRAME, &body, &len), (long)out.len);
    cr_assert_eq(body, in + AM_FRAME_HEADER);
    free(in);
    am_buf_close(&out);
}

Test(proto, frame_next_takes_an_exact_frame_and_an_empty_body)
{
    static const uint8_t f[] = {0, 0, 0, 3, 0x91, 0x01, 0x02, 0xff};
    const uint8_t *body;
    size_t len;
    cr_assert_eq(am_frame_next(f, 7, MAX_FRAME, &body, &len), 7);
    cr_assert_eq(body, f + 4);
    cr_assert_eq(len, 3);
    cr_assert_eq(am_frame_next(f, 8, MAX_FRAME, &body, &len), 7, "a following byte is not taken");

    static const uint8_t empty[] = {0, 0, 0, 0};
    cr_assert_eq(am_frame_next(empty, 4, MAX_FRAME, &body, &len), 4);
    cr_assert_eq(len, 0);
    struct am_request r;
    cr_assert_eq(am_request_decode(&r, body, len), AM_EPROTO);
    cr_assert_eq(r.has_id, 0);
}

Test(proto, frame_next_splits_two_frames_back_to_back)
{
    static const uint8_t f[] = {0, 0, 0, 2, 0x92, 0xc0, 0, 0, 0, 1, 0xc3};
    const uint8_t *body;
    size_t len;
    long n = am_frame_next(f, sizeof f, MAX_FRAME, &body, &len);
    cr_assert_eq(n, 6);
    cr_assert_eq(len, 2);
    cr_assert_eq(body[0], 0x92);
    n = am_frame_next(f + 6, sizeof f - 6, MAX_FRAME, &body, &len);
    cr_assert_eq(n, 5);
    cr_assert_eq(len, 1);
    cr_assert_eq(body, f + 10);
}

Test(proto, frame_next_refuses_a_header_announcing_four_gibibytes)
{
    static const uint8_t f[] = {0xff, 0xff, 0xff, 0xff};
    const uint8_t *body = NULL;
    size_t len = 0;
    /* Known from the header alone: no need to wait for 4 GiB to arrive. */
    cr_assert_eq(am_frame_next(f, sizeof f, MAX_FRAME, &body, &len), AM_ETOOBIG);
    cr_assert_null(body);
}

Test(proto, frame_next_accepts_exactly_max_and_refuses_one_more)
{
    uint8_t h[AM_FRAME_HEADER];
    const uint8_t *body;
    size_t len;
    am_be32_put(h, MAX_FRAME);
    cr_assert_eq(am_frame_next(h, sizeof h, MAX_FRAME, &body, &len), 0, "waits for the body");
    am_be32_put(h, MAX_FRAME + 1);
    cr_assert_eq(am_frame_next(h, sizeof h, MAX_FRAME, &body, &len), AM_ETOOBIG);
}

/* ---- requests refused -------------------------------------------------- */

/* Decodes m, expects AM_EPROTO and the given has_id. */
static void refused(struct msg *m, int has_id, const char *why)
{
    struct am_request r;
    cr_assert_eq(decode_req(&r, m), AM_EPROTO, "%s: accepted", why);
    cr_assert_eq(r.has_id, has_id, "%s: has_id %d", why, r.has_id);
    msg_close(m);
}

/* A CALL with the given field values; NULL packs nil instead of a string. */
static void call(struct msg *m, size_t n, uint64_t id, const char *type, const char *actor,
                 const char *action)
{
    msg_init(m);
    head(m, n, AM_MSG_CALL, id);
    const char *f[] = {type, actor, action};
    for (int i = 0; i < 3 && i + 2 < (int)n; i++) {
        if (f[i])
            str(m, f[i]);
        else
            msgpack_pack_nil(&m->pk);
    }
    for (size_t i = 5; i < n; i++)
        msgpack_pack_nil(&m->pk);
}

Test(proto, accepts_a_hand_built_call)
{
    struct msg m;
    call(&m, 6, 77, "t", "i", "a");
    struct am_request r;
    cr_assert_eq(decode_req(&r, &m), 0);
    cr_assert_eq(r.id, 77);
    cr_assert_eq(r.payload_len, 1);
    msg_close(&m);
}

Test(proto, refuses_requests_of_the_wrong_arity_with_their_id)
{
    struct msg m;
    for (size_t n = 2; n <= 8; n++) {
        if (n == 6)
            continue;
        call(&m, n, 1, "t", "i", "a");
        refused(&m, 1, "call arity");
        msg_init(&m);
        head(&m, n, AM_MSG_CAST, 1);
        for (size_t i = 2; i < n; i++)
            str(&m, "x");
        refused(&m, 1, "cast arity");
    }
    for (size_t n = 2; n <= 6; n++) {
        if (n == 4 || n == 5)
            continue;
        msg_init(&m);
        head(&m, n, AM_MSG_HELLO, 1);
        if (n > 2)
            msgpack_pack_uint64(&m.pk, 1);
        for (size_t i = 3; i < n; i++)
            str(&m, "client");
        refused(&m, 1, "hello arity");
    }
    for (size_t n = 3; n <= 5; n++) {
        msg_init(&m);
        head(&m, n, AM_MSG_STATUS, 1);
        for (size_t i = 2; i < n; i++)
            msgpack_pack_nil(&m.pk);
        refused(&m, 1, "status arity");
    }
}

Test(proto, refuses_requests_too_short_to_carry_an_id)
{
    struct msg m;
    msg_init(&m);
    msgpack_pack_array(&m.pk, 0);
    refused(&m, 0, "empty array");
    msg_init(&m);
    msgpack_pack_array(&m.pk, 1);
    msgpack_pack_uint64(&m.pk, AM_MSG_STATUS);
    refused(&m, 0, "kind only");
    msg_init(&m);
    refused(&m, 0, "empty body");
}

Test(proto, refuses_a_body_that_is_not_an_array)
{
    struct msg m;
    msg_init(&m);
    msgpack_pack_map(&m.pk, 1);
    msgpack_pack_uint64(&m.pk, AM_MSG_STATUS);
    msgpack_pack_uint64(&m.pk, 1);
    refused(&m, 0, "map");
    msg_init(&m);
    msgpack_pack_nil(&m.pk);
    refused(&m, 0, "nil");
}

Test(proto, refuses_a_kind_or_id_that_is_not_an_unsigned_integer)
{
    struct msg m;
    msg_init(&m);
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_int64(&m.pk, -1);
    msgpack_pack_uint64(&m.pk, 1);
    refused(&m, 0, "negative kind");
    msg_init(&m);
    msgpack_pack_array(&m.pk, 2);
    str(&m, "status");
    msgpack_pack_uint64(&m.pk, 1);
    refused(&m, 0, "string kind");
    msg_init(&m);
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_uint64(&m.pk, AM_MSG_STATUS);
    msgpack_pack_int64(&m.pk, -5);
    refused(&m, 0, "negative id");
    msg_init(&m);
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_uint64(&m.pk, AM_MSG_STATUS);
    msgpack_pack_double(&m.pk, 1.0);
    refused(&m, 0, "float id");
}

Test(proto, refuses_a_forward_of_another_kind_or_too_many_hops)
{
    static const uint64_t bad[][2] = {
        {AM_MSG_STATUS, 1}, {AM_MSG_FORWARD, 1}, {0, 1}, {AM_MSG_CALL, 256}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct msg m;
        msg_init(&m);
        head(&m, 9, AM_MSG_FORWARD, 5);
        msgpack_pack_uint64(&m.pk, bad[i][0]);
        msgpack_pack_uint64(&m.pk, bad[i][1]);
        msgpack_pack_uint64(&m.pk, 0);
        str(&m, "counter");
        str(&m, "c");
        str(&m, "add");
        msgpack_pack_nil(&m.pk);
        refused(&m, 1, "forward");
    }
}

Test(proto, refuses_unknown_kinds_with_their_id)
{
    static const uint64_t kinds[] = {12, 13, 127, AM_MSG_REPLY, 255, 256, UINT32_MAX, UINT64_MAX};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        struct msg m;
        msg_init(&m);
        head(&m, 2, kinds[i], 31);
        struct am_request r;
        cr_assert_eq(decode_req(&r, &m), AM_EPROTO, "kind %llu", (unsigned long long)kinds[i]);
        cr_assert_eq(r.has_id, 1);
        cr_assert_eq(r.id, 31);
        msg_close(&m);
    }
}

Test(proto, refuses_empty_names_with_their_id)
{
    struct msg m;
    call(&m, 6, 1, "", "i", "a");
    refused(&m, 1, "empty type");
    call(&m, 6, 1, "t", "", "a");
    refused(&m, 1, "empty id");
    call(&m, 6, 1, "t", "i", "");
    refused(&m, 1, "empty action");
    msg_init(&m);
    head(&m, 4, AM_MSG_HELLO, 1);
    msgpack_pack_uint64(&m.pk, AM_PROTO_VERSION);
    str(&m, "");
    refused(&m, 1, "empty role");
}

Test(proto, refuses_names_that_are_not_strings)
{
    struct msg m;
    call(&m, 6, 1, NULL, "i", "a");
    refused(&m, 1, "nil type");
    msg_init(&m);
    head(&m, 6, AM_MSG_CALL, 1);
    str(&m, "t");
    msgpack_pack_bin_with_body(&m.pk, "i", 1);
    str(&m, "a");
    msgpack_pack_nil(&m.pk);
    refused(&m, 1, "bin id");
}

/* Packs the longest allowed name for a field, then one byte more. */
static void name_limit(int field, size_t max)
{
    for (size_t len = max; len <= max + 1; len++) {
        struct msg m;
        msg_init(&m);
        if (field == 3) {
            head(&m, 4, AM_MSG_HELLO, 9);
            msgpack_pack_uint64(&m.pk, AM_PROTO_VERSION);
            str_n(&m, len, 'r');
        } else {
            head(&m, 6, AM_MSG_CALL, 9);
            for (int f = 0; f < 3; f++) {
                if (f == field)
                    str_n(&m, len, 'n');
                else
                    str(&m, "x");
            }
            msgpack_pack_nil(&m.pk);
        }
        struct am_request r;
        int rc = decode_req(&r, &m);
        if (len == max) {
            cr_assert_eq(rc, 0, "field %d at its limit %zu", field, max);
        } else {
            cr_assert_eq(rc, AM_EPROTO, "field %d over its limit", field);
            cr_assert_eq(r.has_id, 1);
            cr_assert_eq(r.id, 9);
        }
        msg_close(&m);
    }
}

Test(proto, refuses_names_over_their_limits)
{
    name_limit(0, AM_MAX_TYPE);
    name_limit(1, AM_MAX_ID);
    name_limit(2, AM_MAX_ACTION);
    name_limit(3, AM_MAX_ROLE);
}

Test(proto, refuses_a_slash_in_a_type_name)
{
    static const char *types[] = {"/", "a/b", "/a", "a/"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        struct msg m;
        call(&m, 6, 3, types[i], "i", "a");
        refused(&m, 1, types[i]);
    }
}

Test(proto, refuses_trailing_bytes_after_the_request)
{
    struct msg m;
    call(&m, 6, 1, "t", "i", "a");
    msgpack_pack_nil(&m.pk);
    refused(&m, 1, "call + nil");
    msg_init(&m);
    head(&m, 2, AM_MSG_STATUS, 1);
    msgpack_pack_nil(&m.pk);
    refused(&m, 1, "status + nil");
    msg_init(&m);
    head(&m, 4, AM_MSG_HELLO, 1);
    msgpack_pack_uint64(&m.pk, 1);
    str(&m, "client");
    msgpack_pack_uint64(&m.pk, 0);
    refused(&m, 1, "hello + 0");
}

Test(proto, refuses_a_hello_whose_version_is_not_an_unsigned_integer)
{
    struct msg m;
    msg_init(&m);
    head(&m, 4, AM_MSG_HELLO, 1);
    str(&m, "1");
    str(&m, "client");
    refused(&m, 1, "string version");
}

Test(proto, refuses_a_malformed_payload)
{
    /* The array header is honest (6 elements) but the payload claims a
     * 4-element array with one present. */
    struct msg m;
    msg_init(&m);
    head(&m, 6, AM_MSG_CALL, 1);
    str(&m, "t");
    str(&m, "i");
    str(&m, "a");
    msgpack_pack_array(&m.pk, 4);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_nil(&m.pk);
    refused(&m, 1, "short payload");
}

Test(proto, refuses_every_truncation_of_every_request)
{
    static const uint8_t payload[] = {0x92, 0xcd, 0x12, 0x34, 0xa3, 'x', 'y', 'z'};
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_call(&out, AM_MSG_CALL, 300, "type", 4, "id", 2, "act", 3, payload,
                                sizeof payload),
                 0);
    cr_assert_eq(am_encode_hello(&out, 70000, "client"), 0);
    cr_assert_eq(am_encode_status(&out, UINT64_MAX), 0);
    const uint8_t *p = out.data;
    size_t left = out.len;
    const uint8_t *body;
    size_t len;
    long n;
    while ((n = am_frame_next(p, left, MAX_FRAME, &body, &len)) > 0) {
        for (size_t k = 0; k < len; k++) {
            uint8_t *in = exact(body, k);
            struct am_request r;
            cr_assert_eq(am_request_decode(&r, in, k), AM_EPROTO, "prefix %zu of %zu", k, len);
            free(in);
        }
        uint8_t *in = exact(body, len);
        struct am_request r;
        cr_assert_eq(am_request_decode(&r, in, len), 0);
        free(in);
        p += n;
        left -= (size_t)n;
    }
    cr_assert_eq(left, 0);
    am_buf_close(&out);
    CHECK_LEAKS();
}

/* ---- replies refused --------------------------------------------------- */

static void reply_refused(struct msg *m, const char *why)
{
    struct am_reply r;
    cr_assert_eq(decode_reply(&r, m), AM_EPROTO, "%s: accepted", why);
    msg_close(m);
}

Test(proto, refuses_malformed_replies)
{
    struct msg m;
    for (size_t n = 0; n <= 6; n++) {
        if (n == 4)
            continue;
        msg_init(&m);
        msgpack_pack_array(&m.pk, n);
        static const uint64_t f[] = {AM_MSG_REPLY, 1, 0};
        for (size_t i = 0; i < n; i++) {
            if (i < 3)
                msgpack_pack_uint64(&m.pk, f[i]);
            else
                msgpack_pack_nil(&m.pk);
        }
        reply_refused(&m, "arity");
    }
    msg_init(&m);
    head(&m, 4, AM_MSG_CALL, 1);
    msgpack_pack_uint64(&m.pk, 0);
    msgpack_pack_nil(&m.pk);
    reply_refused(&m, "a request kind");
    msg_init(&m);
    head(&m, 4, AM_MSG_REPLY, 1);
    msgpack_pack_uint64(&m.pk, 256);
    msgpack_pack_nil(&m.pk);
    reply_refused(&m, "status 256");
    msg_init(&m);
    head(&m, 4, AM_MSG_REPLY, 1);
    msgpack_pack_int64(&m.pk, -1);
    msgpack_pack_nil(&m.pk);
    reply_refused(&m, "negative status");
    msg_init(&m);
    head(&m, 4, AM_MSG_REPLY, 1);
    msgpack_pack_uint64(&m.pk, 0);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_nil(&m.pk);
    reply_refused(&m, "trailing bytes");
    msg_init(&m);
    head(&m, 4, AM_MSG_REPLY, 1);
    msgpack_pack_uint64(&m.pk, 0);
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_nil(&m.pk);
    reply_refused(&m, "cut body");
    msg_init(&m);
    reply_refused(&m, "empty");
}

Test(proto, accepts_the_highest_wire_status)
{
    struct msg m;
    msg_init(&m);
    head(&m, 4, AM_MSG_REPLY, 5);
    msgpack_pack_uint64(&m.pk, 255);
    msgpack_pack_nil(&m.pk);
    struct am_reply r;
    cr_assert_eq(decode_reply(&r, &m), 0);
    cr_assert_eq(r.status, 255);
    cr_assert_eq(r.id, 5);
    msg_close(&m);
}

Test(proto, refuses_every_truncation_of_a_reply)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_error(&out, 123456, AM_ST_STORAGE, "disk on fire"), 0);
    size_t len;
    const uint8_t *body = one_frame(&out, &len);
    for (size_t k = 0; k < len; k++) {
        uint8_t *in = exact(body, k);
        struct am_reply r;
        cr_assert_eq(am_reply_decode(&r, in, k), AM_EPROTO, "prefix %zu", k);
        free(in);
    }
    am_buf_close(&out);
}

Test(proto, decoders_refuse_an_empty_body_given_as_null)
{
    /* Regression: body + len with body NULL is undefined even for len 0,
     * and clang's UBSan stopped on it. */
    struct am_request q;
    struct am_reply r;
    cr_assert_eq(am_request_decode(&q, NULL, 0), AM_EPROTO);
    cr_assert_eq(q.has_id, 0);
    cr_assert_eq(am_reply_decode(&r, NULL, 0), AM_EPROTO);
}

/* ---- randomized property (fixed seed) ---------------------------------- */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Decodes [in, in+n) (an exact heap block) and checks what a caller relies
 * on: accepted fields lie inside the body, the payload is one object, names
 * respect their limits. */
static int check_request(const uint8_t *in, size_t n)
{
    struct am_request r;
    int rc = am_request_decode(&r, in, n);
    if (rc) {
        cr_assert_eq(rc, AM_EPROTO);
        return 0;
    }
    const uint8_t *end = in + n;
    cr_assert(r.has_id);
#define INSIDE(ptr, len)                                                                           \
    cr_assert((const uint8_t *)(ptr) >= in && (const uint8_t *)(ptr) + (len) <= end)
    switch (r.kind) {
    case AM_MSG_FORWARD:
        cr_assert(r.fwd_kind == AM_MSG_CALL || r.fwd_kind == AM_MSG_CAST);
        cr_assert(r.hops <= 255);
        /* fall through */
    case AM_MSG_CALL:
    case AM_MSG_CAST:
        INSIDE(r.type, r.type_len);
        INSIDE(r.actor, r.actor_len);
        INSIDE(r.action, r.action_len);
        INSIDE(r.payload, r.payload_len);
        cr_assert(r.type_len >= 1 && r.type_len <= AM_MAX_TYPE);
        cr_assert(r.actor_len >= 1 && r.actor_len <= AM_MAX_ID);
        cr_assert(r.action_len >= 1 && r.action_len <= AM_MAX_ACTION);
        cr_assert_null(memchr(r.type, '/', r.type_len));
        cr_assert_eq(am_mp_check_one(r.payload, r.payload_len), 0);
        break;
    case AM_MSG_HELLO:
        INSIDE(r.role, r.role_len);
        cr_assert(r.role_len >= 1 && r.role_len <= AM_MAX_ROLE);
        if (r.name) {
            INSIDE(r.name, r.name_len);
            cr_assert(r.name_len >= 1 && r.name_len <= AM_MAX_PEER_NAME);
        }
        break;
    case AM_MSG_HANDOFF:
    case AM_MSG_REPLICATE:
        INSIDE(r.type, r.type_len);
        INSIDE(r.payload, r.payload_len);
        cr_assert(r.type_len >= 1 && r.type_len <= AM_MAX_TYPE + 1 + AM_MAX_ID);
        break;
    case AM_MSG_DIGEST:
    case AM_MSG_VERSIONS:
        INSIDE(r.payload, r.payload_len);
        break;
    case AM_MSG_FETCH:
        INSIDE(r.type, r.type_len);
        cr_assert(r.type_len >= 1 && r.type_len <= AM_MAX_TYPE + 1 + AM_MAX_ID);
        break;
    case AM_MSG_ACTORS:
    case AM_MSG_HANDOFF_DONE:
    case AM_MSG_STATUS:
    case AM_MSG_MEMBERS:
    case AM_MSG_LEAVE:
    case AM_MSG_RING:
        break;
    case AM_MSG_SYNC:
        INSIDE(r.payload, r.payload_len);
        break;
    default:
        cr_assert_fail("accepted kind %d", r.kind);
    }
#undef INSIDE
    return 1;
}

Test(proto, decoders_survive_random_and_mutated_bodies)
{
    struct rng r = {0x5eed0003};
    struct am_buf valid;
    am_buf_init(&valid);
    static const uint8_t payload[] = {0x82, 0xa1, 'k',  0x93, 0x01, 0xd0, 0x80,
                                      0xc4, 0x01, 0x00, 0xa1, 'v',  0xcb, 0,
                                      0,    0,    0,    0,    0,    0,    0};
    cr_assert_eq(am_encode_call(&valid, AM_MSG_CALL, 1000, "account", 7, "bob", 3, "get", 3,
                                payload, sizeof payload),
                 0);
    cr_assert_eq(am_encode_hello(&valid, 2, "client"), 0);
    cr_assert_eq(am_encode_status(&valid, 3), 0);
    cr_assert_eq(am_encode_reply(&valid, 4, 0, payload, sizeof payload), 0);
    /* The four bodies, to mutate. */
    const uint8_t *bodies[4];
    size_t lens[4];
    const uint8_t *p = valid.data;
    size_t left = valid.len;
    for (int i = 0; i < 4; i++) {
        long n = am_frame_next(p, left, MAX_FRAME, &bodies[i], &lens[i]);
        cr_assert_gt(n, 0);
        p += n;
        left -= (size_t)n;
    }
    int accepted = 0, replies = 0;
    uint8_t m[256];
    for (int i = 0; i < 40000; i++) {
        size_t n;
        if (i % 4 == 0) {
            n = rng_next(&r) % 64;
            for (size_t k = 0; k < n; k++)
                m[k] = (uint8_t)rng_next(&r);
        } else {
            int b = (int)(rng_next(&r) % 4);
            n = lens[b];
            memcpy(m, bodies[b], n);
            int edits = 1 + (int)(rng_next(&r) % 3);
            for (int e = 0; e < edits; e++) {
                uint64_t x = rng_next(&r);
                switch (x % 4) {
                case 0:
                    m[(x >> 8) % n] = (uint8_t)(x >> 32);
                    break;
                case 1:
                    m[(x >> 8) % n] ^= (uint8_t)(1u << ((x >> 32) % 8));
                    break;
                case 2:
                    n = n > 1 ? (size_t)((x >> 8) % n) + 1 : n;
                    break;
                default:
                    if (n < sizeof m)
                        m[n++] = (uint8_t)(x >> 32);
                    break;
                }
            }
        }
        uint8_t *in = exact(m, n);
        accepted += check_request(in, n);
        struct am_reply rep;
        int rc = am_reply_decode(&rep, in, n);
        if (rc == 0) {
            replies++;
            cr_assert(rep.body >= in && rep.body + rep.body_len == in + n);
            cr_assert_eq(am_mp_check_one(rep.body, rep.body_len), 0);
            cr_assert(rep.status >= 0 && rep.status <= 255);
        } else {
            cr_assert_eq(rc, AM_EPROTO);
        }
        free(in);
    }
    cr_assert_gt(accepted, 1000, "accepted %d", accepted);
    cr_assert_gt(replies, 100, "replies %d", replies);
    am_buf_close(&valid);
    CHECK_LEAKS();
}
