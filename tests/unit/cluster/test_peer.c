/* test_peer.c - peer streams (src/cluster/peer.h): forwarded calls and their
 * replies, ordering, reply deadlines, stuck streams, queue bounds, refused
 * and failed streams with their backoff, the HELLO check, drop, close, the
 * cluster key and peers that move.
 *
 * The other side is a fake peer (struct fake) on the test's own loop: a
 * uv_tcp listener on 127.0.0.1 at a kernel-chosen port. It decodes what the
 * node sends (the HELLO and every FORWARD, recorded in arrival order) and
 * behaves as the test chose: it answers the HELLO with the right name, a
 * wrong one, an error or not at all; it echoes each FORWARD's payload as the
 * reply (FWD_ECHO), keeps quiet until the test calls fake_reply (FWD_MANUAL)
 * or answers with a malformed frame (FWD_GARBAGE); it may stop reading
 * after the HELLO, seal the stream with a cluster key, or never send its
 * half of the key handshake. Connections are closed by the test
 * (fake_drop_conns) or by the node (counted in f->eofs).
 *
 * Every call's callback records what it got in a struct call: how many
 * times it ran (exactly once is the contract), the reply id, status and
 * body, and the loop time it ran at. A callback that runs inside
 * am_peer_forward fails the test.
 *
 * Waiting is loop-driven: WAIT_FOR turns the loop until a condition holds,
 * with a wake-up timer so the loop never sleeps for long and a wall-clock
 * bound (WAIT_MS) that only a broken peer set reaches. Nothing here asserts
 * speed; the timing assertions are lower bounds (a call never times out
 * before timeout_ms, a stream is not retried before its backoff), measured
 * on the loop's own clock.
 *
 * The peer set's I/O is a real server (src/node/server.c) on 127.0.0.1 at a
 * kernel-chosen port: it dials the fake, and nothing dials it. The last
 * test runs two such nodes (servers and peer sets) on 127.0.13.1 and
 * 127.0.13.2, port 7940, that dial each other.
 *
 * Every test ends with finish(): am_peers_close, am_server_close, the
 * fake's handles closed,
 * the loop run until empty, uv_loop_close == 0 and a leak check. */
#include "buf.h"
#include "err.h"
#include "log.h"
#include "mp.h"
#include "peer.h"
#include "proto.h"
#include "seal.h"
#include "server.h"

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* Bound of every wait: loopback round trips take microseconds and the
 * longest deadline used here is 400 ms; 5 s is reached only when something
 * never happens. */
#define WAIT_MS 5000

#define MAXCALLS 2048 /* struct call slots */
#define MAXREC 4096   /* FORWARDs a fake records */
#define RING_V UINT64_C(0x1122334455667788)
#define RID(i) (UINT64_C(5000) + (uint64_t)(i))

/* ---- the fake peer ----------------------------------------------------- */

enum hello_mode { HELLO_OK, HELLO_ERROR, HELLO_NO_NODE, HELLO_NONE };
enum fwd_mode { FWD_ECHO, FWD_MANUAL, FWD_GARBAGE };

struct fake;

struct fconn {
    uv_tcp_t tcp;
    struct fake *f;
    struct fconn *next;
    struct am_buf in, raw;
    struct am_secure sec;
    int sec_on;
    int frames; /* frames read on this connection */
    int closing;
};

struct frec {
    uint64_t id;
    uint8_t payload[16]; /* the first bytes */
    size_t payload_len;
};

struct fake {
    uv_tcp_t lis;
    uv_timer_t hb; /* heartbeat: a stale reply every HB_MS */
    int started;
    int port;
    char addr[32]; /* "127.0.0.1:PORT" */
    /* behaviour */
    char name[32]; /* the node name its HELLO reply carries */
    enum hello_mode hello;
    enum fwd_mode fwd;
    int stop_reading;      /* after the HELLO */
    const uint8_t *key;    /* NULL: plain stream */
    int no_handshake;      /* keyed node, but this side never answers it */
    int answer_bad_record; /* keyed: on a record that does not open, reply anyway */
    /* what it saw */
    struct fconn *conns, *last; /* last: the newest connection */
    int accepted, eofs, auth_failures, hellos, order_errors, replies;
    char hello_name[64];
    size_t discarded; /* bytes read and ignored (no_handshake) */
    struct frec fwds[MAXREC];
    int nfwd;
    struct {
        int fwd_kind;
        unsigned hops;
        uint64_t ring_version;
        char type[64], actor[256], action[64];
        uint8_t payload[64];
        size_t payload_len;
    } lastfwd;
};

struct wr {
    uv_write_t req;
    uint8_t data[];
};

static void on_fwrite(uv_write_t *req, int status)
{
    (void)status; /* the node may have closed the stream first */
    free(req);
}

static void fconn_write_raw(struct fconn *c, const uint8_t *p, size_t n)
{
    if (c->closing || n == 0)
        return;
    struct wr *w = malloc(sizeof *w + n);
    cr_assert_not_null(w);
    memcpy(w->data, p, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_fwrite))
        free(w);
}

/* Sends plaintext frames, sealed when the stream is keyed. */
static void fconn_send(struct fconn *c, const struct am_buf *plain)
{
    if (!c->sec_on) {
        fconn_write_raw(c, plain->data, plain->len);
        return;
    }
    struct am_buf s;
    am_buf_init(&s);
    cr_assert_eq(am_secure_out(&c->sec, plain->data, plain->len, &s), 0);
    fconn_write_raw(c, s.data, s.len);
    am_buf_close(&s);
}

static void on_fconn_closed(uv_handle_t *h)
{
    struct fconn *c = h->data;
    am_buf_close(&c->in);
    am_buf_close(&c->raw);
    if (c->sec_on)
        am_secure_free(&c->sec);
    c->sec_on = 0;
}

static void fconn_close(struct fconn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_fconn_closed);
}

/* The HELLO reply: {"proto": 1, "node": name}, or without "node". */
static void pack_hello_reply(struct am_buf *out, uint64_t id, const char *name)
{
    struct am_buf b;
    msgpack_packer pk;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    int rc = msgpack_pack_map(&pk, name ? 2 : 1) || am_mp_pack_str(&pk, "proto", 5) ||
             msgpack_pack_int(&pk, AM_PROTO_VERSION);
    if (name)
        rc = rc || am_mp_pack_str(&pk, "node", 4) || am_mp_pack_str(&pk, name, strlen(name));
    cr_assert_eq(rc, 0);
    cr_assert_eq(am_encode_reply(out, id, AM_ST_OK, b.data, b.len), 0);
    am_buf_close(&b);
}

static void copy_name(char *dst, size_t cap, const char *s, uint32_t len)
{
    snprintf(dst, cap, "%.*s", (int)len, s);
}

/* A frame whose body is not a REPLY (an array of two never-used bytes). */
static const uint8_t GARBAGE[] = {0, 0, 0, 3, 0x92, 0xc1, 0xc1};

/* Handles every complete frame the node sent. Returns -1 when it stopped
 * reading. */
