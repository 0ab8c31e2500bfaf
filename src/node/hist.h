/* hist.h - a latency histogram with bounded relative error.
 *
 * Log-linear buckets in the style of HdrHistogram: values below 128 have a
 * bucket each; every power of two above is split into 128 equal sub-buckets.
 * Any uint64_t can be recorded (the unit is the caller's; bench records
 * nanoseconds) and a percentile is reported within 0.4% of the true value
 * (the derivation is in hist.c). record() is a few instructions and never
 * allocates; the only allocation is am_hist_new.
 *
 * Not thread-safe: one writer at a time, or one histogram per thread and
 * am_hist_merge at the end. */
#ifndef AM_HIST_H
#define AM_HIST_H

#include <stdint.h>

struct am_hist;

/* Returns an owned, empty histogram (free with am_hist_free), or NULL when
 * out of memory. It takes about 59 KiB. */
struct am_hist *am_hist_new(void);
void am_hist_free(struct am_hist *h); /* NULL is a no-op */

void am_hist_reset(struct am_hist *h);
void am_hist_record(struct am_hist *h, uint64_t v);
/* Adds every value recorded in src to dst; src (borrowed) is unchanged. */
void am_hist_merge(struct am_hist *dst, const struct am_hist *src);

uint64_t am_hist_count(const struct am_hist *h);
uint64_t am_hist_min(const struct am_hist *h); /* exact; 0 when empty */
uint64_t am_hist_max(const struct am_hist *h); /* exact; 0 when empty */

/* The nearest-rank percentile for p in [0, 100]: the value v such that
 * ceil(p/100 * count) of the recorded values are <= v (p = 0 gives the
 * minimum, p = 100 the maximum, both exact). Returned as the middle of v's
 * bucket, clamped to [min, max]. 0 when the histogram is empty; p outside
 * [0, 100] is clamped. */
uint64_t am_hist_percentile(const struct am_hist *h, double p);

/* The largest relative error of am_hist_percentile, as a fraction (1/256). */
#define AM_HIST_MAX_REL_ERROR (1.0 / 256)

#endif
