/* fetch.c - newer copies asked for before an activation (see fetch.h). */
#include "fetch.h"

#include "placement.h"

#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Fetches in progress at most: past it a call is refused (retryable)
 * rather than run on a copy that may be old. */
#define FETCH_MAX 4096
/* Calls waiting for one actor's fetch at most. */
#define PARKED_MAX 1024
#define SWEEP_MS 50

/* A call waiting for its actor's fetch: a copy of the request. */
struct parked {
    struct parked *next;
    am_reply_fn cb;
    void *ctx;
    struct am_request r;
    uint8_t bytes[]; /* type, id, action, payload */
};

struct fetch {
    struct fetch *next, **prev;
    struct am_fetch *f;
    uint64_t deadline;
    unsigned waits;  /* FETCH answers not in yet (the peer layer holds ctx) */
    int finished;    /* answers in or the bound passed: no more parking after released */
    int released;    /* the calls ran (or failed) */
    int storing;     /* the newest copy is being written here */
    int has;         /* the newest copy answered so far: */
    uint64_t epoch, seq;
    struct am_buf state;
    struct parked *calls, **tail;
    unsigned ncalls;
    struct am_store_write w;
    size_t key_len;
    char key[];
};

struct am_fetch {
    uv_loop_t *loop;
    struct am_replication *rp;
    uint64_t wait_ms;
    am_fetch_run_fn run;
    void *arg;
    uv_timer_t timer;
    struct fetch *list; /* not yet released */
    size_t n;
    int stopped;
    struct am_fetch_stats st;
};

int am_fetch_new(struct am_fetch **out, uv_loop_t *loop, struct am_replication *rp,
                 uint64_t wait_ms, am_fetch_run_fn run, void *arg)
{
    struct am_fetch *f = am_calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->loop = loop;
    f->rp = rp;
    f->wait_ms = wait_ms ? wait_ms : 1;
    f->run = run;
    f->arg = arg;
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    *out = f;
    return 0;
}

static void fetch_unlink(struct fetch *x)
{
    if (!x->prev)
        return;
    *x->prev = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = NULL;
    x->next = NULL;
    x->f->n--;
}

static void maybe_free(struct fetch *x)
{
    if (x->waits || !x->released || x->storing)
        return;
    am_buf_close(&x->state);
    am_free(x);
}

static void answer_error(struct parked *p, int status, const char *msg)
{
    uint8_t body[260];
    size_t len = strlen(msg) > 255 ? 255 : strlen(msg);
    body[0] = 0xd9;
    body[1] = (uint8_t)len;
    memcpy(body + 2, msg, len);
    p->cb(p->ctx, p->r.id, status, body, len + 2);
}

/* The calls run now (through the node's routing), or fail when the node
 * stops. */
static void release(struct fetch *x)
{
    struct am_fetch *f = x->f;
    fetch_unlink(x);
    x->released = 1;
    struct parked *list = x->calls;
    x->calls = NULL;
    x->tail = &x->calls;
    while (list) {
        struct parked *p = list;
        list = p->next;
        if (f->stopped)
            answer_error(p, AM_ST_SHUTTING_DOWN, "the node is stopping; retry on another node");
        else
            f->run(f->arg, &p->r, p->cb, p->ctx);
        am_free(p);
    }
    maybe_free(x);
}

static void on_stored(struct am_store_write *w, int status)
{
    struct fetch *x = (struct fetch *)((char *)w - offsetof(struct fetch, w));
    x->storing = 0;
    if (status)
        am_log_warn("cannot keep the newer copy of %.*s a member had: %s", (int)x->key_len,
                    x->key, am_strerror(status));
    else if (!w->stale)
        x->f->st.newer++;
    release(x);
}

/* Every answer is in, or the bound passed: the newest copy found is kept
 * here (the store takes it only if newer), then the calls run. */
