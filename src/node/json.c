/* json.c - JSON <-> msgpack conversion for the command line (see json.h).
 *
 * JSON to msgpack: jansson parses the text into a tree, which is packed with
 * msgpack-c's packer into an am_buf. The input comes from the user, so
 * jansson's own limits (2048 levels, int64 integers) apply first and ours
 * (AM_MP_MAX_DEPTH) second.
 *
 * msgpack to JSON: the bytes come from a node, so they are walked with the
 * bounded am_mp_* cursor functions only (never msgpack-c's unpacker, which
 * trusts the lengths it reads) into a jansson tree, which jansson then prints.
 * Every length is checked by am_mp_* before a byte is touched; recursion is
 * bounded by the depth check at the top of to_json.
 *
 * Depth is counted as am_mp_skip counts it: containers, an empty innermost
 * one included, at most AM_MP_MAX_DEPTH deep; scalars add nothing. Both
 * directions use that rule so the two sides of the wire agree on what is too
 * deep (test_json.c checks the boundary against am_mp_check_one).
 *
 * Reals are printed with the fewest significant digits that read back as the
 * same number, so a reply of 0.1 prints as 0.1 rather than
 * 0.10000000000000001. jansson takes one precision per dump, so the document
 * is printed with the largest precision any of its reals needs: every real
 * still reads back exactly; some may show more digits than they need. */
#include "json.h"

#include "err.h"
#include "mp.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE 754 binary32/binary64 assumed");

/* Significant digits that make every binary64 read back exactly (DBL_DECIMAL_DIG). */
#define MAX_DIGITS 17

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (errlen)
        snprintf(err, errlen, "%s", msg);
}

/* ---- JSON to msgpack ------------------------------------------------------ */

/* depth: how many containers enclose v. */
static int pack(msgpack_packer *pk, json_t *v, int depth)
{
    if ((json_is_object(v) || json_is_array(v)) && depth >= AM_MP_MAX_DEPTH)
        return AM_ETOOBIG;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *item;
        if (msgpack_pack_map(pk, (uint32_t)json_object_size(v)))
            return -ENOMEM;
        json_object_keylen_foreach(v, key, key_len, item)
        {
            if (am_mp_pack_str(pk, key, key_len))
                return -ENOMEM;
            int rc = pack(pk, item, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;
        if (msgpack_pack_array(pk, (uint32_t)json_array_size(v)))
            return -ENOMEM;
        json_array_foreach(v, i, item)
        {
            int rc = pack(pk, item, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_STRING:
        return am_mp_pack_str(pk, json_string_value(v), json_string_length(v)) ? -ENOMEM : 0;
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, (int64_t)json_integer_value(v)) ? -ENOMEM : 0;
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(v)) ? -ENOMEM : 0;
    case JSON_TRUE:
        return msgpack_pack_true(pk) ? -ENOMEM : 0;
    case JSON_FALSE:
        return msgpack_pack_false(pk) ? -ENOMEM : 0;
    case JSON_NULL:
        return msgpack_pack_nil(pk) ? -ENOMEM : 0;
    }
    return AM_EINVAL;
}

int am_json_to_msgpack(const char *json, size_t len, struct am_buf *out, char *err, size_t errlen)
{
    json_error_t e;
    out->len = 0;
    /* A repeated key would silently drop a value the user typed: refuse it. */
    json_t *root =
        json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &e);
    if (!root) {
        if (json_error_code(&e) == json_error_out_of_memory) {
            set_err(err, errlen, "out of memory");
            return -ENOMEM;
        }
        if (errlen)
            snprintf(err, errlen, "line %d column %d: %s", e.line, e.column, e.text);
        return AM_EINVAL;
    }
    msgpack_packer pk;
    am_mp_packer_init(&pk, out);
    int rc = pack(&pk, root, 0);
    json_decref(root);
    if (rc) {
        out->len = 0;
        if (rc == AM_ETOOBIG) {
            if (errlen)
                snprintf(err, errlen, "nested deeper than %d levels", AM_MP_MAX_DEPTH);
        } else {
            set_err(err, errlen, "out of memory");
        }
    }
    return rc;
}

/* ---- msgpack to JSON ------------------------------------------------------ */

struct conv {
    int digits;            /* precision the document's reals need so far */
    struct am_buf scratch; /* repaired strings, base64 text; used and dropped at once */
};

/* Length of the valid UTF-8 sequence (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF) at s, or 0 if it is not valid. These
 * are jansson's rules too, so text that passes here passes json_stringn. */
