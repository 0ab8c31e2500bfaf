/* ring.h - the consistent-hash ring that places actors on members: a pure
 * data structure, no I/O, no clock, no randomness.
 *
 * Every alive or suspect member gets V virtual nodes ("points") on a circle
 * of 2^64 positions; an actor's key is hashed onto the same circle and is
 * owned by the member of the first point at or after it, clockwise (wrapping
 * past 2^64 - 1 to the first point). Lookup is a binary search over the
 * sorted points, O(log(N V)); building sorts them and is done off the hot
 * path whenever the membership view changes (the caller swaps the new ring
 * in and frees the old one).
 *
 * Canonical bytes (every node must compute exactly these):
 *
 *   actor key   XXH3_64bits (seed 0) of  type bytes | '/' | id bytes
 *               (the same hash the actor runtime uses for its table)
 *
 *   point i of member `name`, 0 <= i < V:
 *               XXH3_64bits_withSeed(bytes, AM_RING_POINT_SEED) of
 *
 *               offset   bytes   field
 *               0        len     name, its bytes as given (no NUL)
 *               len      1       '#' (0x23)
 *               len+1    4       i, unsigned 32-bit big-endian
 *
 *               The fixed-width suffix makes the encoding injective: two
 *               (name, i) pairs give the same bytes only if they are equal.
 *
 *   version     XXH3_64bits_withSeed(bytes, AM_RING_VERSION_SEED) of
 *               V (4 bytes BE) | member count (4 bytes BE) | for each member
 *               in sorted order: name length (4 bytes BE) | name bytes.
 *               Equal views and V give equal versions on every node; peers
 *               exchange it to notice they route by different rings.
 *
 * Members are identified by an index into the ring's own name table, sorted
 * bytewise (strcmp), so an index means the same member on every node that
 * built from the same view, whatever order the names were passed in. Points
 * with equal hashes are ordered by that index, so ties resolve identically
 * everywhere too.
 *
 * Ownership: am_ring_build copies the names; the ring borrows nothing.
 * Strings returned by am_ring_member live as long as the ring. A ring is
 * immutable once built: any number of threads may read it at once.
 *
 * Errors: am_ring_build returns 0, -EINVAL (duplicate, empty or over-long
 * name, V of 0 or above AM_RING_MAX_VNODES, too many members) or -ENOMEM;
 * on error *out is NULL and nothing is allocated. */
#ifndef AM_RING_H
#define AM_RING_H

#include <stddef.h>
#include <stdint.h>

/* Virtual nodes per member, chosen so that the busiest of 10 members owns
 * at most 1.10x the mean share of the key space.
 *
 * With V points per member a member's share is a sum of V arcs, each about
 * exponential with mean 1/(N V), so its relative spread is about 1/sqrt(V);
 * the busiest of 10 sits 1.5 to 3 sigma above the mean depending on the
 * names, which puts the need between (1.5 / 0.10)^2 = 225 and
 * (3 / 0.10)^2 = 900 and more. Measured (bench/ring_balance.c, 1000 sets of
 * 10 random "10.a.b.c:port" names; busiest/mean share: worst, 99th
 * percentile, sets over 1.10):
 *
 *     V=512   1.1612 / 1.1322 / 10.4%
 *     V=1024  1.1241 / 1.0935 /  0.4%
 *     V=1536  1.0975 / 1.0720 /  0.0%
 *     V=2048  1.0863 / 1.0642 /  0.0%   <- chosen
 *
 * 1536 is the smallest that kept every sampled set under 1.10, with almost
 * no margin; 2048 keeps 1.4 points of it. The unit test
 * (ring.chooses_vnodes_by_measurement) repeats the check over 302 sets and
 * fails if 2048 stops meeting it. Cost: N V points of 16 bytes (320 KiB for
 * 10 members), one sort per view change (a few ms), lookups of log2(N V),
 * about 15 probes. */
#define AM_RING_VNODES 2048u

#define AM_RING_MAX_VNODES 65536u /* keeps N V points sane */
#define AM_RING_MAX_MEMBERS 65536u
#define AM_RING_MAX_NAME 255u

#define AM_RING_POINT_SEED UINT64_C(0x616d6573682d7270)   /* "amesh-rp" */
#define AM_RING_VERSION_SEED UINT64_C(0x616d6573682d7276) /* "amesh-rv" */

struct am_ring; /* immutable once built */

/* Builds the ring of names[0..n) (borrowed, copied; any order; n may be 0,
 * giving an empty ring) with `vnodes` points each. */
int am_ring_build(struct am_ring **out, const char *const *names, size_t n, unsigned vnodes);
void am_ring_free(struct am_ring *r); /* NULL is a no-op */

/* The actor key of "type/id" (see above). */
uint64_t am_ring_key(const char *type, size_t tlen, const char *id, size_t ilen);
/* The same for a whole key "type/id" (split at its first '/'; a key
 * without one hashes as type with an empty id). */
uint64_t am_ring_key_of(const char *key, size_t len);

/* The position of point i of a member named name[0..len) (see above). */
uint64_t am_ring_point(const char *name, size_t len, uint32_t i);

/* The owning member's index for a key; -1 on an empty ring. */
int am_ring_owner(const struct am_ring *r, uint64_t key);

/* Up to max distinct members after the owner of key, clockwise, owner
 * excluded (replica placement): writes min(max, count - 1) indexes to out
 * and returns how many; 0 on an empty ring. */
size_t am_ring_successors(const struct am_ring *r, uint64_t key, int *out, size_t max);

/* The name of member idx (0 <= idx < count), NULL when out of range. */
const char *am_ring_member(const struct am_ring *r, int idx);
/* The index of a member by name, -1 when absent. */
int am_ring_find(const struct am_ring *r, const char *name);

size_t am_ring_count(const struct am_ring *r);
unsigned am_ring_vnodes(const struct am_ring *r);
uint64_t am_ring_version(const struct am_ring *r);

/* The fraction of the 2^64 key space each member owns: writes
 * am_ring_count(r) entries to out, indexed like members, summing to 1
 * (up to rounding) unless the ring is empty. */
void am_ring_shares(const struct am_ring *r, double *out);

#endif
