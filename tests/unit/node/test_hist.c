/* test_hist.c - the latency histogram against a sorted reference. */
#include "hist.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define LEAK_CHECK() ((void)0)
#endif

#define N 200000

/* splitmix64: a fixed-seed generator, so every run sees the same data. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void) /* [0, 1) */
{
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile of sorted[0..n). */
static uint64_t reference(const uint64_t *sorted, size_t n, double p)
{
    if (p <= 0)
        return sorted[0];
    double r = ceil(p / 100.0 * (double)n);
    size_t rank = r < 1 ? 1 : r > (double)n ? n : (size_t)r;
    return sorted[rank - 1];
}

static const double percentiles[] = {0, 0.1, 1, 5, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};

/* Records values, then checks every percentile against the sorted reference
 * within the derived bound (1/256, tighter than the 1% the bench needs). */
static void check_against_reference(uint64_t *values, size_t n)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    for (size_t i = 0; i < n; i++)
        am_hist_record(h, values[i]);
    qsort(values, n, sizeof *values, cmp_u64);

    cr_assert_eq(am_hist_count(h), n);
    cr_assert_eq(am_hist_min(h), values[0]);
    cr_assert_eq(am_hist_max(h), values[n - 1]);
    for (size_t i = 0; i < sizeof percentiles / sizeof *percentiles; i++) {
        double p = percentiles[i];
        double want = (double)reference(values, n, p);
        double got = (double)am_hist_percentile(h, p);
        double err = fabs(got - want) / want;
        cr_assert_leq(err, AM_HIST_MAX_REL_ERROR, "p%g: got %.0f, reference %.0f (%.3f%%)", p, got,
                      want, err * 100);
        cr_assert_leq(err, 0.01);
    }
    am_hist_free(h);
    LEAK_CHECK();
}

Test(hist, reports_percentiles_of_uniform_data_within_the_error_bound)
{
    static uint64_t v[N];
    rng_state = 1;
    for (size_t i = 0; i < N; i++)
        v[i] = 1 + rng_next() % 10000000; /* 1 ns .. 10 ms */
    check_against_reference(v, N);
}

Test(hist, reports_percentiles_of_exponential_data_within_the_error_bound)
{
    static uint64_t v[N];
    rng_state = 2;
    for (size_t i = 0; i < N; i++) /* mean 50 us, in ns */
        v[i] = 1 + (uint64_t)(-log(1.0 - rng_unit()) * 50000.0);
    check_against_reference(v, N);
}

Test(hist, reports_percentiles_of_bimodal_data_within_the_error_bound)
{
    static uint64_t v[N];
    rng_state = 3;
    for (size_t i = 0; i < N; i++) {
        /* 90% fast replies around 40 us, 10% slow ones around 5 ms (fsync). */
        int slow = rng_unit() < 0.1;
        double centre = slow ? 5e6 : 4e4, spread = slow ? 2e6 : 1e4;
        double x = centre + (rng_unit() + rng_unit() + rng_unit() - 1.5) * spread;
        v[i] = x < 1 ? 1 : (uint64_t)x;
    }
    check_against_reference(v, N);
}

Test(hist, records_values_below_256_exactly)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    for (uint64_t v = 0; v < 256; v++) {
        am_hist_reset(h);
        am_hist_record(h, v);
        cr_assert_eq(am_hist_percentile(h, 50), v);
    }
    am_hist_free(h);
    LEAK_CHECK();
}

Test(hist, reports_zero_everywhere_when_empty)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    cr_assert_eq(am_hist_count(h), 0);
    cr_assert_eq(am_hist_min(h), 0);
    cr_assert_eq(am_hist_max(h), 0);
    cr_assert_eq(am_hist_percentile(h, 0), 0);
    cr_assert_eq(am_hist_percentile(h, 50), 0);
    cr_assert_eq(am_hist_percentile(h, 100), 0);
    am_hist_free(h);
    am_hist_free(NULL);
    LEAK_CHECK();
}

