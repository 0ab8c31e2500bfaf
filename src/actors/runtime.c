/* runtime.c - virtual actors: activation, mailboxes, snapshots, idle
 * deactivation (see runtime.h).
 *
 * Structures
 *   struct actor   one active actor: its key "type/id", current state (a
 *                  refcounted blob), the last committed state, a mailbox of
 *                  messages not yet handled, the messages handled whose replies
 *                  wait for the next write (durable mode), and at most one
 *                  snapshot write in flight.
 *   table          a chained hash table keyed by XXH3_64 of the key.
 *   lru            a list of active actors, most recently used first; the
 *                  idle sweep and eviction walk it from the tail.
 *   dirty          actors whose state changed since their last write was
 *                  submitted; flushed at the end of each loop turn (durable,
 *                  through a uv_check) or every sync interval (interval).
 *
 * Invariants
 *   - An actor runs one message at a time (handlers are synchronous and
 *     `running` forbids re-entry) in mailbox order, which is arrival order.
 *   - An actor has at most one write submitted per loop turn (its dirty
 *     flag coalesces every change made in the turn); writes complete in
 *     submission order, so its states reach the disk in the order made.
 *     Several may be in flight: a hot actor does not wait a whole commit
 *     before its next changes can join the next transaction.
 *   - Durable mode: a reply is released only when every state change made
 *     before it, on that actor, is committed. A failed write fails every
 *     held reply and puts the actor back on its last committed state, so
 *     nothing that was acknowledged is ever rolled back and nothing that was
 *     rolled back was acknowledged.
 *   - pending = mailbox + held replies; it never exceeds opts.mailbox.
 *   - An actor is freed only when quiescent: nothing pending, not dirty, no
 *     write in flight, not on the dirty list. */
#include "runtime.h"

#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"
#include "out.h"
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

/* A refcounted state: the actor holds one reference, a write in flight
 * another, so a write never copies the state it persists. */
struct blob {
    uint32_t refs;
    uint32_t len;
    uint8_t data[];
};

struct msg {
    struct msg *next;
    am_reply_fn cb;
    void *ctx;
    uint64_t req_id;
    uint64_t t0; /* uv_hrtime() when accepted */
    uint8_t *body; /* held reply or error text (msgpack): owned, or `small` */
    uint32_t body_len;
    uint8_t small[16]; /* a short reply (a counter's value) needs no allocation */
    int status;
    uint32_t action_len, payload_len;
    uint8_t bytes[]; /* action, then payload */
};

struct mq {
    struct msg *head, *tail;
};

struct actor;

struct snap_write {
    struct am_store_write w;
    struct actor *act;
    struct blob *state; /* reference; NULL deletes */
    uint64_t seq;
    struct mq waiters; /* replies released when this write completes */
    int status;        /* the local write's, once it is known */
    uint16_t waits;    /* the local write and the replicas not yet answered */
    uint8_t stale;     /* a newer copy exists: here or at a replica */
};

struct actor {
    struct actor *hnext;
    struct actor *lru_prev, *lru_next;
    struct actor *dirty_next;
    const struct am_actor_type *type;
    struct blob *state;
    struct blob *committed;
    struct mq mailbox;
    struct mq held;                /* handled; replies wait for the next write */
    struct snap_write *last_write; /* the newest write in flight, or NULL */
    uint32_t inflight;             /* writes in flight */
    uint64_t poison_seq;           /* writes up to this seq follow a failed one */
    uint64_t seq, committed_seq;
    uint64_t epoch; /* taken at activation: the loaded one + 1 (store.h) */
    uint64_t last_used;
    uint64_t hash;
    uint32_t pending;
    uint16_t key_len, type_len;
    uint8_t dirty, in_dirty, running;
    uint8_t fenced; /* a newer copy exists elsewhere: refuses messages, freed once quiet */
    uint8_t type_idx; /* its type's row in rt->types */
    uint8_t shutdown_failures;
    char key[]; /* "type/id", NUL-terminated */
};

/* A free list of fixed-size blocks. Under load a commit releases hundreds
 * of messages, states and write requests at once; that burst overflows the
 * C library's per-thread cache (7 blocks per size) and every free takes the
 * slow path. Recycling them here keeps the hot path out of malloc. Blocks
 * larger than the pool's size come from am_malloc as usual. */
struct pool {
    void *free;
    size_t count;
    size_t size;
};

/* 16,384 cached blocks of at most ~200 bytes: ~3 MiB per pool at worst,
 * enough for the largest burst (mailbox x in-flight actors is far above it,
 * but such a burst is also far rarer). */
