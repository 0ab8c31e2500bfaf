/* node.c - `amesh node`: composes storage, runtime and client server on one
 * libuv loop, and stops them in order on SIGTERM or SIGINT:
 *
 *   1. stop accepting connections and reading requests;
 *   2. let the runtime finish what is in flight and write every dirty actor;
 *   3. hand the snapshot of every actor this node owns to the member that
 *      owns it once this node is gone (handoff.h);
 *   4. spread this node's `left` state through the cluster;
 *   5. wait for the calls this node forwarded to other nodes (each bounded
 *      by --forward-timeout), then write the last replies and close the
 *      connections;
 *   6. close the runtime and the store (the writer thread commits what is
 *      queued), then the loop runs dry and the process exits 0 (1 if, in
 *      interval mode, a state could not be written at all).
 * A node refused for its name (another live node holds it) skips 3 and 4. */
#include "commands.h"
#include "config.h"
#include "server.h"

#include "addr.h"
#include "err.h"
#include "gossip.h"
#include "handoff.h"
#include "http.h"
#include "log.h"
#include "mem.h"
#include "mp.h"
#include "peer.h"
#include "placement.h"
#include "proto.h"
#include "registry.h"
#include "antientropy.h"
#include "fetch.h"
#include "hset.h"
#include "replica.h"
#include "ring.h"
#include "runtime.h"
#include "seal.h"
#include "store.h"

#include <sodium.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define AM_VERSION_STRING "0.1.0"

_Static_assert(AM_MAX_REPLICAS == AM_PLACEMENT_MAX_COPIES, "--replicas is bounded by placement");

struct node {
    uv_loop_t loop;
    struct am_config cfg;
    struct am_registry *reg;
    struct am_store *store;
    struct am_runtime *rt;
    struct am_server *srv;
    struct am_http *http; /* the HTTP API (--http), or NULL */
    struct am_gossip *gossip;
    /* The placement ring of the current view (alive and suspect members),
     * rebuilt RING_DELAY_MS after a change, so a burst of member events
     * costs one build. ring_peers[i] is the stream to ring member i (NULL
     * for this node, at self_idx, -1 when this node is not in the ring). */
    struct am_ring *ring;
    struct am_peer **ring_peers;
    int self_idx;
    struct am_peers *peers;
    uint64_t routed, forwards_in, hop_limited, ring_mismatches;
    struct am_handoff_stats handoff;
    struct am_replication repl; /* replica.h; follows ring and ring_peers */
    struct am_fetch *fetch;     /* fetch.h: newer copies asked for before an activation */
    struct am_ae *ae;           /* antientropy.h: replica digests compared */
    /* Handoff to members that join (handoff.h). base: the ring this node
     * last handed off from; a move hands what changed owner from base to
     * the current ring, once the actors this node stopped owning are
     * released. waiting: the members a joining node waits for (their
     * HANDOFF_DONE), with wo_self the ring without this node and held the
     * calls held meanwhile. */
    struct am_ring *base;
    int moving, seen_others;
    int abort_moves;              /* set when stopping: a move in progress sends no more */
    /* While a node joins (or comes back from a pause), a member that shows
     * up in its ring before window_until is waited for too (it was a member
     * gossip had not told this node about yet), unless it said DONE already
     * (finished). */
    uint64_t window_until;
    struct waiting *finished;
    size_t nfinished, finished_cap;
    uint64_t declared_dead_seen;  /* times others declared this node dead, handled */
    /* A loop that did not run for stall_ms (the process was paused) may
     * have been declared dead meanwhile: checked by a 250 ms timer. */
    uv_timer_t stall_timer;
    uint64_t stall_last, stall_ms, stalls;
    struct waiting *waiting;
    size_t nwaiting;
    struct am_ring *wo_self;
    struct held *held, **held_tail;
    size_t nheld;
    /* Keys whose previous owner's HANDOFF arrived while waiting (their
     * ring hashes, open addressing, 0 free): their calls no longer wait
     * for the member's HANDOFF_DONE. Emptied when a wait starts. */
    struct am_hset handed;
    uint64_t held_total, hold_expired;
    uv_timer_t hold_timer;
    struct done_out *dones; /* HANDOFF_DONEs to deliver (retried) */
    uv_timer_t done_timer;
    uv_timer_t ring_timer;
    uv_timer_t release_timer; /* deactivates actors this node stopped owning */
    /* The keys of the actors deactivated there since the last move started
     * (each NUL-terminated, at most RELEASED_MAX bytes): the next move
     * hands them off first, as their callers wait at the new owner. */
    struct am_buf released;
    int ring_timer_open;
    uint64_t ring_builds;
    uint8_t key[AM_KEY_BYTES];
    int keyed;
    uv_signal_t sigterm, sigint;
    uint64_t started_ms;
    int stopping;
    int refused;   /* stopped because another live node holds our name */
    uint64_t lost; /* unsaved states given up at shutdown */
};

static int pack_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    return am_mp_pack_str(pk, k, strlen(k)) || msgpack_pack_uint64(pk, v);
}

static int pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    return am_mp_pack_str(pk, k, strlen(k)) || am_mp_pack_str(pk, v, strlen(v));
}

/* The ring's version as 16 hex digits (JSON numbers cannot hold every
 * uint64 exactly). */
static void ring_version_hex(const struct node *n, char out[17])
{
    snprintf(out, 17, "%016llx", (unsigned long long)(n->ring ? am_ring_version(n->ring) : 0));
}

/* "batch_le_N": transactions of at most N writes (and more than the
 * previous bucket's N); "batch_le_inf": the rest. */
static int pack_batches(msgpack_packer *pk, const struct am_store_stats *ss)
{
    for (int i = 0; i < AM_STORE_BATCH_BUCKETS; i++) {
        char k[32];
        if (am_store_batch_le[i])
            snprintf(k, sizeof k, "batch_le_%u", am_store_batch_le[i]);
        else
            snprintf(k, sizeof k, "batch_le_inf");
        if (pack_kv_u64(pk, k, ss->batches[i]))
            return -1;
    }
    return 0;
}

/* "actor_latency": {"le_US": n, ..., "le_inf": n, "sum_us": n}: messages
 * by time from acceptance to answer (the runtime's buckets, in us). */
static int pack_latency(struct node *n, msgpack_packer *pk)
{
    struct am_runtime_latency l;
    am_runtime_get_latency(n->rt, &l);
    if (am_mp_pack_str(pk, "actor_latency", 13) ||
        msgpack_pack_map(pk, AM_RUNTIME_LATENCY_BUCKETS + 1))
        return -1;
    for (int i = 0; i < AM_RUNTIME_LATENCY_BUCKETS; i++) {
        char k[32];
        if (am_runtime_latency_le_us[i] == UINT64_MAX)
            snprintf(k, sizeof k, "le_inf");
        else
            snprintf(k, sizeof k, "le_%llu", (unsigned long long)am_runtime_latency_le_us[i]);
        if (pack_kv_u64(pk, k, l.count[i]))
            return -1;
    }
    return pack_kv_u64(pk, "sum_us", l.sum_us);
}

/* "actor_types": {"TYPE.ok": n, "TYPE.errors": n, ...}: messages completed
 * per actor type. */
static int pack_types(struct node *n, msgpack_packer *pk)
{
    const struct am_runtime_type_stats *t;
    size_t k = am_runtime_get_type_stats(n->rt, &t);
    if (am_mp_pack_str(pk, "actor_types", 11) || msgpack_pack_map(pk, (uint32_t)(2 * k)))
        return -1;
    for (size_t i = 0; i < k; i++) {
        char key[96];
        snprintf(key, sizeof key, "%s.ok", t[i].type->name);
        if (pack_kv_u64(pk, key, t[i].ok))
            return -1;
        snprintf(key, sizeof key, "%s.errors", t[i].type->name);
        if (pack_kv_u64(pk, key, t[i].errors))
            return -1;
    }
    return 0;
}

