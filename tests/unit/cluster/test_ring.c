/* test_ring.c - the consistent-hash ring: determinism across input orders,
 * balance at the default V (and the measurement that chose it), minimal
 * movement on a join, successors, edge cases and allocation failure. */
#include "mem.h"
#include "ring.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define LEAK_CHECK() ((void)0)
#endif

#define NKEYS 1000000

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Fills names[0..n) (each buf[i], 32 bytes) in one of the named styles. */
enum style { ADDRS, SHORT };

static void make_names(char buf[][32], const char **names, size_t n, enum style st)
{
    for (size_t i = 0; i < n; i++) {
        if (st == ADDRS)
            snprintf(buf[i], 32, "127.0.0.%u:7946", (unsigned)i + 1);
        else
            snprintf(buf[i], 32, "n%u", (unsigned)i);
        names[i] = buf[i];
    }
}

/* Random names: "node-" and 1..12 random letters/digits, or a random
 * "a.b.c.d:port"; duplicates are vanishingly unlikely and would fail build. */
static void random_names(char buf[][32], const char **names, size_t n, uint64_t *seed)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (size_t i = 0; i < n; i++) {
        uint64_t x = splitmix(seed);
        if (x & 1) {
            snprintf(buf[i], 32, "%u.%u.%u.%u:%u", (unsigned)(x >> 8) & 255,
                     (unsigned)(x >> 16) & 255, (unsigned)(x >> 24) & 255,
                     (unsigned)(x >> 32) & 255, 1024 + (unsigned)((x >> 40) % 60000));
        } else {
            size_t len = 1 + (size_t)((x >> 8) % 12);
            memcpy(buf[i], "node-", 5);
            for (size_t j = 0; j < len; j++)
                buf[i][5 + j] = al[splitmix(seed) % (sizeof al - 1)];
            buf[i][5 + len] = '\0';
        }
        names[i] = buf[i];
    }
}

static double max_over_mean(const struct am_ring *r)
{
    size_t n = am_ring_count(r);
    double sh[64], max = 0, sum = 0;
    cr_assert_leq(n, 64);
    am_ring_shares(r, sh);
    for (size_t i = 0; i < n; i++) {
        sum += sh[i];
        if (sh[i] > max)
            max = sh[i];
    }
    cr_assert_float_eq(sum, 1.0, 1e-9);
    return max / (1.0 / (double)n);
}

/* Counts keys "counter/<i>" per member; returns the max/mean ratio. */
static double count_keys(const struct am_ring *r, int *owner_of /* NKEYS or NULL */)
{
    size_t n = am_ring_count(r);
    size_t cnt[64] = {0};
    char id[16];
    for (int i = 0; i < NKEYS; i++) {
        int len = snprintf(id, sizeof id, "%d", i);
        int o = am_ring_owner(r, am_ring_key("counter", 7, id, (size_t)len));
        cr_assert(o >= 0 && (size_t)o < n);
        cnt[o]++;
        if (owner_of)
            owner_of[i] = o;
    }
    size_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = cnt[i] > max ? cnt[i] : max;
    return (double)max / ((double)NKEYS / (double)n);
}

/* The choice of AM_RING_VNODES (ring.h): over the two real-looking sets and
 * 300 sets of random names, 10 members each, the busiest member's share at
 * the chosen V stays within 1.10x the mean, and the smaller V of the table
 * do not. Prints the table. */
Test(ring, chooses_vnodes_by_measurement)
{
    static const unsigned vs[] = {256, 512, 1024, AM_RING_VNODES};
    enum { NSETS = 302 };
    char buf[10][32];
    const char *names[10];
    double worst_at[sizeof vs / sizeof vs[0]];
    for (size_t k = 0; k < sizeof vs / sizeof vs[0]; k++) {
        double worst = 0, total = 0;
        int over = 0;
        uint64_t seed = 42;
        for (int set = 0; set < NSETS; set++) {
            if (set == 0)
                make_names(buf, names, 10, ADDRS);
            else if (set == 1)
                make_names(buf, names, 10, SHORT);
            else
                random_names(buf, names, 10, &seed);
            struct am_ring *r;
            cr_assert_eq(am_ring_build(&r, names, 10, vs[k]), 0);
            double m = max_over_mean(r);
            total += m;
            over += m > 1.10;
            worst = m > worst ? m : worst;
            am_ring_free(r);
        }
        worst_at[k] = worst;
        cr_log_info("V %4u: worst max/mean %.4f, mean %.4f, %d of %d sets over 1.10", vs[k], worst,
                    total / NSETS, over, NSETS);
    }
    cr_assert_leq(worst_at[sizeof vs / sizeof vs[0] - 1], 1.10,
                  "AM_RING_VNODES %u lets the busiest of 10 own more than 1.10x the mean",
                  AM_RING_VNODES);
    cr_assert_gt(worst_at[1], 1.10, "512 would do: the table in ring.h is stale");
}

