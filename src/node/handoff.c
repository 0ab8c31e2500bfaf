/* handoff.c - a leaving node hands its actors' state to their next owners
 * (see handoff.h). */
#include "handoff.h"

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

struct leave {
    struct am_handoff_env env;
    struct am_handoff_stats *st;
    struct am_ring *next;   /* the ring without this node */
    struct am_peer **peers; /* per member of next */
    struct am_buf keys;     /* the keys to hand off, NUL-terminated, back to back */
    uint32_t *offs;         /* where each key starts in keys */
    size_t nkeys, cap, cursor, inflight;
    const struct am_ring *ring; /* borrowed while the keys are collected */
    int self_idx;
    struct am_buf state; /* scratch for one snapshot */
    uint64_t started;
    void (*done)(void *arg);
    void *arg;
    int finished;
};

static uint64_t key_hash(const char *key, size_t len)
{
    const char *slash = memchr(key, '/', len);
    if (!slash) /* not a "type/id" key: hashed whole, owned by someone all the same */
        return am_ring_key(key, len, "", 0);
    return am_ring_key(key, (size_t)(slash - key), slash + 1, len - (size_t)(slash - key) - 1);
}

/* am_store_each_key: keeps the keys this node owns. */
static int collect(void *arg, const char *key, size_t len)
{
    struct leave *l = arg;
    if (am_ring_owner(l->ring, key_hash(key, len)) != l->self_idx)
        return 0; /* a copy from an earlier view: another member owns it */
    if (l->nkeys == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        uint32_t *o = am_realloc(l->offs, cap * sizeof *o);
        if (!o)
            return -ENOMEM;
        l->offs = o;
        l->cap = cap;
    }
    if (l->keys.len + len + 1 > UINT32_MAX)
        return -ENOMEM;
    l->offs[l->nkeys] = (uint32_t)l->keys.len;
    static const char nul = '\0';
    if (am_buf_append(&l->keys, key, len) || am_buf_append(&l->keys, &nul, 1))
        return -ENOMEM;
    l->nkeys++;
    return 0;
}

static void leave_free(struct leave *l)
{
    am_ring_free(l->next);
    am_free(l->peers);
    am_free(l->offs);
    am_buf_close(&l->keys);
    am_buf_close(&l->state);
    am_free(l);
}

static void pump(struct leave *l);

static void finish(struct leave *l)
{
    if (l->finished)
        return;
    l->finished = 1;
    uint64_t ms = uv_now(l->env.loop) - l->started;
    if (l->st->failed)
        am_log_warn("handed off %llu of %zu actors in %llu ms; %llu could not be and stay in "
                    "this node's data directory",
                    (unsigned long long)l->st->sent, l->nkeys, (unsigned long long)ms,
                    (unsigned long long)l->st->failed);
    else
        am_log_info("handed off %llu actors to their next owners in %llu ms",
                    (unsigned long long)l->st->sent, (unsigned long long)ms);
    void (*done)(void *) = l->done;
    void *arg = l->arg;
    leave_free(l);
    done(arg);
}

static void failed(struct leave *l, const char *key, const char *why)
{
    if (l->st->failed++ < LOG_FAILURES)
        am_log_warn("cannot hand off %s: %s", key, why);
}

