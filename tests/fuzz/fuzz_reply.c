/* fuzz_reply.c - libFuzzer target for am_reply_decode (the client side of
 * the protocol), on the whole input and on each frame of it as a stream.
 *
 * Invariants on every accepted reply: the body lies inside the input, ends
 * it, and is exactly one msgpack object; the status fits a byte; encoding
 * the reply again decodes to the same fields. */
#include "buf.h"
#include "err.h"
#include "mp.h"
#include "proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FRAME (1u << 20)

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_reply(const uint8_t *body, size_t len)
{
    struct am_reply r;
    int rc = am_reply_decode(&r, body, len);
    if (rc) {
        CHECK(rc == AM_EPROTO);
        return;
    }
    CHECK(r.body && r.body >= body && r.body_len >= 1);
    CHECK(r.body + r.body_len == body + len);
    CHECK(am_mp_check_one(r.body, r.body_len) == 0);
    CHECK(r.status >= 0 && r.status <= 255);

    struct am_buf out;
    am_buf_init(&out);
    CHECK(am_encode_reply(&out, r.id, r.status, r.body, r.body_len) == 0);
    const uint8_t *b;
    size_t blen;
    CHECK(am_frame_next(out.data, out.len, MAX_FRAME + 64, &b, &blen) == (long)out.len);
    struct am_reply q;
    CHECK(am_reply_decode(&q, b, blen) == 0);
    CHECK(q.id == r.id && q.status == r.status && q.body_len == r.body_len);
    CHECK(memcmp(q.body, r.body, r.body_len) == 0);
    am_buf_close(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data;
    size_t left = size;
    const uint8_t *body;
    size_t len;
    long n;
    while ((n = am_frame_next(p, left, MAX_FRAME, &body, &len)) > 0) {
        CHECK(body == p + AM_FRAME_HEADER && (size_t)n == AM_FRAME_HEADER + len &&
              (size_t)n <= left);
        check_reply(body, len);
        p += n;
        left -= (size_t)n;
    }
    CHECK(n == 0 || n == AM_ETOOBIG);
    check_reply(data, size);
    return 0;
}