Test(ring, same_view_in_any_order_builds_the_same_ring)
{
    char buf[10][32];
    const char *a[10], *b[10];
    make_names(buf, a, 10, ADDRS);
    uint64_t seed = 7;
    memcpy(b, a, sizeof a);
    for (size_t i = 9; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(splitmix(&seed) % (i + 1));
        const char *t = b[i];
        b[i] = b[j];
        b[j] = t;
    }
    cr_assert(memcmp(a, b, sizeof a) != 0, "the shuffle left the order unchanged");
    struct am_ring *ra, *rb;
    cr_assert_eq(am_ring_build(&ra, a, 10, AM_RING_VNODES), 0);
    cr_assert_eq(am_ring_build(&rb, b, 10, AM_RING_VNODES), 0);
    cr_assert_eq(am_ring_version(ra), am_ring_version(rb));
    for (int i = 0; i < 100000; i++) {
        uint64_t k = splitmix(&seed);
        int oa = am_ring_owner(ra, k), ob = am_ring_owner(rb, k);
        cr_assert_eq(oa, ob);
        cr_assert_str_eq(am_ring_member(ra, oa), am_ring_member(rb, ob));
    }
    am_ring_free(ra);
    am_ring_free(rb);
    LEAK_CHECK();
}

static void check_balance(enum style st)
{
    char buf[10][32];
    const char *names[10];
    make_names(buf, names, 10, st);
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, names, 10, AM_RING_VNODES), 0);
    double exact = max_over_mean(r);
    double counted = count_keys(r, NULL);
    cr_log_info("%s..: max/mean %.4f by key-space share, %.4f by 1,000,000 keys", names[0], exact,
                counted);
    cr_assert_leq(exact, 1.10);
    cr_assert_leq(counted, 1.10);
    am_ring_free(r);
}

Test(ring, busiest_of_ten_addresses_owns_at_most_1_10_of_the_mean)
{
    check_balance(ADDRS);
}

Test(ring, busiest_of_ten_short_names_owns_at_most_1_10_of_the_mean)
{
    check_balance(SHORT);
}

static void check_join(enum style st)
{
    char buf[11][32];
    const char *names[11];
    make_names(buf, names, 11, st);
    struct am_ring *r10, *r11;
    cr_assert_eq(am_ring_build(&r10, names, 10, AM_RING_VNODES), 0);
    cr_assert_eq(am_ring_build(&r11, names, 11, AM_RING_VNODES), 0);
    int *before = malloc(NKEYS * sizeof *before), *after = malloc(NKEYS * sizeof *after);
    cr_assert(before && after);
    count_keys(r10, before);
    count_keys(r11, after);
    int newcomer = am_ring_find(r11, names[10]);
    cr_assert_geq(newcomer, 0);
    size_t moved = 0;
    for (int i = 0; i < NKEYS; i++) {
        const char *was = am_ring_member(r10, before[i]), *is = am_ring_member(r11, after[i]);
        if (strcmp(was, is) != 0) {
            moved++;
            cr_assert_eq(after[i], newcomer, "key %d moved from %s to %s, not to the newcomer", i,
                         was, is);
        } else {
            cr_assert_neq(after[i], newcomer);
        }
    }
    double frac = (double)moved / NKEYS, ideal = 1.0 / 11;
    cr_log_info("join of %s: %.4f of keys moved (1/11 = %.4f)", names[10], frac, ideal);
    cr_assert(frac >= 0.8 * ideal && frac <= 1.2 * ideal);
    free(before);
    free(after);
    am_ring_free(r10);
    am_ring_free(r11);
}

Test(ring, a_join_moves_about_one_eleventh_of_keys_all_to_the_newcomer)
{
    check_join(ADDRS);
    check_join(SHORT);
}

/* The owner found through the bucket index is the one a scan of every
 * point gives: the member of the lowest point at or after the key, else of
 * the lowest point of all (ties to the member first by name). */
