/* peer.c - the calls sent to other nodes over links (see peer.h).
 *
 * A peer owns its queue of calls waiting for replies: slots in an array that
 * grows by doubling up to max_pending and is then reused through a free
 * list, so the forwarding path allocates nothing per call once warm. A
 * call's request id on the link is (generation << 32 | slot): a reply that
 * comes after its call timed out finds a newer generation and is dropped.
 * Waiting slots are also linked in the order they were sent, so the oldest
 * is at the head and the deadline sweep looks at heads only.
 *
 * The link (a server connection) is separate from the peer: when a link
 * fails, the peer forgets it at once (its calls fail) and the server closes
 * it; a new one can be dialed before the old one's close has completed. A
 * peer has at most two links: `link`, which new calls use, and `old`, the
 * loser of a simultaneous dial, kept until the calls already sent on it are
 * answered (replies are matched by id, whatever link they come on). */
#include "peer.h"

#include "addr.h"
#include "buf.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A peer that could not be reached is not tried again for RETRY_MIN_MS,
 * doubling per failure up to RETRY_MAX_MS: calls to it fail at once in
 * between, instead of each one paying for a connection attempt. */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 2000
/* How often deadlines are checked while calls wait. */
#define SWEEP_MS 100
#define NO_SLOT UINT32_MAX

struct slot {
    am_peer_reply_fn cb; /* NULL while the slot is free */
    void *ctx;
    uint64_t reply_id;
    uint64_t deadline;
    uint32_t prev, next; /* waiting list (send order); next links the free list */
    uint32_t gen;
};

struct am_peer {
    struct am_peers *ps;
    struct am_peer *next;
    char *name;
    char addr[48];
    struct sockaddr_in sa;
    int sa_ok;
    void *link;         /* where new calls go, or NULL */
    int link_dialed;    /* this node dialed it */
    void *old;          /* the loser of a simultaneous dial, or NULL */
    int old_dialed;     /* ... which this node closes at old_until */
    uint64_t old_until;
    struct slot *slots;
    uint32_t nslots, cap, free_head, head, tail, pending;
    uint64_t last_read; /* last bytes read, or when calls started waiting */
    uint64_t retry_at;
    unsigned backoff;
    char why[160]; /* why the last link failed, e.g. "connection refused" */
};

struct am_peers {
    uv_loop_t *loop;
    uv_timer_t timer;
    struct am_peers_opts o;
    struct am_peer_io io;
    char *name;
    struct am_peer *peers;
    struct am_peers_stats st;
    int closing, handles;
    void (*done)(void *arg);
    void *done_arg;
};

static void finish_close(struct am_peers *ps);
static void on_sweep(uv_timer_t *h);

/* An error message as the one msgpack str a failed reply carries. */
static size_t pack_msg(uint8_t *buf, size_t cap, const char *msg)
{
    size_t n = strlen(msg);
    if (n > 255)
        n = 255;
    if (n + 2 > cap)
        n = cap - 2;
    buf[0] = 0xd9;
    buf[1] = (uint8_t)n;
    memcpy(buf + 2, msg, n);
    return n + 2;
}

static size_t queued(const struct am_peer *p)
{
    return p->link ? p->ps->io.queued(p->link) : 0;
}

/* ---- slots ---- */

static uint32_t slot_alloc(struct am_peer *p)
{
    if (p->free_head != NO_SLOT) {
        uint32_t i = p->free_head;
        p->free_head = p->slots[i].next;
        return i;
    }
    if (p->nslots == p->cap) {
        uint32_t max = p->ps->o.max_pending;
        uint32_t cap = p->cap ? p->cap * 2 : 64;
        if (cap > max)
            cap = max;
        if (cap <= p->cap)
            return NO_SLOT;
        struct slot *s = am_realloc(p->slots, cap * sizeof *s);
        if (!s)
            return NO_SLOT;
        p->slots = s;
        p->cap = cap;
    }
    uint32_t i = p->nslots++;
    p->slots[i].gen = 1;
    p->slots[i].cb = NULL;
    return i;
}

