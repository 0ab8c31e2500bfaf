/* test_hset.c - the set of 64-bit hashes. */
#include "hset.h"

#include <criterion/criterion.h>
#include <stdint.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

Test(hset, adds_once_finds_what_was_added_and_grows_past_its_first_size)
{
    struct am_hset s;
    am_hset_init(&s);
    cr_assert_eq(am_hset_has(&s, 42), 0, "an empty set has nothing");
    /* Colliding low bits (multiples of 4096) and 0 itself (kept as 1). */
    for (uint64_t i = 0; i < 5000; i++)
        cr_assert_eq(am_hset_add(&s, i * 4096), 1, "%llu", (unsigned long long)i);
    cr_assert_eq(s.n, 5000);
    cr_assert_geq(s.cap, 10000);
    for (uint64_t i = 0; i < 5000; i++) {
        cr_assert_eq(am_hset_add(&s, i * 4096), 0, "added twice: %llu", (unsigned long long)i);
        cr_assert(am_hset_has(&s, i * 4096));
        if (i) /* 0 is kept as 1: the one pair of hashes the set confuses */
            cr_assert_not(am_hset_has(&s, i * 4096 + 1));
    }
    am_hset_clear(&s);
    cr_assert_eq(s.n, 0);
    cr_assert_not(am_hset_has(&s, 4096));
    cr_assert_eq(am_hset_add(&s, 4096), 1);
    am_hset_free(&s);
    cr_assert_eq(s.cap, 0);
    CHECK_LEAKS();
}