static void on_reply(void *ctx, uint64_t idx, int status, const uint8_t *body, size_t len)
{
    struct leave *l = ctx;
    const char *key = (const char *)l->keys.data + l->offs[idx];
    l->inflight--;
    if (status == AM_ST_OK) {
        l->st->sent++;
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
    while (l->inflight < HANDOFF_WINDOW && l->cursor < l->nkeys) {
        size_t idx = l->cursor++;
        const char *key = (const char *)l->keys.data + l->offs[idx];
        size_t len = strlen(key);
        struct am_request r;
        memset(&r, 0, sizeof r);
        r.kind = AM_MSG_HANDOFF;
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
        struct am_peer *p = l->peers[am_ring_owner(l->next, key_hash(key, len))];
        if (!p) {
            failed(l, key, "its next owner has no peer stream");
            continue;
        }
        rc = am_peer_forward(p, &r, 0, 0, idx, on_reply, l, err, sizeof err);
        if (rc == AM_EOVERLOAD && l->inflight > 0) {
            l->cursor--; /* the stream is full: again when a reply frees room */
            break;
        }
        if (rc) {
            failed(l, key, err);
            continue;
        }
        l->inflight++;
    }
    if (l->cursor == l->nkeys && l->inflight == 0)
        finish(l);
}

int am_handoff_leave(const struct am_handoff_env *env, const struct am_ring *ring, int self_idx,
                     struct am_handoff_stats *st, void (*done)(void *arg), void *arg)
{
    size_t count = ring ? am_ring_count(ring) : 0;
    struct leave *l = am_calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->env = *env;
    l->st = st;
    l->done = done;
    l->arg = arg;
    l->ring = ring;
    l->self_idx = self_idx;
    l->started = uv_now(env->loop);
    am_buf_init(&l->keys);
    am_buf_init(&l->state);
    if (self_idx < 0 || count < 2) {
        finish(l); /* alone, or not in the ring: nobody to hand anything to */
        return 0;
    }
    /* The ring the others will build once this node is gone. */
    const char **names = am_malloc((count - 1) * sizeof *names);
    int rc = names ? 0 : -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; !rc && i < count; i++)
        if ((int)i != self_idx)
            names[k++] = am_ring_member(ring, (int)i);
    if (!rc)
        rc = am_ring_build(&l->next, names, k, am_ring_vnodes(ring));
    am_free(names);
    if (!rc && !(l->peers = am_calloc(k, sizeof *l->peers)))
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < k; i++) {
        struct am_swim_member m;
        if (am_swim_find(env->core, am_ring_member(l->next, (int)i), &m) == 0)
            l->peers[i] = am_peers_get(env->peers, m.name, m.addr);
    }
    if (!rc)
        rc = am_store_each_key(env->store, collect, l);
    if (rc) {
        leave_free(l);
        return rc;
    }
    l->ring = NULL;
    am_log_info("handing off %zu actors to %zu members before leaving", l->nkeys, k);
    pump(l);
    return 0;
}

/* ---- the receiving side ---- */

struct take {
    struct am_store_write w;
    struct am_handoff_stats *st;
    am_reply_fn cb;
    void *ctx;
    uint64_t id;
    uint8_t *state;
    char key[];
};

static void on_stored(struct am_store_write *w, int status)
{
    struct take *t = (struct take *)w;
    static const uint8_t nil = 0xc0;
    if (status == 0) {
        t->st->received++;
        t->cb(t->ctx, t->id, AM_ST_OK, &nil, 1);
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
    am_free(t->state);
    am_free(t);
}

int am_handoff_take(const struct am_handoff_env *env, const struct am_ring *ring, const char *peer,
                    const struct am_request *r, am_reply_fn cb, void *ctx,
                    struct am_handoff_stats *st, char *err, size_t errlen)
{
    const char *key = r->type;
    size_t len = r->type_len;
    int owner = ring ? am_ring_owner(ring, key_hash(key, len)) : -1;
    if (owner < 0 || strcmp(am_ring_member(ring, owner), peer) != 0) {
        st->refused++;
        return am_errf(err, errlen, AM_EUNAVAIL,
                       "%s does not own %.*s by %s's ring (%s does); handoff not taken", peer,
                       (int)len, key, env->self,
                       owner < 0 ? "nobody" : am_ring_member(ring, owner));
    }
    if (am_runtime_is_active(env->rt, key, len)) {
        st->refused++;
        return am_errf(err, errlen, AM_EUNAVAIL, "%.*s is active on %s; handoff not taken",
                       (int)len, key, env->self);
    }
    if (r->payload_len == 0) {
        st->refused++;
        return am_errf(err, errlen, AM_EPROTO, "handoff of %.*s carries no state", (int)len, key);
    }
    struct take *t = am_calloc(1, sizeof *t + len + 1);
    uint8_t *state = am_malloc(r->payload_len);
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
    t->w.key = t->key;
    t->w.key_len = len;
    t->w.epoch = r->epoch;
    t->w.seq = r->seq;
    t->w.state = state;
    t->w.state_len = r->payload_len;
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