static size_t utf8_seq(const uint8_t *s, size_t left)
{
    uint8_t c = s[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

/* A JSON string of the bytes; each byte that is not part of valid UTF-8
 * becomes U+FFFD, since a JSON document must be UTF-8 and a node's reply is
 * not obliged to be. NULL only when out of memory. */
static json_t *string_value(struct conv *cv, const char *s, size_t len)
{
    static const uint8_t replacement[] = {0xef, 0xbf, 0xbd};
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(u + i, len - i);
        if (!n)
            break;
        i += n;
    }
    if (i == len)
        return json_stringn(s, len);
    cv->scratch.len = 0;
    if (am_buf_append(&cv->scratch, s, i))
        return NULL;
    while (i < len) {
        size_t n = utf8_seq(u + i, len - i);
        int rc = n ? am_buf_append(&cv->scratch, u + i, n)
                   : am_buf_append(&cv->scratch, replacement, sizeof replacement);
        if (rc)
            return NULL;
        i += n ? n : 1;
    }
    return json_stringn((const char *)cv->scratch.data, cv->scratch.len);
}

/* Standard base64 (RFC 4648 section 4) with padding: what JSON tools expect
 * for bytes. */
static json_t *base64_value(struct conv *cv, const uint8_t *b, size_t len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    cv->scratch.len = 0;
    if (am_buf_reserve(&cv->scratch, (len + 2) / 3 * 4 + 1))
        return NULL;
    char *o = (char *)cv->scratch.data;
    size_t i = 0, k = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        o[k++] = alphabet[v >> 18];
        o[k++] = alphabet[(v >> 12) & 63];
        o[k++] = alphabet[(v >> 6) & 63];
        o[k++] = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < len ? (uint32_t)b[i + 1] << 8 : 0);
        o[k++] = alphabet[v >> 18];
        o[k++] = alphabet[(v >> 12) & 63];
        o[k++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        o[k++] = '=';
    }
    return json_stringn(o, k);
}

/* Fewest significant digits (1..17) whose "%.*g" text reads back as v, or
 * as the same binary32 value when v came from a float32. */
static int shortest_digits(double v, int single)
{
    char s[40];
    for (int p = 1; p < MAX_DIGITS; p++) {
        snprintf(s, sizeof s, "%.*g", p, v);
        double back = strtod(s, NULL);
        if (single ? (float)back == (float)v : back == v)
            return p;
    }
    return MAX_DIGITS;
}

/* Digits before the point of |v| when below 1e17, else 1: "%.*g" switches
 * to exponent form once the exponent reaches the precision, which would print
 * 100.0 as 1e2. With at least this many digits it prints 100.0. */
static int integer_digits(double v)
{
    double a = fabs(v);
    int n = 1;
    if (a >= 1e17)
        return 1;
    while (a >= 10) {
        a /= 10;
        n++;
    }
    return n;
}

/* JSON has no NaN or infinity: those print as null. */
static json_t *real_value(struct conv *cv, double v, int single)
{
    if (!isfinite(v))
        return json_null();
    int p = shortest_digits(v, single);
    int d = integer_digits(v);
    if (d > p)
        p = d;
    if (p > cv->digits)
        cv->digits = p;
    return json_real(v);
}

/* msgpack float32 (0xca) and float64 (0xcb): big-endian IEEE 754. */
static int read_float(const uint8_t **pos, const uint8_t *end, double *v, int *single)
{
    const uint8_t *p = *pos;
    if (p < end && *p == 0xca && end - p >= 5) {
        uint32_t u = am_be32_get(p + 1);
        float f;
        memcpy(&f, &u, sizeof f);
        *v = f;
        *single = 1;
        *pos = p + 5;
        return 0;
    }
    if (p < end && *p == 0xcb && end - p >= 9) {
        uint64_t u = am_be64_get(p + 1);
        memcpy(v, &u, sizeof *v);
        *single = 0;
        *pos = p + 9;
        return 0;
    }
    return AM_EPROTO;
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return am_buf_append(data, buffer, size) ? -1 : 0;
}

/* Appends the compact JSON text of v to out. */
static int dump(json_t *v, int digits, struct am_buf *out)
{
    size_t flags = JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(digits);
    return json_dump_callback(v, dump_cb, out, flags) ? -ENOMEM : 0;
}

static int to_json(struct conv *cv, const uint8_t **pos, const uint8_t *end, int depth,
                   json_t **out);

/* A map key as JSON object key text, into key: a str key as is (repaired
 * UTF-8), any other key as its own compact JSON text, so {1: "a"} prints as
 * {"1":"a"} instead of being refused. */
#define KEY_TEXT_MAX 4096

static int key_text(struct conv *cv, const uint8_t **pos, const uint8_t *end, int depth,
                    struct am_buf *key)
{
    json_t *k = NULL;
    int rc;
    key->len = 0;
    if (am_mp_peek(*pos, end) == AM_MP_STR) {
        rc = to_json(cv, pos, end, depth, &k);
        if (!rc)
            rc = am_buf_set(key, json_string_value(k), json_string_length(k));
    } else {
        /* The key is printed on its own, so its reals get their own precision. */
        struct conv kc = {.digits = 1};
        am_buf_init(&kc.scratch);
        rc = to_json(&kc, pos, end, depth, &k);
        if (!rc)
            rc = dump(k, kc.digits, key);
        /* Keys made of keys are escaped once per level, doubling each time:
         * 30 levels of one-entry maps would print gigabytes. A key this long
         * is no key anyone reads; refuse the reply instead. */
        if (!rc && key->len > KEY_TEXT_MAX)
            rc = AM_EPROTO;
        am_buf_close(&kc.scratch);
    }
    json_decref(k);
    return rc;
}