#define POOL_MAX 16384

struct am_runtime {
    uv_loop_t *loop;
    struct am_store *store;
    const struct am_registry *reg;
    struct am_runtime_opts o;
    struct am_replicator repl;
    struct actor **table;
    size_t nbuckets;
    size_t count;
    struct actor *lru_head, *lru_tail;
    struct actor *dirty;
    uv_check_t flush_check;
    uv_timer_t sync_timer;
    uv_timer_t sweep_timer;
    int handles_open;
    struct am_out out;
    struct pool msgs, blobs, writes;
    /* Messages completed per actor type, in the order types were first
     * activated; types past the table's end share its last row. */
    struct am_runtime_type_stats types[AM_RUNTIME_MAX_TYPES];
    size_t ntypes;
    struct am_runtime_latency lat;
    struct am_runtime_stats st;
    uint64_t inflight_writes;
    int shutting;
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
};

static const uint8_t mp_nil = 0xc0;

/* Writes retried for one actor during shutdown in interval mode before its
 * unsaved state is given up: enough to ride out a transient error (the map
 * grows within one try), few enough that a full disk does not hold the
 * node up for long. */
#define SHUTDOWN_RETRIES 3

static void *pool_get(struct pool *p, size_t size)
{
    if (size > p->size)
        return am_malloc(size);
    void *b = p->free;
    if (b) {
        memcpy(&p->free, b, sizeof(void *));
        p->count--;
        return b;
    }
    return am_malloc(p->size);
}

static void pool_put(struct pool *p, void *b, size_t size)
{
    if (!b)
        return;
    if (size > p->size || p->count >= POOL_MAX) {
        am_free(b);
        return;
    }
    memcpy(b, &p->free, sizeof(void *));
    p->free = b;
    p->count++;
}

static void pool_drain(struct pool *p)
{
    while (p->free) {
        void *b = p->free;
        memcpy(&p->free, b, sizeof(void *));
        am_free(b);
    }
    p->count = 0;
}

static struct blob *blob_new(struct am_runtime *rt, const void *p, size_t len)
{
    if (len == 0)
        return NULL;
    struct blob *b = pool_get(&rt->blobs, sizeof *b + len);
    if (!b)
        return NULL;
    b->refs = 1;
    b->len = (uint32_t)len;
    memcpy(b->data, p, len);
    return b;
}

static struct blob *blob_ref(struct blob *b)
{
    if (b)
        b->refs++;
    return b;
}

static void blob_unref(struct am_runtime *rt, struct blob *b)
{
    if (b && --b->refs == 0)
        pool_put(&rt->blobs, b, sizeof *b + b->len);
}

static void mq_push(struct mq *q, struct msg *m)
{
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
}

static struct msg *mq_pop(struct mq *q)
{
    struct msg *m = q->head;
    if (m) {
        q->head = m->next;
        if (!q->head)
            q->tail = NULL;
    }
    return m;
}

static void mq_append(struct mq *dst, struct mq *src)
{
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    src->head = src->tail = NULL;
}

/* ---- table and LRU ---------------------------------------------------- */

static struct actor *table_find(const struct am_runtime *rt, const char *key, size_t len,
                                uint64_t h)
{
    for (struct actor *a = rt->table[h & (rt->nbuckets - 1)]; a; a = a->hnext)
        if (a->hash == h && a->key_len == len && memcmp(a->key, key, len) == 0)
            return a;
    return NULL;
}

/* Doubles the bucket array when the table is as full as it is long, keeping
 * chains at about one entry. A failed grow only costs speed. */
static void table_grow(struct am_runtime *rt)
{
    size_t n = rt->nbuckets * 2;
    struct actor **t = am_calloc(n, sizeof *t);
    if (!t)
        return;
    for (size_t i = 0; i < rt->nbuckets; i++) {
        struct actor *a = rt->table[i];
        while (a) {
            struct actor *next = a->hnext;
            a->hnext = t[a->hash & (n - 1)];
            t[a->hash & (n - 1)] = a;
            a = next;
        }
    }
    am_free(rt->table);
    rt->table = t;
    rt->nbuckets = n;
}

static void table_remove(struct am_runtime *rt, struct actor *act)
{
    struct actor **pp = &rt->table[act->hash & (rt->nbuckets - 1)];
    while (*pp != act)
        pp = &(*pp)->hnext;
    *pp = act->hnext;
}

