/* test_routing.c - calls routed to the owner between real `amesh node`
 * processes on 127.0.7.x:
 *
 *   - five nodes, 10,000 counters added to through randomly chosen nodes:
 *     every final value equals the acknowledged adds, and every active actor
 *     lives on exactly one node, the owner by the ring;
 *   - a peer stopped with SIGSTOP: the sender's memory stays bounded under a
 *     flood, calls to the stopped node's actors fail with retryable errors
 *     by the forward timeout, calls to other actors keep being answered;
 *   - a malformed frame on a peer stream closes that stream only; a client
 *     cannot pose as a peer (FORWARD on a client connection, a peer HELLO
 *     from the wrong address or with a name outside the view).
 *
 * The test speaks the protocol itself over plain sockets (pipelined batches
 * of frames), so it can also bind a chosen source address. */
#include "cluster.h"
#include "counters.h"
#include "proc.h"
#include "rconn.h"
#include "view.h"

#include "buf.h"
#include "err.h"
#include "proto.h"
#include "ring.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODES 5

static struct {
    char dir[256];
    struct proc_node nodes[MAX_NODES];
    char names[MAX_NODES][CLUSTER_NAME_MAX];
    int stopped;        /* index of a SIGSTOPped node to resume at teardown, or -1 */
    char key_file[300]; /* "" or the cluster key every node and query uses */
} w;

static const struct cluster cluster = {CLUSTER_OF(w), .key_file = w.key_file,
                                       .stopped = &w.stopped};

static void setup(void)
{
    memset(&w, 0, sizeof w);
    cluster_setup(&cluster, "routing");
}

static void teardown(void)
{
    cluster_teardown(&cluster, NULL);
}

TestSuite(routing, .init = setup, .fini = teardown);

/* ---- nodes ------------------------------------------------------------- */

/* --idle-timeout of the nodes a test starts (ms). */
static const char *idle_ms = "600000";

static void node_start(int i, const char *timeout_ms)
{
    cluster_node_init(&cluster, i, "127.0.7");
    const char *extra[] = {"--idle-timeout",
                           idle_ms,
                           "--forward-timeout",
                           timeout_ms,
                           w.key_file[0] ? "--key-file" : NULL,
                           w.key_file,
                           NULL};
    cluster_node_start(&cluster, i, i ? 0 : -1, extra);
}

static const int all_nodes[MAX_NODES] = {0, 1, 2, 3, 4};

/* Starts n nodes (all joining node 0) and waits until every one has built
 * the same ring of n members and waits for no handoff. Then one more
 * second: a node that meets a member before that member has heard of it
 * has its peer stream refused and backs off (calls fail `unavailable` in
 * the meantime, a retryable error the tests here do not want to count). */
static void cluster_start(int n, const char *timeout_ms)
{
    for (int i = 0; i < n; i++)
        node_start(i, timeout_ms);
    cluster_wait_one_ring(&cluster, all_nodes, n);
    cluster_wait_no_handoffs(&cluster, all_nodes, n);
    proc_sleep_ms(1000);
}

/* The ring every node builds from names n0 .. n(count-1). */
static struct am_ring *ring_of(int count)
{
    return cluster_ring(&cluster, all_nodes, count);
}

/* Index (in w.names) of the owner of counter/id. */
static int owner_of(const struct am_ring *r, const char *id)
{
    int o = am_ring_owner(r, am_ring_key("counter", 7, id, strlen(id)));
    const char *name = am_ring_member(r, o);
    return atoi(name + 1);
}

/* ---- 1 and 2: many counters through random nodes ------------------------ */

#define COUNTERS 10000
#define ADDS 30000
#define BATCH 600

/* Adds 1, `adds` times, to counters c0 .. c(counters-1) chosen at random,
 * each through one of the listed nodes chosen at random, in pipelined
 * batches; acked[c] counts the acknowledged adds of counter c. Every error
 * must be retryable; returns how many adds failed. */
static uint64_t add_random(const int *nodes, int nn, int counters, int adds, uint32_t *acked)
{
    const struct counters k = {"c", counters, BATCH, ""};
    return counters_add_random(&k, &cluster, nodes, nn, adds, acked);
}

/* Reads every counter through one of the listed nodes chosen at random;
 * returns how many differ from acked (the first few are logged). */
static uint64_t check_counters(const int *nodes, int nn, int counters, const uint32_t *acked)
{
    const struct counters k = {"c", counters, BATCH, ""};
    int64_t *value = calloc((size_t)counters, sizeof *value);
    cr_assert_not_null(value);
    counters_read(&k, &cluster, nodes, nn, value, 0, NULL);
    uint64_t mismatches = 0;
    for (int c = 0; c < counters; c++)
        if (value[c] != (int64_t)acked[c] && mismatches++ < 5)
            cr_log_error("c%d is %lld, acknowledged adds %u", c, (long long)value[c], acked[c]);
    free(value);
    return mismatches;
}

/* One TCP connection per pair of nodes: each link is accepted by one of
 * its two nodes (clients.peers counts those open now) and used both ways
 * (routing.streams counts the peers a node has a link to). Two nodes that
 * dialed each other at once keep one link and close the other a forward
 * timeout later, so this waits up to 10 s for the count to settle. */
static void assert_one_link_per_pair(int n)
{
    uint64_t accepted = 0;
    int64_t t0 = proc_now_ms();
    for (;;) {
        int linked = 1;
        accepted = 0;
        for (int i = 0; i < n; i++) {
            json_t *st = cluster_status(&cluster, i);
            accepted += cluster_stat(st, "clients", "peers");
            linked &= cluster_stat(st, "routing", "streams") == (uint64_t)(n - 1);
            json_decref(st);
        }
        if (linked && accepted == (uint64_t)(n * (n - 1) / 2))
            return;
        cr_assert_lt(proc_now_ms() - t0, 10000,
                     "%llu peer connections between %d nodes (want %d), or a node without a "
                     "link to every other",
                     (unsigned long long)accepted, n, n * (n - 1) / 2);
        proc_sleep_ms(100);
    }
}