Test(ring, lookup_agrees_with_a_scan_of_every_point)
{
    const char *names[] = {"n0", "n1", "n2", "n3", "n4"};
    const unsigned vnodes = 64; /* few points: many empty buckets */
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, names, 5, vnodes), 0);
    uint64_t seed = 12345;
    for (int k = 0; k < 20000; k++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t key = k == 0 ? 0 : k == 1 ? UINT64_MAX : seed;
        uint64_t best = UINT64_MAX, low = UINT64_MAX;
        int best_m = -1, low_m = -1;
        for (int m = 0; m < 5; m++) {
            int idx = am_ring_find(r, names[m]);
            for (unsigned v = 0; v < vnodes; v++) {
                uint64_t h = am_ring_point(names[m], 2, v);
                if (h >= key && (best_m < 0 || h < best || (h == best && idx < best_m))) {
                    best = h;
                    best_m = idx;
                }
                if (low_m < 0 || h < low || (h == low && idx < low_m)) {
                    low = h;
                    low_m = idx;
                }
            }
        }
        int want = best_m >= 0 ? best_m : low_m;
        cr_assert_eq(am_ring_owner(r, key), want, "key %016llx", (unsigned long long)key);
    }
    am_ring_free(r);
    LEAK_CHECK();
}

Test(ring, successors_are_distinct_and_follow_the_owner)
{
    char buf[10][32];
    const char *names[10];
    make_names(buf, names, 10, ADDRS);
    for (size_t n = 1; n <= 10; n++) {
        struct am_ring *r;
        cr_assert_eq(am_ring_build(&r, names, n, AM_RING_VNODES), 0);
        uint64_t seed = n;
        for (int t = 0; t < 2000; t++) {
            uint64_t key = splitmix(&seed);
            size_t max = (size_t)t % 12;
            int out[12];
            size_t got = am_ring_successors(r, key, out, max);
            size_t want = n - 1 < max ? n - 1 : max;
            cr_assert_eq(got, want);
            int owner = am_ring_owner(r, key);
            for (size_t i = 0; i < got; i++) {
                cr_assert_neq(out[i], owner);
                for (size_t j = 0; j < i; j++)
                    cr_assert_neq(out[i], out[j]);
            }
            /* The first successor owns the key just past the owner's arc:
             * remove the owner and it is the new owner. */
            if (got > 0 && t < 200) {
                const char *rest[10];
                size_t m = 0;
                for (size_t i = 0; i < n; i++)
                    if (strcmp(names[i], am_ring_member(r, owner)) != 0)
                        rest[m++] = names[i];
                struct am_ring *r2;
                cr_assert_eq(am_ring_build(&r2, rest, m, AM_RING_VNODES), 0);
                cr_assert_str_eq(am_ring_member(r2, am_ring_owner(r2, key)),
                                 am_ring_member(r, out[0]));
                am_ring_free(r2);
            }
        }
        am_ring_free(r);
    }
}

Test(ring, an_empty_ring_owns_nothing)
{
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, NULL, 0, AM_RING_VNODES), 0);
    cr_assert_eq(am_ring_count(r), 0);
    cr_assert_eq(am_ring_owner(r, 0), -1);
    cr_assert_eq(am_ring_owner(r, UINT64_MAX), -1);
    int out[3];
    cr_assert_eq(am_ring_successors(r, 5, out, 3), 0);
    cr_assert_null(am_ring_member(r, 0));
    cr_assert_eq(am_ring_find(r, "x"), -1);
    am_ring_free(r);
    am_ring_free(NULL);
}

Test(ring, one_member_owns_everything)
{
    const char *names[] = {"solo"};
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, names, 1, AM_RING_VNODES), 0);
    uint64_t seed = 3;
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(am_ring_owner(r, splitmix(&seed)), 0);
    cr_assert_eq(am_ring_owner(r, 0), 0);
    cr_assert_eq(am_ring_owner(r, UINT64_MAX), 0);
    double sh[1];
    am_ring_shares(r, sh);
    cr_assert_float_eq(sh[0], 1.0, 1e-12);
    int out[2];
    cr_assert_eq(am_ring_successors(r, 1, out, 2), 0);
    cr_assert_str_eq(am_ring_member(r, 0), "solo");
    am_ring_free(r);
}

