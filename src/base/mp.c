/* mp.c - bounded msgpack cursor reader and am_buf packer (see mp.h).
 *
 * The reader follows the msgpack spec's format table byte by byte. Every
 * length read from the input is compared with end - pos before use, and
 * container counts are compared with the bytes left (an element is at least
 * one byte), so a lying header fails here, in O(1), without allocating. */
#include "mp.h"

#include "err.h"

#include <string.h>

static int need(const uint8_t *p, const uint8_t *end, size_t n)
{
    return (size_t)(end - p) >= n;
}

enum am_mp_type am_mp_peek(const uint8_t *pos, const uint8_t *end)
{
    if (pos >= end)
        return AM_MP_NONE;
    uint8_t c = *pos;
    if (c <= 0x7f || c >= 0xe0)
        return AM_MP_INT;
    if (c <= 0x8f)
        return AM_MP_MAP;
    if (c <= 0x9f)
        return AM_MP_ARRAY;
    if (c <= 0xbf)
        return AM_MP_STR;
    switch (c) {
    case 0xc0:
        return AM_MP_NIL;
    case 0xc2:
    case 0xc3:
        return AM_MP_BOOL;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        return AM_MP_BIN;
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return AM_MP_EXT;
    case 0xca:
    case 0xcb:
        return AM_MP_FLOAT;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
        return AM_MP_INT;
    case 0xd9:
    case 0xda:
    case 0xdb:
        return AM_MP_STR;
    case 0xdc:
    case 0xdd:
        return AM_MP_ARRAY;
    case 0xde:
    case 0xdf:
        return AM_MP_MAP;
    default: /* 0xc1 is never used */
        return AM_MP_NONE;
    }
}

/* Reads an n-byte big-endian unsigned length at p (n is 1, 2 or 4). */
static uint32_t be_len(const uint8_t *p, int n)
{
    uint32_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

int am_mp_read_nil(const uint8_t **pos, const uint8_t *end)
{
    if (*pos >= end || **pos != 0xc0)
        return AM_EPROTO;
    (*pos)++;
    return 0;
}

int am_mp_read_bool(const uint8_t **pos, const uint8_t *end, int *v)
{
    if (*pos >= end || (**pos != 0xc2 && **pos != 0xc3))
        return AM_EPROTO;
    *v = **pos == 0xc3;
    (*pos)++;
    return 0;
}

/* Reads any integer as sign + magnitude. */
static int read_integer(const uint8_t **pos, const uint8_t *end, int *neg, uint64_t *mag)
{
    const uint8_t *p = *pos;
    if (p >= end)
        return AM_EPROTO;
    uint8_t c = *p++;
    int64_t s;
    *neg = 0;
    if (c <= 0x7f) {
        *mag = c;
    } else if (c >= 0xe0) {
        *neg = 1;
        *mag = (uint64_t)(-(int64_t)(int8_t)c);
    } else {
        int n;
        switch (c) {
        case 0xcc: case 0xd0: n = 1; break;
        case 0xcd: case 0xd1: n = 2; break;
        case 0xce: case 0xd2: n = 4; break;
        case 0xcf: case 0xd3: n = 8; break;
        default: return AM_EPROTO;
        }
        if (!need(p, end, (size_t)n))
            return AM_EPROTO;
        uint64_t u = 0;
        for (int i = 0; i < n; i++)
            u = u << 8 | p[i];
        p += n;
        if (c <= 0xcf) {
            *mag = u;
        } else {
            switch (n) {
            case 1: s = (int8_t)u; break;
            case 2: s = (int16_t)u; break;
            case 4: s = (int32_t)u; break;
            default: memcpy(&s, &u, sizeof s); break;
            }
            if (s < 0) {
                *neg = 1;
                *mag = (uint64_t)0 - (uint64_t)s;
            } else {
                *mag = (uint64_t)s;
            }
        }
    }
    *pos = p;
    return 0;
}

int am_mp_read_uint(const uint8_t **pos, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pos;
    int neg;
    uint64_t mag;
    if (read_integer(&p, end, &neg, &mag) || (neg && mag))
        return AM_EPROTO;
    *v = mag;
    *pos = p;
    return 0;
}

int am_mp_read_int(const uint8_t **pos, const uint8_t *end, int64_t *v)
{
    const uint8_t *p = *pos;
    int neg;
    uint64_t mag;
    if (read_integer(&p, end, &neg, &mag))
        return AM_EPROTO;
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return AM_EPROTO;
        *v = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    } else {
        if (mag > (uint64_t)INT64_MAX)
            return AM_EPROTO;
        *v = (int64_t)mag;
    }
    *pos = p;
    return 0;
}