static void lru_unlink(struct am_runtime *rt, struct actor *a)
{
    if (a->lru_prev)
        a->lru_prev->lru_next = a->lru_next;
    else
        rt->lru_head = a->lru_next;
    if (a->lru_next)
        a->lru_next->lru_prev = a->lru_prev;
    else
        rt->lru_tail = a->lru_prev;
    a->lru_prev = a->lru_next = NULL;
}

static void lru_push_front(struct am_runtime *rt, struct actor *a)
{
    a->lru_prev = NULL;
    a->lru_next = rt->lru_head;
    if (rt->lru_head)
        rt->lru_head->lru_prev = a;
    rt->lru_head = a;
    if (!rt->lru_tail)
        rt->lru_tail = a;
}

static int quiescent(const struct actor *a)
{
    return a->pending == 0 && !a->dirty && a->inflight == 0 && !a->in_dirty && !a->running;
}

static void actor_free(struct am_runtime *rt, struct actor *a)
{
    table_remove(rt, a);
    lru_unlink(rt, a);
    blob_unref(rt, a->state);
    blob_unref(rt, a->committed);
    am_free(a);
    rt->count--;
    rt->st.active = rt->count;
    rt->st.deactivations++;
}

/* ---- replies ------------------------------------------------------------ */

static void body_free(struct msg *m)
{
    if (m->body != m->small)
        am_free(m->body);
    m->body = NULL;
}

static void msg_free(struct am_runtime *rt, struct msg *m)
{
    body_free(m);
    pool_put(&rt->msgs, m, sizeof *m + m->action_len + m->payload_len);
}

static void msg_finish(struct am_runtime *rt, struct actor *act, struct msg *m)
{
    if (m->cb)
        m->cb(m->ctx, m->req_id, m->status, m->body ? m->body : &mp_nil, m->body ? m->body_len : 1);
    struct am_runtime_type_stats *ts = &rt->types[act->type_idx];
    rt->st.queued--;
    uint64_t us = (uv_hrtime() - m->t0) / 1000;
    unsigned b = 0;
    while (b + 1 < AM_RUNTIME_LATENCY_BUCKETS && us > am_runtime_latency_le_us[b])
        b++;
    rt->lat.count[b]++;
    rt->lat.sum_us += us;
    if (m->status == AM_ST_OK) {
        rt->st.ok++;
        ts->ok++;
    } else {
        rt->st.errors++;
        ts->errors++;
        if (!m->cb)
            am_log_debug("cast to %s failed: %s", act->key, am_status_name(m->status));
    }
    act->pending--;
    msg_free(rt, m);
}

/* Replaces a held message's outcome by an error. */
static void msg_set_error(struct msg *m, int status, const char *text)
{
    msgpack_packer pk;
    struct am_buf b;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    body_free(m);
    m->status = status;
    if (am_mp_pack_str(&pk, text, strlen(text)) == 0) {
        size_t n;
        m->body = am_buf_steal(&b, &n);
        m->body_len = (uint32_t)n;
    }
    am_buf_close(&b);
}

static void release_all(struct am_runtime *rt, struct actor *act, struct mq *q)
{
    struct msg *m;
    while ((m = mq_pop(q))) {
        rt->st.waiting--;
        msg_finish(rt, act, m);
    }
}

static void fail_all(struct am_runtime *rt, struct actor *act, struct mq *q, const char *why)
{
    for (struct msg *m = q->head; m; m = m->next)
        msg_set_error(m, AM_ST_STORAGE, why);
    release_all(rt, act, q);
}

/* ---- writes ------------------------------------------------------------- */

static void mark_dirty(struct am_runtime *rt, struct actor *act);
static void check_shutdown(struct am_runtime *rt);

/* Frees a fenced actor once nothing of it is left in flight. */
static void free_if_fenced(struct am_runtime *rt, struct actor *act)
{
    if (act->fenced && quiescent(act))
        actor_free(rt, act);
}

/* The write's state is not the newest: another node activated the actor
 * from a newer copy (this node lost its ownership while paused or cut
 * off), or handed a newer one here. Whatever this copy did since is
 * answered as failed and the actor leaves memory; its next message
 * activates it from the newest copy (once handed here) or goes to its
 * owner. */
static void fence(struct am_runtime *rt, struct actor *act, struct snap_write *sw, int quiet)
{
    char why[200];
    snprintf(why, sizeof why,
             "%s has a newer state on another node (this node lost its ownership); retry",
             act->key);
    if (!act->fenced) {
        rt->st.fenced++;
        if (!quiet)
            am_log_warn("%s", why);
    }
    act->fenced = 1;
    struct mq failed = {NULL, NULL};
    if (sw) {
        blob_unref(rt, sw->state);
        failed = sw->waiters;
        sw->waiters.head = sw->waiters.tail = NULL;
    }
    mq_append(&failed, &act->held);
    act->dirty = 0;
    for (struct msg *m = failed.head; m; m = m->next)
        msg_set_error(m, AM_ST_UNAVAILABLE, why);
    release_all(rt, act, &failed);
}

