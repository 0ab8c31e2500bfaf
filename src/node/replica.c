/* replica.c - sending committed states to replicas and keeping theirs
 * (see replica.h). */
#include "replica.h"

#include "placement.h"

#include "err.h"
#include "hset.h"
#include "log.h"
#include "mem.h"
#include "mp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Undeliverable replicas are logged once per this many (the count is in
 * status). */
#define LOG_EVERY 1000
/* The queue of keys to send again: checked every RETRY_MS, at most
 * RETRY_BATCH keys a time, at most RETRY_MAX keys waiting (beyond, the
 * next write or ring change repairs them). */
#define RETRY_MS 1000
#define RETRY_BATCH 1024
#define RETRY_MAX 65536

/* ---- sending again ------------------------------------------------------ */

struct am_replica_retry {
    uv_timer_t timer;
    struct am_replication *rp;
    char **keys; /* waiting, oldest first (NUL-terminated copies) */
    size_t n, cap;
    struct am_hset set; /* the waiting keys' hashes */
    int closing;
};

static void on_retry_timer(uv_timer_t *h);

static void retry_add(struct am_replication *rp, const char *key, size_t len)
{
    struct am_replica_retry *q = rp->retry;
    if (!q) {
        q = am_calloc(1, sizeof *q);
        if (!q) {
            rp->st.retry_dropped++;
            return;
        }
        am_hset_init(&q->set);
        q->rp = rp;
        uv_timer_init(rp->loop, &q->timer);
        q->timer.data = q;
        rp->retry = q;
    }
    if (q->closing)
        return;
    if (q->n >= RETRY_MAX) {
        rp->st.retry_dropped++;
        return;
    }
    int added = am_hset_add(&q->set, am_ring_key_of(key, len));
    if (added <= 0) {
        rp->st.retry_dropped += added < 0;
        return;
    }
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        char **k = am_realloc(q->keys, cap * sizeof *k);
        if (!k) {
            rp->st.retry_dropped++;
            return;
        }
        q->keys = k;
        q->cap = cap;
    }
    char *copy = am_strndup(key, len);
    if (!copy) {
        rp->st.retry_dropped++;
        return;
    }
    q->keys[q->n++] = copy;
    rp->st.retry_pending = q->n;
    if (!uv_is_active((uv_handle_t *)&q->timer))
        uv_timer_start(&q->timer, on_retry_timer, RETRY_MS, RETRY_MS);
}

void am_replication_queue(struct am_replication *rp, const char *key, size_t len)
{
    retry_add(rp, key, len);
}

static unsigned send_state(struct am_replication *rp, const char *key, size_t key_len,
                           uint64_t epoch, uint64_t seq, const uint8_t *state, size_t len,
                           am_replica_done_fn done, void *ctx, int retry);

static void retry_sent(void *ctx, int stale)
{
    (void)ctx;
    (void)stale; /* a newer copy there: the replica is not behind */
}

/* The oldest keys waiting are sent again, each as the owner stores it now,
 * to its replicas by the ring now; one that fails again is queued again. */
static void on_retry_timer(uv_timer_t *h)
{
    struct am_replica_retry *q = h->data;
    struct am_replication *rp = q->rp;
    size_t take = q->n < RETRY_BATCH ? q->n : RETRY_BATCH;
    char **batch = am_malloc((take ? take : 1) * sizeof *batch);
    if (!batch)
        return;
    memcpy(batch, q->keys, take * sizeof *batch);
    memmove(q->keys, q->keys + take, (q->n - take) * sizeof *q->keys);
    q->n -= take;
    am_hset_clear(&q->set);
    for (size_t i = 0; i < q->n; i++)
        am_hset_add(&q->set, am_ring_key_of(q->keys[i], strlen(q->keys[i])));
    struct am_buf state;
    am_buf_init(&state);
    for (size_t i = 0; i < take; i++) {
        const char *key = batch[i];
        size_t len = strlen(key);
        uint64_t epoch, seq;
        if (rp->ring && rp->self_idx >= 0 &&
            am_ring_owner(rp->ring, am_ring_key_of(key, len)) == rp->self_idx &&
            am_store_get(rp->store, key, len, &state, &epoch, &seq) == 0) {
            rp->st.retried++;
            send_state(rp, key, len, epoch, seq, state.data, state.len, retry_sent, NULL, 1);
        }
        am_free(batch[i]);
    }
    am_buf_close(&state);
    am_free(batch);
    rp->st.retry_pending = q->n;
    if (!q->n)
        uv_timer_stop(&q->timer);
}

