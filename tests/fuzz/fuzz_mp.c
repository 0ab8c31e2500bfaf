/* fuzz_mp.c - libFuzzer target for the bounded msgpack reader.
 *
 * am_mp_skip and am_mp_check_one must never read outside the input, must
 * leave the cursor alone on failure, and must agree with each other and with
 * the typed readers. Whatever am_mp_skip accepts, msgpack-c's
 * msgpack_unpack_next must unpack as one object of the same length; that
 * cross-check runs only on inputs under 4 KiB, because msgpack-c trusts the
 * counts it reads and would allocate for them (am_mp_skip has already
 * bounded every count by the input length, so 4 KiB keeps that small). */
#include "err.h"
#include "mp.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define CROSS_CHECK_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The typed reader for the first object must agree with am_mp_skip. */
static void check_typed(const uint8_t *data, const uint8_t *end, int skip_ok,
                        const uint8_t *skip_end)
{
    const uint8_t *p = data;
    const char *s;
    const uint8_t *b;
    uint32_t n;
    int64_t i;
    uint64_t u;
    int bo, rc;
    switch (am_mp_peek(data, end)) {
    case AM_MP_NONE:
        CHECK(!skip_ok);
        return;
    case AM_MP_NIL:
        rc = am_mp_read_nil(&p, end);
        break;
    case AM_MP_BOOL:
        rc = am_mp_read_bool(&p, end, &bo);
        break;
    case AM_MP_INT:
        rc = am_mp_read_int(&p, end, &i);
        if (rc) {
            CHECK(p == data);
            rc = am_mp_read_uint(&p, end, &u);
        }
        break;
    case AM_MP_STR:
        rc = am_mp_read_str(&p, end, &s, &n);
        if (rc == 0)
            CHECK((const uint8_t *)s + n == p);
        break;
    case AM_MP_BIN:
        rc = am_mp_read_bin(&p, end, &b, &n);
        if (rc == 0)
            CHECK(b + n == p);
        break;
    case AM_MP_ARRAY:
    case AM_MP_MAP:
        /* A header that reads is necessary, not sufficient. */
        rc = am_mp_peek(data, end) == AM_MP_MAP ? am_mp_read_map(&p, end, &n)
                                                : am_mp_read_array(&p, end, &n);
        if (rc == 0)
            CHECK((size_t)(end - p) >= n);
        if (skip_ok)
            CHECK(rc == 0);
        if (rc)
            CHECK(!skip_ok && p == data);
        return;
    default: /* floats and exts have no typed reader */
        return;
    }
    if (rc) {
        CHECK(rc == AM_EPROTO && p == data);
        CHECK(!skip_ok);
    } else {
        CHECK(skip_ok && p == skip_end);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *end = data + size;
    const uint8_t *p = data;
    int rc = am_mp_skip(&p, end);
    if (rc == 0) {
        CHECK(p > data && p <= end);
        size_t len = (size_t)(p - data);
        CHECK(am_mp_check_one(data, len) == 0);
        CHECK(am_mp_check_one(data, size) == (len == size ? 0 : AM_EPROTO));
        if (size < CROSS_CHECK_MAX) {
            msgpack_unpacked u;
            size_t off = 0;
            msgpack_unpacked_init(&u);
            msgpack_unpack_return ur = msgpack_unpack_next(&u, (const char *)data, size, &off);
            msgpack_unpacked_destroy(&u);
            if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
                fprintf(stderr, "am_mp_skip took %zu bytes; msgpack-c returned %d after %zu\n", len,
                        (int)ur, off);
            CHECK(ur == MSGPACK_UNPACK_SUCCESS && off == len);
        }
    } else {
        CHECK(rc == AM_EPROTO && p == data);
        CHECK(am_mp_check_one(data, size) == AM_EPROTO);
    }
    check_typed(data, end, rc == 0, p);

    /* The rest of the input as a sequence of objects, as a reader of a
     * stream of them would take it. */
    while (p < end && am_mp_skip(&p, end) == 0)
        CHECK(p <= end);
    return 0;
}
