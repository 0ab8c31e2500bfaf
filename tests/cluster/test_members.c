/* test_members.c - membership between real `amesh node` processes on
 * 127.0.3.x: twenty nodes converge through one seed; kill -9, SIGTERM and a
 * restart are seen by every other node; the cluster key keeps out nodes and
 * clients without it; malformed datagrams are counted and dropped; a second
 * live node claiming a name in use is refused.
 *
 * Nodes run the lan profile (memberlist's LAN timings), as operators would.
 * Waits are polls that end as soon as their condition holds; their bounds
 * are generous for a loaded 2-core machine under ASan. Every node is
 * stopped with SIGTERM at the end of a test and must exit 0. */
#include "cluster.h"
#include "proc.h"

#include "buf.h"
#include "client.h"
#include "err.h"
#include "json.h"
#include "proto.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_NODES 24
#define CLIENT_TIMEOUT_MS 5000

static struct {
    char dir[256];
    struct proc_node nodes[MAX_NODES];
    char names[MAX_NODES][CLUSTER_NAME_MAX];
} w;

/* cluster.key_file, when set, seals every query(). */
static struct cluster cluster = {CLUSTER_OF(w)};

static void setup(void)
{
    memset(&w, 0, sizeof w);
    cluster.key_file = NULL;
    cluster_setup(&cluster, "members");
}

static void teardown(void)
{
    cluster_teardown(&cluster, NULL);
}

TestSuite(members, .init = setup, .fini = teardown);

/* Node i: name "nI", address 127.0.3.(I+1):7946, its own data dir and log. */
static void node_prepare(int i)
{
    cluster_node_init(&cluster, i, "127.0.3");
}

/* Starts node i joining through node `seed` (-1: no seed), with one more
 * pair of flags (NULL for none). */
static void node_start(int i, int seed, const char *flag, const char *value)
{
    const char *extra[] = {"--profile", "lan", flag, value, NULL};
    cluster_node_start(&cluster, i, seed, extra);
}

/* One request with no field (STATUS or MEMBERS) to node i, as JSON; NULL
 * when the node does not answer. With cluster.key_file set, the connection is
 * sealed with that key. */
static json_t *query(int i, int kind)
{
    return cluster_query(&cluster, i, kind, CLIENT_TIMEOUT_MS);
}

/* The entry for name in a MEMBERS reply, or NULL. */
static json_t *member(json_t *members, const char *name)
{
    json_t *arr = json_object_get(members, "members"), *m;
    size_t k;
    json_array_foreach(arr, k, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0)
            return m;
    }
    return NULL;
}

static const char *state_of(json_t *m)
{
    return m ? json_string_value(json_object_get(m, "state")) : "absent";
}

static uint64_t incarnation_of(json_t *m)
{
    return m ? (uint64_t)json_integer_value(json_object_get(m, "incarnation")) : 0;
}

/* Whether node `viewer`'s view satisfies the check; why says what is wrong. */
typedef int (*view_check)(int viewer, json_t *members, const void *arg, char *why, size_t len);

/* Polls every node of the list until each one's view passes check, for at
 * most timeout_ms. Returns the milliseconds it took, or fails the test with
 * the first view that did not pass. */
static int64_t wait_views(const int *viewers, int n, view_check check, const void *arg,
                          int timeout_ms, const char *what)
{
    int64_t start = proc_now_ms();
    char why[512] = "";
    for (;;) {
        int ok = 1;
        for (int k = 0; k < n && ok; k++) {
            json_t *m = query(viewers[k], AM_MSG_MEMBERS);
            if (!m) {
                snprintf(why, sizeof why, "%s does not answer", w.names[viewers[k]]);
                ok = 0;
                continue;
            }
            ok = check(viewers[k], m, arg, why, sizeof why);
            json_decref(m);
        }
        int64_t took = proc_now_ms() - start;
        if (ok)
            return took;
        cr_assert(took < timeout_ms, "%s: not within %d ms: %s", what, timeout_ms, why);
        proc_sleep_ms(200);
    }
}