static void write_finish(struct am_runtime *rt, struct snap_write *sw)
{
    struct actor *act = sw->act;
    int status = sw->status;
    rt->inflight_writes--;
    act->inflight--;
    if (act->last_write == sw)
        act->last_write = NULL;
    int durable = rt->o.sync_interval_ms == 0;
    if (status == 0 && (sw->stale || act->fenced)) {
        /* Fenced meanwhile: what this write's callers saw is not the
         * newest state either. */
        fence(rt, act, sw, 0);
    } else if (status == 0 && (sw->seq > act->poison_seq || !durable)) {
        rt->st.snapshots++;
        blob_unref(rt, act->committed);
        act->committed = sw->state;
        act->committed_seq = sw->seq;
        release_all(rt, act, &sw->waiters);
    } else if (status == 0) {
        /* Committed, but built on a state whose write failed: its callers
         * are told it failed, and the repair write queued at that failure
         * (below) puts the committed state back on disk after it. */
        rt->st.snapshots++;
        blob_unref(rt, sw->state);
        fail_all(rt, act, &sw->waiters, "an earlier state of this actor could not be committed");
    } else {
        char why[160];
        rt->st.write_errors++;
        if (status == -ECANCELED)
            snprintf(why, sizeof why,
                     "the new state of %s was not committed: it followed a state whose write "
                     "failed",
                     act->key);
        else
            snprintf(why, sizeof why, "the new state of %s could not be committed: %s", act->key,
                     am_strerror(status));
        am_log_error("%s", why);
        blob_unref(rt, sw->state);
        if (durable) {
            /* Back to the last committed state: everything handled since is
             * answered with the error, so nothing acknowledged is undone and
             * nothing answered as failed stays in effect. Writes of this
             * actor already in flight carry states built on the failed one;
             * the store cancels them (store.h). Should one commit anyway
             * (poison_seq marks them), a repair write of the committed state
             * follows.
             * The state is put back before any callback runs: a call made
             * from one must not see (and be acknowledged with) the failed
             * state, nor be failed with the replies it follows. */
            struct mq failed = sw->waiters;
            sw->waiters.head = sw->waiters.tail = NULL;
            mq_append(&failed, &act->held);
            blob_unref(rt, act->state);
            act->state = blob_ref(act->committed);
            act->poison_seq = act->seq;
            if (act->inflight) {
                act->seq++;
                act->dirty = 1;
            } else {
                act->dirty = 0;
            }
            fail_all(rt, act, &failed, why);
        } else if (rt->shutting && ++act->shutdown_failures > SHUTDOWN_RETRIES) {
            /* Interval mode, stopping, and the store keeps refusing: give
             * up rather than never stop. The loss is logged and counted,
             * and the node exits non-zero. */
            am_log_error("giving up on the unsaved state of %s after %d failed writes", act->key,
                         SHUTDOWN_RETRIES + 1);
            rt->st.lost++;
            act->dirty = 0;
        } else {
            act->dirty = 1; /* retried at the next interval */
        }
    }
    pool_put(&rt->writes, sw, sizeof *sw);
    /* Interval mode too: a failed write must be back on the dirty list to be
     * retried at the next interval (or at shutdown). */
    if (act->dirty)
        mark_dirty(rt, act);
    free_if_fenced(rt, act);
    check_shutdown(rt);
}

static void write_done(struct am_store_write *w, int status)
{
    struct snap_write *sw = (struct snap_write *)w;
    sw->status = status;
    sw->stale |= (uint8_t)(status == 0 && w->stale);
    if (--sw->waits == 0)
        write_finish(w->data, sw);
}

static void replica_done(void *ctx, int stale)
{
    struct snap_write *sw = ctx;
    sw->stale |= (uint8_t)(stale != 0);
    if (--sw->waits == 0)
        write_finish(sw->w.data, sw);
}

