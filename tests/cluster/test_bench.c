/* test_bench.c - `amesh bench` against real nodes: the contract's JSON
 * fields, --verify, and the failure paths (bad arguments, no node, a node
 * that dies mid-run) that must end in an error or a partial result, never a
 * hang. Timings are bounded generously; nothing here asserts speed. */
#include "proc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[PATH_MAX];
static struct proc_node node;

static void setup(void)
{
    cr_assert_eq(proc_tmpdir(dir, sizeof dir, "bench"), 0);
    char data[PATH_MAX + 16], log[PATH_MAX + 16];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/node.log", dir);
    proc_node_init(&node, "127.0.0.30:7946", data, log);
}

static void teardown(void)
{
    proc_node_cleanup(&node);
    proc_rmtree(dir);
}

TestSuite(bench, .init = setup, .fini = teardown);

static void start(const char *const *extra)
{
    char why[2048];
    cr_assert_eq(proc_node_start(&node, extra, why, sizeof why), 0, "%s", why);
}

static json_t *parse(const struct proc_result *r)
{
    json_error_t e;
    json_t *j = json_loads(r->out, 0, &e);
    cr_assert_not_null(j, "bench printed no JSON (%s): %s / %s", e.text, r->out, r->err);
    return j;
}

Test(bench, json_has_the_contract_fields_and_verify_matches_the_counters)
{
    start(NULL);
    struct proc_result r;
    cr_assert_eq(proc_runl(&r, 60000, "bench", "--node", node.addr, "--type", "counter",
                           "--action", "add", "--actors", "200", "--connections", "8",
                           "--pipeline", "16", "--duration", "2", "--warmup", "0", "--verify",
                           "--json", (char *)NULL),
                 0);
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    json_t *j = parse(&r);
    static const char *const fields[] = {"requests", "errors", "seconds", "rps", "p50_us",
                                         "p99_us", "p999_us", "max_us"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        cr_assert(json_is_number(json_object_get(j, fields[i])), "no numeric '%s'", fields[i]);
    cr_assert_gt(json_integer_value(json_object_get(j, "requests")), 0);
    cr_assert_eq(json_integer_value(json_object_get(j, "errors")), 0);
    json_t *v = json_object_get(j, "verify");
    cr_assert(json_is_object(v), "no verify object: %s", r.out);
    cr_assert_eq(json_integer_value(json_object_get(v, "ok")), 200);
    cr_assert_eq(json_integer_value(json_object_get(v, "lost")), 0);
    cr_assert_eq(json_integer_value(json_object_get(v, "duplicated")), 0);
    json_decref(j);
    proc_result_free(&r);
    cr_assert_eq(proc_node_stop(&node, 0), 0);
}

Test(bench, bad_arguments_are_refused_with_usage_errors)
{
    static const char *const bad[][3] = {
        {"--connections", "0", NULL},
        {"--pipeline", "-1", NULL},
        {"--duration", "x", NULL},
        {"--frobnicate", "1", NULL},
        {"--node", "nowhere", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct proc_result r;
        cr_assert_eq(proc_runl(&r, 10000, "bench", bad[i][0], bad[i][1], (char *)NULL), 0);
        cr_assert_eq(r.code, 2, "%s %s: exit %d", bad[i][0], bad[i][1], r.code);
        cr_assert(strstr(r.err, "amesh bench"), "%s %s: stderr '%s'", bad[i][0], bad[i][1],
                  r.err);
        proc_result_free(&r);
    }
}

Test(bench, an_unreachable_node_is_reported_at_once)
{
    struct proc_result r;
    int64_t t0 = proc_now_ms();
    cr_assert_eq(proc_runl(&r, 20000, "bench", "--node", "127.0.0.31:7946", "--duration", "5",
                           (char *)NULL),
                 0);
    cr_assert_eq(r.code, 69, "exit %d: %s", r.code, r.err);
    cr_assert(strstr(r.err, "cannot reach 127.0.0.31:7946"), "%s", r.err);
    cr_assert_lt(proc_now_ms() - t0, 15000, "should not wait for the duration");
    proc_result_free(&r);
}

Test(bench, a_node_killed_mid_run_gives_a_partial_result_with_errors_counted)
{
    start(NULL);
    /* The bench runs in a child so the node can be killed while it runs. */
    char out[PATH_MAX + 16];
    snprintf(out, sizeof out, "%s/bench.json", dir);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        struct proc_result r;
        proc_runl(&r, 60000, "bench", "--node", node.addr, "--actors", "100", "--connections",
                  "4", "--pipeline", "4", "--duration", "4", "--warmup", "0", "--json",
                  (char *)NULL);
        FILE *f = fopen(out, "w");
        if (f) {
            fprintf(f, "%d\n%s", r.code, r.out ? r.out : "");
            fclose(f);
        }
        _exit(0);
    }
    proc_sleep_ms(1500);
    cr_assert_eq(proc_node_kill9(&node), 0);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    size_t len;
    char *text = proc_read_file(out, &len);
    cr_assert_not_null(text, "the bench child wrote nothing");
    int code = -1;
    sscanf(text, "%d", &code);
    cr_assert_eq(code, 1, "a run that lost its node exits 1, got %d: %s", code, text);
    json_error_t e;
    json_t *j = json_loads(strchr(text, '\n') + 1, 0, &e);
    cr_assert_not_null(j, "no partial JSON result: %s", text);
    cr_assert_gt(json_integer_value(json_object_get(j, "requests")), 0);
    cr_assert_gt(json_integer_value(json_object_get(j, "errors")) +
                     json_integer_value(json_object_get(j, "lost_connections")),
                 0, "the lost node must show in the errors: %s", text);
    json_decref(j);
    free(text);
}