static int pack_status(void *arg, msgpack_packer *pk)
{
    struct node *n = arg;
    struct am_runtime_stats rs;
    struct am_store_stats ss;
    struct am_server_stats vs;
    struct am_store_meta meta;
    char sync[48];
    am_runtime_get_stats(n->rt, &rs);
    am_store_get_stats(n->store, &ss);
    am_server_get_stats(n->srv, &vs);
    am_store_get_meta(n->store, &meta);
    if (n->cfg.sync_interval_ms)
        snprintf(sync, sizeof sync, "interval:%llu", (unsigned long long)n->cfg.sync_interval_ms);
    else
        snprintf(sync, sizeof sync, "durable");
    struct am_swim_stats ws;
    struct am_gossip_stats gs;
    char ring_hex[17];
    ring_version_hex(n, ring_hex);
    const struct am_swim *core = am_gossip_core(n->gossip);
    am_swim_get_stats(core, &ws);
    am_gossip_get_stats(n->gossip, &gs);
    uint64_t alive = 0;
    for (size_t i = 0; i < am_swim_count(core); i++) {
        struct am_swim_member m;
        am_swim_member_at(core, i, &m);
        alive += m.state == AM_MEMBER_ALIVE || m.state == AM_MEMBER_SUSPECT;
    }
    struct am_peers_stats ps;
    am_peers_get_stats(n->peers, &ps);
    struct am_fetch_stats fs;
    am_fetch_get_stats(n->fetch, &fs);
    struct am_ae_stats as;
    am_ae_get_stats(n->ae, &as);
    return msgpack_pack_map(pk, 17) || pack_kv_str(pk, "node", n->cfg.name) ||
           pack_kv_str(pk, "version", AM_VERSION_STRING) ||
           pack_kv_u64(pk, "pid", (uint64_t)getpid()) ||
           pack_kv_u64(pk, "uptime_ms", uv_now(&n->loop) - n->started_ms) ||
           pack_kv_str(pk, "sync", sync) || pack_kv_u64(pk, "incarnation", meta.incarnation) ||
           pack_kv_str(pk, "data", n->cfg.data) || am_mp_pack_str(pk, "actors", 6) ||
           msgpack_pack_map(pk, 14) || pack_kv_u64(pk, "active", rs.active) ||
           pack_kv_u64(pk, "queued", rs.queued) ||
           pack_kv_u64(pk, "activations", rs.activations) ||
           pack_kv_u64(pk, "deactivations", rs.deactivations) ||
           pack_kv_u64(pk, "calls", rs.calls) || pack_kv_u64(pk, "casts", rs.casts) ||
           pack_kv_u64(pk, "ok", rs.ok) || pack_kv_u64(pk, "errors", rs.errors) ||
           pack_kv_u64(pk, "refused", rs.refused) || pack_kv_u64(pk, "snapshots", rs.snapshots) ||
           pack_kv_u64(pk, "write_errors", rs.write_errors) ||
           pack_kv_u64(pk, "waiting", rs.waiting) || pack_kv_u64(pk, "lost", rs.lost) ||
           pack_kv_u64(pk, "fenced", rs.fenced) ||
           am_mp_pack_str(pk, "store", 5) || msgpack_pack_map(pk, 8 + AM_STORE_BATCH_BUCKETS) ||
           pack_batches(pk, &ss) ||
           pack_kv_u64(pk, "records", ss.records) || pack_kv_u64(pk, "writes", ss.writes) ||
           pack_kv_u64(pk, "commits", ss.commits) || pack_kv_u64(pk, "max_batch", ss.max_batch) ||
           pack_kv_u64(pk, "joined", ss.joined) ||
           pack_kv_u64(pk, "failed", ss.failed) || pack_kv_u64(pk, "map_size", ss.map_size) ||
           pack_kv_u64(pk, "map_grows", ss.map_grows) || am_mp_pack_str(pk, "clients", 7) ||
           msgpack_pack_map(pk, 10) || pack_kv_u64(pk, "connections", vs.connections) ||
           pack_kv_u64(pk, "accepted", vs.accepted) || pack_kv_u64(pk, "rejected", vs.rejected) ||
           pack_kv_u64(pk, "requests", vs.requests) ||
           pack_kv_u64(pk, "bad_frames", vs.bad_frames) ||
           pack_kv_u64(pk, "unauthenticated", vs.unauthenticated) ||
           pack_kv_u64(pk, "bytes_in", vs.bytes_in) || pack_kv_u64(pk, "bytes_out", vs.bytes_out) ||
           pack_kv_u64(pk, "peers", vs.peers) ||
           pack_kv_u64(pk, "peers_refused", vs.peers_refused) ||
           am_mp_pack_str(pk, "membership", 10) || msgpack_pack_map(pk, 25) ||
           pack_kv_str(pk, "profile", n->cfg.profile) ||
           pack_kv_u64(pk, "encrypted", (uint64_t)n->keyed) ||
           pack_kv_u64(pk, "members", am_swim_count(core)) || pack_kv_u64(pk, "live", alive) ||
           pack_kv_u64(pk, "probes", ws.probes) || pack_kv_u64(pk, "acks", ws.acks) ||
           pack_kv_u64(pk, "nacks", ws.nacks) ||
           pack_kv_u64(pk, "indirect_probes", ws.indirect_probes) ||
           pack_kv_u64(pk, "suspicions", ws.suspicions) ||
           pack_kv_u64(pk, "refutations", ws.refutations) ||
           pack_kv_u64(pk, "corrections", ws.corrections) ||
           pack_kv_u64(pk, "announces", ws.announces) ||
           pack_kv_u64(pk, "deaths_told", ws.deaths_told) ||
           pack_kv_u64(pk, "deaths_declared", ws.deaths_declared) ||
           pack_kv_u64(pk, "health", ws.health) || pack_kv_u64(pk, "packets_in", ws.packets_in) ||
           pack_kv_u64(pk, "packets_out", ws.packets_out) ||
           pack_kv_u64(pk, "bytes_in", ws.bytes_in) || pack_kv_u64(pk, "bytes_out", ws.bytes_out) ||
           pack_kv_u64(pk, "bad_packets", ws.bad_packets) ||
           pack_kv_u64(pk, "unauthenticated", gs.unauthenticated) ||
           pack_kv_u64(pk, "send_errors", gs.send_errors) ||
           pack_kv_u64(pk, "push_pulls", gs.streams_out + gs.streams_in) ||
           pack_kv_u64(pk, "push_pull_errors", gs.stream_errors) ||
           pack_kv_u64(pk, "conflicts", gs.conflicts) || am_mp_pack_str(pk, "ring", 4) ||
           msgpack_pack_map(pk, 4) || pack_kv_str(pk, "version", ring_hex) ||
           pack_kv_u64(pk, "members", n->ring ? am_ring_count(n->ring) : 0) ||
           pack_kv_u64(pk, "vnodes", AM_RING_VNODES) || pack_kv_u64(pk, "builds", n->ring_builds) ||
           am_mp_pack_str(pk, "routing", 7) || msgpack_pack_map(pk, 18) ||
           pack_kv_u64(pk, "forwarded", n->routed) || pack_kv_u64(pk, "received", n->forwards_in) ||
           pack_kv_u64(pk, "hop_limited", n->hop_limited) ||
           pack_kv_u64(pk, "ring_mismatches", n->ring_mismatches) ||
           pack_kv_u64(pk, "replies", ps.replies) || pack_kv_u64(pk, "refused", ps.refused) ||
           pack_kv_u64(pk, "timeouts", ps.timeouts) || pack_kv_u64(pk, "failed", ps.failed) ||
           pack_kv_u64(pk, "pending", ps.pending) ||
           pack_kv_u64(pk, "queued_bytes", ps.queued_bytes) ||
           pack_kv_u64(pk, "streams", ps.streams) || pack_kv_u64(pk, "connects", ps.connects) ||
           pack_kv_u64(pk, "accepts", ps.accepts) ||
           pack_kv_u64(pk, "stream_errors", ps.stream_errors) ||
           pack_kv_u64(pk, "bad_frames", ps.bad_frames) ||
           pack_kv_u64(pk, "bytes_in", ps.bytes_in) || pack_kv_u64(pk, "bytes_out", ps.bytes_out) ||
           pack_kv_u64(pk, "timeout_ms", n->cfg.forward_timeout_ms) ||
           am_mp_pack_str(pk, "handoff", 7) || msgpack_pack_map(pk, 11) ||
           pack_kv_u64(pk, "waiting", n->nwaiting) || pack_kv_u64(pk, "held", n->nheld) ||
           pack_kv_u64(pk, "held_total", n->held_total) ||
           pack_kv_u64(pk, "hold_expired", n->hold_expired) ||
           pack_kv_u64(pk, "sent", n->handoff.sent) ||
           pack_kv_u64(pk, "failed", n->handoff.failed) ||
           pack_kv_u64(pk, "received", n->handoff.received) ||
           pack_kv_u64(pk, "refused", n->handoff.refused) ||
           pack_kv_u64(pk, "current", n->handoff.current) ||
           pack_kv_u64(pk, "pauses", n->stalls) ||
           pack_kv_u64(pk, "declared_dead", n->declared_dead_seen) ||
           am_mp_pack_str(pk, "replication", 11) ||
           msgpack_pack_map(pk, 20) || pack_kv_u64(pk, "replicas", n->cfg.replicas) ||
           pack_kv_u64(pk, "sent", n->repl.st.sent) || pack_kv_u64(pk, "acked", n->repl.st.acked) ||
           pack_kv_u64(pk, "stale", n->repl.st.stale) ||
           pack_kv_u64(pk, "unreplicated", n->repl.st.unreplicated) ||
           pack_kv_u64(pk, "received", n->repl.st.received) ||
           pack_kv_u64(pk, "stored", n->repl.st.stored) ||
           pack_kv_u64(pk, "newer_here", n->repl.st.newer_here) ||
           pack_kv_u64(pk, "retried", n->repl.st.retried) ||
           pack_kv_u64(pk, "retry_pending", n->repl.st.retry_pending) ||
           pack_kv_u64(pk, "retry_dropped", n->repl.st.retry_dropped) ||
           pack_kv_u64(pk, "repaired", n->handoff.repaired) ||
           pack_kv_u64(pk, "fetches", fs.fetches) || pack_kv_u64(pk, "fetched_newer", fs.newer) ||
           pack_kv_u64(pk, "fetch_timeouts", fs.timeouts) ||
           pack_kv_u64(pk, "fetches_answered", fs.answered) ||
           pack_kv_u64(pk, "ae_rounds", as.rounds) || pack_kv_u64(pk, "ae_answered", as.answered) ||
           pack_kv_u64(pk, "ae_differ", as.differ) || pack_kv_u64(pk, "ae_queued", as.queued) ||
           pack_latency(n, pk) ||
           pack_types(n, pk);
}

