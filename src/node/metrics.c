/* metrics.c - STATUS and the HTTP counters as Prometheus text (see metrics.h).
 *
 * The STATUS map is read with the bounded am_mp_* functions into a flat list
 * of (section, key, value) entries, then the table below is walked in order:
 * each row that finds its entry writes one family (HELP, TYPE, sample). The
 * table is the one place that names a metric; docs list the families it
 * writes. */
#include "metrics.h"

#include "err.h"
#include "mp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { GAUGE, COUNTER };

struct row {
    const char *section; /* "" for a top-level key */
    const char *key;
    const char *name; /* without the amesh_ prefix */
    int type;
    double scale; /* 0: the integer as is; else value x scale (ms -> s) */
    const char *help;
};

static const struct row rows[] = {
    {"", "uptime_ms", "uptime_seconds", GAUGE, 0.001, "Seconds since the node started."},
    {"", "incarnation", "incarnation", GAUGE, 0,
     "Times the data directory has been opened, this run included."},

    {"actors", "active", "actors_active", GAUGE, 0, "Actors in memory now."},
    {"actors", "activations", "actors_activations_total", COUNTER, 0,
     "Actors activated (loaded into memory)."},
    {"actors", "deactivations", "actors_deactivations_total", COUNTER, 0,
     "Actors deactivated (written if changed and dropped from memory)."},
    {"actors", "calls", "actors_calls_total", COUNTER, 0, "CALLs accepted into a mailbox here."},
    {"actors", "casts", "actors_casts_total", COUNTER, 0, "CASTs accepted into a mailbox here."},
    {"actors", "ok", "actors_ok_total", COUNTER, 0, "Messages handled successfully."},
    {"actors", "errors", "actors_errors_total", COUNTER, 0, "Messages completed with an error."},
    {"actors", "refused", "actors_refused_total", COUNTER, 0,
     "Messages refused before a mailbox (busy, overloaded, unknown type, ...)."},
    {"actors", "snapshots", "actors_snapshots_total", COUNTER, 0, "Snapshot writes completed."},
    {"actors", "write_errors", "actors_write_errors_total", COUNTER, 0,
     "Snapshot writes that failed."},
    {"actors", "waiting", "actors_waiting_replies", GAUGE, 0, "Replies held for a commit now."},
    {"actors", "queued", "actors_queued_messages", GAUGE, 0,
     "Messages in actors' mailboxes (accepted, not completed) now."},
    {"actors", "lost", "actors_lost_total", COUNTER, 0,
     "Interval mode: unsaved states given up at shutdown."},
    {"actors", "fenced", "actors_fenced_total", COUNTER, 0,
     "Actors dropped from memory because a newer copy exists elsewhere."},

    {"store", "records", "store_records", GAUGE, 0, "Snapshots stored."},
    {"store", "writes", "store_writes_total", COUNTER, 0, "Records committed."},
    {"store", "commits", "store_commits_total", COUNTER, 0, "LMDB write transactions committed."},
    {"store", "max_batch", "store_max_batch_writes", GAUGE, 0,
     "Most writes in one transaction since start."},
    {"store", "joined", "store_joined_writes_total", COUNTER, 0,
     "Writes that joined a transaction while it was being applied."},
    {"store", "failed", "store_failed_writes_total", COUNTER, 0, "Writes that failed."},
    {"store", "map_size", "store_map_size_bytes", GAUGE, 0, "Size of the LMDB map."},
    {"store", "map_grows", "store_map_grows_total", COUNTER, 0, "Times the LMDB map was grown."},

    {"clients", "connections", "clients_connections", GAUGE, 0,
     "Client protocol connections open now, peer streams of other nodes included."},
    {"clients", "accepted", "clients_accepted_total", COUNTER, 0,
     "Client protocol connections accepted."},
    {"clients", "rejected", "clients_rejected_total", COUNTER, 0,
     "Client protocol connections refused over --max-connections."},
    {"clients", "requests", "clients_requests_total", COUNTER, 0,
     "Client protocol frames read, malformed ones included."},
    {"clients", "bad_frames", "clients_bad_frames_total", COUNTER, 0,
     "Malformed or oversized client protocol frames."},
    {"clients", "unauthenticated", "clients_unauthenticated_total", COUNTER, 0,
     "Connections closed because they do not hold the cluster key."},
    {"clients", "bytes_in", "clients_received_bytes_total", COUNTER, 0,
     "Bytes read from client protocol connections."},
    {"clients", "bytes_out", "clients_sent_bytes_total", COUNTER, 0,
     "Bytes written to client protocol connections."},
    {"clients", "peers", "clients_peer_streams", GAUGE, 0,
     "Peer streams of other nodes open to this one now."},
    {"clients", "peers_refused", "clients_peers_refused_total", COUNTER, 0, "Peer HELLOs refused."},

    {"membership", "encrypted", "membership_encrypted", GAUGE, 0,
     "1 when the node runs with a cluster key."},
    {"membership", "members", "membership_members", GAUGE, 0,
     "Members in this node's view, dead and left ones included until forgotten."},
    {"membership", "live", "membership_live_members", GAUGE, 0,
     "Members alive or suspect, this node included."},
    {"membership", "probes", "membership_probes_total", COUNTER, 0, "Probes started."},
    {"membership", "acks", "membership_acks_total", COUNTER, 0, "Probes answered in time."},
    {"membership", "nacks", "membership_nacks_total", COUNTER, 0,
     "Nacks received for this node's probes."},
    {"membership", "indirect_probes", "membership_indirect_probes_total", COUNTER, 0,
     "Ping-req messages sent."},
    {"membership", "suspicions", "membership_suspicions_total", COUNTER, 0,
     "Members that went from alive to suspect in this node's view."},
    {"membership", "refutations", "membership_refutations_total", COUNTER, 0,
     "Times this node raised its incarnation to deny a suspicion about itself."},
    {"membership", "corrections", "membership_corrections_total", COUNTER, 0,
     "Accusations of this node it had refuted already, answered to the accuser directly."},
    {"membership", "announces", "membership_announces_total", COUNTER, 0,
     "Members this node told of its join directly, once the join was answered."},
    {"membership", "deaths_told", "membership_deaths_told_total", COUNTER, 0,
     "Members told directly they had been declared dead (back from dead here, or dead in "
     "another member's view)."},
    {"membership", "deaths_declared", "membership_deaths_declared_total", COUNTER, 0,
     "Suspicions that timed out on this node."},
    {"membership", "health", "membership_health", GAUGE, 0, "Lifeguard local health, 0 to 7."},
    {"membership", "packets_in", "membership_received_packets_total", COUNTER, 0,
     "Gossip datagrams received."},
    {"membership", "packets_out", "membership_sent_packets_total", COUNTER, 0,
     "Gossip datagrams built."},
    {"membership", "bytes_in", "membership_received_bytes_total", COUNTER, 0,
     "Plaintext bytes of gossip datagrams and push-pulls received."},
    {"membership", "bytes_out", "membership_sent_bytes_total", COUNTER, 0,
     "Plaintext bytes of gossip datagrams and push-pulls built."},
    {"membership", "bad_packets", "membership_bad_packets_total", COUNTER, 0,
     "Malformed datagrams and push-pull messages."},
    {"membership", "unauthenticated", "membership_unauthenticated_total", COUNTER, 0,
     "Datagrams and push-pulls that do not open with the cluster key."},
    {"membership", "send_errors", "membership_send_errors_total", COUNTER, 0,
     "Datagrams the socket did not take."},
    {"membership", "push_pulls", "membership_push_pulls_total", COUNTER, 0,
     "Push-pull exchanges opened or served."},
    {"membership", "push_pull_errors", "membership_push_pull_errors_total", COUNTER, 0,
     "Push-pull connections that failed."},
    {"membership", "conflicts", "membership_conflicts_total", COUNTER, 0, "Name conflicts seen."},

    {"ring", "members", "ring_members", GAUGE, 0, "Members on the placement ring."},
    {"ring", "vnodes", "ring_vnodes", GAUGE, 0, "Points per member on the ring."},
    {"ring", "builds", "ring_builds_total", COUNTER, 0, "Rings built since start."},

    {"routing", "forwarded", "routing_forwarded_total", COUNTER, 0,
     "Calls handed to their owner on another node."},
    {"routing", "received", "routing_received_total", COUNTER, 0,
     "FORWARD frames received from other nodes."},
    {"routing", "hop_limited", "routing_hop_limited_total", COUNTER, 0,
     "Forwarded calls refused at the hop limit."},
    {"routing", "ring_mismatches", "routing_ring_mismatches_total", COUNTER, 0,
     "FORWARDs received from a node with another ring version."},
    {"routing", "replies", "routing_replies_total", COUNTER, 0,
     "Replies received from owners for forwarded calls."},
    {"routing", "refused", "routing_refused_total", COUNTER, 0,
     "Calls refused before they were forwarded (stream full or in backoff)."},
    {"routing", "timeouts", "routing_timeouts_total", COUNTER, 0,
     "Forwarded calls failed with timeout."},
    {"routing", "failed", "routing_failed_total", COUNTER, 0,
     "Forwarded calls failed with unavailable (stream failed or dropped)."},
    {"routing", "pending", "routing_pending_calls", GAUGE, 0,
     "Forwarded calls waiting for a reply now."},
    {"routing", "queued_bytes", "routing_queued_bytes", GAUGE, 0,
     "Bytes waiting to be written on peer streams now."},
    {"routing", "streams", "routing_streams", GAUGE, 0,
     "Members this node has a peer stream to now."},
    {"routing", "connects", "routing_connects_total", COUNTER, 0,
     "Peer streams this node opened."},
    {"routing", "accepts", "routing_accepts_total", COUNTER, 0,
     "Peer streams other nodes opened, taken for this node's requests."},
    {"routing", "stream_errors", "routing_stream_errors_total", COUNTER, 0,
     "Peer streams that failed."},
    {"routing", "bad_frames", "routing_bad_frames_total", COUNTER, 0,
     "Malformed frames read on peer streams."},
    {"routing", "bytes_in", "routing_received_bytes_total", COUNTER, 0,
     "Bytes read on peer streams."},
    {"routing", "bytes_out", "routing_sent_bytes_total", COUNTER, 0,
     "Bytes written on peer streams."},
    {"routing", "timeout_ms", "routing_forward_timeout_seconds", GAUGE, 0.001,
     "The --forward-timeout setting."},

    {"handoff", "waiting", "handoff_waiting_members", GAUGE, 0,
     "Members whose handoff a joining node still waits for."},
    {"handoff", "held", "handoff_held_calls", GAUGE, 0, "Calls held for a handoff now."},
    {"handoff", "held_total", "handoff_held_calls_total", COUNTER, 0, "Calls held for a handoff."},
    {"handoff", "hold_expired", "handoff_hold_expired_total", COUNTER, 0,
     "Handoff waits that hit their bound."},
    {"handoff", "sent", "handoff_sent_total", COUNTER, 0, "Snapshots handed off and stored."},
    {"handoff", "failed", "handoff_failed_total", COUNTER, 0,
     "Snapshots that could not be handed off."},
    {"handoff", "received", "handoff_received_total", COUNTER, 0,
     "Snapshots taken from other nodes and stored."},
    {"handoff", "refused", "handoff_refused_total", COUNTER, 0, "HANDOFFs refused."},
    {"handoff", "current", "handoff_current_total", COUNTER, 0,
     "HANDOFFs of a version this node held already."},
    {"handoff", "pauses", "pauses_total", COUNTER, 0,
     "Times this node's loop did not run for two probe intervals."},
    {"handoff", "declared_dead", "declared_dead_total", COUNTER, 0,
     "Times this node learned the others had declared it dead."},

    {"replication", "replicas", "replication_replicas", GAUGE, 0, "The --replicas setting."},
    {"replication", "sent", "replication_sent_total", COUNTER, 0, "States sent to replicas."},
    {"replication", "acked", "replication_acked_total", COUNTER, 0, "States stored by replicas."},
    {"replication", "stale", "replication_stale_total", COUNTER, 0,
     "States a replica answered with a newer copy."},
    {"replication", "unreplicated", "replication_unreplicated_total", COUNTER, 0,
     "States that could not be delivered to a replica."},
    {"replication", "received", "replication_received_total", COUNTER, 0,
     "REPLICATEs received from owners."},
    {"replication", "stored", "replication_stored_total", COUNTER, 0, "States kept as replicas."},
    {"replication", "newer_here", "replication_newer_here_total", COUNTER, 0,
     "REPLICATEs answered with a newer copy held here."},
    {"replication", "repaired", "replication_repaired_total", COUNTER, 0,
     "States sent to members that became replicas after a ring change."},
    {"replication", "retried", "replication_retried_total", COUNTER, 0,
     "States sent to replicas again after a REPLICATE failed."},
    {"replication", "retry_pending", "replication_retry_pending", GAUGE, 0,
     "Keys waiting to be sent to their replicas again."},
    {"replication", "retry_dropped", "replication_retry_dropped_total", COUNTER, 0,
     "Failed REPLICATEs not queued to be sent again (the queue was full)."},
    {"replication", "ae_rounds", "replication_antientropy_rounds_total", COUNTER, 0,
     "Anti-entropy DIGESTs sent to a replica."},
    {"replication", "ae_answered", "replication_antientropy_answered_total", COUNTER, 0,
     "Anti-entropy DIGESTs answered here."},
    {"replication", "ae_differ", "replication_antientropy_differing_ranges_total", COUNTER, 0,
     "Digest ranges a replica found different."},
    {"replication", "ae_queued", "replication_antientropy_queued_total", COUNTER, 0,
     "States a replica lacked or held older, queued to be sent to it again."},
    {"replication", "fetches", "replication_fetches_total", COUNTER, 0,
     "Activations that asked the members after this node for newer copies first."},
    {"replication", "fetched_newer", "replication_fetched_newer_total", COUNTER, 0,
     "Activations that found a newer copy on another member."},
    {"replication", "fetch_timeouts", "replication_fetch_timeouts_total", COUNTER, 0,
     "Activations that went ahead without every FETCH answer, after the bound."},
    {"replication", "fetches_answered", "replication_fetches_answered_total", COUNTER, 0,
     "FETCHes from other members answered here."},
};

