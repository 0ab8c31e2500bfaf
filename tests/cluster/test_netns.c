/* test_netns.c - membership under real network faults: five `amesh node`
 * processes, each in its own network namespace, joined by a bridge; the
 * faults are nftables rules in the nodes' namespaces. Root only: without
 * root, `ip` or `nft` each test is skipped with the reason.
 *
 * Topology (made by each test, removed by the .fini even when an assertion
 * fails; leftovers of a crashed run are removed before a test starts):
 *
 *   root namespace: the test, bridge amtbr 10.77.0.254/24
 *     +-- amtv1b == amtv1 10.77.0.1  namespace amt1: node n1 (the seed)
 *     +-- amtv2b == amtv2 10.77.0.2  namespace amt2: node n2 (joins via n1)
 *     ...
 *     +-- amtv5b == amtv5 10.77.0.5  namespace amt5: node n5 (joins via n1)
 *
 * Every node namespace holds table inet amesh_test with an input chain,
 * empty (accept) until a test adds rules. The rules never match the test's
 * own address 10.77.0.254, so the test reads every node's MEMBERS and STATUS
 * over TCP throughout a fault.
 *
 * What is asserted (lan profile, memberlist's LAN timings):
 *  - loss_of_20_percent_gives_no_false_death: every namespace drops 20% of
 *    its incoming UDP for 60 s. Polling all five views every 500 ms, no node
 *    is ever listed as dead (suspect is allowed: Lifeguard refutes), no node
 *    declares a death (status counter), and once the loss ends all five list
 *    all five alive. Suspicions and refutations are logged.
 *  - partition_3_2_heals_to_one_view: {n1,n2,n3} | {n4,n5}, all traffic
 *    between the sides dropped. Each side lists its own members alive and
 *    the other side dead within 60 s; the partition is held 30 s in all;
 *    after the heal every view lists all five alive within 90 s. The times
 *    are logged.
 * Every node is stopped with SIGTERM at the end and must exit 0.
 *
 * The namespace and link names are fixed, so two runs at once on one
 * machine would tear down each other's network: a lock file makes the
 * second one fail with a message instead. */
#include "cluster.h"
#include "proc.h"
#include "view.h"

#include "buf.h"
#include "client.h"
#include "err.h"
#include "json.h"
#include "proto.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define N 5
#define BRIDGE "amtbr"
#define TEST_ADDR "10.77.0.254" /* the root namespace's address on the bridge */
#define TABLE "amesh_test"
#define LOCK_PATH "/tmp/amesh-test-netns.lock"
#define CLIENT_TIMEOUT_MS 5000
#define CMD_TIMEOUT_MS 10000

static struct {
    char dir[256];
    struct proc_node nodes[N];
    char names[N][CLUSTER_NAME_MAX]; /* n1..n5 */
    char ns[N][8];    /* amt1..amt5 */
    char ip[PATH_MAX], nft[PATH_MAX];
    int lock_fd;
    int net_touched; /* the .fini removes the namespaces and links */
} w;

static const struct cluster cluster = {CLUSTER_OF(w)};

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    memset(&w, 0, sizeof w);
    w.lock_fd = -1;
    for (int i = 0; i < N; i++) {
        snprintf(w.names[i], sizeof w.names[i], "n%d", i + 1);
        snprintf(w.ns[i], sizeof w.ns[i], "amt%d", i + 1);
    }
}

static void net_down(int report);

static void teardown(void)
{
    cluster_teardown(&cluster, NULL); /* the nodes, then their directory */
    if (w.net_touched)
        net_down(0);
    if (w.lock_fd >= 0)
        close(w.lock_fd);
}

TestSuite(netns, .init = setup, .fini = teardown);

/* ---- commands (ip, nft) ---------------------------------------------------- */

/* Runs argv (NULL-terminated; argv[0] a path); returns its exit code, or a
 * negated errno when it could not run. line gets the command line and its
 * stderr, for messages. */
