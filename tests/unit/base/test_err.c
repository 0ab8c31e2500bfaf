/* test_err.c - error codes, wire statuses and their names (src/base/err.h). */
#include "err.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <string.h>

Test(err, wire_statuses_keep_their_numbers)
{
    /* docs/protocol.md: never renumbered, clients depend on them. */
    cr_assert_eq(AM_ST_OK, 0);
    cr_assert_eq(AM_ST_BAD_REQUEST, 1);
    cr_assert_eq(AM_ST_TOO_LARGE, 2);
    cr_assert_eq(AM_ST_UNKNOWN_TYPE, 3);
    cr_assert_eq(AM_ST_UNKNOWN_ACTION, 4);
    cr_assert_eq(AM_ST_INVALID_ARG, 5);
    cr_assert_eq(AM_ST_HANDLER, 6);
    cr_assert_eq(AM_ST_BUSY, 7);
    cr_assert_eq(AM_ST_OVERLOADED, 8);
    cr_assert_eq(AM_ST_STORAGE, 9);
    cr_assert_eq(AM_ST_SHUTTING_DOWN, 10);
    cr_assert_eq(AM_ST_INTERNAL, 11);
    cr_assert_eq(AM_ST_TIMEOUT, 12);
    cr_assert_eq(AM_ST_UNAVAILABLE, 13);
    cr_assert_eq(AM_ST__COUNT, 14);
    cr_assert_eq(AM_EPROTO, -1001);
    cr_assert_eq(AM_ETIMEOUT, -1012);
}

Test(err, every_status_has_a_distinct_lower_case_name)
{
    for (int st = 0; st < AM_ST__COUNT; st++) {
        const char *name = am_status_name(st);
        cr_assert_not_null(name);
        cr_assert_str_neq(name, "unknown", "status %d", st);
        cr_assert_gt(strlen(name), 1);
        for (const char *c = name; *c; c++)
            cr_assert(islower((unsigned char)*c) || *c == '_', "%s", name);
        for (int other = 0; other < st; other++)
            cr_assert_str_neq(name, am_status_name(other));
    }
    cr_assert_str_eq(am_status_name(AM_ST_BUSY), "busy");
    cr_assert_str_eq(am_status_name(AM_ST_OK), "ok");
}

Test(err, names_statuses_out_of_range_unknown)
{
    cr_assert_str_eq(am_status_name(-1), "unknown");
    cr_assert_str_eq(am_status_name(AM_ST__COUNT), "unknown");
    cr_assert_str_eq(am_status_name(255), "unknown");
}

Test(err, every_project_code_has_its_own_text)
{
    cr_assert_str_eq(am_strerror(0), "success");
    for (int st = 1; st < AM_ST__COUNT; st++) {
        const char *t = am_strerror(AM_E(st));
        cr_assert_not_null(t);
        cr_assert_gt(strlen(t), 3);
        cr_assert_str_neq(t, "unknown error", "status %d", st);
        cr_assert_str_neq(t, "success", "status %d", st);
        for (int other = 1; other < st; other++)
            cr_assert_str_neq(t, am_strerror(AM_E(other)));
    }
    static const int storage[] = {AM_ECORRUPT, AM_EFOREIGN, AM_ENEWER};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_str_neq(am_strerror(storage[i]), "unknown error");
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(am_strerror(storage[i]), am_strerror(storage[j]));
    }
}

Test(err, describes_errno_codes_as_the_c_library_does)
{
    cr_assert_str_eq(am_strerror(-ENOMEM), strerror(ENOMEM));
    cr_assert_str_eq(am_strerror(-EINVAL), strerror(EINVAL));
    cr_assert_str_eq(am_strerror(-ECONNRESET), strerror(ECONNRESET));
}

Test(err, calls_codes_outside_every_range_unknown)
{
    cr_assert_str_eq(am_strerror(1), "unknown error");
    cr_assert_str_eq(am_strerror(12345), "unknown error");
    cr_assert_str_eq(am_strerror(AM_E(AM_ST__COUNT)), "unknown error");
    cr_assert_str_eq(am_strerror(-(AM_ERR_BASE + 99)), "unknown error");
    cr_assert_str_eq(am_strerror(-100000), "unknown error");
}

Test(err, never_calls_the_code_at_the_base_of_the_range_success)
{
    /* -1000 is AM_E(AM_ST_OK): not a project code (they are -1001..-1099)
     * and not an errno. It once mapped to status OK, so an error carrying it
     * would have been answered as a success. */
    cr_assert_str_eq(am_strerror(-AM_ERR_BASE), "unknown error");
    cr_assert_eq(am_status_of(-AM_ERR_BASE), AM_ST_INTERNAL);
}

Test(err, maps_project_codes_to_their_wire_status)
{
    cr_assert_eq(am_status_of(0), AM_ST_OK);
    for (int st = 1; st < AM_ST__COUNT; st++)
        cr_assert_eq((int)am_status_of(AM_E(st)), st, "status %d", st);
    cr_assert_eq(am_status_of(AM_EPROTO), AM_ST_BAD_REQUEST);
    cr_assert_eq(am_status_of(AM_EBUSY), AM_ST_BUSY);
    cr_assert_eq(am_status_of(AM_ETIMEOUT), AM_ST_TIMEOUT);
}

Test(err, maps_storage_codes_to_the_storage_status)
{
    cr_assert_eq(am_status_of(AM_ECORRUPT), AM_ST_STORAGE);
    cr_assert_eq(am_status_of(AM_EFOREIGN), AM_ST_STORAGE);
    cr_assert_eq(am_status_of(AM_ENEWER), AM_ST_STORAGE);
}

Test(err, maps_errno_and_stray_codes_to_internal)
{
    static const int codes[] = {-ENOMEM,
                                -EINVAL,
                                -EAGAIN,
                                -EIO,
                                -1,
                                -999,
                                AM_E(AM_ST__COUNT),
                                -(AM_ERR_BASE + 49),
                                -(AM_ERR_BASE + 53),
                                -(AM_ERR_BASE + 99),
                                -100000,
                                1,
                                7};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        cr_assert_eq(am_status_of(codes[i]), AM_ST_INTERNAL, "code %d", codes[i]);
    /* Whatever the code, an error never travels as success. */
    for (int c = -200000; c < 0; c++)
        cr_assert_neq(am_status_of(c), AM_ST_OK, "code %d", c);
}

Test(err, retryable_statuses_are_exactly_the_transient_ones)
{
    for (int st = -1; st <= AM_ST__COUNT; st++) {
        int want = st == AM_ST_BUSY || st == AM_ST_OVERLOADED || st == AM_ST_SHUTTING_DOWN ||
                   st == AM_ST_TIMEOUT || st == AM_ST_UNAVAILABLE;
        cr_assert_eq(am_status_retryable(st), want, "status %d (%s)", st, am_status_name(st));
    }
}