static void slot_unlink(struct am_peer *p, uint32_t i)
{
    struct slot *s = &p->slots[i];
    if (s->prev != NO_SLOT)
        p->slots[s->prev].next = s->next;
    else
        p->head = s->next;
    if (s->next != NO_SLOT)
        p->slots[s->next].prev = s->prev;
    else
        p->tail = s->prev;
}

/* Ends the call in slot i with this outcome and runs its callback. */
static void complete(struct am_peer *p, uint32_t i, int status, const uint8_t *body, size_t len)
{
    struct am_peers *ps = p->ps;
    struct slot *s = &p->slots[i];
    am_peer_reply_fn cb = s->cb;
    void *ctx = s->ctx;
    uint64_t rid = s->reply_id;
    slot_unlink(p, i);
    s->cb = NULL;
    s->gen = s->gen + 1 ? s->gen + 1 : 1;
    s->next = p->free_head;
    p->free_head = i;
    p->pending--;
    ps->st.pending--;
    cb(ctx, rid, status, body, len);
    /* A closing set finishes from the sweep, never from inside a loop over
     * its peers: the last reply schedules the sweep at once. */
    if (ps->closing && ps->st.pending == 0 && !ps->handles)
        uv_timer_start(&ps->timer, on_sweep, 0, SWEEP_MS);
}

static void fail_all(struct am_peer *p, int status, const char *msg)
{
    uint8_t body[260];
    size_t len = pack_msg(body, sizeof body, msg);
    while (p->head != NO_SLOT)
        complete(p, p->head, status, body, len);
}

/* ---- links ---- */

/* Lets go of both links; the server closes them. */
static void detach(struct am_peer *p)
{
    struct am_peers *ps = p->ps;
    void *link = p->link, *old = p->old;
    p->link = p->old = NULL;
    if (link)
        ps->io.close(link);
    if (old)
        ps->io.close(old);
}

/* The link failed: it is closed, the calls fail with status, and the peer
 * is not tried again before the backoff (unless backoff is 0). */
static void stream_fail(struct am_peer *p, int status, int backoff, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void stream_fail(struct am_peer *p, int status, int backoff, const char *fmt, ...)
{
    struct am_peers *ps = p->ps;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->why, sizeof p->why, fmt, ap);
    va_end(ap);
    if (p->link)
        ps->st.stream_errors++;
    detach(p);
    if (backoff) {
        p->backoff = p->backoff ? p->backoff * 2 : RETRY_MIN_MS;
        if (p->backoff > RETRY_MAX_MS)
            p->backoff = RETRY_MAX_MS;
        p->retry_at = uv_now(ps->loop) + p->backoff;
        if (p->backoff == RETRY_MIN_MS)
            am_log_info("peer stream to %s (%s): %s", p->name, p->addr, p->why);
        else
            am_log_debug("peer stream to %s (%s): %s", p->name, p->addr, p->why);
    } else {
        p->backoff = 0;
        p->retry_at = 0;
    }
    if (status != AM_ST_TIMEOUT)
        ps->st.failed += p->pending;
    char msg[300];
    if (status == AM_ST_SHUTTING_DOWN)
        snprintf(msg, sizeof msg, "node is stopping; retry on another node");
    else
        snprintf(msg, sizeof msg, "owner %s (%s): %s; the call may or may not have taken effect",
                 p->name, p->addr, p->why);
    fail_all(p, status, msg);
}

static void sweep_soon(struct am_peers *ps)
{
    if (!uv_is_active((uv_handle_t *)&ps->timer))
        uv_timer_start(&ps->timer, on_sweep, SWEEP_MS, SWEEP_MS);
}

/* Keeps `loser` until the calls sent on it had their time; the node that
 * dialed it closes it then. A third link (not seen in practice: a node
 * dials only while it has none) replaces an older loser at once. */
