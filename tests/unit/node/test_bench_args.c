/* test_bench_args.c - the command line of `amesh bench`: defaults, every flag,
 * every error. */
#include "bench.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define LEAK_CHECK() ((void)0)
#endif

static struct am_bench_opts o;
static char err[256];

static int run_parse(char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    memset(err, 'x', sizeof err);
    return am_bench_parse(&o, argc, argv, err, sizeof err);
}

/* PARSE("--flag", "value", ...) parses "bench --flag value ...". */
#define PARSE(...) run_parse((char *[]){"bench", __VA_ARGS__, NULL})

static void assert_refused(int rc, const char *needle)
{
    cr_assert_eq(rc, -EINVAL, "accepted; expected an error containing '%s'", needle);
    cr_assert(strlen(err) < sizeof err);
    cr_assert(strstr(err, needle), "error '%s' does not contain '%s'", err, needle);
}

static int port_of(size_t i)
{
    return ntohs(o.nodes[i].sin_port);
}

static const char *ip_of(size_t i, char *buf)
{
    return inet_ntop(AF_INET, &o.nodes[i].sin_addr, buf, INET_ADDRSTRLEN);
}

Test(bench_args, uses_the_documented_defaults)
{
    char ip[INET_ADDRSTRLEN];
    cr_assert_eq(run_parse((char *[]){"bench", NULL}), 0);
    cr_assert_eq(o.nnodes, 1);
    cr_assert_str_eq(ip_of(0, ip), "127.0.0.1");
    cr_assert_eq(port_of(0), 7946);
    cr_assert_str_eq(o.node_names[0], "127.0.0.1:7946");
    cr_assert_str_eq(o.type, "counter");
    cr_assert_str_eq(o.action, "add");
    cr_assert_eq(o.actors, 1000);
    cr_assert_eq(o.connections, 50);
    cr_assert_eq(o.pipeline, 16);
    cr_assert_float_eq(o.duration, 10.0, 1e-9);
    cr_assert_eq(o.requests, 0);
    cr_assert_float_eq(o.warmup, 1.0, 1e-9);
    cr_assert_eq(o.payload, -1);
    cr_assert_float_eq(o.skew, 0.0, 1e-12);
    cr_assert_eq(o.seed, 1);
    cr_assert_eq(o.timeout_ms, 5000);
    cr_assert_eq(o.json, 0);
    cr_assert_eq(o.verify, 0);
    cr_assert_null(o.series);
    cr_assert_null(o.cdf);
    cr_assert_null(o.windows);
    cr_assert_eq(o.help, 0);
    cr_assert_str_eq(err, "");
    LEAK_CHECK();
}

Test(bench_args, accepts_every_flag)
{
    char ip[INET_ADDRSTRLEN];
    int rc =
        PARSE("--node", "127.0.0.2:7950", "--type", "echo", "--action", "echo", "--actors", "77",
              "--connections", "3", "--pipeline", "128", "--duration", "2.5", "--warmup", "0",
              "--payload", "100", "--skew", "0.99", "--seed", "42", "--timeout", "250", "--json");
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(o.nnodes, 1);
    cr_assert_str_eq(ip_of(0, ip), "127.0.0.2");
    cr_assert_eq(port_of(0), 7950);
    cr_assert_str_eq(o.type, "echo");
    cr_assert_str_eq(o.action, "echo");
    cr_assert_eq(o.actors, 77);
    cr_assert_eq(o.connections, 3);
    cr_assert_eq(o.pipeline, 128);
    cr_assert_float_eq(o.duration, 2.5, 1e-9);
    cr_assert_float_eq(o.warmup, 0.0, 1e-12);
    cr_assert_eq(o.payload, 100);
    cr_assert_float_eq(o.skew, 0.99, 1e-9);
    cr_assert_eq(o.seed, 42);
    cr_assert_eq(o.timeout_ms, 250);
    cr_assert_eq(o.json, 1);
    LEAK_CHECK();
}

Test(bench_args, accepts_flag_equals_value_syntax)
{
    cr_assert_eq(PARSE("--connections=7", "--type=kv", "--action=put", "--node=localhost:9000"), 0,
                 "%s", err);
    cr_assert_eq(o.connections, 7);
    cr_assert_str_eq(o.type, "kv");
    cr_assert_str_eq(o.action, "put");
    cr_assert_eq(port_of(0), 9000);
    cr_assert_str_eq(o.node_names[0], "localhost:9000");
}