/* A member change reaches the ring this long after it (later changes
 * within the delay join the same build). */
#define RING_DELAY_MS 50

static void on_release_timer(uv_timer_t *h);
static void ring_joined(struct node *n);
static void send_done(struct node *n, const struct am_ring *from, const struct am_ring *to,
                      uint64_t delay_ms);
static void waiting_prune(struct node *n);
/* route_call's again: a call run for the first time, a held call run once
 * more (its FORWARD was counted already), or one whose actor's copies were
 * fetched (fetch.h: not fetched again). */
enum { AGAIN_NO = 0, AGAIN_HELD = 1, AGAIN_FETCHED = 2 };
static int route_call(struct node *n, const struct am_request *r, am_reply_fn cb, void *ctx,
                      char *err, size_t errlen, int again);

/* A copy of r's members as a new ring (NULL when out of memory). */
static struct am_ring *ring_copy(const struct am_ring *r)
{
    size_t count = am_ring_count(r);
    const char **names = am_malloc((count ? count : 1) * sizeof *names);
    struct am_ring *out = NULL;
    if (!names)
        return NULL;
    for (size_t i = 0; i < count; i++)
        names[i] = am_ring_member(r, (int)i);
    if (am_ring_build(&out, names, count, am_ring_vnodes(r)))
        out = NULL;
    am_free(names);
    return out;
}

/* Builds the ring from the view: every alive or suspect member. */
static void ring_rebuild(struct node *n)
{
    const struct am_swim *core = am_gossip_core(n->gossip);
    size_t count = am_swim_count(core), live = 0;
    const char **names = am_malloc((count ? count : 1) * sizeof *names);
    if (!names) {
        am_log_warn("out of memory building the ring; keeping the previous one");
        return;
    }
    for (size_t i = 0; i < count; i++) {
        struct am_swim_member m;
        am_swim_member_at(core, i, &m);
        if (m.state == AM_MEMBER_ALIVE || m.state == AM_MEMBER_SUSPECT)
            names[live++] = m.name;
    }
    struct am_ring *r;
    int rc = am_ring_build(&r, names, live, AM_RING_VNODES);
    am_free(names);
    struct am_peer **peers = NULL;
    if (rc == 0 && !(peers = am_calloc(live ? live : 1, sizeof *peers))) {
        am_ring_free(r);
        rc = -ENOMEM;
    }
    if (rc) {
        am_log_warn("cannot build the ring: %s; keeping the previous one", am_strerror(rc));
        return;
    }
    n->self_idx = am_ring_find(r, n->cfg.name);
    for (size_t i = 0; i < live; i++) {
        struct am_swim_member m;
        if ((int)i == n->self_idx || !n->peers || am_swim_find(core, am_ring_member(r, (int)i), &m))
            continue;
        peers[i] = am_peers_get(n->peers, m.name, m.addr); /* NULL: out of memory */
    }
    am_ring_free(n->ring);
    am_free(n->ring_peers);
    n->ring = r;
    n->ring_peers = peers;
    n->repl.ring = r;
    n->repl.ring_peers = peers;
    n->repl.self_idx = n->self_idx;
    if (live > 1 && !n->seen_others)
        ring_joined(n);
    waiting_prune(n);
    if (n->ring_timer_open && (live > 1 || n->self_idx < 0))
        uv_timer_start(&n->release_timer, on_release_timer, 0, 0);
    n->ring_builds++;
    am_log_debug("ring %016llx: %zu members", (unsigned long long)am_ring_version(r), live);
}

static void on_ring_timer(uv_timer_t *h)
{
    ring_rebuild(h->data);
}

/* After a ring change, the actors this node no longer owns are deactivated
 * (their state written first), so that an actor is active on its owner
 * only: at once when quiet, else retried every RELEASE_RETRY_MS until their
 * messages and writes are done. Calls for them already go to the new owner. */
#define RELEASE_RETRY_MS 10

static int owned_here(void *arg, const char *key, size_t len)
{
    struct node *n = arg;
    return am_ring_owner(n->ring, am_ring_key_of(key, len)) == n->self_idx;
}

static void maybe_move(struct node *n);

#define RELEASED_MAX (4u << 20)

static void note_released(void *arg, const char *key, size_t len)
{
    struct node *n = arg;
    static const char nul = '\0';
    if (n->released.len + len + 1 <= RELEASED_MAX &&
        am_buf_reserve(&n->released, len + 1) == 0) { /* else: handed off in store order */
        am_buf_append(&n->released, key, len);
        am_buf_append(&n->released, &nul, 1);
    }
}

static void on_release_timer(uv_timer_t *h)
{
    struct node *n = h->data;
    if (n->stopping || !n->ring || am_ring_count(n->ring) == 0)
        return;
    if (am_runtime_release(n->rt, owned_here, note_released, n))
        uv_timer_start(h, on_release_timer, RELEASE_RETRY_MS, 0);
    else
        maybe_move(n);
}

/* ---- handoff to members that join ---------------------------------------- */

/* How long a joining node holds the calls for the actors it gained from a
 * member that has not said HANDOFF_DONE: three quarters of
 * --forward-timeout, so that a held call forwarded by another node is
 * answered before that node gives up on it; then it serves them from what
 * its own data directory holds (and logs it). */
#define HOLD_MS(n) ((uint64_t)(n)->cfg.forward_timeout_ms * 3 / 4)
/* Calls held at once, at most; beyond, `unavailable` (retry). */
#define HOLD_MAX 65536
/* A member that has not handed over after this long is no longer waited
 * for: its former actors start from what this node holds (logged, counted
 * in hold_expired). Until then a call held longer than HOLD_MS fails with
 * `unavailable` (retry): it is not served from a copy that may be older than
 * the one the member still has. */
#define WAIT_MAX_MS(n) (4 * HOLD_MS(n))
/* A joining node's HANDOFF_DONE to the members it met goes out this long
 * after it met them (see ring_joined). */
#define JOIN_DONE_DELAY_MS 1000

struct waiting {
    char name[AM_MAX_PEER_NAME + 1];
    uint64_t until;
};

/* A call held while its actor's previous owner hands it over: a copy of
 * the request, and whom to answer. */
struct held {
    struct held *next;
    uint64_t since;
    am_reply_fn cb;
    void *ctx;
    struct am_request r;
    uint8_t bytes[]; /* type, id, action, payload */
};

static struct am_handoff_env handoff_env(struct node *n);
static struct am_handoff_env move_env(struct node *n);

static int is_waiting(const struct node *n, const char *name)
{
    for (size_t i = 0; i < n->nwaiting; i++)
        if (strcmp(n->waiting[i].name, name) == 0)
            return 1;
    return 0;
}

/* Runs a call that waited once more: routing, then here or onwards
 * (held again if it must still wait). */
static void rerun(struct node *n, struct am_request *r, am_reply_fn cb, void *ctx, int again)
{
    char err[400];
    int kind = r->kind == AM_MSG_FORWARD ? r->fwd_kind : r->kind;
    int rc = route_call(n, r, cb, ctx, err, sizeof err, again);
    if (rc == 0) {
        rc = am_runtime_submit(n->rt, r->id, r->type, r->type_len, r->actor, r->actor_len,
                               r->action, r->action_len, r->payload, r->payload_len,
                               kind == AM_MSG_CALL ? cb : NULL, ctx, err, sizeof err);
        if (rc == 0 && kind != AM_MSG_CALL)
            cb(ctx, r->id, AM_ST_OK, (const uint8_t *)"\xc0", 1);
    }
    if (rc < 0) {
        uint8_t body[260];
        size_t len = strlen(err) > 255 ? 255 : strlen(err);
        body[0] = 0xd9;
        body[1] = (uint8_t)len;
        memcpy(body + 2, err, len);
        cb(ctx, r->id, am_status_of(rc), body, len + 2);
    }
}

/* Anti-entropy rounds run only on a settled ring: no move, no wait. */
static int ae_settled(void *arg)
{
    struct node *n = arg;
    return !n->moving && !n->nwaiting && !n->stopping && n->ring && n->self_idx >= 0 &&
           (!n->cfg.njoins || n->seen_others);
}

/* A fetch (fetch.h) is over: the calls for its actor run. */
static void rerun_fetched(void *arg, struct am_request *r, am_reply_fn cb, void *ctx)
{
    rerun(arg, r, cb, ctx, AGAIN_FETCHED);
}

/* Runs each held call again (routing, then here or onwards); the ones still
 * waiting are held again. */
static void release_held(struct node *n)
{
    struct held *list = n->held;
    n->held = NULL;
    n->held_tail = &n->held;
    n->nheld = 0;
    while (list) {
        struct held *h = list;
        list = h->next;
        rerun(n, &h->r, h->cb, h->ctx, AGAIN_HELD);
        am_free(h);
    }
}

/* Remembers that name said HANDOFF_DONE now (in finished, with the time
 * in until); entries older than HOLD_MS are dropped first. */