/* Submits a write of the actor's current state. */
static void flush_actor(struct am_runtime *rt, struct actor *act)
{
    struct snap_write *sw = pool_get(&rt->writes, sizeof *sw);
    if (sw)
        memset(sw, 0, sizeof *sw);
    if (!sw) {
        mark_dirty(rt, act); /* try again at the next flush */
        return;
    }
    sw->act = act;
    sw->state = blob_ref(act->state);
    sw->seq = act->seq;
    mq_append(&sw->waiters, &act->held);
    sw->w.key = act->key;
    sw->w.key_len = act->key_len;
    sw->w.epoch = act->epoch;
    sw->w.seq = act->seq;
    sw->w.flags = AM_STORE_NEWER;
    sw->w.state = act->state ? act->state->data : NULL;
    sw->w.state_len = act->state ? act->state->len : 0;
    sw->w.data = rt;
    act->dirty = 0;
    act->inflight++;
    act->last_write = sw;
    rt->inflight_writes++;
    sw->waits = 1;
    int rc = am_store_write(rt->store, &sw->w, write_done);
    if (rc) {
        write_done(&sw->w, rc);
        return;
    }
    /* Replicas are sent the state as the local write starts: a reply
     * waits for both (group-committed on each side). */
    if (rt->repl.send)
        sw->waits = (uint16_t)(sw->waits +
                               rt->repl.send(rt->repl.arg, act->key, act->key_len, act->epoch,
                                             act->seq, sw->w.state, sw->w.state_len,
                                             replica_done, sw));
}

static void flush_dirty(struct am_runtime *rt)
{
    struct actor *list = rt->dirty;
    rt->dirty = NULL;
    am_store_begin(rt->store);
    while (list) {
        struct actor *act = list;
        list = act->dirty_next;
        act->in_dirty = 0;
        if (act->dirty)
            flush_actor(rt, act);
        else
            free_if_fenced(rt, act);
    }
    am_store_end(rt->store);
}

static void on_flush_check(uv_check_t *h)
{
    struct am_runtime *rt = h->data;
    flush_dirty(rt);
    if (!rt->dirty)
        uv_check_stop(h);
}

static void on_sync_timer(uv_timer_t *h)
{
    flush_dirty(h->data);
}

static void mark_dirty(struct am_runtime *rt, struct actor *act)
{
    act->dirty = 1;
    if (!act->in_dirty) {
        act->in_dirty = 1;
        act->dirty_next = rt->dirty;
        rt->dirty = act;
    }
    if (rt->o.sync_interval_ms == 0 || rt->shutting)
        uv_check_start(&rt->flush_check, on_flush_check);
}

/* ---- handling ------------------------------------------------------------ */

static void handle(struct am_runtime *rt, struct actor *act, struct msg *m)
{
    struct am_out *out = &rt->out;
    struct am_msg in = {
        .type = act->key,
        .type_len = act->type_len,
        .id = act->key + act->type_len + 1,
        .id_len = (size_t)act->key_len - act->type_len - 1,
        .action = (const char *)m->bytes,
        .action_len = m->action_len,
        .state = act->state ? act->state->data : NULL,
        .state_len = act->state ? act->state->len : 0,
        .payload = m->bytes + m->action_len,
        .payload_len = m->payload_len,
    };
    am_out_reset(out);
    int rc = act->type->handle(act->type->data, &in, out);
    if (rc == 0 && out->state_set) {
        struct blob *b = blob_new(rt, out->state.data, out->state.len);
        if (out->state.len && !b) {
            rc = am_out_error(out, AM_EHANDLER, "out of memory");
        } else {
            blob_unref(rt, act->state);
            act->state = b;
            act->seq++;
            mark_dirty(rt, act);
        }
    }
    if (rc == 0) {
        m->status = AM_ST_OK;
        if (out->reply_set && m->cb) {
            size_t n;
            if (out->reply.len <= sizeof m->small) {
                memcpy(m->small, out->reply.data, out->reply.len);
                m->body = m->small;
                m->body_len = (uint32_t)out->reply.len;
            } else {
                m->body = am_buf_steal(&out->reply, &n);
                m->body_len = (uint32_t)n;
            }
        }
    } else {
        if (rc > 0)
            rc = AM_EHANDLER; /* a handler returned a code outside the contract */
        msg_set_error(m, am_status_of(rc), out->err[0] ? out->err : am_strerror(rc));
    }
}

/* Runs the actor's mailbox to empty. */
static void run(struct am_runtime *rt, struct actor *act)
{
    struct msg *m;
    act->running = 1;
    while ((m = mq_pop(&act->mailbox))) {
        handle(rt, act, m);
        if (rt->o.sync_interval_ms == 0 && (act->dirty || act->inflight)) {
            rt->st.waiting++;
            mq_push(act->dirty ? &act->held : &act->last_write->waiters, m);
        } else {
            msg_finish(rt, act, m);
        }
    }
    act->running = 0;
}

