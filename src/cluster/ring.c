/* ring.c - the consistent-hash ring (ring.h): build, lookup, shares.
 *
 * Structures:
 *   names   the members' names, owned copies, sorted bytewise (strcmp); a
 *           member index is a position in this table, so it means the same
 *           member on every node that built from the same view.
 *   points  count x vnodes (hash, member) pairs sorted by hash, ties by
 *           member index (= by name), so the order is a function of the view
 *           alone, not of the order the caller listed the names in.
 *
 * Invariants: names are distinct and non-empty; points is sorted as above;
 * the ring is never modified after am_ring_build returns, so lookups need no
 * lock and a new view means a new ring (built off the hot path and swapped
 * in by the caller).
 *
 * Lookup (twemproxy's ketama): the owner of key k is the member of the first
 * point with hash >= k, wrapping to the first point when k is past the last.
 * A member thus owns the arc (previous point, its point].
 *
 * Buckets: the top INDEX_BITS bits of a key name its bucket. index[b] is the
 * position of the first point whose bucket is >= b (index[1 << INDEX_BITS]
 * = npoints), and direct[b] the owner of every key of bucket b when the
 * bucket holds no point (they all fall to the same next point), else MIXED.
 * A lookup is then one load from direct most of the time (3 x 2048 points
 * leave 91% of 65,536 buckets empty), else a binary search within the
 * bucket; a search over the whole table cost two cache misses per call in
 * profiles of routed calls. 384 KiB per ring. */
#include "ring.h"

#include "mem.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#define INDEX_BITS 16
#define MIXED UINT16_MAX /* direct[]: the bucket holds points; search it */

struct point {
    uint64_t hash;
    uint32_t member;
};

struct am_ring {
    char **names; /* count owned strings, sorted */
    size_t count;
    unsigned vnodes;
    struct point *points; /* count * vnodes, sorted */
    size_t npoints;
    uint32_t *index;  /* (1 << INDEX_BITS) + 1 positions into points */
    uint16_t *direct; /* 1 << INDEX_BITS owners, or MIXED */
    uint64_t version;
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint64_t am_ring_point(const char *name, size_t len, uint32_t i)
{
    uint8_t tail[5];
    tail[0] = '#';
    put_be32(tail + 1, i);
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset_withSeed(&st, AM_RING_POINT_SEED);
    XXH3_64bits_update(&st, name, len);
    XXH3_64bits_update(&st, tail, sizeof tail);
    return XXH3_64bits_digest(&st);
}

uint64_t am_ring_key(const char *type, size_t tlen, const char *id, size_t ilen)
{
    /* One shot over a copy when it fits (every key within the protocol's
     * name limits does): the same hash as the stream below, in less time. */
    char buf[512];
    if (tlen + 1 + ilen <= sizeof buf) {
        memcpy(buf, type, tlen);
        buf[tlen] = '/';
        memcpy(buf + tlen + 1, id, ilen);
        return XXH3_64bits(buf, tlen + 1 + ilen);
    }
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, type, tlen);
    XXH3_64bits_update(&st, "/", 1);
    XXH3_64bits_update(&st, id, ilen);
    return XXH3_64bits_digest(&st);
}

uint64_t am_ring_key_of(const char *key, size_t len)
{
    const char *slash = memchr(key, '/', len);
    if (!slash)
        return am_ring_key(key, len, "", 0);
    size_t tlen = (size_t)(slash - key);
    return am_ring_key(key, tlen, slash + 1, len - tlen - 1);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_point(const void *a, const void *b)
{
    const struct point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return (x->member > y->member) - (x->member < y->member);
}

/* Version: XXH3_64, seed AM_RING_VERSION_SEED, over
 *   vnodes (4 bytes BE), count (4 bytes BE), then per member in sorted
 *   order: name length (4 bytes BE), name bytes.
 * Length prefixes make the encoding injective ({"ab"} vs {"a","b"}). */
static uint64_t version_of(char *const *names, size_t count, unsigned vnodes)
{
    uint8_t b[4];
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset_withSeed(&st, AM_RING_VERSION_SEED);
    put_be32(b, vnodes);
    XXH3_64bits_update(&st, b, 4);
    put_be32(b, (uint32_t)count);
    XXH3_64bits_update(&st, b, 4);
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(names[i]);
        put_be32(b, (uint32_t)len);
        XXH3_64bits_update(&st, b, 4);
        XXH3_64bits_update(&st, names[i], len);
    }
    return XXH3_64bits_digest(&st);
}

