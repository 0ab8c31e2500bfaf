/* test_bench.c - `amesh bench` against real nodes: the contract's JSON
 * fields, --verify, --windows, and the failure paths (bad arguments, no node, a node
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

/* One connection with one call in flight and --requests: the bench sends
 * exactly N calls and every one is answered inside the run, so the actors it
 * called are exactly those active on the (fresh) node. With 1000 actors and
 * 300 calls, about 260 of them are called: the file must list those, not
 * all 1000. */
Test(bench, windows_lists_every_called_actor_once_with_a_window_inside_the_run)
{
    start(NULL);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/windows.csv", dir);
    struct proc_result r;
    cr_assert_eq(proc_runl(&r, 30000, "bench", "--node", node.addr, "--actors", "1000",
                           "--connections", "1", "--pipeline", "1", "--requests", "300", "--warmup",
                           "0", "--windows", path, "--json", (char *)NULL),
                 0);
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    json_t *j = parse(&r);
    double run_us = json_number_value(json_object_get(j, "seconds")) * 1e6;
    cr_assert_gt(run_us, 0, "%s", r.out);

    /* The actors the node activated: "counter/bench-<i>". */
    struct proc_result a;
    cr_assert_eq(proc_runl(&a, 10000, "actors", "--node", node.addr, "--json", (char *)NULL), 0);
    cr_assert_eq(a.code, 0, "actors: exit %d: %s", a.code, a.err);
    json_t *aj = parse(&a);
    json_t *keys = json_object_get(aj, "keys");
    cr_assert(json_is_array(keys), "%s", a.out);
    static char active[1000];
    memset(active, 0, sizeof active);
    size_t nactive = json_array_size(keys);
    for (size_t i = 0; i < nactive; i++) {
        int id = -1, end = 0;
        const char *k = json_string_value(json_array_get(keys, i));
        cr_assert(k && sscanf(k, "counter/bench-%d%n", &id, &end) == 1 && k[end] == '\0' &&
                      id >= 0 && id < 1000,
                  "unexpected active actor '%s'", k ? k : "?");
        active[id] = 1;
    }
    cr_assert(nactive > 100 && nactive < 300, "%zu actors called by 300 calls over 1000", nactive);

    size_t len;
    char *text = proc_read_file(path, &len);
    cr_assert_not_null(text, "no --windows file");
    cr_assert_eq(strncmp(text, "id,window_us\n", 13), 0, "header: %.40s", text);
    static char listed[1000];
    memset(listed, 0, sizeof listed);
    size_t lines = 0;
    double max = 0;
    char *save = NULL;
    for (char *line = strtok_r(text + 13, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int id = -1, end = 0;
        double us = -1;
        cr_assert(sscanf(line, "bench-%d,%lf%n", &id, &us, &end) == 2 && line[end] == '\0',
                  "bad line '%s'", line);
        char canon[32];
        snprintf(canon, sizeof canon, "bench-%d,", id);
        cr_assert_eq(strncmp(line, canon, strlen(canon)), 0, "id not as the bench sends it: '%s'",
                     line);
        cr_assert(id >= 0 && id < 1000, "'%s'", line);
        cr_assert(active[id], "'%s': the node never saw this actor", line);
        cr_assert_not(listed[id], "'%s': listed twice", line);
        listed[id] = 1;
        cr_assert(us > 0 && us < run_us, "'%s': window outside (0, %.1f us)", line, run_us);
        if (us > max)
            max = us;
        lines++;
    }
    cr_assert_eq(lines, nactive, "%zu lines for %zu actors called", lines, nactive);

    /* Served normally, each window is that actor's worst latency: the
     * largest is the run's maximum latency. */
    json_t *w = json_object_get(j, "windows");
    cr_assert(json_is_object(w), "no windows object: %s", r.out);
    cr_assert_eq(json_integer_value(json_object_get(w, "actors")), (json_int_t)lines);
    double p50 = json_number_value(json_object_get(w, "p50_us"));
    double p99 = json_number_value(json_object_get(w, "p99_us"));
    double wmax = json_number_value(json_object_get(w, "max_us"));
    cr_assert(p50 > 0 && p50 <= p99 && p99 <= wmax, "%s", r.out);
    cr_assert_float_eq(wmax, max, 0.05, "json max %.1f, file max %.1f", wmax, max);
    cr_assert_float_eq(wmax, json_number_value(json_object_get(j, "max_us")), 0.05, "%s", r.out);

    free(text);
    json_decref(aj);
    json_decref(j);
    proc_result_free(&a);
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
