/* handoff.c - a leaving node hands its actors' state to their next owners
 * (see handoff.h). */
#include "handoff.h"

#include "placement.h"
#include "replica.h"

#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Snapshots sent and not yet answered, over all peers: enough to keep a
 * peer stream's writes full, few enough that the states read for them stay
 * small (each is copied into the stream's buffer as it is sent). */
#define HANDOFF_WINDOW 128
/* Failures logged one by one; the rest are counted. */
#define LOG_FAILURES 10
/* A snapshot whose stream failed (refused, reset, timed out, full) is sent
 * again RETRY_MS later, at most RETRIES times: a newcomer refuses this
 * node's peer stream until gossip has told it about this node. A receiver
 * that refuses the snapshot itself (invalid_argument: not the owner, active
 * there) is not asked again. */
#define RETRY_MS 200
#define RETRIES 25

/* One snapshot to send: the key at off in keys, to member `to` of next,
 * as a HANDOFF (to its new owner) or a REPLICATE (to a new replica). */
struct entry {
    uint32_t off;
    uint16_t to;
    uint8_t kind;
};

struct leave {
    struct am_handoff_env env;
    struct am_handoff_stats *st;
    struct am_ring *next;   /* the ring without this node */
    struct am_peer **peers; /* per member of next */
    struct am_buf keys;     /* the keys to send, NUL-terminated, back to back */
    struct entry *offs;     /* what to send */
    size_t nkeys, cap, cursor, inflight;
    const struct am_ring *ring; /* borrowed until the store is walked */
    const char *what;           /* where the snapshots go, for the log */
    int self_idx;               /* this node in ring */
    int next_self;              /* this node in next, or -1 */
    struct am_buf state;        /* scratch for one snapshot */
    uint64_t started;
    void (*done)(void *arg);
    void *arg;
    int finished;
    size_t sent, failed;     /* this handoff's */
    uint8_t *tries;          /* per key */
    uint32_t *later, *ready; /* keys to send again after the timer, and now */
    size_t nlater, nready;
    uv_timer_t timer;
    /* A move sends the actors it was given first (those active here until
     * the ring changed: their callers wait at the new owner) before it walks
     * the store for the rest, which skips them. */
    const char **first; /* sorted; into first_keys */
    size_t nfirst;
    struct am_buf first_keys;
    int walking, walked; /* the store is being walked, was walked */
};

static int add_entry(struct leave *l, uint32_t off, int to, int kind)
{
    if (l->nkeys == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        struct entry *o = am_realloc(l->offs, cap * sizeof *o);
        if (!o)
            return -ENOMEM;
        l->offs = o;
        l->cap = cap;
    }
    l->offs[l->nkeys].off = off;
    l->offs[l->nkeys].to = (uint16_t)to;
    l->offs[l->nkeys].kind = (uint8_t)kind;
    l->nkeys++;
    return 0;
}

/* am_store_each_key: picks what to send of each stored key (a snapshot or
 * a replica held here):
 *  - to its new owner, when this node owned it by the old ring and another
 *    member owns it by the new one (a handoff; the new owner replicates
 *    it on);
 *  - to its new replicas, when this node owns it by the new ring: every
 *    replica by the new ring that was not one by the old (all of them when
 *    this node did not own it before: it took over from a member that is
 *    gone, from the copy it kept as a replica). */
static int is_first(const struct leave *l, const char *key, size_t len)
{
    size_t lo = 0, hi = l->nfirst;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *f = l->first[mid];
        int c = strncmp(f, key, len);
        if (c == 0)
            c = f[len] != '\0';
        if (c == 0)
            return 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static int collect(void *arg, const char *key, size_t len)
{
    struct leave *l = arg;
    struct am_placement_send add[AM_PLACEMENT_MAX_COPIES];
    if (l->walking && is_first(l, key, len))
        return 0; /* sent first */
    size_t n = am_placement_plan(l->ring, l->self_idx, l->next, l->next_self,
                                 am_ring_key_of(key, len), l->env.copies, add);
    if (n == 0)
        return 0;
    if (l->keys.len + len + 1 > UINT32_MAX)
        return -ENOMEM;
    uint32_t off = (uint32_t)l->keys.len;
    static const char nul = '\0';
    if (am_buf_append(&l->keys, key, len) || am_buf_append(&l->keys, &nul, 1))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (add_entry(l, off, add[i].to,
                      add[i].kind == AM_PLACE_HANDOFF ? AM_MSG_HANDOFF : AM_MSG_REPLICATE))
            return -ENOMEM;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct leave *l = h->data;
    am_ring_free(l->next);
    am_free(l->peers);
    am_free(l->offs);
    am_free(l->tries);
    am_free(l->later);
    am_free(l->ready);
    am_buf_close(&l->keys);
    am_buf_close(&l->state);
    am_free(l->first);
    am_buf_close(&l->first_keys);
    am_free(l);
}

static void leave_free(struct leave *l)
{
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
}

static void pump(struct leave *l);
static int walk(struct leave *l);

static void finish(struct leave *l)
{
    if (l->finished)
        return;
    l->finished = 1;
    uint64_t ms = uv_now(l->env.loop) - l->started;
    if (l->failed)
        am_log_warn("sent %zu of %zu snapshots (handoffs and new replicas) in %llu ms; %zu "
                    "could not be and stay in this node's data directory",
                    l->nkeys - l->failed, l->nkeys, (unsigned long long)ms, l->failed);
    else if (l->nkeys)
        am_log_info("sent %zu snapshots in %llu ms: %zu handed off to their next owners, the "
                    "rest to new replicas",
                    l->nkeys, (unsigned long long)ms, l->sent);
    void (*done)(void *) = l->done;
    void *arg = l->arg;
    leave_free(l);
    done(arg);
}

static void failed(struct leave *l, const char *key, const char *why)
{
    l->st->failed++;
    if (l->failed++ < LOG_FAILURES)
        am_log_warn("cannot hand off %s: %s", key, why);
}

static void on_retry(uv_timer_t *h)
{
    struct leave *l = h->data;
    memcpy(l->ready + l->nready, l->later, l->nlater * sizeof *l->later);
    l->nready += l->nlater;
    l->nlater = 0;
    pump(l);
}

/* 1 when key idx will be sent again (a failure of its stream), else 0. */
static int again(struct leave *l, size_t idx, int status)
{
    if ((status != AM_ST_UNAVAILABLE && status != AM_ST_TIMEOUT && status != AM_ST_OVERLOADED) ||
        l->tries[idx] >= RETRIES)
        return 0;
    l->tries[idx]++;
    l->later[l->nlater++] = (uint32_t)idx;
    if (!uv_is_active((uv_handle_t *)&l->timer))
        uv_timer_start(&l->timer, on_retry, RETRY_MS, 0);
    return 1;
}

static void on_reply(void *ctx, uint64_t idx, int status, const uint8_t *body, size_t len)
{
    struct leave *l = ctx;
    const char *key = (const char *)l->keys.data + l->offs[idx].off;
    l->inflight--;
    if (status != AM_ST_OK && again(l, idx, status)) {
        pump(l);
        return;
    }
    if (status == AM_ST_OK && l->offs[idx].kind == AM_MSG_REPLICATE) {
        l->st->repaired++;
        /* The new replica holds a newer copy than this owner: keep it. */
        if (len && body[0] != 0xc0)
            am_replication_keep_newer(l->env.store, key, strlen(key), body, len);
    } else if (status == AM_ST_OK) {
        l->st->sent++;
        l->sent++;
    } else {
        char why[200];
        const char *msg = "";
        uint32_t mlen = 0;
        const uint8_t *p = body;
        if (len)
            am_mp_read_str(&p, body + len, &msg, &mlen);
        snprintf(why, sizeof why, "%s: %.*s", am_status_name(status), (int)mlen, msg);
        failed(l, key, why);
    }
    pump(l);
}

/* Sends snapshots until the window is full or none is left; finishes once
 * every one is answered. */
static void pump(struct leave *l)
{
    char err[300];
    if (l->env.abort && *l->env.abort && !l->finished) {
        /* Stopping: what is not sent yet stays here (the leave handoff
         * that follows sends what this node owns). */
        l->cursor = l->nkeys;
        l->nready = l->nlater = 0;
        l->walked = 1;
        uv_timer_stop(&l->timer);
    }
    if (!l->walked && l->cursor == l->nkeys && l->inflight == 0 && l->nready == 0) {
        int rc = walk(l);
        if (rc) {
            /* What was not collected stays here, as for a failed send. */
            am_log_error("cannot list the actors to hand off: %s", am_strerror(rc));
            l->st->failed++;
            l->failed++;
        }
    }
    while (l->inflight < HANDOFF_WINDOW && (l->cursor < l->nkeys || l->nready)) {
        size_t idx = l->nready ? l->ready[--l->nready] : l->cursor++;
        const char *key = (const char *)l->keys.data + l->offs[idx].off;
        size_t len = strlen(key);
        struct am_request r;
        memset(&r, 0, sizeof r);
        r.kind = l->offs[idx].kind;
        r.id = idx;
        r.type = key;
        r.type_len = (uint32_t)len;
        int rc = am_store_get(l->env.store, key, len, &l->state, &r.epoch, &r.seq);
        if (rc == -ENOENT)
            continue; /* deleted since it was listed: nothing to hand off */
        if (rc) {
            failed(l, key, am_strerror(rc));
            continue;
        }
        r.payload = l->state.data;
        r.payload_len = (uint32_t)l->state.len;
        struct am_peer *p = l->peers[l->offs[idx].to];
        if (!p) {
            failed(l, key, "the member it goes to has no peer stream");
            continue;
        }
        rc = am_peer_forward(p, &r, 0, 0, idx, on_reply, l, err, sizeof err);
        if (rc == AM_EOVERLOAD && l->inflight > 0) {
            l->ready[l->nready++] = (uint32_t)idx; /* again when a reply frees room */
            break;
        }
        if (rc && !again(l, idx, am_status_of(rc)))
            failed(l, key, err);
        if (rc)
            continue;
        l->inflight++;
    }
    if (l->walked && l->cursor == l->nkeys && l->inflight == 0 && l->nready == 0 &&
        l->nlater == 0)
        finish(l);
}

/* The HANDOFFs go before the REPLICATEs to new replicas: a newcomer holds
 * the calls for an actor until its handoff is there, nobody waits for a
 * new replica. Stable, so each kind keeps the store's key order. */
static int handoffs_first(struct leave *l, size_t from)
{
    size_t n = l->nkeys - from;
    if (n < 2)
        return 0;
    struct entry *sorted = am_malloc(n * sizeof *sorted);
    if (!sorted)
        return -ENOMEM;
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = from; i < l->nkeys; i++)
            if ((l->offs[i].kind == AM_MSG_HANDOFF) == (pass == 0))
                sorted[k++] = l->offs[i];
    memcpy(l->offs + from, sorted, n * sizeof *sorted);
    am_free(sorted);
    return 0;
}

/* Sizes the per-key arrays for nkeys entries (the new ones untried). */
static int size_arrays(struct leave *l, size_t had)
{
    size_t n = l->nkeys ? l->nkeys : 1;
    uint8_t *tries = am_realloc(l->tries, n);
    if (!tries)
        return -ENOMEM;
    l->tries = tries;
    memset(tries + had, 0, n - had);
    uint32_t *later = am_realloc(l->later, n * sizeof *later);
    if (!later)
        return -ENOMEM;
    l->later = later;
    uint32_t *ready = am_realloc(l->ready, n * sizeof *ready);
    if (!ready)
        return -ENOMEM;
    l->ready = ready;
    return 0;
}

/* Collects what to send of every stored key but the ones sent first, after
 * them, handoffs before replicas. */
static int walk(struct leave *l)
{
    size_t had = l->nkeys;
    l->walked = 1;
    l->walking = 1;
    int rc = am_store_each_key(l->env.store, collect, l);
    l->walking = 0;
    if (!rc)
        rc = handoffs_first(l, had);
    if (!rc)
        rc = size_arrays(l, had);
    if (rc)
        l->nkeys = had;
    else if (l->nkeys > had)
        am_log_info("sending %zu snapshots %s", l->nkeys - had, l->what);
    return rc;
}

static int by_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first keys (back to back, each NUL-terminated, len bytes in all):
 * copied, sorted for the walk to skip them, and planned. */
static int plan_first(struct leave *l, const char *keys, size_t len)
{
    if (!len)
        return 0;
    if (keys[len - 1] != '\0')
        return -EINVAL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += keys[i] == '\0';
    if (am_buf_append(&l->first_keys, keys, len) || !(l->first = am_malloc(n * sizeof *l->first)))
        return -ENOMEM;
    const char *p = (const char *)l->first_keys.data, *end = p + len;
    for (; p < end; p += strlen(p) + 1)
        if (*p)
            l->first[l->nfirst++] = p;
    qsort(l->first, l->nfirst, sizeof *l->first, by_key);
    size_t k = 0;
    for (size_t i = 0; i < l->nfirst; i++) {
        if (k && strcmp(l->first[k - 1], l->first[i]) == 0)
            continue; /* released twice since the last move */
        l->first[k++] = l->first[i];
        int rc = collect(l, l->first[i], strlen(l->first[i]));
        if (rc)
            return rc;
    }
    l->nfirst = k;
    return handoffs_first(l, 0);
}

/* Hands off what moves from ring (this node at self_idx) to next (which l
 * owns and this function frees on error). */
static int move(struct leave *l, const struct am_ring *ring, int self_idx, const char *what,
                const char *first, size_t first_len)
{
    l->ring = ring;
    l->what = what;
    l->self_idx = self_idx;
    l->next_self = am_ring_find(l->next, l->env.self);
    size_t k = am_ring_count(l->next);
    int rc = (l->peers = am_calloc(k ? k : 1, sizeof *l->peers)) ? 0 : -ENOMEM;
    for (size_t i = 0; !rc && i < k; i++) {
        struct am_swim_member m;
        if ((int)i != l->next_self &&
            am_swim_find(l->env.core, am_ring_member(l->next, (int)i), &m) == 0)
            l->peers[i] = am_peers_get(l->env.peers, m.name, m.addr);
    }
    if (!rc)
        rc = plan_first(l, first, first_len);
    if (!rc)
        rc = size_arrays(l, 0);
    if (!rc && l->nkeys)
        am_log_info("sending %zu snapshots %s, of the actors that were active here, before the "
                    "others",
                    l->nkeys, what);
    if (!rc && !l->nkeys)
        rc = walk(l);
    if (rc) {
        leave_free(l);
        return rc;
    }
    pump(l);
    return 0;
}

static struct leave *leave_new(const struct am_handoff_env *env, struct am_handoff_stats *st,
                               void (*done)(void *arg), void *arg)
{
    struct leave *l = am_calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->env = *env;
    l->st = st;
    l->done = done;
    l->arg = arg;
    l->started = uv_now(env->loop);
    am_buf_init(&l->keys);
    am_buf_init(&l->state);
    uv_timer_init(env->loop, &l->timer);
    l->timer.data = l;
    return l;
}

/* A ring of the members of r but one (skip, an index of r; -1: none). */
static int ring_without(const struct am_ring *r, int skip, struct am_ring **out)
{
    size_t count = am_ring_count(r), k = 0;
    const char **names = am_malloc((count ? count : 1) * sizeof *names);
    if (!names)
        return -ENOMEM;
    for (size_t i = 0; i < count; i++)
        if ((int)i != skip)
            names[k++] = am_ring_member(r, (int)i);
    int rc = am_ring_build(out, names, k, am_ring_vnodes(r));
    am_free(names);
    return rc;
}

int am_handoff_leave(const struct am_handoff_env *env, const struct am_ring *ring, int self_idx,
                     struct am_handoff_stats *st, void (*done)(void *arg), void *arg)
{
    struct leave *l = leave_new(env, st, done, arg);
    if (!l)
        return -ENOMEM;
    if (!ring || self_idx < 0 || am_ring_count(ring) < 2) {
        finish(l); /* alone, or not in the ring: nobody to hand anything to */
        return 0;
    }
    /* The ring the others will build once this node is gone. */
    int rc = ring_without(ring, self_idx, &l->next);
    if (rc) {
        leave_free(l);
        return rc;
    }
    return move(l, ring, self_idx, "to their next owners before leaving", NULL, 0);
}

int am_handoff_move(const struct am_handoff_env *env, const struct am_ring *from,
                    const struct am_ring *to, const char *first, size_t first_len,
                    struct am_handoff_stats *st, void (*done)(void *arg), void *arg)
{
    struct leave *l = leave_new(env, st, done, arg);
    if (!l)
        return -ENOMEM;
    int self_idx = from ? am_ring_find(from, env->self) : -1;
    if (!from || !to || self_idx < 0 || am_ring_count(to) == 0) {
        finish(l);
        return 0;
    }
    int rc = ring_without(to, -1, &l->next);
    if (rc) {
        leave_free(l);
        return rc;
    }
    return move(l, from, self_idx, "to the members that joined", first, first_len);
}

int am_handoff_previous_owner(const struct am_ring *ring, const struct am_ring *without_self,
                              int self_idx, const char *key, size_t len, const char **prev)
{
    uint64_t h = am_ring_key_of(key, len);
    if (!ring || !without_self || self_idx < 0 || am_ring_owner(ring, h) != self_idx ||
        am_ring_count(without_self) == 0)
        return 0;
    *prev = am_ring_member(without_self, am_ring_owner(without_self, h));
    return 1;
}

/* ---- the receiving side ---- */

struct take {
    struct am_store_write w;
    struct am_handoff_stats *st;
    am_reply_fn cb;
    void *ctx;
    uint64_t id;
    uint8_t *state;
    struct am_replicator repl;
    unsigned waits; /* replicas not yet answered */
    void (*taken)(void *arg, const char *key, size_t len); /* from the previous owner */
    void *taken_arg;
    char key[];
};

static void take_free(struct take *t)
{
    am_free(t->state);
    am_free(t);
}

static void on_replicated(void *ctx, int stale)
{
    (void)stale; /* a replica with a newer copy: it will answer the owner's next write so */
    struct take *t = ctx;
    if (--t->waits)
        return;
    t->cb(t->ctx, t->id, AM_ST_OK, (const uint8_t *)"\xc0", 1);
    if (t->taken)
        t->taken(t->taken_arg, t->key, strlen(t->key));
    take_free(t);
}

static void on_stored(struct am_store_write *w, int status)
{
    struct take *t = (struct take *)w;
    static const uint8_t nil = 0xc0;
    if (status == 0 && !w->stale && t->repl.send) {
        /* The new owner keeps R copies before the old one lets go of its:
         * the answer waits for the replicas too. */
        t->st->received++;
        t->waits = t->repl.send(t->repl.arg, t->key, w->key_len, w->epoch, w->seq,
                                    t->state, w->state_len, on_replicated, t);
        if (t->waits)
            return;
        t->cb(t->ctx, t->id, AM_ST_OK, &nil, 1);
        if (t->taken)
            t->taken(t->taken_arg, t->key, w->key_len);
    } else if (status == 0) {
        /* Stored, or a copy here is as new (it was handed here before). */
        t->st->received += !w->stale;
        t->st->current += w->stale != 0;
        t->cb(t->ctx, t->id, AM_ST_OK, &nil, 1);
        if (t->taken)
            t->taken(t->taken_arg, t->key, w->key_len);
    } else {
        char msg[200];
        uint8_t body[210];
        snprintf(msg, sizeof msg, "cannot store the handed-off state of %s: %s", t->key,
                 am_strerror(status));
        size_t n = strlen(msg);
        body[0] = 0xd9;
        body[1] = (uint8_t)n;
        memcpy(body + 2, msg, n);
        am_log_warn("%s", msg);
        t->cb(t->ctx, t->id, AM_ST_STORAGE, body, n + 2);
    }
    take_free(t);
}

int am_handoff_take(const struct am_handoff_env *env, const struct am_ring *ring,
                    const struct am_ring *without_self, int waiting, const char *peer,
                    const struct am_request *r, am_reply_fn cb, void *ctx,
                    struct am_handoff_stats *st, char *err, size_t errlen)
{
    const char *key = r->type;
    size_t len = r->type_len;
    int owner = ring ? am_ring_owner(ring, am_ring_key_of(key, len)) : -1;
    const char *prev = NULL;
    int self_idx = ring ? am_ring_find(ring, env->self) : -1;
    int from_previous = waiting &&
                        am_handoff_previous_owner(ring, without_self, self_idx, key, len, &prev) &&
                        strcmp(prev, peer) == 0;
    /* From its owner (leaving), its previous owner (this node joined), or
     * anyone when this node owns it: a member that served the actor while
     * this node was paused or cut off hands it back. Only a newer version
     * is stored. */
    if (!from_previous && owner != self_idx &&
        (owner < 0 || strcmp(am_ring_member(ring, owner), peer) != 0)) {
        st->refused++;
        return am_errf(err, errlen, AM_EINVAL,
                       "neither %s nor %s owns %.*s by %s's ring (%s does); handoff not taken",
                       peer, env->self, (int)len, key, env->self,
                       owner < 0 ? "nobody" : am_ring_member(ring, owner));
    }
    /* Active here: with an older version, that copy leaves memory (it was
     * served while the sender owned the actor: this node was paused or cut
     * off); with the same or a newer one, nothing is to be taken. */
    if (am_runtime_fence(env->rt, key, len, r->epoch, r->seq) < 0) {
        st->current++;
        cb(ctx, r->id, AM_ST_OK, (const uint8_t *)"\xc0", 1);
        if (from_previous && env->taken)
            env->taken(env->taken_arg, key, len);
        return 0;
    }
    struct take *t = am_calloc(1, sizeof *t + len + 1);
    uint8_t *state = am_malloc(r->payload_len ? r->payload_len : 1);
    if (!t || !state) {
        am_free(t);
        am_free(state);
        return am_errf(err, errlen, AM_EOVERLOAD, "out of memory taking a handoff; retry");
    }
    memcpy(t->key, key, len);
    memcpy(state, r->payload, r->payload_len);
    t->state = state;
    t->st = st;
    t->cb = cb;
    t->ctx = ctx;
    t->id = r->id;
    t->repl = env->repl;
    if (from_previous) {
        t->taken = env->taken;
        t->taken_arg = env->taken_arg;
    }
    t->w.key = t->key;
    t->w.key_len = len;
    t->w.epoch = r->epoch;
    t->w.seq = r->seq;
    t->w.state = state;
    t->w.state_len = r->payload_len;
    t->w.flags = AM_STORE_NEWER;
    int rc = am_store_write(env->store, &t->w, on_stored);
    if (rc) {
        am_free(state);
        am_free(t);
        return am_errf(err, errlen, rc == -ESHUTDOWN ? AM_ESHUTDOWN : AM_ESTORAGE,
                       "cannot store the handed-off state of %.*s: %s", (int)len, key,
                       am_strerror(rc));
    }
    return 0;
}