int am_ring_build(struct am_ring **out, const char *const *names, size_t n, unsigned vnodes)
{
    *out = NULL;
    if (vnodes == 0 || vnodes > AM_RING_MAX_VNODES || n > AM_RING_MAX_MEMBERS ||
        (n > 0 && !names) || (uint64_t)n * vnodes >= UINT32_MAX) /* positions in index are 32-bit */
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || names[i][0] == '\0' || strlen(names[i]) > AM_RING_MAX_NAME)
            return -EINVAL;
    }

    struct am_ring *r = am_calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->vnodes = vnodes;
    r->index = am_malloc(((1u << INDEX_BITS) + 1) * sizeof *r->index);
    r->direct = am_malloc((1u << INDEX_BITS) * sizeof *r->direct);
    if (!r->index || !r->direct)
        goto nomem;
    if (n > 0) {
        r->names = am_calloc(n, sizeof *r->names);
        r->points = am_malloc(n * vnodes * sizeof *r->points);
        if (!r->names || !r->points)
            goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        r->names[i] = am_strndup(names[i], strlen(names[i]));
        if (!r->names[i])
            goto nomem;
        r->count++;
    }
    if (n > 0) /* qsort(NULL, 0, ...) is undefined */
        qsort(r->names, n, sizeof *r->names, cmp_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(r->names[i - 1], r->names[i]) == 0) {
            am_ring_free(r);
            return -EINVAL;
        }
    }

    for (size_t m = 0; m < n; m++) {
        size_t len = strlen(r->names[m]);
        for (unsigned v = 0; v < vnodes; v++) {
            struct point *p = &r->points[r->npoints++];
            p->hash = am_ring_point(r->names[m], len, v);
            p->member = (uint32_t)m;
        }
    }
    if (r->npoints > 0)
        qsort(r->points, r->npoints, sizeof *r->points, cmp_point);
    size_t pos = 0;
    for (uint32_t b = 0; b < (1u << INDEX_BITS); b++) {
        while (pos < r->npoints && (r->points[pos].hash >> (64 - INDEX_BITS)) < b)
            pos++;
        r->index[b] = (uint32_t)pos;
    }
    r->index[1u << INDEX_BITS] = (uint32_t)r->npoints;
    for (uint32_t b = 0; b < (1u << INDEX_BITS); b++) {
        size_t next = r->index[b] == r->npoints ? 0 : r->index[b];
        r->direct[b] = r->npoints == 0 || r->index[b] != r->index[b + 1] || n >= MIXED
                           ? MIXED
                           : (uint16_t)r->points[next].member;
    }
    r->version = version_of(r->names, n, vnodes);
    *out = r;
    return 0;

nomem:
    am_ring_free(r);
    return -ENOMEM;
}

void am_ring_free(struct am_ring *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->count; i++)
        am_free(r->names[i]);
    am_free(r->names);
    am_free(r->points);
    am_free(r->index);
    am_free(r->direct);
    am_free(r);
}

size_t am_ring_count(const struct am_ring *r)
{
    return r->count;
}

unsigned am_ring_vnodes(const struct am_ring *r)
{
    return r->vnodes;
}

uint64_t am_ring_version(const struct am_ring *r)
{
    return r->version;
}

const char *am_ring_member(const struct am_ring *r, int idx)
{
    if (idx < 0 || (size_t)idx >= r->count)
        return NULL;
    return r->names[idx];
}

int am_ring_find(const struct am_ring *r, const char *name)
{
    size_t lo = 0, hi = r->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->names[mid], name);
        if (c == 0)
            return (int)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Position of the first point with hash >= key, wrapping to 0. Requires
 * npoints > 0. */
static size_t first_at_or_after(const struct am_ring *r, uint64_t key)
{
    size_t b = (size_t)(key >> (64 - INDEX_BITS));
    size_t lo = r->index[b], hi = r->index[b + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->points[mid].hash < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == r->npoints ? 0 : lo;
}

int am_ring_owner(const struct am_ring *r, uint64_t key)
{
    uint16_t d = r->direct[key >> (64 - INDEX_BITS)];
    if (d != MIXED)
        return d;
    if (r->npoints == 0)
        return -1;
    return (int)r->points[first_at_or_after(r, key)].member;
}

size_t am_ring_successors(const struct am_ring *r, uint64_t key, int *out, size_t max)
{
    if (r->npoints == 0 || max == 0)
        return 0;
    size_t want = r->count - 1 < max ? r->count - 1 : max;
    size_t pos = first_at_or_after(r, key);
    uint32_t owner = r->points[pos].member;
    size_t got = 0;
    /* At most one lap: every member has a point, so a lap finds them all. */
    for (size_t step = 1; step < r->npoints && got < want; step++) {
        uint32_t m = r->points[(pos + step) % r->npoints].member;
        if (m == owner)
            continue;
        size_t j = 0;
        while (j < got && out[j] != (int)m)
            j++;
        if (j == got)
            out[got++] = (int)m;
    }
    return got;
}

void am_ring_shares(const struct am_ring *r, double *out)
{
    for (size_t i = 0; i < r->count; i++)
        out[i] = 0.0;
    if (r->count == 1) {
        out[0] = 1.0; /* the single arc is the whole circle, 2^64 (0 mod 2^64) */
        return;
    }
    const double circle = 18446744073709551616.0; /* 2^64 */
    for (size_t i = 0; i < r->npoints; i++) {
        uint64_t prev = r->points[i == 0 ? r->npoints - 1 : i - 1].hash;
        uint64_t arc = r->points[i].hash - prev; /* mod 2^64: wraps for i == 0 */
        out[r->points[i].member] += (double)arc / circle;
    }
}