Test(ring, bad_views_are_refused)
{
    struct am_ring *r = (struct am_ring *)1;
    const char *dup[] = {"a", "b", "a"};
    cr_assert_eq(am_ring_build(&r, dup, 3, 16), -EINVAL);
    cr_assert_null(r);
    const char *empty[] = {"a", ""};
    cr_assert_eq(am_ring_build(&r, empty, 2, 16), -EINVAL);
    const char *null[] = {"a", NULL};
    cr_assert_eq(am_ring_build(&r, null, 2, 16), -EINVAL);
    const char *ok[] = {"a"};
    cr_assert_eq(am_ring_build(&r, ok, 1, 0), -EINVAL);
    cr_assert_eq(am_ring_build(&r, ok, 1, AM_RING_MAX_VNODES + 1), -EINVAL);
    char longname[AM_RING_MAX_NAME + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const char *lng[] = {longname};
    cr_assert_eq(am_ring_build(&r, lng, 1, 16), -EINVAL);
    longname[AM_RING_MAX_NAME] = '\0';
    cr_assert_eq(am_ring_build(&r, lng, 1, 16), 0);
    am_ring_free(r);
    LEAK_CHECK();
}

Test(ring, version_changes_with_members_and_vnodes)
{
    const char *abc[] = {"a", "b", "c"}, *ab[] = {"a", "b"}, *cat[] = {"ab", "c"};
    struct am_ring *r1, *r2, *r3, *r4, *r5;
    cr_assert_eq(am_ring_build(&r1, abc, 3, 64), 0);
    cr_assert_eq(am_ring_build(&r2, ab, 2, 64), 0);   /* removed */
    cr_assert_eq(am_ring_build(&r3, abc, 3, 128), 0); /* V changed */
    cr_assert_eq(am_ring_build(&r4, cat, 2, 64), 0);  /* same bytes, other names */
    cr_assert_eq(am_ring_build(&r5, abc, 3, 64), 0);  /* rebuilt */
    cr_assert_neq(am_ring_version(r1), am_ring_version(r2));
    cr_assert_neq(am_ring_version(r1), am_ring_version(r3));
    cr_assert_neq(am_ring_version(r2), am_ring_version(r4));
    cr_assert_neq(am_ring_version(r1), am_ring_version(r4));
    cr_assert_eq(am_ring_version(r1), am_ring_version(r5));
    am_ring_free(r1);
    am_ring_free(r2);
    am_ring_free(r3);
    am_ring_free(r4);
    am_ring_free(r5);
}

Test(ring, canonical_bytes_are_as_documented)
{
    /* "node#" then index 258 as 00 00 01 02 */
    const uint8_t bytes[] = {'n', 'o', 'd', 'e', '#', 0, 0, 1, 2};
    cr_assert_eq(am_ring_point("node", 4, 258),
                 XXH3_64bits_withSeed(bytes, sizeof bytes, AM_RING_POINT_SEED));
    cr_assert_eq(am_ring_key("counter", 7, "42", 2), XXH3_64bits("counter/42", 10));
    /* The ring places exactly these points: with V = 1 each member owns the
     * key equal to its point, and the key just past one point belongs to the
     * other member (the next point clockwise, wrapping or not). */
    const char *two[] = {"node", "other"};
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, two, 2, 1), 0);
    uint64_t p = am_ring_point("node", 4, 0), q = am_ring_point("other", 5, 0);
    cr_assert_str_eq(am_ring_member(r, am_ring_owner(r, p)), "node");
    cr_assert_str_eq(am_ring_member(r, am_ring_owner(r, q)), "other");
    cr_assert_str_eq(am_ring_member(r, am_ring_owner(r, p + 1)), "other");
    cr_assert_str_eq(am_ring_member(r, am_ring_owner(r, q + 1)), "node");
    am_ring_free(r);
}

/* ---- allocation failure ---- */

static int fail_after;

static void *fail_malloc(size_t n)
{
    return fail_after-- > 0 ? malloc(n) : NULL;
}

static void *fail_calloc(size_t n, size_t s)
{
    return fail_after-- > 0 ? calloc(n, s) : NULL;
}

static void *fail_realloc(void *p, size_t n)
{
    return fail_after-- > 0 ? realloc(p, n) : NULL;
}

static const struct am_allocator failing = {fail_malloc, fail_calloc, fail_realloc, free};

Test(ring, every_allocation_failure_is_reported_and_leaks_nothing)
{
    const char *names[] = {"a", "b", "c"};
    am_mem_set(&failing);
    int rc = -ENOMEM;
    int k;
    for (k = 0; k < 100 && rc == -ENOMEM; k++) {
        fail_after = k;
        struct am_ring *r = (struct am_ring *)1;
        rc = am_ring_build(&r, names, 3, 16);
        if (rc == -ENOMEM) {
            cr_assert_null(r);
        } else {
            cr_assert_eq(rc, 0);
            am_ring_free(r);
        }
    }
    am_mem_set(NULL);
    cr_assert_eq(rc, 0);
    cr_assert_gt(k, 1);
    LEAK_CHECK();
}
