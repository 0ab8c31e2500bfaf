/* test_registry.c - the actor type registry (src/actors/registry.h).
 *
 * Names are checked at registration, lookups match whole names only, and
 * loading a shared library reports the file and the problem. The loading
 * tests use a path that does not exist and libm, a library every system has
 * that exports no amesh_actor_module. */
#include "err.h"
#include "registry.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

static int nop_handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    (void)m;
    (void)out;
    return 0;
}

static struct am_registry *new_registry(void)
{
    struct am_registry *r = NULL;
    cr_assert_eq(am_registry_new(&r), 0);
    cr_assert_not_null(r);
    return r;
}

/* Adds a type named name; returns the code and leaves the message in err. */
static int add_named(struct am_registry *r, struct am_actor_type *t, const char *name, char *err,
                     size_t errlen)
{
    t->name = name;
    t->handle = nop_handle;
    t->data = NULL;
    err[0] = '\0';
    return am_registry_add(r, t, err, errlen);
}

Test(registry, starts_empty_and_frees_null)
{
    struct am_registry *r = new_registry();
    cr_assert_eq(am_registry_count(r), 0);
    cr_assert_null(am_registry_at(r, 0));
    cr_assert_null(am_registry_find(r, "counter", 7));
    am_registry_free(r);
    am_registry_free(NULL);
    CHECK_LEAKS();
}

