/* test_recovery.c - a cluster under load keeps every acknowledged add
 * through a join, a graceful leave, a crash and a pause, with real
 * `amesh node` processes on 127.0.8.x and --replicas 2:
 *
 *   five nodes; 1,000 "base" counters get 5,000 adds through random nodes
 *   (all acknowledged) and are then left alone; then, each under an
 *   `amesh bench --verify` load of its own (1,000 more counters, through
 *   n0 and n1, the two nodes that stay up throughout):
 *     1. n5 joins;
 *     2. n2 leaves with SIGTERM (exit 0);
 *     3. n3 is killed with SIGKILL;
 *     4. n4 is stopped with SIGSTOP for 10 s, then resumed.
 *   After each step, once the live nodes agree on one ring: bench found
 *   every one of its counters at least at its acknowledged adds and at most
 *   at the adds it attempted (every error retryable); each base counter
 *   holds exactly its acknowledged adds (its owner changed in every step:
 *   handoff, failover to the replica, repair); and every active actor is
 *   active on exactly one live node, its owner by the ring. At the end the
 *   live nodes stop with SIGTERM and exit 0.
 *
 * A failed bench verification does not end the test at once: the checks
 * after the step still run, and the replication and handoff counters of
 * the live nodes and the placement of the counters found wrong are logged.
 * On a failure the nodes' logs are copied to
 * /tmp/amesh-proc-recovery-fail.XXXXXX (its path goes to stderr).
 *
 * The test speaks the protocol itself over plain sockets (pipelined
 * batches of frames), with the helpers it shares with test_routing.c:
 * support/rconn.h, support/counters.h and support/cluster.h. */
#include "cluster.h"
#include "counters.h"
#include "proc.h"

#include "err.h"
#include "proto.h"
#include "ring.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NODES 6
#define FORWARD_TIMEOUT "3000"

static struct {
    char dir[256];
    struct proc_node nodes[MAX_NODES];
    char names[MAX_NODES][CLUSTER_NAME_MAX];
    int stopped; /* index of a SIGSTOPped node to resume at teardown, or -1 */
    int passed;  /* the test reached its end: its directory can go */
    int soft;    /* checks that failed without ending the test (cr_expect) */
} w;

static const struct cluster cluster = {CLUSTER_OF(w), .stopped = &w.stopped};

static void setup(void)
{
    memset(&w, 0, sizeof w);
    cluster_setup(&cluster, "recovery");
}

/* On a failure the nodes' logs are copied to
 * /tmp/amesh-proc-recovery-fail.XXXXXX first. */
static void heal(void);

static void teardown(void)
{
    heal(); /* a partition test that failed: the network first */
    cluster_teardown(&cluster, w.passed ? NULL : "recovery-fail");
}

TestSuite(recovery, .init = setup, .fini = teardown);

/* ---- nodes ------------------------------------------------------------- */

static void node_start(int i)
{
    cluster_node_init(&cluster, i, "127.0.8");
    const char *extra[] = {
        "--replicas",    "2", "--profile", "lan", "--idle-timeout", "600000", "--forward-timeout",
        FORWARD_TIMEOUT, NULL};
    cluster_node_start(&cluster, i, i ? 0 : -1, extra);
}

/* The number of members of node i's ring, or -1 when it does not answer. */
static int ring_size(int i)
{
    json_t *st = cluster_status(&cluster, i);
    int n = st ? (int)cluster_stat(st, "ring", "members") : -1;
    json_decref(st);
    return n;
}

static const char *owner_name(const struct am_ring *r, const char *id)
{
    return am_ring_member(r, am_ring_owner(r, am_ring_key("counter", 7, id, strlen(id))));
}

/* ---- the base counters b0 .. b(BASE-1) ----------------------------------- */

#define BASE 1000
#define BASE_ADDS 5000
#define BATCH 500

static const struct counters base = {"b", BASE, BATCH, "base "};
static uint32_t acked[BASE];

