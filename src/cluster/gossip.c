/* gossip.c - the libuv driver of the membership core (see gossip.h).
 *
 * Everything runs on the loop thread. Time given to the core is uv_now(),
 * the loop's monotonic millisecond clock. After every call into the core the
 * driver drains its actions (flush), then re-arms the one timer at the
 * core's next deadline. */
#include "gossip.h"

#include "addr.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"
#include "proto.h"
#include "seal.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* Outgoing push-pull streams open at once. A node opens one every push-pull
 * interval, one per join attempt and one per heal attempt, so a handful is
 * plenty; more are refused (reported as failed) rather than queued. */
#define MAX_STREAMS 16
/* memberlist's TCP timeout for push-pull. */
#define STREAM_TIMEOUT_MS 10000
/* Largest push-pull reply accepted: AM_SWIM_MAX_PP members of at most
 * ~210 bytes each, rounded up. */
#define MAX_SYNC_FRAME (24u << 20)
/* A leave waits at most this long for the core to say its news spread. */
#define LEAVE_MAX_MS 5000
/* The address given to the core for a push-pull that arrived on the
 * server: its answer goes back on that connection, not to an address. */
#define SYNC_PEER "0.0.0.0:0"
/* Room for one datagram, sealed or not. */
#define DGRAM_MAX 65536

struct stream {
    struct am_gossip *g;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer;
    uv_write_t wreq;
    struct am_buf out, wbuf, in, plain; /* wbuf: the write in flight */
    struct am_secure sec;
    char addr[AM_SWIM_MAX_ADDR + 1];
    int handles; /* open handles of this stream */
    int done;    /* result reported to the core */
    int writing;
};

struct am_gossip {
    uv_loop_t *loop;
    uv_udp_t udp;
    uv_timer_t timer;
    uv_timer_t leave_timer;
    struct am_swim *core;
    struct am_gossip_opts o;
    uint8_t key[AM_KEY_BYTES];
    int keyed;
    char *name, *advertise;
    struct am_gossip_stats st;
    struct am_buf *sync_reply; /* set while am_gossip_sync runs */
    struct stream *streams[MAX_STREAMS];
    int nstreams;
    /* Push-pull streams leave from the bind address (port 0), as peer
     * streams do, unless it is 0.0.0.0: the other side and any firewall
     * between see the address this node is known by. */
    struct sockaddr_in source;
    int has_source;
    uint8_t dgram[DGRAM_MAX];
    uint8_t rbuf[DGRAM_MAX];
    int closing;
    int handles; /* udp, timer, leave_timer */
    uint64_t leave_started;
    void (*leave_done)(void *arg);
    void *leave_arg;
    void (*close_done)(void *arg);
    void *close_arg;
};

static void flush(struct am_gossip *g);

/* Frees a closing driver once its own handles and every stream are closed. */
static void maybe_free(struct am_gossip *g)
{
    if (!g->closing || g->handles > 0 || g->nstreams > 0)
        return;
    void (*done)(void *) = g->close_done;
    void *arg = g->close_arg;
    am_free(g);
    if (done)
        done(arg);
}

/* ---- outgoing push-pull streams ------------------------------------------ */

static void stream_handle_closed(uv_handle_t *h)
{
    struct stream *t = h->data;
    if (--t->handles > 0)
        return;
    struct am_gossip *g = t->g;
    for (int i = 0; i < g->nstreams; i++)
        if (g->streams[i] == t) {
            g->streams[i] = g->streams[--g->nstreams];
            break;
        }
    am_buf_close(&t->out);
    am_buf_close(&t->wbuf);
    am_buf_close(&t->in);
    am_buf_close(&t->plain);
    if (g->keyed)
        am_secure_free(&t->sec);
    am_free(t);
    maybe_free(g);
}

/* Ends a stream: reports a failure to the core unless it already finished,
 * and closes its handles. */