Test(bench_args, lets_the_last_of_a_repeated_flag_win)
{
    cr_assert_eq(PARSE("--actors", "5", "--actors", "9"), 0);
    cr_assert_eq(o.actors, 9);
}

Test(bench_args, splits_a_comma_separated_node_list_in_order)
{
    char ip[INET_ADDRSTRLEN];
    cr_assert_eq(PARSE("--node", "127.0.0.1:7001,127.0.0.2:7002,127.0.0.3"), 0, "%s", err);
    cr_assert_eq(o.nnodes, 3);
    cr_assert_eq(port_of(0), 7001);
    cr_assert_eq(port_of(1), 7002);
    cr_assert_str_eq(ip_of(2, ip), "127.0.0.3");
    cr_assert_eq(port_of(2), 7946, "a node without a port uses the default port");
    cr_assert_str_eq(o.node_names[1], "127.0.0.2:7002");
}

Test(bench_args, takes_the_requests_count_instead_of_a_duration)
{
    cr_assert_eq(PARSE("--requests", "100000"), 0, "%s", err);
    cr_assert_eq(o.requests, 100000);
    cr_assert_float_eq(o.duration, 0.0, 1e-12);
}

Test(bench_args, accepts_verify_for_counter_add_with_the_default_payload)
{
    cr_assert_eq(PARSE("--verify", "--type", "counter", "--action", "add"), 0, "%s", err);
    cr_assert_eq(o.verify, 1);
    cr_assert(am_bench_int_payload(&o));
}

Test(bench_args, sends_the_integer_only_for_counter_add_without_payload)
{
    cr_assert_eq(PARSE("--type", "counter"), 0);
    cr_assert_eq(am_bench_int_payload(&o), 1);
    cr_assert_eq(PARSE("--payload", "8"), 0);
    cr_assert_eq(am_bench_int_payload(&o), 0);
    cr_assert_eq(PARSE("--type", "echo", "--action", "echo"), 0);
    cr_assert_eq(am_bench_int_payload(&o), 0);
    cr_assert_eq(PARSE("--action", "get"), 0);
    cr_assert_eq(am_bench_int_payload(&o), 0);
}

Test(bench_args, sets_help_for_dash_h_and_double_dash_help)
{
    cr_assert_eq(PARSE("--help"), 0);
    cr_assert_eq(o.help, 1);
    cr_assert_eq(PARSE("-h", "--json"), 0);
    cr_assert_eq(o.help, 1);
    cr_assert(strstr(am_bench_usage, "--connections"));
}

Test(bench_args, accepts_limits_at_their_bounds)
{
    cr_assert_eq(PARSE("--connections", "4096", "--pipeline", "4096", "--actors", "10000000",
                       "--payload", "1048576", "--payload", "0", "--timeout", "1", "--seed",
                       "18446744073709551615", "--skew", "10"),
                 0, "%s", err);
    cr_assert_eq(o.seed, UINT64_MAX);
    cr_assert_eq(o.payload, 0);
}

Test(bench_args, refuses_zero_or_negative_connections)
{
    assert_refused(PARSE("--connections", "0"), "--connections must be an integer from 1");
    assert_refused(PARSE("--connections", "-3"), "--connections");
    assert_refused(PARSE("--connections", "4097"), "--connections");
}

Test(bench_args, refuses_zero_or_negative_pipeline)
{
    assert_refused(PARSE("--pipeline", "0"), "--pipeline must be an integer from 1");
    assert_refused(PARSE("--pipeline", "-1"), "--pipeline");
    assert_refused(PARSE("--pipeline", "4097"), "--pipeline");
}

Test(bench_args, refuses_zero_or_negative_actors)
{
    assert_refused(PARSE("--actors", "0"), "--actors must be an integer from 1");
    assert_refused(PARSE("--actors", "-10"), "--actors");
    assert_refused(PARSE("--actors", "10000001"), "--actors");
}

Test(bench_args, refuses_zero_or_negative_duration)
{
    assert_refused(PARSE("--duration", "0"), "--duration must be a number of seconds above 0");
    assert_refused(PARSE("--duration", "-1"), "--duration");
    assert_refused(PARSE("--duration", "86401"), "--duration");
}