static int cmd_run(const char *const *argv, char *line, size_t len)
{
    struct proc_result r;
    int rc = proc_exec(&r, CMD_TIMEOUT_MS, argv);
    if (rc == 0)
        rc = r.code;
    size_t k = 0;
    line[0] = '\0';
    for (int i = 0; argv[i] && k < len; i++)
        k += (size_t)snprintf(line + k, len - k, "%s%s", i ? " " : "", argv[i]);
    if (k < len)
        snprintf(line + k, len - k, ": exit %d: %s", rc, r.err ? r.err : strerror(-rc));
    proc_result_free(&r);
    return rc;
}

/* Runs the command and fails the test unless it exits 0. */
#define SH(...) sh_ok((const char *const[]){__VA_ARGS__, NULL})
static void sh_ok(const char *const *argv)
{
    char line[1024];
    cr_assert_eq(cmd_run(argv, line, sizeof line), 0, "%s", line);
}

/* Runs the command; its exit code, whatever it is. */
#define SH_QUIET(...) sh_quiet((const char *const[]){__VA_ARGS__, NULL})
static int sh_quiet(const char *const *argv)
{
    char line[1024];
    return cmd_run(argv, line, sizeof line);
}

/* One nft command (a single argument, e.g. "flush chain inet T input") in
 * node i's namespace. */
static void nft_in(int i, const char *command)
{
    SH(w.ip, "netns", "exec", w.ns[i], w.nft, command);
}

/* ---- the network ----------------------------------------------------------- */

/* Removes every link and namespace of the topology that exists. With
 * report, each one found is logged as left over by an earlier run. The veth
 * pairs go first, from the root side (deleting one end deletes both, at
 * once): a namespace is torn down by the kernel in the background, and a
 * veth in it would outlive `ip netns del` for a moment. */
static void net_down(int report)
{
    char path[64], name[16];
    for (int i = 0; i < N; i++)
        for (int end = 0; end < 2; end++) {
            /* amtvI is in the root namespace only if a run died before
             * moving it. */
            snprintf(name, sizeof name, "amtv%d%s", i + 1, end ? "" : "b");
            if (SH_QUIET(w.ip, "link", "show", name) != 0)
                continue;
            if (report)
                cr_log_warn("removing link %s left by an earlier run", name);
            SH_QUIET(w.ip, "link", "del", name);
        }
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof path, "/var/run/netns/%s", w.ns[i]);
        if (access(path, F_OK) != 0)
            continue;
        if (report)
            cr_log_warn("removing namespace %s left by an earlier run", w.ns[i]);
        SH_QUIET(w.ip, "netns", "del", w.ns[i]);
    }
    if (SH_QUIET(w.ip, "link", "show", BRIDGE) == 0) {
        if (report)
            cr_log_warn("removing bridge %s left by an earlier run", BRIDGE);
        SH_QUIET(w.ip, "link", "del", BRIDGE);
    }
}

/* Skips the test unless it can make namespaces, takes the lock, and builds
 * the topology of the header comment. */
