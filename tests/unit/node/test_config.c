/* test_config.c - node settings: defaults, flags, environment, the
 * configuration file, precedence, errors. */
#include "config.h"
#include "log.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

extern char **environ;

#define ARGS(...) (char *[]){"node", __VA_ARGS__, NULL}
#define NARGS(...) (int)(sizeof((char *[]){"node", __VA_ARGS__}) / sizeof(char *))

/* Every AMESH_ variable goes, so the caller's environment (an AMESH_CONFIG,
 * say) cannot change what a test sees. */
static void clear_env(void)
{
    for (;;) {
        char name[128] = "";
        for (char **e = environ; *e; e++)
            if (strncmp(*e, "AMESH_", 6) == 0) {
                size_t n = strcspn(*e, "=");
                snprintf(name, sizeof name, "%.*s", (int)n, *e);
                break;
            }
        if (!name[0])
            return;
        unsetenv(name);
    }
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
    cr_assert_eq(c.anti_entropy_ms, 30000);
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
    expect_error(NARGS("--anti-entropy", "1k"), ARGS("--anti-entropy", "1k"), "from 0 to");
    expect_error(NARGS("--anti-entropy", "-1"), ARGS("--anti-entropy", "-1"), "--anti-entropy");
}

/* 0 turns anti-entropy off; it is the one number option where 0 means
 * something. */
