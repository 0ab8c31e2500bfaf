/* peer.c - streams to other nodes that carry forwarded calls (see peer.h).
 *
 * A peer owns its queue of calls waiting for replies: slots in an array that
 * grows by doubling up to max_pending and is then reused through a free
 * list, so the forwarding path allocates nothing per call once warm. A
 * call's request id on the stream is (generation << 32 | slot): a reply that
 * comes after its call timed out finds a newer generation and is dropped.
 * Waiting slots are also linked in the order they were sent, so the oldest
 * is at the head and the deadline sweep looks at heads only.
 *
 * The TCP connection (struct pconn) is separate from the peer: when a stream
 * fails, the peer forgets it at once (its calls fail, its buffers are
 * emptied) and the connection closes on its own; a new one can start before
 * the old one's close callback has run.
 *
 * Output is plain text in p->out until the loop turn ends (a uv_check, with
 * a uv_idle so the loop does not block while a turn is due); then it is
 * sealed when there is a cluster key and written with one uv_try_write, the
 * rest by one uv_write. */
#include "peer.h"

#include "addr.h"
#include "buf.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"
#include "seal.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define READ_CHUNK (64 * 1024)
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

struct pconn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    struct am_peer *p; /* NULL once the peer let go of this connection */
    struct am_buf wbuf;
    int writing;
};

struct am_peer {
    struct am_peers *ps;
    struct am_peer *next, *turn_next;
    int in_turn;
    char *name;
    char addr[48];
    struct sockaddr_in sa;
    int sa_ok;
    struct pconn *c; /* the stream, or NULL */
    int connected;
    struct am_buf out, in, raw, sealed;
    struct am_secure sec;
    int sec_on;
    struct slot *slots;
    uint32_t nslots, cap, free_head, head, tail, pending;
    uint64_t last_read; /* last bytes read, or when calls started waiting */
    uint64_t retry_at;
    unsigned backoff;
    char why[160]; /* why the last stream failed, e.g. "connection refused" */
};

struct am_peers {
    uv_loop_t *loop;
    uv_check_t check;
    uv_idle_t idle;
    uv_timer_t timer;
    struct am_peers_opts o;
    char *name;
    struct sockaddr_in source; /* o.source points here when given */
    uint8_t key[AM_KEY_BYTES];
    int keyed;
    struct am_peer *peers, *turn;
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
    return p->out.len + p->sealed.len + (p->c ? p->c->wbuf.len : 0);
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

/* ---- the stream ---- */

static void on_pconn_closed(uv_handle_t *h)
{
    struct pconn *c = h->data;
    am_buf_close(&c->wbuf);
    am_free(c);
}

/* Lets go of the stream: the connection closes on its own, the peer's
 * buffers are emptied. */
static void detach(struct am_peer *p)
{
    struct pconn *c = p->c;
    if (!c)
        return;
    p->c = NULL;
    p->connected = 0;
    c->p = NULL;
    p->ps->st.streams--;
    uv_close((uv_handle_t *)&c->tcp, on_pconn_closed);
    am_buf_close(&p->out);
    am_buf_close(&p->in);
    am_buf_close(&p->raw);
    am_buf_close(&p->sealed);
    if (p->sec_on)
        am_secure_free(&p->sec);
    p->sec_on = 0;
}

/* The stream failed: it is closed, its calls fail with status, and the peer
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
    if (p->c)
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

static void on_turn(uv_check_t *h);

static void on_idle(uv_idle_t *h)
{
    (void)h;
}

static void turn_add(struct am_peer *p)
{
    struct am_peers *ps = p->ps;
    if (p->in_turn)
        return;
    p->in_turn = 1;
    p->turn_next = ps->turn;
    ps->turn = p;
    uv_check_start(&ps->check, on_turn);
    uv_idle_start(&ps->idle, on_idle);
}

static void on_write(uv_write_t *req, int status)
{
    struct pconn *c = req->data;
    c->writing = 0;
    struct am_peer *p = c->p;
    if (!p)
        return;
    p->ps->st.bytes_out += c->wbuf.len;
    c->wbuf.len = 0;
    if (c->wbuf.cap > p->ps->o.max_out)
        am_buf_close(&c->wbuf);
    if (status < 0) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "write failed: %s", uv_strerror(status));
        return;
    }
    if (p->out.len || p->sealed.len)
        turn_add(p);
}

/* Writes what the peer has queued, if it can now. */
static void flush(struct am_peer *p)
{
    struct pconn *c = p->c;
    if (!c || !p->connected || c->writing)
        return;
    struct am_buf *src = &p->out;
    if (p->sec_on) {
        /* Until the handshake completes the calls stay in p->out, where
         * queued() counts them against max_out (am_secure_out would hold
         * them in its own queue, up to AM_SEAL_QUEUE_MAX). */
        if (p->out.len && am_secure_ready(&p->sec)) {
            if (am_secure_out(&p->sec, p->out.data, p->out.len, &p->sealed)) {
                stream_fail(p, AM_ST_UNAVAILABLE, 1, "out of memory sealing a record");
                return;
            }
            p->out.len = 0;
        }
        src = &p->sealed;
    }
    if (src->len == 0)
        return;
    uv_buf_t direct = uv_buf_init((char *)src->data, (unsigned)src->len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &direct, 1);
    if (n < 0 && n != UV_EAGAIN) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "write failed: %s", uv_strerror(n));
        return;
    }
    if (n > 0) {
        p->ps->st.bytes_out += (uint64_t)n;
        am_buf_consume(src, (size_t)n);
        if (src->len == 0)
            return;
    }
    struct am_buf t = c->wbuf;
    c->wbuf = *src;
    *src = t;
    src->len = 0;
    uv_buf_t b = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "write failed: %s", uv_strerror(rc));
        return;
    }
    c->writing = 1;
}

