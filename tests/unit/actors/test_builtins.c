/* test_builtins.c - the built-in actor types counter, kv and echo
 * (src/actors/builtins.c).
 *
 * The handlers are called directly, the way the runtime calls them: one
 * struct am_msg with the current state and a payload, one struct am_out
 * (out.h) with the limits in force. Payloads are packed with msgpack-c's own
 * packer, so the encodings are the reference ones, and every input is copied
 * into a heap block of exactly its size so that ASan reports a read past it. */
#include "err.h"
#include "mp.h"
#include "out.h"
#include "registry.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

/* The node's defaults are far larger; these are big enough for every value
 * here and small enough to hit in the limit tests. */
#define MAX_STATE 1024
#define MAX_REPLY 1024

static const uint8_t NIL = 0xc0, TRUE = 0xc3, FALSE = 0xc2;

static struct am_out g_out;

static void setup(void)
{
    am_out_init(&g_out, MAX_STATE, MAX_REPLY);
}

static void teardown(void)
{
    am_out_close(&g_out);
}

TestSuite(counter, .init = setup, .fini = teardown);
TestSuite(kv, .init = setup, .fini = teardown);
TestSuite(echo, .init = setup, .fini = teardown);

/* ---- encoding ------------------------------------------------------------- */

/* One packed msgpack object, in a heap block of exactly its size. */
struct obj {
    uint8_t *p;
    size_t n;
};

static struct obj obj_of(const msgpack_sbuffer *sb)
{
    struct obj o = {malloc(sb->size ? sb->size : 1), sb->size};
    cr_assert_not_null(o.p);
    memcpy(o.p, sb->data, sb->size);
    return o;
}

static struct obj raw(const void *p, size_t n)
{
    struct obj o = {malloc(n ? n : 1), n};
    cr_assert_not_null(o.p);
    memcpy(o.p, p, n);
    return o;
}

static struct obj int_obj(int64_t v)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_int64(&pk, v);
    struct obj o = obj_of(&sb);
    msgpack_sbuffer_destroy(&sb);
    return o;
}

static struct obj str_obj(const char *s)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_str(&pk, strlen(s));
    msgpack_pack_str_body(&pk, s, strlen(s));
    struct obj o = obj_of(&sb);
    msgpack_sbuffer_destroy(&sb);
    return o;
}

/* {"name": "ada", "tags": [1, 2.5, nil]} */
static struct obj doc_obj(void)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "name", 4);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "ada", 3);
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "tags", 4);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_double(&pk, 2.5);
    msgpack_pack_nil(&pk);
    struct obj o = obj_of(&sb);
    msgpack_sbuffer_destroy(&sb);
    return o;
}

static void obj_free(struct obj *o)
{
    free(o->p);
    o->p = NULL;
    o->n = 0;
}

static int64_t int_of(const uint8_t *p, size_t n)
{
    const uint8_t *pos = p;
    int64_t v = 0;
    cr_assert_eq(am_mp_read_int(&pos, p + n, &v), 0, "not an integer");
    cr_assert_eq(pos, p + n, "trailing bytes after the integer");
    return v;
}

/* ---- calling a handler --------------------------------------------------- */

/* Calls t's handler as the runtime would for actor id "a1". state may be
 * NULL (no state yet); payload NULL sends nil, as the node does when a
 * request carries none. */
static int call(const struct am_actor_type *t, const char *action, const struct obj *state,
                const struct obj *payload)
{
    static const char id[] = "a1";
    struct obj nil = raw(&NIL, 1);
    struct am_msg m = {
        .type = t->name,
        .type_len = strlen(t->name),
        .id = id,
        .id_len = 2,
        .action = action,
        .action_len = strlen(action),
        .state = state ? state->p : NULL,
        .state_len = state ? state->n : 0,
        .payload = payload ? payload->p : nil.p,
        .payload_len = payload ? payload->n : nil.n,
    };
    am_out_reset(&g_out);
    int rc = t->handle(t->data, &m, &g_out);
    obj_free(&nil);
    return rc;
}

