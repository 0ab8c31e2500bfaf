/* test_buf.c - the growable byte buffer and big-endian helpers (src/base/buf.h). */
#include "buf.h"
#include "mem.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

/* An allocator that counts calls and can refuse all of them. */
static int allocs, refuse;

static void *c_malloc(size_t n)
{
    allocs++;
    return refuse ? NULL : malloc(n);
}

static void *c_calloc(size_t n, size_t m)
{
    allocs++;
    return refuse ? NULL : calloc(n, m);
}

static void *c_realloc(void *p, size_t n)
{
    allocs++;
    return refuse ? NULL : realloc(p, n);
}

static const struct am_allocator counting = {c_malloc, c_calloc, c_realloc, free};

Test(buf, starts_empty_without_allocating)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    am_mem_set(&counting);
    cr_assert_eq(am_buf_append(&b, "x", 0), 0, "appending nothing");
    cr_assert_eq(am_buf_append(&b, NULL, 0), 0);
    cr_assert_eq(am_buf_reserve(&b, 0), 0);
    am_mem_set(NULL);
    cr_assert_eq(allocs, 0);
    cr_assert_null(b.data);
    am_buf_close(&b);
}

Test(buf, grows_by_doubling_and_keeps_every_byte)
{
    struct am_buf b;
    am_buf_init(&b);
    uint8_t *want = malloc(100000);
    size_t n = 0;
    size_t last_cap = 0;
    int growths = 0;
    am_mem_set(&counting);
    for (unsigned i = 0; n < 90000; i++) {
        uint8_t chunk[7];
        size_t k = i % 8 == 0 ? 0 : i % 7 + 1;
        for (size_t j = 0; j < k; j++)
            chunk[j] = (uint8_t)(n + j);
        cr_assert_eq(am_buf_append(&b, chunk, k), 0);
        memcpy(want + n, chunk, k);
        n += k;
        cr_assert_eq(b.len, n);
        cr_assert_geq(b.cap, b.len);
        if (b.cap != last_cap) {
            cr_assert(last_cap == 0 ? b.cap == 64 : b.cap == 2 * last_cap, "cap %zu after %zu",
                      b.cap, last_cap);
            last_cap = b.cap;
            growths++;
        }
    }
    am_mem_set(NULL);
    cr_assert_eq(allocs, growths, "one allocation per growth, %d for %zu bytes", allocs, n);
    cr_assert_leq(growths, 12, "doubling from 64 reaches 128 KiB in 12 steps");
    cr_assert(memcmp(b.data, want, n) == 0);
    free(want);
    am_buf_close(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    CHECK_LEAKS();
}

Test(buf, reserves_a_large_block_in_one_step)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_reserve(&b, 1000), 0);
    cr_assert_geq(b.cap, 1000);
    cr_assert_eq(b.cap, 1024, "64 doubled until it holds 1000");
    cr_assert_eq(b.len, 0);
    uint8_t *before = b.data;
    cr_assert_eq(am_buf_reserve(&b, 1024), 0);
    cr_assert_eq(b.data, before, "no move while it fits");
    am_buf_close(&b);
}

Test(buf, refuses_a_size_that_would_overflow)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_append(&b, "abc", 3), 0);
    am_mem_set(&counting);
    cr_assert_eq(am_buf_reserve(&b, SIZE_MAX), -ENOMEM);
    cr_assert_eq(am_buf_reserve(&b, SIZE_MAX - 2), -ENOMEM);
    am_mem_set(NULL);
    cr_assert_eq(allocs, 0, "refused before asking the allocator");
    cr_assert_eq(b.len, 3);
    cr_assert(memcmp(b.data, "abc", 3) == 0);
    am_buf_close(&b);
}