Test(bench_args, refuses_numbers_with_trailing_garbage_or_none_at_all)
{
    assert_refused(PARSE("--actors", "10x"), "'10x'");
    assert_refused(PARSE("--actors", ""), "--actors");
    assert_refused(PARSE("--duration", "nan"), "--duration");
    assert_refused(PARSE("--duration", "inf"), "--duration");
    assert_refused(PARSE("--duration", "1s"), "--duration");
    assert_refused(PARSE("--connections", "1.5"), "--connections");
}

Test(bench_args, refuses_bad_requests_counts)
{
    assert_refused(PARSE("--requests", "0"), "--requests must be a positive integer");
    assert_refused(PARSE("--requests", "-5"), "--requests");
    assert_refused(PARSE("--requests", "lots"), "--requests");
}

Test(bench_args, refuses_duration_and_requests_together)
{
    assert_refused(PARSE("--duration", "5", "--requests", "1000"), "exclude each other");
    assert_refused(PARSE("--requests", "1000", "--duration", "5"), "exclude each other");
}

Test(bench_args, refuses_a_negative_warmup)
{
    assert_refused(PARSE("--warmup", "-1"), "--warmup must be a number of seconds from 0");
    assert_refused(PARSE("--warmup", "x"), "--warmup");
}

Test(bench_args, refuses_bad_payload_sizes)
{
    assert_refused(PARSE("--payload", "-1"), "--payload must be a number of bytes from 0");
    assert_refused(PARSE("--payload", "1048577"), "--payload");
}

Test(bench_args, refuses_a_negative_or_huge_skew)
{
    assert_refused(PARSE("--skew", "-0.5"), "--skew must be a number from 0 to 10");
    assert_refused(PARSE("--skew", "11"), "--skew");
}

Test(bench_args, refuses_a_negative_seed)
{
    assert_refused(PARSE("--seed", "-1"), "--seed must be a non-negative integer");
    assert_refused(PARSE("--seed", "99999999999999999999"), "--seed");
}

Test(bench_args, refuses_a_zero_or_huge_timeout)
{
    assert_refused(PARSE("--timeout", "0"), "--timeout must be a number of milliseconds from 1");
    assert_refused(PARSE("--timeout", "3600001"), "--timeout");
}

Test(bench_args, refuses_unknown_flags)
{
    assert_refused(PARSE("--conections", "5"), "unknown flag '--conections'");
    assert_refused(PARSE("--a-flag-name-far-too-long-to-be-any-flag"), "unknown flag");
    assert_refused(PARSE("--"), "unexpected argument '--'");
    assert_refused(PARSE("-c", "5"), "unexpected argument '-c'");
}

Test(bench_args, refuses_positional_arguments)
{
    assert_refused(PARSE("counter"), "unexpected argument 'counter'");
}

Test(bench_args, refuses_a_flag_without_its_value)
{
    assert_refused(PARSE("--actors"), "--actors needs a value");
    assert_refused(PARSE("--json", "--node"), "--node needs a value");
}

Test(bench_args, refuses_a_value_given_to_a_switch)
{
    assert_refused(PARSE("--json=yes"), "--json takes no value");
    assert_refused(PARSE("--verify=1"), "--verify takes no value");
}

Test(bench_args, refuses_bad_addresses)
{
    assert_refused(PARSE("--node", "example.com:7946"), "bad address 'example.com:7946'");
    assert_refused(PARSE("--node", "127.0.0.1:0"), "bad address");
    assert_refused(PARSE("--node", "127.0.0.1:65536"), "bad address");
    assert_refused(PARSE("--node", "127.0.0.1:port"), "bad address");
    assert_refused(PARSE("--node", ":7946"), "bad address");
    assert_refused(PARSE("--node", "300.0.0.1:7946"), "bad address");
    assert_refused(PARSE("--node", ""), "empty address");
    assert_refused(PARSE("--node", "127.0.0.1:1,,127.0.0.1:2"), "empty address");
    assert_refused(PARSE("--node", "127.0.0.1:1,"), "empty address");
    assert_refused(
        PARSE("--node", "127.0.0.1:1234567890123456789012345678901234567890123456789012345678901"),
        "too long");
}

Test(bench_args, refuses_more_nodes_than_it_can_hold)
{
    char list[AM_BENCH_MAX_NODES * 16 + 32] = "";
    for (int i = 0; i <= AM_BENCH_MAX_NODES; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s127.0.0.1:%d", i ? "," : "",
                 7000 + i);
    assert_refused(PARSE("--node", list), "at most 32 nodes");
}

