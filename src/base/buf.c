/* buf.c - growable byte buffer (see buf.h). Capacity doubles, so n appends
 * cost O(n) amortised. */
#include "buf.h"

#include "mem.h"

#include <errno.h>
#include <string.h>

void am_buf_init(struct am_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void am_buf_close(struct am_buf *b)
{
    am_free(b->data);
    am_buf_init(b);
}

int am_buf_reserve(struct am_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = am_realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int am_buf_append(struct am_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rc = am_buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int am_buf_set(struct am_buf *b, const void *p, size_t n)
{
    b->len = 0;
    return am_buf_append(b, p, n);
}

void am_buf_consume(struct am_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

uint8_t *am_buf_steal(struct am_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    *len = b->len;
    am_buf_init(b);
    return p;
}

void am_be32_put(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void am_be64_put(uint8_t *p, uint64_t v)
{
    am_be32_put(p, (uint32_t)(v >> 32));
    am_be32_put(p + 4, (uint32_t)v);
}

uint32_t am_be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t am_be64_get(const uint8_t *p)
{
    return (uint64_t)am_be32_get(p) << 32 | am_be32_get(p + 4);
}