static void on_retry_closed(uv_handle_t *h)
{
    struct am_replica_retry *q = h->data;
    for (size_t i = 0; i < q->n; i++)
        am_free(q->keys[i]);
    am_free(q->keys);
    am_hset_free(&q->set);
    am_free(q);
}

void am_replication_close(struct am_replication *rp)
{
    struct am_replica_retry *q = rp->retry;
    if (!q)
        return;
    rp->retry = NULL;
    q->closing = 1;
    uv_close((uv_handle_t *)&q->timer, on_retry_closed);
}

/* ---- sending ------------------------------------------------------------ */

struct send {
    struct am_replication *rp;
    am_replica_done_fn done;
    void *ctx;
    int retry; /* a state sent again: counted in retried only */
};

/* A newer copy a replica answered with: kept here (as a replica record,
 * only if newer than what is here), so the actor's next activation on this
 * node starts from it. */
struct keep {
    struct am_store_write w;
    uint8_t bytes[]; /* key, then state */
};

static void on_kept(struct am_store_write *w, int status)
{
    if (status)
        am_log_warn("cannot keep the newer state of %.*s a replica sent: %s", (int)w->key_len,
                    w->key, am_strerror(status));
    am_free(w);
}

void am_replication_keep_newer(struct am_store *store, const char *key, size_t key_len,
                                const uint8_t *body, size_t len)
{
    const uint8_t *p = body, *end = body + len, *state;
    uint32_t n, state_len;
    uint64_t epoch, seq;
    if (am_mp_read_array(&p, end, &n) || n != 3 || am_mp_read_uint(&p, end, &epoch) ||
        am_mp_read_uint(&p, end, &seq) || am_mp_read_bin(&p, end, &state, &state_len))
        return; /* [epoch, seq] alone, or a peer of another version: nothing to keep */
    struct keep *k = am_malloc(sizeof *k + key_len + state_len);
    if (!k)
        return;
    memset(&k->w, 0, sizeof k->w);
    memcpy(k->bytes, key, key_len);
    if (state_len)
        memcpy(k->bytes + key_len, state, state_len);
    k->w.key = (const char *)k->bytes;
    k->w.key_len = key_len;
    k->w.epoch = epoch;
    k->w.seq = seq;
    k->w.state = k->bytes + key_len;
    k->w.state_len = state_len;
    k->w.flags = AM_STORE_NEWER | AM_STORE_REPLICA;
    if (am_store_write(store, &k->w, on_kept))
        am_free(k);
}

static void on_replica_reply(void *ctx, uint64_t id, int status, const uint8_t *body,
                             size_t len)
{
    (void)id;
    struct send *s = ctx;
    struct am_replication *rp = s->rp;
    int stale = 0;
    if (status == AM_ST_OK && len && body[0] != 0xc0) {
        stale = 1;
        rp->st.stale += !s->retry;
    } else if (status == AM_ST_OK) {
        rp->st.acked += !s->retry;
    } else if (s->retry) {
        /* queued again by on_keyed_reply */
    } else if (rp->st.unreplicated++ % LOG_EVERY == 0) {
        const uint8_t *p = body;
        const char *msg = "";
        uint32_t mlen = 0;
        if (len)
            am_mp_read_str(&p, body + len, &msg, &mlen);
        am_log_warn("a state could not be replicated (%llu so far): %s: %.*s",
                    (unsigned long long)rp->st.unreplicated, am_status_name(status), (int)mlen,
                    msg);
    }
    s->done(s->ctx, stale);
    am_free(s);
}