/* depth: how many containers enclose the object at *pos. */
static int to_json(struct conv *cv, const uint8_t **pos, const uint8_t *end, int depth,
                   json_t **out)
{
    const uint8_t *p = *pos;
    json_t *j = NULL;
    int rc = 0;
    enum am_mp_type t = am_mp_peek(p, end);
    if ((t == AM_MP_ARRAY || t == AM_MP_MAP) && depth >= AM_MP_MAX_DEPTH)
        return AM_EPROTO;
    switch (t) {
    case AM_MP_NIL:
        rc = am_mp_read_nil(&p, end);
        j = json_null();
        break;
    case AM_MP_BOOL: {
        int b = 0;
        rc = am_mp_read_bool(&p, end, &b);
        j = json_boolean(b);
        break;
    }
    case AM_MP_INT: {
        int64_t i;
        uint64_t u;
        if (am_mp_read_int(&p, end, &i) == 0) {
            j = json_integer((json_int_t)i);
        } else {
            /* Above INT64_MAX: jansson integers are int64, so a real keeps
             * the magnitude (to 17 digits) rather than failing the reply. */
            rc = am_mp_read_uint(&p, end, &u);
            if (!rc)
                j = real_value(cv, (double)u, 0);
        }
        break;
    }
    case AM_MP_FLOAT: {
        double d = 0;
        int single = 0;
        rc = read_float(&p, end, &d, &single);
        if (!rc)
            j = real_value(cv, d, single);
        break;
    }
    case AM_MP_STR: {
        const char *s;
        uint32_t n;
        rc = am_mp_read_str(&p, end, &s, &n);
        if (!rc)
            j = string_value(cv, s, n);
        break;
    }
    case AM_MP_BIN: {
        const uint8_t *b;
        uint32_t n;
        rc = am_mp_read_bin(&p, end, &b, &n);
        if (!rc)
            j = base64_value(cv, b, n);
        break;
    }
    case AM_MP_EXT:
        /* No JSON meaning; am_mp_skip checks its length. */
        rc = am_mp_skip(&p, end);
        j = json_null();
        break;
    case AM_MP_ARRAY: {
        uint32_t n;
        rc = am_mp_read_array(&p, end, &n);
        if (rc)
            break;
        j = json_array();
        for (uint32_t i = 0; j && i < n && !rc; i++) {
            json_t *item = NULL;
            rc = to_json(cv, &p, end, depth + 1, &item);
            if (!rc && json_array_append_new(j, item))
                rc = -ENOMEM;
        }
        break;
    }
    case AM_MP_MAP: {
        uint32_t n;
        struct am_buf key;
        rc = am_mp_read_map(&p, end, &n);
        if (rc)
            break;
        j = json_object();
        am_buf_init(&key);
        for (uint32_t i = 0; j && i < n && !rc; i++) {
            json_t *item = NULL;
            rc = key_text(cv, &p, end, depth + 1, &key);
            if (!rc)
                rc = to_json(cv, &p, end, depth + 1, &item);
            /* NULL key pointer for an empty key would be refused. */
            if (!rc &&
                json_object_setn_new(j, key.len ? (const char *)key.data : "", key.len, item))
                rc = -ENOMEM;
        }
        am_buf_close(&key);
        break;
    }
    default:
        rc = AM_EPROTO;
        break;
    }
    if (!rc && !j)
        rc = -ENOMEM;
    if (rc) {
        json_decref(j);
        return rc;
    }
    *pos = p;
    *out = j;
    return 0;
}

int am_msgpack_to_json(const uint8_t *p, size_t len, struct am_buf *out)
{
    out->len = 0;
    if (!p || !len)
        return AM_EPROTO;
    struct conv cv = {.digits = 1};
    am_buf_init(&cv.scratch);
    const uint8_t *pos = p, *end = p + len;
    json_t *root = NULL;
    int rc = to_json(&cv, &pos, end, 0, &root);
    if (!rc && pos != end)
        rc = AM_EPROTO; /* exactly one object: trailing bytes mean a framing bug */
    if (!rc)
        rc = dump(root, cv.digits, out);
    if (!rc)
        rc = am_buf_append(out, "", 1);
    json_decref(root);
    am_buf_close(&cv.scratch);
    if (rc) {
        out->len = 0;
        return rc;
    }
    out->len--; /* the NUL is there but not counted */
    return 0;
}