static void on_turn(uv_check_t *h)
{
    struct am_peers *ps = h->data;
    struct am_peer *list = ps->turn;
    ps->turn = NULL;
    while (list) {
        struct am_peer *p = list;
        list = p->turn_next;
        p->in_turn = 0;
        flush(p);
    }
    if (!ps->turn) {
        uv_check_stop(&ps->check);
        uv_idle_stop(&ps->idle);
    }
}

/* The HELLO reply: the node must be the one we meant. Returns 0 or -1 (the
 * stream was failed). */
static int check_hello(struct am_peer *p, const struct am_reply *r)
{
    if (r->status != AM_ST_OK) {
        const char *msg = "";
        uint32_t mlen = 0;
        const uint8_t *q = r->body;
        am_mp_read_str(&q, r->body + r->body_len, &msg, &mlen);
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "refused the peer stream: %.*s", (int)mlen, msg);
        return -1;
    }
    const uint8_t *q = r->body, *end = r->body + r->body_len;
    uint32_t n;
    if (am_mp_read_map(&q, end, &n) == 0) {
        for (uint32_t i = 0; i < n; i++) {
            const char *k, *v;
            uint32_t klen, vlen;
            if (am_mp_read_str(&q, end, &k, &klen))
                break;
            if (klen == 4 && memcmp(k, "node", 4) == 0) {
                if (am_mp_read_str(&q, end, &v, &vlen))
                    break;
                if (vlen != strlen(p->name) || memcmp(v, p->name, vlen) != 0) {
                    stream_fail(p, AM_ST_UNAVAILABLE, 1, "the node at that address is '%.*s'",
                                (int)vlen, v);
                    return -1;
                }
                return 0;
            }
            if (am_mp_skip(&q, end))
                break;
        }
    }
    p->ps->st.bad_frames++;
    stream_fail(p, AM_ST_UNAVAILABLE, 1, "malformed HELLO reply");
    return -1;
}

/* Handles every complete frame in p->in. */
static void process_input(struct am_peer *p)
{
    struct am_peers *ps = p->ps;
    struct pconn *c = p->c;
    size_t off = 0;
    while (p->c == c) {
        const uint8_t *body;
        size_t blen;
        long n = am_frame_next(p->in.data + off, p->in.len - off, ps->o.max_frame, &body, &blen);
        if (n == 0)
            break;
        struct am_reply r;
        if (n < 0 || am_reply_decode(&r, body, blen)) {
            ps->st.bad_frames++;
            stream_fail(p, AM_ST_UNAVAILABLE, 1, "sent a malformed frame; stream closed");
            return;
        }
        off += (size_t)n;
        if (r.id == 0) {
            if (check_hello(p, &r))
                return;
            continue;
        }
        uint32_t i = (uint32_t)r.id, gen = (uint32_t)(r.id >> 32);
        if (i < p->nslots && p->slots[i].cb && p->slots[i].gen == gen) {
            ps->st.replies++;
            p->backoff = 0; /* the stream works: its next failure starts the doubling again */
            complete(p, i, r.status, r.body, r.body_len);
        }
        /* else: the call already timed out; its late reply is dropped */
    }
    if (p->c != c)
        return;
    am_buf_consume(&p->in, off);
    if (p->in.len == 0 && p->in.cap > READ_CHUNK)
        am_buf_close(&p->in);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct pconn *c = h->data;
    struct am_peer *p = c->p;
    (void)suggested;
    struct am_buf *b = p ? (p->sec_on ? &p->raw : &p->in) : NULL;
    if (!b || am_buf_reserve(b, READ_CHUNK)) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = (char *)b->data + b->len;
    buf->len = b->cap - b->len;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct pconn *c = stream->data;
    struct am_peer *p = c->p;
    (void)buf;
    if (!p || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            stream_fail(p, AM_ST_UNAVAILABLE, 1, "closed the peer stream");
        else
            stream_fail(p, AM_ST_UNAVAILABLE, 1, "read failed: %s", uv_strerror((int)nread));
        return;
    }
    p->ps->st.bytes_in += (uint64_t)nread;
    p->last_read = uv_now(p->ps->loop);
    if (p->sec_on) {
        p->raw.len += (size_t)nread;
        int rc = am_secure_read(&p->sec, p->raw.data, p->raw.len, &p->in, &p->sealed);
        p->raw.len = 0;
        if (p->raw.cap > READ_CHUNK)
            am_buf_close(&p->raw);
        if (rc == 1)
            turn_add(p);
        if (rc < 0) {
            stream_fail(p, AM_ST_UNAVAILABLE, 1, "does not hold this cluster key");
            return;
        }
    } else {
        p->in.len += (size_t)nread;
    }
    process_input(p);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct pconn *c = req->data;
    struct am_peer *p = c->p;
    if (!p)
        return; /* let go of while connecting; the close is under way */
    if (status < 0) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "cannot connect: %s", uv_strerror(status));
        return;
    }
    p->connected = 1;
    p->ps->st.connects++;
    p->last_read = uv_now(p->ps->loop);
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "cannot read: %s", uv_strerror(rc));
        return;
    }
    turn_add(p);
}