/* Reads every base counter through one of the listed nodes chosen at
 * random (a get answered with a retryable error is asked again, for up to
 * 15 s); returns how many differ from acked, each logged with its owner now
 * and by the first ring (n0 .. n4). */
static uint64_t check_counters(const char *when, const int *nodes, int nn)
{
    static const int first[] = {0, 1, 2, 3, 4};
    struct am_ring *ring = cluster_ring(&cluster, nodes, nn),
                   *ring0 = cluster_ring(&cluster, first, 5);
    static int64_t value[BASE];
    int retried = counters_read(&base, &cluster, nodes, nn, value, 15000, when);
    uint64_t mismatches = 0;
    for (int k = 0; k < BASE; k++) {
        if (value[k] == (int64_t)acked[k])
            continue;
        char id[16];
        snprintf(id, sizeof id, "b%d", k);
        if (mismatches++ < 20)
            cr_log_error("%s: b%d is %lld, acknowledged adds %u (%s); owner now %s, first %s",
                         when, k, (long long)value[k], acked[k],
                         value[k] < (int64_t)acked[k] ? "LOST" : "DUPLICATED",
                         owner_name(ring, id), owner_name(ring0, id));
    }
    if (retried)
        cr_log_info("%s: %d base gets were asked again after a retryable error", when, retried);
    am_ring_free(ring);
    am_ring_free(ring0);
    return mismatches;
}

/* ---- the load ------------------------------------------------------------- */

struct bench_run {
    char nodes[80];
    char duration[16];
    struct proc_bg bg;
};

static void bench_start(struct bench_run *b, int seconds)
{
    memset(b, 0, sizeof *b);
    snprintf(b->nodes, sizeof b->nodes, "%s,%s", w.nodes[0].addr, w.nodes[1].addr);
    snprintf(b->duration, sizeof b->duration, "%d", seconds);
    const char *args[] = {"bench",      "--node",      b->nodes,       "--actors", "1000",
                          "--connections", "8",        "--pipeline",   "4",        "--duration",
                          b->duration, "--warmup",     "0",            "--json",   "--verify",
                          NULL};
    cr_assert_eq(proc_bg_start(&b->bg, 180000, args), 0);
}

/* "owner nX, replica nY" of counter/id by the ring of the listed nodes. */
static void place(char *out, size_t outlen, const int *nodes, int nn, const char *id)
{
    struct am_ring *r = cluster_ring(&cluster, nodes, nn);
    uint64_t k = am_ring_key("counter", 7, id, strlen(id));
    int next = -1;
    am_ring_successors(r, k, &next, 1);
    snprintf(out, outlen, "owner %s, replica %s", am_ring_member(r, am_ring_owner(r, k)),
             next >= 0 ? am_ring_member(r, next) : "none");
    am_ring_free(r);
}

/* The counters log_figures reports, in this order. */
#define NFIG 17
static const char *const fig_map[NFIG] = {
    "replication", "replication", "replication", "replication", "replication", "replication",
    "replication", "replication", "handoff",     "handoff",     "handoff",     "handoff",
    "handoff",     "handoff",     "handoff",     "actors",      "membership"};
static const char *const fig_key[NFIG] = {
    "sent",     "acked",   "stale",   "unreplicated", "received",   "stored",
    "newer_here", "repaired", "sent", "failed",       "received",   "refused",
    "current",  "held_total", "hold_expired", "fenced", "deaths_declared"};

static void fig_read(int node, uint64_t *f)
{
    json_t *st = cluster_status(&cluster, node);
    cr_assert_not_null(st, "n%d does not answer STATUS", node);
    for (int j = 0; j < NFIG; j++)
        f[j] = cluster_stat(st, fig_map[j], fig_key[j]);
    json_decref(st);
}