static int fconn_process(struct fconn *c)
{
    struct fake *f = c->f;
    struct am_buf out;
    am_buf_init(&out);
    size_t off = 0;
    int stopped = 0;
    while (!stopped) {
        const uint8_t *body;
        size_t blen;
        long n = am_frame_next(c->in.data + off, c->in.len - off, 16 * MiB, &body, &blen);
        cr_assert_geq(n, 0, "the node sent a frame over 16 MiB");
        if (n == 0)
            break;
        off += (size_t)n;
        struct am_reply rep;
        if (blen > 2 && body[1] == 0xcc && body[2] == AM_MSG_REPLY &&
            am_reply_decode(&rep, body, blen) == 0) {
            f->replies++; /* the node's answer to a frame it refused */
            continue;
        }
        struct am_request r;
        cr_assert_eq(am_request_decode(&r, body, blen), 0, "the node sent a malformed frame");
        if ((c->frames == 0) != (r.kind == AM_MSG_HELLO))
            f->order_errors++;
        c->frames++;
        if (r.kind == AM_MSG_HELLO) {
            f->hellos++;
            cr_assert_eq(r.role_len, 4);
            cr_assert_eq(memcmp(r.role, "peer", 4), 0);
            copy_name(f->hello_name, sizeof f->hello_name, r.name, r.name_len);
            if (f->hello == HELLO_OK)
                pack_hello_reply(&out, r.id, f->name);
            else if (f->hello == HELLO_NO_NODE)
                pack_hello_reply(&out, r.id, NULL);
            else if (f->hello == HELLO_ERROR)
                cr_assert_eq(am_encode_error(&out, r.id, AM_ST_BAD_REQUEST,
                                             "n1 is not a member of this cluster"),
                             0);
            if (f->stop_reading) {
                uv_read_stop((uv_stream_t *)&c->tcp);
                stopped = 1;
            }
            continue;
        }
        cr_assert_eq(r.kind, AM_MSG_FORWARD);
        cr_assert_lt(f->nfwd, MAXREC);
        struct frec *rec = &f->fwds[f->nfwd++];
        rec->id = r.id;
        rec->payload_len = r.payload_len;
        memcpy(rec->payload, r.payload,
               r.payload_len < sizeof rec->payload ? r.payload_len : sizeof rec->payload);
        f->lastfwd.fwd_kind = r.fwd_kind;
        f->lastfwd.hops = r.hops;
        f->lastfwd.ring_version = r.ring_version;
        copy_name(f->lastfwd.type, sizeof f->lastfwd.type, r.type, r.type_len);
        copy_name(f->lastfwd.actor, sizeof f->lastfwd.actor, r.actor, r.actor_len);
        copy_name(f->lastfwd.action, sizeof f->lastfwd.action, r.action, r.action_len);
        f->lastfwd.payload_len = r.payload_len;
        memcpy(f->lastfwd.payload, r.payload,
               r.payload_len < sizeof f->lastfwd.payload ? r.payload_len
                                                         : sizeof f->lastfwd.payload);
        if (f->fwd == FWD_ECHO)
            cr_assert_eq(am_encode_reply(&out, r.id, AM_ST_OK, r.payload, r.payload_len), 0);
        else if (f->fwd == FWD_GARBAGE)
            cr_assert_eq(am_buf_append(&out, GARBAGE, sizeof GARBAGE), 0);
    }
    am_buf_consume(&c->in, off);
    fconn_send(c, &out);
    am_buf_close(&out);
    return stopped ? -1 : 0;
}

static void on_falloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fconn *c = h->data;
    struct am_buf *b = c->sec_on ? &c->raw : &c->in;
    (void)suggested;
    cr_assert_eq(am_buf_reserve(b, 64 * KiB), 0);
    buf->base = (char *)b->data + b->len;
    buf->len = b->cap - b->len;
}

static void on_fread(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fconn *c = s->data;
    struct fake *f = c->f;
    (void)buf;
    if (nread == 0)
        return;
    if (nread < 0) {
        f->eofs++;
        fconn_close(c);
        return;
    }
    if (f->no_handshake) {
        f->discarded += (size_t)nread;
        return;
    }
    if (!c->sec_on) {
        c->in.len += (size_t)nread;
        fconn_process(c);
        return;
    }
    c->raw.len += (size_t)nread;
    int rc = am_secure_in(&c->sec, c->raw.data, c->raw.len, &c->in);
    c->raw.len = 0;
    if (rc == 1) {
        struct am_buf b;
        am_buf_init(&b);
        cr_assert_eq(am_secure_out(&c->sec, NULL, 0, &b), 0);
        fconn_write_raw(c, b.data, b.len);
        am_buf_close(&b);
    }
    if (rc < 0) {
        f->auth_failures++;
        if (f->answer_bad_record) {
            /* Answers anyway, with a record of the right shape whose tag
             * is zeros: the node cannot open it. */
            struct am_buf out, rec;
            uint8_t hdr[4], tag[16] = {0};
            am_buf_init(&out);
            am_buf_init(&rec);
            pack_hello_reply(&out, 0, f->name);
            am_be32_put(hdr, (uint32_t)(out.len + sizeof tag));
            cr_assert_eq(am_buf_append(&rec, hdr, sizeof hdr) ||
                             am_buf_append(&rec, out.data, out.len) ||
                             am_buf_append(&rec, tag, sizeof tag),
                         0);
            fconn_write_raw(c, rec.data, rec.len);
            am_buf_close(&out);
            am_buf_close(&rec);
            return;
        }
        fconn_close(c);
        return;
    }
    fconn_process(c);
}

static void on_fconn(uv_stream_t *lis, int status)
{
    struct fake *f = lis->data;
    cr_assert_eq(status, 0);
    struct fconn *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    c->f = f;
    c->next = f->conns;
    f->conns = c;
    f->last = c;
    uv_tcp_init(lis->loop, &c->tcp);
    c->tcp.data = c;
    cr_assert_eq(uv_accept(lis, (uv_stream_t *)&c->tcp), 0);
    f->accepted++;
    if (f->key && !f->no_handshake) {
        am_secure_init(&c->sec, f->key, 0);
        c->sec_on = 1;
        struct am_buf b;
        am_buf_init(&b);
        cr_assert_eq(am_secure_start(&c->sec, &b), 0);
        fconn_write_raw(c, b.data, b.len);
        am_buf_close(&b);
    }
    cr_assert_eq(uv_read_start((uv_stream_t *)&c->tcp, on_falloc, on_fread), 0);
}

static void fake_start(struct fake *f, uv_loop_t *loop)
{
    struct sockaddr_in sa;
    struct sockaddr_storage got;
    int len = sizeof got;
    if (!f->name[0])
        snprintf(f->name, sizeof f->name, "n2");
    cr_assert_eq(uv_tcp_init(loop, &f->lis), 0);
    uv_timer_init(loop, &f->hb);
    f->lis.data = f->hb.data = f;
    f->started = 1;
    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(uv_tcp_bind(&f->lis, (const struct sockaddr *)&sa, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&f->lis, 128, on_fconn), 0);
    cr_assert_eq(uv_tcp_getsockname(&f->lis, (struct sockaddr *)&got, &len), 0);
    f->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
}

/* Sends one REPLY (or an error reply when msg is set) on the newest
 * connection. */
static void fake_reply(struct fake *f, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_not_null(f->last);
    cr_assert_eq(am_encode_reply(&out, id, status, body, len), 0);
    fconn_send(f->last, &out);
    am_buf_close(&out);
}

static void fake_error(struct fake *f, uint64_t id, int status, const char *msg)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_error(&out, id, status, msg), 0);
    fconn_send(f->last, &out);
    am_buf_close(&out);
}

/* A reply nobody asked for (slot 0x7fffff of generation 9): the node reads
 * bytes, so the stream is not stuck, and drops the reply. */
static void on_heartbeat(uv_timer_t *t)
{
    struct fake *f = t->data;
    static const uint8_t nil = 0xc0;
    if (f->last && !f->last->closing)
        fake_reply(f, UINT64_C(9) << 32 | 0x7fffff, AM_ST_OK, &nil, 1);
}

static void fake_drop_conns(struct fake *f)
{
    for (struct fconn *c = f->conns; c; c = c->next)
        fconn_close(c);
}

static void fake_close(struct fake *f)
{
    if (!f->started)
        return;
    fake_drop_conns(f);
    uv_close((uv_handle_t *)&f->lis, NULL);
    uv_close((uv_handle_t *)&f->hb, NULL);
    f->started = 0;
}

/* After the loop ran its close callbacks. */
static void fake_free(struct fake *f)
{
    while (f->conns) {
        struct fconn *c = f->conns;
        f->conns = c->next;
        free(c);
    }
    f->last = NULL;
}