Test(config, anti_entropy_takes_zero_for_never)
{
    struct am_config c;
    char err[256];
    char *argv[] = {"node", "--anti-entropy", "0", NULL};
    cr_assert_eq(am_config_parse(&c, 3, argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.anti_entropy_ms, 0);
    char *argv2[] = {"node", "--anti-entropy", "500", NULL};
    cr_assert_eq(am_config_parse(&c, 3, argv2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.anti_entropy_ms, 500);
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

/* ---- the configuration file -------------------------------------------------- */

/* Writes text to a new file and returns its path (static storage). */
static const char *conf_file(const char *text)
{
    static char path[2][64];
    static int which;
    char *p = path[which++ % 2];
    snprintf(p, sizeof path[0], "/tmp/amesh-test-conf-XXXXXX");
    int fd = mkstemp(p);
    cr_assert_geq(fd, 0);
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
    return p;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* am_config_parse, checking that it closes the file on every path (LSan
 * cannot tell: glibc keeps every open FILE reachable). */
static int parse(struct am_config *c, int argc, char **argv, char *err, size_t errlen)
{
    err[0] = '\0';
    int before = open_fds();
    int rc = am_config_parse(c, argc, argv, err, errlen);
    cr_assert_eq(open_fds(), before, "a descriptor left open (%s)", err);
    return rc;
}

/* Parses with only --config FILE holding text; the error message or "". */
static const char *file_error(const char *text)
{
    static char err[512];
    struct am_config c;
    const char *path = conf_file(text);
    char *argv[] = {"node", "--config", (char *)path, NULL};
    int rc = parse(&c, 3, argv, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, rc ? -EINVAL : 0);
    return rc ? err : "";
}

static void expect_file_error(const char *text, const char *needle)
{
    const char *err = file_error(text);
    cr_assert(strstr(err, needle), "error '%s' should mention '%s'", err, needle);
}

static const char full_file[] =
    "# amesh.conf\n"
    "; both comment styles\n"
    "\n"
    "[node]\n"
    "name = from-file\n"
    "  bind   =   127.0.0.7:7000   \n"
    "data = /srv/file-data ; an inline comment\n"
    "sync = interval:50\n"
    "max-payload = 1m\n"
    "mailbox = 9\n"
    "join = 127.0.0.2:1\n"
    "\n"
    "join = 127.0.0.3:2,127.0.0.4:3\n"
    "actors = /lib/one.so\n"
    "actors = /lib/two.so\n"
    "log-level = debug\n"
    "log-format = json\n"
    "profile = wan\n";

Test(config, a_file_sets_every_kind_of_option_with_comments_and_blank_lines)
{
    struct am_config c;
    char err[512];
    const char *path = conf_file(full_file);
    char *argv[] = {"node", "--config", (char *)path, NULL};
    cr_assert_eq(parse(&c, 3, argv, err, sizeof err), 0, "%s", err);
    unlink(path);
    cr_assert_str_eq(c.config, path);
    cr_assert_str_eq(c.name, "from-file");
    cr_assert_str_eq(c.bind, "127.0.0.7:7000");
    cr_assert_str_eq(c.advertise, "127.0.0.7:7000");
    cr_assert_str_eq(c.data, "/srv/file-data");
    cr_assert_eq(c.sync_interval_ms, 50);
    cr_assert_eq(c.max_payload, 1u << 20);
    cr_assert_eq(c.mailbox, 9);
    cr_assert_eq(c.max_state, 4u << 20, "what the file does not set keeps its default");
    cr_assert_eq(c.njoins, 3);
    cr_assert_str_eq(c.joins[0], "127.0.0.2:1");
    cr_assert_str_eq(c.joins[2], "127.0.0.4:3");
    /* The library paths outlive the parser's buffers. */
    cr_assert_eq(c.nactor_libs, 2);
    cr_assert_str_eq(c.actor_libs[0], "/lib/one.so");
    cr_assert_str_eq(c.actor_libs[1], "/lib/two.so");
    cr_assert_eq(c.log_level, AM_LOG_DEBUG);
    cr_assert_eq(c.log_format, AM_LOG_JSON);
    cr_assert_str_eq(c.profile, "wan");
    ASSERT_NO_LEAKS();
}

Test(config, a_value_in_double_quotes_is_what_is_between_them)
{
    struct am_config c;
    char err[512];
    const char *path = conf_file("[node]\nname = \"a b\"\ndata = \"/srv/x\"\nactors = \"/lib/q.so\"\n");
    char *argv[] = {"node", "--config", (char *)path, NULL};
    cr_assert_eq(parse(&c, 3, argv, err, sizeof err), 0, "%s", err);
    unlink(path);
    cr_assert_str_eq(c.name, "a b");
    cr_assert_str_eq(c.data, "/srv/x");
    cr_assert_eq(c.nactor_libs, 1);
    cr_assert_str_eq(c.actor_libs[0], "/lib/q.so");
    ASSERT_NO_LEAKS();
}

Test(config, flags_beat_the_environment_which_beats_the_file_which_beats_defaults)
{
    struct am_config c;
    char err[512];
    const char *path = conf_file("[node]\n"
                                 "max-payload = 1m\n"
                                 "data = /file\n"
                                 "sync = interval:50\n"
                                 "join = 127.0.0.2:1\n"
                                 "join = 127.0.0.3:2\n");
    char *file_only[] = {"node", "--config", (char *)path, NULL};

    /* The file over the defaults. */
    cr_assert_eq(parse(&c, 3, file_only, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.max_payload, 1u << 20);
    cr_assert_str_eq(c.data, "/file");
    cr_assert_eq(c.sync_interval_ms, 50);
    cr_assert_eq(c.njoins, 2);

    /* The environment over the file; its list replaces the file's. */
    setenv("AMESH_MAX_PAYLOAD", "3m", 1);
    setenv("AMESH_DATA", "/env", 1);
    setenv("AMESH_SYNC", "durable", 1);
    setenv("AMESH_JOIN", "127.0.0.4:4", 1);
    cr_assert_eq(parse(&c, 3, file_only, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.max_payload, 3u << 20);
    cr_assert_str_eq(c.data, "/env");
    cr_assert_eq(c.sync_interval_ms, 0);
    cr_assert_eq(c.njoins, 1);
    cr_assert_str_eq(c.joins[0], "127.0.0.4:4");

    /* The flags over both, whichever comes first on the command line. */
    char *flags[] = {"node", "--max-payload", "5m", "--data=/flag", "--sync", "interval:7",
                     "--join", "127.0.0.5:5", "--join", "127.0.0.6:6", "--config", (char *)path,
                     NULL};
    cr_assert_eq(parse(&c, 12, flags, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.max_payload, 5u << 20);
    cr_assert_str_eq(c.data, "/flag");
    cr_assert_eq(c.sync_interval_ms, 7);
    cr_assert_eq(c.njoins, 2);
    cr_assert_str_eq(c.joins[0], "127.0.0.5:5");
    cr_assert_str_eq(c.joins[1], "127.0.0.6:6");

    /* The flags over the file with no variable between. */
    clear_env();
    cr_assert_eq(parse(&c, 12, flags, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.max_payload, 5u << 20);
    cr_assert_str_eq(c.data, "/flag");
    cr_assert_eq(c.njoins, 2);
    cr_assert_str_eq(c.joins[0], "127.0.0.5:5");
    unlink(path);
}

Test(config, amesh_config_names_the_file_and_the_flag_beats_it)
{
    struct am_config c;
    char err[512];
    const char *env_file = conf_file("[node]\nmailbox = 11\n");
    const char *flag_file = conf_file("[node]\nmailbox = 22\n");
    setenv("AMESH_CONFIG", env_file, 1);
    char *none[] = {"node", NULL};
    cr_assert_eq(parse(&c, 1, none, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.mailbox, 11);
    cr_assert_str_eq(c.config, env_file);
    char *flag[] = {"node", "--config", (char *)flag_file, NULL};
    cr_assert_eq(parse(&c, 3, flag, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.mailbox, 22);
    cr_assert_str_eq(c.config, flag_file);
    unlink(env_file);
    unlink(flag_file);
}

Test(config, an_unknown_key_is_refused_with_its_line)
{
    const char *err = file_error("# comment\n\n[node]\nbind = 127.0.0.1:1\n\n; comment\n"
                                 "max_payload = 2m\n");
    cr_assert(strstr(err, ":7: unknown key 'max_payload' (did you mean 'max-payload'?)"), "%s",
              err);
    expect_file_error("[node]\nfrobnicate = 1\n", ":2: unknown key 'frobnicate'");
    expect_file_error("[node]\n--sync = durable\n", "did you mean 'sync'?");
}

Test(config, an_unknown_section_is_refused_with_its_line)
{
    const char *err = file_error("[node]\nmailbox = 3\n\n[cluster]\nseeds = 127.0.0.1:1\n");
    cr_assert(strstr(err, ":4: unknown section [cluster]"), "%s", err);
    expect_file_error("mailbox = 3\n[node]\n", ":1: 'mailbox' is outside a section");
}

Test(config, a_bad_value_names_the_key_the_line_and_what_was_expected)
{
    const char *err = file_error("[node]\n\nmax-payload = lots\n");
    cr_assert(strstr(err, ":3: max-payload: 'lots' is not a number from 1 to"), "%s", err);
    expect_file_error("[node]\nsync = sometimes\n", ":2: sync: 'sometimes' is neither");
    expect_file_error("[node]\njoin = 127.0.0.1:1\njoin = nowhere\n", ":3: join:");
    expect_file_error("[node]\nlog-format = xml\n", ":2: log-format: 'xml' is neither text nor json");
    expect_file_error("[node]\ndata =\n", ":2: data: must be 1 to");
    /* The path of the file starts the message. */
    err = file_error("[node]\nmailbox = 0\n");
    cr_assert(strncmp(err, "/tmp/amesh-test-conf-", 21) == 0, "%s", err);
}

Test(config, a_key_set_twice_is_refused_but_join_and_actors_repeat)
{
    expect_file_error("[node]\nbind = 127.0.0.1:1\ndata = d\nbind = 127.0.0.1:2\n",
                      ":4: 'bind' is already set on line 2");
    cr_assert_str_eq(file_error("[node]\nactors = /a.so\nactors = /b.so\n"), "");
}

Test(config, lines_that_are_no_key_value_section_or_comment_are_refused)
{
    expect_file_error("[node]\nmailbox = 3\njust words\n", ":3: expected 'key = value'");
    expect_file_error("[node\nmailbox = 3\n", ":1: expected 'key = value'");
    /* The first error is reported, whether inih or a key found it. */
    expect_file_error("[node]\njust words\nnope = 1\n", ":2: expected 'key = value'");
    expect_file_error("[node]\nnope = 1\njust words\n", ":2: unknown key 'nope'");
}

Test(config, a_line_too_long_for_the_parser_is_refused_not_cut)
{
    char text[400], path[300];
    memset(path, 'p', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    snprintf(text, sizeof text, "[node]\nmailbox = 3\ndata = %s\n", path);
    expect_file_error(text, ":3: line longer than");
}

Test(config, config_is_not_a_key_of_the_file)
{
    expect_file_error("[node]\nmailbox = 3\nconfig = /etc/other.conf\n",
                      ":3: 'config' cannot be set in a configuration file");
}

Test(config, a_missing_or_unreadable_file_is_refused_with_the_reason)
{
    struct am_config c;
    char err[512];
    char *argv[] = {"node", "--config", "/nonexistent/amesh.conf", NULL};
    cr_assert_eq(parse(&c, 3, argv, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "'/nonexistent/amesh.conf'"), "%s", err);
    cr_assert(strstr(err, strerror(ENOENT)), "%s", err);

    setenv("AMESH_CONFIG", "/nonexistent/env.conf", 1);
    char *none[] = {"node", NULL};
    cr_assert_eq(parse(&c, 1, none, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "/nonexistent/env.conf"), "%s", err);

    char *dir[] = {"node", "--config", "/tmp", NULL};
    cr_assert_eq(parse(&c, 3, dir, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "'/tmp'") && strstr(err, strerror(EISDIR)), "%s", err);

    char *empty[] = {"node", "--config", "", NULL};
    cr_assert_eq(parse(&c, 3, empty, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "--config"), "%s", err);
    ASSERT_NO_LEAKS();
}

Test(config, help_comes_before_reading_the_file)
{
    struct am_config c;
    char err[512];
    char *argv[] = {"node", "--config", "/nonexistent/amesh.conf", "--help", NULL};
    cr_assert_eq(parse(&c, 4, argv, err, sizeof err), 1, "%s", err);
}

Test(config, log_format_is_a_flag_and_a_variable)
{
    struct am_config c;
    char err[512];
    char *none[] = {"node", NULL};
    cr_assert_eq(parse(&c, 1, none, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.log_format, AM_LOG_TEXT);
    setenv("AMESH_LOG_FORMAT", "json", 1);
    cr_assert_eq(parse(&c, 1, none, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.log_format, AM_LOG_JSON);
    char *text[] = {"node", "--log-format", "text", NULL};
    cr_assert_eq(parse(&c, 3, text, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.log_format, AM_LOG_TEXT);
    expect_error(NARGS("--log-format", "yaml"), ARGS("--log-format", "yaml"), "--log-format");
}

Test(config, a_file_with_a_byte_order_mark_crlf_and_tabs_reads_the_same)
{
    struct am_config c;
    char err[512];
    const char *path = conf_file("\xEF\xBB\xBF[node]\r\n\tmailbox\t=\t5\r\n\r\n# done\r\n");
    char *argv[] = {"node", "--config", (char *)path, NULL};
    cr_assert_eq(parse(&c, 3, argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.mailbox, 5);
    unlink(path);
    expect_file_error("\xEF\xBB\xBF[nodes]\r\nmailbox = 5\r\n", ":1: unknown section [nodes]");
}
