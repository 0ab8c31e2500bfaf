/* hset.h - a set of 64-bit hashes (open addressing, linear probing), for
 * "have we seen this key" questions where a 64-bit key hash stands for the
 * key. Grows by doubling at half full; clearing keeps the memory. */
#ifndef AM_HSET_H
#define AM_HSET_H

#include <stddef.h>
#include <stdint.h>

struct am_hset {
    uint64_t *slot; /* 0 marks a free slot (hash 0 is stored as 1, so 0 and 1 are one) */
    size_t cap, n;
};

void am_hset_init(struct am_hset *s);
/* 1 when added, 0 when it was there, -ENOMEM (nothing added). */
int am_hset_add(struct am_hset *s, uint64_t h);
int am_hset_has(const struct am_hset *s, uint64_t h);
void am_hset_clear(struct am_hset *s);
void am_hset_free(struct am_hset *s);

#endif