#define NROWS (sizeof rows / sizeof rows[0])

/* ---- STATUS, flattened ----------------------------------------------------- */

#define MAX_ENTRIES 512

struct entry {
    const char *section, *key, *str; /* into the msgpack bytes; str for str values */
    uint32_t section_len, key_len, str_len;
    int is_str;
    uint64_t u;
};

struct flat {
    struct entry e[MAX_ENTRIES];
    size_t n;
};

static void add_entry(struct flat *f, const char *sec, uint32_t sec_len, const char *key,
                      uint32_t key_len, const uint8_t **p, const uint8_t *end)
{
    struct entry e = {.section = sec, .section_len = sec_len, .key = key, .key_len = key_len};
    enum am_mp_type t = am_mp_peek(*p, end);
    int ok = 0;
    if (t == AM_MP_INT && am_mp_read_uint(p, end, &e.u) == 0)
        ok = 1;
    else if (t == AM_MP_STR && am_mp_read_str(p, end, &e.str, &e.str_len) == 0)
        ok = e.is_str = 1;
    if (!ok)
        am_mp_skip(p, end); /* a value of no other use here (negative, float, ...) */
    if (ok && f->n < MAX_ENTRIES)
        f->e[f->n++] = e;
}

/* Top-level scalars, and one level of maps ("section" -> key -> value). */
static int flatten(struct flat *f, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    uint32_t n;
    f->n = 0;
    if (am_mp_check_one(p, len) || am_mp_read_map(&p, end, &n))
        return AM_EPROTO;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t klen;
        if (am_mp_read_str(&p, end, &k, &klen))
            return AM_EPROTO;
        if (am_mp_peek(p, end) != AM_MP_MAP) {
            add_entry(f, "", 0, k, klen, &p, end);
            continue;
        }
        uint32_t m;
        if (am_mp_read_map(&p, end, &m))
            return AM_EPROTO;
        for (uint32_t j = 0; j < m; j++) {
            const char *k2;
            uint32_t k2len;
            if (am_mp_read_str(&p, end, &k2, &k2len)) {
                if (am_mp_skip(&p, end) || am_mp_skip(&p, end))
                    return AM_EPROTO;
                continue;
            }
            add_entry(f, k, klen, k2, k2len, &p, end);
        }
    }
    return 0;
}