static void stream_end(struct stream *t, int failed)
{
    struct am_gossip *g = t->g;
    if (!t->done) {
        t->done = 1;
        if (failed) {
            g->st.stream_errors++;
            if (!g->closing) {
                am_swim_on_stream_error(g->core, t->addr, uv_now(g->loop));
                flush(g);
            }
        }
    }
    if (!uv_is_closing((uv_handle_t *)&t->tcp)) {
        uv_close((uv_handle_t *)&t->tcp, stream_handle_closed);
        uv_close((uv_handle_t *)&t->timer, stream_handle_closed);
    }
}

static void stream_on_timeout(uv_timer_t *h)
{
    struct stream *t = h->data;
    am_log_debug("push-pull with %s timed out", t->addr);
    stream_end(t, 1);
}

static void stream_write(struct stream *t);

static void stream_on_write(uv_write_t *req, int status)
{
    struct stream *t = req->data;
    t->writing = 0;
    t->wbuf.len = 0;
    if (status < 0)
        stream_end(t, 1);
    else
        stream_write(t); /* what was added while this write was in flight */
}

static void stream_write(struct stream *t)
{
    if (t->writing || t->out.len == 0 || t->done)
        return;
    struct am_buf tmp = t->wbuf;
    t->wbuf = t->out;
    t->out = tmp;
    uv_buf_t b = uv_buf_init((char *)t->wbuf.data, (unsigned)t->wbuf.len);
    t->wreq.data = t;
    if (uv_write(&t->wreq, (uv_stream_t *)&t->tcp, &b, 1, stream_on_write) == 0)
        t->writing = 1;
    else
        stream_end(t, 1);
}

static void stream_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct stream *t = h->data;
    (void)suggested;
    if (am_buf_reserve(&t->in, 64 * 1024)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)t->in.data + t->in.len, (unsigned)(t->in.cap - t->in.len));
}

/* Handles the frames of the plain-text input: the HELLO reply, then the
 * SYNC reply, whose body is the peer's push-pull message. */
static void stream_frames(struct stream *t)
{
    struct am_gossip *g = t->g;
    for (;;) {
        const uint8_t *body;
        size_t blen;
        long n = am_frame_next(t->plain.data, t->plain.len, MAX_SYNC_FRAME, &body, &blen);
        if (n == 0)
            return;
        struct am_reply r;
        if (n < 0 || am_reply_decode(&r, body, blen)) {
            am_log_warn("push-pull with %s: malformed reply; dropped", t->addr);
            stream_end(t, 1);
            return;
        }
        if (r.status != AM_ST_OK) {
            const char *msg;
            uint32_t mlen = 0;
            const uint8_t *p = r.body;
            if (am_mp_read_str(&p, r.body + r.body_len, &msg, &mlen))
                msg = "";
            am_log_warn("push-pull with %s refused: %.*s", t->addr, (int)mlen, msg);
            stream_end(t, 1);
            return;
        }
        if (r.id == 2) {
            const uint8_t *p = r.body, *msg;
            uint32_t mlen;
            int rc = am_mp_read_bin(&p, r.body + r.body_len, &msg, &mlen);
            if (rc == 0)
                rc = am_swim_on_stream(g->core, t->addr, msg, mlen, uv_now(g->loop));
            if (rc) {
                am_log_warn("push-pull with %s: malformed state; dropped", t->addr);
                stream_end(t, 1);
                return;
            }
            t->done = 1;
            flush(g);
            stream_end(t, 0);
            return;
        }
        am_buf_consume(&t->plain, (size_t)n);
    }
}

static void stream_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct stream *t = s->data;
    (void)buf;
    if (nread < 0) {
        stream_end(t, 1);
        return;
    }
    t->in.len += (size_t)nread;
    if (!t->g->keyed) {
        if (am_buf_append(&t->plain, t->in.data, t->in.len)) {
            stream_end(t, 1);
            return;
        }
    } else {
        int rc = am_secure_read(&t->sec, t->in.data, t->in.len, &t->plain, &t->out);
        if (rc < 0) {
            t->g->st.unauthenticated++;
            am_log_warn("push-pull with %s: the peer does not hold our cluster key", t->addr);
            stream_end(t, 1);
            return;
        }
        stream_write(t);
    }
    t->in.len = 0;
    if (!t->done)
        stream_frames(t);
}