static void expect_reply_int(int64_t want)
{
    cr_assert(g_out.reply_set, "no reply");
    cr_assert_eq(int_of(g_out.reply.data, g_out.reply.len), want);
}

static void expect_reply_bytes(const void *p, size_t n)
{
    cr_assert(g_out.reply_set, "no reply");
    cr_assert_eq(g_out.reply.len, n, "reply of %zu bytes, expected %zu", g_out.reply.len, n);
    cr_assert(memcmp(g_out.reply.data, p, n) == 0, "reply bytes differ");
}

static void expect_state_int(int64_t want)
{
    cr_assert(g_out.state_set, "state not set");
    cr_assert_eq(int_of(g_out.state.data, g_out.state.len), want);
}

static void expect_error(int rc, int code, const char *needle)
{
    cr_assert_eq(rc, code, "rc %d, expected %d (err '%s')", rc, code, g_out.err);
    cr_assert(strstr(g_out.err, needle) != NULL, "err '%s' does not say '%s'", g_out.err, needle);
}

/* ---- counter ----------------------------------------------------------- */

Test(counter, get_of_a_new_counter_is_0_and_writes_nothing)
{
    cr_assert_eq(call(&am_builtin_counter, "get", NULL, NULL), 0, "%s", g_out.err);
    expect_reply_int(0);
    cr_assert_not(g_out.state_set, "a read must cost no write");
    CHECK_LEAKS();
}

Test(counter, add_without_a_payload_adds_1)
{
    cr_assert_eq(call(&am_builtin_counter, "add", NULL, NULL), 0, "%s", g_out.err);
    expect_state_int(1);
    expect_reply_int(1);

    struct obj one = int_obj(1);
    cr_assert_eq(call(&am_builtin_counter, "add", &one, NULL), 0, "%s", g_out.err);
    expect_state_int(2);
    expect_reply_int(2);
    obj_free(&one);
    CHECK_LEAKS();
}

Test(counter, adds_the_given_amount_and_get_reads_it)
{
    struct obj state = int_obj(40), n = int_obj(2);
    cr_assert_eq(call(&am_builtin_counter, "add", &state, &n), 0, "%s", g_out.err);
    expect_state_int(42);
    expect_reply_int(42);
    obj_free(&state);
    obj_free(&n);

    state = int_obj(42);
    cr_assert_eq(call(&am_builtin_counter, "get", &state, NULL), 0, "%s", g_out.err);
    expect_reply_int(42);
    cr_assert_not(g_out.state_set);
    obj_free(&state);

    /* Adding 0 is still a write (the handler does not special-case it). */
    state = int_obj(7);
    n = int_obj(0);
    cr_assert_eq(call(&am_builtin_counter, "add", &state, &n), 0, "%s", g_out.err);
    expect_state_int(7);
    obj_free(&state);
    obj_free(&n);
    CHECK_LEAKS();
}

Test(counter, adds_a_negative_amount_below_zero)
{
    struct obj state = int_obj(3), n = int_obj(-10);
    cr_assert_eq(call(&am_builtin_counter, "add", &state, &n), 0, "%s", g_out.err);
    expect_state_int(-7);
    expect_reply_int(-7);
    obj_free(&state);
    obj_free(&n);
    CHECK_LEAKS();
}

Test(counter, refuses_a_non_integer_amount_as_invalid_argument)
{
    struct obj state = int_obj(5);
    struct obj bad[4];
    bad[0] = str_obj("1");
    bad[1] = raw((const uint8_t[]){0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0}, 9); /* 1.5 */
    bad[2] = raw((const uint8_t[]){0x01, 0x02}, 2);                         /* two ints */
    bad[3] = raw((const uint8_t[]){0xcd, 0x01}, 2);                         /* truncated */
    for (int i = 0; i < 4; i++) {
        int rc = call(&am_builtin_counter, "add", &state, &bad[i]);
        expect_error(rc, AM_ERR_INVALID, "integer");
        cr_assert_eq(am_status_of(rc), AM_ST_INVALID_ARG);
        obj_free(&bad[i]);
    }
    obj_free(&state);
    CHECK_LEAKS();
}