/* ---- activation and deactivation ----------------------------------------- */

/* Frees up to one quiescent actor from the LRU tail; dirty ones met on the
 * way get their write started so they can go next time. Looks at most at 64
 * actors so one call stays O(1). */
static int evict_one(struct am_runtime *rt)
{
    int looked = 0;
    for (struct actor *a = rt->lru_tail; a && looked < 64; a = a->lru_prev, looked++) {
        if (quiescent(a)) {
            actor_free(rt, a);
            return 1;
        }
        if (a->dirty)
            flush_actor(rt, a);
    }
    return 0;
}

/* The row of rt->types that counts type (added on first use). */
static uint8_t type_row(struct am_runtime *rt, const struct am_actor_type *type)
{
    for (size_t i = 0; i < rt->ntypes; i++)
        if (rt->types[i].type == type)
            return (uint8_t)i;
    if (rt->ntypes == AM_RUNTIME_MAX_TYPES)
        return AM_RUNTIME_MAX_TYPES - 1;
    rt->types[rt->ntypes].type = type;
    return (uint8_t)rt->ntypes++;
}

static int activate(struct am_runtime *rt, const struct am_actor_type *type, const char *key,
                    size_t key_len, size_t type_len, uint64_t h, struct actor **out, char *err,
                    size_t errlen)
{
    if (rt->count >= rt->o.max_actors && !evict_one(rt)) {
        snprintf(err, errlen, "%zu actors are active, the limit; retry later", rt->count);
        return AM_EOVERLOAD;
    }
    struct am_buf state;
    uint64_t epoch = 0, seq = 0;
    am_buf_init(&state);
    int rc = am_store_get(rt->store, key, key_len, &state, &epoch, &seq);
    if (rc && rc != -ENOENT) {
        snprintf(err, errlen, "cannot load the state of %.*s: %s", (int)key_len, key,
                 am_strerror(rc));
        am_log_error("%s", err);
        am_buf_close(&state);
        return AM_ESTORAGE;
    }
    struct actor *a = am_calloc(1, sizeof *a + key_len + 1);
    struct blob *b = rc == 0 ? blob_new(rt, state.data, state.len) : NULL;
    int nomem = !a || (rc == 0 && state.len && !b);
    am_buf_close(&state);
    if (nomem) {
        am_free(a);
        blob_unref(rt, b);
        snprintf(err, errlen, "out of memory");
        return AM_EOVERLOAD;
    }
    memcpy(a->key, key, key_len);
    a->key[key_len] = '\0';
    a->key_len = (uint16_t)key_len;
    a->type_len = (uint16_t)type_len;
    a->type = type;
    a->type_idx = type_row(rt, type);
    a->hash = h;
    a->state = b;
    a->committed = blob_ref(b);
    a->seq = a->committed_seq = seq;
    a->epoch = epoch + 1;
    if (rt->count >= rt->nbuckets)
        table_grow(rt);
    a->hnext = rt->table[h & (rt->nbuckets - 1)];
    rt->table[h & (rt->nbuckets - 1)] = a;
    lru_push_front(rt, a);
    rt->count++;
    rt->st.active = rt->count;
    rt->st.activations++;
    *out = a;
    return 0;
}

/* Deactivates actors idle for idle_ms, oldest first. */
static void on_sweep(uv_timer_t *h)
{
    struct am_runtime *rt = h->data;
    uint64_t now = uv_now(rt->loop);
    struct actor *a = rt->lru_tail;
    while (a && now - a->last_used >= rt->o.idle_ms) {
        struct actor *prev = a->lru_prev;
        if (quiescent(a))
            actor_free(rt, a);
        else if (a->dirty)
            flush_actor(rt, a); /* snapshot first; freed by a later sweep */
        a = prev;
    }
}

/* ---- public ----------------------------------------------------------------- */

size_t am_runtime_release(struct am_runtime *rt,
                          int (*keep)(void *arg, const char *key, size_t len),
                          void (*freed)(void *arg, const char *key, size_t len), void *arg)
{
    size_t left = 0;
    struct actor *a = rt->lru_tail;
    while (a) {
        struct actor *prev = a->lru_prev;
        if (!keep(arg, a->key, a->key_len)) {
            if (quiescent(a)) {
                if (freed)
                    freed(arg, a->key, a->key_len);
                actor_free(rt, a);
            } else {
                if (a->dirty)
                    flush_actor(rt, a); /* its state first; freed by a later call */
                left++;
            }
        }
        a = prev;
    }
    return left;
}