static void stream_on_connect(uv_connect_t *req, int status)
{
    struct stream *t = req->data;
    if (status < 0) {
        am_log_debug("push-pull with %s: %s", t->addr, uv_strerror(status));
        stream_end(t, 1);
        return;
    }
    if (t->done)
        return;
    uv_read_start((uv_stream_t *)&t->tcp, stream_alloc, stream_on_read);
    stream_write(t);
}

/* Starts a push-pull with addr carrying msg. */
static void stream_open(struct am_gossip *g, const char *addr, const uint8_t *msg, size_t len)
{
    struct sockaddr_in sa;
    if (g->nstreams >= MAX_STREAMS || am_addr_parse(addr, 0, &sa)) {
        g->st.stream_errors++;
        am_swim_on_stream_error(g->core, addr, uv_now(g->loop));
        return;
    }
    struct stream *t = am_calloc(1, sizeof *t);
    if (!t) {
        am_swim_on_stream_error(g->core, addr, uv_now(g->loop));
        return;
    }
    t->g = g;
    snprintf(t->addr, sizeof t->addr, "%s", addr);
    am_buf_init(&t->out);
    am_buf_init(&t->wbuf);
    am_buf_init(&t->in);
    am_buf_init(&t->plain);
    struct am_buf plain;
    am_buf_init(&plain);
    int rc = am_encode_hello(&plain, 1, "member") || am_encode_sync(&plain, 2, msg, len);
    if (!rc && g->keyed) {
        am_secure_init(&t->sec, g->key, 1);
        rc = am_secure_start(&t->sec, &t->out) ||
             am_secure_out(&t->sec, plain.data, plain.len, &t->out);
    } else if (!rc) {
        rc = am_buf_append(&t->out, plain.data, plain.len);
    }
    am_buf_close(&plain);
    uv_tcp_init(g->loop, &t->tcp);
    uv_timer_init(g->loop, &t->timer);
    t->tcp.data = t->timer.data = t->creq.data = t;
    t->handles = 2;
    g->streams[g->nstreams++] = t;
    g->st.streams_out++;
    uv_tcp_nodelay(&t->tcp, 1);
    uv_timer_start(&t->timer, stream_on_timeout, STREAM_TIMEOUT_MS, 0);
    if (!rc && g->has_source)
        rc = uv_tcp_bind(&t->tcp, (const struct sockaddr *)&g->source, 0);
    if (rc || uv_tcp_connect(&t->creq, &t->tcp, (const struct sockaddr *)&sa, stream_on_connect))
        stream_end(t, 1);
}

/* ---- datagrams ----------------------------------------------------------- */