static void note_finished(struct node *n, const char *name)
{
    uint64_t now = uv_now(&n->loop);
    size_t kept = 0;
    for (size_t i = 0; i < n->nfinished; i++)
        if (n->finished[i].until + HOLD_MS(n) >= now)
            n->finished[kept++] = n->finished[i];
    n->nfinished = kept;
    if (n->nfinished == n->finished_cap) {
        size_t cap = n->finished_cap ? 2 * n->finished_cap : 16;
        struct waiting *f = am_realloc(n->finished, cap * sizeof *f);
        if (!f)
            return;
        n->finished = f;
        n->finished_cap = cap;
    }
    snprintf(n->finished[n->nfinished].name, sizeof n->finished[n->nfinished].name, "%s", name);
    n->finished[n->nfinished++].until = now;
}

static void waiting_remove(struct node *n, size_t i, const char *why)
{
    am_log_info("no longer waiting for %s's handoff: %s", n->waiting[i].name, why);
    note_finished(n, n->waiting[i].name);
    n->waiting[i] = n->waiting[--n->nwaiting];
    if (n->nwaiting == 0) {
        am_ring_free(n->wo_self);
        n->wo_self = NULL;
        uv_timer_stop(&n->hold_timer);
    }
}

/* Drops the members that left the ring from waiting, rebuilds the ring
 * without this node for the others, and runs the held calls again. */
/* 1 when name said HANDOFF_DONE within the last HOLD_MS. */
static int has_finished(const struct node *n, const char *name)
{
    uint64_t now = uv_now((uv_loop_t *)&n->loop);
    for (size_t i = 0; i < n->nfinished; i++)
        if (n->finished[i].until + HOLD_MS(n) >= now && strcmp(n->finished[i].name, name) == 0)
            return 1;
    return 0;
}

/* Within the window, members new to the ring are waited for too. */
static void waiting_extend(struct node *n)
{
    uint64_t now = uv_now(&n->loop);
    size_t count = n->ring ? am_ring_count(n->ring) : 0;
    if (now >= n->window_until || n->nwaiting == 0)
        return;
    struct waiting *w = am_realloc(n->waiting, (n->nwaiting + count + 1) * sizeof *w);
    if (!w)
        return;
    n->waiting = w;
    for (size_t i = 0; i < count; i++) {
        const char *name = am_ring_member(n->ring, (int)i);
        if ((int)i == n->self_idx || is_waiting(n, name) || has_finished(n, name))
            continue;
        snprintf(w[n->nwaiting].name, sizeof w[n->nwaiting].name, "%s", name);
        w[n->nwaiting++].until = now + WAIT_MAX_MS(n);
        am_log_info("waiting for %s's handoff too (it joined this node's view late)", name);
    }
}

static void waiting_prune(struct node *n)
{
    if (n->nwaiting == 0)
        return;
    waiting_extend(n);
    for (size_t i = 0; i < n->nwaiting;) {
        if (am_ring_find(n->ring, n->waiting[i].name) < 0)
            waiting_remove(n, i, "it is no longer a member");
        else
            i++;
    }
    if (n->nwaiting) {
        struct am_ring *w = NULL;
        size_t count = am_ring_count(n->ring), k = 0;
        const char **names = am_malloc((count ? count : 1) * sizeof *names);
        if (names) {
            for (size_t i = 0; i < count; i++)
                if ((int)i != n->self_idx)
                    names[k++] = am_ring_member(n->ring, (int)i);
            if (am_ring_build(&w, names, k, AM_RING_VNODES))
                w = NULL;
            am_free(names);
        }
        am_ring_free(n->wo_self);
        n->wo_self = w;
        if (!w) { /* out of memory: stop holding rather than hold blind */
            n->nwaiting = 0;
            am_log_warn("out of memory: not waiting for handoffs");
        }
    }
    release_held(n);
}

/* Fails the held calls that waited HOLD_MS: a caller gets `unavailable`
 * rather than a reply from a copy that may be old. */
static void fail_old_held(struct node *n, uint64_t now)
{
    struct held **pp = &n->held;
    while (*pp) {
        struct held *h = *pp;
        if (now - h->since < HOLD_MS(n)) {
            pp = &h->next;
            continue;
        }
        *pp = h->next;
        n->nheld--;
        char msg[200];
        uint8_t body[210];
        int len = snprintf(msg, sizeof msg,
                           "%s waits for the previous owner of %.*s/%.*s to hand it over; retry",
                           n->cfg.name, (int)h->r.type_len, h->r.type, (int)h->r.actor_len,
                           h->r.actor);
        size_t m = len < 0 ? 0 : (size_t)len < sizeof msg ? (size_t)len : sizeof msg - 1;
        body[0] = 0xd9;
        body[1] = (uint8_t)m;
        memcpy(body + 2, msg, m);
        h->cb(h->ctx, h->r.id, AM_ST_UNAVAILABLE, body, m + 2);
        am_free(h);
    }
    n->held_tail = &n->held;
    while (*n->held_tail)
        n->held_tail = &(*n->held_tail)->next;
}

static void on_hold_timer(uv_timer_t *h)
{
    struct node *n = h->data;
    uint64_t now = uv_now(&n->loop);
    size_t before = n->nwaiting;
    for (size_t i = 0; i < n->nwaiting;) {
        if (now >= n->waiting[i].until) {
            n->hold_expired++;
            am_log_warn("%s did not finish its handoff in %llu ms; its former actors start "
                        "from what is here",
                        n->waiting[i].name, (unsigned long long)WAIT_MAX_MS(n));
            waiting_remove(n, i, "timed out");
        } else {
            i++;
        }
    }
    if (n->nwaiting != before)
        release_held(n);
    fail_old_held(n, now);
}

/* The first ring with other members: a node started with --join waits for
 * the handoff of every other member before it serves the actors it gained
 * from them, and hands nothing off itself from its time alone (it was not
 * the cluster; its data directory may hold old copies). A node started
 * without --join (the first of a cluster) hands off what moved as usual. */
/* Waits for the HANDOFF_DONE of every other member of the ring, holding
 * the calls for the actors each of them owned without this node. */
static void start_waiting(struct node *n, const char *why)
{
    size_t count = am_ring_count(n->ring);
    struct waiting *w = am_calloc(count ? count : 1, sizeof *w);
    if (!w)
        return;
    am_free(n->waiting);
    n->waiting = w;
    n->nwaiting = 0;
    am_hset_clear(&n->handed);
    uint64_t now = uv_now(&n->loop), until = now + WAIT_MAX_MS(n);
    n->window_until = now + HOLD_MS(n);
    /* A HANDOFF_DONE can arrive just before this node sees the ring it
     * answers (the sender built it first): one from the last HOLD_MS
     * counts (note_finished keeps no older one). */
    for (size_t i = 0; i < count; i++) {
        if ((int)i == n->self_idx || has_finished(n, am_ring_member(n->ring, (int)i)))
            continue;
        snprintf(n->waiting[n->nwaiting].name, sizeof n->waiting[n->nwaiting].name, "%s",
                 am_ring_member(n->ring, (int)i));
        n->waiting[n->nwaiting++].until = until;
    }
    am_log_info("%s: holding calls for the actors %zu members hand over (a call at most %llu "
                "ms, a member at most %llu ms)",
                why, n->nwaiting, (unsigned long long)HOLD_MS(n),
                (unsigned long long)WAIT_MAX_MS(n));
    uv_timer_start(&n->hold_timer, on_hold_timer, 100, 100);
}

static void ring_joined(struct node *n)
{
    n->seen_others = 1;
    if (!n->cfg.njoins || n->self_idx < 0)
        return;
    am_ring_free(n->base);
    n->base = ring_copy(n->ring);
    /* Another node joining at the same time may wait for this one, which
     * has nothing for it: told so once gossip has had a moment to tell the
     * others about this node (they refuse its peer stream until then). */
    send_done(n, NULL, n->ring, JOIN_DONE_DELAY_MS);
    start_waiting(n, "joined");
}

/* The other members declared this node dead: it was paused or cut off
 * long enough, and they placed its actors elsewhere and served them
 * meanwhile. What it has in memory may be older than that: it drops every
 * active actor and, like a node that joins, holds the calls for the actors
 * it owns until the members that served them have handed them back
 * (HANDOFF_DONE, once their rings have it again), or the bound. */
static void maybe_replaced(struct node *n, const char *why)
{
    if (n->stopping || !n->ring || n->self_idx < 0 || am_ring_count(n->ring) < 2)
        return;
    size_t dropped = am_runtime_fence_all(n->rt);
    am_log_warn("%s: the other members may have served this node's actors meanwhile; it "
                "dropped its %zu active actors from memory",
                why, dropped);
    start_waiting(n, "back from a pause");
    waiting_prune(n);
}

#define STALL_CHECK_MS 250

/* The loop runs at now (ms, loop time): was it stopped for stall_ms or
 * more since it last ran? Checked by a timer and by every call routed:
 * after SIGCONT the loop runs the I/O that arrived during the pause before
 * any timer, so a call could otherwise run on an actor another member
 * served meanwhile, from the copy in memory. */
static void stall_check(struct node *n, uint64_t now)
{
    uint64_t gap = now > n->stall_last ? now - n->stall_last : 0;
    n->stall_last = now;
    if (gap < n->stall_ms)
        return;
    char why[120];
    n->stalls++;
    snprintf(why, sizeof why, "this node did not run for %llu ms (paused?)",
             (unsigned long long)gap);
    maybe_replaced(n, why);
}