static void retire(struct am_peer *p, void *loser, int dialed)
{
    struct am_peers *ps = p->ps;
    if (p->old && p->old_dialed)
        ps->io.close(p->old);
    p->old = loser;
    p->old_dialed = dialed;
    p->old_until = uv_now(ps->loop) + ps->o.timeout_ms + SWEEP_MS;
    sweep_soon(ps);
}

void am_peer_link_up(struct am_peer *p, void *link, int dialed)
{
    struct am_peers *ps = p->ps;
    if (dialed) {
        if (link == p->link || link == p->old)
            ps->st.connects++;
        return;
    }
    ps->st.accepts++;
    if (!p->link) {
        p->link = link;
        p->link_dialed = 0;
        p->last_read = uv_now(ps->loop);
        return;
    }
    /* Both dialed: both nodes keep the link dialed by the first name. */
    int ours_wins = strcmp(ps->name, p->name) < 0;
    if (!p->link_dialed || ours_wins) {
        retire(p, link, 0);
        return;
    }
    retire(p, p->link, 1);
    p->link = link;
    p->link_dialed = 0;
}

void am_peer_link_reply(struct am_peer *p, const struct am_reply *r)
{
    struct am_peers *ps = p->ps;
    uint32_t i = (uint32_t)r->id, gen = (uint32_t)(r->id >> 32);
    if (i < p->nslots && p->slots[i].cb && p->slots[i].gen == gen) {
        ps->st.replies++;
        p->backoff = 0; /* the link works: its next failure starts the doubling again */
        complete(p, i, r->status, r->body, r->body_len);
    }
    /* else: the call already timed out; its late reply is dropped */
}

void am_peer_link_bytes(struct am_peer *p, size_t in, size_t out)
{
    p->ps->st.bytes_in += in;
    p->ps->st.bytes_out += out;
    if (in)
        p->last_read = uv_now(p->ps->loop);
}

void am_peer_link_bad_frame(struct am_peer *p)
{
    p->ps->st.bad_frames++;
}

void am_peer_link_down(struct am_peer *p, void *link, const char *why)
{
    if (link == p->old) {
        p->old = NULL; /* its calls, if any, time out */
        return;
    }
    if (link != p->link)
        return;
    /* The server closes it: forget it first so stream_fail does not. */
    p->link = NULL;
    p->ps->st.stream_errors++;
    stream_fail(p, AM_ST_UNAVAILABLE, 1, "%s", why);
}

/* Dials the peer. 0 or a negative code (err set). */
static int stream_start(struct am_peer *p, char *err, size_t errlen)
{
    struct am_peers *ps = p->ps;
    char why[200];
    p->link = ps->io.dial(ps->io.arg, p, p->name, &p->sa, why, sizeof why);
    if (!p->link) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "%s", why);
        return am_errf(err, errlen, AM_EUNAVAIL, "owner %s (%s): %s; retry", p->name, p->addr,
                       p->why);
    }
    p->link_dialed = 1;
    return 0;
}

/* ---- deadlines ---- */

static void on_sweep(uv_timer_t *h)
{
    struct am_peers *ps = h->data;
    uint64_t now = uv_now(ps->loop);
    unsigned t = ps->o.timeout_ms;
    int retiring = 0;
    for (struct am_peer *p = ps->peers; p; p = p->next) {
        if (p->old && p->old_dialed && now >= p->old_until) {
            void *old = p->old;
            p->old = NULL;
            ps->io.close(old);
        }
        retiring |= p->old && p->old_dialed;
        if (p->link && p->pending && now - p->last_read >= t) {
            ps->st.timeouts += p->pending;
            p->backoff = RETRY_MAX_MS / 2; /* next: the longest wait */
            stream_fail(p, AM_ST_TIMEOUT, 1, "sent nothing for %u ms while calls waited", t);
            continue;
        }
        if (p->head != NO_SLOT && p->slots[p->head].deadline <= now) {
            uint8_t body[260];
            char msg[200];
            snprintf(msg, sizeof msg,
                     "owner %s (%s): no reply within %u ms; the call may or may not have taken "
                     "effect",
                     p->name, p->addr, t);
            size_t len = pack_msg(body, sizeof body, msg);
            while (p->head != NO_SLOT && p->slots[p->head].deadline <= now) {
                ps->st.timeouts++;
                complete(p, p->head, AM_ST_TIMEOUT, body, len);
            }
        }
    }
    if (ps->st.pending == 0) {
        if (ps->closing)
            finish_close(ps);
        else if (!retiring)
            uv_timer_stop(&ps->timer);
    }
}