/* ---- fixture ----------------------------------------------------------- */

struct call {
    int n; /* callbacks run: exactly one is the contract */
    uint64_t rid;
    int status;
    int by_status[AM_ST__COUNT];
    uint8_t body[512]; /* the first bytes */
    size_t len;
    uint64_t at; /* loop time of the (last) callback */
};

static struct {
    uv_loop_t loop;
    uv_timer_t wake; /* turns the loop during waits */
    uv_timer_t stop; /* ends run_for */
    struct am_peers *ps;
    struct am_peers_opts o;
    struct am_server *srv;
    struct am_peer_io io;
    const uint8_t *key; /* the server's cluster key, or NULL */
    int srv_closed;
    struct fake f, f2;
    int in_forward; /* set while am_peer_forward runs */
    int ncb;        /* callbacks run, all calls */
    int closed;     /* done calls of am_peers_close */
    int ncb_at_close;
    struct call calls[MAXCALLS];
    char err[512];
} g;

static void setup(void)
{
    memset(&g, 0, sizeof g);
    am_log_setup(AM_LOG_ERROR, "test");
    cr_assert_eq(am_seal_init(), 0);
    cr_assert_eq(uv_loop_init(&g.loop), 0);
    uv_timer_init(&g.loop, &g.wake);
    uv_timer_init(&g.loop, &g.stop);
    g.o = (struct am_peers_opts){
        .name = "n1",
        .timeout_ms = 2000,
        .max_pending = 4096,
        .max_out = 1 * MiB,
        .io = &g.io,
    };
}

TestSuite(peer, .init = setup);

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

static uint64_t wall_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Turns the loop until cond holds, failing after WAIT_MS of wall time. */
#define WAIT_FOR(cond)                                                                             \
    do {                                                                                           \
        uint64_t t0_ = wall_ms();                                                                  \
        uv_timer_start(&g.wake, on_wake, 5, 5);                                                    \
        while (!(cond)) {                                                                          \
            uv_run(&g.loop, UV_RUN_ONCE);                                                          \
            cr_assert_lt(wall_ms() - t0_, WAIT_MS, "still waiting for %s after %d ms", #cond,      \
                         WAIT_MS);                                                                 \
        }                                                                                          \
        uv_timer_stop(&g.wake);                                                                    \
    } while (0)

static void on_stop(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs the loop for ms of loop time. */
static void run_for(uint64_t ms)
{
    int fired = 0;
    g.stop.data = &fired;
    uv_timer_start(&g.stop, on_stop, ms, 0);
    while (!fired)
        uv_run(&g.loop, UV_RUN_ONCE);
}

static void on_closed(void *arg)
{
    (void)arg;
    g.closed++;
    g.ncb_at_close = g.ncb;
    g.ps = NULL;
}

static void on_srv_closed(void *arg)
{
    (void)arg;
    g.srv_closed = 1;
}

/* Closes everything and checks that nothing is left open or leaked. */
static void finish(void)
{
    if (g.ps) {
        am_peers_close(g.ps, on_closed, NULL);
        WAIT_FOR(g.closed);
    }
    if (g.srv) {
        am_server_close(g.srv, on_srv_closed, NULL);
        WAIT_FOR(g.srv_closed);
        g.srv = NULL;
    }
    fake_close(&g.f);
    fake_close(&g.f2);
    uv_close((uv_handle_t *)&g.wake, NULL);
    uv_close((uv_handle_t *)&g.stop, NULL);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&g.loop), 0, "a handle was left open");
    fake_free(&g.f);
    fake_free(&g.f2);
    CHECK_LEAKS();
}

static void *dial(void *arg, struct am_peer *p, const char *name, const struct sockaddr_in *to,
                  char *err, size_t errlen)
{
    (void)arg;
    return am_server_dial(g.srv, p, name, to, err, errlen);
}

/* The server, then the peer set on it. */
static void peers_new(void)
{
    if (!g.srv) {
        struct sockaddr_in sa;
        char err[256];
        struct am_server_opts so = {
            .node_name = g.o.name,
            .key = g.key,
            .max_frame = 1 * MiB,
            .max_connections = 64,
            .max_inflight = 64,
        };
        struct am_server_hooks hooks = {0};
        cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
        cr_assert_eq(am_server_start(&g.srv, &g.loop, &sa, NULL, &so, &hooks, err, sizeof err), 0,
                     "%s", err);
        g.io = am_server_peer_io(dial, NULL);
    }
    cr_assert_eq(am_peers_new(&g.ps, &g.loop, &g.o), 0);
}

static struct am_peer *start(void)
{
    peers_new();
    if (!g.f.started)
        fake_start(&g.f, &g.loop);
    struct am_peer *p = am_peers_get(g.ps, "n2", g.f.addr);
    cr_assert_not_null(p);
    return p;
}

static void on_reply(void *ctx, uint64_t rid, int status, const uint8_t *body, size_t len)
{
    struct call *c = ctx;
    cr_assert(!g.in_forward, "a callback ran inside am_peer_forward");
    c->n++;
    c->rid = rid;
    c->status = status;
    if (status >= 0 && status < AM_ST__COUNT)
        c->by_status[status]++;
    c->len = len;
    memcpy(c->body, body, len < sizeof c->body ? len : sizeof c->body);
    c->at = uv_now(&g.loop);
    g.ncb++;
}

/* The message a failed reply carries (a msgpack str). */
static const char *msg_of(const struct call *c)
{
    static char s[600];
    const uint8_t *q = c->body;
    const char *m;
    uint32_t n;
    if (am_mp_read_str(&q, c->body + (c->len < sizeof c->body ? c->len : sizeof c->body), &m, &n))
        return "(not a str)";
    snprintf(s, sizeof s, "%.*s", (int)n, m);
    return s;
}

/* A decoded request and the frame it points into. */
struct req {
    struct am_buf b;
    struct am_request r;
};

static void req_make(struct req *q, int kind, const char *type, const char *actor,
                     const char *action, const uint8_t *payload, size_t plen)
{
    const uint8_t *body;
    size_t blen;
    am_buf_init(&q->b);
    cr_assert_eq(am_encode_call(&q->b, kind, 77, type, strlen(type), actor, strlen(actor), action,
                                strlen(action), payload, plen),
                 0);
    cr_assert_gt(am_frame_next(q->b.data, q->b.len, SIZE_MAX, &body, &blen), 0);
    cr_assert_eq(am_request_decode(&q->r, body, blen), 0);
}

static int forward(struct am_peer *p, const struct am_request *r, unsigned hops, uint64_t rid,
                   struct call *c)
{
    g.err[0] = 0;
    g.in_forward = 1;
    int rc = am_peer_forward(p, r, hops, RING_V, rid, on_reply, c, g.err, sizeof g.err);
    g.in_forward = 0;
    return rc;
}

/* msgpack for a small unsigned integer. */
static size_t pack_uint(uint8_t *b, unsigned v)
{
    if (v < 128) {
        b[0] = (uint8_t)v;
        return 1;
    }
    b[0] = 0xcd;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)v;
    return 3;
}

/* Forwards call i: counter/c<i>.add with payload i, reply id RID(i). */
static int fwd(struct am_peer *p, int i)
{
    uint8_t pl[3];
    char actor[16];
    struct req q;
    snprintf(actor, sizeof actor, "c%d", i);
    req_make(&q, AM_MSG_CALL, "counter", actor, "add", pl, pack_uint(pl, (unsigned)i));
    int rc = forward(p, &q.r, 1, RID(i), &g.calls[i]);
    am_buf_close(&q.b);
    return rc;
}