static const struct entry *find(const struct flat *f, const char *section, const char *key)
{
    size_t sl = strlen(section), kl = strlen(key);
    for (size_t i = 0; i < f->n; i++) {
        const struct entry *e = &f->e[i];
        if (e->section_len == sl && e->key_len == kl && memcmp(e->section, section, sl) == 0 &&
            memcmp(e->key, key, kl) == 0)
            return e;
    }
    return NULL;
}

/* ---- writing --------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static int put(struct am_buf *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1; /* our formats never get there */
    return am_buf_append(out, line, (size_t)n) ? -ENOMEM : 0;
}

static int family(struct am_buf *out, const char *name, const char *type, const char *help)
{
    return put(out, "# HELP amesh_%s %s\n# TYPE amesh_%s %s\n", name, help, name, type);
}

/* A label value: backslash, double quote and newline escaped. */
static int label_value(struct am_buf *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        const char *esc = s[i] == '\\'   ? "\\\\"
                          : s[i] == '"'  ? "\\\""
                          : s[i] == '\n' ? "\\n"
                                         : NULL;
        if (esc ? am_buf_append(out, esc, 2) : am_buf_append(out, s + i, 1))
            return -ENOMEM;
    }
    return 0;
}

static int str_of(struct am_buf *out, const struct flat *f, const char *section, const char *key)
{
    const struct entry *e = find(f, section, key);
    if (e && e->is_str)
        return label_value(out, e->str, e->str_len);
    return 0;
}