int am_runtime_submit(struct am_runtime *rt, uint64_t req_id, const char *type, size_t type_len,
                      const char *id, size_t id_len, const char *action, size_t action_len,
                      const uint8_t *payload, size_t payload_len, am_reply_fn cb, void *ctx,
                      char *err, size_t errlen)
{
    char key[AM_MAX_TYPE + 1 + AM_MAX_ID + 1];
    int rc;
    if (rt->shutting) {
        snprintf(err, errlen, "node is shutting down");
        rc = AM_ESHUTDOWN;
        goto refused;
    }
    const struct am_actor_type *t = am_registry_find(rt->reg, type, type_len);
    if (!t) {
        snprintf(err, errlen, "unknown actor type '%.*s'", (int)(type_len > 63 ? 63 : type_len),
                 type);
        rc = AM_ENOTYPE;
        goto refused;
    }
    if (payload_len > rt->o.max_payload) {
        snprintf(err, errlen, "payload of %zu bytes exceeds the limit of %zu", payload_len,
                 rt->o.max_payload);
        rc = AM_ETOOBIG;
        goto refused;
    }
    if (type_len > AM_MAX_TYPE || id_len == 0 || id_len > AM_MAX_ID) {
        snprintf(err, errlen, "actor id must be 1 to %d bytes", AM_MAX_ID);
        rc = AM_EPROTO;
        goto refused;
    }
    memcpy(key, type, type_len);
    key[type_len] = '/';
    memcpy(key + type_len + 1, id, id_len);
    size_t key_len = type_len + 1 + id_len;
    uint64_t h = XXH3_64bits(key, key_len);
    struct actor *act = table_find(rt, key, key_len, h);
    if (act && act->fenced) {
        snprintf(err, errlen, "%s is moving: a newer state of it is on another node; retry",
                 act->key);
        rc = AM_EUNAVAIL;
        goto refused;
    }
    if (!act) {
        rc = activate(rt, t, key, key_len, type_len, h, &act, err, errlen);
        if (rc)
            goto refused;
    }
    if (act->pending >= rt->o.mailbox) {
        snprintf(err, errlen, "mailbox of %s is full (%u messages); retry later", act->key,
                 rt->o.mailbox);
        rc = AM_EBUSY;
        goto refused;
    }
    struct msg *m = pool_get(&rt->msgs, sizeof *m + action_len + payload_len);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        rc = AM_EOVERLOAD;
        goto refused;
    }
    memset(m, 0, sizeof *m);
    m->cb = cb;
    m->ctx = ctx;
    m->req_id = req_id;
    m->t0 = uv_hrtime();
    m->action_len = (uint32_t)action_len;
    m->payload_len = (uint32_t)payload_len;
    memcpy(m->bytes, action, action_len);
    memcpy(m->bytes + action_len, payload, payload_len);
    mq_push(&act->mailbox, m);
    act->pending++;
    rt->st.queued++;
    act->last_used = uv_now(rt->loop);
    lru_unlink(rt, act);
    lru_push_front(rt, act);
    if (cb)
        rt->st.calls++;
    else
        rt->st.casts++;
    if (!act->running)
        run(rt, act);
    return 0;
refused:
    rt->st.refused++;
    return rc;
}

int am_runtime_new(struct am_runtime **out, uv_loop_t *loop, struct am_store *store,
                   const struct am_registry *reg, const struct am_runtime_opts *o)
{
    struct am_runtime *rt = am_calloc(1, sizeof *rt);
    if (!rt)
        return -ENOMEM;
    rt->loop = loop;
    rt->store = store;
    rt->reg = reg;
    rt->o = *o;
    rt->nbuckets = 1024;
    /* Pool block sizes: a message with a short action and payload (a
     * counter add is ~6 bytes of both), a state of up to 32 bytes, a write. */
    rt->msgs.size = sizeof(struct msg) + 64;
    rt->blobs.size = sizeof(struct blob) + 32;
    rt->writes.size = sizeof(struct snap_write);
    rt->table = am_calloc(rt->nbuckets, sizeof *rt->table);
    if (!rt->table) {
        am_free(rt);
        return -ENOMEM;
    }
    am_out_init(&rt->out, o->max_state, o->max_reply);
    uv_check_init(loop, &rt->flush_check);
    uv_timer_init(loop, &rt->sync_timer);
    uv_timer_init(loop, &rt->sweep_timer);
    rt->flush_check.data = rt->sync_timer.data = rt->sweep_timer.data = rt;
    rt->handles_open = 3;
    if (o->sync_interval_ms) {
        uv_timer_start(&rt->sync_timer, on_sync_timer, o->sync_interval_ms, o->sync_interval_ms);
        uv_unref((uv_handle_t *)&rt->sync_timer);
    }
    /* Sweeping four times per idle timeout deactivates an actor at most 25%
     * late; 10 ms..1 s keeps the sweep cheap for tiny and huge timeouts. */
    uint64_t sweep = o->idle_ms / 4;
    sweep = sweep < 10 ? 10 : sweep > 1000 ? 1000 : sweep;
    uv_timer_start(&rt->sweep_timer, on_sweep, sweep, sweep);
    uv_unref((uv_handle_t *)&rt->sweep_timer);
    *out = rt;
    return 0;
}