static void finish(struct fetch *x)
{
    if (x->finished)
        return;
    x->finished = 1;
    if (!x->has || x->f->stopped) {
        release(x);
        return;
    }
    memset(&x->w, 0, sizeof x->w);
    x->w.key = x->key;
    x->w.key_len = x->key_len;
    x->w.epoch = x->epoch;
    x->w.seq = x->seq;
    x->w.state = x->state.data;
    x->w.state_len = x->state.len;
    x->w.flags = AM_STORE_NEWER | AM_STORE_REPLICA;
    x->storing = 1;
    int rc = am_store_write(x->f->rp->store, &x->w, on_stored);
    if (rc) {
        x->storing = 0;
        am_log_warn("cannot keep the newer copy of %.*s a member had: %s", (int)x->key_len,
                    x->key, am_strerror(rc));
        release(x);
    }
}

static void on_answer(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    (void)id;
    struct fetch *x = ctx;
    x->waits--;
    const uint8_t *p = body, *end = body + len, *state;
    uint32_t n, state_len;
    uint64_t epoch, seq;
    if (!x->finished && status == AM_ST_OK && len && am_mp_read_array(&p, end, &n) == 0 &&
        n == 3 && am_mp_read_uint(&p, end, &epoch) == 0 && am_mp_read_uint(&p, end, &seq) == 0 &&
        am_mp_read_bin(&p, end, &state, &state_len) == 0 &&
        (!x->has || epoch > x->epoch || (epoch == x->epoch && seq > x->seq)) &&
        am_buf_set(&x->state, state, state_len) == 0) {
        x->has = 1;
        x->epoch = epoch;
        x->seq = seq;
    }
    if (x->waits == 0 && !x->finished) {
        finish(x); /* frees x once the calls ran */
        return;
    }
    maybe_free(x);
}

static void on_sweep(uv_timer_t *h)
{
    struct am_fetch *f = h->data;
    uint64_t now = uv_now(f->loop);
    for (struct fetch *x = f->list, *next; x; x = next) {
        next = x->next;
        if (!x->finished && now >= x->deadline) {
            f->st.timeouts++;
            finish(x);
        }
    }
    if (!f->list)
        uv_timer_stop(&f->timer);
}

static int park(struct fetch *x, const struct am_request *r, am_reply_fn cb, void *ctx,
                char *err, size_t errlen)
{
    if (x->ncalls >= PARKED_MAX)
        return am_errf(err, errlen, AM_EOVERLOAD,
                       "%u calls for %.*s wait for its copy already; retry", x->ncalls,
                       (int)x->key_len, x->key);
    struct parked *p = am_malloc(sizeof *p + am_request_call_bytes(r));
    if (!p)
        return am_errf(err, errlen, AM_EOVERLOAD, "out of memory holding a call; retry");
    p->next = NULL;
    p->cb = cb;
    p->ctx = ctx;
    am_request_copy_call(&p->r, r, p->bytes);
    *x->tail = p;
    x->tail = &p->next;
    x->ncalls++;
    return 1;
}