static int render_info(struct am_buf *out, const struct flat *f)
{
    int rc = family(out, "info", "gauge",
                    "Always 1; the labels name the node, its version, sync mode and profile.") ||
             put(out, "amesh_info{node=\"") || str_of(out, f, "", "node") ||
             put(out, "\",version=\"") || str_of(out, f, "", "version") || put(out, "\",sync=\"") ||
             str_of(out, f, "", "sync") || put(out, "\",profile=\"") ||
             str_of(out, f, "membership", "profile") || put(out, "\"} 1\n");
    const struct entry *v = find(f, "ring", "version");
    if (!rc && v && v->is_str)
        rc = family(out, "ring_info", "gauge",
                    "Always 1; the label is the version of the node's placement ring.") ||
             put(out, "amesh_ring_info{version=\"") || label_value(out, v->str, v->str_len) ||
             put(out, "\"} 1\n");
    return rc ? -ENOMEM : 0;
}

/* amesh_store_commit_batch_writes: a histogram of the writes per LMDB
 * transaction, from the store's batch_le_N counts. */
static int render_batches(struct am_buf *out, const struct flat *f)
{
    static const char *const le[] = {"1", "4", "16", "64", "256", "1024", "4096", "inf"};
    const struct entry *writes = find(f, "store", "writes");
    uint64_t cum = 0;
    int rc = 0, any = 0;
    for (size_t i = 0; i < sizeof le / sizeof le[0] && !rc; i++) {
        char key[32];
        snprintf(key, sizeof key, "batch_le_%s", le[i]);
        const struct entry *e = find(f, "store", key);
        if (!e || e->is_str)
            return 0; /* an older node: no histogram */
        if (!any++)
            rc = family(out, "store_commit_batch_writes", "histogram",
                        "Writes committed per LMDB transaction (group commit).");
        cum += e->u;
        if (!rc)
            rc = put(out, "amesh_store_commit_batch_writes_bucket{le=\"%s\"} %" PRIu64 "\n",
                     strcmp(le[i], "inf") ? le[i] : "+Inf", cum);
    }
    if (!rc)
        rc = put(out, "amesh_store_commit_batch_writes_sum %" PRIu64 "\n",
                 writes && !writes->is_str ? writes->u : 0) ||
             put(out, "amesh_store_commit_batch_writes_count %" PRIu64 "\n", cum);
    return rc ? -ENOMEM : 0;
}