static void on_stall_timer(uv_timer_t *h)
{
    struct node *n = h->data;
    stall_check(n, uv_now(&n->loop));
}

/* The previous owner of key handed it over (handoff.h, env.taken): its
 * newest copy is here, so its calls run now, and later ones are not held,
 * without waiting for the rest of that member's handoff. */
static void on_taken(void *arg, const char *key, size_t len)
{
    struct node *n = arg;
    if (!n->nwaiting)
        return;
    am_hset_add(&n->handed, am_ring_key_of(key, len)); /* no memory: waits for DONE */
    struct held *list = NULL, **tail = &list;
    for (struct held **pp = &n->held; *pp;) {
        struct held *h = *pp;
        const struct am_request *r = &h->r;
        if ((size_t)r->type_len + 1 + r->actor_len == len &&
            memcmp(key, r->type, r->type_len) == 0 && key[r->type_len] == '/' &&
            memcmp(key + r->type_len + 1, r->actor, r->actor_len) == 0) {
            *pp = h->next;
            n->nheld--;
            h->next = NULL;
            *tail = h;
            tail = &h->next;
        } else {
            pp = &h->next;
        }
    }
    n->held_tail = &n->held;
    while (*n->held_tail)
        n->held_tail = &(*n->held_tail)->next;
    while (list) {
        struct held *h = list;
        list = h->next;
        rerun(n, &h->r, h->cb, h->ctx, AGAIN_HELD);
        am_free(h);
    }
}

/* route(): 1 when the call was held (its actor's previous owner has not
 * handed it over yet), 0 when it may run here, or a negative code. */
static int maybe_hold(struct node *n, const struct am_request *r, am_reply_fn cb, void *ctx,
                      char *err, size_t errlen)
{
    char key[AM_MAX_TYPE + 1 + AM_MAX_ID + 1];
    const char *prev;
    int len = snprintf(key, sizeof key, "%.*s/%.*s", (int)r->type_len, r->type, (int)r->actor_len,
                       r->actor);
    if (!am_handoff_previous_owner(n->ring, n->wo_self, n->self_idx, key, (size_t)len, &prev) ||
        !is_waiting(n, prev) || am_hset_has(&n->handed, am_ring_key_of(key, (size_t)len)))
        return 0;
    if (n->nheld >= HOLD_MAX)
        return am_errf(err, errlen, AM_EUNAVAIL,
                       "%s is taking over %s from %s and holds %d calls already; retry",
                       n->cfg.name, key, prev, HOLD_MAX);
    struct held *h = am_malloc(sizeof *h + am_request_call_bytes(r));
    if (!h)
        return am_errf(err, errlen, AM_EOVERLOAD, "out of memory holding a call; retry");
    h->next = NULL;
    h->since = uv_now(&n->loop);
    h->cb = cb;
    h->ctx = ctx;
    am_request_copy_call(&h->r, r, h->bytes);
    *n->held_tail = h;
    n->held_tail = &h->next;
    n->nheld++;
    n->held_total++;
    return 1;
}

/* route(): a call for an actor this node owns and has not in memory waits
 * while the members that may hold a newer copy are asked (fetch.h); 1 when
 * it waits, 0 when it may run now, or a negative code. */
static int maybe_fetch(struct node *n, const struct am_request *r, am_reply_fn cb, void *ctx,
                       char *err, size_t errlen)
{
    char key[AM_MAX_TYPE + 1 + AM_MAX_ID];
    size_t len = (size_t)r->type_len + 1 + r->actor_len;
    if (!n->fetch || r->type_len > AM_MAX_TYPE || r->actor_len > AM_MAX_ID)
        return 0;
    memcpy(key, r->type, r->type_len);
    key[r->type_len] = '/';
    memcpy(key + r->type_len + 1, r->actor, r->actor_len);
    if (am_runtime_is_active(n->rt, key, len))
        return 0;
    return am_fetch_hold(n->fetch, r, key, len, cb, ctx, err, errlen);
}

struct move {
    struct node *n;
    struct am_ring *to;
};

/* A HANDOFF_DONE to deliver. A newcomer may refuse this node's peer
 * stream until gossip has told it about this node, so a failed one is sent
 * again every DONE_RETRY_MS while the member is on the ring, for at most
 * DONE_TRIES attempts. */
#define DONE_RETRY_MS 200
#define DONE_TRIES 100

struct done_out {
    struct done_out *next;
    struct node *n;
    uint64_t at;
    unsigned tries;
    int sending;
    char name[AM_MAX_PEER_NAME + 1];
};

static void done_unlink(struct node *n, struct done_out *d)
{
    struct done_out **pp = &n->dones;
    while (*pp != d)
        pp = &(*pp)->next;
    *pp = d->next;
    am_free(d);
}

static void on_done_timer(uv_timer_t *h);

static void on_done_reply(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct done_out *d = ctx;
    struct node *n = d->n;
    (void)id, (void)body, (void)len;
    d->sending = 0;
    if (status == AM_ST_OK || n->stopping) {
        done_unlink(n, d);
        return;
    }
    d->at = uv_now(&n->loop) + DONE_RETRY_MS;
    if (!uv_is_active((uv_handle_t *)&n->done_timer))
        uv_timer_start(&n->done_timer, on_done_timer, DONE_RETRY_MS, 0);
}

static void on_done_timer(uv_timer_t *h)
{
    struct node *n = h->data;
    uint64_t now = uv_now(&n->loop), next = 0;
    char err[300];
    struct done_out *d = n->dones;
    while (d) {
        struct done_out *following = d->next;
        struct am_swim_member sm;
        if (d->sending) {
            d = following;
            continue;
        }
        if (n->stopping || !n->ring || am_ring_find(n->ring, d->name) < 0 ||
            d->tries >= DONE_TRIES || am_swim_find(am_gossip_core(n->gossip), d->name, &sm)) {
            if (!n->stopping && d->tries >= DONE_TRIES)
                am_log_warn("could not tell %s the handoff is done", d->name);
            done_unlink(n, d);
            d = following;
            continue;
        } else if (d->at <= now) {
            struct am_peer *p = am_peers_get(n->peers, sm.name, sm.addr);
            struct am_request r = {.kind = AM_MSG_HANDOFF_DONE};
            d->tries++;
            if (p && am_peer_forward(p, &r, 0, 0, 0, on_done_reply, d, err, sizeof err) == 0)
                d->sending = 1;
            else
                d->at = now + DONE_RETRY_MS;
        }
        if (!d->sending && (next == 0 || d->at < next))
            next = d->at;
        d = following;
    }
    if (next)
        uv_timer_start(&n->done_timer, on_done_timer, next > now ? next - now : 0, 0);
}

/* Tells each member of to that is not in from (NULL: every other member)
 * that this node has handed it everything it had for it, after delay_ms. */
static void send_done(struct node *n, const struct am_ring *from, const struct am_ring *to,
                      uint64_t delay_ms)
{
    for (size_t i = 0; n->peers && !n->stopping && i < am_ring_count(to); i++) {
        const char *name = am_ring_member(to, (int)i);
        if (strcmp(name, n->cfg.name) == 0 || (from && am_ring_find(from, name) >= 0))
            continue;
        struct done_out *d = am_calloc(1, sizeof *d);
        if (!d) {
            am_log_warn("out of memory: cannot tell %s the handoff is done", name);
            continue;
        }
        d->n = n;
        d->at = uv_now(&n->loop) + delay_ms;
        snprintf(d->name, sizeof d->name, "%s", name);
        d->next = n->dones;
        n->dones = d;
    }
    if (n->dones)
        uv_timer_start(&n->done_timer, on_done_timer, delay_ms, 0);
}

/* A move finished: each member that is in the new ring and was not in the
 * old one is told this node has handed it everything. */
static void on_moved(void *arg)
{
    struct move *m = arg;
    struct node *n = m->n;
    if (!n->abort_moves)
        send_done(n, n->base, m->to, 0);
    am_ring_free(n->base);
    n->base = m->to;
    am_free(m);
    n->moving = 0;
    maybe_move(n);
}

/* Hands what changed owner since base to its new owners (one move at a
 * time; a ring change during a move starts another after it). */
static void maybe_move(struct node *n)
{
    if (n->moving || n->stopping || !n->ring || !n->peers)
        return;
    if (!n->base) {
        n->base = ring_copy(n->ring);
        n->released.len = 0;
        return;
    }
    if (am_ring_version(n->base) == am_ring_version(n->ring)) {
        n->released.len = 0;
        return;
    }
    struct move *m = am_malloc(sizeof *m);
    struct am_ring *to = ring_copy(n->ring);
    if (!m || !to) {
        am_free(m);
        am_ring_free(to);
        am_log_warn("out of memory: actors that moved to new members are not handed off");
        return;
    }
    m->n = n;
    m->to = to;
    n->moving = 1;
    struct am_handoff_env env = move_env(n);
    int rc = am_handoff_move(&env, n->base, to, (const char *)n->released.data, n->released.len,
                             &n->handoff, on_moved, m);
    n->released.len = 0;
    if (rc) {
        am_log_error("cannot hand off the actors that moved: %s", am_strerror(rc));
        on_moved(m);
    }
}