/* Call i got exactly one successful reply, the echo of its payload i. */
static void assert_echoed(int i)
{
    const struct call *c = &g.calls[i];
    cr_assert_eq(c->n, 1, "call %d: %d callbacks", i, c->n);
    cr_assert_eq(c->rid, RID(i), "call %d got the reply id of another call", i);
    cr_assert_eq(c->status, AM_ST_OK, "call %d: status %d (%s)", i, c->status, msg_of(c));
    const uint8_t *q = c->body;
    uint64_t v;
    cr_assert_eq(am_mp_read_uint(&q, c->body + c->len, &v), 0);
    cr_assert_eq(v, (uint64_t)i, "call %d got the reply of call %llu", i, (unsigned long long)v);
    cr_assert_eq(q, c->body + c->len);
}

static struct am_peers_stats stats(void)
{
    struct am_peers_stats st;
    am_peers_get_stats(g.ps, &st);
    return st;
}

static int calls_done(int from, int to)
{
    for (int i = from; i < to; i++)
        if (g.calls[i].n == 0)
            return 0;
    return 1;
}

/* A sockaddr nothing listens on: a socket bound to a kernel-chosen port but
 * never listening, kept open so no one else takes the port. */
static int refusing_addr(char *addr, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(addr, cap, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

/* ---- replies ------------------------------------------------------------- */

/* The FORWARD carries the call's names and payload bytes unchanged, the
 * hops and ring version given, after one HELLO naming this node; the reply
 * body and status reach the callback with the caller's reply id, and only
 * once the reply came. */
Test(peer, a_reply_reaches_the_call_that_asked)
{
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    static const uint8_t payload[] = {0x82, 0xa1, 'n',  0x05, 0xa3, 'w',
                                      'h',  'o',  0xc4, 0x02, 0x00, 0xff};
    static const uint8_t answer[] = {0x81, 0xa1, 'v', 0xcd, 0x01, 0x2c};
    struct req q;
    req_make(&q, AM_MSG_CALL, "counter", "alice", "add", payload, sizeof payload);
    cr_assert_eq(forward(p, &q.r, 1, RID(0), &g.calls[0]), 0, "%s", g.err);
    am_buf_close(&q.b);

    WAIT_FOR(g.f.nfwd == 1);
    cr_assert_eq(g.f.hellos, 1);
    cr_assert_str_eq(g.f.hello_name, "n1");
    cr_assert_eq(g.f.order_errors, 0, "the HELLO was not the first frame");
    cr_assert_eq(g.f.lastfwd.fwd_kind, AM_MSG_CALL);
    cr_assert_eq(g.f.lastfwd.hops, 1);
    cr_assert_eq(g.f.lastfwd.ring_version, RING_V);
    cr_assert_str_eq(g.f.lastfwd.type, "counter");
    cr_assert_str_eq(g.f.lastfwd.actor, "alice");
    cr_assert_str_eq(g.f.lastfwd.action, "add");
    cr_assert_eq(g.f.lastfwd.payload_len, sizeof payload);
    cr_assert_arr_eq(g.f.lastfwd.payload, payload, sizeof payload);
    run_for(20);
    cr_assert_eq(g.calls[0].n, 0, "a callback ran before the reply came");

    fake_reply(&g.f, g.f.fwds[0].id, AM_ST_OK, answer, sizeof answer);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].rid, RID(0));
    cr_assert_eq(g.calls[0].status, AM_ST_OK);
    cr_assert_eq(g.calls[0].len, sizeof answer);
    cr_assert_arr_eq(g.calls[0].body, answer, sizeof answer);
    struct am_peers_stats st = stats();
    cr_assert_eq(st.forwarded, 1);
    cr_assert_eq(st.replies, 1);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.connects, 1);
    cr_assert_eq(st.streams, 1);
    cr_assert_gt(st.bytes_in, 0);
    cr_assert_gt(st.bytes_out, 0);
    run_for(20);
    cr_assert_eq(g.calls[0].n, 1);
    finish();
}

/* A CAST keeps its kind in the FORWARD, and a failed reply keeps its status
 * and message. */
Test(peer, a_cast_keeps_its_kind_and_an_error_reply_its_status)
{
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    static const uint8_t nil = 0xc0;
    struct req q;
    req_make(&q, AM_MSG_CAST, "log", "l1", "append", &nil, 1);
    cr_assert_eq(forward(p, &q.r, 2, RID(0), &g.calls[0]), 0, "%s", g.err);
    am_buf_close(&q.b);
    WAIT_FOR(g.f.nfwd == 1);
    cr_assert_eq(g.f.lastfwd.fwd_kind, AM_MSG_CAST);
    cr_assert_eq(g.f.lastfwd.hops, 2);
    fake_error(&g.f, g.f.fwds[0].id, AM_ST_HANDLER, "the log is closed");
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_HANDLER);
    cr_assert_str_eq(msg_of(&g.calls[0]), "the log is closed");
    finish();
}

/* 1000 calls forwarded in one loop turn go out in order on one stream after
 * a single HELLO, and each gets its own reply although the peer answers
 * them in reverse order. */
Test(peer, many_calls_in_one_turn_get_their_own_replies_in_any_order)
{
    enum { N = 1000 };
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    for (int i = 0; i < N; i++)
        cr_assert_eq(fwd(p, i), 0, "call %d: %s", i, g.err);
    cr_assert_eq(g.ncb, 0);
    cr_assert_eq(stats().pending, N);

    WAIT_FOR(g.f.nfwd == N);
    cr_assert_eq(g.f.accepted, 1);
    cr_assert_eq(g.f.hellos, 1);
    cr_assert_eq(g.f.order_errors, 0);
    for (int i = 0; i < N; i++) {
        const uint8_t *q = g.f.fwds[i].payload;
        uint64_t v;
        cr_assert_eq(am_mp_read_uint(&q, q + g.f.fwds[i].payload_len, &v), 0);
        cr_assert_eq(v, (uint64_t)i, "FORWARD %d carries call %llu", i, (unsigned long long)v);
        for (int j = 0; j < i; j++)
            cr_assert_neq(g.f.fwds[i].id, g.f.fwds[j].id, "two calls share request id");
    }
    struct am_buf out;
    am_buf_init(&out);
    for (int i = N - 1; i >= 0; i--)
        cr_assert_eq(am_encode_reply(&out, g.f.fwds[i].id, AM_ST_OK, g.f.fwds[i].payload,
                                     g.f.fwds[i].payload_len),
                     0);
    fconn_send(g.f.last, &out);
    am_buf_close(&out);

    WAIT_FOR(g.ncb == N);
    for (int i = 0; i < N; i++)
        assert_echoed(i);
    struct am_peers_stats st = stats();
    cr_assert_eq(st.forwarded, N);
    cr_assert_eq(st.replies, N);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.connects, 1);
    finish();
}

/* ---- deadlines --------------------------------------------------------- */

/* A call without a reply fails with AM_ST_TIMEOUT, not before timeout_ms;
 * the stream stays (it keeps reading), its late reply is dropped, also once
 * its slot serves a new call, which gets its own reply. */