Test(hist, keeps_extreme_values_exact_at_the_ends)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    am_hist_record(h, 1);
    am_hist_record(h, 1000000000);
    cr_assert_eq(am_hist_count(h), 2);
    cr_assert_eq(am_hist_min(h), 1);
    cr_assert_eq(am_hist_max(h), 1000000000);
    cr_assert_eq(am_hist_percentile(h, 0), 1);
    cr_assert_eq(am_hist_percentile(h, 50), 1);
    cr_assert_eq(am_hist_percentile(h, 100), 1000000000);
    double p99 = (double)am_hist_percentile(h, 99);
    cr_assert_leq(fabs(p99 - 1e9) / 1e9, AM_HIST_MAX_REL_ERROR);
    am_hist_free(h);
    LEAK_CHECK();
}

Test(hist, covers_the_whole_uint64_range)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    am_hist_record(h, 0);
    am_hist_record(h, UINT64_MAX);
    am_hist_record(h, UINT64_MAX - 1);
    cr_assert_eq(am_hist_max(h), UINT64_MAX);
    cr_assert_eq(am_hist_percentile(h, 100), UINT64_MAX);
    double p60 = (double)am_hist_percentile(h, 60);
    cr_assert_leq(fabs(p60 - (double)UINT64_MAX) / (double)UINT64_MAX, AM_HIST_MAX_REL_ERROR);
    cr_assert_eq(am_hist_percentile(h, 10), 0);
    am_hist_free(h);
    LEAK_CHECK();
}

Test(hist, clamps_percentiles_outside_0_to_100)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    for (uint64_t v = 10; v <= 1000; v += 10)
        am_hist_record(h, v);
    cr_assert_eq(am_hist_percentile(h, -5), 10);
    cr_assert_eq(am_hist_percentile(h, 250), 1000);
    cr_assert_eq(am_hist_percentile(h, NAN), 10);
    am_hist_free(h);
    LEAK_CHECK();
}

Test(hist, merged_histogram_equals_one_that_recorded_everything)
{
    struct am_hist *a = am_hist_new(), *b = am_hist_new(), *all = am_hist_new();
    cr_assert(a && b && all);
    rng_state = 4;
    for (int i = 0; i < 50000; i++) {
        uint64_t v = 1 + rng_next() % 1000000;
        am_hist_record(i % 3 ? a : b, v);
        am_hist_record(all, v);
    }
    am_hist_merge(a, b);
    cr_assert_eq(am_hist_count(a), am_hist_count(all));
    cr_assert_eq(am_hist_min(a), am_hist_min(all));
    cr_assert_eq(am_hist_max(a), am_hist_max(all));
    for (size_t i = 0; i < sizeof percentiles / sizeof *percentiles; i++)
        cr_assert_eq(am_hist_percentile(a, percentiles[i]),
                     am_hist_percentile(all, percentiles[i]));
    /* The source is left as it was. */
    cr_assert_eq(am_hist_count(b), 50000 / 3 + 1);
    am_hist_free(a);
    am_hist_free(b);
    am_hist_free(all);
    LEAK_CHECK();
}

Test(hist, merge_into_an_empty_histogram_copies_min_and_max)
{
    struct am_hist *dst = am_hist_new(), *src = am_hist_new(), *empty = am_hist_new();
    cr_assert(dst && src && empty);
    am_hist_record(src, 700);
    am_hist_record(src, 90);
    am_hist_merge(dst, empty);
    cr_assert_eq(am_hist_count(dst), 0);
    am_hist_merge(dst, src);
    cr_assert_eq(am_hist_count(dst), 2);
    cr_assert_eq(am_hist_min(dst), 90);
    cr_assert_eq(am_hist_max(dst), 700);
    am_hist_merge(dst, empty);
    cr_assert_eq(am_hist_min(dst), 90);
    am_hist_free(dst);
    am_hist_free(src);
    am_hist_free(empty);
    LEAK_CHECK();
}

Test(hist, reset_forgets_every_value)
{
    struct am_hist *h = am_hist_new();
    cr_assert_not_null(h);
    am_hist_record(h, 5);
    am_hist_record(h, 5000000);
    am_hist_reset(h);
    cr_assert_eq(am_hist_count(h), 0);
    cr_assert_eq(am_hist_max(h), 0);
    cr_assert_eq(am_hist_percentile(h, 99), 0);
    am_hist_record(h, 42);
    cr_assert_eq(am_hist_min(h), 42);
    cr_assert_eq(am_hist_percentile(h, 99), 42);
    am_hist_free(h);
    LEAK_CHECK();
}