Test(routing, ten_thousand_counters_through_random_nodes_count_every_acknowledged_add,
     .timeout = 280)
{
    const int n = 5;
    const int all[] = {0, 1, 2, 3, 4};
    cluster_start(n, "5000");
    static uint32_t acked[COUNTERS];
    memset(acked, 0, sizeof acked);
    srand(7);
    uint64_t failed = add_random(all, n, COUNTERS, ADDS, acked);
    uint64_t mismatches = check_counters(all, n, COUNTERS, acked);
    cr_assert_eq(mismatches, 0, "%llu counters differ from their acknowledged adds",
                 (unsigned long long)mismatches);

    /* Point 2: every counter is active on exactly one node, its owner. */
    size_t total = cluster_wait_actors_on_owners(&cluster, NULL, all, n);
    uint64_t forwarded = 0;
    for (int i = 0; i < n; i++) {
        json_t *st = cluster_status(&cluster, i);
        forwarded += cluster_stat(st, "routing", "forwarded");
        cr_assert_eq(cluster_stat(st, "routing", "hop_limited"), 0);
        json_decref(st);
    }
    cr_assert_eq(total, COUNTERS, "%zu actors active over the nodes, want %d", total, COUNTERS);
    /* Four in five requests went to a node that does not own the actor. */
    cr_assert(forwarded > (ADDS + COUNTERS) / 2, "only %llu calls forwarded",
              (unsigned long long)forwarded);
    cr_log_info("acknowledged adds %d of %d; forwarded %llu", ADDS - (int)failed, ADDS,
                (unsigned long long)forwarded);
    assert_one_link_per_pair(n);
    for (int i = n - 1; i >= 0; i--)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- 4: a peer that stops reading ---------------------------------------- */

struct rss_watch {
    pid_t pid;
    volatile int stop;
    long long max;
};

static void *watch_rss(void *arg)
{
    struct rss_watch *rw = arg;
    while (!rw->stop) {
        long long v = proc_rss(rw->pid);
        if (v > rw->max)
            rw->max = v;
        proc_sleep_ms(20);
    }
    return NULL;
}

/* The first count counter ids owned by node `owner` (and, unless replica
 * is -1, replicated to node `replica`: the next member on the ring), as
 * "cN" strings. */
static void ids_owned_by(const struct am_ring *r, int owner, int replica, char ids[][16],
                         int count)
{
    for (int k = 0, found = 0; found < count; k++) {
        snprintf(ids[found], 16, "c%d", k);
        int next = -1;
        am_ring_successors(r, am_ring_key("counter", 7, ids[found], strlen(ids[found])), &next, 1);
        if (owner_of(r, ids[found]) == owner && (replica < 0 || next == replica))
            found++;
    }
}

Test(routing, a_stopped_peer_costs_bounded_memory_and_retryable_errors, .timeout = 200)
{
    const int n = 3;
    const int timeout_ms = 1500;
    cluster_start(n, "1500");
    struct am_ring *ring = ring_of(n);
    char stuck[64][16], live[64][16];
    ids_owned_by(ring, 2, -1, stuck, 64);
    /* Owned by n1 and replicated to n0: calls to them involve no stream to
     * the stopped node. (A write whose replica is the stopped node waits
     * for that replica until its timeout, or until the failure detector
     * takes the node out of the ring.) */
    ids_owned_by(ring, 1, 0, live, 64);
    /* Streams exist before the stop, as in a running cluster. */
    struct rconn c;
    rconn_open(&c, w.nodes[0].addr, NULL);
    rconn_hello(&c, NULL, AM_ST_OK);
    struct am_buf out;
    am_buf_init(&out);
    rconn_encode_counter(&out, 1, stuck[0], "add", 1);
    rconn_encode_counter(&out, 2, live[0], "add", 1);
    cr_assert_eq(rconn_send(&c, &out), 0);
    for (int j = 0; j < 2; j++) {
        struct am_reply r;
        cr_assert_eq(rconn_reply(&c, &r, RCONN_IO_MS), 0);
        cr_assert_eq(r.status, AM_ST_OK);
    }
    long long rss0 = proc_rss(w.nodes[0].pid);
    cr_assert(rss0 > 0);

    cr_assert_eq(kill(w.nodes[2].pid, SIGSTOP), 0);
    w.stopped = 2;
    /* Pipelined on one connection, a call to the stopped node's actor (its
     * stream still looks healthy: the call is sent, and waits) and then one
     * to an actor of n0 itself: the second is answered at once, not when the
     * first fails (a connection keeps its replies for those of other nodes
     * at most 5 ms). */
    char local[8][16];
    ids_owned_by(ring, 0, 1, local, 8);
    int64_t s0 = proc_now_ms();
    rconn_encode_counter(&out, 300, stuck[6], "add", 1);
    rconn_encode_counter(&out, 301, local[0], "add", 1);
    cr_assert_eq(rconn_send(&c, &out), 0);
    struct am_reply r1, r2;
    cr_assert_eq(rconn_reply(&c, &r1, timeout_ms + 2000), 0);
    int64_t local_ms = proc_now_ms() - s0;
    cr_assert_eq(r1.id, 301, "the call to n0's own actor came back after the stuck one");
    cr_assert_eq(r1.status, AM_ST_OK);
    cr_assert(local_ms < timeout_ms / 2, "the call to n0's own actor took %lld ms",
              (long long)local_ms);
    cr_assert_eq(rconn_reply(&c, &r2, timeout_ms + 2000), 0);
    cr_assert_eq(r2.id, 300);
    cr_assert(r2.status != AM_ST_OK && am_status_retryable(r2.status));
    int64_t t0 = proc_now_ms();
    /* A flood through n0: 8 connections x 64 in flight of 64 KiB echoes over
     * actors of every node, for 3 s, while the memory of n0 is watched. */
    struct rss_watch rw = {.pid = w.nodes[0].pid, .max = rss0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, watch_rss, &rw), 0);
    struct proc_result br;
    int rc =
        proc_runl(&br, 60000, "bench", "--node", w.nodes[0].addr, "--type", "echo", "--action",
                  "echo", "--payload", "65536", "--actors", "300", "--connections", "8",
                  "--pipeline", "64", "--duration", "3", "--warmup", "0", "--json", (char *)NULL);
    /* Meanwhile is over; now calls one at a time: to the stopped node's
     * actors (each must fail, retryably, within the timeout and a margin)
     * and to the others (each answered at once). */
    int64_t worst_live = 0, worst_stuck = 0;
    int stuck_failed = 0;
    for (int k = 1; k < 6; k++) {
        struct am_reply r;
        int64_t s = proc_now_ms();
        rconn_encode_counter(&out, 100 + (uint64_t)k, stuck[k], "add", 1);
        cr_assert_eq(rconn_send(&c, &out), 0);
        cr_assert_eq(rconn_reply(&c, &r, timeout_ms + 2000), 0, "no answer for %s", stuck[k]);
        cr_assert(r.status != AM_ST_OK && am_status_retryable(r.status),
                  "a call to the stopped node's actor answered %s", am_status_name(r.status));
        stuck_failed++;
        if (proc_now_ms() - s > worst_stuck)
            worst_stuck = proc_now_ms() - s;
        s = proc_now_ms();
        rconn_encode_counter(&out, 200 + (uint64_t)k, live[k], "add", 1);
        cr_assert_eq(rconn_send(&c, &out), 0);
        cr_assert_eq(rconn_reply(&c, &r, RCONN_IO_MS), 0);
        cr_assert_eq(r.status, AM_ST_OK, "a call to n1's actor answered %s",
                     am_status_name(r.status));
        if (proc_now_ms() - s > worst_live)
            worst_live = proc_now_ms() - s;
    }
    rw.stop = 1;
    pthread_join(th, NULL);
    int64_t stopped_for = proc_now_ms() - t0;
    json_t *st = cluster_status(&cluster, 0);
    cr_assert_eq(kill(w.nodes[2].pid, SIGCONT), 0);
    w.stopped = -1;

    cr_assert_eq(rc, 0, "bench did not run");
    cr_assert_eq(br.code, 0, "bench: %s", br.err);
    json_t *bj = json_loads(br.out, 0, NULL);
    cr_assert_not_null(bj, "bench printed no JSON: %s", br.out);
    long long ok = json_integer_value(json_object_get(bj, "requests"));
    long long errs = json_integer_value(json_object_get(bj, "errors"));
    json_t *by = json_object_get(bj, "errors_by_status"), *v;
    const char *kname;
    json_object_foreach(by, kname, v)
    {
        int retryable = strcmp(kname, "timeout") == 0 || strcmp(kname, "unavailable") == 0 ||
                        strcmp(kname, "overloaded") == 0;
        cr_assert(retryable || json_integer_value(v) == 0, "bench saw %lld %s errors",
                  (long long)json_integer_value(v), kname);
    }
    cr_assert(ok > 0, "no call was answered during the stop");
    cr_assert(errs > 0, "no call to the stopped node failed");
    uint64_t refused = cluster_stat(st, "routing", "refused");
    uint64_t timeouts = cluster_stat(st, "routing", "timeouts");
    long long growth = rw.max - rss0;
    cr_log_info("stopped %lld ms: bench ok %lld, errors %lld (refused %llu, timeouts %llu); n0 "
                "RSS %lld -> max %lld KiB; slowest stuck call %lld ms, slowest live call %lld ms",
                (long long)stopped_for, ok, errs, (unsigned long long)refused,
                (unsigned long long)timeouts, rss0 / 1024, rw.max / 1024, (long long)worst_stuck,
                (long long)worst_live);
    /* The bound: 16 MiB queued per peer (a buffer may hold twice that while
     * it grows), the write in progress, and the clients' own buffers. Under
     * AddressSanitizer freed blocks wait in its quarantine (256 MiB by
     * default) before they are reused, so the bound grows by that much. */
    long long bound = 160ll << 20;
#ifdef __SANITIZE_ADDRESS__
    bound += 256ll << 20;
#endif
    cr_assert(growth < bound, "n0 grew by %lld MiB while its peer was stopped", growth >> 20);
    cr_assert(worst_stuck <= timeout_ms + 1500, "a stuck call took %lld ms",
              (long long)worst_stuck);
    cr_assert(worst_live < timeout_ms, "a call to a live node took %lld ms", (long long)worst_live);
    cr_assert_eq(stuck_failed, 5);
    json_decref(bj);
    json_decref(st);
    proc_result_free(&br);
    rconn_close(&c);
    am_buf_close(&out);
    am_ring_free(ring);
    for (int i = n - 1; i >= 0; i--)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- 5: peer streams are for peers --------------------------------------- */

static void encode_forward(struct am_buf *b, uint64_t id, const char *actor)
{
    struct am_buf call;
    struct am_request req;
    const uint8_t *body;
    size_t blen;
    am_buf_init(&call);
    rconn_encode_counter(&call, id, actor, "add", 1);
    cr_assert(am_frame_next(call.data, call.len, call.len, &body, &blen) > 0);
    cr_assert_eq(am_request_decode(&req, body, blen), 0);
    cr_assert_eq(am_encode_forward(b, id, &req, 1, 0), 0);
    am_buf_close(&call);
}

static int64_t counter_get(struct rconn *c, const char *actor)
{
    struct am_buf out;
    struct am_reply r;
    am_buf_init(&out);
    rconn_encode_counter(&out, 77, actor, "get", 0);
    cr_assert_eq(rconn_send(c, &out), 0);
    cr_assert_eq(rconn_reply(c, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_OK);
    am_buf_close(&out);
    return rconn_reply_int(&r);
}

Test(routing, a_malformed_peer_frame_closes_that_stream_only_and_clients_cannot_pose_as_peers,
     .timeout = 120)
{
    const int n = 3;
    cluster_start(n, "5000");
    struct am_ring *ring = ring_of(n);
    char mine[2][16], far[1][16];
    ids_owned_by(ring, 0, -1, mine, 2);
    ids_owned_by(ring, 2, -1, far, 1);
    struct am_buf b;
    struct am_reply r;
    am_buf_init(&b);

    /* The real stream n1 -> n0 works before, and is counted. */
    struct rconn via1;
    rconn_open(&via1, w.nodes[1].addr, NULL);
    rconn_hello(&via1, NULL, AM_ST_OK);
    rconn_encode_counter(&b, 5, mine[0], "add", 1);
    cr_assert_eq(rconn_send(&via1, &b), 0);
    cr_assert_eq(rconn_reply(&via1, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_OK);
    json_t *st = cluster_status(&cluster, 1);
    uint64_t connects = cluster_stat(st, "routing", "connects");
    json_decref(st);

    /* A client that sends FORWARD: refused, closed, no effect. */
    struct rconn cl;
    rconn_open(&cl, w.nodes[0].addr, NULL);
    rconn_hello(&cl, NULL, AM_ST_OK);
    encode_forward(&b, 9, mine[1]);
    cr_assert_eq(rconn_send(&cl, &b), 0);
    cr_assert_eq(rconn_reply(&cl, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_BAD_REQUEST);
    cr_assert(rconn_closed_by_node(&cl, 5000), "a client's FORWARD did not close its connection");
    rconn_close(&cl);
    /* A client that sends HANDOFF: the same. */
    rconn_open(&cl, w.nodes[0].addr, NULL);
    rconn_hello(&cl, NULL, AM_ST_OK);
    cr_assert_eq(am_encode_handoff(&b, 10, "counter/x", 9, 1, 1, (const uint8_t *)"\x01", 1), 0);
    cr_assert_eq(rconn_send(&cl, &b), 0);
    cr_assert_eq(rconn_reply(&cl, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_BAD_REQUEST);
    cr_assert(rconn_closed_by_node(&cl, 5000), "a client's HANDOFF did not close its connection");
    rconn_close(&cl);

    /* A peer HELLO naming a member, from another address; and one naming
     * no member: both refused and closed. */
    rconn_open(&cl, w.nodes[0].addr, "127.0.0.1");
    rconn_hello(&cl, "n1", AM_ST_BAD_REQUEST);
    cr_assert(rconn_closed_by_node(&cl, 5000));
    rconn_close(&cl);
    rconn_open(&cl, w.nodes[0].addr, "127.0.7.9");
    rconn_hello(&cl, "intruder", AM_ST_BAD_REQUEST);
    cr_assert(rconn_closed_by_node(&cl, 5000));
    rconn_close(&cl);
    st = cluster_status(&cluster, 0);
    cr_assert_eq(cluster_stat(st, "clients", "peers_refused"), 2);
    json_decref(st);

    /* From n1's own address, a peer stream is taken: a FORWARD works (so the
     * garbage below is judged as a peer's), then a malformed frame closes it. */
    struct rconn fake;
    rconn_open(&fake, w.nodes[0].addr, "127.0.7.2");
    rconn_hello(&fake, "n1", AM_ST_OK);
    encode_forward(&b, 11, mine[1]);
    cr_assert_eq(rconn_send(&fake, &b), 0);
    cr_assert_eq(rconn_reply(&fake, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_OK);
    /* A HANDOFF of an actor the sender (n1) does not own: refused, the stream
     * stays open. */
    char key[32];
    snprintf(key, sizeof key, "counter/%s", far[0]);
    static const uint8_t state[] = {0x2a};
    cr_assert_eq(am_encode_handoff(&b, 12, key, strlen(key), 1, 1, state, 1), 0);
    cr_assert_eq(rconn_send(&fake, &b), 0);
    cr_assert_eq(rconn_reply(&fake, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.status, AM_ST_INVALID_ARG, "HANDOFF from a non-owner: %s",
                 am_status_name(r.status));
    static const uint8_t garbage[] = {0, 0, 0, 3, 0xc1, 0xc1, 0xc1};
    cr_assert_eq(am_buf_append(&b, garbage, sizeof garbage), 0);
    cr_assert_eq(rconn_send(&fake, &b), 0);
    cr_assert(rconn_closed_by_node(&fake, 5000), "a malformed peer frame left the stream open");
    rconn_close(&fake);

    /* Everything else still works: n1's real stream to n0 was not touched
     * (no new connection), a client of n0 reaches n2's actors. */
    cr_assert_eq(counter_get(&via1, mine[0]), 1);
    /* 1: the peer stream's FORWARD counted, the client's did not */
    cr_assert_eq(counter_get(&via1, mine[1]), 1);
    st = cluster_status(&cluster, 1);
    cr_assert_eq(cluster_stat(st, "routing", "connects"), connects);
    cr_assert_eq(cluster_stat(st, "routing", "stream_errors"), 0);
    json_decref(st);
    rconn_open(&cl, w.nodes[0].addr, NULL);
    rconn_hello(&cl, NULL, AM_ST_OK);
    cr_assert_eq(counter_get(&cl, far[0]), 0);
    rconn_close(&cl);
    rconn_close(&via1);
    st = cluster_status(&cluster, 0);
    cr_assert(cluster_stat(st, "clients", "bad_frames") >= 3);
    cr_assert_eq(cluster_stat(st, "handoff", "refused"), 1);
    cr_assert_eq(cluster_stat(st, "handoff", "received"), 0);
    json_decref(st);
    am_buf_close(&b);
    am_ring_free(ring);
    for (int i = n - 1; i >= 0; i--)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- while the view changes ----------------------------------------------- */

/* Under load through n0 and n2, n3 joins and n1 leaves: every call is
 * answered, every error is retryable (the views disagree for a moment:
 * calls may meet the hop limit or a member that is leaving), and --verify
 * finds every counter at least at its acknowledged adds and at most at
 * those plus the adds of unknown outcome: the actors that moved to n3, and
 * those n1 handed off, kept their state. */
Test(routing, a_join_and_a_leave_under_load_lose_no_acknowledged_add, .timeout = 200)
{
    cluster_start(3, "3000");
    char nodes[80];
    snprintf(nodes, sizeof nodes, "%s,%s", w.nodes[0].addr, w.nodes[2].addr);
    const char *args[] = {"bench", "--node",     nodes,      "--actors",   "2000", "--connections",
                          "8",     "--pipeline", "8",        "--duration", "12",   "--warmup",
                          "0",     "--json",     "--verify", NULL};
    struct proc_bg b;
    cr_assert_eq(proc_bg_start(&b, 120000, args), 0);
    proc_sleep_ms(3000);
    node_start(3, "3000");
    proc_sleep_ms(3000);
    cluster_node_stop_ok(&cluster, 1);
    proc_bg_join(&b);
    cr_assert_eq(b.rc, 0, "bench did not run");
    cr_assert_eq(b.r.code, 0, "bench exited %d: %s\n%s", b.r.code, b.r.err, b.r.out);
    cr_assert(strstr(b.r.out, "\"verify\""), "no verification in %s", b.r.out);
    json_t *bj = json_loads(b.r.out, 0, NULL);
    cr_assert_not_null(bj, "bench printed no JSON: %s", b.r.out);
    json_t *by = json_object_get(bj, "errors_by_status"), *v;
    const char *kname;
    json_object_foreach(by, kname, v)
    {
        cr_log_info("%lld calls answered %s", (long long)json_integer_value(v), kname);
        cr_assert(strcmp(kname, "timeout") == 0 || strcmp(kname, "unavailable") == 0 ||
                      strcmp(kname, "overloaded") == 0 || strcmp(kname, "shutting_down") == 0 ||
                      strcmp(kname, "busy") == 0,
                  "%lld calls failed with %s", (long long)json_integer_value(v), kname);
    }
    cr_assert(json_integer_value(json_object_get(bj, "requests")) > 0);
    cr_assert_eq(json_integer_value(json_object_get(bj, "lost_connections")), 0);
    /* The three that stay agree on a ring of three again. */
    const int alive[] = {0, 2, 3};
    cluster_wait_one_ring(&cluster, alive, 3);
    /* And each actor is active on one of them only, its owner: the actors
     * that n0 and n2 stopped owning when n3 joined were released. */
    size_t total = cluster_wait_actors_on_owners(&cluster, NULL, alive, 3);
    cr_assert(total > 0);
    json_decref(bj);
    proc_result_free(&b.r);
    cluster_node_stop_ok(&cluster, 3);
    cluster_node_stop_ok(&cluster, 2);
    cluster_node_stop_ok(&cluster, 0);
}

/* ---- a graceful leave hands the actors off -------------------------------- */

/* n1 of four leaves with SIGTERM after 3,000 counters were added to through
 * every node: each counter, read through the three that stay, still holds
 * its acknowledged adds; n1's actors were taken by the others. */
Test(routing, a_leaving_node_hands_its_actors_to_their_next_owners, .timeout = 200)
{
    const int all[] = {0, 1, 2, 3}, stay[] = {0, 2, 3};
    const int counters = 3000;
    cluster_start(4, "5000");
    static uint32_t acked[3000];
    memset(acked, 0, sizeof acked);
    srand(11);
    cr_assert_eq(add_random(all, 4, counters, 9000, acked), 0);
    json_t *a = view_query(w.nodes[1].addr, AM_MSG_ACTORS, NULL, 10000);
    cr_assert_not_null(a);
    long long owned = json_integer_value(json_object_get(a, "active"));
    json_decref(a);
    cr_assert(owned > 300, "n1 runs only %lld actors", owned);

    cluster_node_stop_ok(&cluster, 1);
    uint64_t received = 0;
    for (int k = 0; k < 3; k++) {
        json_t *st = cluster_status(&cluster, stay[k]);
        /* A snapshot its receiver already held (as n1's replica) is not
         * stored again: "current". */
        received +=
            cluster_stat(st, "handoff", "received") + cluster_stat(st, "handoff", "current");
        json_decref(st);
    }
    char *log = proc_read_file(w.nodes[1].log, NULL);
    cr_assert_not_null(log);
    cr_assert(strstr(log, "handed off"), "n1's log says nothing of a handoff:\n%s", log);
    free(log);
    cr_assert_eq(received, (uint64_t)owned, "the others took %llu of n1's %lld actors",
                 (unsigned long long)received, owned);
    uint64_t mismatches = check_counters(stay, 3, counters, acked);
    cr_assert_eq(mismatches, 0, "%llu counters lost adds when n1 left",
                 (unsigned long long)mismatches);
    for (int k = 2; k >= 0; k--)
        cluster_node_stop_ok(&cluster, stay[k]);
}

/* n3 joins a cluster of three after 9,000 adds to 3,000 counters: every
 * counter, read through any of the four, still holds its acknowledged adds;
 * the actors n3 now owns were handed to it, and each actor is active on its
 * owner only. */
/* Waits until node n (which joined nodes 0 .. n-1) waits for no member's
 * handoff; returns how many snapshots those nodes handed off, none of them
 * failed. */
static uint64_t wait_handed_over(int n)
{
    int64_t deadline = proc_now_ms() + 15000;
    for (;;) {
        json_t *st = cluster_status(&cluster, n);
        uint64_t waiting = cluster_stat(st, "handoff", "waiting");
        json_decref(st);
        if (waiting == 0)
            break;
        cr_assert(proc_now_ms() < deadline, "n%d still waits for %llu handoffs", n,
                  (unsigned long long)waiting);
        proc_sleep_ms(100);
    }
    uint64_t sent = 0;
    for (int k = 0; k < n; k++) {
        json_t *st = cluster_status(&cluster, k);
        sent += cluster_stat(st, "handoff", "sent");
        cr_assert_eq(cluster_stat(st, "handoff", "failed"), 0, "n%d failed to hand off", k);
        json_decref(st);
    }
    return sent;
}

Test(routing, a_joining_node_takes_over_its_actors_with_their_state, .timeout = 200)
{
    const int three[] = {0, 1, 2}, four[] = {0, 1, 2, 3};
    const int counters = 3000;
    cluster_start(3, "5000");
    static uint32_t acked[3000];
    memset(acked, 0, sizeof acked);
    srand(13);
    cr_assert_eq(add_random(three, 3, counters, 9000, acked), 0);
    node_start(3, "5000");
    cluster_wait_one_ring(&cluster, four, 4);
    /* n3 waits for the others' HANDOFF_DONE before it serves what it took. */
    uint64_t sent = wait_handed_over(3);
    json_t *st = cluster_status(&cluster, 3);
    uint64_t received = cluster_stat(st, "handoff", "received");
    cr_assert_eq(cluster_stat(st, "handoff", "hold_expired"), 0);
    json_decref(st);
    cr_assert_eq(received, sent);
    cr_assert(received > 300, "n3 took over only %llu actors", (unsigned long long)received);
    uint64_t mismatches = check_counters(four, 4, counters, acked);
    cr_assert_eq(mismatches, 0, "%llu counters lost adds when n3 joined",
                 (unsigned long long)mismatches);
    size_t total = cluster_wait_actors_on_owners(&cluster, NULL, four, 4);
    cr_assert_eq(total, (size_t)counters);
    for (int k = 3; k >= 0; k--)
        cluster_node_stop_ok(&cluster, k);
}

/* Node i's log line that says `what`, as its offset in the log (-1: none). */
static long log_offset(int i, const char *what)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s.log", w.dir, w.names[i]);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    char line[1024];
    long at = -1;
    while (at < 0 && fgets(line, sizeof line, f))
        if (strstr(line, what))
            at = ftell(f);
    fclose(f);
    return at;
}

static uint64_t active_on(int i)
{
    json_t *st = cluster_status(&cluster, i);
    uint64_t n = cluster_stat(st, "actors", "active");
    json_decref(st);
    return n;
}

/* The actors a member had active when the newcomer joined are handed to it
 * before the member walks its store for the idle ones; both arrive whole,
 * each once. */
Test(routing, a_joining_node_gets_the_active_actors_first_then_the_idle_ones, .timeout = 200)
{
    const int three[] = {0, 1, 2}, four[] = {0, 1, 2, 3};
    const int counters = 1000, hot = 200;
    idle_ms = "3000";
    cluster_start(3, "5000");
    static uint32_t acked[1000];
    memset(acked, 0, sizeof acked);
    srand(17);
    cr_assert_eq(add_random(three, 3, counters, 3000, acked), 0);
    int64_t deadline = proc_now_ms() + 15000;
    while (active_on(0) + active_on(1) + active_on(2) > 0) {
        cr_assert(proc_now_ms() < deadline, "actors still active 15 s after their last call");
        proc_sleep_ms(200);
    }
    cr_assert_eq(add_random(three, 3, hot, 1000, acked), 0); /* c0 .. c199 active again */
    node_start(3, "5000");
    cluster_wait_one_ring(&cluster, four, 4);
    uint64_t sent = wait_handed_over(3);
    int ordered = 0;
    for (int k = 0; k < 3; k++) {
        long first = log_offset(k, "of the actors that were active here, before the others");
        long rest = log_offset(k, "snapshots to the members that joined\n");
        cr_assert_geq(rest, 0, "n%d did not walk its store for the idle actors", k);
        if (first >= 0) {
            cr_assert_lt(first, rest, "n%d walked its store before the active actors", k);
            ordered++;
        }
    }
    cr_assert_geq(ordered, 1, "no member had active actors for n3");
    json_t *st = cluster_status(&cluster, 3);
    uint64_t received = cluster_stat(st, "handoff", "received");
    cr_assert_eq(cluster_stat(st, "handoff", "hold_expired"), 0);
    cr_assert_eq(cluster_stat(st, "handoff", "current"), 0, "an actor was handed over twice");
    json_decref(st);
    cr_assert_eq(received, sent);
    cr_assert(received > 100, "n3 took over only %llu actors", (unsigned long long)received);
    uint64_t mismatches = check_counters(four, 4, counters, acked);
    cr_assert_eq(mismatches, 0, "%llu counters lost adds when n3 joined",
                 (unsigned long long)mismatches);
    for (int k = 3; k >= 0; k--)
        cluster_node_stop_ok(&cluster, k);
}

/* ---- with a cluster key --------------------------------------------------- */

Test(routing, with_a_cluster_key_calls_are_forwarded_over_sealed_peer_streams, .timeout = 120)
{
    struct proc_result r;
    snprintf(w.key_file, sizeof w.key_file, "%s/cluster.key", w.dir);
    cr_assert_eq(proc_runl(&r, 10000, "keygen", w.key_file, (char *)NULL), 0);
    cr_assert_eq(r.code, 0, "keygen: %s", r.err);
    proc_result_free(&r);
    const int n = 3;
    cluster_start(n, "5000");
    struct am_ring *ring = ring_of(n);
    /* Through n0, one counter of each node, twice: 1 then 2. */
    for (int owner = 0; owner < n; owner++) {
        char id[1][16];
        ids_owned_by(ring, owner, -1, id, 1);
        for (int round = 1; round <= 2; round++) {
            cr_assert_eq(proc_runl(&r, 10000, "call", "--node", w.nodes[0].addr, "--key-file",
                                   w.key_file, "counter", id[0], "add", "1", (char *)NULL),
                         0);
            cr_assert_eq(r.code, 0, "call %s: %s", id[0], r.err);
            cr_assert_eq(atoi(r.out), round, "%s answered %s", id[0], r.out);
            proc_result_free(&r);
        }
    }
    /* Without the key, a client is kept out before anything is routed. */
    cr_assert_eq(proc_runl(&r, 10000, "call", "--node", w.nodes[0].addr, "counter", "c0", "add",
                           "1", (char *)NULL),
                 0);
    cr_assert_neq(r.code, 0);
    cr_assert(strstr(r.err, "cluster key"), "%s", r.err);
    proc_result_free(&r);
    json_t *st = cluster_status(&cluster, 0);
    cr_assert_eq(cluster_stat(st, "routing", "forwarded"), 4);
    cr_assert(cluster_stat(st, "routing", "replies") >= 4); /* and HANDOFF_DONEs' */
    cr_assert_eq(cluster_stat(st, "routing", "streams"), 2);
    json_decref(st);
    am_ring_free(ring);
    for (int i = n - 1; i >= 0; i--)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- states larger than a payload ------------------------------------------ */

/* A peer stream carries whole states (HANDOFF, REPLICATE) up to --max-state:
 * its frames may be larger than a client's (--max-payload). The grow type
 * appends each payload to its state: 40 payloads of 60,000 bytes make a
 * state of 2.4 MB under a 64 KiB payload limit. Every write reaches the
 * replica (none unreplicated, no frame refused), and after a kill -9 of the
 * owner the replica continues from the whole state. */
Test(routing, a_state_larger_than_a_payload_is_replicated_and_survives_its_owner, .timeout = 120)
{
    const int n = 3, all[] = {0, 1, 2};
    for (int i = 0; i < n; i++) {
        cluster_node_init(&cluster, i, "127.0.7");
        const char *extra[] = {"--actors", AMESH_GROW_LIB, "--max-payload", "64k", NULL};
        cluster_node_start(&cluster, i, i ? 0 : -1, extra);
    }
    cluster_wait_one_ring(&cluster, all, n);
    cluster_wait_no_handoffs(&cluster, all, n);
    static char chunk[60003];
    chunk[0] = '"';
    memset(chunk + 1, 'x', 60000);
    chunk[60001] = '"';
    struct proc_result r;
    uint64_t want = 0;
    for (int k = 0; k < 40; k++) {
        int rc = proc_runl(&r, 20000, "call", "--node", w.nodes[k % n].addr, "grow", "g", "put",
                           chunk, (char *)NULL);
        cr_assert_eq(rc, 0);
        cr_assert_eq(r.code, 0, "append %d: %s%s", k, r.out, r.err);
        want += 60003; /* the payload: a str 16, 3 header bytes and 60,000 */
        cr_assert_eq(strtoull(r.out, NULL, 10), want, "append %d: %s", k, r.out);
        proc_result_free(&r);
    }
    uint64_t acked = 0, unreplicated = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        json_t *st = cluster_status(&cluster, i);
        acked += cluster_stat(st, "replication", "acked");
        unreplicated += cluster_stat(st, "replication", "unreplicated");
        bad += cluster_stat(st, "clients", "bad_frames");
        json_decref(st);
    }
    cr_assert_eq(acked, 40, "%llu of 40 states stored by the replica", (unsigned long long)acked);
    cr_assert_eq(unreplicated, 0);
    cr_assert_eq(bad, 0, "a peer frame was refused");

    struct am_ring *ring = ring_of(n);
    int owner = atoi(am_ring_member(ring, am_ring_owner(ring, am_ring_key("grow", 4, "g", 1))) + 1);
    am_ring_free(ring);
    cr_assert_eq(proc_node_kill9(&w.nodes[owner]), 0);
    int live[2], nl = 0;
    for (int i = 0; i < n; i++)
        if (i != owner)
            live[nl++] = i;
    cluster_wait_one_ring(&cluster, live, nl);
    int rc = proc_runl(&r, 20000, "call", "--node", w.nodes[live[0]].addr, "grow", "g", "put",
                       "\"\"", (char *)NULL);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r.code, 0, "after the owner's crash: %s%s", r.out, r.err);
    cr_assert_eq(strtoull(r.out, NULL, 10), want + 1, "the next owner has %s bytes, want %llu",
                 r.out, (unsigned long long)want + 1);
    proc_result_free(&r);
    for (int k = nl - 1; k >= 0; k--)
        cluster_node_stop_ok(&cluster, live[k]);
}

/* ---- an owner back with an empty data directory ------------------------ */

/* Owner n0 of 20 counters is killed and comes back at once with an empty
 * data directory (its disk was replaced), before the failure detector
 * noticed it had gone: the other nodes' rings never changed, so nobody
 * hands it anything, and only its replicas hold the counters' states.
 * Before it activates one it asks the members after it on the ring for
 * their copies (FETCH) and continues from the newest. Without that it
 * starts every counter from nothing: 1 instead of 6. */
Test(routing, an_owner_back_with_an_empty_disk_continues_from_its_replicas, .timeout = 120)
{
    const int n = 3;
    cluster_start(n, "1000");
    struct am_ring *ring = ring_of(n);
    char ids[20][16];
    int found = 0;
    for (int c = 0; found < 20; c++) {
        snprintf(ids[found], sizeof ids[found], "e%d", c);
        if (owner_of(ring, ids[found]) == 0)
            found++;
    }
    am_ring_free(ring);
    struct proc_result r;
    for (int k = 0; k < found; k++) {
        cr_assert_eq(proc_runl(&r, 10000, "call", "--node", w.nodes[1].addr, "counter", ids[k],
                               "add", "5", (char *)NULL),
                     0);
        cr_assert_eq(r.code, 0, "%s: %s%s", ids[k], r.out, r.err);
        cr_assert_eq(atoi(r.out), 5, "%s: %s", ids[k], r.out);
        proc_result_free(&r);
    }
    cr_assert_eq(proc_node_kill9(&w.nodes[0]), 0);
    cr_assert_eq(proc_rmtree(w.nodes[0].data), 0);
    const char *extra[] = {"--idle-timeout", "600000", "--forward-timeout", "1000", NULL};
    cluster_node_start(&cluster, 0, 1, extra);
    /* Calls wait (or fail `unavailable`) while n0 joins and waits for the
     * handoffs that never come (4 x 750 ms); then each counter goes on. */
    for (int k = 0; k < found; k++) {
        int64_t until = proc_now_ms() + 30000;
        for (;;) {
            cr_assert_eq(proc_runl(&r, 10000, "call", "--node", w.nodes[0].addr, "counter", ids[k],
                                   "add", "1", (char *)NULL),
                         0);
            if (r.code == 0)
                break;
            cr_assert(strstr(r.out, "unavailable") || strstr(r.err, "unavailable"),
                      "%s: not a retryable error: %s%s", ids[k], r.out, r.err);
            cr_assert_lt(proc_now_ms(), until, "%s: still refused after 30 s: %s%s", ids[k],
                         r.out, r.err);
            proc_result_free(&r);
            proc_sleep_ms(200);
        }
        cr_assert_eq(atoi(r.out), 6, "%s is %s after 5 acknowledged and 1 more", ids[k], r.out);
        proc_result_free(&r);
    }
    json_t *st = cluster_status(&cluster, 0);
    uint64_t newer = cluster_stat(st, "replication", "fetched_newer");
    json_decref(st);
    cr_assert_eq(newer, (uint64_t)found, "n0 kept %llu newer copies from its replicas, want %d",
                 (unsigned long long)newer, found);
    for (int i = n - 1; i >= 0; i--)
        cluster_node_stop_ok(&cluster, i);
}

/* ---- a replica back from a short outage -------------------------------- */

/* Counts through `node` with retries while the answer is `unavailable`
 * (a ring settling); returns the reply's integer. */
static int64_t call_until_ok(int node, const char *id, const char *action, const char *arg)
{
    struct proc_result r;
    int64_t until = proc_now_ms() + 30000;
    for (;;) {
        cr_assert_eq(proc_runl(&r, 10000, "call", "--node", w.nodes[node].addr, "counter", id,
                               action, arg, (char *)NULL),
                     0);
        if (r.code == 0)
            break;
        cr_assert(strstr(r.out, "unavailable") || strstr(r.err, "unavailable") ||
                      strstr(r.out, "timeout") || strstr(r.err, "timeout"),
                  "%s %s: not a retryable error: %s%s", id, action, r.out, r.err);
        cr_assert_lt(proc_now_ms(), until, "%s %s: still refused after 30 s: %s%s", id, action,
                     r.out, r.err);
        proc_result_free(&r);
        proc_sleep_ms(200);
    }
    int64_t v = strtoll(r.out, NULL, 10);
    proc_result_free(&r);
    return v;
}

/* Replica n1 of 10 counters owned by n0 is killed and comes back on the
 * same data directory a moment later, before the failure detector noticed:
 * no ring changes, so no repair. The adds made meanwhile were acknowledged
 * by n0 alone (counted unreplicated); n0 queues those keys and sends them
 * again once n1 takes its stream, so n1 holds them when n0 dies next and n1
 * takes over: 6 each, not the 5 it had before its outage. */
Test(routing, a_replica_back_from_a_short_outage_gets_the_writes_it_missed, .timeout = 150)
{
    const int n = 3;
    cluster_start(n, "1000");
    struct am_ring *ring = ring_of(n);
    char ids[10][16];
    ids_owned_by(ring, 0, 1, ids, 10);
    am_ring_free(ring);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(call_until_ok(2, ids[k], "add", "5"), 5);
    cr_assert_eq(proc_node_kill9(&w.nodes[1]), 0);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(call_until_ok(0, ids[k], "add", "1"), 6);
    json_t *st = cluster_status(&cluster, 0);
    uint64_t unrepl = cluster_stat(st, "replication", "unreplicated");
    json_decref(st);
    cr_assert_geq(unrepl, 10, "n0 replicated %llu fewer states than written while n1 was down",
                  (unsigned long long)unrepl);
    const char *extra[] = {"--idle-timeout", "600000", "--forward-timeout", "1000", NULL};
    cluster_node_start(&cluster, 1, 0, extra);
    int64_t until = proc_now_ms() + 20000;
    uint64_t pending = 1, retried = 0;
    while (pending && proc_now_ms() < until) {
        proc_sleep_ms(250);
        st = cluster_status(&cluster, 0);
        pending = cluster_stat(st, "replication", "retry_pending");
        retried = cluster_stat(st, "replication", "retried");
        json_decref(st);
    }
    cr_assert_eq(pending, 0, "n0 still has %llu keys to send again",
                 (unsigned long long)pending);
    cr_assert_geq(retried, 10);
    cr_assert_eq(proc_node_kill9(&w.nodes[0]), 0);
    const int live[] = {1, 2};
    cluster_wait_one_ring(&cluster, live, 2);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(call_until_ok(2, ids[k], "get", "null"), 6,
                     "%s lost the add made while its replica was down", ids[k]);
    cluster_node_stop_ok(&cluster, 2);
    cluster_node_stop_ok(&cluster, 1);
}

/* ---- anti-entropy ------------------------------------------------------ */

/* Replica n1 of 20 counters owned by n0 is killed and restarted with an
 * empty data directory before anyone noticed: no ring change (so no
 * repair), no write failed (so nothing to send again). Anti-entropy (every
 * 500 ms or so here) finds n1's digest ranges differ from n0's and n0 sends
 * those states again; when n0 dies next, n1 continues every counter. Without
 * it n1 starts them from nothing. */
Test(routing, anti_entropy_restores_a_replica_that_lost_its_data, .timeout = 150)
{
    const int n = 3, all[] = {0, 1, 2};
    const char *extra[] = {"--idle-timeout", "600000", "--forward-timeout", "1000",
                           "--anti-entropy", "500", NULL};
    for (int i = 0; i < n; i++) {
        cluster_node_init(&cluster, i, "127.0.7");
        cluster_node_start(&cluster, i, i ? 0 : -1, extra);
    }
    cluster_wait_one_ring(&cluster, all, n);
    cluster_wait_no_handoffs(&cluster, all, n);
    struct am_ring *ring = ring_of(n);
    char ids[20][16];
    ids_owned_by(ring, 0, 1, ids, 20);
    am_ring_free(ring);
    for (int k = 0; k < 20; k++)
        cr_assert_eq(call_until_ok(2, ids[k], "add", "5"), 5);
    cr_assert_eq(proc_node_kill9(&w.nodes[1]), 0);
    cr_assert_eq(proc_rmtree(w.nodes[1].data), 0);
    cluster_node_start(&cluster, 1, 0, extra);
    int64_t until = proc_now_ms() + 30000;
    uint64_t queued = 0, pending = 1;
    while ((queued < 20 || pending) && proc_now_ms() < until) {
        proc_sleep_ms(250);
        json_t *st = cluster_status(&cluster, 0);
        queued = cluster_stat(st, "replication", "ae_queued");
        pending = cluster_stat(st, "replication", "retry_pending");
        json_decref(st);
    }
    cr_assert_geq(queued, 20, "anti-entropy queued %llu states for n1 in 30 s",
                  (unsigned long long)queued);
    cr_assert_eq(pending, 0);
    cr_assert_eq(proc_node_kill9(&w.nodes[0]), 0);
    const int live[] = {1, 2};
    cluster_wait_one_ring(&cluster, live, 2);
    for (int k = 0; k < 20; k++)
        cr_assert_eq(call_until_ok(2, ids[k], "get", "null"), 5,
                     "%s: its replica did not get its state back", ids[k]);
    cluster_node_stop_ok(&cluster, 2);
    cluster_node_stop_ok(&cluster, 1);
}
