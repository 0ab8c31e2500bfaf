/* test_config.c - node settings: defaults, flags, environment, precedence, errors. */
#include "config.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ARGS(...) (char *[]){"node", __VA_ARGS__, NULL}
#define NARGS(...) (int)(sizeof((char *[]){"node", __VA_ARGS__}) / sizeof(char *))

static void clear_env(void)
{
    static const char *const names[] = {"AMESH_BIND", "AMESH_SYNC", "AMESH_MAX_PAYLOAD",
                                        "AMESH_ACTORS", "AMESH_MAILBOX", "AMESH_DATA"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unsetenv(names[i]);
}

TestSuite(config, .init = clear_env);

Test(config, defaults_match_the_documented_contract)
{
    struct am_config c;
    char err[256];
    char *argv[] = {"node", NULL};
    cr_assert_eq(am_config_parse(&c, 1, argv, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.bind, "127.0.0.1:7946");
    cr_assert_str_eq(c.advertise, "127.0.0.1:7946");
    cr_assert_str_eq(c.name, "127.0.0.1:7946");
    cr_assert_str_eq(c.data, "./data");
    cr_assert_eq(c.sync_interval_ms, 0);
    cr_assert_eq(c.max_payload, 2u << 20);
    cr_assert_eq(c.max_state, 4u << 20);
    cr_assert_eq(c.mailbox, 1024);
    cr_assert_eq(c.idle_ms, 60000);
}

Test(config, reads_flags_in_both_spellings)
{
    struct am_config c;
    char err[256];
    char **argv = ARGS("--bind", "127.0.0.5:8000", "--sync=interval:250", "--max-payload", "3m",
                       "--mailbox=16", "--name", "n1");
    cr_assert_eq(am_config_parse(&c, NARGS("--bind", "127.0.0.5:8000", "--sync=interval:250",
                                           "--max-payload", "3m", "--mailbox=16", "--name", "n1"),
                                 argv, err, sizeof err),
                 0, "%s", err);
    cr_assert_str_eq(c.bind, "127.0.0.5:8000");
    cr_assert_str_eq(c.advertise, "127.0.0.5:8000");
    cr_assert_str_eq(c.name, "n1");
    cr_assert_eq(c.sync_interval_ms, 250);
    cr_assert_eq(c.max_payload, 3u << 20);
    cr_assert_eq(c.mailbox, 16);
}

Test(config, flags_beat_the_environment_which_beats_defaults)
{
    struct am_config c;
    char err[256];
    setenv("AMESH_SYNC", "interval:100", 1);
    setenv("AMESH_MAILBOX", "7", 1);
    char **argv = ARGS("--sync", "durable");
    cr_assert_eq(am_config_parse(&c, NARGS("--sync", "durable"), argv, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(c.sync_interval_ms, 0, "the flag wins");
    cr_assert_eq(c.mailbox, 7, "the environment beats the default");
}

Test(config, actor_libraries_from_flags_replace_the_environment_list)
{
    struct am_config c;
    char err[256];
    setenv("AMESH_ACTORS", "/env/a.so", 1);
    char **argv = ARGS("--actors", "/x/a.so", "--actors", "/x/b.so");
    cr_assert_eq(am_config_parse(&c, NARGS("--actors", "/x/a.so", "--actors", "/x/b.so"), argv,
                                 err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(c.nactor_libs, 2);
    cr_assert_str_eq(c.actor_libs[0], "/x/a.so");
    cr_assert_str_eq(c.actor_libs[1], "/x/b.so");
}

static void expect_error(int argc, char **argv, const char *needle)
{
    struct am_config c;
    char err[256] = "";
    cr_assert_eq(am_config_parse(&c, argc, argv, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, needle), "error '%s' should mention '%s'", err, needle);
}

Test(config, refuses_bad_values_with_a_message_naming_the_option)
{
    expect_error(NARGS("--sync", "sometimes"), ARGS("--sync", "sometimes"), "--sync");
    expect_error(NARGS("--sync", "interval:0"), ARGS("--sync", "interval:0"), "--sync");
    expect_error(NARGS("--bind", "localhost"), ARGS("--bind", "localhost"), "--bind");
    expect_error(NARGS("--bind", "1.2.3.4:99999"), ARGS("--bind", "1.2.3.4:99999"), "--bind");
    expect_error(NARGS("--max-payload", "0"), ARGS("--max-payload", "0"), "--max-payload");
    expect_error(NARGS("--max-payload", "12q"), ARGS("--max-payload", "12q"), "--max-payload");
    expect_error(NARGS("--mailbox", "4k"), ARGS("--mailbox", "4k"), "--mailbox");
    expect_error(NARGS("--log-level", "loud"), ARGS("--log-level", "loud"), "--log-level");
    expect_error(NARGS("--data"), ARGS("--data"), "needs a value");
    expect_error(NARGS("--frobnicate", "1"), ARGS("--frobnicate", "1"), "--frobnicate");
    expect_error(NARGS("stray"), ARGS("stray"), "stray");
    expect_error(NARGS("--replicas", "0"), ARGS("--replicas", "0"), "--replicas");
    expect_error(NARGS("--replicas", "8"), ARGS("--replicas", "8"), "from 1 to 7");
    expect_error(NARGS("--join", "127.0.0.1"), ARGS("--join", "127.0.0.1"), "--join");
    expect_error(NARGS("--profile", "moon"), ARGS("--profile", "moon"), "--profile");
    expect_error(NARGS("--bind", "0.0.0.0:7946"), ARGS("--bind", "0.0.0.0:7946"), "--advertise");
}

Test(config, join_is_repeatable_and_the_environment_takes_a_list)
{
    struct am_config c;
    char err[256];
    char *argv[] = {"node", "--join", "127.0.0.2:7946", "--join=127.0.0.3:7000", NULL};
    cr_assert_eq(am_config_parse(&c, 4, argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.njoins, 2);
    cr_assert_str_eq(c.joins[0], "127.0.0.2:7946");
    cr_assert_str_eq(c.joins[1], "127.0.0.3:7000");
    cr_assert_str_eq(c.profile, "lan");

    setenv("AMESH_JOIN", "127.0.0.4:1,127.0.0.5:2,127.0.0.6:3", 1);
    setenv("AMESH_PROFILE", "wan", 1);
    char *none[] = {"node", NULL};
    cr_assert_eq(am_config_parse(&c, 1, none, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.njoins, 3);
    cr_assert_str_eq(c.joins[2], "127.0.0.6:3");
    cr_assert_str_eq(c.profile, "wan");
    /* A flag replaces the environment's list rather than adding to it. */
    char *one[] = {"node", "--join", "127.0.0.9:9", NULL};
    cr_assert_eq(am_config_parse(&c, 3, one, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.njoins, 1);
    cr_assert_str_eq(c.joins[0], "127.0.0.9:9");
    setenv("AMESH_JOIN", "127.0.0.4:1,,127.0.0.5:2", 1);
    cr_assert_neq(am_config_parse(&c, 1, none, err, sizeof err), 0);
    cr_assert(strstr(err, "AMESH_JOIN"), "%s", err);
    unsetenv("AMESH_JOIN");
    unsetenv("AMESH_PROFILE");
}

Test(config, a_name_longer_than_the_membership_bound_is_refused)
{
    struct am_config c;
    char err[256], name[200];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char *argv[] = {"node", "--name", name, NULL};
    cr_assert_neq(am_config_parse(&c, 3, argv, err, sizeof err), 0);
    cr_assert(strstr(err, "--name"), "%s", err);
}

Test(config, refuses_a_bad_environment_value_naming_the_variable)
{
    setenv("AMESH_MAX_PAYLOAD", "lots", 1);
    char *argv[] = {"node", NULL};
    expect_error(1, argv, "AMESH_MAX_PAYLOAD");
}

Test(config, help_is_not_an_error)
{
    struct am_config c;
    char err[256];
    char **argv = ARGS("--help");
    cr_assert_eq(am_config_parse(&c, NARGS("--help"), argv, err, sizeof err), 1);
}

Test(config, parses_sizes_with_suffixes_and_bounds)
{
    uint64_t v;
    cr_assert_eq(am_config_parse_size("512", 1000, &v), 0);
    cr_assert_eq(v, 512);
    cr_assert_eq(am_config_parse_size("2k", 1u << 20, &v), 0);
    cr_assert_eq(v, 2048);
    cr_assert_eq(am_config_parse_size("1G", 1ull << 30, &v), 0);
    cr_assert_eq(v, 1ull << 30);
    cr_assert_neq(am_config_parse_size("2G", 1ull << 30, &v), 0);
    cr_assert_neq(am_config_parse_size("-1", 100, &v), 0);
    cr_assert_neq(am_config_parse_size("", 100, &v), 0);
    cr_assert_neq(am_config_parse_size("99999999999999999999999", UINT64_MAX, &v), 0);
}