Test(bench_args, refuses_bad_type_and_action_names)
{
    char longname[AM_MAX_TYPE + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_refused(PARSE("--type", ""), "--type must be 1 to 63 characters");
    assert_refused(PARSE("--type", longname), "--type must be 1 to 63 characters");
    assert_refused(PARSE("--type", "a/b"), "must not contain '/'");
    assert_refused(PARSE("--action", ""), "--action must be 1 to 63 characters");
    assert_refused(PARSE("--action", longname), "--action");
}

Test(bench_args, takes_the_series_and_cdf_file_names_as_given)
{
    char *argv[] = {"bench", "--series", "out/series.csv", "--cdf=out/cdf.csv", NULL};
    cr_assert_eq(run_parse(argv), 0, "%s", err);
    cr_assert_str_eq(o.series, "out/series.csv");
    cr_assert_str_eq(o.cdf, "out/cdf.csv");
    cr_assert_eq(o.series, argv[2], "the name is borrowed from argv, not copied");
    cr_assert(strstr(am_bench_usage, "--series") && strstr(am_bench_usage, "--cdf"));
    LEAK_CHECK();
}

Test(bench_args, accepts_series_or_cdf_alone_and_with_requests)
{
    cr_assert_eq(PARSE("--series", "s.csv", "--requests", "1000"), 0, "%s", err);
    cr_assert_str_eq(o.series, "s.csv");
    cr_assert_null(o.cdf);
    cr_assert_eq(PARSE("--cdf", "c.csv", "--json"), 0, "%s", err);
    cr_assert_null(o.series);
    cr_assert_str_eq(o.cdf, "c.csv");
}

Test(bench_args, lets_the_last_series_file_win)
{
    cr_assert_eq(PARSE("--series", "a.csv", "--series", "b.csv"), 0, "%s", err);
    cr_assert_str_eq(o.series, "b.csv");
}

Test(bench_args, refuses_a_series_or_cdf_flag_without_a_file_name)
{
    assert_refused(PARSE("--series"), "--series needs a value");
    assert_refused(PARSE("--json", "--cdf"), "--cdf needs a value");
    assert_refused(PARSE("--series", ""), "--series needs a file name");
    assert_refused(PARSE("--cdf="), "--cdf needs a file name");
}

Test(bench_args, refuses_the_same_file_for_series_and_cdf)
{
    assert_refused(PARSE("--series", "x.csv", "--cdf", "x.csv"),
                   "--series and --cdf must name different files");
}

Test(bench_args, takes_the_windows_file_name_as_given)
{
    char *argv[] = {"bench", "--windows", "out/windows.csv", "--series",
                    "s.csv", "--cdf",     "c.csv",           NULL};
    cr_assert_eq(run_parse(argv), 0, "%s", err);
    cr_assert_str_eq(o.windows, "out/windows.csv");
    cr_assert_eq(o.windows, argv[2], "the name is borrowed from argv, not copied");
    cr_assert_str_eq(o.series, "s.csv");
    cr_assert_str_eq(o.cdf, "c.csv");
    cr_assert_eq(PARSE("--windows=w.csv", "--warmup", "0"), 0, "%s", err);
    cr_assert_str_eq(o.windows, "w.csv");
    cr_assert_null(o.series);
    cr_assert(strstr(am_bench_usage, "--windows FILE"));
    cr_assert(strstr(am_bench_usage, "id,window_us"));
    LEAK_CHECK();
}

Test(bench_args, refuses_a_windows_flag_without_a_file_name)
{
    assert_refused(PARSE("--windows"), "--windows needs a value");
    assert_refused(PARSE("--windows", ""), "--windows needs a file name");
    assert_refused(PARSE("--windows="), "--windows needs a file name");
}

Test(bench_args, refuses_the_same_file_for_windows_and_series_or_cdf)
{
    assert_refused(PARSE("--series", "x.csv", "--windows", "x.csv"),
                   "--series and --windows must name different files, not both 'x.csv'");
    assert_refused(PARSE("--windows", "y.csv", "--cdf", "y.csv"),
                   "--cdf and --windows must name different files, not both 'y.csv'");
    cr_assert_eq(PARSE("--series", "x.csv", "--cdf", "y.csv", "--windows", "z.csv"), 0, "%s", err);
}

/* ---- The unavailable window of one actor (times in ns, never 0) ---------- */

Test(bench_window, is_zero_until_a_call_completes_or_fails)
{
    struct am_bench_window w = {0};
    cr_assert_eq(am_bench_window_final(&w, 5000), 0);
}

Test(bench_window, of_an_actor_served_normally_is_its_worst_latency)
{
    struct am_bench_window w = {0};
    am_bench_window_ok(&w, 100, 130); /* 30 */
    am_bench_window_ok(&w, 200, 290); /* 90 */
    am_bench_window_ok(&w, 300, 340); /* 40 */
    cr_assert_eq(am_bench_window_final(&w, 100000), 90);
}

Test(bench_window, of_a_held_call_is_its_whole_wait)
{
    struct am_bench_window w = {0};
    am_bench_window_ok(&w, 100, 110);
    am_bench_window_ok(&w, 1000, 251000); /* held for 250 us */
    cr_assert_eq(am_bench_window_final(&w, 300000), 250000);
}

Test(bench_window, runs_from_the_first_failed_send_to_the_next_success)
{
    struct am_bench_window w = {0};
    am_bench_window_ok(&w, 100, 150);
    am_bench_window_failed(&w, 1000);
    am_bench_window_failed(&w, 2000); /* later failures do not move the start */
    am_bench_window_ok(&w, 3000, 3100);
    cr_assert_eq(am_bench_window_final(&w, 100000), 2100, "3100 - 1000");
    /* The success closed it: a later run of failures starts afresh. */
    am_bench_window_failed(&w, 5000);
    am_bench_window_ok(&w, 5500, 5600);
    cr_assert_eq(am_bench_window_final(&w, 100000), 2100, "600 is shorter");
}

Test(bench_window, starts_at_the_earliest_failed_send_whatever_the_order_they_are_settled_in)
{
    struct am_bench_window w = {0};
    am_bench_window_failed(&w, 2000);
    am_bench_window_failed(&w, 1000); /* lost with the same connection, settled after */
    am_bench_window_ok(&w, 4000, 4500);
    cr_assert_eq(am_bench_window_final(&w, 100000), 3500);
}

Test(bench_window, of_a_call_sent_before_a_failure_counts_from_its_own_send)
{
    struct am_bench_window w = {0};
    am_bench_window_failed(&w, 2000);   /* a later call failed first */
    am_bench_window_ok(&w, 1000, 9000); /* the earlier one was held, then served */
    cr_assert_eq(am_bench_window_final(&w, 100000), 8000);
}

Test(bench_window, still_open_at_the_end_runs_to_the_end)
{
    struct am_bench_window w = {0};
    am_bench_window_ok(&w, 100, 200);
    am_bench_window_failed(&w, 1000);
    cr_assert_eq(am_bench_window_final(&w, 61000), 60000);
    /* An open failure shorter than an earlier window leaves that one. */
    struct am_bench_window v = {0};
    am_bench_window_ok(&v, 100, 90100);
    am_bench_window_failed(&v, 99000);
    cr_assert_eq(am_bench_window_final(&v, 100000), 90000);
}

Test(bench_window, of_a_reply_in_the_nanosecond_it_was_sent_still_marks_the_actor)
{
    struct am_bench_window w = {0};
    am_bench_window_ok(&w, 500, 500);
    cr_assert_eq(am_bench_window_final(&w, 1000), 1);
}

Test(bench_args, refuses_verify_for_anything_but_counter_add_with_the_integer)
{
    assert_refused(PARSE("--verify", "--type", "echo", "--action", "echo"), "--verify works only");
    assert_refused(PARSE("--verify", "--action", "get"), "--verify works only");
    assert_refused(PARSE("--verify", "--payload", "16"), "--verify works only");
}

Test(bench_args, writes_a_terminated_error_into_a_short_buffer)
{
    char small[8];
    memset(small, 'x', sizeof small);
    int rc = am_bench_parse(&o, 2, (char *[]){"bench", "--bogus", NULL}, small, sizeof small);
    cr_assert_eq(rc, -EINVAL);
    cr_assert_eq(strlen(small), sizeof small - 1);
    cr_assert_eq(am_bench_parse(&o, 2, (char *[]){"bench", "--bogus", NULL}, NULL, 0), -EINVAL);
    LEAK_CHECK();
}
