/* mp.h - bounded msgpack reading and packing into an am_buf.
 *
 * Reading: msgpack-c's unpacker trusts the lengths in its input (a 5-byte
 * array header can make it allocate 96 GiB), so every byte from the network is
 * read with these cursor functions instead. Each takes a cursor (*pos) and the
 * end of the input, checks every length against the bytes actually present,
 * and on success advances *pos past the object. On failure they return
 * AM_EPROTO and leave *pos unchanged. Nothing is allocated; strings and bins
 * point into the input.
 *
 * Packing: msgpack-c's msgpack_packer, writing into an am_buf. */
#ifndef AM_MP_H
#define AM_MP_H

#include "buf.h"

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting am_mp_skip accepts. States and payloads are documents, not
 * parse bombs: 32 levels is far more than any handler needs, and keeps the
 * recursion bounded. */
#define AM_MP_MAX_DEPTH 32

/* Coarse type of the next object, or AM_MP_NONE at end / invalid first byte. */
enum am_mp_type {
    AM_MP_NONE,
    AM_MP_NIL,
    AM_MP_BOOL,
    AM_MP_INT, /* positive or negative integer */
    AM_MP_FLOAT,
    AM_MP_STR,
    AM_MP_BIN,
    AM_MP_ARRAY,
    AM_MP_MAP,
    AM_MP_EXT
};

enum am_mp_type am_mp_peek(const uint8_t *pos, const uint8_t *end);

int am_mp_read_nil(const uint8_t **pos, const uint8_t *end);
int am_mp_read_bool(const uint8_t **pos, const uint8_t *end, int *v);
int am_mp_read_uint(const uint8_t **pos, const uint8_t *end, uint64_t *v); /* >= 0 only */
int am_mp_read_int(const uint8_t **pos, const uint8_t *end, int64_t *v);   /* fits int64 */
/* The count is checked against the remaining bytes (each element takes at
 * least one byte, each map entry two). */
int am_mp_read_array(const uint8_t **pos, const uint8_t *end, uint32_t *n);
int am_mp_read_map(const uint8_t **pos, const uint8_t *end, uint32_t *n);
/* *s points into the input and is not NUL-terminated. */
int am_mp_read_str(const uint8_t **pos, const uint8_t *end, const char **s, uint32_t *len);
int am_mp_read_bin(const uint8_t **pos, const uint8_t *end, const uint8_t **b, uint32_t *len);
/* Skips exactly one complete object, of any type, nested at most
 * AM_MP_MAX_DEPTH deep. */
int am_mp_skip(const uint8_t **pos, const uint8_t *end);

/* 0 if [p, p+len) is exactly one well-formed msgpack object. */
int am_mp_check_one(const uint8_t *p, size_t len);

/* Initialises pk to append to b (borrowed for pk's lifetime). msgpack_pack_*
 * then return -1 when the buffer cannot grow. */
void am_mp_packer_init(msgpack_packer *pk, struct am_buf *b);

/* Appends a whole msgpack object (already encoded) to a packer's buffer. */
int am_mp_pack_raw(msgpack_packer *pk, const void *p, size_t len);

/* Packs a string given as pointer and length. */
int am_mp_pack_str(msgpack_packer *pk, const char *s, size_t len);

#endif