Test(peer, a_call_without_a_reply_times_out_and_its_late_reply_is_dropped)
{
    g.o.timeout_ms = 400;
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    uint64_t t0 = uv_now(&g.loop);
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 1);
    uv_timer_start(&g.f.hb, on_heartbeat, 10, 10);

    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_TIMEOUT);
    cr_assert_eq(g.calls[0].rid, RID(0));
    cr_assert_geq(g.calls[0].at - t0, 400, "timed out after %llu ms",
                  (unsigned long long)(g.calls[0].at - t0));
    cr_assert(strstr(msg_of(&g.calls[0]), "n2"), "%s", msg_of(&g.calls[0]));
    cr_assert(strstr(msg_of(&g.calls[0]), "no reply within 400 ms"), "%s", msg_of(&g.calls[0]));
    struct am_peers_stats st = stats();
    cr_assert_eq(st.timeouts, 1);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.stream_errors, 0, "the stream that kept reading was closed");
    cr_assert_eq(st.streams, 1);

    static const uint8_t late = 0x2a, fresh = 0x2b;
    fake_reply(&g.f, g.f.fwds[0].id, AM_ST_OK, &late, 1);
    run_for(30);
    cr_assert_eq(g.calls[0].n, 1, "a late reply ran the callback again");

    cr_assert_eq(fwd(p, 1), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 2);
    cr_assert_neq(g.f.fwds[1].id, g.f.fwds[0].id);
    fake_reply(&g.f, g.f.fwds[0].id, AM_ST_OK, &late, 1);
    fake_reply(&g.f, g.f.fwds[1].id, AM_ST_OK, &fresh, 1);
    WAIT_FOR(g.calls[1].n);
    uv_timer_stop(&g.f.hb);
    cr_assert_eq(g.calls[1].status, AM_ST_OK);
    cr_assert_eq(g.calls[1].len, 1);
    cr_assert_eq(g.calls[1].body[0], fresh, "the new call got the late reply of the old one");
    cr_assert_eq(g.calls[0].n, 1);
    st = stats();
    cr_assert_eq(st.replies, 1);
    cr_assert_eq(st.timeouts, 1);
    finish();
}

/* A stream that reads nothing for timeout_ms while calls wait is closed (the
 * peer sees EOF), its calls fail with AM_ST_TIMEOUT, and calls right after
 * are refused at once with AM_EUNAVAIL, their callbacks never run. */
Test(peer, a_stream_that_reads_nothing_while_calls_wait_is_closed)
{
    g.o.timeout_ms = 300;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    assert_echoed(0);

    g.f.fwd = FWD_MANUAL;
    uint64_t t0 = uv_now(&g.loop);
    for (int i = 1; i <= 3; i++)
        cr_assert_eq(fwd(p, i), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 4);
    WAIT_FOR(calls_done(1, 4));
    for (int i = 1; i <= 3; i++) {
        cr_assert_eq(g.calls[i].n, 1);
        cr_assert_eq(g.calls[i].status, AM_ST_TIMEOUT);
        cr_assert_geq(g.calls[i].at - t0, 300);
        cr_assert(strstr(msg_of(&g.calls[i]), "sent nothing for 300 ms"), "%s",
                  msg_of(&g.calls[i]));
    }
    cr_assert_eq(fwd(p, 4), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "n2") && strstr(g.err, "retry in"), "%s", g.err);
    struct am_peers_stats st = stats();
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.timeouts, 3);
    cr_assert_eq(st.stream_errors, 1);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(st.queued_bytes, 0);
    WAIT_FOR(g.f.eofs == 1);
    run_for(50);
    cr_assert_eq(g.calls[4].n, 0, "the callback of a refused call ran");
    cr_assert_eq(g.f.accepted, 1);
    finish();
}

/* ---- queue bounds ------------------------------------------------------ */

/* With max_pending calls waiting, the next is refused with AM_EOVERLOAD
 * naming the peer (its callback never runs); a reply makes room again. */
Test(peer, the_call_over_max_pending_is_refused_naming_the_peer)
{
    g.o.max_pending = 4;
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    for (int i = 0; i < 4; i++)
        cr_assert_eq(fwd(p, i), 0, "%s", g.err);
    cr_assert_eq(fwd(p, 4), AM_EOVERLOAD);
    cr_assert(strstr(g.err, "n2"), "%s", g.err);
    cr_assert(strstr(g.err, "4 calls wait"), "%s", g.err);
    struct am_peers_stats st = stats();
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.pending, 4);

    WAIT_FOR(g.f.nfwd == 4);
    cr_assert_eq(fwd(p, 4), AM_EOVERLOAD, "still 4 waiting");
    fake_reply(&g.f, g.f.fwds[0].id, AM_ST_OK, (const uint8_t *)"\x00", 1);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(fwd(p, 5), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 5);
    for (int k = 1; k < 5; k++)
        fake_reply(&g.f, g.f.fwds[k].id, AM_ST_OK, g.f.fwds[k].payload, g.f.fwds[k].payload_len);
    WAIT_FOR(calls_done(1, 4) && g.calls[5].n);
    for (int i = 1; i < 4; i++)
        assert_echoed(i);
    assert_echoed(5);
    cr_assert_eq(g.calls[4].n, 0, "the callback of a refused call ran");
    finish();
}

/* Forwards a call with an 8 KiB payload to p, counting into c. */
static int fwd_big(struct am_peer *p, const struct req *q, struct call *c)
{
    return forward(p, &q->r, 1, RID(0), c);
}

static void big_req(struct req *q)
{
    static uint8_t pl[3 + 8 * 1024];
    pl[0] = 0xc5; /* bin 16 */
    pl[1] = (uint8_t)((sizeof pl - 3) >> 8);
    pl[2] = (uint8_t)(sizeof pl - 3);
    memset(pl + 3, 0x5a, sizeof pl - 3);
    req_make(q, AM_MSG_CALL, "blob", "b1", "put", pl, sizeof pl);
}

/* Forwards 8 KiB calls each loop turn until one is refused, every few ms,
 * until none has been accepted for 20 turns (the kernel's buffers and the
 * peer's queue are full). Returns the calls accepted; *maxq is the most
 * bytes ever queued, *last the stats at the last refusal. */
static int fill(struct am_peer *p, const struct req *q, struct call *c, uint64_t *maxq,
                struct am_peers_stats *last)
{
    int accepted = 0, quiet = 0;
    uint64_t t0 = wall_ms();
    *maxq = 0;
    for (;;) {
        int now = 0, rc;
        while ((rc = fwd_big(p, q, c)) == 0)
            now++;
        cr_assert_eq(rc, AM_EOVERLOAD, "%s", g.err);
        accepted += now;
        quiet = now ? 0 : quiet + 1;
        *last = stats();
        if (last->queued_bytes > *maxq)
            *maxq = last->queued_bytes;
        if (quiet == 20)
            return accepted;
        run_for(2);
        cr_assert_lt(wall_ms() - t0, WAIT_MS, "the queue never filled");
    }
}

/* A peer that stops reading: the bytes waiting to be written stop growing
 * at about max_out, and every call past that is refused with AM_EOVERLOAD;
 * when the peer resets the stream, the calls fail and the buffers are
 * freed. */
Test(peer, a_peer_that_stops_reading_costs_at_most_about_max_out)
{
    g.o.max_out = 64 * KiB;
    g.o.max_pending = 100000;
    g.f.stop_reading = 1;
    struct am_peer *p = start();
    struct req q;
    big_req(&q);
    struct call *c = &g.calls[0];
    uint64_t maxq;
    struct am_peers_stats st;
    int accepted = fill(p, &q, c, &maxq, &st);
    cr_assert_gt(accepted, 0);
    size_t frame = q.b.len + 64;
    cr_assert_leq(maxq, g.o.max_out + frame, "%llu bytes queued", (unsigned long long)maxq);
    cr_assert_geq(st.queued_bytes, g.o.max_out, "refused for another reason: %s", g.err);
    cr_assert(strstr(g.err, "n2") && strstr(g.err, "bytes to be sent"), "%s", g.err);
    cr_assert_eq(st.pending, (uint64_t)accepted);
    cr_assert_eq(c->n, 0);

    fake_drop_conns(&g.f); /* unread bytes: the kernel resets the stream */
    WAIT_FOR(c->n == accepted);
    cr_assert_eq(c->by_status[AM_ST_UNAVAILABLE], accepted);
    st = stats();
    cr_assert_eq(st.queued_bytes, 0);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(st.failed, (uint64_t)accepted);
    am_buf_close(&q.b);
    finish();
}

/* ---- failed streams ---------------------------------------------------- */

/* Nothing listens at the address: the call fails with AM_ST_UNAVAILABLE
 * saying so, and the next call within the backoff is refused at once with
 * AM_EUNAVAIL, its callback never run. */