int am_fetch_hold(struct am_fetch *f, const struct am_request *r, const char *key,
                  size_t key_len, am_reply_fn cb, void *ctx, char *err, size_t errlen)
{
    struct am_replication *rp = f->rp;
    if (f->stopped || !rp->ring || !rp->ring_peers || rp->self_idx < 0 || rp->copies < 2 ||
        am_ring_count(rp->ring) < 2)
        return 0;
    for (struct fetch *x = f->list; x; x = x->next)
        if (x->key_len == key_len && memcmp(x->key, key, key_len) == 0)
            return park(x, r, cb, ctx, err, errlen);
    if (f->n >= FETCH_MAX)
        return am_errf(err, errlen, AM_EOVERLOAD,
                       "%zu actors wait for their copies from other members already; retry",
                       f->n);
    /* The key's replicas and the member after them. */
    unsigned ask = rp->copies + 1 > AM_PLACEMENT_MAX_COPIES ? AM_PLACEMENT_MAX_COPIES
                                                           : rp->copies + 1;
    int targets[AM_PLACEMENT_MAX_COPIES];
    size_t nt =
        am_placement_targets(rp->ring, rp->self_idx, am_ring_key_of(key, key_len), ask, targets);
    struct fetch *x = am_calloc(1, sizeof *x + key_len);
    if (!x)
        return am_errf(err, errlen, AM_EOVERLOAD, "out of memory fetching %.*s; retry",
                       (int)key_len, key);
    x->f = f;
    x->tail = &x->calls;
    x->key_len = key_len;
    memcpy(x->key, key, key_len);
    am_buf_init(&x->state);
    struct am_request q;
    memset(&q, 0, sizeof q);
    q.kind = AM_MSG_FETCH;
    q.type = x->key;
    q.type_len = (uint32_t)key_len;
    for (size_t i = 0; i < nt; i++) {
        struct am_peer *p = rp->ring_peers[targets[i]];
        char why[300];
        if (p && am_peer_forward(p, &q, 0, 0, 0, on_answer, x, why, sizeof why) == 0)
            x->waits++;
    }
    if (x->waits == 0) { /* nobody reachable to ask: the copy here is all there is */
        am_buf_close(&x->state);
        am_free(x);
        return 0;
    }
    int rc = park(x, r, cb, ctx, err, errlen);
    if (rc < 0) {
        x->released = 1;
        x->finished = 1; /* the answers free it */
        return rc;
    }
    f->st.fetches++;
    x->deadline = uv_now(f->loop) + f->wait_ms;
    x->prev = &f->list;
    x->next = f->list;
    if (f->list)
        f->list->prev = &x->next;
    f->list = x;
    f->n++;
    if (!uv_is_active((uv_handle_t *)&f->timer))
        uv_timer_start(&f->timer, on_sweep, SWEEP_MS, SWEEP_MS);
    return 1;
}

void am_fetch_answer(struct am_fetch *f, const struct am_request *r, am_reply_fn cb, void *ctx)
{
    struct am_buf state, body;
    uint64_t epoch = 0, seq = 0;
    am_buf_init(&state);
    am_buf_init(&body);
    f->st.answered++;
    int rc = am_store_get(f->rp->store, r->type, r->type_len, &state, &epoch, &seq);
    msgpack_packer pk;
    am_mp_packer_init(&pk, &body);
    if (rc == 0)
        rc = msgpack_pack_array(&pk, 3) || msgpack_pack_uint64(&pk, epoch) ||
             msgpack_pack_uint64(&pk, seq) || msgpack_pack_bin(&pk, state.len) ||
             (state.len && msgpack_pack_bin_body(&pk, state.data, state.len));
    else if (rc == -ENOENT)
        rc = msgpack_pack_nil(&pk);
    if (rc == 0) {
        cb(ctx, r->id, AM_ST_OK, body.data, body.len);
    } else {
        char msg[200];
        snprintf(msg, sizeof msg, "cannot read the copy of %.*s here: %s", (int)r->type_len,
                 r->type, am_strerror(rc));
        struct parked p = {.cb = cb, .ctx = ctx};
        p.r.id = r->id;
        answer_error(&p, AM_ST_STORAGE, msg);
    }
    am_buf_close(&state);
    am_buf_close(&body);
}

void am_fetch_stop(struct am_fetch *f)
{
    if (!f)
        return;
    f->stopped = 1;
    while (f->list) {
        struct fetch *x = f->list;
        if (x->storing) { /* released by its write's callback */
            fetch_unlink(x);
            x->finished = 1;
            continue;
        }
        x->finished = 1;
        release(x);
    }
    uv_timer_stop(&f->timer);
}

void am_fetch_get_stats(const struct am_fetch *f, struct am_fetch_stats *st)
{
    if (f)
        *st = f->st;
    else
        memset(st, 0, sizeof *st);
}

static void on_timer_closed(uv_handle_t *h)
{
    am_free(h->data);
}

void am_fetch_free(struct am_fetch *f)
{
    if (!f)
        return;
    am_fetch_stop(f);
    uv_close((uv_handle_t *)&f->timer, on_timer_closed);
}