struct expect {
    const int *nodes; /* these names ... */
    int n;
    const char *state; /* ... are in this state */
    uint64_t min_incarnation;
    int exact_count; /* and the view holds exactly this many members (0: any) */
};

static int check_states(int viewer, json_t *members, const void *arg, char *why, size_t len)
{
    const struct expect *e = arg;
    size_t count = json_array_size(json_object_get(members, "members"));
    if (e->exact_count && count != (size_t)e->exact_count) {
        snprintf(why, len, "%s lists %zu members, not %d", w.names[viewer], count, e->exact_count);
        return 0;
    }
    for (int k = 0; k < e->n; k++) {
        json_t *m = member(members, w.names[e->nodes[k]]);
        if (strcmp(state_of(m), e->state) != 0 || incarnation_of(m) < e->min_incarnation) {
            snprintf(why, len, "%s sees %s %s at incarnation %llu (want %s, >= %llu)",
                     w.names[viewer], w.names[e->nodes[k]], state_of(m),
                     (unsigned long long)incarnation_of(m), e->state,
                     (unsigned long long)e->min_incarnation);
            return 0;
        }
    }
    return 1;
}

/* Indices 0..n-1 without `skip1` and `skip2` into out; returns the count. */
static int all_but(int *out, int n, int skip1, int skip2)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (i != skip1 && i != skip2)
            out[k++] = i;
    return k;
}

static uint64_t status_u64(int i, const char *section, const char *key)
{
    json_t *s = query(i, AM_MSG_STATUS);
    cr_assert_not_null(s, "%s does not answer STATUS", w.names[i]);
    json_t *v = json_object_get(json_object_get(s, section), key);
    cr_assert(json_is_integer(v), "status has no %s.%s", section, key);
    uint64_t n = (uint64_t)json_integer_value(v);
    json_decref(s);
    return n;
}

Test(members, twenty_nodes_converge_and_agree_on_kill_leave_and_restart, .timeout = 280)
{
    enum { N = 20, VICTIM = 7, LEAVER = 12 };
    int all[N], others[N], n;
    for (int i = 0; i < N; i++) {
        node_prepare(i);
        all[i] = i;
    }
    node_start(0, -1, NULL, NULL);
    for (int i = 1; i < N; i++)
        node_start(i, 0, NULL, NULL);

    struct expect e = {all, N, "alive", 1, N};
    int64_t ms = wait_views(all, N, check_states, &e, 60000, "20 nodes converge");
    cr_log_info("20 nodes: every view lists all 20 alive %lld ms after the last start",
                (long long)ms);

    /* kill -9: dead at every other node. */
    json_t *before = query(0, AM_MSG_MEMBERS);
    uint64_t inc = incarnation_of(member(before, w.names[VICTIM]));
    json_decref(before);
    cr_assert_eq(proc_node_kill9(&w.nodes[VICTIM]), 0);
    n = all_but(others, N, VICTIM, -1);
    int victim[] = {VICTIM};
    e = (struct expect){victim, 1, "dead", 0, 0};
    ms = wait_views(others, n, check_states, &e, 60000, "kill -9 seen as dead");
    cr_log_info("kill -9 of n%d: dead at all 19 others after %lld ms", VICTIM, (long long)ms);

    /* SIGTERM: left at every other node; the node exits 0. */
    cluster_node_stop_ok(&cluster, LEAVER);
    n = all_but(others, N, VICTIM, LEAVER);
    int leaver[] = {LEAVER};
    e = (struct expect){leaver, 1, "left", 0, 0};
    ms = wait_views(others, n, check_states, &e, 30000, "SIGTERM seen as left");
    cr_log_info("SIGTERM of n%d: left at all 18 others after %lld ms", LEAVER, (long long)ms);

    /* The killed node comes back with the same name and data: alive again
     * everywhere with a higher incarnation. */
    node_start(VICTIM, 0, NULL, NULL);
    n = all_but(others, N, LEAVER, -1);
    e = (struct expect){victim, 1, "alive", inc + 1, 0};
    ms = wait_views(others, n, check_states, &e, 60000,
                    "restart seen alive with a higher incarnation");
    cr_log_info("restart of n%d: alive everywhere at incarnation > %llu after %lld ms", VICTIM,
                (unsigned long long)inc, (long long)ms);

    for (int i = 0; i < N; i++)
        if (i != LEAVER)
            cluster_node_stop_ok(&cluster, i);
}