/* amesh_actor_message_duration_seconds: a histogram of the time from a
 * message's acceptance to its answer, from actor_latency le_US counts. */
static int render_latency(struct am_buf *out, const struct flat *f)
{
    uint64_t cum = 0;
    int any = 0;
    for (size_t i = 0; i < f->n; i++) {
        const struct entry *e = &f->e[i];
        if (e->is_str || e->section_len != 13 || memcmp(e->section, "actor_latency", 13) != 0 ||
            e->key_len < 4 || memcmp(e->key, "le_", 3) != 0)
            continue;
        if (!any++ && family(out, "actor_message_duration_seconds", "histogram",
                             "Time from a message's acceptance into a mailbox to its answer "
                             "(durable: the commit and the replicas included)."))
            return -ENOMEM;
        cum += e->u;
        int inf = e->key_len == 6 && memcmp(e->key, "le_inf", 6) == 0;
        char le[32];
        if (inf)
            snprintf(le, sizeof le, "+Inf");
        else
            snprintf(le, sizeof le, "%g", strtod(e->key + 3, NULL) / 1e6);
        if (put(out, "amesh_actor_message_duration_seconds_bucket{le=\"%s\"} %" PRIu64 "\n", le,
                cum))
            return -ENOMEM;
    }
    const struct entry *sum = find(f, "actor_latency", "sum_us");
    if (any && (put(out, "amesh_actor_message_duration_seconds_sum %.6f\n",
                    sum && !sum->is_str ? (double)sum->u / 1e6 : 0.0) ||
                put(out, "amesh_actor_message_duration_seconds_count %" PRIu64 "\n", cum)))
        return -ENOMEM;
    return 0;
}