static void fig_log(const char *when, const char *who, const uint64_t *f)
{
    cr_log_info("%s %s: replication sent %llu, acked %llu, stale %llu, unreplicated %llu, "
                "received %llu, stored %llu, newer_here %llu, repaired %llu; handoff sent %llu, "
                "failed %llu, received %llu, refused %llu, current %llu, held_total %llu, "
                "hold_expired %llu; actors fenced %llu; deaths declared %llu",
                when, who, (unsigned long long)f[0], (unsigned long long)f[1],
                (unsigned long long)f[2], (unsigned long long)f[3], (unsigned long long)f[4],
                (unsigned long long)f[5], (unsigned long long)f[6], (unsigned long long)f[7],
                (unsigned long long)f[8], (unsigned long long)f[9], (unsigned long long)f[10],
                (unsigned long long)f[11], (unsigned long long)f[12], (unsigned long long)f[13],
                (unsigned long long)f[14], (unsigned long long)f[15], (unsigned long long)f[16]);
}

/* Logs the replication, handoff and fencing counters of each listed node
 * and their sums; sum (when not NULL) receives the sums. */
static void log_figures(const char *when, const int *nodes, int nn, uint64_t *sum)
{
    uint64_t total[NFIG] = {0}, f[NFIG];
    for (int k = 0; k < nn; k++) {
        char who[16];
        fig_read(nodes[k], f);
        snprintf(who, sizeof who, "n%d", nodes[k]);
        fig_log(when, who, f);
        for (int j = 0; j < NFIG; j++)
            total[j] += f[j];
    }
    fig_log(when, "sum", total);
    if (sum)
        memcpy(sum, total, sizeof total);
}

/* Logs, for each counter bench's verification complained about, where it
 * lives by the ring of the live nodes and by the other ring of the step
 * (the one before it; for the pause, the one without the paused node). */
static void log_bad_counters(const char *when, const char *err, const int *live, int nl,
                             const int *before, int nb)
{
    int shown = 0;
    for (const char *p = strstr(err, "verify: bench-"); p && shown < 20;
         p = strstr(p + 1, "verify: bench-")) {
        char id[64];
        const char *s = p + 8, *e = strchr(s, ' ');
        if (!e || (size_t)(e - s) >= sizeof id)
            continue;
        memcpy(id, s, (size_t)(e - s));
        id[e - s] = '\0';
        char now[64], then[64];
        place(now, sizeof now, live, nl, id);
        place(then, sizeof then, before, nb, id);
        cr_log_error("%s: %s: now %s; by the other ring of the step %s", when, id, now, then);
        shown++;
    }
}

/* Waits for bench to end (if it has not been waited for already) and
 * checks its run: exit 0, every counter passed its verification, every
 * error retryable, no connection lost. On a failure, the figures of the
 * live nodes and the placement of the counters found wrong are logged
 * first. */