/* Node i's ring: its version (hex string) into ver and its member count;
 * the shares must add up to the whole key space. */
static size_t ring_of(int i, char *ver, size_t verlen)
{
    json_t *r = query(i, AM_MSG_RING);
    cr_assert_not_null(r, "%s does not answer RING", w.names[i]);
    snprintf(ver, verlen, "%s", json_string_value(json_object_get(r, "version")));
    json_t *arr = json_object_get(r, "members"), *m;
    size_t k, n = json_array_size(arr);
    double sum = 0;
    json_array_foreach(arr, k, m)
    {
        sum += json_real_value(json_object_get(m, "share"));
    }
    if (n)
        cr_assert_float_eq(sum, 1.0, 1e-9, "%s's shares add up to %f", w.names[i], sum);
    json_decref(r);
    return n;
}

/* Polls until every listed node's ring has want members and one version. */
static void wait_same_ring(const int *nodes, int n, size_t want, char *ver, size_t verlen)
{
    int64_t start = proc_now_ms();
    for (;;) {
        char first[64] = "", v[64];
        int same = 1;
        for (int k = 0; k < n && same; k++) {
            size_t count = ring_of(nodes[k], v, sizeof v);
            same = count == want && (k == 0 || strcmp(v, first) == 0);
            if (k == 0)
                snprintf(first, sizeof first, "%s", v);
        }
        if (same) {
            snprintf(ver, verlen, "%s", first);
            return;
        }
        cr_assert(proc_now_ms() - start < 30000, "no common ring of %zu members in 30 s", want);
        proc_sleep_ms(200);
    }
}

Test(members, every_node_builds_the_same_ring_from_the_same_view, .timeout = 120)
{
    enum { N = 4 };
    int all[N], rest[N];
    for (int i = 0; i < N; i++) {
        node_prepare(i);
        all[i] = i;
    }
    node_start(0, -1, NULL, NULL);
    for (int i = 1; i < N; i++)
        node_start(i, 0, NULL, NULL);
    char v4[64], v3[64];
    wait_same_ring(all, N, N, v4, sizeof v4);
    /* A dead member leaves the ring: the survivors agree on a new one. */
    cr_assert_eq(proc_node_kill9(&w.nodes[3]), 0);
    int n = all_but(rest, N, 3, -1);
    wait_same_ring(rest, n, N - 1, v3, sizeof v3);
    cr_assert_str_neq(v3, v4, "the ring kept its version without n3");
    cr_log_info("ring of 4: %s; without n3: %s", v4, v3);
    for (int i = 0; i < n; i++)
        cluster_node_stop_ok(&cluster, rest[i]);
}

static void keygen(const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", w.dir, name);
    struct proc_result r;
    cr_assert_eq(proc_runl(&r, 10000, "keygen", path, (char *)NULL), 0);
    cr_assert_eq(r.code, 0, "keygen: %s", r.err);
    proc_result_free(&r);
}