static void send_packet(struct am_gossip *g, const struct am_swim_action *a)
{
    struct sockaddr_in sa;
    if (am_addr_parse(a->addr, 0, &sa))
        return;
    const uint8_t *p = a->data;
    size_t len = a->len;
    if (g->keyed) {
        if (len + AM_SEAL_PACKET_OVERHEAD > sizeof g->dgram)
            return;
        len = am_seal_packet(g->key, a->data, a->len, g->dgram);
        p = g->dgram;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
    if (uv_udp_try_send(&g->udp, &b, 1, (const struct sockaddr *)&sa) < 0)
        g->st.send_errors++;
}

static void on_event(struct am_gossip *g, const struct am_swim_action *a)
{
    if (a->event == AM_SWIM_EV_CONFLICT) {
        g->st.conflicts++;
        if (strcmp(a->name, g->name) == 0)
            am_log_error("the node name '%s' is also claimed by a live node at %s", a->name,
                         a->addr);
        else
            am_log_error("the node name '%s' is claimed at %s while a live member already has "
                         "it; the claim is refused",
                         a->name, a->addr);
    } else if (a->event == AM_SWIM_EV_REAPED) {
        am_log_debug("member %s (%s) forgotten", a->name, a->addr);
    } else {
        am_log_info("member %s (%s) is %s, incarnation %llu", a->name, a->addr,
                    am_member_state_name(a->state), (unsigned long long)a->incarnation);
    }
    if (g->o.on_event)
        g->o.on_event(g->o.arg, a);
}

static void on_timer(uv_timer_t *h);

/* Carries out the core's actions and re-arms the timer. */
static void flush(struct am_gossip *g)
{
    const struct am_swim_action *acts;
    size_t n = am_swim_actions(g->core, &acts);
    for (size_t i = 0; i < n; i++) {
        const struct am_swim_action *a = &acts[i];
        switch (a->kind) {
        case AM_SWIM_ACT_PACKET:
            send_packet(g, a);
            break;
        case AM_SWIM_ACT_STREAM:
            if (g->sync_reply && strcmp(a->addr, SYNC_PEER) == 0)
                am_buf_append(g->sync_reply, a->data, a->len);
            else
                stream_open(g, a->addr, a->data, a->len);
            break;
        case AM_SWIM_ACT_EVENT:
            on_event(g, a);
            break;
        }
    }
    if (g->closing)
        return;
    uint64_t d = am_swim_next_deadline(g->core), now = uv_now(g->loop);
    uint64_t wait = d == UINT64_MAX ? 1000 : d > now ? d - now : 0;
    uv_timer_start(&g->timer, on_timer, wait, 0);
}

static void on_timer(uv_timer_t *h)
{
    struct am_gossip *g = h->data;
    uv_update_time(g->loop);
    am_swim_tick(g->core, uv_now(g->loop));
    flush(g);
}

static void on_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct am_gossip *g = h->data;
    (void)suggested;
    *buf = uv_buf_init((char *)g->rbuf, sizeof g->rbuf);
}

static void on_udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                        const struct sockaddr *from, unsigned flags)
{
    struct am_gossip *g = h->data;
    if (nread <= 0 || !from || from->sa_family != AF_INET || g->closing)
        return;
    if (flags & UV_UDP_PARTIAL) {
        g->st.unauthenticated += g->keyed;
        return;
    }
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    if (g->keyed) {
        size_t plen;
        if (am_open_packet(g->key, p, len, g->dgram, &plen)) {
            g->st.unauthenticated++;
            return;
        }
        p = g->dgram;
        len = plen;
    }
    char addr[32];
    am_addr_format((const struct sockaddr_in *)from, addr, sizeof addr);
    am_swim_on_packet(g->core, addr, p, len, uv_now(g->loop));
    flush(g);
}

/* ---- lifecycle ----------------------------------------------------------- */