/* amesh_actor_messages_total{type,result}: from actor_types "TYPE.ok" and
 * "TYPE.errors". */
static int render_types(struct am_buf *out, const struct flat *f)
{
    int any = 0;
    for (size_t i = 0; i < f->n; i++) {
        const struct entry *e = &f->e[i];
        if (e->is_str || e->section_len != 11 || memcmp(e->section, "actor_types", 11) != 0)
            continue;
        const char *dot = NULL;
        for (uint32_t j = 0; j < e->key_len; j++)
            if (e->key[j] == '.')
                dot = e->key + j;
        if (!dot)
            continue;
        if (!any++ && family(out, "actor_messages_total", "counter",
                             "Messages completed, by actor type and result (ok or error)."))
            return -ENOMEM;
        int ok = (size_t)(e->key + e->key_len - dot - 1) == 2 && memcmp(dot + 1, "ok", 2) == 0;
        if (put(out, "amesh_actor_messages_total{type=\"") ||
            label_value(out, e->key, (size_t)(dot - e->key)) ||
            put(out, "\",result=\"%s\"} %" PRIu64 "\n", ok ? "ok" : "error", e->u))
            return -ENOMEM;
    }
    return 0;
}

static int render_status(struct am_buf *out, const uint8_t *status, size_t len)
{
    struct flat f; /* 512 entries of 56 bytes: the stack is fine */
    if (flatten(&f, status, len))
        return 0; /* not a STATUS map: nothing of it */
    if (render_info(out, &f) || render_batches(out, &f) || render_types(out, &f) ||
        render_latency(out, &f))
        return -ENOMEM;
    for (size_t i = 0; i < NROWS; i++) {
        const struct row *r = &rows[i];
        const struct entry *e = find(&f, r->section, r->key);
        if (!e || e->is_str)
            continue;
        int rc = family(out, r->name, r->type == COUNTER ? "counter" : "gauge", r->help);
        if (!rc && r->scale)
            rc = put(out, "amesh_%s %.3f\n", r->name, (double)e->u * r->scale);
        else if (!rc)
            rc = put(out, "amesh_%s %" PRIu64 "\n", r->name, e->u);
        if (rc)
            return -ENOMEM;
    }
    return 0;
}