Test(counter, refuses_an_add_that_would_overflow)
{
    struct obj state = int_obj(INT64_MAX), n = int_obj(1);
    expect_error(call(&am_builtin_counter, "add", &state, &n), AM_ERR_INVALID, "overflow");
    obj_free(&state);
    obj_free(&n);

    state = int_obj(INT64_MIN);
    n = int_obj(-1);
    expect_error(call(&am_builtin_counter, "add", &state, &n), AM_ERR_INVALID, "overflow");
    obj_free(&state);
    obj_free(&n);

    /* Up to the edge is fine. */
    state = int_obj(INT64_MAX - 5);
    n = int_obj(5);
    cr_assert_eq(call(&am_builtin_counter, "add", &state, &n), 0, "%s", g_out.err);
    expect_state_int(INT64_MAX);
    obj_free(&state);
    obj_free(&n);

    state = int_obj(INT64_MIN + 5);
    n = int_obj(-5);
    cr_assert_eq(call(&am_builtin_counter, "add", &state, &n), 0, "%s", g_out.err);
    expect_state_int(INT64_MIN);
    obj_free(&state);
    obj_free(&n);

    /* An amount beyond int64 is refused rather than wrapped. */
    state = int_obj(0);
    n = raw((const uint8_t[]){0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9);
    expect_error(call(&am_builtin_counter, "add", &state, &n), AM_ERR_INVALID, "integer");
    obj_free(&state);
    obj_free(&n);
    CHECK_LEAKS();
}

Test(counter, reports_a_stored_value_that_is_not_an_integer)
{
    struct obj state = str_obj("seven");
    expect_error(call(&am_builtin_counter, "get", &state, NULL), AM_ERR_HANDLER, "integer");
    expect_error(call(&am_builtin_counter, "add", &state, NULL), AM_ERR_HANDLER, "integer");
    obj_free(&state);
    CHECK_LEAKS();
}

Test(counter, answers_an_unknown_action_with_unknown_action)
{
    int rc = call(&am_builtin_counter, "increment", NULL, NULL);
    expect_error(rc, AM_ERR_NO_ACTION, "increment");
    cr_assert(strstr(g_out.err, "counter") != NULL, "err '%s' does not name the type", g_out.err);
    cr_assert_eq(am_status_of(rc), AM_ST_UNKNOWN_ACTION);
    /* Actions match whole: a prefix or an extension is unknown. */
    expect_error(call(&am_builtin_counter, "ad", NULL, NULL), AM_ERR_NO_ACTION, "ad");
    expect_error(call(&am_builtin_counter, "gets", NULL, NULL), AM_ERR_NO_ACTION, "gets");
    expect_error(call(&am_builtin_counter, "", NULL, NULL), AM_ERR_NO_ACTION, "''");
    CHECK_LEAKS();
}

/* ---- kv ------------------------------------------------------------------ */

Test(kv, get_of_a_new_key_is_nil)
{
    cr_assert_eq(call(&am_builtin_kv, "get", NULL, NULL), 0, "%s", g_out.err);
    expect_reply_bytes(&NIL, 1);
    cr_assert_not(g_out.state_set);
    CHECK_LEAKS();
}

Test(kv, put_stores_the_value_and_replies_true)
{
    struct obj v = doc_obj();
    cr_assert_eq(call(&am_builtin_kv, "put", NULL, &v), 0, "%s", g_out.err);
    cr_assert(g_out.state_set);
    cr_assert_eq(g_out.state.len, v.n);
    cr_assert(memcmp(g_out.state.data, v.p, v.n) == 0);
    expect_reply_bytes(&TRUE, 1);

    /* put replaces, whatever was there */
    struct obj old = str_obj("old");
    cr_assert_eq(call(&am_builtin_kv, "put", &old, &v), 0, "%s", g_out.err);
    cr_assert_eq(g_out.state.len, v.n);
    cr_assert(memcmp(g_out.state.data, v.p, v.n) == 0);
    obj_free(&old);
    obj_free(&v);
    CHECK_LEAKS();
}

Test(kv, get_returns_the_stored_value_as_is)
{
    struct obj v = doc_obj();
    cr_assert_eq(call(&am_builtin_kv, "get", &v, NULL), 0, "%s", g_out.err);
    expect_reply_bytes(v.p, v.n);
    cr_assert_not(g_out.state_set);
    obj_free(&v);
    CHECK_LEAKS();
}

Test(kv, del_removes_a_value_and_replies_true)
{
    struct obj v = str_obj("x");
    cr_assert_eq(call(&am_builtin_kv, "del", &v, NULL), 0, "%s", g_out.err);
    cr_assert(g_out.state_set, "del must set the state");
    cr_assert_eq(g_out.state.len, 0, "an empty state deletes");
    expect_reply_bytes(&TRUE, 1);
    obj_free(&v);
    CHECK_LEAKS();
}

Test(kv, del_of_a_missing_value_replies_false_and_writes_nothing)
{
    cr_assert_eq(call(&am_builtin_kv, "del", NULL, NULL), 0, "%s", g_out.err);
    expect_reply_bytes(&FALSE, 1);
    cr_assert_not(g_out.state_set);
    CHECK_LEAKS();
}

Test(kv, refuses_a_value_over_max_state_as_too_large)
{
    uint8_t *big = malloc(MAX_STATE + 16);
    cr_assert_not_null(big);
    big[0] = 0xc5; /* bin 16 */
    big[1] = (uint8_t)((MAX_STATE + 13) >> 8);
    big[2] = (uint8_t)((MAX_STATE + 13) & 0xff);
    memset(big + 3, 0xab, MAX_STATE + 13);
    struct obj v = raw(big, MAX_STATE + 16);
    free(big);
    int rc = call(&am_builtin_kv, "put", NULL, &v);
    expect_error(rc, AM_ETOOBIG, "limit");
    cr_assert_eq(am_status_of(rc), AM_ST_TOO_LARGE);
    cr_assert_not(g_out.state_set);
    cr_assert_not(g_out.reply_set);
    obj_free(&v);
    CHECK_LEAKS();
}

Test(kv, answers_an_unknown_action_with_unknown_action)
{
    int rc = call(&am_builtin_kv, "set", NULL, NULL);
    expect_error(rc, AM_ERR_NO_ACTION, "set");
    cr_assert(strstr(g_out.err, "kv") != NULL, "err '%s' does not name the type", g_out.err);
    cr_assert_not(g_out.state_set);
    CHECK_LEAKS();
}

/* ---- echo ---------------------------------------------------------------- */

Test(echo, returns_the_payload)
{
    struct obj v = doc_obj();
    cr_assert_eq(call(&am_builtin_echo, "echo", NULL, &v), 0, "%s", g_out.err);
    expect_reply_bytes(v.p, v.n);
    cr_assert_not(g_out.state_set, "echo keeps no state");
    obj_free(&v);

    cr_assert_eq(call(&am_builtin_echo, "echo", NULL, NULL), 0, "%s", g_out.err);
    expect_reply_bytes(&NIL, 1);
    CHECK_LEAKS();
}

Test(echo, refuses_to_echo_more_than_max_reply)
{
    size_t n = MAX_REPLY + 1 - 3; /* bin 16 header + body = MAX_REPLY + 1 bytes */
    uint8_t *big = malloc(n + 3);
    cr_assert_not_null(big);
    big[0] = 0xc5;
    big[1] = (uint8_t)(n >> 8);
    big[2] = (uint8_t)(n & 0xff);
    memset(big + 3, 0x5a, n);
    struct obj v = raw(big, n + 3);
    free(big);
    expect_error(call(&am_builtin_echo, "echo", NULL, &v), AM_ETOOBIG, "reply");
    cr_assert_not(g_out.reply_set);
    obj_free(&v);
    CHECK_LEAKS();
}

Test(echo, answers_an_unknown_action_with_unknown_action)
{
    int rc = call(&am_builtin_echo, "get", NULL, NULL);
    expect_error(rc, AM_ERR_NO_ACTION, "get");
    cr_assert(strstr(g_out.err, "echo") != NULL, "err '%s' does not name the type", g_out.err);
    CHECK_LEAKS();
}