/* A stopping node waits for no handoff: the held calls run now, before the
 * runtime stops taking messages. */
static void stop_holding(struct node *n)
{
    n->nwaiting = 0;
    uv_timer_stop(&n->hold_timer);
    release_held(n);
    am_fetch_stop(n->fetch);
}

static void on_handoff_done(void *arg, const char *peer)
{
    struct node *n = arg;
    for (size_t i = 0; i < n->nwaiting; i++) {
        if (strcmp(n->waiting[i].name, peer) == 0) {
            waiting_remove(n, i, "it handed everything over");
            release_held(n);
            return;
        }
    }
    /* Not waited for (yet): kept, in case this node is about to wait. */
    note_finished(n, peer);
}

/* RING: {"version", "vnodes", "members": [{"name", "share"}...]}. */
static int pack_ring(void *arg, msgpack_packer *pk)
{
    struct node *n = arg;
    size_t count = n->ring ? am_ring_count(n->ring) : 0;
    double *shares = am_malloc((count ? count : 1) * sizeof *shares);
    if (!shares)
        return -ENOMEM;
    if (count)
        am_ring_shares(n->ring, shares);
    char version[17];
    ring_version_hex(n, version);
    int rc = msgpack_pack_map(pk, 3) || pack_kv_str(pk, "version", version) ||
             pack_kv_u64(pk, "vnodes", AM_RING_VNODES) || am_mp_pack_str(pk, "members", 7) ||
             msgpack_pack_array(pk, count);
    for (size_t i = 0; !rc && i < count; i++)
        rc = msgpack_pack_map(pk, 2) || pack_kv_str(pk, "name", am_ring_member(n->ring, (int)i)) ||
             am_mp_pack_str(pk, "share", 5) || msgpack_pack_double(pk, shares[i]);
    am_free(shares);
    return rc;
}

/* MEMBERS: {"members": [{"name", "addr", "state", "incarnation"}...]}. */
static int pack_members(void *arg, msgpack_packer *pk)
{
    struct node *n = arg;
    const struct am_swim *core = am_gossip_core(n->gossip);
    size_t count = am_swim_count(core);
    int rc = msgpack_pack_map(pk, 1) || am_mp_pack_str(pk, "members", 7) ||
             msgpack_pack_array(pk, count);
    for (size_t i = 0; !rc && i < count; i++) {
        struct am_swim_member m;
        const char *st;
        am_swim_member_at(core, i, &m);
        st = am_member_state_name(m.state);
        rc = msgpack_pack_map(pk, 4) || pack_kv_str(pk, "name", m.name) ||
             pack_kv_str(pk, "addr", m.addr) || pack_kv_str(pk, "state", st) ||
             pack_kv_u64(pk, "incarnation", m.incarnation);
    }
    return rc;
}

static int sync_members(void *arg, const uint8_t *msg, size_t len, struct am_buf *reply)
{
    struct node *n = arg;
    if (!n->gossip)
        return AM_ESHUTDOWN;
    return am_gossip_sync(n->gossip, msg, len, reply);
}

/* CALL, CAST and FORWARD: run here when this node owns the actor by its
 * view, else hand the call to the owner (docs/protocol.md, "Routing"). */
static int route(void *arg, const struct am_request *r, am_reply_fn cb, void *ctx, char *err,
                 size_t errlen)
{
    return route_call(arg, r, cb, ctx, err, errlen, AGAIN_NO);
}

/* again: AGAIN_NO, AGAIN_HELD or AGAIN_FETCHED (above). */
static int route_call(struct node *n, const struct am_request *r, am_reply_fn cb, void *ctx,
                      char *err, size_t errlen, int again)
{
    unsigned hops = 0;
    if (!again)
        stall_check(n, uv_now(&n->loop));
    uint64_t version = n->ring ? am_ring_version(n->ring) : 0;
    if (r->kind == AM_MSG_FORWARD)
        hops = r->hops;
    if (r->kind == AM_MSG_FORWARD && !again) {
        n->forwards_in++;
        n->ring_mismatches += r->ring_version != version;
    }
    /* A node started with --join that has not met the cluster yet does
     * not know who owns what: it would serve actors from its own, maybe
     * old, copies while their owners serve them too. */
    if (n->cfg.njoins && !n->seen_others)
        return am_errf(err, errlen, AM_EUNAVAIL,
                       "%s is joining the cluster and has not met another member yet; retry",
                       n->cfg.name);
    /* Alone (or with no ring yet) this node runs everything: no hashing. */
    if (!n->ring || am_ring_count(n->ring) == 0 ||
        (am_ring_count(n->ring) == 1 && n->self_idx == 0))
        return 0;
    int owner = am_ring_owner(n->ring, am_ring_key(r->type, r->type_len, r->actor, r->actor_len));
    if (owner == n->self_idx) {
        int rc = n->nwaiting ? maybe_hold(n, r, cb, ctx, err, errlen) : 0;
        if (rc || again == AGAIN_FETCHED)
            return rc;
        return maybe_fetch(n, r, cb, ctx, err, errlen);
    }
    const char *name = am_ring_member(n->ring, owner);
    /* The owner would refuse it too; checked here so that an oversized call
     * is answered like a local one instead of growing into a FORWARD over
     * the owner's frame limit (which closes the peer stream). */
    if (r->payload_len > n->cfg.max_payload)
        return am_errf(err, errlen, AM_ETOOBIG,
                       "payload of %u bytes exceeds the limit of %zu bytes", r->payload_len,
                       n->cfg.max_payload);
    if (hops >= AM_MAX_HOPS) {
        n->hop_limited++;
        return am_errf(err, errlen, AM_EUNAVAIL,
                       "%.*s/%.*s was forwarded %u times and this node's view (ring %016llx) "
                       "still places it on %s: the nodes' views differ; retry once they agree",
                       (int)r->type_len, r->type, (int)r->actor_len, r->actor, hops,
                       (unsigned long long)version, name);
    }
    struct am_peer *p = n->ring_peers[owner];
    if (!p)
        return am_errf(err, errlen, AM_EUNAVAIL, "owner %s of %.*s/%.*s is not reachable yet", name,
                       (int)r->type_len, r->type, (int)r->actor_len, r->actor);
    int rc = am_peer_forward(p, r, hops + 1, version, r->id, cb, ctx, err, errlen);
    if (rc)
        return rc;
    n->routed++;
    return 1;
}

static struct am_handoff_env handoff_env(struct node *n)
{
    struct am_handoff_env env = {
        .loop = &n->loop,
        .store = n->store,
        .rt = n->rt,
        .peers = n->peers,
        .core = n->gossip ? am_gossip_core(n->gossip) : NULL,
        .self = n->cfg.name,
        .copies = n->cfg.replicas,
        .repl = {am_replication_send, &n->repl},
        .taken = on_taken,
        .taken_arg = n,
    };
    return env;
}

/* The environment of a move (members joined or went): it stops sending
 * when the node stops. */
static struct am_handoff_env move_env(struct node *n)
{
    struct am_handoff_env env = handoff_env(n);
    env.abort = &n->abort_moves;
    return env;
}

/* HANDOFF from a leaving or former owner (handoff.h), REPLICATE from an
 * owner (replica.h). */
static int take_handoff(void *arg, const char *peer, const struct am_request *r, am_reply_fn cb,
                        void *ctx, char *err, size_t errlen)
{
    struct node *n = arg;
    struct am_handoff_env env = handoff_env(n);
    if (r->kind == AM_MSG_REPLICATE)
        return am_replication_take(&n->repl, peer, r, cb, ctx, err, errlen);
    if (r->kind == AM_MSG_FETCH) {
        if (!n->fetch)
            return am_errf(err, errlen, AM_ESHUTDOWN, "%s is stopping", n->cfg.name);
        am_fetch_answer(n->fetch, r, cb, ctx);
        return 0;
    }
    if (r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS) {
        if (!n->ae)
            return am_errf(err, errlen, AM_ESHUTDOWN, "%s is stopping", n->cfg.name);
        am_ae_answer(n->ae, peer, r, cb, ctx);
        return 0;
    }
    if (n->stopping)
        return am_errf(err, errlen, AM_ESHUTDOWN, "%s is stopping; handoff not taken", n->cfg.name);
    return am_handoff_take(&env, n->ring, n->wo_self, is_waiting(n, peer), peer, r, cb, ctx,
                           &n->handoff, err, errlen);
}

/* HELLO role "peer": a live member of this node's view, connecting from
 * the host it advertises. */
static int check_peer(void *arg, const char *name, size_t len, const struct sockaddr_in *from,
                      struct am_peer **peer, char *err, size_t errlen)
{
    struct node *n = arg;
    char nm[AM_MAX_PEER_NAME + 1], host[INET_ADDRSTRLEN];
    struct am_swim_member m;
    struct sockaddr_in adv;
    snprintf(nm, sizeof nm, "%.*s", (int)len, name);
    uv_ip4_name(from, host, sizeof host);
    if (!n->gossip || am_swim_find(am_gossip_core(n->gossip), nm, &m) ||
        (m.state != AM_MEMBER_ALIVE && m.state != AM_MEMBER_SUSPECT) ||
        strcmp(nm, n->cfg.name) == 0)
        return am_errf(err, errlen, AM_EPROTO, "'%s' (from %s) is not a live member of %s's view",
                       nm, host, n->cfg.name);
    if (am_addr_parse(m.addr, 0, &adv) || adv.sin_addr.s_addr != from->sin_addr.s_addr)
        return am_errf(err, errlen, AM_EPROTO,
                       "'%s' is a member at %s, but this stream comes from %s", nm, m.addr, host);
    if (n->peers)
        *peer = am_peers_get(n->peers, nm, m.addr); /* NULL: out of memory, serve only */
    return 0;
}