Test(registry, registers_the_builtins_in_order)
{
    struct am_registry *r = new_registry();
    cr_assert_eq(am_registry_add_builtins(r), 0);
    cr_assert_eq(am_registry_count(r), 3);
    cr_assert_eq(am_registry_at(r, 0), &am_builtin_counter);
    cr_assert_eq(am_registry_at(r, 1), &am_builtin_kv);
    cr_assert_eq(am_registry_at(r, 2), &am_builtin_echo);
    cr_assert_null(am_registry_at(r, 3));
    cr_assert_eq(am_registry_find(r, "counter", 7), &am_builtin_counter);
    cr_assert_eq(am_registry_find(r, "kv", 2), &am_builtin_kv);
    cr_assert_eq(am_registry_find(r, "echo", 4), &am_builtin_echo);
    cr_assert_str_eq(am_builtin_counter.name, "counter");
    cr_assert_str_eq(am_builtin_kv.name, "kv");
    cr_assert_str_eq(am_builtin_echo.name, "echo");
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, finds_whole_names_only)
{
    struct am_registry *r = new_registry();
    cr_assert_eq(am_registry_add_builtins(r), 0);
    cr_assert_null(am_registry_find(r, "count", 5));
    cr_assert_null(am_registry_find(r, "counterx", 8));
    cr_assert_null(am_registry_find(r, "Counter", 7));
    cr_assert_null(am_registry_find(r, "", 0));
    /* The length decides, not a NUL: "kvx" cut at 2 is "kv". */
    cr_assert_eq(am_registry_find(r, "kvx", 2), &am_builtin_kv);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, refuses_a_name_registered_twice)
{
    struct am_registry *r = new_registry();
    char err[200];
    cr_assert_eq(am_registry_add_builtins(r), 0);
    struct am_actor_type dup;
    cr_assert_eq(add_named(r, &dup, "kv", err, sizeof err), -EEXIST);
    cr_assert(strstr(err, "'kv'") != NULL, "err '%s' does not name the type", err);
    cr_assert(strstr(err, "twice") != NULL, "err '%s'", err);
    cr_assert_eq(am_registry_count(r), 3);
    cr_assert_eq(am_registry_find(r, "kv", 2), &am_builtin_kv, "the first one stays");
    /* Adding the builtins again fails on the first of them. */
    cr_assert_eq(am_registry_add_builtins(r), -EEXIST);
    cr_assert_eq(am_registry_count(r), 3);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, accepts_every_allowed_character_and_63_bytes)
{
    struct am_registry *r = new_registry();
    char err[200];
    char longest[64];
    memset(longest, 'z', 63);
    longest[63] = '\0';
    struct am_actor_type t[4];
    cr_assert_eq(add_named(r, &t[0], "abcdefghijklmnopqrstuvwxyz0123456789_.-", err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(add_named(r, &t[1], longest, err, sizeof err), 0, "%s", err);
    cr_assert_eq(add_named(r, &t[2], "a", err, sizeof err), 0, "%s", err);
    cr_assert_eq(add_named(r, &t[3], "my.bank-account_v2", err, sizeof err), 0, "%s", err);
    cr_assert_eq(am_registry_count(r), 4);
    cr_assert_eq(am_registry_find(r, longest, 63), &t[1]);
    cr_assert_eq(am_registry_find(r, "my.bank-account_v2", 18), &t[3]);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, refuses_invalid_names_with_a_message)
{
    struct am_registry *r = new_registry();
    char err[200];
    char too_long[65];
    memset(too_long, 'a', 64);
    too_long[64] = '\0';
    const char *bad[] = {"",    too_long, "Counter",    "a b",  "type/id", "caf\xc3\xa9",
                         "x:y", "tab\t",  "semi;colon", "UPPER"};
    struct am_actor_type t;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(add_named(r, &t, bad[i], err, sizeof err), -EINVAL, "'%s' was accepted",
                     bad[i]);
        cr_assert(strstr(err, "invalid") != NULL, "err '%s' for '%s'", err, bad[i]);
        cr_assert(strstr(err, bad[i]) != NULL, "err '%s' does not quote '%s'", err, bad[i]);
    }
    /* No name at all, and a type without a handler. */
    t.name = NULL;
    t.handle = nop_handle;
    cr_assert_eq(am_registry_add(r, &t, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "(null)") != NULL, "err '%s'", err);
    t.name = "nohandler";
    t.handle = NULL;
    cr_assert_eq(am_registry_add(r, &t, err, sizeof err), -EINVAL);
    cr_assert_eq(am_registry_add(r, NULL, err, sizeof err), -EINVAL);
    cr_assert_eq(am_registry_count(r), 0);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, refuses_more_than_256_types)
{
    struct am_registry *r = new_registry();
    static char names[257][8];
    static struct am_actor_type t[257];
    char err[200];
    for (int i = 0; i < 256; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        cr_assert_eq(add_named(r, &t[i], names[i], err, sizeof err), 0, "%s", err);
    }
    snprintf(names[256], sizeof names[256], "t256");
    cr_assert_eq(add_named(r, &t[256], names[256], err, sizeof err), -ENOSPC);
    cr_assert(strstr(err, "256") != NULL, "err '%s'", err);
    cr_assert_eq(am_registry_count(r), 256);
    cr_assert_eq(am_registry_find(r, "t255", 4), &t[255]);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, load_of_a_missing_file_names_it)
{
    struct am_registry *r = new_registry();
    char err[512] = "";
    const char *path = "/nonexistent/amesh/libnothing.so";
    int rc = am_registry_load(r, path, err, sizeof err);
    cr_assert_lt(rc, 0);
    cr_assert(strncmp(err, path, strlen(path)) == 0, "err '%s' does not start with the path", err);
    cr_assert(strstr(err, "cannot load") != NULL, "err '%s'", err);
    cr_assert_eq(am_registry_count(r), 0);
    am_registry_free(r);
    CHECK_LEAKS();
}

Test(registry, load_of_a_library_without_a_module_says_so)
{
    struct am_registry *r = new_registry();
    cr_assert_eq(am_registry_add_builtins(r), 0);
    char err[512] = "";
    int rc = am_registry_load(r, "libm.so.6", err, sizeof err);
    cr_assert_eq(rc, -EINVAL, "rc %d, err '%s'", rc, err);
    cr_assert(strstr(err, "libm.so.6") != NULL, "err '%s' does not name the file", err);
    cr_assert(strstr(err, "exports no amesh_actor_module") != NULL, "err '%s'", err);
    cr_assert_eq(am_registry_count(r), 3, "the registry is unchanged");
    am_registry_free(r);
    CHECK_LEAKS();
}