Test(buf, stays_intact_when_the_allocator_fails)
{
    struct am_buf b;
    am_buf_init(&b);
    char full[64];
    memset(full, 'f', sizeof full);
    cr_assert_eq(am_buf_append(&b, full, sizeof full), 0);
    cr_assert_eq(b.cap, 64);
    refuse = 1;
    am_mem_set(&counting);
    cr_assert_eq(am_buf_append(&b, "x", 1), -ENOMEM);
    cr_assert_eq(am_buf_set(&b, full, 65), -ENOMEM);
    am_mem_set(NULL);
    cr_assert_eq(b.cap, 64);
    cr_assert_eq(b.len, 0, "set empties the buffer before appending");
    cr_assert(memcmp(b.data, full, sizeof full) == 0, "the bytes are not touched");

    struct am_buf e;
    am_buf_init(&e);
    am_mem_set(&counting);
    cr_assert_eq(am_buf_append(&e, "x", 1), -ENOMEM);
    am_mem_set(NULL);
    cr_assert_null(e.data);
    cr_assert_eq(e.len, 0);
    am_buf_close(&e);
    am_buf_close(&b);
}

Test(buf, set_replaces_the_contents)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_append(&b, "hello world", 11), 0);
    cr_assert_eq(am_buf_set(&b, "bye", 3), 0);
    cr_assert_eq(b.len, 3);
    cr_assert(memcmp(b.data, "bye", 3) == 0);
    cr_assert_eq(am_buf_set(&b, NULL, 0), 0);
    cr_assert_eq(b.len, 0);
    am_buf_close(&b);
}

Test(buf, consume_drops_the_front)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_append(&b, "0123456789", 10), 0);
    am_buf_consume(&b, 0);
    cr_assert_eq(b.len, 10);
    am_buf_consume(&b, 3);
    cr_assert_eq(b.len, 7);
    cr_assert(memcmp(b.data, "3456789", 7) == 0);
    am_buf_consume(&b, 6);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.data[0], '9');
    am_buf_consume(&b, 1);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(am_buf_append(&b, "ab", 2), 0);
    am_buf_consume(&b, 1000);
    cr_assert_eq(b.len, 0, "consuming more than held empties it");
    cr_assert_eq(b.cap, 64, "and keeps the memory for reuse");
    am_buf_consume(&b, 1);
    cr_assert_eq(b.len, 0);
    am_buf_close(&b);

    struct am_buf e;
    am_buf_init(&e);
    am_buf_consume(&e, 5);
    cr_assert_eq(e.len, 0);
    am_buf_close(&e);
}

Test(buf, steal_hands_over_the_bytes_and_leaves_it_empty)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_append(&b, "payload", 7), 0);
    size_t len = 0;
    uint8_t *p = am_buf_steal(&b, &len);
    cr_assert_not_null(p);
    cr_assert_eq(len, 7);
    cr_assert(memcmp(p, "payload", 7) == 0);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    /* The buffer is reusable, and closing it does not touch the stolen bytes. */
    cr_assert_eq(am_buf_append(&b, "again", 5), 0);
    cr_assert_neq(b.data, p);
    am_buf_close(&b);
    am_buf_close(&b);
    cr_assert(memcmp(p, "payload", 7) == 0);
    am_free(p);

    struct am_buf e;
    am_buf_init(&e);
    len = 99;
    cr_assert_null(am_buf_steal(&e, &len));
    cr_assert_eq(len, 0);
    CHECK_LEAKS();
}

Test(buf, stores_and_loads_big_endian_integers)
{
    uint8_t p[8];
    am_be32_put(p, 0x01020304u);
    cr_assert(memcmp(p, "\x01\x02\x03\x04", 4) == 0);
    cr_assert_eq(am_be32_get(p), 0x01020304u);
    am_be32_put(p, UINT32_MAX);
    cr_assert_eq(am_be32_get(p), UINT32_MAX);
    am_be64_put(p, 0x0102030405060708u);
    cr_assert(memcmp(p, "\x01\x02\x03\x04\x05\x06\x07\x08", 8) == 0);
    cr_assert_eq(am_be64_get(p), 0x0102030405060708u);
    static const uint64_t vals[] = {0, 1, 0x80, 0xff00ff00ff00ff00u, UINT64_MAX};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        am_be64_put(p, vals[i]);
        cr_assert_eq(am_be64_get(p), vals[i]);
        am_be32_put(p, (uint32_t)vals[i]);
        cr_assert_eq(am_be32_get(p), (uint32_t)vals[i]);
    }
}
