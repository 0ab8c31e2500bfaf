/* hset.c - a set of 64-bit hashes (see hset.h). */
#include "hset.h"

#include "mem.h"

#include <errno.h>
#include <string.h>

static uint64_t norm(uint64_t h)
{
    return h ? h : 1;
}

void am_hset_init(struct am_hset *s)
{
    memset(s, 0, sizeof *s);
}

static void put(uint64_t *slot, size_t cap, uint64_t h)
{
    size_t i = h & (cap - 1);
    while (slot[i])
        i = (i + 1) & (cap - 1);
    slot[i] = h;
}

int am_hset_add(struct am_hset *s, uint64_t h)
{
    h = norm(h);
    if (am_hset_has(s, h))
        return 0;
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        uint64_t *t = am_calloc(cap, sizeof *t);
        if (!t)
            return -ENOMEM;
        for (size_t j = 0; j < s->cap; j++)
            if (s->slot[j])
                put(t, cap, s->slot[j]);
        am_free(s->slot);
        s->slot = t;
        s->cap = cap;
    }
    put(s->slot, s->cap, h);
    s->n++;
    return 1;
}

int am_hset_has(const struct am_hset *s, uint64_t h)
{
    if (!s->n)
        return 0;
    h = norm(h);
    for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (s->slot[i] == h)
            return 1;
        if (!s->slot[i])
            return 0;
    }
}

void am_hset_clear(struct am_hset *s)
{
    if (s->n)
        memset(s->slot, 0, s->cap * sizeof *s->slot);
    s->n = 0;
}

void am_hset_free(struct am_hset *s)
{
    am_free(s->slot);
    am_hset_init(s);
}