/* ---- the set ---- */

int am_peers_new(struct am_peers **out, uv_loop_t *loop, const struct am_peers_opts *o)
{
    struct am_peers *ps = am_calloc(1, sizeof *ps);
    if (!ps)
        return -ENOMEM;
    ps->name = am_strndup(o->name, strlen(o->name));
    if (!ps->name) {
        am_free(ps);
        return -ENOMEM;
    }
    ps->loop = loop;
    ps->o = *o;
    ps->o.name = ps->name;
    ps->io = *o->io;
    ps->o.io = &ps->io;
    uv_timer_init(loop, &ps->timer);
    ps->timer.data = ps;
    *out = ps;
    return 0;
}

struct am_peer *am_peers_get(struct am_peers *ps, const char *name, const char *addr)
{
    struct am_peer *p;
    for (p = ps->peers; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            break;
    if (!p) {
        p = am_calloc(1, sizeof *p);
        if (!p)
            return NULL;
        p->name = am_strndup(name, strlen(name));
        if (!p->name) {
            am_free(p);
            return NULL;
        }
        p->ps = ps;
        p->free_head = p->head = p->tail = NO_SLOT;
        p->next = ps->peers;
        ps->peers = p;
    }
    if (strcmp(p->addr, addr) != 0) {
        if (p->link || p->old)
            stream_fail(p, AM_ST_UNAVAILABLE, 0, "moved to %s", addr);
        snprintf(p->addr, sizeof p->addr, "%s", addr);
        p->sa_ok = am_addr_parse(addr, 0, &p->sa) == 0;
        p->retry_at = 0;
        p->backoff = 0;
    }
    return p;
}

int am_peer_forward(struct am_peer *p, const struct am_request *r, unsigned hops,
                    uint64_t ring_version, uint64_t reply_id, am_peer_reply_fn cb, void *ctx,
                    char *err, size_t errlen)
{
    struct am_peers *ps = p->ps;
    uint64_t now = uv_now(ps->loop);
    if (ps->closing)
        return am_errf(err, errlen, AM_ESHUTDOWN, "node is stopping; retry on another node");
    if (!p->link) {
        if (!p->sa_ok) {
            ps->st.refused++;
            return am_errf(err, errlen, AM_EUNAVAIL, "owner %s has no usable address ('%s')",
                           p->name, p->addr);
        }
        if (now < p->retry_at) {
            ps->st.refused++;
            return am_errf(err, errlen, AM_EUNAVAIL,
                           "owner %s (%s) is unreachable: %s; retry in %llu ms", p->name, p->addr,
                           p->why, (unsigned long long)(p->retry_at - now));
        }
        int rc = stream_start(p, err, errlen);
        if (rc)
            return rc;
    }
    if (p->pending == 0 && queued(p) >= ps->o.max_out) {
        /* Every call timed out and the peer still does not take the bytes:
         * the deadline sweep no longer watches this stream, so close it
         * here (its buffers go with it) rather than refuse forever. */
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "took none of %zu bytes before its calls timed out",
                    queued(p));
        ps->st.refused++;
        return am_errf(err, errlen, AM_EUNAVAIL, "owner %s (%s) is unreachable: %s; retry", p->name,
                       p->addr, p->why);
    }
    if (p->pending >= ps->o.max_pending || queued(p) >= ps->o.max_out) {
        ps->st.refused++;
        return am_errf(err, errlen, AM_EOVERLOAD,
                       "owner %s is not keeping up: %u calls wait for replies, %zu bytes to be "
                       "sent; retry later",
                       p->name, p->pending, queued(p));
    }
    uint32_t i = slot_alloc(p);
    if (i == NO_SLOT)
        return am_errf(err, errlen, -ENOMEM, "out of memory forwarding to %s", p->name);
    struct slot *s = &p->slots[i];
    uint64_t id = (uint64_t)s->gen << 32 | i;
    struct am_buf *out = ps->io.out(p->link);
    int rc =
        r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_REPLICATE
            ? am_encode_snapshot(out, r->kind, id, r->type, r->type_len, r->epoch, r->seq,
                                 r->payload, r->payload_len)
        : r->kind == AM_MSG_HANDOFF_DONE ? am_encode_simple(out, AM_MSG_HANDOFF_DONE, id)
        : r->kind == AM_MSG_FETCH        ? am_encode_fetch(out, id, r->type, r->type_len)
        : r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS
            ? am_encode_digest(out, r->kind, id, r->ring_version, r->payload, r->payload_len)
                                         : am_encode_forward(out, id, r, hops, ring_version);
    if (rc) {
        s->next = p->free_head;
        p->free_head = i;
        return am_errf(err, errlen, -ENOMEM, "out of memory forwarding to %s", p->name);
    }
    s->cb = cb;
    s->ctx = ctx;
    s->reply_id = reply_id;
    s->deadline = now + ps->o.timeout_ms;
    s->next = NO_SLOT;
    s->prev = p->tail;
    if (p->tail != NO_SLOT)
        p->slots[p->tail].next = i;
    else
        p->head = i;
    p->tail = i;
    if (p->pending++ == 0)
        p->last_read = now;
    ps->st.pending++;
    if (r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_HANDOFF_DONE)
        ps->st.handoffs++;
    else if (r->kind == AM_MSG_REPLICATE)
        ps->st.replicas++;
    else if (r->kind == AM_MSG_FETCH || r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS)
        ps->st.fetches++;
    else
        ps->st.forwarded++;
    ps->io.kick(p->link);
    sweep_soon(ps);
    return 0;
}

