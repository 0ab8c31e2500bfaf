/* test_json.c - JSON <-> msgpack conversion (src/node/json.c).
 *
 * JSON to msgpack is checked byte for byte where the encoding matters and by
 * round trip elsewhere; msgpack to JSON is fed crafted bytes, including
 * headers that lie about their lengths, nesting bombs, invalid UTF-8 and
 * random noise, since it prints what a node (or an attacker) sends. */
#include "err.h"
#include "json.h"
#include "mem.h"
#include "mp.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

/* JSON text -> msgpack -> JSON text; the msgpack must be exactly one object. */
static void round_trip(const char *in, const char *want)
{
    struct am_buf mp, js;
    char err[256] = "";
    am_buf_init(&mp);
    am_buf_init(&js);
    int rc = am_json_to_msgpack(in, strlen(in), &mp, err, sizeof err);
    cr_assert_eq(rc, 0, "%s: %d %s", in, rc, err);
    cr_assert_eq(am_mp_check_one(mp.data, mp.len), 0, "%s: not one msgpack object", in);
    rc = am_msgpack_to_json(mp.data, mp.len, &js);
    cr_assert_eq(rc, 0, "%s: %d", in, rc);
    cr_assert_eq(js.len, strlen((const char *)js.data), "len must exclude the NUL");
    cr_assert_str_eq((const char *)js.data, want);
    am_buf_close(&mp);
    am_buf_close(&js);
}

/* msgpack bytes -> JSON text, expected to succeed with want. */
static void to_json_is(const void *p, size_t n, const char *want)
{
    struct am_buf js;
    am_buf_init(&js);
    int rc = am_msgpack_to_json(p, n, &js);
    cr_assert_eq(rc, 0, "want %s, got %d", want, rc);
    cr_assert_str_eq((const char *)js.data, want);
    cr_assert_eq(js.len, strlen(want));
    am_buf_close(&js);
}

/* msgpack bytes -> JSON, expected to fail with AM_EPROTO and leave out empty. */
static void to_json_fails(const void *p, size_t n)
{
    struct am_buf js;
    am_buf_init(&js);
    cr_assert_eq(am_buf_set(&js, "stale", 5), 0);
    cr_assert_eq(am_msgpack_to_json(p, n, &js), AM_EPROTO);
    cr_assert_eq(js.len, 0);
    am_buf_close(&js);
}

static int json_fails(const char *in, char *err, size_t errlen)
{
    struct am_buf mp;
    am_buf_init(&mp);
    int rc = am_json_to_msgpack(in, strlen(in), &mp, err, errlen);
    cr_assert_eq(mp.len, 0, "no output on error");
    am_buf_close(&mp);
    return rc;
}

