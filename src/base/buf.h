/* buf.h - a growable byte buffer.
 *
 * struct am_buf is caller-allocated (init/close). data is owned by the buffer
 * and may move on every append; never keep a pointer into it across appends. */
#ifndef AM_BUF_H
#define AM_BUF_H

#include <stddef.h>
#include <stdint.h>

struct am_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

void am_buf_init(struct am_buf *b);
void am_buf_close(struct am_buf *b);           /* frees data; b may be reused after init */
int am_buf_reserve(struct am_buf *b, size_t extra); /* room for extra more bytes; 0 or -ENOMEM */
int am_buf_append(struct am_buf *b, const void *p, size_t n);
int am_buf_set(struct am_buf *b, const void *p, size_t n); /* replaces the contents */
void am_buf_consume(struct am_buf *b, size_t n); /* drops the first n bytes */

/* Takes ownership of the bytes: returns data (to free with am_free) and leaves
 * b empty. */
uint8_t *am_buf_steal(struct am_buf *b, size_t *len);

/* Big-endian integer stores and loads, for wire and storage formats. */
void am_be32_put(uint8_t *p, uint32_t v);
void am_be64_put(uint8_t *p, uint64_t v);
uint32_t am_be32_get(const uint8_t *p);
uint64_t am_be64_get(const uint8_t *p);

#endif