Test(peer, a_refused_connection_fails_the_calls_and_backs_off)
{
    char addr[32];
    int fd = refusing_addr(addr, sizeof addr);
    peers_new();
    struct am_peer *p = am_peers_get(g.ps, "n2", addr);
    cr_assert_not_null(p);
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    cr_assert_eq(g.calls[0].n, 0);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert(strstr(msg_of(&g.calls[0]), "cannot connect"), "%s", msg_of(&g.calls[0]));
    cr_assert(strstr(msg_of(&g.calls[0]), addr), "%s", msg_of(&g.calls[0]));

    cr_assert_eq(fwd(p, 1), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "n2") && strstr(g.err, "retry in"), "%s", g.err);
    run_for(20);
    cr_assert_eq(g.calls[1].n, 0, "the callback of a refused call ran");
    struct am_peers_stats st = stats();
    cr_assert_eq(st.connects, 0);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.stream_errors, 1);
    cr_assert_eq(st.streams, 0);
    close(fd);
    finish();
}

/* Forwards call i every few ms of loop time until it is accepted (it is
 * refused with AM_EUNAVAIL while the peer is in backoff). Returns the loop
 * time it was accepted at. */
static uint64_t fwd_after_backoff(struct am_peer *p, int i)
{
    uint64_t t0 = wall_ms();
    int rc;
    while ((rc = fwd(p, i)) == AM_EUNAVAIL) {
        run_for(5);
        cr_assert_lt(wall_ms() - t0, WAIT_MS, "still refused: %s", g.err);
    }
    cr_assert_eq(rc, 0, "%s", g.err);
    return uv_now(&g.loop);
}

/* A malformed frame from the peer fails the stream: its calls fail with
 * AM_ST_UNAVAILABLE, bad_frames and stream_errors count it; after the
 * backoff a new call opens a new stream and works. */
Test(peer, a_malformed_frame_fails_the_stream_and_a_later_call_reconnects)
{
    g.f.fwd = FWD_GARBAGE;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    cr_assert_eq(fwd(p, 1), 0, "%s", g.err);
    WAIT_FOR(calls_done(0, 2));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(g.calls[i].n, 1);
        cr_assert_eq(g.calls[i].status, AM_ST_UNAVAILABLE);
        cr_assert(strstr(msg_of(&g.calls[i]), "malformed"), "%s", msg_of(&g.calls[i]));
    }
    uint64_t failed_at = g.calls[0].at;
    struct am_peers_stats st = stats();
    cr_assert_eq(st.bad_frames, 1);
    cr_assert_eq(st.stream_errors, 1);
    cr_assert_eq(st.failed, 2);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(fwd(p, 2), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "malformed"), "%s", g.err);
    WAIT_FOR(g.f.eofs == 1);

    g.f.fwd = FWD_ECHO;
    uint64_t at = fwd_after_backoff(p, 3);
    cr_assert_geq(at - failed_at, 100, "retried %llu ms after the failure",
                  (unsigned long long)(at - failed_at));
    WAIT_FOR(g.calls[3].n);
    assert_echoed(3);
    cr_assert_eq(g.calls[2].n, 0);
    cr_assert_eq(g.f.accepted, 2);
    st = stats();
    cr_assert_eq(st.connects, 2);
    cr_assert_eq(st.streams, 1);
    finish();
}

/* The number in "retry in N ms" of a refusal. */
static unsigned retry_in(const char *err)
{
    const char *s = strstr(err, "retry in ");
    cr_assert_not_null(s, "%s", err);
    return (unsigned)strtoul(s + 9, NULL, 10);
}

/* The backoff doubles over failures in a row, but a stream that worked
 * (it carried a reply) starts the doubling again: a peer that failed once
 * long ago is not kept waiting longer at its next failure. */
Test(peer, a_stream_that_worked_resets_the_backoff)
{
    g.f.fwd = FWD_GARBAGE;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(fwd(p, 1), AM_EUNAVAIL);
    cr_assert_leq(retry_in(g.err), 100, "%s", g.err);

    /* Two failures in a row: the second backoff is longer. */
    fwd_after_backoff(p, 2);
    WAIT_FOR(g.calls[2].n);
    cr_assert_eq(g.calls[2].status, AM_ST_UNAVAILABLE);
    cr_assert_eq(fwd(p, 3), AM_EUNAVAIL);
    cr_assert_gt(retry_in(g.err), 100, "%s", g.err);

    /* A stream that works, then fails: back to the shortest backoff. */
    g.f.fwd = FWD_ECHO;
    fwd_after_backoff(p, 4);
    WAIT_FOR(g.calls[4].n);
    assert_echoed(4);
    g.f.fwd = FWD_GARBAGE;
    cr_assert_eq(fwd(p, 5), 0, "%s", g.err);
    WAIT_FOR(g.calls[5].n);
    cr_assert_eq(g.calls[5].status, AM_ST_UNAVAILABLE);
    cr_assert_eq(fwd(p, 6), AM_EUNAVAIL);
    cr_assert_leq(retry_in(g.err), 100, "%s", g.err);
    finish();
}

/* ---- the HELLO --------------------------------------------------------- */

/* The peer refuses the stream: the calls fail with AM_ST_UNAVAILABLE and
 * the peer's reason. */
Test(peer, a_refused_hello_fails_the_calls_with_the_reason)
{
    g.f.hello = HELLO_ERROR;
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    cr_assert_eq(fwd(p, 1), 0, "%s", g.err);
    WAIT_FOR(calls_done(0, 2));
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(g.calls[i].n, 1);
        cr_assert_eq(g.calls[i].status, AM_ST_UNAVAILABLE);
        cr_assert(strstr(msg_of(&g.calls[i]),
                         "refused the peer stream: n1 is not a member of this cluster"),
                  "%s", msg_of(&g.calls[i]));
    }
    cr_assert_eq(fwd(p, 2), AM_EUNAVAIL);
    struct am_peers_stats st = stats();
    cr_assert_eq(st.stream_errors, 1);
    cr_assert_eq(st.failed, 2);
    WAIT_FOR(g.f.eofs == 1);
    finish();
}

/* The node at the address is another node (it restarted under another
 * name, the address was reused): the calls fail naming it. */
Test(peer, a_hello_reply_from_another_node_fails_the_calls)
{
    snprintf(g.f.name, sizeof g.f.name, "n3");
    g.f.fwd = FWD_ECHO;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE,
                 "a reply from the wrong node was taken: status %d", g.calls[0].status);
    cr_assert(strstr(msg_of(&g.calls[0]), "the node at that address is 'n3'"), "%s",
              msg_of(&g.calls[0]));
    cr_assert_eq(stats().stream_errors, 1);
    finish();
}

/* A HELLO reply that does not say which node answered is malformed. */
Test(peer, a_hello_reply_without_a_node_name_is_malformed)
{
    g.f.hello = HELLO_NO_NODE;
    g.f.fwd = FWD_ECHO;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert(strstr(msg_of(&g.calls[0]), "malformed HELLO reply"), "%s", msg_of(&g.calls[0]));
    struct am_peers_stats st = stats();
    cr_assert_eq(st.bad_frames, 1);
    cr_assert_eq(st.stream_errors, 1);
    finish();
}

/* A request before the answer to HELLO: the stream is not known to reach
 * that node yet, so the request is refused, the stream closed and the
 * calls fail; nothing else is served on it. */
Test(peer, a_request_before_the_hello_answer_fails_the_stream)
{
    g.f.hello = HELLO_NONE;
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 1);
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_encode_simple(&out, AM_MSG_HANDOFF_DONE, 1), 0);
    fconn_send(g.f.last, &out);
    am_buf_close(&out);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert(strstr(msg_of(&g.calls[0]), "malformed frame"), "%s", msg_of(&g.calls[0]));
    WAIT_FOR(g.f.eofs == 1);
    cr_assert_eq(g.f.replies, 1, "the refusal was not answered");
    struct am_peers_stats st = stats();
    cr_assert_eq(st.bad_frames, 1);
    cr_assert_eq(st.stream_errors, 1);
    finish();
}