/* The stale answer carries the newer copy; the key is needed to keep it,
 * and the peer layer hands back only ctx: such answers go through here. */
struct send_keyed {
    struct send s;
    size_t key_len;
    char key[];
};

static void on_keyed_reply(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct send_keyed *k = ctx;
    if (status == AM_ST_OK && len && body[0] != 0xc0)
        am_replication_keep_newer(k->s.rp->store, k->key, k->key_len, body, len);
    else if (status != AM_ST_OK)
        retry_add(k->s.rp, k->key, k->key_len);
    on_replica_reply(&k->s, id, status, body, len);
    /* on_replica_reply freed &k->s, which is k */
}

unsigned am_replication_send(void *arg, const char *key, size_t key_len, uint64_t epoch,
                             uint64_t seq, const uint8_t *state, size_t len,
                             am_replica_done_fn done, void *ctx)
{
    return send_state(arg, key, key_len, epoch, seq, state, len, done, ctx, 0);
}

static unsigned send_state(struct am_replication *rp, const char *key, size_t key_len,
                           uint64_t epoch, uint64_t seq, const uint8_t *state, size_t len,
                           am_replica_done_fn done, void *ctx, int retry)
{
    int targets[AM_PLACEMENT_MAX_COPIES];
    if (!rp->ring || rp->copies < 2)
        return 0;
    size_t n = am_placement_targets(rp->ring, rp->self_idx, am_ring_key_of(key, key_len), rp->copies,
                                  targets);
    struct am_request r;
    memset(&r, 0, sizeof r);
    r.kind = AM_MSG_REPLICATE;
    r.type = key;
    r.type_len = (uint32_t)key_len;
    r.epoch = epoch;
    r.seq = seq;
    r.payload = state;
    r.payload_len = (uint32_t)len;
    unsigned sent = 0;
    for (size_t i = 0; i < n; i++) {
        struct am_peer *p = rp->ring_peers ? rp->ring_peers[targets[i]] : NULL;
        struct send_keyed *k = am_malloc(sizeof *k + key_len);
        char err[300];
        rp->st.sent += !retry;
        if (!p || !k) {
            am_free(k);
            rp->st.unreplicated += !retry;
            retry_add(rp, key, key_len);
            continue;
        }
        k->s.rp = rp;
        k->s.done = done;
        k->s.ctx = ctx;
        k->s.retry = retry;
        k->key_len = key_len;
        memcpy(k->key, key, key_len);
        if (am_peer_forward(p, &r, 0, 0, 0, on_keyed_reply, k, err, sizeof err)) {
            if (!retry && rp->st.unreplicated++ % LOG_EVERY == 0)
                am_log_warn("a state could not be replicated (%llu so far): %s",
                            (unsigned long long)rp->st.unreplicated, err);
            retry_add(rp, key, key_len);
            am_free(k);
            continue;
        }
        sent++;
    }
    return sent;
}

/* ---- receiving ---------------------------------------------------------- */

struct take {
    struct am_store_write w;
    struct am_replication *rp;
    am_reply_fn cb;
    void *ctx;
    uint64_t id;
    uint8_t bytes[]; /* key, state */
};