/* Reads a container header; per is the minimum bytes one element takes. */
static int read_container(const uint8_t **pos, const uint8_t *end, uint32_t *n, uint8_t fix_lo,
                          uint8_t fix_hi, uint8_t c16, uint8_t c32, size_t per)
{
    const uint8_t *p = *pos;
    if (p >= end)
        return AM_EPROTO;
    uint8_t c = *p++;
    uint32_t count;
    if (c >= fix_lo && c <= fix_hi) {
        count = c & 0x0f;
    } else if (c == c16 || c == c32) {
        int w = c == c16 ? 2 : 4;
        if (!need(p, end, (size_t)w))
            return AM_EPROTO;
        count = be_len(p, w);
        p += w;
    } else {
        return AM_EPROTO;
    }
    if ((size_t)(end - p) / per < count)
        return AM_EPROTO;
    *n = count;
    *pos = p;
    return 0;
}

int am_mp_read_array(const uint8_t **pos, const uint8_t *end, uint32_t *n)
{
    return read_container(pos, end, n, 0x90, 0x9f, 0xdc, 0xdd, 1);
}

int am_mp_read_map(const uint8_t **pos, const uint8_t *end, uint32_t *n)
{
    return read_container(pos, end, n, 0x80, 0x8f, 0xde, 0xdf, 2);
}

/* Reads a length-prefixed body (str or bin) whose header width is w bytes. */
static int read_body(const uint8_t **pos, const uint8_t *end, const uint8_t *p, int w,
                     uint32_t len_fix, const uint8_t **body, uint32_t *len)
{
    uint32_t l = len_fix;
    if (w) {
        if (!need(p, end, (size_t)w))
            return AM_EPROTO;
        l = be_len(p, w);
        p += w;
    }
    if (!need(p, end, l))
        return AM_EPROTO;
    *body = p;
    *len = l;
    *pos = p + l;
    return 0;
}

int am_mp_read_str(const uint8_t **pos, const uint8_t *end, const char **s, uint32_t *len)
{
    const uint8_t *p = *pos;
    if (p >= end)
        return AM_EPROTO;
    uint8_t c = *p++;
    const uint8_t *b;
    int rc;
    if (c >= 0xa0 && c <= 0xbf)
        rc = read_body(pos, end, p, 0, c & 0x1f, &b, len);
    else if (c == 0xd9)
        rc = read_body(pos, end, p, 1, 0, &b, len);
    else if (c == 0xda)
        rc = read_body(pos, end, p, 2, 0, &b, len);
    else if (c == 0xdb)
        rc = read_body(pos, end, p, 4, 0, &b, len);
    else
        return AM_EPROTO;
    if (rc == 0)
        *s = (const char *)b;
    return rc;
}

int am_mp_read_bin(const uint8_t **pos, const uint8_t *end, const uint8_t **b, uint32_t *len)
{
    const uint8_t *p = *pos;
    if (p >= end)
        return AM_EPROTO;
    uint8_t c = *p++;
    if (c < 0xc4 || c > 0xc6)
        return AM_EPROTO;
    return read_body(pos, end, p, 1 << (c - 0xc4), 0, b, len);
}