Test(members, nodes_and_clients_without_the_key_are_kept_out, .timeout = 200)
{
    char key[300], other[300];
    keygen("cluster.key", key, sizeof key);
    keygen("other.key", other, sizeof other);
    for (int i = 0; i < 5; i++)
        node_prepare(i);
    node_start(0, -1, "--key-file", key);
    node_start(1, 0, "--key-file", key);
    node_start(2, 0, "--key-file", key);
    int members3[] = {0, 1, 2};
    cluster.key_file = key;
    struct expect e = {members3, 3, "alive", 1, 3};
    wait_views(members3, 3, check_states, &e, 30000, "three keyed nodes converge");

    /* A node with another key and one with none, both joining through n0
     * and knowing n1's address too. */
    node_start(3, 0, "--key-file", other);
    node_start(4, 0, "--join", w.nodes[1].addr);
    /* Long enough for several join attempts, probes and a push-pull. */
    proc_sleep_ms(8000);

    for (int i = 0; i < 3; i++) {
        json_t *m = query(i, AM_MSG_MEMBERS);
        cr_assert_not_null(m, "n%d does not answer with the key", i);
        cr_assert_eq(json_array_size(json_object_get(m, "members")), 3, "n%d lists an outsider", i);
        json_decref(m);
        cr_assert_eq(status_u64(i, "membership", "live"), 3);
    }
    /* The outsiders' join attempts are push-pull connections to n0 and n1. */
    cr_assert_gt(status_u64(0, "clients", "unauthenticated") +
                     status_u64(1, "clients", "unauthenticated"),
                 0, "no connection counted as unauthenticated");
    /* The outsiders see only themselves. */
    cluster.key_file = other;
    json_t *m = query(3, AM_MSG_MEMBERS);
    cr_assert_not_null(m);
    cr_assert_eq(json_array_size(json_object_get(m, "members")), 1, "n3 got in with another key");
    json_decref(m);
    cluster.key_file = NULL;
    m = query(4, AM_MSG_MEMBERS);
    cr_assert_not_null(m);
    cr_assert_eq(json_array_size(json_object_get(m, "members")), 1, "n4 got in without a key");
    json_decref(m);

    /* Clients: without the key the node closes the connection; with another
     * key the CLI says so; with the key it works. */
    struct proc_result r;
    proc_runl(&r, 10000, "members", "--node", w.nodes[0].addr, (char *)NULL);
    cr_assert_neq(r.code, 0, "a client without the key was served: %s", r.out);
    cr_assert(strstr(r.err, "requires the cluster key"), "stderr: %s", r.err);
    proc_result_free(&r);
    /* The benchmark is a client too: sealed connections, verified counts. */
    proc_runl(&r, 60000, "bench", "--node", w.nodes[1].addr, "--key-file", key, "--requests",
              "3000", "--warmup", "0", "--connections", "4", "--pipeline", "4", "--actors", "50",
              "--verify", "--json", (char *)NULL);
    cr_assert_eq(r.code, 0, "keyed bench: %s", r.err);
    cr_assert(strstr(r.out, "\"errors\":0"), "bench: %s", r.out);
    proc_result_free(&r);
    proc_runl(&r, 20000, "bench", "--node", w.nodes[1].addr, "--key-file", other, "--requests",
              "10", (char *)NULL);
    cr_assert_neq(r.code, 0);
    cr_assert(strstr(r.err, "does not hold this cluster key"), "stderr: %s", r.err);
    proc_result_free(&r);
    proc_runl(&r, 10000, "members", "--node", w.nodes[0].addr, "--key-file", other, (char *)NULL);
    cr_assert_neq(r.code, 0);
    cr_assert(strstr(r.err, "does not hold this cluster key"), "stderr: %s", r.err);
    proc_result_free(&r);
    proc_runl(&r, 10000, "call", "--node", w.nodes[0].addr, "--key-file", key, "counter", "c1",
              "add", "5", (char *)NULL);
    cr_assert_eq(r.code, 0, "keyed call: %s", r.err);
    cr_assert_str_eq(r.out, "5\n");
    proc_result_free(&r);
    cluster.key_file = key;
    cr_assert_gt(status_u64(0, "membership", "encrypted"), 0);
    for (int i = 0; i < 3; i++)
        cluster_node_stop_ok(&cluster, i);
    cluster_node_stop_ok(&cluster, 4);
    cluster.key_file = other;
    cluster_node_stop_ok(&cluster, 3);
}