/* Answers a stale REPLICATE with the newest copy held here. */
static void answer_newer(struct am_replication *rp, const char *key, size_t key_len,
                         uint64_t epoch, uint64_t seq, am_reply_fn cb, void *ctx, uint64_t id)
{
    struct am_buf state, body;
    am_buf_init(&state);
    am_buf_init(&body);
    uint64_t e = epoch, q = seq;
    int rc = am_store_get(rp->store, key, key_len, &state, &e, &q);
    msgpack_packer pk;
    am_mp_packer_init(&pk, &body);
    if (rc == 0 && (e > epoch || (e == epoch && q >= seq)))
        rc = msgpack_pack_array(&pk, 3) || msgpack_pack_uint64(&pk, e) ||
             msgpack_pack_uint64(&pk, q) || msgpack_pack_bin(&pk, state.len) ||
             (state.len && msgpack_pack_bin_body(&pk, state.data, state.len));
    else /* the newer version is in memory only, not yet committed */
        rc = msgpack_pack_array(&pk, 2) || msgpack_pack_uint64(&pk, epoch) ||
             msgpack_pack_uint64(&pk, seq);
    if (rc == 0)
        cb(ctx, id, AM_ST_OK, body.data, body.len);
    else
        cb(ctx, id, AM_ST_OVERLOADED, (const uint8_t *)"\xa0", 1);
    am_buf_close(&state);
    am_buf_close(&body);
}

static void on_stored(struct am_store_write *w, int status)
{
    struct take *t = (struct take *)w;
    struct am_replication *rp = t->rp;
    if (status == 0 && w->stale) {
        rp->st.newer_here++;
        answer_newer(rp, w->key, w->key_len, w->epoch, w->seq, t->cb, t->ctx, t->id);
    } else if (status == 0) {
        rp->st.stored++;
        t->cb(t->ctx, t->id, AM_ST_OK, (const uint8_t *)"\xc0", 1);
    } else {
        char msg[200];
        uint8_t body[210];
        int n = snprintf(msg, sizeof msg, "cannot store the replica of %.*s: %s",
                         (int)w->key_len, w->key, am_strerror(status));
        size_t m = n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
        body[0] = 0xd9;
        body[1] = (uint8_t)m;
        memcpy(body + 2, msg, m);
        am_log_warn("%s", msg);
        t->cb(t->ctx, t->id, AM_ST_STORAGE, body, m + 2);
    }
    am_free(t);
}

int am_replication_take(struct am_replication *rp, const char *peer, const struct am_request *r,
                        am_reply_fn cb, void *ctx, char *err, size_t errlen)
{
    (void)peer;
    const char *key = r->type;
    size_t len = r->type_len;
    rp->st.received++;
    /* An actor active here with the same version or a newer one: the
     * sender is behind it (a stale owner). An older one: this copy is
     * behind, and leaves memory. */
    if (am_runtime_fence(rp->rt, key, len, r->epoch, r->seq) < 0) {
        rp->st.newer_here++;
        answer_newer(rp, key, len, r->epoch, r->seq, cb, ctx, r->id);
        return 0;
    }
    struct take *t = am_malloc(sizeof *t + len + r->payload_len);
    if (!t)
        return am_errf(err, errlen, AM_EOVERLOAD, "out of memory taking a replica; retry");
    memset(t, 0, sizeof *t);
    memcpy(t->bytes, key, len);
    if (r->payload_len)
        memcpy(t->bytes + len, r->payload, r->payload_len);
    t->rp = rp;
    t->cb = cb;
    t->ctx = ctx;
    t->id = r->id;
    t->w.key = (const char *)t->bytes;
    t->w.key_len = len;
    t->w.epoch = r->epoch;
    t->w.seq = r->seq;
    t->w.state = t->bytes + len;
    t->w.state_len = r->payload_len;
    t->w.flags = AM_STORE_NEWER | AM_STORE_REPLICA;
    int rc = am_store_write(rp->store, &t->w, on_stored);
    if (rc) {
        am_free(t);
        return am_errf(err, errlen, rc == -ESHUTDOWN ? AM_ESHUTDOWN : AM_ESTORAGE,
                       "cannot store the replica of %.*s: %s", (int)len, key, am_strerror(rc));
    }
    return 0;
}