static void bench_check(const char *when, struct bench_run *b, const int *live, int nl,
                        const int *before, int nb)
{
    proc_bg_join(&b->bg);
    struct proc_bg *bg = &b->bg;
    cr_assert_eq(bg->rc, 0, "%s: bench did not run", when);
    json_t *bj = json_loads(bg->r.out, 0, NULL);
    cr_assert_not_null(bj, "%s: bench exited %d and printed no JSON: %s\n%s", when, bg->r.code,
                       bg->r.out, bg->r.err);
    json_t *vo = json_object_get(bj, "verify");
    cr_assert(json_is_object(vo), "%s: no verification in %s", when, bg->r.out);
    long long ok = json_integer_value(json_object_get(vo, "ok"));
    int verified = ok == 1000 && json_integer_value(json_object_get(vo, "lost")) == 0 &&
                   json_integer_value(json_object_get(vo, "duplicated")) == 0 &&
                   json_integer_value(json_object_get(vo, "unread")) == 0;
    if (!verified) {
        /* Not fatal at once: the checks after the step still run and say
         * more (the base counters, the placement of the actors). */
        log_figures(when, live, nl, NULL);
        log_bad_counters(when, bg->r.err, live, nl, before, nb);
        w.soft++;
        cr_expect(verified, "%s: bench verification failed: %s\n%s", when, bg->r.out, bg->r.err);
    } else {
        cr_assert_eq(bg->r.code, 0, "%s: bench exited %d: %s\n%s", when, bg->r.code, bg->r.err,
                     bg->r.out);
    }
    cr_assert_eq(json_integer_value(json_object_get(bj, "lost_connections")), 0,
                 "%s: bench lost connections: %s", when, bg->r.err);
    cr_assert(!strstr(bg->r.err, "timed out") && !strstr(bg->r.err, "non-retryable") &&
                  !strstr(bg->r.err, "stopped early"),
              "%s: bench: %s", when, bg->r.err);
    long long requests = json_integer_value(json_object_get(bj, "requests"));
    long long errors = json_integer_value(json_object_get(bj, "errors"));
    cr_assert(requests > errors, "%s: no add succeeded", when);
    char by_text[256] = "";
    size_t used = 0;
    json_t *by = json_object_get(bj, "errors_by_status"), *v;
    const char *kname;
    json_object_foreach(by, kname, v)
    {
        cr_assert(strcmp(kname, "timeout") == 0 || strcmp(kname, "unavailable") == 0 ||
                      strcmp(kname, "overloaded") == 0 || strcmp(kname, "shutting_down") == 0 ||
                      strcmp(kname, "busy") == 0,
                  "%s: %lld calls failed with %s", when, (long long)json_integer_value(v), kname);
        if (used < sizeof by_text)
            used += (size_t)snprintf(by_text + used, sizeof by_text - used, " %s %lld", kname,
                                     (long long)json_integer_value(v));
    }
    cr_log_info("%s: bench %lld requests in %.1f s, %lld rps, p99 %.0f us, max %.0f us, errors "
                "%lld:%s; verify ok %lld",
                when, requests, json_real_value(json_object_get(bj, "seconds")),
                (long long)json_integer_value(json_object_get(bj, "rps")),
                json_number_value(json_object_get(bj, "p99_us")),
                json_number_value(json_object_get(bj, "max_us")), errors,
                errors ? by_text : " none", ok);
    json_decref(bj);
    proc_result_free(&bg->r);
}

/* After a step: the live nodes agree on one ring and wait for no handoff;
 * every base counter holds exactly its acknowledged adds; every active
 * actor is on one live node, its owner. */
static void after_step(const char *when, const int *live, int nn)
{
    int64_t waited = cluster_wait_one_ring(&cluster, live, nn);
    cluster_wait_no_handoffs(&cluster, live, nn);
    uint64_t mismatches = check_counters(when, live, nn);
    cr_assert_eq(mismatches, 0, "%s: %llu of the %d base counters differ from their acknowledged "
                                "adds (logged above)",
                 when, (unsigned long long)mismatches, BASE);
    size_t total = cluster_wait_actors_on_owners(&cluster, when, live, nn);
    cr_assert(total >= BASE, "%s: only %zu actors active", when, total);
    cr_log_info("%s: one ring of %d after %lld ms more; base counters exact; %zu actors active, "
                "each on its owner only",
                when, nn, (long long)waited, total);
}

/* Polls node i's ring every 100 ms until it has `members` members; returns
 * the ms it took, or -1 after timeout_ms. */
static int64_t time_until_ring(int i, int members, int timeout_ms)
{
    int64_t t0 = proc_now_ms();
    while (proc_now_ms() - t0 < timeout_ms) {
        if (ring_size(i) == members)
            return proc_now_ms() - t0;
        proc_sleep_ms(100);
    }
    return -1;
}

/* Starts n0 .. n4, waits for one ring and no handoff, and adds BASE_ADDS
 * to the base counters (acked counts them); every add must succeed. */
static void start_five_with_base(unsigned seed)
{
    const int five[] = {0, 1, 2, 3, 4};
    for (int i = 0; i < 5; i++)
        node_start(i);
    cluster_wait_one_ring(&cluster, five, 5);
    cluster_wait_no_handoffs(&cluster, five, 5);
    /* A node that meets a member before that member has heard of it has its
     * peer stream refused and backs off for a moment (test_routing.c). */
    proc_sleep_ms(1000);
    memset(acked, 0, sizeof acked);
    srand(seed);
    uint64_t failed = counters_add_random(&base, &cluster, five, 5, BASE_ADDS, acked);
    cr_assert_eq(failed, 0, "%llu of %d base adds failed in a stable cluster",
                 (unsigned long long)failed, BASE_ADDS);
}