/* Opens the stream: connect, then HELLO (and, with a key, the handshake),
 * all queued before any call. 0 or a negative code (err set). */
static int stream_start(struct am_peer *p, char *err, size_t errlen)
{
    struct am_peers *ps = p->ps;
    struct pconn *c = am_calloc(1, sizeof *c);
    if (!c)
        return am_errf(err, errlen, -ENOMEM, "out of memory opening a stream to %s", p->name);
    uv_tcp_init(ps->loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    c->p = p;
    p->c = c;
    ps->st.streams++;
    if (ps->keyed) {
        am_secure_init(&p->sec, ps->key, 1);
        p->sec_on = 1;
    }
    int rc = am_encode_hello_peer(&p->out, 0, ps->name);
    if (rc == 0 && p->sec_on)
        rc = am_secure_start(&p->sec, &p->sealed);
    if (rc == 0 && ps->o.source)
        rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)ps->o.source, 0);
    if (rc == 0)
        rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&p->sa, on_connect);
    if (rc) {
        stream_fail(p, AM_ST_UNAVAILABLE, 1, "cannot connect: %s", uv_strerror(rc));
        return am_errf(err, errlen, AM_EUNAVAIL, "owner %s (%s): %s; retry", p->name, p->addr,
                       p->why);
    }
    return 0;
}

/* ---- deadlines ---- */

static void on_sweep(uv_timer_t *h)
{
    struct am_peers *ps = h->data;
    uint64_t now = uv_now(ps->loop);
    unsigned t = ps->o.timeout_ms;
    for (struct am_peer *p = ps->peers; p; p = p->next) {
        if (p->c && p->pending && now - p->last_read >= t) {
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
        else
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
    ps->o.key = NULL;
    if (o->source) {
        ps->source = *o->source;
        ps->o.source = &ps->source;
    }
    if (o->key) {
        memcpy(ps->key, o->key, AM_KEY_BYTES);
        ps->keyed = 1;
    }
    uv_check_init(loop, &ps->check);
    uv_idle_init(loop, &ps->idle);
    uv_timer_init(loop, &ps->timer);
    ps->check.data = ps->idle.data = ps->timer.data = ps;
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
        if (p->c)
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
    if (!p->c) {
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
    int rc =
        r->kind == AM_MSG_HANDOFF || r->kind == AM_MSG_REPLICATE
            ? am_encode_snapshot(&p->out, r->kind, id, r->type, r->type_len, r->epoch, r->seq,
                                 r->payload, r->payload_len)
        : r->kind == AM_MSG_HANDOFF_DONE ? am_encode_simple(&p->out, AM_MSG_HANDOFF_DONE, id)
        : r->kind == AM_MSG_FETCH        ? am_encode_fetch(&p->out, id, r->type, r->type_len)
        : r->kind == AM_MSG_DIGEST || r->kind == AM_MSG_VERSIONS
            ? am_encode_digest(&p->out, r->kind, id, r->ring_version, r->payload, r->payload_len)
                                         : am_encode_forward(&p->out, id, r, hops, ring_version);
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
    turn_add(p);
    if (!uv_is_active((uv_handle_t *)&ps->timer))
        uv_timer_start(&ps->timer, on_sweep, SWEEP_MS, SWEEP_MS);
    return 0;
}

void am_peers_drop(struct am_peers *ps, const char *name, const char *why)
{
    for (struct am_peer *p = ps->peers; p; p = p->next) {
        if (strcmp(p->name, name) != 0)
            continue;
        if (p->c || p->pending)
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
    sodium_memzero(ps->key, sizeof ps->key);
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
    ps->handles = 3;
    struct am_peer *p = ps->peers;
    while (p) {
        struct am_peer *next = p->next;
        if (p->pending || p->c)
            stream_fail(p, AM_ST_SHUTTING_DOWN, 0, "this node is stopping");
        am_free(p->slots);
        am_free(p->name);
        am_free(p);
        p = next;
    }
    ps->peers = ps->turn = NULL;
    uv_close((uv_handle_t *)&ps->check, on_handle_closed);
    uv_close((uv_handle_t *)&ps->idle, on_handle_closed);
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
    for (const struct am_peer *p = ps->peers; p; p = p->next)
        st->queued_bytes += queued(p);
}