static int skip(const uint8_t **pos, const uint8_t *end, int depth)
{
    const uint8_t *p = *pos;
    const char *s;
    const uint8_t *b;
    uint32_t n;
    int64_t i;
    int bo;
    switch (am_mp_peek(p, end)) {
    case AM_MP_NIL:
        return am_mp_read_nil(pos, end);
    case AM_MP_BOOL:
        return am_mp_read_bool(pos, end, &bo);
    case AM_MP_INT: {
        uint64_t u;
        if (am_mp_read_int(pos, end, &i) == 0)
            return 0;
        return am_mp_read_uint(pos, end, &u); /* uint64 above INT64_MAX */
    }
    case AM_MP_FLOAT: {
        size_t w = *p == 0xca ? 5 : 9;
        if (!need(p, end, w))
            return AM_EPROTO;
        *pos = p + w;
        return 0;
    }
    case AM_MP_STR:
        return am_mp_read_str(pos, end, &s, &n);
    case AM_MP_BIN:
        return am_mp_read_bin(pos, end, &b, &n);
    case AM_MP_EXT: {
        uint8_t c = *p++;
        uint32_t l;
        if (c >= 0xd4 && c <= 0xd8) {
            l = 1u << (c - 0xd4);
        } else {
            int w = 1 << (c - 0xc7);
            if (!need(p, end, (size_t)w))
                return AM_EPROTO;
            l = be_len(p, w);
            p += w;
        }
        if (!need(p, end, (size_t)l + 1)) /* type byte + data */
            return AM_EPROTO;
        *pos = p + 1 + l;
        return 0;
    }
    case AM_MP_ARRAY:
    case AM_MP_MAP: {
        /* depth containers enclose this one, so it opens level depth + 1.
         * A scalar is depth 0, [] and [1] are 1, [[1]] is 2. The limit
         * counts containers, an empty innermost one too, because that is
         * what msgpack-c's unpacker counts (one stack slot per open
         * container, MSGPACK_EMBED_STACK_SIZE = 32, refused beyond even
         * when empty) and handlers unpack accepted payloads with it;
         * test_mp.c checks both sides of the limit against msgpack-c. */
        if (depth >= AM_MP_MAX_DEPTH)
            return AM_EPROTO;
        int is_map = am_mp_peek(p, end) == AM_MP_MAP;
        int rc = is_map ? am_mp_read_map(&p, end, &n) : am_mp_read_array(&p, end, &n);
        if (rc)
            return rc;
        uint64_t items = is_map ? (uint64_t)n * 2 : n;
        for (uint64_t k = 0; k < items; k++) {
            rc = skip(&p, end, depth + 1);
            if (rc)
                return rc;
        }
        *pos = p;
        return 0;
    }
    default:
        return AM_EPROTO;
    }
}

int am_mp_skip(const uint8_t **pos, const uint8_t *end)
{
    const uint8_t *p = *pos;
    int rc = skip(&p, end, 0);
    if (rc == 0)
        *pos = p;
    return rc;
}

int am_mp_check_one(const uint8_t *p, size_t len)
{
    /* Empty is never one object; and p may be NULL then (an empty am_buf),
     * where even p + 0 is undefined behaviour. */
    if (len == 0)
        return AM_EPROTO;
    const uint8_t *end = p + len;
    if (am_mp_skip(&p, end))
        return AM_EPROTO;
    return p == end ? 0 : AM_EPROTO;
}

static int buf_write(void *data, const char *p, size_t n)
{
    return am_buf_append(data, p, n) ? -1 : 0;
}

void am_mp_packer_init(msgpack_packer *pk, struct am_buf *b)
{
    msgpack_packer_init(pk, b, buf_write);
}

int am_mp_pack_raw(msgpack_packer *pk, const void *p, size_t len)
{
    return am_buf_append(pk->data, p, len);
}

int am_mp_pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    if (msgpack_pack_str(pk, len) || msgpack_pack_str_body(pk, s, len))
        return -1;
    return 0;
}