/* ---- the test --------------------------------------------------------------- */

Test(recovery, acknowledged_adds_survive_a_join_a_leave_a_crash_and_a_pause_under_load,
     .timeout = 400)
{
    const int five[] = {0, 1, 2, 3, 4};
    int64_t t_start = proc_now_ms();
    start_five_with_base(17);
    cr_assert_eq(check_counters("base", five, 5), 0, "base counters differ before any change");
    cr_log_info("cluster of 5 up and %d adds to %d base counters acknowledged in %lld ms",
                BASE_ADDS, BASE, (long long)(proc_now_ms() - t_start));

    struct bench_run b;
    int64_t t;

    /* 1. n5 joins. */
    const int live1[] = {0, 1, 2, 3, 4, 5};
    t = proc_now_ms();
    bench_start(&b, 10);
    proc_sleep_ms(3000);
    node_start(5);
    bench_check("1 join", &b, live1, 6, five, 5);
    after_step("1 join", live1, 6);
    cr_log_info("1 join: step took %lld ms", (long long)(proc_now_ms() - t));

    /* 2. n2 leaves with SIGTERM. */
    const int live2[] = {0, 1, 3, 4, 5};
    t = proc_now_ms();
    bench_start(&b, 10);
    proc_sleep_ms(3000);
    int64_t t_leave = proc_now_ms();
    cluster_node_stop_ok(&cluster, 2);
    cr_log_info("2 leave: n2 exited 0 %lld ms after SIGTERM", (long long)(proc_now_ms() - t_leave));
    bench_check("2 leave", &b, live2, 5, live1, 6);
    after_step("2 leave", live2, 5);
    cr_log_info("2 leave: step took %lld ms", (long long)(proc_now_ms() - t));

    /* 3. n3 is killed. */
    const int live3[] = {0, 1, 4, 5};
    t = proc_now_ms();
    bench_start(&b, 15);
    proc_sleep_ms(3000);
    cr_assert_eq(proc_node_kill9(&w.nodes[3]), 0);
    int64_t detected = time_until_ring(0, 4, 11000);
    cr_log_info("3 kill: n0's ring dropped n3 %lld ms after kill -9 (-1: not within 11 s)",
                (long long)detected);
    bench_check("3 kill", &b, live3, 4, live2, 5);
    after_step("3 kill", live3, 4);
    cr_log_info("3 kill: step took %lld ms", (long long)(proc_now_ms() - t));

    /* 4. n4 is stopped for 10 s, then resumed. */
    const int live4[] = {0, 1, 4, 5}, paused[] = {0, 1, 5};
    t = proc_now_ms();
    bench_start(&b, 20);
    proc_sleep_ms(3000);
    uint64_t f4_before[NFIG], f4_after[NFIG];
    fig_read(4, f4_before);
    cr_assert_eq(kill(w.nodes[4].pid, SIGSTOP), 0);
    w.stopped = 4;
    int64_t t_stop = proc_now_ms();
    int64_t dropped = time_until_ring(0, 3, 10000);
    int64_t left = 10000 - (proc_now_ms() - t_stop);
    if (left > 0)
        proc_sleep_ms((int)left);
    cr_assert_eq(kill(w.nodes[4].pid, SIGCONT), 0);
    w.stopped = -1;
    int64_t back = time_until_ring(0, 4, 12000);
    cr_log_info("4 pause: n0's ring dropped n4 %lld ms after SIGSTOP (-1: not within the 10 s), "
                "had it back %lld ms after SIGCONT",
                (long long)dropped, (long long)back);
    proc_bg_join(&b.bg);
    fig_read(4, f4_after);
    for (int j = 0; j < NFIG; j++)
        f4_after[j] -= f4_before[j];
    fig_log("4 pause", "n4 from just before SIGSTOP to the end of the load", f4_after);
    bench_check("4 pause", &b, live4, 4, paused, 3);
    after_step("4 pause", live4, 4);
    cr_log_info("4 pause: step took %lld ms", (long long)(proc_now_ms() - t));

    /* The figures, summed over the live nodes. */
    uint64_t sum[NFIG];
    log_figures("end", live4, 4, sum);
    cr_assert(sum[1] > 0, "no state was acknowledged by a replica");
    cr_assert(sum[7] > 0, "no state was copied to a new replica after a ring change");

    for (int k = 3; k >= 0; k--)
        cluster_node_stop_ok(&cluster, live4[k]);
    cr_log_info("whole test %lld ms", (long long)(proc_now_ms() - t_start));
    w.passed = w.soft == 0;
}