/* The peer set's I/O is the server's (server.h). */
static void *dial_peer(void *arg, struct am_peer *p, const char *name,
                       const struct sockaddr_in *to, char *err, size_t errlen)
{
    struct node *n = arg;
    if (!n->srv) {
        snprintf(err, errlen, "this node is stopping");
        return NULL;
    }
    return am_server_dial(n->srv, p, name, to, err, errlen);
}

/* Frees the rings and handoff state and closes their timers (once). */
static void placement_close(struct node *n)
{
    am_fetch_free(n->fetch);
    n->fetch = NULL;
    am_ae_free(n->ae);
    n->ae = NULL;
    am_replication_close(&n->repl);
    if (n->ring_timer_open) {
        uv_close((uv_handle_t *)&n->ring_timer, NULL);
        uv_close((uv_handle_t *)&n->release_timer, NULL);
        uv_close((uv_handle_t *)&n->hold_timer, NULL);
        uv_close((uv_handle_t *)&n->done_timer, NULL);
        uv_close((uv_handle_t *)&n->stall_timer, NULL);
        n->ring_timer_open = 0;
    }
    while (n->dones)
        done_unlink(n, n->dones);
    while (n->held) { /* only after a failed start: nothing is held then */
        struct held *h = n->held;
        n->held = h->next;
        am_free(h);
    }
    am_ring_free(n->base);
    am_ring_free(n->wo_self);
    am_ring_free(n->ring);
    am_free(n->waiting);
    am_free(n->finished);
    n->finished = NULL;
    am_hset_free(&n->handed);
    am_buf_close(&n->released);
    am_free(n->ring_peers);
    n->repl.ring = NULL;
    n->repl.ring_peers = NULL;
    n->base = n->wo_self = n->ring = NULL;
    n->waiting = NULL;
    n->ring_peers = NULL;
}

static void on_server_closed(void *arg)
{
    struct node *n = arg;
    struct am_runtime_stats rs;
    am_runtime_get_stats(n->rt, &rs);
    n->lost = rs.lost;
    am_runtime_free(n->rt);
    n->rt = NULL;
    am_store_close(n->store);
    n->store = NULL;
    am_gossip_close(n->gossip, NULL, NULL);
    n->gossip = NULL;
    placement_close(n);
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    uv_close((uv_handle_t *)&n->sigint, NULL);
    am_log_info("stopped");
}

static void on_peers_closed(void *arg)
{
    struct node *n = arg;
    n->peers = NULL;
    am_runtime_set_replicator(n->rt, NULL);
    n->repl.ring_peers = NULL;
    am_log_info("closing connections");
    am_http_close(n->http, NULL, NULL);
    n->http = NULL;
    am_server_close(n->srv, on_server_closed, n);
    n->srv = NULL;
}

/* Step 5: forwarded calls answer clients of this node's server, so the
 * server closes after the last of them. */
static void close_peers(struct node *n)
{
    struct am_peers_stats ps;
    am_peers_get_stats(n->peers, &ps);
    if (ps.pending)
        am_log_info("waiting for %llu forwarded calls", (unsigned long long)ps.pending);
    am_peers_close(n->peers, on_peers_closed, n); /* n->peers stays usable until then */
}

static void on_left(void *arg)
{
    struct node *n = arg;
    am_log_info("left the cluster");
    close_peers(n);
}

/* Step 4: the others may now place this node's actors elsewhere. */
static void on_handed_off(void *arg)
{
    struct node *n = arg;
    am_gossip_leave(n->gossip, on_left, n);
}

/* Step 3: every actor state is on disk; hand them to their next owners. */
static void on_runtime_drained(void *arg)
{
    struct node *n = arg;
    am_log_info("every actor state is written");
    if (n->refused) { /* the name is another node's: leave nothing, say nothing */
        close_peers(n);
        return;
    }
    struct am_handoff_env env = handoff_env(n);
    int rc = am_handoff_leave(&env, n->ring, n->self_idx, &n->handoff, on_handed_off, n);
    if (rc) {
        am_log_error("cannot hand off the actors (%s); they stay in this node's data directory",
                     am_strerror(rc));
        on_handed_off(n);
    }
}

/* SIGTERM, SIGINT and `amesh leave` stop the node the same way. */
static void stop(struct node *n, const char *why)
{
    if (n->stopping) {
        am_log_warn("already stopping; waiting for the last writes");
        return;
    }
    n->stopping = 1;
    n->abort_moves = 1;
    am_log_info("%s: stopping (no new requests); finishing what is in flight", why);
    am_server_stop_accepting(n->srv);
    am_http_stop_accepting(n->http);
    stop_holding(n);
    am_runtime_shutdown(n->rt, on_runtime_drained, n);
}

/* A node that finds, while joining, that a live member already holds its
 * name stops at once and without spreading `left` (which would speak for
 * the other node). "While joining" is the first JOIN_CONFLICT_MS after the
 * start of a node started with --join; later, a conflict is only logged:
 * the member that was there first keeps the name (swim.c). */
#define JOIN_CONFLICT_MS 30000

static void on_member_event(void *arg, const struct am_swim_action *ev)
{
    struct node *n = arg;
    if (n->gossip) {
        struct am_swim_stats ws;
        am_swim_get_stats(am_gossip_core(n->gossip), &ws);
        if (ws.declared_dead > n->declared_dead_seen) {
            n->declared_dead_seen = ws.declared_dead;
            maybe_replaced(n, "the other members declared this node dead");
        }
    }
    if (n->peers && ev->event != AM_SWIM_EV_CONFLICT && strcmp(ev->name, n->cfg.name) != 0 &&
        (ev->event == AM_SWIM_EV_REAPED || ev->state == AM_MEMBER_DEAD ||
         ev->state == AM_MEMBER_LEFT))
        am_peers_drop(n->peers, ev->name,
                      ev->state == AM_MEMBER_LEFT ? "left the cluster" : "was declared dead");
    if (ev->event != AM_SWIM_EV_CONFLICT && n->ring_timer_open &&
        !uv_is_active((uv_handle_t *)&n->ring_timer))
        uv_timer_start(&n->ring_timer, on_ring_timer, RING_DELAY_MS, 0);
    if (ev->event != AM_SWIM_EV_CONFLICT || strcmp(ev->name, n->cfg.name) != 0 || !n->cfg.njoins ||
        n->stopping || !n->srv || uv_now(&n->loop) - n->started_ms > JOIN_CONFLICT_MS)
        return;
    am_log_error("the name '%s' is held by a live member at %s: this node (%s) refuses to run "
                 "with it; start it with another --name",
                 n->cfg.name, ev->addr, n->cfg.advertise);
    n->stopping = 1;
    n->refused = 1;
    am_server_stop_accepting(n->srv);
    am_http_stop_accepting(n->http);
    stop_holding(n);
    am_runtime_shutdown(n->rt, on_runtime_drained, n);
}