/* Sends datagrams to node i's port from a fresh socket. */
static void send_garbage(int i, int count)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(7946)};
    char host[32];
    snprintf(host, sizeof host, "127.0.3.%d", i + 1);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    cr_assert(fd >= 0);
    uint8_t pkt[1500];
    uint64_t x = 88172645463325252ull;
    for (int k = 0; k < count; k++) {
        size_t len = 1 + (size_t)(k * 37 % (int)sizeof pkt);
        for (size_t b = 0; b < len; b++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            pkt[b] = (uint8_t)x;
        }
        if (k % 3 == 0)
            pkt[0] = 1; /* our version byte, garbage after it */
        sendto(fd, pkt, len, 0, (struct sockaddr *)&sa, sizeof sa);
        /* Paced so the node's socket buffer never overflows: every datagram
         * must reach the node to be counted. */
        if (k % 10 == 9)
            proc_sleep_ms(5);
    }
    close(fd);
}

Test(members, malformed_datagrams_are_counted_and_dropped, .timeout = 120)
{
    char key[300];
    keygen("cluster.key", key, sizeof key);
    for (int i = 0; i < 4; i++)
        node_prepare(i);
    node_start(0, -1, NULL, NULL);
    node_start(1, 0, NULL, NULL);
    int two[] = {0, 1};
    struct expect e = {two, 2, "alive", 1, 2};
    wait_views(two, 2, check_states, &e, 30000, "two nodes converge");
    uint64_t bad = status_u64(0, "membership", "bad_packets");
    send_garbage(0, 500);
    proc_sleep_ms(500);
    cr_assert_geq(status_u64(0, "membership", "bad_packets") - bad, 450,
                  "garbage not counted as bad");
    /* The view is untouched and the node still serves. */
    wait_views(two, 2, check_states, &e, 5000, "view after garbage");

    /* The same at a keyed node: counted as unauthenticated before decoding. */
    node_start(2, -1, "--key-file", key);
    cluster.key_file = key;
    send_garbage(2, 300);
    proc_sleep_ms(500);
    cr_assert_geq(status_u64(2, "membership", "unauthenticated"), 290);
    cr_assert_eq(status_u64(2, "membership", "bad_packets"), 0);
    cluster_node_stop_ok(&cluster, 2);
    cluster.key_file = NULL;
    cluster_node_stop_ok(&cluster, 0);
    cluster_node_stop_ok(&cluster, 1);
}

Test(members, a_second_live_node_with_a_name_in_use_is_refused, .timeout = 120)
{
    for (int i = 0; i < 3; i++)
        node_prepare(i);
    node_start(0, -1, NULL, NULL);
    node_start(1, 0, NULL, NULL);
    int two[] = {0, 1};
    struct expect e = {two, 2, "alive", 1, 2};
    wait_views(two, 2, check_states, &e, 30000, "two nodes converge");
    /* Node 2 claims n1's name from another address: it learns of the live
     * holder while joining and stops with an error, without a `left` that
     * would speak for the holder. */
    snprintf(w.names[2], sizeof w.names[2], "n1");
    const char *extra[] = {"--name", "n1", "--join", w.nodes[0].addr, NULL};
    cr_assert_eq(proc_node_spawn(&w.nodes[2], extra), 0);
    int code = proc_node_wait_exit(&w.nodes[2], 20000);
    cr_assert_eq(code, 1, "the newcomer exited with %d", code);
    proc_sleep_ms(3000);
    json_t *m = query(0, AM_MSG_MEMBERS);
    cr_assert_not_null(m);
    cr_assert_eq(json_array_size(json_object_get(m, "members")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(member(m, "n1"), "addr")), w.nodes[1].addr,
                     "the name moved to the newcomer");
    json_decref(m);
    size_t len;
    char *log0 = proc_read_file(w.nodes[0].log, &len);
    char *log2 = proc_read_file(w.nodes[2].log, &len);
    cr_assert(log0 && strstr(log0, "claimed"), "n0 logged no conflict");
    cr_assert(log2 && strstr(log2, "refuses to run with it"), "the newcomer logged no refusal");
    cr_assert(strstr(log2, "start this one with another --name"), "no exit message");
    free(log0);
    free(log2);
    struct expect still = {two, 2, "alive", 1, 2};
    wait_views(two, 2, check_states, &still, 10000, "holder still alive and alone with its name");
    cluster_node_stop_ok(&cluster, 0);
    cluster_node_stop_ok(&cluster, 1);
}