Test(json, round_trips_every_json_kind)
{
    static const char *const docs[] = {
        "null",
        "true",
        "false",
        "0",
        "-1",
        "42",
        "127",
        "128",
        "-32",
        "-33",
        "65536",
        "1.5",
        "-0.25",
        "0.1",
        "1.0",
        "1e20",
        "2.5e-7",
        "123456.75",
        "1e-5",
        "\"\"",
        "\"hello\"",
        "\"h\xc3\xa9llo \xf0\x9f\x98\x80\"",
        "\"tab\\there \\\"quoted\\\" back\\\\slash\"",
        "\"a\\u0000b\"",
        "[]",
        "{}",
        "[1,\"two\",3.5,null,true,false]",
        "{\"a\":{\"b\":[true,null,{\"c\":\"d\"}]},\"e\":[]}",
        "{\"\":1}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++)
        round_trip(docs[i], docs[i]);
    ASSERT_NO_LEAKS();
}

Test(json, round_trips_the_int64_extremes)
{
    round_trip("9223372036854775807", "9223372036854775807");
    round_trip("-9223372036854775808", "-9223372036854775808");
    round_trip("[4294967295,4294967296,-2147483648,-2147483649]",
               "[4294967295,4294967296,-2147483648,-2147483649]");
    ASSERT_NO_LEAKS();
}

Test(json, normalises_whitespace_to_compact_text)
{
    round_trip(" { \"a\" : [ 1 , 2 ] ,\n \"b\" : { } } ", "{\"a\":[1,2],\"b\":{}}");
    ASSERT_NO_LEAKS();
}

Test(json, packs_integers_in_their_smallest_form)
{
    struct {
        const char *json;
        uint8_t mp[9];
        size_t n;
    } cases[] = {
        {"5", {0x05}, 1},
        {"-1", {0xff}, 1},
        {"300", {0xcd, 0x01, 0x2c}, 3},
        {"-200", {0xd1, 0xff, 0x38}, 3},
        {"9223372036854775807", {0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9},
    };
    struct am_buf mp;
    char err[128];
    am_buf_init(&mp);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(am_json_to_msgpack(cases[i].json, strlen(cases[i].json), &mp, err, sizeof err),
                     0);
        cr_assert_eq(mp.len, cases[i].n, "%s", cases[i].json);
        cr_assert_arr_eq(mp.data, cases[i].mp, cases[i].n, "%s", cases[i].json);
    }
    am_buf_close(&mp);
    ASSERT_NO_LEAKS();
}

Test(json, packs_reals_as_float64)
{
    static const uint8_t want[] = {0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    struct am_buf mp;
    char err[128];
    am_buf_init(&mp);
    cr_assert_eq(am_json_to_msgpack("1.5", 3, &mp, err, sizeof err), 0);
    cr_assert_eq(mp.len, sizeof want);
    cr_assert_arr_eq(mp.data, want, sizeof want);
    am_buf_close(&mp);
}

Test(json, packs_objects_as_maps_with_str_keys_in_document_order)
{
    static const uint8_t want[] = {0x82, 0xa1, 'b', 0x01, 0xa1, 'a', 0x92, 0xc3, 0xc0};
    const char *in = "{\"b\":1,\"a\":[true,null]}";
    struct am_buf mp;
    char err[128];
    am_buf_init(&mp);
    cr_assert_eq(am_json_to_msgpack(in, strlen(in), &mp, err, sizeof err), 0);
    cr_assert_eq(mp.len, sizeof want);
    cr_assert_arr_eq(mp.data, want, sizeof want);
    am_buf_close(&mp);
}

Test(json, replaces_what_the_output_buffer_held)
{
    struct am_buf mp;
    char err[128];
    am_buf_init(&mp);
    cr_assert_eq(am_buf_set(&mp, "junk", 4), 0);
    cr_assert_eq(am_json_to_msgpack("null", 4, &mp, err, sizeof err), 0);
    cr_assert_eq(mp.len, 1);
    cr_assert_eq(mp.data[0], 0xc0);
    am_buf_close(&mp);
}

Test(json, reports_line_and_column_of_invalid_json)
{
    char err[256];
    cr_assert_eq(json_fails("{\"a\": 1,\n  \"b\": }", err, sizeof err), AM_EINVAL);
    cr_assert_str_eq(err, "line 2 column 8: unexpected token near '}'");
    ASSERT_NO_LEAKS();
}

Test(json, refuses_empty_input_and_trailing_garbage)
{
    char err[256];
    cr_assert_eq(json_fails("", err, sizeof err), AM_EINVAL);
    cr_assert(strncmp(err, "line ", 5) == 0, "%s", err);
    cr_assert_eq(json_fails("1 2", err, sizeof err), AM_EINVAL);
    cr_assert(strstr(err, "end of file expected"), "%s", err);
    cr_assert_eq(json_fails("[1,]", err, sizeof err), AM_EINVAL);
    cr_assert_eq(json_fails("{'a':1}", err, sizeof err), AM_EINVAL);
    cr_assert_eq(json_fails("nul", err, sizeof err), AM_EINVAL);
}

Test(json, refuses_integers_beyond_int64_with_janssons_reason)
{
    char err[256];
    cr_assert_eq(json_fails("18446744073709551615", err, sizeof err), AM_EINVAL);
    cr_assert(strstr(err, "too big integer"), "%s", err);
    cr_assert_eq(json_fails("-9223372036854775809", err, sizeof err), AM_EINVAL);
    cr_assert(strstr(err, "too big negative integer"), "%s", err);
}

Test(json, refuses_repeated_object_keys)
{
    char err[256];
    cr_assert_eq(json_fails("{\"a\":1,\"a\":2}", err, sizeof err), AM_EINVAL);
    cr_assert(strstr(err, "duplicate object key"), "%s", err);
}

Test(json, refuses_nul_in_object_keys_as_jansson_does)
{
    char err[256];
    cr_assert_eq(json_fails("{\"k\\u0000ey\":1}", err, sizeof err), AM_EINVAL);
    cr_assert(strstr(err, "NUL byte in object key"), "%s", err);
}

Test(json, refuses_invalid_utf8_in_json_text)
{
    char err[256];
    cr_assert_eq(json_fails("\"\xff\"", err, sizeof err), AM_EINVAL);
}

Test(json, writes_nothing_to_a_zero_length_error_buffer)
{
    char err[4] = "xyz";
    cr_assert_eq(json_fails("[", err, 0), AM_EINVAL);
    cr_assert_str_eq(err, "xyz");
}

/* n nested arrays around the innermost text. */
static char *nested_json(int n, const char *inner)
{
    size_t len = 2 * (size_t)n + strlen(inner) + 1;
    char *s = malloc(len);
    cr_assert_not_null(s);
    memset(s, '[', (size_t)n);
    memcpy(s + n, inner, strlen(inner));
    memset(s + n + strlen(inner), ']', (size_t)n);
    s[len - 1] = '\0';
    return s;
}

Test(json, accepts_nesting_up_to_the_msgpack_limit)
{
    /* AM_MP_MAX_DEPTH containers, as am_mp_skip (and so the node) counts them:
     * with a scalar innermost, and with an empty container innermost. */
    char *in = nested_json(AM_MP_MAX_DEPTH, "1");
    round_trip(in, in);
    free(in);
    in = nested_json(AM_MP_MAX_DEPTH - 1, "{}");
    round_trip(in, in);
    free(in);
    ASSERT_NO_LEAKS();
}

Test(json, refuses_nesting_deeper_than_the_msgpack_limit)
{
    char err[256];
    char *in = nested_json(AM_MP_MAX_DEPTH + 1, "1");
    cr_assert_eq(json_fails(in, err, sizeof err), AM_ETOOBIG);
    cr_assert_str_eq(err, "nested deeper than 32 levels");
    free(in);
    in = nested_json(AM_MP_MAX_DEPTH, "{}");
    cr_assert_eq(json_fails(in, err, sizeof err), AM_ETOOBIG, "an empty innermost one counts");
    free(in);
    in = nested_json(1000, "{\"a\":1}");
    cr_assert_eq(json_fails(in, err, sizeof err), AM_ETOOBIG);
    free(in);
    ASSERT_NO_LEAKS();
}

Test(json, round_trips_a_one_mebibyte_string)
{
    size_t n = 1u << 20;
    char *in = malloc(n + 3);
    cr_assert_not_null(in);
    in[0] = '"';
    for (size_t i = 0; i < n; i++)
        in[1 + i] = (char)('a' + i % 26);
    in[n + 1] = '"';
    in[n + 2] = '\0';
    round_trip(in, in);
    free(in);
    ASSERT_NO_LEAKS();
}

/* ---- msgpack to JSON of crafted bytes -------------------------------------- */

Test(msgpack_to_json, prints_uint64_above_int64_max_as_a_real)
{
    static const uint8_t max[] = {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t top[] = {0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t fits[] = {0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    to_json_is(max, sizeof max, "1.8446744073709552e19");
    to_json_is(top, sizeof top, "9.223372036854776e18");
    to_json_is(fits, sizeof fits, "9223372036854775807");
}

Test(msgpack_to_json, prints_every_integer_width)
{
    static const uint8_t ints[] = {0x9b, 0x00, 0x7f, 0xe0, 0xcc, 0xff, 0xcd, 0xff, 0xff,
                                   0xce, 0xff, 0xff, 0xff, 0xff, 0xd0, 0x80, 0xd1, 0x80,
                                   0x00, 0xd2, 0x80, 0x00, 0x00, 0x00, 0xd3, 0x80, 0,
                                   0,    0,    0,    0,    0,    0,    0xff};
    to_json_is(ints, sizeof ints,
               "[0,127,-32,255,65535,4294967295,-128,-32768,-2147483648,"
               "-9223372036854775808,-1]");
}

Test(msgpack_to_json, decodes_floats_big_endian_with_the_fewest_digits)
{
    static const uint8_t f32[] = {0xca, 0x3f, 0xc0, 0x00, 0x00};                         /* 1.5f */
    static const uint8_t f32_tenth[] = {0xca, 0x3d, 0xcc, 0xcc, 0xcd};                   /* 0.1f */
    static const uint8_t f64[] = {0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a}; /* 0.1 */
    static const uint8_t third[] = {0xcb, 0x3f, 0xd5, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55};
    static const uint8_t neg[] = {0xcb, 0xc0, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18};
    static const uint8_t whole[] = {0xcb, 0x40, 0x59, 0, 0, 0, 0, 0, 0}; /* 100.0 */
    to_json_is(f32, sizeof f32, "1.5");
    to_json_is(f32_tenth, sizeof f32_tenth, "0.1");
    to_json_is(f64, sizeof f64, "0.1");
    to_json_is(third, sizeof third, "0.3333333333333333");
    to_json_is(neg, sizeof neg, "-3.141592653589793");
    to_json_is(whole, sizeof whole, "100.0");
}

Test(msgpack_to_json, prints_nan_and_infinity_as_null)
{
    static const uint8_t v[] = {0x93, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0,    0,    0,    0xcb, 0x7f,
                                0xf0, 0,    0,    0,    0, 0, 0, 0xca, 0xff, 0x80, 0x00, 0x00};
    to_json_is(v, sizeof v, "[null,null,null]");
}

Test(msgpack_to_json, prints_bin_as_padded_base64)
{
    /* RFC 4648 section 10 test vectors. */
    static const uint8_t v[] = {0x97, 0xc4, 0,   0xc4, 1,    'f', 0xc4, 2,   'f', 'o',  0xc4, 3,
                                'f',  'o',  'o', 0xc4, 4,    'f', 'o',  'o', 'b', 0xc4, 5,    'f',
                                'o',  'o',  'b', 'a',  0xc4, 6,   'f',  'o', 'o', 'b',  'a',  'r'};
    to_json_is(v, sizeof v,
               "[\"\",\"Zg==\",\"Zm8=\",\"Zm9v\",\"Zm9vYg==\",\"Zm9vYmE=\","
               "\"Zm9vYmFy\"]");
    static const uint8_t hi[] = {0xc5, 0x00, 0x03, 0xfb, 0xff, 0xbf};
    to_json_is(hi, sizeof hi, "\"+/+/\"");
}

Test(msgpack_to_json, prints_ext_as_null_and_keeps_going)
{
    static const uint8_t v[] = {0x94, 0xd4, 0x01, 0x00, 0xc7, 0x03, 0x05, 'a', 'b', 'c',
                                0xd8, 0x02, 0,    0,    0,    0,    0,    0,   0,   0,
                                0,    0,    0,    0,    0,    0,    0,    0,   0x07};
    to_json_is(v, sizeof v, "[null,null,null,7]");
}

Test(msgpack_to_json, prints_non_string_map_keys_as_their_json_text)
{
    static const uint8_t v[] = {0x85, 0x01, 0xa1, 'a',  0xc0, 0x02, 0x92, 0x01, 0x02,
                                0x03, 0xcb, 0x3f, 0xf8, 0,    0,    0,    0,    0,
                                0,    0x04, 0x81, 0xa1, 'k',  0xc3, 0x05};
    to_json_is(v, sizeof v,
               "{\"1\":\"a\",\"null\":2,\"[1,2]\":3,\"1.5\":4,\"{\\\"k\\\":true}\":5}");
}

Test(msgpack_to_json, escapes_nul_in_map_keys)
{
    static const uint8_t v[] = {0x81, 0xa3, 'a', 0x00, 'b', 0x01};
    to_json_is(v, sizeof v, "{\"a\\u0000b\":1}");
}

Test(msgpack_to_json, keeps_the_later_value_of_a_repeated_key)
{
    static const uint8_t v[] = {0x83, 0xa1, 'a', 0x01, 0xa1, 'b', 0x02, 0xa1, 'a', 0x03};
    to_json_is(v, sizeof v, "{\"a\":3,\"b\":2}");
}

Test(msgpack_to_json, prints_nested_documents_compactly)
{
    static const uint8_t v[] = {0x82, 0xa4, 'u',  's',  'e',  'r', 0x82, 0xa2, 'i',
                                'd',  0xcd, 0x01, 0x00, 0xa4, 't', 'a',  'g',  's',
                                0x92, 0xa1, 'x',  0x90, 0xa2, 'o', 'k',  0xc2};
    to_json_is(v, sizeof v, "{\"user\":{\"id\":256,\"tags\":[\"x\",[]]},\"ok\":false}");
}

Test(msgpack_to_json, escapes_control_characters_and_nul)
{
    static const uint8_t v[] = {0xa6, 'a', 0x00, 'b', '\n', 0x1b, '"'};
    to_json_is(v, sizeof v, "\"a\\u0000b\\n\\u001B\\\"\"");
}

Test(msgpack_to_json, replaces_invalid_utf8_with_the_replacement_character)
{
    /* lone continuation, overlong NUL, surrogate, truncated, above U+10FFFF */
    static const uint8_t v[] = {0xb1, 'a', 0x80, 'b',  0xc0, 0x80, 'c', 0xed, 0xa0,
                                0x80, 'd', 0xf4, 0x90, 0x80, 0x80, 'e', 0xe2, 0x82};
    const char *r = "\xef\xbf\xbd";
    char want[128];
    snprintf(want, sizeof want, "\"a%sb%s%sc%s%s%sd%s%s%s%se%s%s\"", r, r, r, r, r, r, r, r, r, r,
             r, r);
    to_json_is(v, sizeof v, want);
}

Test(msgpack_to_json, repairs_invalid_utf8_in_map_keys_too)
{
    static const uint8_t v[] = {0x81, 0xa2, 'k', 0xff, 0x01};
    to_json_is(v, sizeof v, "{\"k\xef\xbf\xbd\":1}");
}

Test(msgpack_to_json, keeps_valid_multibyte_utf8)
{
    static const uint8_t ok[] = {0xaa, 'h', 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80};
    to_json_is(ok, sizeof ok, "\"h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    /* A cut 4-byte sequence: each of its bytes becomes U+FFFD. */
    static const uint8_t cut[] = {0xa4, 'h', 0xf0, 0x9f, 0x98};
    to_json_is(cut, sizeof cut, "\"h\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
}

Test(msgpack_to_json, refuses_lengths_that_lie)
{
    static const uint8_t str[] = {0xaa, 'a', 'b', 'c'};
    static const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    static const uint8_t bin32[] = {0xc6, 0x7f, 0xff, 0xff, 0xff, 0x00};
    static const uint8_t arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02};
    static const uint8_t map32[] = {0xdf, 0x00, 0x01, 0x00, 0x00, 0x01, 0x02};
    static const uint8_t fixarr[] = {0x93, 0x01, 0x02};
    static const uint8_t fixmap[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b'};
    static const uint8_t ext32[] = {0xc9, 0x00, 0x00, 0x10, 0x00, 0x01, 0x02};
    static const uint8_t fixext[] = {0xd8, 0x01, 0x00};
    static const uint8_t f64[] = {0xcb, 0x3f, 0xf8, 0x00};
    static const uint8_t f32[] = {0xca, 0x3f};
    static const uint8_t u16[] = {0xcd, 0x01};
    static const uint8_t i64[] = {0xd3, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t hdr[] = {0xda, 0x00};
    struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {
        {str, sizeof str},       {str32, sizeof str32}, {bin32, sizeof bin32},
        {arr32, sizeof arr32},   {map32, sizeof map32}, {fixarr, sizeof fixarr},
        {fixmap, sizeof fixmap}, {ext32, sizeof ext32}, {fixext, sizeof fixext},
        {f64, sizeof f64},       {f32, sizeof f32},     {u16, sizeof u16},
        {i64, sizeof i64},       {hdr, sizeof hdr},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        to_json_fails(cases[i].p, cases[i].n);
    ASSERT_NO_LEAKS();
}

Test(msgpack_to_json, refuses_anything_but_exactly_one_object)
{
    static const uint8_t two[] = {0x01, 0x02};
    static const uint8_t never_used[] = {0xc1};
    static const uint8_t in_array[] = {0x91, 0xc1};
    to_json_fails(two, sizeof two);
    to_json_fails(never_used, sizeof never_used);
    to_json_fails(in_array, sizeof in_array);
    to_json_fails(two, 0);
    to_json_fails(NULL, 0);
}

/* n nested fixarrays of one element around the byte inner. */
static uint8_t *nested_mp(size_t n, uint8_t inner)
{
    uint8_t *p = malloc(n + 1);
    cr_assert_not_null(p);
    memset(p, 0x91, n);
    p[n] = inner;
    return p;
}

Test(msgpack_to_json, accepts_nesting_up_to_the_limit)
{
    uint8_t *p = nested_mp(AM_MP_MAX_DEPTH, 0x01);
    char *want = nested_json(AM_MP_MAX_DEPTH, "1");
    to_json_is(p, AM_MP_MAX_DEPTH + 1, want);
    free(p);
    free(want);
    p = nested_mp(AM_MP_MAX_DEPTH - 1, 0x90); /* the empty innermost array is level 32 */
    want = nested_json(AM_MP_MAX_DEPTH, "");
    to_json_is(p, AM_MP_MAX_DEPTH, want);
    free(p);
    free(want);
    ASSERT_NO_LEAKS();
}

Test(msgpack_to_json, refuses_nesting_deeper_than_the_limit)
{
    uint8_t *p = nested_mp(AM_MP_MAX_DEPTH + 1, 0x01);
    to_json_fails(p, AM_MP_MAX_DEPTH + 2);
    free(p);
    p = nested_mp(AM_MP_MAX_DEPTH, 0x80); /* an empty map as level 33 */
    to_json_fails(p, AM_MP_MAX_DEPTH + 1);
    free(p);
    /* A nesting bomb: a million levels must fail fast, not exhaust the stack. */
    size_t n = 1000000;
    p = nested_mp(n, 0x01);
    to_json_fails(p, n + 1);
    free(p);
    /* Map keys count as levels too: 33 maps, each the key of the one before. */
    uint8_t keys[2 * (AM_MP_MAX_DEPTH + 1) + 1];
    for (int i = 0; i <= AM_MP_MAX_DEPTH; i++)
        keys[i] = 0x81;
    keys[AM_MP_MAX_DEPTH + 1] = 0x01;
    for (int i = 0; i <= AM_MP_MAX_DEPTH; i++)
        keys[AM_MP_MAX_DEPTH + 2 + i] = 0x02;
    to_json_fails(keys, sizeof keys);
    cr_assert_neq(am_mp_check_one(keys, sizeof keys), 0);
    ASSERT_NO_LEAKS();
}

Test(msgpack_to_json, agrees_with_am_mp_check_one_at_the_depth_limit)
{
    /* If the base layer's depth rule moves, the printer must move with it. */
    static const uint8_t inners[] = {0x01, 0x90, 0x80, 0xc0};
    for (size_t levels = AM_MP_MAX_DEPTH - 2; levels <= AM_MP_MAX_DEPTH + 2; levels++) {
        for (size_t k = 0; k < sizeof inners; k++) {
            struct am_buf js;
            am_buf_init(&js);
            uint8_t *p = nested_mp(levels, inners[k]);
            int mine = am_msgpack_to_json(p, levels + 1, &js);
            int base = am_mp_check_one(p, levels + 1);
            cr_assert_eq(mine == 0, base == 0, "%zu levels around 0x%02x: %d vs %d", levels,
                         inners[k], mine, base);
            free(p);
            am_buf_close(&js);
        }
    }
}

/* Deepest bracket nesting of a JSON text without brackets inside strings. */
static size_t json_depth(const char *s)
{
    size_t d = 0, max = 0;
    for (; *s; s++) {
        if (*s == '[' || *s == '{')
            max = ++d > max ? d : max;
        else if (*s == ']' || *s == '}')
            d--;
    }
    return max;
}

Test(json, refuses_exactly_what_am_mp_check_one_refuses_at_the_depth_limit)
{
    static const char *const inners[] = {"1", "[]", "{}", "{\"a\":[]}"};
    for (int levels = AM_MP_MAX_DEPTH - 2; levels <= AM_MP_MAX_DEPTH + 1; levels++) {
        for (size_t k = 0; k < sizeof inners / sizeof inners[0]; k++) {
            char *in = nested_json(levels, inners[k]);
            struct am_buf mp;
            char err[128];
            am_buf_init(&mp);
            int rc = am_json_to_msgpack(in, strlen(in), &mp, err, sizeof err);
            /* The same number of containers, built directly in msgpack. */
            size_t depth = json_depth(in);
            uint8_t *p = nested_mp(depth - 1, 0x90);
            int base_ok = am_mp_check_one(p, depth) == 0;
            cr_assert_eq(rc == 0, base_ok, "%zu levels: %d", depth, rc);
            if (rc == 0)
                cr_assert_eq(am_mp_check_one(mp.data, mp.len), 0, "%s", in);
            else
                cr_assert_eq(rc, AM_ETOOBIG);
            free(p);
            am_buf_close(&mp);
            free(in);
        }
    }
}

Test(msgpack_to_json, replaces_what_the_output_buffer_held)
{
    struct am_buf js;
    am_buf_init(&js);
    cr_assert_eq(am_buf_set(&js, "old text", 8), 0);
    cr_assert_eq(am_msgpack_to_json((const uint8_t *)"\xc3", 1, &js), 0);
    cr_assert_str_eq((const char *)js.data, "true");
    am_buf_close(&js);
}

/* xorshift64: deterministic noise, so a failure reproduces. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

Test(msgpack_to_json, survives_random_and_mutated_bytes)
{
    static const uint8_t doc[] = {0x84, 0xa1, 'a',  0x93, 0x01, 0xcb, 0x3f, 0xf8, 0,    0,    0,
                                  0,    0,    0,    0xc4, 0x02, 0xff, 0x00, 0xa1, 'b',  0x81, 0x05,
                                  0xa2, 'h',  0xff, 0xd4, 0x01, 0x02, 0xc3, 0xdc, 0x00, 0x00, 0xc0};
    uint64_t seed = 0x9e3779b97f4a7c15u;
    uint8_t buf[64];
    struct am_buf js;
    am_buf_init(&js);
    to_json_is(doc, sizeof doc,
               "{\"a\":[1,1.5,\"/wA=\"],\"b\":{\"5\":\"h\xef\xbf\xbd\"},"
               "\"null\":true,\"[]\":null}");
    for (int round = 0; round < 200000; round++) {
        size_t n;
        if (round % 2) {
            n = next_rand(&seed) % sizeof buf;
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)next_rand(&seed);
        } else {
            n = sizeof doc;
            memcpy(buf, doc, n);
            for (int k = 0; k < 3; k++)
                buf[next_rand(&seed) % n] = (uint8_t)next_rand(&seed);
            n -= next_rand(&seed) % 4;
        }
        int rc = am_msgpack_to_json(buf, n, &js);
        cr_assert(rc == 0 || rc == AM_EPROTO, "round %d: %d", round, rc);
        /* Whatever converts must also be exactly one msgpack object. */
        cr_assert_eq(rc == 0, am_mp_check_one(buf, n) == 0, "round %d", round);
        if (rc == 0)
            cr_assert_eq(js.len, strlen((const char *)js.data));
    }
    am_buf_close(&js);
    ASSERT_NO_LEAKS();
}

/* ---- allocation failure ------------------------------------------------------ */

static long allocs_left;

static void *failing_malloc(size_t n)
{
    return allocs_left-- > 0 ? malloc(n) : NULL;
}

static void *failing_calloc(size_t n, size_t size)
{
    return allocs_left-- > 0 ? calloc(n, size) : NULL;
}

static void *failing_realloc(void *p, size_t n)
{
    return allocs_left-- > 0 ? realloc(p, n) : NULL;
}

static const struct am_allocator failing = {failing_malloc, failing_calloc, failing_realloc, free};

Test(json, fails_cleanly_when_memory_runs_out)
{
    static const char *in = "{\"a\":[1,2.5,\"x\"],\"b\":{\"c\":null}}";
    static const uint8_t mp[] = {0x82, 0x01, 0xc4, 0x02, 0xff, 0x00, 0xa2, 'h', 0xff, 0x92,
                                 0xcb, 0x3f, 0xf8, 0,    0,    0,    0,    0,   0,    0x90};
    int done_json = 0, done_mp = 0;
    char err[128];
    for (long budget = 0; budget < 64 && !(done_json && done_mp); budget++) {
        struct am_buf out;
        am_buf_init(&out);
        allocs_left = budget;
        am_mem_set(&failing);
        int rc1 = am_json_to_msgpack(in, strlen(in), &out, err, sizeof err);
        am_mem_set(NULL);
        cr_assert(rc1 == 0 || rc1 == -ENOMEM, "budget %ld: %d", budget, rc1);
        if (rc1)
            cr_assert_str_eq(err, "out of memory");
        done_json |= rc1 == 0;
        am_buf_close(&out);
        allocs_left = budget;
        am_mem_set(&failing);
        int rc2 = am_msgpack_to_json(mp, sizeof mp, &out);
        am_mem_set(NULL);
        cr_assert(rc2 == 0 || rc2 == -ENOMEM, "budget %ld: %d", budget, rc2);
        if (rc2 == 0)
            cr_assert_str_eq((const char *)out.data, "{\"1\":\"/wA=\",\"h\xef\xbf\xbd\":[1.5,[]]}");
        done_mp |= rc2 == 0;
        am_buf_close(&out);
    }
    cr_assert(done_json && done_mp, "both conversions succeed with enough memory");
    ASSERT_NO_LEAKS();
}

/* Found by fuzz_json: a map key holding a NUL byte. */
Test(json, escapes_a_nul_byte_in_a_map_key)
{
    static const uint8_t in[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 0x00, 0x00};
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_msgpack_to_json(in, sizeof in, &out), 0);
    cr_assert_str_eq((const char *)out.data, "{\"a\":1,\"\\u0000\":0}");
    am_buf_close(&out);
}

/* Found by fuzz_json: map keys that are maps of maps are escaped once per
 * level, so the text doubles with each: refused past 4 KiB, in bounded time. */
Test(json, refuses_map_keys_nested_into_exponential_text)
{
    uint8_t in[64];
    size_t n = 0;
    for (int i = 0; i < 30; i++)
        in[n++] = 0x81; /* a one-entry map whose key is the next map */
    in[n++] = 0xa1;
    in[n++] = 'k';
    for (int i = 0; i < 30; i++)
        in[n++] = 0xc0; /* every value nil */
    cr_assert_eq(am_mp_check_one(in, n), 0, "well-formed msgpack");
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_msgpack_to_json(in, n, &out), AM_EPROTO);
    am_buf_close(&out);
    /* A few levels still print. */
    static const uint8_t two[] = {0x81, 0x81, 0xa1, 'k', 0xc0, 0xc0};
    am_buf_init(&out);
    cr_assert_eq(am_msgpack_to_json(two, sizeof two, &out), 0);
    cr_assert_str_eq((const char *)out.data, "{\"{\\\"k\\\":null}\":null}");
    am_buf_close(&out);
}