void am_runtime_get_stats(const struct am_runtime *rt, struct am_runtime_stats *st)
{
    *st = rt->st;
}

const uint64_t am_runtime_latency_le_us[AM_RUNTIME_LATENCY_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, UINT64_MAX};

void am_runtime_get_latency(const struct am_runtime *rt, struct am_runtime_latency *out)
{
    *out = rt->lat;
}

size_t am_runtime_get_type_stats(const struct am_runtime *rt,
                                  const struct am_runtime_type_stats **out)
{
    *out = rt->types;
    return rt->ntypes;
}

void am_runtime_set_replicator(struct am_runtime *rt, const struct am_replicator *r)
{
    rt->repl = r ? *r : (struct am_replicator){0};
}

int am_runtime_fence(struct am_runtime *rt, const char *key, size_t len, uint64_t epoch,
                     uint64_t seq)
{
    struct actor *a = table_find(rt, key, len, XXH3_64bits(key, len));
    if (!a)
        return 0;
    if (a->fenced)
        return 1;
    if (a->epoch > epoch || (a->epoch == epoch && a->seq >= seq))
        return -1;
    /* The replies held for the next write and those of the writes in
     * flight (as they complete) fail: they saw the older state. */
    fence(rt, a, NULL, 0);
    free_if_fenced(rt, a);
    return 1;
}

size_t am_runtime_fence_all(struct am_runtime *rt)
{
    size_t n = 0;
    struct actor *a = rt->lru_tail;
    while (a) {
        struct actor *prev = a->lru_prev;
        if (!a->fenced) {
            fence(rt, a, NULL, 1);
            n++;
        }
        free_if_fenced(rt, a);
        a = prev;
    }
    return n;
}

int am_runtime_is_active(const struct am_runtime *rt, const char *key, size_t len)
{
    return table_find(rt, key, len, XXH3_64bits(key, len)) != NULL;
}

void am_runtime_each_active(const struct am_runtime *rt,
                            void (*fn)(void *arg, const char *key, size_t len), void *arg)
{
    for (const struct actor *a = rt->lru_head; a; a = a->lru_next)
        fn(arg, a->key, a->key_len);
}

static void check_shutdown(struct am_runtime *rt)
{
    if (!rt->shutting || !rt->shutdown_done || rt->inflight_writes || rt->dirty)
        return;
    void (*done)(void *) = rt->shutdown_done;
    rt->shutdown_done = NULL;
    done(rt->shutdown_arg);
}

void am_runtime_shutdown(struct am_runtime *rt, void (*done)(void *arg), void *arg)
{
    rt->shutting = 1;
    rt->shutdown_done = done;
    rt->shutdown_arg = arg;
    uv_timer_stop(&rt->sync_timer);
    uv_timer_stop(&rt->sweep_timer);
    flush_dirty(rt);
    check_shutdown(rt);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct am_runtime *rt = h->data;
    if (--rt->handles_open == 0)
        am_free(rt);
}

void am_runtime_free(struct am_runtime *rt)
{
    /* Called after shutdown completed: no write is in flight. */
    if (!rt)
        return;
    while (rt->lru_head) {
        struct actor *a = rt->lru_head;
        /* Only reachable with messages pending if shutdown was skipped:
         * answer them rather than leak them. */
        fail_all(rt, a, &a->held, "node is shutting down");
        actor_free(rt, a);
    }
    am_free(rt->table);
    am_out_close(&rt->out);
    pool_drain(&rt->msgs);
    pool_drain(&rt->blobs);
    pool_drain(&rt->writes);
    uv_close((uv_handle_t *)&rt->flush_check, on_handle_closed);
    uv_close((uv_handle_t *)&rt->sync_timer, on_handle_closed);
    uv_close((uv_handle_t *)&rt->sweep_timer, on_handle_closed);
}