/* ---- drop and close ---------------------------------------------------- */

/* A dropped member's calls fail at once (inside am_peers_drop) with
 * AM_ST_UNAVAILABLE and the reason; its stream is closed; the next call
 * connects again without a backoff. Dropping an unknown name does
 * nothing. */
Test(peer, dropping_a_peer_fails_its_calls_at_once)
{
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    cr_assert_eq(fwd(p, 1), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 2);
    am_peers_drop(g.ps, "n9", "was never here");
    cr_assert_eq(g.ncb, 0);
    am_peers_drop(g.ps, "n2", "was declared dead");
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(g.calls[i].n, 1);
        cr_assert_eq(g.calls[i].status, AM_ST_UNAVAILABLE);
        cr_assert(strstr(msg_of(&g.calls[i]), "was declared dead"), "%s", msg_of(&g.calls[i]));
    }
    struct am_peers_stats st = stats();
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(st.streams, 0);
    WAIT_FOR(g.f.eofs == 1);

    g.f.fwd = FWD_ECHO;
    cr_assert_eq(fwd(p, 2), 0, "%s", g.err);
    WAIT_FOR(g.calls[2].n);
    assert_echoed(2);
    cr_assert_eq(g.f.accepted, 2);
    finish();
}

/* am_peers_close lets the calls already forwarded finish: they get their
 * replies, then done runs; new calls are refused with AM_ESHUTDOWN. */
Test(peer, closing_waits_for_the_replies_of_waiting_calls)
{
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    for (int i = 0; i < 3; i++)
        cr_assert_eq(fwd(p, i), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 3);
    struct am_peers *ps = g.ps;
    am_peers_close(ps, on_closed, NULL);
    cr_assert_eq(g.closed, 0);
    cr_assert_eq(fwd(p, 3), AM_ESHUTDOWN);
    cr_assert(strstr(g.err, "stopping"), "%s", g.err);
    run_for(30);
    cr_assert_eq(g.closed, 0, "done ran while calls waited");
    cr_assert_eq(g.ncb, 0);

    for (int i = 0; i < 3; i++)
        fake_reply(&g.f, g.f.fwds[i].id, AM_ST_OK, g.f.fwds[i].payload, g.f.fwds[i].payload_len);
    WAIT_FOR(g.closed);
    for (int i = 0; i < 3; i++)
        assert_echoed(i);
    cr_assert_eq(g.ncb_at_close, 3, "done ran before the last reply");
    cr_assert_eq(g.calls[3].n, 0);
    WAIT_FOR(g.f.eofs == 1);
    cr_assert_eq(g.closed, 1);
    finish();
}

/* am_peers_close with a call that gets no reply ends when the call times
 * out: it fails with AM_ST_TIMEOUT, then done runs. */
Test(peer, closing_with_an_unanswered_call_ends_when_it_times_out)
{
    g.o.timeout_ms = 300;
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 1);
    am_peers_close(g.ps, on_closed, NULL);
    WAIT_FOR(g.closed);
    cr_assert_eq(g.calls[0].n, 1);
    cr_assert_eq(g.calls[0].status, AM_ST_TIMEOUT);
    cr_assert_eq(g.ncb_at_close, 1, "done ran before the call ended");
    WAIT_FOR(g.f.eofs == 1);
    finish();
}

/* Closing a set with open streams and no waiting call closes them all at
 * once; a NULL set is closed at once too and has all-zero stats. */
Test(peer, closing_an_idle_set_closes_its_streams)
{
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    am_peers_close(g.ps, on_closed, NULL);
    WAIT_FOR(g.closed);
    WAIT_FOR(g.f.eofs == 1);

    int done = g.closed;
    am_peers_close(NULL, on_closed, NULL);
    cr_assert_eq(g.closed, done + 1);
    struct am_peers_stats st;
    memset(&st, 0xff, sizeof st);
    am_peers_get_stats(NULL, &st);
    cr_assert_eq(st.forwarded, 0);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(st.queued_bytes, 0);
    finish();
}

/* ---- the cluster key --------------------------------------------------- */

static const uint8_t KEY_A[AM_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const uint8_t KEY_B[AM_KEY_BYTES] = {11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1};

/* With the same key on both sides, calls make the round trip through
 * sealed records (the fake opens every byte it reads with the key: a
 * plaintext frame would fail its handshake check). */
Test(peer, with_a_cluster_key_the_round_trip_works)
{
    g.key = KEY_A;
    g.f.key = KEY_A;
    struct am_peer *p = start();
    for (int i = 0; i < 10; i++)
        cr_assert_eq(fwd(p, i), 0, "%s", g.err);
    WAIT_FOR(g.ncb == 10);
    for (int i = 0; i < 10; i++)
        assert_echoed(i);
    cr_assert_eq(g.f.auth_failures, 0);
    cr_assert_eq(g.f.hellos, 1);
    cr_assert_eq(g.f.nfwd, 10);
    finish();
}

/* A peer with another key cannot open the node's records and closes the
 * stream: the calls fail with AM_ST_UNAVAILABLE, having reached nothing. */
Test(peer, a_peer_with_another_key_fails_the_calls)
{
    g.key = KEY_A;
    g.f.key = KEY_B;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert_eq(g.f.auth_failures, 1);
    cr_assert_eq(g.f.hellos, 0);
    cr_assert_eq(g.f.nfwd, 0);
    cr_assert_eq(stats().stream_errors, 1);
    finish();
}

/* Records from the peer that do not open under the key fail the stream,
 * saying so. */
Test(peer, records_that_do_not_open_fail_the_stream)
{
    g.key = KEY_A;
    g.f.key = KEY_B;
    g.f.answer_bad_record = 1;
    struct am_peer *p = start();
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.calls[0].n);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert(strstr(msg_of(&g.calls[0]), "does not hold this cluster key"), "%s",
              msg_of(&g.calls[0]));
    WAIT_FOR(g.f.eofs == 1);
    finish();
}

/* A keyed stream whose peer never answers the handshake: the calls wait,
 * and the bytes waiting to be written still count against max_out, so the
 * node refuses calls with AM_EOVERLOAD past it instead of queueing more. */
Test(peer, a_keyed_stream_waiting_for_its_handshake_still_bounds_its_queue)
{
    g.key = KEY_A;
    g.o.max_out = 64 * KiB;
    g.o.max_pending = 100000;
    g.f.key = KEY_A;
    g.f.no_handshake = 1;
    struct am_peer *p = start();
    struct req q;
    big_req(&q);
    struct call *c = &g.calls[0];
    uint64_t maxq;
    struct am_peers_stats st;
    int accepted = fill(p, &q, c, &maxq, &st);
    size_t frame = q.b.len + 64;
    cr_assert_eq(c->n, 0, "%s", msg_of(c));
    cr_assert_leq((size_t)accepted * q.b.len, g.o.max_out + frame,
                  "%d calls (%zu bytes) wait for a stream that sent nothing", accepted,
                  (size_t)accepted * q.b.len);
    cr_assert(strstr(g.err, "bytes to be sent"), "%s", g.err);
    cr_assert_geq(st.queued_bytes, g.o.max_out);
    cr_assert_leq(maxq, g.o.max_out + frame);
    cr_assert_leq(g.f.discarded, AM_SEAL_HANDSHAKE_BYTES, "sent records before the handshake");
    fake_drop_conns(&g.f);
    WAIT_FOR(c->n == accepted);
    cr_assert_eq(c->by_status[AM_ST_UNAVAILABLE], accepted);
    am_buf_close(&q.b);
    finish();
}

/* ---- names and addresses ----------------------------------------------- */

/* am_peers_get gives the same peer for the same name; a new address (a
 * restarted node) fails the old stream's calls at once and the next call
 * goes to the new address without a backoff. */