static void on_signal(uv_signal_t *h, int signum)
{
    stop(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_leave_request(void *arg)
{
    stop(arg, "leave requested");
}

/* Per peer: calls waiting for replies, and bytes waiting to be written
 * (or two of the largest frames, if more). A peer that stops reading costs
 * at most this much; past it calls to it are refused (overloaded, retry). */
#define PEER_MAX_PENDING 16384
#define PEER_MAX_OUT (16u << 20)

/* GET /health/ready of the HTTP API: this node serves its actors. */
static int http_ready(void *arg, char *why, size_t len)
{
    struct node *n = arg;
    const char *no = n->stopping                   ? "the node is stopping"
                     : !n->ring || n->self_idx < 0 ? "this node is not on its ring yet"
                     : n->cfg.njoins && am_ring_count(n->ring) < 2
                         ? "not joined: no other member is alive in this node's view"
                     : n->nwaiting ? "waiting for the handoff of the actors it takes over"
                                   : NULL;
    if (no)
        snprintf(why, len, "%s", no);
    return !no;
}

/* The HTTP API (http.h): the maps of STATUS, MEMBERS and RING, and calls
 * through route() and the runtime, as the client server has them. */
static int http_start(struct node *n, char *err, size_t errlen)
{
    struct sockaddr_in addr;
    struct am_http_opts o = {
        .max_body = n->cfg.max_payload,
        .max_connections = n->cfg.max_connections,
        .max_pipeline = n->cfg.max_inflight,
        .timeout_ms = n->cfg.http_timeout_ms,
        .key = n->keyed ? n->key : NULL,
        .token_file = n->cfg.http_token_file,
        .auth_all = n->cfg.http_auth_all,
    };
    struct am_http_hooks h = {pack_status, pack_members, pack_ring, route, http_ready, n};
    am_addr_parse(n->cfg.http, 0, &addr);
    return am_http_start(&n->http, &n->loop, &addr, n->rt, &o, &h, err, errlen);
}

static int start(struct node *n, char *err, size_t errlen)
{
    struct am_config *c = &n->cfg;
    struct sockaddr_in bind, bind_src;
    int rc = am_registry_new(&n->reg);
    if (rc == 0)
        rc = am_registry_add_builtins(n->reg);
    if (rc) {
        snprintf(err, errlen, "cannot set up actor types: %s", am_strerror(rc));
        return rc;
    }
    for (int i = 0; i < c->nactor_libs; i++) {
        rc = am_registry_load(n->reg, c->actor_libs[i], err, errlen);
        if (rc)
            return rc;
    }
    struct am_store_opts so = {.dir = c->data, .node_name = c->name};
    rc = am_store_open(&n->store, &n->loop, &so, err, errlen);
    if (rc)
        return rc;
    struct am_runtime_opts ro = {
        .max_payload = c->max_payload,
        .max_state = c->max_state,
        .max_reply = c->max_state > c->max_payload ? c->max_state : c->max_payload,
        .mailbox = c->mailbox,
        .max_actors = c->max_actors,
        .idle_ms = c->idle_ms,
        .sync_interval_ms = c->sync_interval_ms,
    };
    rc = am_runtime_new(&n->rt, &n->loop, n->store, n->reg, &ro);
    if (rc) {
        snprintf(err, errlen, "cannot start the actor runtime: %s", am_strerror(rc));
        return rc;
    }
    am_addr_parse(c->bind, 0, &bind);
    bind_src = bind;
    bind_src.sin_port = 0;
    if (c->key_file[0]) {
        rc = am_seal_init();
        if (rc == 0)
            rc = am_key_load(c->key_file, n->key, err, errlen);
        if (rc)
            return rc;
        n->keyed = 1;
    }
    struct am_store_meta meta;
    am_store_get_meta(n->store, &meta);
    const char *seeds[AM_MAX_SEEDS];
    for (int i = 0; i < c->njoins; i++)
        seeds[i] = c->joins[i];
    struct am_gossip_opts go = {
        .name = c->name,
        .advertise = c->advertise,
        .bind = &bind,
        .profile = c->profile,
        .seeds = seeds,
        .nseeds = (size_t)c->njoins,
        .incarnation = meta.incarnation,
        .key = n->keyed ? n->key : NULL,
        .on_event = on_member_event,
        .arg = n,
    };
    rc = am_gossip_start(&n->gossip, &n->loop, &go, err, errlen);
    if (rc)
        return rc;
    struct am_peer_io pio = am_server_peer_io(dial_peer, n);
    struct am_peers_opts po = {
        .name = c->name,
        .io = &pio,
        .timeout_ms = c->forward_timeout_ms,
        .max_pending = PEER_MAX_PENDING,
        .max_out =
            2 * (c->max_payload + 4096) > PEER_MAX_OUT ? 2 * (c->max_payload + 4096) : PEER_MAX_OUT,
    };
    rc = am_peers_new(&n->peers, &n->loop, &po);
    if (rc) {
        snprintf(err, errlen, "cannot set up peer streams: %s", am_strerror(rc));
        return rc;
    }
    n->repl.loop = &n->loop;
    n->repl.store = n->store;
    n->repl.rt = n->rt;
    n->repl.self = c->name;
    n->repl.copies = c->replicas;
    n->repl.self_idx = -1;
    am_runtime_set_replicator(n->rt, &(struct am_replicator){am_replication_send, &n->repl});
    rc = am_fetch_new(&n->fetch, &n->loop, &n->repl, c->forward_timeout_ms / 4, rerun_fetched, n);
    if (!rc)
        rc = am_ae_new(&n->ae, &n->loop, &n->repl, c->anti_entropy_ms, ae_settled, n);
    if (rc) {
        snprintf(err, errlen, "cannot set up fetches and anti-entropy: %s", am_strerror(rc));
        return rc;
    }
    uv_timer_init(&n->loop, &n->ring_timer);
    uv_timer_init(&n->loop, &n->release_timer);
    uv_timer_init(&n->loop, &n->hold_timer);
    uv_timer_init(&n->loop, &n->done_timer);
    uv_timer_init(&n->loop, &n->stall_timer);
    n->ring_timer.data = n->release_timer.data = n->hold_timer.data = n->done_timer.data = n;
    n->stall_timer.data = n;
    /* Two probe intervals without running: others may have suspected this
     * node and, a suspicion timeout later, declared it dead. */
    struct am_swim_config sc;
    memset(&sc, 0, sizeof sc);
    am_swim_profile(&sc, c->profile);
    n->stall_ms = 2 * (sc.probe_interval_ms ? sc.probe_interval_ms : 1000);
    n->stall_last = uv_now(&n->loop);
    uv_timer_start(&n->stall_timer, on_stall_timer, STALL_CHECK_MS, STALL_CHECK_MS);
    n->held_tail = &n->held;
    n->ring_timer_open = 1;
    ring_rebuild(n); /* this node alone until the view grows */
    n->base = ring_copy(n->ring);
    /* A request frame holds the payload plus names and headers; 4 KiB covers
     * the largest envelope (names of 63, 255 and 63 bytes and a few ints). */
    struct am_server_opts vo = {
        .node_name = c->name,
        .max_frame = c->max_payload + 4096,
        .max_peer_frame = (c->max_state > c->max_payload ? c->max_state : c->max_payload) + 4096,
        .max_connections = c->max_connections,
        .max_inflight = c->max_inflight,
        .key = n->keyed ? n->key : NULL,
        /* Peer streams leave from the bind address (not from whatever
         * source the routing table picks), so the peer sees the address
         * we advertise. */
        .peer_source = bind.sin_addr.s_addr != htonl(INADDR_ANY) ? &bind_src : NULL,
    };
    struct am_server_hooks hooks = {
        .status = pack_status,
        .members = pack_members,
        .ring = pack_ring,
        .leave = on_leave_request,
        .sync = sync_members,
        .peer_hello = check_peer,
        .route = route,
        .handoff = take_handoff,
        .handoff_done = on_handoff_done,
        .arg = n,
    };
    rc = am_server_start(&n->srv, &n->loop, &bind, n->rt, &vo, &hooks, err, errlen);
    if (rc == 0 && c->http[0])
        rc = http_start(n, err, errlen);
    if (rc)
        return rc;
    uv_signal_init(&n->loop, &n->sigterm);
    uv_signal_init(&n->loop, &n->sigint);
    n->sigterm.data = n->sigint.data = n;
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    return 0;
}

/* Unwinds a start that failed part way: what was opened is closed in
 * reverse order and the loop runs its close callbacks. */
static void abort_start(struct node *n)
{
    am_http_close(n->http, NULL, NULL);
    if (n->srv)
        am_server_close(n->srv, NULL, NULL);
    if (n->peers)
        am_peers_close(n->peers, NULL, NULL);
    if (n->gossip)
        am_gossip_close(n->gossip, NULL, NULL);
    placement_close(n);
    if (n->rt) {
        am_runtime_free(n->rt);
    }
    am_store_close(n->store);
    uv_run(&n->loop, UV_RUN_DEFAULT);
}

int am_cmd_node(int argc, char **argv)
{
    static struct node n; /* one node per process; static keeps it off the stack */
    char err[1200];
    memset(&n, 0, sizeof n);
    int rc = am_config_parse(&n.cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return AM_EXIT_OK;
    if (rc) {
        fprintf(stderr, "amesh node: %s\n", err);
        return AM_EXIT_USAGE;
    }
    am_log_setup((enum am_log_level)n.cfg.log_level, n.cfg.name);
    am_log_set_format((enum am_log_format)n.cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&n.loop);
    n.started_ms = uv_now(&n.loop);
    rc = start(&n, err, sizeof err);
    if (rc) {
        am_log_error("%s", err);
        fprintf(stderr, "amesh node: %s\n", err);
        abort_start(&n);
        uv_loop_close(&n.loop);
        am_registry_free(n.reg);
        return AM_EXIT_ERROR;
    }
    struct am_store_meta meta;
    am_store_get_meta(n.store, &meta);
    am_log_info(
        "listening on %s (TCP and UDP, client protocol %d), data %s, sync %s, "
        "incarnation %llu, profile %s%s",
        n.cfg.bind, AM_PROTO_VERSION, n.cfg.data, n.cfg.sync_interval_ms ? "interval" : "durable",
        (unsigned long long)meta.incarnation, n.cfg.profile, n.keyed ? ", cluster key on" : "");
    if (n.cfg.njoins)
        am_log_info("joining through %d seed%s, first %s", n.cfg.njoins,
                    n.cfg.njoins > 1 ? "s" : "", n.cfg.joins[0]);
    uv_run(&n.loop, UV_RUN_DEFAULT);
    uv_loop_close(&n.loop);
    am_registry_free(n.reg);
    sodium_memzero(n.key, sizeof n.key);
    if (n.refused) {
        fprintf(stderr,
                "amesh node: the name '%s' is in use by another live node; start this "
                "one with another --name\n",
                n.cfg.name);
        return AM_EXIT_ERROR;
    }
    if (n.lost) {
        fprintf(stderr, "amesh node: %llu actor states could not be saved at shutdown\n",
                (unsigned long long)n.lost);
        return AM_EXIT_ERROR;
    }
    return AM_EXIT_OK;
}