void am_peers_drop(struct am_peers *ps, const char *name, const char *why)
{
    for (struct am_peer *p = ps->peers; p; p = p->next) {
        if (strcmp(p->name, name) != 0)
            continue;
        if (p->link || p->old || p->pending)
            stream_fail(p, AM_ST_UNAVAILABLE, 0, "%s", why);
        return;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct am_peers *ps = h->data;
    if (--ps->handles > 0)
        return;
    void (*done)(void *) = ps->done;
    void *arg = ps->done_arg;
    am_free(ps->name);
    am_free(ps);
    if (done)
        done(arg);
}

/* Runs once no call waits any more: closes the streams and handles. */
static void finish_close(struct am_peers *ps)
{
    if (ps->handles)
        return; /* already finishing */
    ps->handles = 1;
    struct am_peer *p = ps->peers;
    while (p) {
        struct am_peer *next = p->next;
        if (p->pending || p->link || p->old)
            stream_fail(p, AM_ST_SHUTTING_DOWN, 0, "this node is stopping");
        am_free(p->slots);
        am_free(p->name);
        am_free(p);
        p = next;
    }
    ps->peers = NULL;
    uv_close((uv_handle_t *)&ps->timer, on_handle_closed);
}

void am_peers_close(struct am_peers *ps, void (*done)(void *arg), void *arg)
{
    if (!ps) {
        if (done)
            done(arg);
        return;
    }
    ps->closing = 1;
    ps->done = done;
    ps->done_arg = arg;
    /* Calls already forwarded get their replies, or time out: the sweep
     * keeps running until none waits. */
    if (ps->st.pending == 0)
        finish_close(ps);
}

void am_peers_get_stats(const struct am_peers *ps, struct am_peers_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!ps)
        return;
    *st = ps->st;
    st->queued_bytes = 0;
    st->streams = 0;
    for (const struct am_peer *p = ps->peers; p; p = p->next) {
        st->queued_bytes += queued(p);
        st->streams += p->link != NULL;
    }
}