/* ---- a partition ---------------------------------------------------------- */

#define PART_TABLE "amesh_test_partition"

static char nft_path[64];

static int run_nft(const char *command)
{
    struct proc_result r;
    int rc = proc_execl(&r, 10000, nft_path, command, (char *)NULL);
    if (rc == 0)
        rc = r.code;
    if (rc)
        cr_log_error("nft %s: exit %d: %s", command, rc, r.err ? r.err : "");
    proc_result_free(&r);
    return rc;
}

/* Drops every packet between 127.0.8.1-2 (n0, n1) and 127.0.8.3-5 (n2-n4),
 * both ways, on loopback; the test's own connections (from 127.0.0.1) and
 * the rest of the machine are untouched. */
static void cut(void)
{
    static const char *const rules[] = {
        "add table inet " PART_TABLE,
        "add chain inet " PART_TABLE
        " input { type filter hook input priority 0; policy accept; }",
        "add rule inet " PART_TABLE " input ip saddr 127.0.8.1-127.0.8.2 ip daddr "
        "127.0.8.3-127.0.8.5 drop",
        "add rule inet " PART_TABLE " input ip saddr 127.0.8.3-127.0.8.5 ip daddr "
        "127.0.8.1-127.0.8.2 drop",
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        cr_assert_eq(run_nft(rules[i]), 0);
}

static void heal(void)
{
    struct proc_result r;
    if (!nft_path[0])
        return;
    if (proc_execl(&r, 10000, nft_path, "delete table inet " PART_TABLE, (char *)NULL) == 0)
        proc_result_free(&r);
}

/* Guarantee 16 with real processes: five nodes, R=2, split into n0-n1 and
 * n2-n4 until each side has declared the other dead, adds through the
 * majority meanwhile, then healed. Every add acknowledged before the cut
 * survives where a copy of its counter was on the majority side, and so
 * does every add the majority acknowledged during the cut; no counter
 * holds more than was attempted; afterwards each actor is active on its
 * owner only. Needs root and nft (else skipped).
 *
 * It found a loss the placement simulation had not: one of the two
 * minority nodes refuted a suspicion of itself without ever hearing of its
 * death, so it kept its actors' old copies after the heal, and the adds the
 * majority acknowledged during the cut for the actors it owns were lost
 * (78 to 130 of 1,000 counters in four runs). Members now tell a member
 * that comes back from dead, or that a merged push-pull lists dead, of its
 * death straight (swim.c, tell_dead). */
Test(recovery, a_healed_partition_keeps_what_the_side_with_a_copy_acknowledged, .timeout = 300)
{
    if (geteuid() != 0)
        cr_skip_test("a partition (nftables) needs root (euid %d)", (int)geteuid());
    const char *const candidates[] = {"/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"};
    for (size_t i = 0; i < 3 && !nft_path[0]; i++)
        if (access(candidates[i], X_OK) == 0)
            snprintf(nft_path, sizeof nft_path, "%s", candidates[i]);
    if (!nft_path[0])
        cr_skip_test("no nft (nftables) in sbin");
    heal(); /* a table left by a run that died */

    const int five[] = {0, 1, 2, 3, 4}, majority[] = {2, 3, 4};
    start_five_with_base(23);
    static uint32_t before[BASE];
    memcpy(before, acked, sizeof before);
    /* Where a copy of each counter was: owner and replica by the ring of
     * five. */
    static uint8_t on_majority[BASE];
    struct am_ring *ring5 = cluster_ring(&cluster, five, 5);
    int nmin_only = 0;
    for (int k = 0; k < BASE; k++) {
        char id[16];
        snprintf(id, sizeof id, "b%d", k);
        uint64_t key = am_ring_key("counter", 7, id, strlen(id));
        int copies[2] = {am_ring_owner(ring5, key), -1};
        am_ring_successors(ring5, key, &copies[1], 1);
        on_majority[k] = 0;
        for (int c = 0; c < 2; c++)
            on_majority[k] |= copies[c] >= 0 && atoi(am_ring_member(ring5, copies[c]) + 1) >= 2;
        nmin_only += !on_majority[k];
    }
    am_ring_free(ring5);

    int64_t t_cut = proc_now_ms();
    cut();
    int64_t maj = time_until_ring(2, 3, 20000), min = time_until_ring(0, 2, 20000);
    cr_assert(maj >= 0 && min >= 0, "the sides did not part within 20 s (%lld, %lld ms)",
              (long long)maj, (long long)min);
    cluster_wait_one_ring(&cluster, majority, 3);
    cr_log_info("partition: n2's ring lost n0 and n1 %lld ms after the cut, n0's lost the "
                "others after %lld ms",
                (long long)maj, (long long)min);
    uint64_t failed_during = counters_add_random(&base, &cluster, majority, 3, 2000, acked);
    proc_sleep_ms(2000);
    heal();
    int64_t t_heal = proc_now_ms();
    for (int i = 0; i < 5; i++)
        cr_assert(time_until_ring(i, 5, 30000) >= 0, "n%d's ring is not whole 30 s after the heal",
                  i);
    cluster_wait_one_ring(&cluster, five, 5);
    cr_log_info("healed: one ring of five %lld ms after the heal (cut for %lld ms); %llu adds "
                "during the cut failed (retryable)",
                (long long)(proc_now_ms() - t_heal), (long long)(t_heal - t_cut),
                (unsigned long long)failed_during);

    /* Right after the heal: stale reads are counted, not failed (see the
     * comment above the test). */
    static int64_t value[BASE];
    counters_read(&base, &cluster, five, 5, value, 30000, "right after the heal");
    int stale = 0;
    for (int k = 0; k < BASE; k++)
        stale += on_majority[k] && value[k] < (int64_t)acked[k];
    cluster_wait_no_handoffs(&cluster, five, 5);
    proc_sleep_ms(3000);
    counters_read(&base, &cluster, five, 5, value, 30000, "after the heal");
    int lost = 0, over = 0;
    for (int k = 0; k < BASE; k++) {
        if (on_majority[k] && value[k] < (int64_t)acked[k] && lost++ < 10) {
            char id[16], p5[64], p3[64];
            snprintf(id, sizeof id, "b%d", k);
            place(p5, sizeof p5, five, 5, id);
            place(p3, sizeof p3, majority, 3, id);
            cr_log_error("b%d is %lld: %u adds acknowledged before the cut and %u during it; "
                         "%s of five, %s of the majority",
                         k, (long long)value[k], before[k], acked[k] - before[k], p5, p3);
        }
        if (value[k] > (int64_t)(acked[k] + failed_during) && over++ < 10)
            cr_log_error("b%d is %lld: more than the %u acknowledged and %llu failed adds", k,
                         (long long)value[k], acked[k], (unsigned long long)failed_during);
    }
    cr_log_info("after the heal: %d counters had every copy on the minority side (their history "
                "before the cut may be lost); %d read right after the heal were stale",
                nmin_only, stale);
    cr_assert_eq(lost, 0, "%d counters with a copy on the majority side lost acknowledged adds",
                 lost);
    cr_assert_eq(over, 0, "%d counters hold adds that were never made", over);
    cluster_wait_actors_on_owners(&cluster, "after the heal", five, 5);
    for (int k = 4; k >= 0; k--)
        cluster_node_stop_ok(&cluster, k);
    w.passed = 1;
}