int am_gossip_start(struct am_gossip **out, uv_loop_t *loop, const struct am_gossip_opts *o,
                    char *err, size_t errlen)
{
    *out = NULL;
    struct am_gossip *g = am_calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    g->loop = loop;
    g->o = *o;
    g->o.seeds = NULL;
    g->name = am_strndup(o->name, strlen(o->name));
    g->advertise = am_strndup(o->advertise, strlen(o->advertise));
    if (o->key) {
        memcpy(g->key, o->key, AM_KEY_BYTES);
        g->keyed = 1;
    }
    struct am_swim_config c = {
        .name = o->name,
        .addr = o->advertise,
        .seed = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32),
        .incarnation = o->incarnation,
    };
    int rc = -ENOMEM;
    if (!g->name || !g->advertise)
        goto fail;
    rc = am_swim_profile(&c, o->profile ? o->profile : "lan");
    if (rc) {
        snprintf(err, errlen, "unknown profile '%s' (lan, local or wan)", o->profile);
        goto fail;
    }
    /* Room for the seal inside the path MTU the profile assumes. */
    if (g->keyed)
        c.max_packet -= AM_SEAL_PACKET_OVERHEAD;
    rc = am_swim_new(&g->core, &c, uv_now(loop));
    if (rc) {
        snprintf(err, errlen, "cannot start membership: %s", am_strerror(rc));
        goto fail;
    }
    g->source = *o->bind;
    g->source.sin_port = 0;
    g->has_source = o->bind->sin_addr.s_addr != htonl(INADDR_ANY);
    uv_udp_init(loop, &g->udp);
    g->udp.data = g;
    rc = uv_udp_bind(&g->udp, (const struct sockaddr *)o->bind, 0);
    if (rc == 0)
        rc = uv_udp_recv_start(&g->udp, on_udp_alloc, on_udp_recv);
    if (rc) {
        char a[32];
        am_addr_format(o->bind, a, sizeof a);
        snprintf(err, errlen, "cannot bind UDP %s for membership: %s", a, uv_strerror(rc));
        uv_close((uv_handle_t *)&g->udp, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        am_swim_free(g->core);
        goto fail;
    }
    uv_timer_init(loop, &g->timer);
    uv_timer_init(loop, &g->leave_timer);
    g->timer.data = g->leave_timer.data = g;
    g->handles = 3;
    if (o->nseeds) {
        rc = am_swim_join(g->core, o->seeds, o->nseeds, uv_now(loop));
        if (rc) {
            snprintf(err, errlen, "cannot join: %s", am_strerror(rc));
            am_gossip_close(g, NULL, NULL);
            return rc;
        }
    }
    flush(g);
    *out = g;
    return 0;
fail:
    am_free(g->name);
    am_free(g->advertise);
    am_free(g);
    return rc;
}

int am_gossip_sync(struct am_gossip *g, const uint8_t *msg, size_t len, struct am_buf *reply)
{
    g->st.streams_in++;
    g->sync_reply = reply;
    int rc = am_swim_on_stream(g->core, SYNC_PEER, msg, len, uv_now(g->loop));
    flush(g);
    g->sync_reply = NULL;
    return rc;
}

static void leave_check(uv_timer_t *h)
{
    struct am_gossip *g = h->data;
    uint64_t now = uv_now(g->loop);
    if (!am_swim_leave_done(g->core, now) && now - g->leave_started < LEAVE_MAX_MS)
        return;
    uv_timer_stop(h);
    void (*done)(void *) = g->leave_done;
    g->leave_done = NULL;
    if (done)
        done(g->leave_arg);
}

void am_gossip_leave(struct am_gossip *g, void (*done)(void *arg), void *arg)
{
    g->leave_done = done;
    g->leave_arg = arg;
    g->leave_started = uv_now(g->loop);
    am_swim_leave(g->core, g->leave_started);
    flush(g);
    uv_timer_start(&g->leave_timer, leave_check, 50, 50);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct am_gossip *g = h->data;
    g->handles--;
    maybe_free(g);
}

void am_gossip_close(struct am_gossip *g, void (*done)(void *arg), void *arg)
{
    g->closing = 1;
    g->close_done = done;
    g->close_arg = arg;
    for (int i = g->nstreams; i-- > 0;)
        stream_end(g->streams[i], 1);
    am_swim_free(g->core);
    g->core = NULL;
    am_free(g->name);
    am_free(g->advertise);
    g->name = g->advertise = NULL;
    sodium_memzero(g->key, sizeof g->key);
    uv_close((uv_handle_t *)&g->udp, on_handle_closed);
    uv_close((uv_handle_t *)&g->timer, on_handle_closed);
    uv_close((uv_handle_t *)&g->leave_timer, on_handle_closed);
}

const struct am_swim *am_gossip_core(const struct am_gossip *g)
{
    return g->core;
}

void am_gossip_get_stats(const struct am_gossip *g, struct am_gossip_stats *st)
{
    *st = g->st;
}