static void net_up(void)
{
    if (geteuid() != 0)
        cr_skip_test("network namespaces need root (euid %d)", (int)geteuid());
    if (proc_which("ip", w.ip, sizeof w.ip))
        cr_skip_test("no 'ip' (iproute2) in PATH or sbin");
    if (proc_which("nft", w.nft, sizeof w.nft))
        cr_skip_test("no 'nft' (nftables) in PATH or sbin");

    w.lock_fd = open(LOCK_PATH, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(w.lock_fd >= 0, "%s: %s", LOCK_PATH, strerror(errno));
    cr_assert_eq(flock(w.lock_fd, LOCK_EX | LOCK_NB), 0,
                 "another run of this test holds %s (namespaces amt1..amt5 are in use)", LOCK_PATH);
    int rc = proc_tmpdir(w.dir, sizeof w.dir, "netns");
    cr_assert_eq(rc, 0, "mkdtemp: %s", strerror(-rc));

    w.net_touched = 1;
    net_down(1);
    char line[1024];
    /* Root without CAP_SYS_ADMIN (an unprivileged container) cannot. */
    if (cmd_run((const char *const[]){w.ip, "netns", "add", w.ns[0], NULL}, line, sizeof line) !=
        0) {
        teardown(); /* a skipped test gets no .fini */
        cr_skip_test("cannot make a network namespace: %s", line);
    }
    SH(w.ip, "link", "add", BRIDGE, "type", "bridge");
    SH(w.ip, "addr", "add", TEST_ADDR "/24", "dev", BRIDGE);
    SH(w.ip, "link", "set", BRIDGE, "up");
    for (int i = 0; i < N; i++) {
        char in[16], out[16], addr[32];
        snprintf(in, sizeof in, "amtv%d", i + 1);
        snprintf(out, sizeof out, "amtv%db", i + 1);
        snprintf(addr, sizeof addr, "10.77.0.%d/24", i + 1);
        if (i > 0)
            SH(w.ip, "netns", "add", w.ns[i]);
        SH(w.ip, "link", "add", in, "type", "veth", "peer", "name", out);
        SH(w.ip, "link", "set", in, "netns", w.ns[i]);
        SH(w.ip, "link", "set", out, "master", BRIDGE);
        SH(w.ip, "link", "set", out, "up");
        SH(w.ip, "-n", w.ns[i], "addr", "add", addr, "dev", in);
        SH(w.ip, "-n", w.ns[i], "link", "set", in, "up");
        SH(w.ip, "-n", w.ns[i], "link", "set", "lo", "up");
        nft_in(i, "add table inet " TABLE "; add chain inet " TABLE
                  " input { type filter hook input priority 0; policy accept; }");
    }
}

/* ---- nodes ----------------------------------------------------------------- */

/* Starts node i in its namespace, joining through n1 unless it is n1, and
 * checks that the pid proc.c holds is the node itself (ip netns exec must
 * exec it in place, or SIGTERM and kill -9 would reach ip instead). */
static void node_start(int i)
{
    cluster_node_init(&cluster, i, "10.77.0"); /* named n<i+1> by the .init */
    proc_node_set_netns(&w.nodes[i], w.ns[i]);

    const char *extra[] = {"--profile", "lan", "--log-level", "info", NULL};
    cluster_node_start(&cluster, i, i > 0 ? 0 : -1, extra);

    char link[64], exe[PATH_MAX], want[PATH_MAX];
    snprintf(link, sizeof link, "/proc/%d/exe", (int)w.nodes[i].pid);
    ssize_t len = readlink(link, exe, sizeof exe - 1);
    cr_assert(len > 0, "%s: %s", link, strerror(errno));
    exe[len] = '\0';
    cr_assert_not_null(realpath(AMESH_BIN, want));
    cr_assert_str_eq(exe, want, "pid %d of %s is not the node", (int)w.nodes[i].pid, w.names[i]);
}

/* The lines of all nodes' logs that hold needle, each prefixed with its
 * node's name, into out: at most len / N bytes per node, its latest lines.
 * For failure messages. */
static void log_lines(const char *needle, char *out, size_t len)
{
    size_t share = len / N, k = 0;
    out[0] = '\0';
    for (int i = 0; i < N; i++) {
        char *s = proc_read_file(w.nodes[i].log, NULL);
        size_t first = k; /* this node's lines: out[first .. first + share) */
        for (char *line = s; line && *line;) {
            char *nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            size_t need = strlen(w.names[i]) + strlen(line) + 3;
            if (strstr(line, needle) && need < share) {
                if (k + need >= first + share)
                    k = first; /* drop this node's earlier lines */
                k += (size_t)snprintf(out + k, len - k, "%s: %s\n", w.names[i], line);
            }
            line = nl ? nl + 1 : NULL;
        }
        free(s);
    }
}

/* ---- views ----------------------------------------------------------------- */

/* STATUS or MEMBERS of node i as JSON; NULL when it does not answer. */
static json_t *query(int i, int kind)
{
    return view_query(w.nodes[i].addr, kind, NULL, CLIENT_TIMEOUT_MS);
}

/* The index of a member entry's node (n1 -> 0), or -1. */
static int node_index(json_t *m)
{
    const char *name = json_string_value(json_object_get(m, "name"));
    for (int i = 0; name && i < N; i++)
        if (strcmp(name, w.names[i]) == 0)
            return i;
    return -1;
}

static const char *state_of(json_t *m)
{
    const char *s = json_string_value(json_object_get(m, "state"));
    return s ? s : "?";
}

/* Whether node viewer's view is the one a partition into sides gives
 * (side[k] is node k's side; all zero: no partition): exactly N members,
 * those on the viewer's side alive, the others dead. why says what is not. */
static int view_ok(int viewer, json_t *members, const int *side, char *why, size_t len)
{
    json_t *arr = json_object_get(members, "members"), *m;
    size_t k;
    if (json_array_size(arr) != N) {
        snprintf(why, len, "%s lists %zu members, not %d", w.names[viewer], json_array_size(arr),
                 N);
        return 0;
    }
    json_array_foreach(arr, k, m)
    {
        int i = node_index(m);
        const char *want = i >= 0 && side[i] == side[viewer] ? "alive" : "dead";
        if (i < 0 || strcmp(state_of(m), want) != 0) {
            snprintf(why, len, "%s sees %s %s (want %s)", w.names[viewer],
                     json_string_value(json_object_get(m, "name")), state_of(m), want);
            return 0;
        }
    }
    return 1;
}

/* Polls all N views until each passes view_ok, for at most timeout_ms.
 * Returns the milliseconds it took, or fails the test with the first view
 * that did not pass. */
static int64_t wait_views(const int *side, int timeout_ms, const char *what)
{
    int64_t start = proc_now_ms();
    char why[512] = "";
    for (;;) {
        int ok = 1;
        for (int v = 0; v < N && ok; v++) {
            json_t *m = query(v, AM_MSG_MEMBERS);
            if (!m) {
                snprintf(why, sizeof why, "%s does not answer", w.names[v]);
                ok = 0;
                continue;
            }
            ok = view_ok(v, m, side, why, sizeof why);
            json_decref(m);
        }
        int64_t took = proc_now_ms() - start;
        if (ok)
            return took;
        cr_assert(took < timeout_ms, "%s: not within %d ms: %s", what, timeout_ms, why);
        proc_sleep_ms(250);
    }
}

static const int no_partition[N] = {0};

/* Starts the network and the five nodes and waits until every view lists
 * all five alive. */
static void start_cluster(void)
{
    net_up();
    for (int i = 0; i < N; i++)
        node_start(i);
    int64_t ms = wait_views(no_partition, 60000, "5 nodes converge");
    cr_log_info("5 nodes in 5 namespaces: every view lists all 5 alive %lld ms after the last "
                "start",
                (long long)ms);
}

/* A counter of the "membership" section of STATUS, summed over all nodes. */
static uint64_t membership_sum(const char *key)
{
    uint64_t sum = 0;
    for (int i = 0; i < N; i++) {
        json_t *s = query(i, AM_MSG_STATUS);
        cr_assert_not_null(s, "%s does not answer STATUS", w.names[i]);
        json_t *v = json_object_get(json_object_get(s, "membership"), key);
        cr_assert(json_is_integer(v), "status has no membership.%s", key);
        sum += (uint64_t)json_integer_value(v);
        json_decref(s);
    }
    return sum;
}

static void stop_all(void)
{
    for (int i = 0; i < N; i++)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- tests ----------------------------------------------------------------- */

Test(netns, loss_of_20_percent_gives_no_false_death, .timeout = 240)
{
    enum { LOSS_MS = 60000, POLL_MS = 500 };
    start_cluster();
    uint64_t susp0 = membership_sum("suspicions"), refut0 = membership_sum("refutations");
    uint64_t corr0 = membership_sum("corrections");
    uint64_t deaths0 = membership_sum("deaths_declared");

    for (int i = 0; i < N; i++)
        nft_in(i, "add rule inet " TABLE " input meta l4proto udp numgen random mod 100 < 20 drop");
    int64_t start = proc_now_ms(), next = start;
    int polls = 0, suspect_views = 0;
    while (proc_now_ms() - start < LOSS_MS) {
        for (int v = 0; v < N; v++) {
            json_t *view = query(v, AM_MSG_MEMBERS), *m;
            cr_assert_not_null(view, "%s does not answer during the loss", w.names[v]);
            json_t *arr = json_object_get(view, "members");
            cr_assert_eq(json_array_size(arr), N, "%s lists %zu members during the loss",
                         w.names[v], json_array_size(arr));
            size_t k;
            int suspects = 0;
            json_array_foreach(arr, k, m)
            {
                const char *st = state_of(m);
                if (strcmp(st, "suspect") == 0) {
                    suspects = 1;
                } else if (strcmp(st, "alive") != 0) {
                    /* Every node's log line about the member. */
                    char needle[32], lines[4000];
                    const char *name = json_string_value(json_object_get(m, "name"));
                    snprintf(needle, sizeof needle, "member %s (", name ? name : "?");
                    log_lines(needle, lines, sizeof lines);
                    cr_assert_fail("false death: %s lists %s %s %lld ms into 20%% loss; the "
                                   "logs about it:\n%s",
                                   w.names[v], name, st, (long long)(proc_now_ms() - start), lines);
                }
            }
            suspect_views += suspects;
            json_decref(view);
        }
        polls++;
        next += POLL_MS;
        int64_t left = next - proc_now_ms();
        if (left > 0)
            proc_sleep_ms((int)left);
    }
    /* A death refuted between two polls would not show in them: the nodes
     * count the deaths they declare. */
    uint64_t deaths = membership_sum("deaths_declared") - deaths0;
    if (deaths) {
        char lines[4000];
        log_lines(" is dead", lines, sizeof lines);
        cr_assert_fail("false death: %llu deaths declared during 20%% loss:\n%s",
                       (unsigned long long)deaths, lines);
    }
    uint64_t susp = membership_sum("suspicions") - susp0;
    uint64_t refut = membership_sum("refutations") - refut0;
    uint64_t corr = membership_sum("corrections") - corr0;

    for (int i = 0; i < N; i++)
        nft_in(i, "flush chain inet " TABLE " input");
    int64_t ms = wait_views(no_partition, 30000, "all alive after the loss");
    cr_log_info("20%% UDP loss in every namespace for %d s: %d polls of all 5 views, never a dead "
                "member; a suspect in %d of %d views; summed over nodes: %llu suspicions, %llu "
                "refutations, %llu corrections, 0 deaths declared; all alive everywhere %lld ms "
                "after the loss",
                LOSS_MS / 1000, polls, suspect_views, polls * N, (unsigned long long)susp,
                (unsigned long long)refut, (unsigned long long)corr, (long long)ms);
    stop_all();
}

Test(netns, partition_3_2_heals_to_one_view, .timeout = 240)
{
    enum { HOLD_MS = 30000 };
    static const int side[N] = {0, 0, 0, 1, 1};
    start_cluster();

    /* Each namespace drops everything from the other side's addresses. */
    int64_t start = proc_now_ms();
    for (int i = 0; i < N; i++) {
        char rule[256];
        int k = snprintf(rule, sizeof rule, "add rule inet " TABLE " input ip saddr { ");
        for (int j = 0, first = 1; j < N; j++)
            if (side[j] != side[i]) {
                k += snprintf(rule + k, sizeof rule - (size_t)k, "%s10.77.0.%d", first ? "" : ", ",
                              j + 1);
                first = 0;
            }
        snprintf(rule + k, sizeof rule - (size_t)k, " } drop");
        nft_in(i, rule);
    }
    int64_t ms = wait_views(side, 60000, "each side lists the other dead");
    cr_log_info("partition {n1,n2,n3} | {n4,n5}: each side lists its own alive and the other "
                "dead after %lld ms",
                (long long)ms);

    int64_t held = proc_now_ms() - start;
    if (held < HOLD_MS)
        proc_sleep_ms((int)(HOLD_MS - held));
    wait_views(side, 5000, "the two views at the end of the partition");

    int64_t heal = proc_now_ms();
    for (int i = 0; i < N; i++)
        nft_in(i, "flush chain inet " TABLE " input");
    ms = wait_views(no_partition, 90000, "after the heal, one view of all 5 alive");
    cr_log_info("partition held %lld ms; after the heal every view lists all 5 alive in %lld ms",
                (long long)(heal - start), (long long)ms);
    stop_all();
}