Test(peer, the_same_name_is_the_same_peer_and_a_new_address_fails_the_old_stream)
{
    g.f.fwd = FWD_MANUAL;
    struct am_peer *p = start();
    cr_assert_eq(am_peers_get(g.ps, "n2", g.f.addr), p);
    struct am_peer *other = am_peers_get(g.ps, "n3", g.f.addr);
    cr_assert_not_null(other);
    cr_assert_neq(other, p);
    cr_assert_eq(fwd(p, 0), 0, "%s", g.err);
    WAIT_FOR(g.f.nfwd == 1);
    cr_assert_eq(am_peers_get(g.ps, "n2", g.f.addr), p);
    cr_assert_eq(g.calls[0].n, 0, "the same address failed the stream");

    fake_start(&g.f2, &g.loop);
    cr_assert_eq(am_peers_get(g.ps, "n2", g.f2.addr), p);
    cr_assert_eq(g.calls[0].n, 1);
    cr_assert_eq(g.calls[0].status, AM_ST_UNAVAILABLE);
    cr_assert(strstr(msg_of(&g.calls[0]), "moved to"), "%s", msg_of(&g.calls[0]));
    cr_assert(strstr(msg_of(&g.calls[0]), g.f2.addr), "%s", msg_of(&g.calls[0]));
    WAIT_FOR(g.f.eofs == 1);

    cr_assert_eq(fwd(p, 1), 0, "%s", g.err);
    WAIT_FOR(g.calls[1].n);
    assert_echoed(1);
    cr_assert_eq(g.f2.accepted, 1);
    cr_assert_eq(g.f.accepted, 1);
    finish();
}

/* A peer whose address does not parse is refused at once. */
Test(peer, a_peer_without_a_usable_address_is_refused_at_once)
{
    peers_new();
    struct am_peer *p = am_peers_get(g.ps, "n4", "not-an-address");
    cr_assert_not_null(p);
    cr_assert_eq(fwd(p, 0), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "n4") && strstr(g.err, "no usable address"), "%s", g.err);
    run_for(10);
    cr_assert_eq(g.calls[0].n, 0);
    finish();
}

/* ---- one stream per pair ------------------------------------------------ */

/* A second node in this process: its own server and peer set. */
struct node2 {
    struct am_server *srv;
    struct am_peers *ps;
    struct am_peer_io io;
    struct am_peer *other; /* its peer for the other node */
    int srv_closed, ps_closed;
};

static int hello_other(void *arg, const char *name, size_t len, const struct sockaddr_in *from,
                       struct am_peer **peer, char *err, size_t errlen)
{
    struct node2 *nd = arg;
    (void)name, (void)len, (void)from, (void)err, (void)errlen;
    *peer = nd->other;
    return 0;
}

static void *dial_node2(void *arg, struct am_peer *p, const char *name,
                        const struct sockaddr_in *to, char *err, size_t errlen)
{
    struct node2 *nd = arg;
    return am_server_dial(nd->srv, p, name, to, err, errlen);
}

static void node2_start(struct node2 *nd, const char *name, const char *ip, const char *other,
                        const char *other_addr)
{
    struct sockaddr_in sa, src;
    char err[256];
    cr_assert_eq(uv_ip4_addr(ip, 7940, &sa), 0);
    cr_assert_eq(uv_ip4_addr(ip, 0, &src), 0);
    struct am_server_opts so = {
        .node_name = name,
        .max_frame = 1 * MiB,
        .max_connections = 64,
        .max_inflight = 64,
        .peer_source = &src,
    };
    struct am_server_hooks hooks = {.peer_hello = hello_other, .arg = nd};
    cr_assert_eq(am_server_start(&nd->srv, &g.loop, &sa, NULL, &so, &hooks, err, sizeof err), 0,
                 "%s", err);
    nd->io = am_server_peer_io(dial_node2, nd);
    struct am_peers_opts po = g.o;
    po.name = name;
    po.io = &nd->io;
    cr_assert_eq(am_peers_new(&nd->ps, &g.loop, &po), 0);
    nd->other = am_peers_get(nd->ps, other, other_addr);
    cr_assert_not_null(nd->other);
}

static void on_node2_srv_closed(void *arg)
{
    ((struct node2 *)arg)->srv_closed = 1;
}

static void on_node2_ps_closed(void *arg)
{
    ((struct node2 *)arg)->ps_closed = 1;
}

/* HANDOFF_DONE i from nd to the other node: answered status 0 by it. */
static void done_to_other(struct node2 *nd, int i)
{
    struct am_request r = {.kind = AM_MSG_HANDOFF_DONE};
    g.in_forward = 1;
    int rc = am_peer_forward(nd->other, &r, 0, 0, RID(i), on_reply, &g.calls[i], g.err,
                             sizeof g.err);
    g.in_forward = 0;
    cr_assert_eq(rc, 0, "%s", g.err);
}

static struct am_server_stats server_stats(const struct node2 *nd)
{
    struct am_server_stats st;
    am_server_get_stats(nd->srv, &st);
    return st;
}

/* Two nodes whose first calls to each other leave in the same loop turn
 * both dial, and each accepts the other's stream. Both then keep the one
 * dialed by "n1" (the name that sorts first) for new calls; the calls
 * already on n2's stream still get their replies, and n2 closes its stream
 * a timeout later. From then on one connection carries the calls of both
 * nodes, and no other is opened. */
Test(peer, two_nodes_that_dial_each_other_at_once_keep_one_stream)
{
    g.o.timeout_ms = 300;
    struct node2 a = {0}, b = {0};
    node2_start(&a, "n1", "127.0.13.1", "n2", "127.0.13.2:7940");
    node2_start(&b, "n2", "127.0.13.2", "n1", "127.0.13.1:7940");
    done_to_other(&a, 0);
    done_to_other(&b, 1);
    WAIT_FOR(g.calls[0].n && g.calls[1].n);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(g.calls[i].status, AM_ST_OK, "call %d: %s", i, msg_of(&g.calls[i]));
    WAIT_FOR(server_stats(&a).peers == 1 && server_stats(&b).peers == 1);

    /* n2 closes the stream it dialed once the calls on it had their time. */
    WAIT_FOR(server_stats(&a).peers == 0);
    cr_assert_eq(server_stats(&b).peers, 1, "n1's stream was closed");
    struct am_peers_stats sa, sb;
    am_peers_get_stats(a.ps, &sa);
    am_peers_get_stats(b.ps, &sb);
    cr_assert_eq(sa.streams, 1);
    cr_assert_eq(sb.streams, 1);
    cr_assert_eq(sa.accepts + sb.accepts, 2);
    cr_assert_eq(sa.stream_errors + sb.stream_errors, 0);

    /* Calls both ways go over n1's stream: no new connection anywhere. */
    uint64_t acc_a = server_stats(&a).accepted, acc_b = server_stats(&b).accepted;
    for (int i = 2; i < 12; i++)
        done_to_other(i % 2 ? &b : &a, i);
    WAIT_FOR(calls_done(2, 12));
    for (int i = 2; i < 12; i++)
        cr_assert_eq(g.calls[i].status, AM_ST_OK, "call %d: %s", i, msg_of(&g.calls[i]));
    cr_assert_eq(server_stats(&a).accepted, acc_a);
    cr_assert_eq(server_stats(&b).accepted, acc_b);
    cr_assert_eq(server_stats(&b).peers, 1);
    cr_assert_eq(server_stats(&a).peers, 0);

    am_peers_close(a.ps, on_node2_ps_closed, &a);
    am_peers_close(b.ps, on_node2_ps_closed, &b);
    WAIT_FOR(a.ps_closed && b.ps_closed);
    am_server_close(a.srv, on_node2_srv_closed, &a);
    am_server_close(b.srv, on_node2_srv_closed, &b);
    WAIT_FOR(a.srv_closed && b.srv_closed);
    finish();
}