static int render_http(struct am_buf *out, const struct am_http_stats *h)
{
    int rc =
        family(out, "http_connections", "gauge", "HTTP connections open now.") ||
        put(out, "amesh_http_connections %" PRIu64 "\n", h->connections) ||
        family(out, "http_connections_accepted_total", "counter", "HTTP connections accepted.") ||
        put(out, "amesh_http_connections_accepted_total %" PRIu64 "\n", h->accepted) ||
        family(out, "http_connections_rejected_total", "counter",
               "HTTP connections refused over --max-connections (503).") ||
        put(out, "amesh_http_connections_rejected_total %" PRIu64 "\n", h->rejected) ||
        family(out, "http_connections_timed_out_total", "counter",
               "HTTP connections closed for completing no request within --http-timeout.") ||
        put(out, "amesh_http_connections_timed_out_total %" PRIu64 "\n", h->timed_out) ||
        family(out, "http_received_bytes_total", "counter", "Bytes read from HTTP connections.") ||
        put(out, "amesh_http_received_bytes_total %" PRIu64 "\n", h->bytes_in) ||
        family(out, "http_sent_bytes_total", "counter", "Bytes written to HTTP connections.") ||
        put(out, "amesh_http_sent_bytes_total %" PRIu64 "\n", h->bytes_out) ||
        family(out, "http_requests_total", "counter", "HTTP responses sent, by status code.");
    for (int i = 0; !rc && i < AM_HTTP_NCODES; i++)
        rc = put(out, "amesh_http_requests_total{code=\"%d\"} %" PRIu64 "\n", am_http_codes[i],
                 h->by_code[i]);
    rc = rc || family(out, "http_calls_total", "counter",
                      "Actor calls made over HTTP, by actor type and wire status (types not "
                      "known to exist count as (other)).");
    for (size_t t = 0; !rc && t < h->ntypes; t++) {
        const struct am_http_type_stats *ts = &h->types[t];
        for (int s = 0; !rc && s <= AM_ST__COUNT; s++) {
            if (!ts->by_status[s])
                continue;
            rc = put(out, "amesh_http_calls_total{type=\"") ||
                 label_value(out, ts->type, strlen(ts->type)) ||
                 put(out, "\",status=\"%s\"} %" PRIu64 "\n", am_status_name(s), ts->by_status[s]);
        }
    }
    rc = rc || family(out, "http_call_duration_seconds", "histogram",
                      "Time from the end of an HTTP actor call's request to its reply.");
    uint64_t cum = 0;
    for (int i = 0; !rc && i < AM_HTTP_BUCKETS; i++) {
        cum += h->call_bucket[i];
        rc = put(out, "amesh_http_call_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                 am_http_buckets[i], cum);
    }
    rc = rc ||
         put(out, "amesh_http_call_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
             cum + h->call_over) ||
         put(out, "amesh_http_call_duration_seconds_sum %.9g\n", h->call_sum) ||
         put(out, "amesh_http_call_duration_seconds_count %" PRIu64 "\n", h->call_count);
    return rc ? -ENOMEM : 0;
}

int am_metrics_render(struct am_buf *out, const uint8_t *status, size_t status_len,
                      const struct am_http_stats *http)
{
    size_t before = out->len;
    int rc = 0;
    if (status && status_len)
        rc = render_status(out, status, status_len);
    if (!rc && http)
        rc = render_http(out, http);
    if (rc)
        out->len = before;
    return rc;
}
