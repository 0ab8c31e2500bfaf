/* server.c - the client protocol server (see server.h).
 *
 * A connection owns three buffers: `in` (bytes read, not yet parsed: at most
 * one frame plus one read), `out` (replies encoded this loop turn) and `wbuf`
 * (the write in progress). At the end of each loop turn (a uv_check, with a
 * uv_idle so the loop does not block while work is queued) connections with
 * output swap out and wbuf and start one write. Replies for calls held by the
 * runtime arrive later through on_reply; the connection is freed only when
 * its handle is closed and no call of it is still in the runtime.
 *
 * Reading is paused while a connection has max_inflight calls in the runtime
 * or more than OUT_LIMIT bytes waiting to be written, and resumed from the
 * loop-turn callback (never from inside a runtime callback, so the runtime is
 * not re-entered).
 *
 * Peer streams (peer.h) are connections too: accepted ones that said HELLO
 * role "peer", and those this server dials for the peer set (`dialed`).
 * Either kind carries requests and REPLY frames both ways once it is a
 * peer's link (`link`): requests are served as on any peer stream, replies
 * go to the peer set. A peer stream is never paused: its replies must flow
 * whatever its requests do, and what the other node may send is bounded by
 * its own limits (max_pending calls, max_out bytes). */
#include "server.h"

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

/* Reads land in chunks of 64 KiB: large enough that a pipelined client's
 * burst of small requests is parsed in one callback, small enough that a
 * thousand idle connections hold 64 MiB at most (and an empty buffer is
 * released). */
#define READ_CHUNK (64 * 1024)
/* Unsent output per connection before reading pauses: 8 MiB, or two of the
 * largest frames if those are bigger. */
#define OUT_LIMIT_MIN (8u << 20)
/* How long a stopping node waits for clients to read their last replies:
 * long enough for any client that is reading (8 MiB drains in milliseconds
 * on a LAN), short enough that a stuck one cannot stall a restart. */
#define DRAIN_MS 5000
/* A client connection whose calls wait for other nodes keeps its replies
 * until those come too, at most HOLD_MS and while it holds under HOLD_MAX
 * bytes (see on_turn). */
#define HOLD_MS 5
#define HOLD_MAX (64u << 10)
/* The listener, turn_check, turn_idle, drain_timer and hold_timer. */
#define SERVER_HANDLES 5

struct conn {
    uv_tcp_t tcp;
    struct am_server *srv;
    struct conn *prev, *next;
    struct conn *turn_next;
    struct conn *held_next, **held_pprev; /* on srv->held (pprev NULL: not held) */
    uint64_t held_since;                  /* loop time (ms) its hold began */
    struct am_buf in, out, wbuf;
    /* With a cluster key: raw holds bytes read and not yet opened, sealed
     * the sealed output waiting for its write (out stays plain text). */
    struct am_buf raw, sealed;
    struct am_secure sec;
    uv_write_t wreq;
    unsigned inflight;
    unsigned forwarding; /* of those, calls handed to other nodes (route() said 1) */
    uint8_t hold_over;   /* held HOLD_MS: its output goes at the next turn */
    uint8_t in_turn, writing, paused, reading, closing, closed, close_after_write;
    uint8_t member;  /* said HELLO with role "member": push-pull of a (joining) node */
    uint8_t peer;    /* a peer stream: accepted after HELLO role "peer", or dialed */
    uint8_t dialed;  /* this server dialed it (am_server_dial) */
    uint8_t connecting, hello_ok; /* dialed: not connected yet; HELLO answered */
    char *peer_name;       /* the node it said it is, or the one dialed */
    struct am_peer *link;  /* the peer this stream is a link of, or NULL */
    uv_connect_t creq;
    char why[160]; /* why a peer stream closed, for its peer */
};

struct am_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_check_t turn_check;
    uv_idle_t turn_idle;
    uv_timer_t drain_timer; /* bounds how long closing waits for slow readers */
    uv_timer_t hold_timer;  /* ends the holds of `held` */
    struct am_runtime *rt;
    struct am_server_opts o;
    struct sockaddr_in peer_source; /* o.peer_source points here when given */
    uint8_t key[AM_KEY_BYTES];
    int keyed;
    size_t out_limit;
    struct am_server_hooks hooks;
    struct conn *conns;
    struct conn *turn; /* connections with output to write or input to resume */
    struct conn *held; /* client connections keeping their output (on_turn) */
    struct am_server_stats st;
    int accepting;
    int closing;
    int handles_open;    /* of SERVER_HANDLES, those whose close has not completed */
    int handles_closing; /* maybe_finish_close closed them */
    void (*close_done)(void *arg);
    void *close_arg;
};

static void conn_close(struct conn *c);
static void process_input(struct conn *c);
static void maybe_finish_close(struct am_server *s);

static void on_turn(uv_check_t *h);
static void on_server_handle_closed(uv_handle_t *h);

/* The idle handle only keeps the loop from blocking in poll while a turn is
 * due; the work happens in on_turn. */
static void on_idle(uv_idle_t *h)
{
    (void)h;
}

static void turn_add(struct conn *c)
{
    struct am_server *s = c->srv;
    if (c->in_turn || c->closed)
        return;
    c->in_turn = 1;
    c->turn_next = s->turn;
    s->turn = c;
    uv_check_start(&s->turn_check, on_turn);
    uv_idle_start(&s->turn_idle, on_idle);
}

static size_t pending_out(const struct conn *c)
{
    return c->out.len + c->sealed.len + c->wbuf.len;
}

/* Bytes on a peer's link are the peer set's (routing), the rest ours. */
static void count_bytes(struct conn *c, size_t in, size_t out)
{
    if (c->link) {
        am_peer_link_bytes(c->link, in, out);
        return;
    }
    c->srv->st.bytes_in += in;
    c->srv->st.bytes_out += out;
}

static void conn_free(struct conn *c)
{
    am_free(c->peer_name);
    am_buf_close(&c->in);
    am_buf_close(&c->out);
    am_buf_close(&c->wbuf);
    am_buf_close(&c->raw);
    am_buf_close(&c->sealed);
    if (c->srv->keyed)
        am_secure_free(&c->sec);
    am_free(c);
}

static int over_limits(const struct conn *c)
{
    if (c->peer)
        return 0;
    return c->inflight >= c->srv->o.max_inflight || pending_out(c) > c->srv->out_limit;
}

static void send_error(struct conn *c, uint64_t id, int status, const char *msg)
{
    if (am_encode_error(&c->out, id, status, msg) == 0)
        turn_add(c);
}

/* Runtime callback: the outcome of one call of this connection. */
static void on_reply(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct conn *c = ctx;
    c->inflight--;
    if (!c->closing) {
        if (am_encode_reply(&c->out, id, status, body, len))
            send_error(c, id, AM_ST_INTERNAL, "out of memory");
        turn_add(c);
    } else if (c->closed && c->inflight == 0) {
        conn_free(c);
    }
}

/* The reply to a call route() handed to another node. */
static void on_fwd_reply(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    struct conn *c = ctx;
    c->forwarding--;
    on_reply(ctx, id, status, body, len);
}

static int role_is(const struct am_request *r, const char *role)
{
    return r->role_len == strlen(role) && memcmp(r->role, role, r->role_len) == 0;
}

/* HELLO role "peer": only a live member of this node's view, connecting
 * from its own address, may forward calls here. */
static int accept_peer(struct conn *c, const struct am_request *r, struct am_peer **peer,
                       char *msg, size_t len)
{
    struct am_server *s = c->srv;
    struct sockaddr_storage from;
    int flen = sizeof from;
    if (!r->name)
        return am_errf(msg, len, AM_EPROTO, "HELLO role 'peer' must name the node");
    if (!s->hooks.peer_hello)
        return am_errf(msg, len, AM_EPROTO, "this node takes no peer streams");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&from, &flen) || from.ss_family != AF_INET)
        return am_errf(msg, len, AM_EPROTO, "peer streams are served over IPv4 only");
    return s->hooks.peer_hello(s->hooks.arg, r->name, r->name_len,
                               (const struct sockaddr_in *)&from, peer, msg, len);
}

static void handle_hello(struct conn *c, const struct am_request *r)
{
    char msg[300];
    struct am_server *s = c->srv;
    struct am_peer *peer = NULL;
    if (r->version != AM_PROTO_VERSION) {
        snprintf(msg, sizeof msg, "protocol version %llu is not supported (this node speaks %d)",
                 (unsigned long long)r->version, AM_PROTO_VERSION);
    } else if (c->member || c->peer) {
        snprintf(msg, sizeof msg, "this connection already said HELLO");
    } else if (!role_is(r, "client") && !(role_is(r, "member") && s->hooks.sync) &&
               !role_is(r, "peer")) {
        snprintf(msg, sizeof msg, "role '%.*s' is not served on this port (use 'client')",
                 (int)r->role_len, r->role);
    } else if (role_is(r, "peer") && accept_peer(c, r, &peer, msg, sizeof msg)) {
        s->st.peers_refused++;
        am_log_warn("refused a peer stream: %s", msg);
    } else {
        c->member = role_is(r, "member");
        if (role_is(r, "peer")) {
            c->peer_name = am_strndup(r->name, r->name_len);
            if (!c->peer_name) {
                send_error(c, r->id, AM_ST_INTERNAL, "out of memory");
                c->close_after_write = 1;
                return;
            }
            c->peer = 1;
            s->st.peers++;
        }
        struct am_buf b;
        msgpack_packer pk;
        am_buf_init(&b);
        am_mp_packer_init(&pk, &b);
        int rc = msgpack_pack_map(&pk, 2) || am_mp_pack_str(&pk, "proto", 5) ||
                 msgpack_pack_int(&pk, AM_PROTO_VERSION) || am_mp_pack_str(&pk, "node", 4) ||
                 am_mp_pack_str(&pk, s->o.node_name, strlen(s->o.node_name));
        if (rc || am_encode_reply(&c->out, r->id, AM_ST_OK, b.data, b.len))
            send_error(c, r->id, AM_ST_INTERNAL, "out of memory");
        am_buf_close(&b);
        turn_add(c);
        if (c->peer && peer) { /* after the HELLO reply: its calls follow it */
            c->link = peer;
            am_peer_link_up(peer, c, 0);
        }
        return;
    }
    send_error(c, r->id, AM_ST_BAD_REQUEST, msg);
    c->close_after_write = 1;
}

/* ACTORS: {"active": N, "keys": ["type/id"...], "truncated": bool}, at
 * most ACTORS_LIST_MAX keys. */
#define ACTORS_LIST_MAX 100000

struct key_list {
    msgpack_packer *pk;
    size_t left;
    int rc;
};

static void pack_key(void *arg, const char *key, size_t len)
{
    struct key_list *l = arg;
    if (l->left == 0 || l->rc)
        return;
    l->left--;
    l->rc = am_mp_pack_str(l->pk, key, len);
}

static int pack_actors(struct am_server *s, msgpack_packer *pk)
{
    struct am_runtime_stats rs;
    am_runtime_get_stats(s->rt, &rs);
    size_t n = rs.active < ACTORS_LIST_MAX ? (size_t)rs.active : ACTORS_LIST_MAX;
    struct key_list l = {.pk = pk, .left = n};
    if (msgpack_pack_map(pk, 3) || am_mp_pack_str(pk, "active", 6) ||
        msgpack_pack_uint64(pk, rs.active) || am_mp_pack_str(pk, "keys", 4) ||
        msgpack_pack_array(pk, (uint32_t)n))
        return -ENOMEM;
    am_runtime_each_active(s->rt, pack_key, &l);
    if (l.rc || l.left) /* the count and the walk disagree: never on one thread */
        return -ENOMEM;
    return am_mp_pack_str(pk, "truncated", 9) ||
           (rs.active > n ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
}

/* STATUS, MEMBERS, RING and ACTORS: one map. */
static void handle_query(struct conn *c, const struct am_request *r)
{
    struct am_buf b;
    msgpack_packer pk;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    int (*fn)(void *, msgpack_packer *) = r->kind == AM_MSG_STATUS    ? c->srv->hooks.status
                                          : r->kind == AM_MSG_MEMBERS ? c->srv->hooks.members
                                                                      : c->srv->hooks.ring;
    if (r->kind == AM_MSG_ACTORS) {
        if (pack_actors(c->srv, &pk) || am_encode_reply(&c->out, r->id, AM_ST_OK, b.data, b.len))
            send_error(c, r->id, AM_ST_INTERNAL, "out of memory");
    } else if (!fn) {
        send_error(c, r->id, AM_ST_BAD_REQUEST, "this node runs without membership");
    } else if (fn(c->srv->hooks.arg, &pk) ||
               am_encode_reply(&c->out, r->id, AM_ST_OK, b.data, b.len)) {
        send_error(c, r->id, AM_ST_INTERNAL, "out of memory");
    }
    am_buf_close(&b);
    turn_add(c);
}

static void handle_sync(struct conn *c, const struct am_request *r)
{
    struct am_server *s = c->srv;
    if (!c->member || !s->hooks.sync) {
        send_error(c, r->id, AM_ST_BAD_REQUEST,
                   "SYNC is served to member connections only (HELLO role 'member')");
        return;
    }
    struct am_buf reply, b;
    msgpack_packer pk;
    am_buf_init(&reply);
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    int rc = s->hooks.sync(s->hooks.arg, r->payload, r->payload_len, &reply);
    if (rc) {
        s->st.bad_frames++;
        send_error(c, r->id, AM_ST_BAD_REQUEST, "malformed push-pull message");
    } else if (msgpack_pack_bin(&pk, reply.len) ||
               (reply.len && msgpack_pack_bin_body(&pk, reply.data, reply.len)) ||
               am_encode_reply(&c->out, r->id, AM_ST_OK, b.data, b.len)) {
        send_error(c, r->id, AM_ST_INTERNAL, "out of memory");
    }
    am_buf_close(&reply);
    am_buf_close(&b);
    turn_add(c);
}

static void handle_leave(struct conn *c, const struct am_request *r)
{
    struct am_server *s = c->srv;
    static const uint8_t nil = 0xc0;
    if (!s->hooks.leave) {
        send_error(c, r->id, AM_ST_BAD_REQUEST, "this node runs without membership");
        return;
    }
    if (am_encode_reply(&c->out, r->id, AM_ST_OK, &nil, 1) == 0)
        turn_add(c);
    s->hooks.leave(s->hooks.arg);
}

/* A malformed or misplaced frame on a peer stream closes it (a node that
 * sends one is broken or is not a node); a client is told and may go on. */
static void bad_frame(struct conn *c, const struct am_request *r, const char *msg)
{
    c->srv->st.bad_frames++;
    send_error(c, r && r->has_id ? r->id : 0, AM_ST_BAD_REQUEST, msg);
    if (c->peer) {
        am_log_warn("closed a peer stream after a malformed frame: %s", msg);
        if (c->link)
            am_peer_link_bad_frame(c->link);
        snprintf(c->why, sizeof c->why, "sent a malformed frame; stream closed");
        c->close_after_write = 1;
    }
}

/* 1 when a frame body starts as a REPLY ([128, ...]). */
static int is_reply(const uint8_t *body, size_t len)
{
    const uint8_t *q = body, *end = body + len;
    uint32_t n;
    uint64_t kind;
    return am_mp_read_array(&q, end, &n) == 0 && n > 0 && am_mp_read_uint(&q, end, &kind) == 0 &&
           kind == AM_MSG_REPLY;
}

/* The answer to a dialed stream's HELLO: the node must be the one meant.
 * Returns 0, or -1 when the stream was closed. */
static int check_hello(struct conn *c, const struct am_reply *r)
{
    if (r->status != AM_ST_OK) {
        const char *msg = "";
        uint32_t mlen = 0;
        const uint8_t *q = r->body;
        am_mp_read_str(&q, r->body + r->body_len, &msg, &mlen);
        snprintf(c->why, sizeof c->why, "refused the peer stream: %.*s", (int)mlen, msg);
        conn_close(c);
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
                if (vlen != strlen(c->peer_name) || memcmp(v, c->peer_name, vlen) != 0) {
                    snprintf(c->why, sizeof c->why, "the node at that address is '%.*s'",
                             (int)vlen, v);
                    conn_close(c);
                    return -1;
                }
                return 0;
            }
            if (am_mp_skip(&q, end))
                break;
        }
    }
    c->srv->st.bad_frames++;
    if (c->link)
        am_peer_link_bad_frame(c->link);
    snprintf(c->why, sizeof c->why, "malformed HELLO reply");
    conn_close(c);
    return -1;
}

/* A REPLY on a peer stream: the answer to a call of this node. */
static void handle_reply(struct conn *c, const uint8_t *body, size_t len)
{
    struct am_reply r;
    if (am_reply_decode(&r, body, len)) {
        bad_frame(c, NULL, "malformed reply: see the message layouts in docs/protocol.md");
        return;
    }
    if (c->dialed && !c->hello_ok) {
        if (r.id != 0) {
            bad_frame(c, NULL, "a reply came before the answer to HELLO");
            return;
        }
        if (check_hello(c, &r))
            return;
        c->hello_ok = 1;
        if (c->link)
            am_peer_link_up(c->link, c, 1);
        return;
    }
    if (c->link)
        am_peer_link_reply(c->link, &r);
    /* else: the peer let go of this stream; a late reply is dropped */
}

static void handle_frame(struct conn *c, const uint8_t *body, size_t len)
{
    struct am_server *s = c->srv;
    struct am_request r;
    char err[300];
    if (c->peer && is_reply(body, len)) {
        handle_reply(c, body, len);
        return;
    }
    s->st.requests++;
    if (c->dialed && !c->hello_ok) {
        bad_frame(c, NULL, "a request came before the answer to HELLO");
        return;
    }
    if (am_request_decode(&r, body, len)) {
        bad_frame(c, &r,
                  r.has_id ? "malformed request: see the message layouts in docs/protocol.md"
                           : "malformed frame: not [kind, request id, ...] in msgpack");
        return;
    }
    if (c->peer && (!s->accepting || s->closing) && r.kind != AM_MSG_HELLO) {
        send_error(c, r.id, AM_ST_SHUTTING_DOWN, "node is stopping; retry on another node");
        return;
    }
    switch (r.kind) {
    case AM_MSG_HELLO:
        handle_hello(c, &r);
        return;
    case AM_MSG_STATUS:
    case AM_MSG_MEMBERS:
    case AM_MSG_RING:
    case AM_MSG_ACTORS:
        handle_query(c, &r);
        return;
    case AM_MSG_SYNC:
        handle_sync(c, &r);
        return;
    case AM_MSG_LEAVE:
        handle_leave(c, &r);
        return;
    case AM_MSG_HANDOFF:
    case AM_MSG_REPLICATE:
    case AM_MSG_FETCH:
    case AM_MSG_DIGEST:
    case AM_MSG_VERSIONS:
        if (!c->peer) {
            bad_frame(c, &r,
                      r.kind == AM_MSG_HANDOFF
                          ? "HANDOFF is taken on peer streams only (HELLO role 'peer')"
                      : r.kind == AM_MSG_REPLICATE
                          ? "REPLICATE is taken on peer streams only (HELLO role 'peer')"
                      : r.kind == AM_MSG_FETCH
                          ? "FETCH is taken on peer streams only (HELLO role 'peer')"
                          : "DIGEST and VERSIONS are taken on peer streams only (HELLO role "
                            "'peer')");
            c->close_after_write = 1;
            return;
        }
        c->inflight++;
        int hrc =
            s->hooks.handoff
                ? s->hooks.handoff(s->hooks.arg, c->peer_name, &r, on_reply, c, err, sizeof err)
                : am_errf(err, sizeof err, AM_EPROTO, "this node takes no handoffs");
        if (hrc) {
            c->inflight--;
            send_error(c, r.id, am_status_of(hrc), err);
        }
        return;
    case AM_MSG_HANDOFF_DONE:
        if (!c->peer) {
            bad_frame(c, &r, "HANDOFF_DONE is taken on peer streams only (HELLO role 'peer')");
            c->close_after_write = 1;
            return;
        }
        if (s->hooks.handoff_done)
            s->hooks.handoff_done(s->hooks.arg, c->peer_name);
        if (am_encode_reply(&c->out, r.id, AM_ST_OK, (const uint8_t *)"\xc0", 1) == 0)
            turn_add(c);
        return;
    case AM_MSG_FORWARD:
        if (!c->peer) {
            bad_frame(c, &r, "FORWARD is taken on peer streams only (HELLO role 'peer')");
            c->close_after_write = 1;
            return;
        }
        break;
    default:
        if (c->peer) {
            bad_frame(c, &r,
                      "a peer stream carries FORWARD, HANDOFF, HANDOFF_DONE, REPLICATE, FETCH, "
                      "DIGEST and VERSIONS frames only");
            return;
        }
        break;
    }
    int kind = r.kind == AM_MSG_FORWARD ? r.fwd_kind : r.kind;
    /* A call always has a callback; so does a cast that goes to another
     * node (its acknowledgement is the owner's) or came from one. */
    int held = 1;
    unsigned fwd = !c->peer; /* a client's call handed on counts until its reply */
    c->inflight++;
    c->forwarding += fwd;
    int rc = s->hooks.route ? s->hooks.route(s->hooks.arg, &r, fwd ? on_fwd_reply : on_reply, c,
                                             err, sizeof err)
                            : 0;
    if (rc == 1)
        return;
    c->forwarding -= fwd;
    if (rc == 0) {
        held = kind == AM_MSG_CALL;
        rc = am_runtime_submit(s->rt, r.id, r.type, r.type_len, r.actor, r.actor_len, r.action,
                               r.action_len, r.payload, r.payload_len, held ? on_reply : NULL, c,
                               err, sizeof err);
    }
    if (rc || !held)
        c->inflight--;
    if (rc) {
        send_error(c, r.id, am_status_of(rc), err);
    } else if (!held) {
        static const uint8_t nil = 0xc0;
        if (am_encode_reply(&c->out, r.id, AM_ST_OK, &nil, 1) == 0)
            turn_add(c);
    }
}

/* Parses and handles every complete frame in c->in, unless a limit is hit. */
static void process_input(struct conn *c)
{
    struct am_server *s = c->srv;
    size_t off = 0;
    while (!c->closing && !c->close_after_write && (c->peer || (!s->closing && s->accepting))) {
        if (over_limits(c)) {
            c->paused = 1;
            break;
        }
        const uint8_t *body;
        size_t blen;
        size_t limit = c->peer ? s->o.max_peer_frame : s->o.max_frame;
        long n = am_frame_next(c->in.data + off, c->in.len - off, limit, &body, &blen);
        if (n == 0)
            break;
        if (n < 0) {
            char msg[160];
            s->st.bad_frames++;
            if (c->peer)
                am_log_warn("closed a peer stream after an oversized frame");
            snprintf(msg, sizeof msg, "frame of %u bytes exceeds the limit of %zu bytes",
                     am_be32_get(c->in.data + off), limit);
            send_error(c, 0, AM_ST_TOO_LARGE, msg);
            c->close_after_write = 1; /* the stream cannot be resynchronised */
            off = c->in.len;
            break;
        }
        handle_frame(c, body, blen);
        off += (size_t)n;
    }
    am_buf_consume(&c->in, off);
    if (c->in.len == 0 && c->in.cap > READ_CHUNK)
        am_buf_close(&c->in);
    if (!c->closing && (c->paused || c->close_after_write || (!s->accepting && !c->peer)))
        uv_read_stop((uv_stream_t *)&c->tcp);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    struct am_buf *b = c->srv->keyed ? &c->raw : &c->in;
    (void)suggested;
    if (am_buf_reserve(b, READ_CHUNK)) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    buf->base = (char *)b->data + b->len;
    buf->len = b->cap - b->len;
}

/* Opens what a keyed connection read into c->in. Returns 0, or -1 when the
 * connection was closed (not our key). */
static int open_raw(struct conn *c)
{
    struct am_server *s = c->srv;
    int rc = am_secure_read(&c->sec, c->raw.data, c->raw.len, &c->in, &c->sealed);
    c->raw.len = 0;
    if (c->raw.cap > READ_CHUNK)
        am_buf_close(&c->raw);
    if (rc == 1)
        turn_add(c);
    if (rc < 0) {
        s->st.unauthenticated++;
        am_log_debug("closed a connection that does not hold the cluster key");
        snprintf(c->why, sizeof c->why, "does not hold this cluster key");
        conn_close(c);
        return -1;
    }
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    (void)buf;
    if (nread == UV_ENOBUFS) {
        am_log_warn("out of memory reading a client connection; closing it");
        conn_close(c);
        return;
    }
    if (nread < 0) {
        /* EOF or error: a half-sent frame is dropped */
        if (nread == UV_EOF)
            snprintf(c->why, sizeof c->why, "closed the peer stream");
        else
            snprintf(c->why, sizeof c->why, "read failed: %s", uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    count_bytes(c, (size_t)nread, 0);
    if (c->srv->keyed) {
        c->raw.len += (size_t)nread;
        if (open_raw(c))
            return;
    } else {
        c->in.len += (size_t)nread;
    }
    process_input(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    c->writing = 0;
    count_bytes(c, 0, c->wbuf.len);
    c->wbuf.len = 0;
    if (c->wbuf.cap > OUT_LIMIT_MIN)
        am_buf_close(&c->wbuf);
    if (status < 0) {
        snprintf(c->why, sizeof c->why, "write failed: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    turn_add(c);
}

static void start_write(struct conn *c)
{
    /* With a key the turn's plain output is sealed first; what goes on the
     * wire is then c->sealed. */
    struct am_buf *src = &c->out;
    if (c->connecting)
        return; /* on_connect starts the first write */
    if (c->srv->keyed) {
        /* Until the handshake completes, output stays in c->out, where a
         * peer's queued() counts it (am_secure_out would hold it in a queue
         * of its own). */
        if (c->out.len && am_secure_ready(&c->sec)) {
            if (am_secure_out(&c->sec, c->out.data, c->out.len, &c->sealed)) {
                snprintf(c->why, sizeof c->why, "out of memory sealing a record");
                conn_close(c);
                return;
            }
            c->out.len = 0;
        }
        src = &c->sealed;
        if (src->len == 0)
            return; /* held until the handshake completes */
    }
    /* Most turns' output fits the socket buffer: write it directly, which
     * spares libuv's write request and the epoll changes it makes. Only
     * what the kernel does not take waits for a uv_write. */
    uv_buf_t direct = uv_buf_init((char *)src->data, (unsigned)src->len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &direct, 1);
    if (n < 0 && n != UV_EAGAIN) {
        snprintf(c->why, sizeof c->why, "write failed: %s", uv_strerror(n));
        conn_close(c);
        return;
    }
    if (n > 0) {
        count_bytes(c, 0, (size_t)n);
        am_buf_consume(src, (size_t)n);
        if (src->len == 0) {
            if (src->cap > OUT_LIMIT_MIN)
                am_buf_close(src);
            if (c->paused || c->close_after_write)
                turn_add(c); /* resume reading, or close, next turn */
            return;
        }
    }
    struct am_buf t = c->wbuf;
    c->wbuf = *src;
    *src = t;
    src->len = 0;
    uv_buf_t b = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc == 0) {
        c->writing = 1;
    } else {
        snprintf(c->why, sizeof c->why, "write failed: %s", uv_strerror(rc));
        conn_close(c);
    }
}

static void unhold(struct conn *c)
{
    *c->held_pprev = c->held_next;
    if (c->held_next)
        c->held_next->held_pprev = c->held_pprev;
    c->held_pprev = NULL;
}

/* Ends the holds that began HOLD_MS ago, whether or not the other nodes
 * have answered, and comes back for the next one to end. */
static void on_hold_timer(uv_timer_t *h)
{
    struct am_server *s = h->data;
    uint64_t now = uv_now(s->loop), next = 0;
    struct conn *c = s->held, *after;
    for (; c; c = after) {
        after = c->held_next;
        if (now - c->held_since < HOLD_MS) {
            uint64_t left = HOLD_MS - (now - c->held_since);
            if (!next || left < next)
                next = left;
            continue;
        }
        unhold(c);
        c->hold_over = 1;
        turn_add(c);
    }
    if (next)
        uv_timer_start(&s->hold_timer, on_hold_timer, next, 0);
}

/* A client connection with calls on other nodes keeps its replies until
 * those have come too, so that they leave in one write: the calls of a
 * pipelining client go to several owners, whose replies come back in
 * different loop turns, and each write (with the client's reads and the
 * writes it sends back) costs more than the replies it carries. Nothing
 * spins meanwhile: the connection leaves the turn until a reply comes
 * (on_reply adds it back) or the hold ends. A stopping node holds nothing. */
static int hold(struct conn *c)
{
    struct am_server *s = c->srv;
    if (!c->forwarding || c->peer || c->close_after_write || c->hold_over || !s->accepting ||
        c->out.len >= HOLD_MAX)
        return 0;
    if (!c->held_pprev) {
        c->held_since = uv_now(s->loop);
        c->held_next = s->held;
        if (s->held)
            s->held->held_pprev = &c->held_next;
        c->held_pprev = &s->held;
        s->held = c;
        if (!uv_is_active((uv_handle_t *)&s->hold_timer))
            uv_timer_start(&s->hold_timer, on_hold_timer, HOLD_MS, 0);
    }
    return 1;
}

/* Once per loop turn: write what each listed connection has, resume the
 * paused ones that are back under their limits, close those that are done. */
static void on_turn(uv_check_t *h)
{
    struct am_server *s = h->data;
    struct conn *list = s->turn;
    s->turn = NULL;
    while (list) {
        struct conn *c = list;
        list = c->turn_next;
        c->in_turn = 0;
        if (c->closing)
            continue;
        if (c->paused && !over_limits(c) && s->accepting) {
            c->paused = 0;
            process_input(c);
            if (!c->paused && !c->close_after_write && !c->closing)
                uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        }
        if (!c->writing && (c->out.len || c->sealed.len)) {
            if (hold(c))
                continue;
            if (c->held_pprev) /* the replies it waited for came */
                unhold(c);
            c->hold_over = 0;
            start_write(c);
        }
        if (c->close_after_write && !c->writing && !pending_out(c) && !c->closing)
            conn_close(c);
    }
    if (!s->turn) {
        uv_check_stop(&s->turn_check);
        uv_idle_stop(&s->turn_idle);
    }
    maybe_finish_close(s);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct am_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!c->dialed)
        s->st.connections--;
    c->closed = 1;
    if (c->in_turn) {
        struct conn **pp = &s->turn;
        while (*pp != c)
            pp = &(*pp)->turn_next;
        *pp = c->turn_next;
        c->in_turn = 0;
    }
    if (c->held_pprev)
        unhold(c);
    if (c->peer && !c->dialed)
        s->st.peers--;
    if (c->inflight == 0)
        conn_free(c);
    maybe_finish_close(s);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    struct am_peer *p = c->link;
    c->link = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    if (p)
        am_peer_link_down(p, c, c->why[0] ? c->why : "closed the peer stream");
}

static void on_reject_closed(uv_handle_t *h)
{
    am_free(h);
}

/* Accepts a connection only to tell it why it cannot stay, then closes it:
 * the client learns the reason instead of waiting in the backlog. */
static void reject(struct am_server *s, uv_stream_t *listener, int status, const char *msg)
{
    uv_tcp_t *t = am_malloc(sizeof *t);
    if (!t) {
        am_log_error("out of memory: cannot even refuse a connection");
        return;
    }
    uv_tcp_init(s->loop, t);
    if (uv_accept(listener, (uv_stream_t *)t) == 0) {
        struct am_buf b;
        am_buf_init(&b);
        if (am_encode_error(&b, 0, status, msg) == 0) {
            uv_buf_t ub = uv_buf_init((char *)b.data, (unsigned)b.len);
            uv_try_write((uv_stream_t *)t, &ub, 1);
        }
        am_buf_close(&b);
    }
    s->st.rejected++;
    uv_close((uv_handle_t *)t, on_reject_closed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct am_server *s = listener->data;
    if (status < 0) {
        am_log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    if (s->st.connections >= s->o.max_connections) {
        char msg[96];
        snprintf(msg, sizeof msg, "node has %u connections, the limit; retry later",
                 s->o.max_connections);
        reject(s, listener, AM_ST_OVERLOADED, msg);
        return;
    }
    struct conn *c = am_calloc(1, sizeof *c);
    if (!c) {
        reject(s, listener, AM_ST_OVERLOADED, "node is out of memory; retry later");
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->st.connections++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    s->st.accepted++;
    uv_tcp_nodelay(&c->tcp, 1);
    if (s->keyed) {
        am_secure_init(&c->sec, s->key, 0);
        if (am_secure_start(&c->sec, &c->sealed)) {
            conn_close(c);
            return;
        }
        turn_add(c);
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int am_server_start(struct am_server **out, uv_loop_t *loop, const struct sockaddr_in *addr,
                    struct am_runtime *rt, const struct am_server_opts *o,
                    const struct am_server_hooks *hooks, char *err, size_t errlen)
{
    char where[32];
    am_addr_format(addr, where, sizeof where);
    struct am_server *s = am_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->rt = rt;
    s->o = *o;
    if (s->o.max_peer_frame < s->o.max_frame)
        s->o.max_peer_frame = s->o.max_frame;
    if (o->peer_source) {
        s->peer_source = *o->peer_source;
        s->o.peer_source = &s->peer_source;
    }
    s->out_limit = 2 * o->max_frame > OUT_LIMIT_MIN ? 2 * o->max_frame : OUT_LIMIT_MIN;
    s->hooks = *hooks;
    if (o->key) {
        memcpy(s->key, o->key, AM_KEY_BYTES);
        s->keyed = 1;
    }
    s->o.key = NULL;
    uv_tcp_init(loop, &s->listener);
    uv_check_init(loop, &s->turn_check);
    uv_idle_init(loop, &s->turn_idle);
    uv_timer_init(loop, &s->drain_timer);
    uv_timer_init(loop, &s->hold_timer);
    s->listener.data = s->turn_check.data = s->turn_idle.data = s->drain_timer.data = s;
    s->hold_timer.data = s;
    s->handles_open = SERVER_HANDLES;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc) {
        snprintf(err, errlen, "cannot listen on %s: %s", where, uv_strerror(rc));
        s->closing = 1;
        s->accepting = 0;
        am_server_close(s, NULL, NULL);
        return rc;
    }
    s->accepting = 1;
    *out = s;
    return 0;
}

void am_server_stop_accepting(struct am_server *s)
{
    if (!s->accepting)
        return;
    s->accepting = 0;
    uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    /* Peer streams go on reading: replies to this node's calls come on
     * them, and their requests are refused (handle_frame). */
    for (struct conn *c = s->conns; c; c = c->next)
        if (!c->closing && !c->peer)
            uv_read_stop((uv_stream_t *)&c->tcp);
}

static void on_server_handle_closed(uv_handle_t *h)
{
    struct am_server *s = h->data;
    if (--s->handles_open > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    sodium_memzero(s->key, sizeof s->key);
    am_free(s);
    if (done)
        done(arg);
}

/* Finishes am_server_close once every connection is gone. */
static void maybe_finish_close(struct am_server *s)
{
    if (!s->closing || s->handles_closing)
        return;
    for (struct conn *c = s->conns; c; c = c->next) {
        if (!c->writing && !pending_out(c))
            conn_close(c);
    }
    if (s->conns)
        return;
    s->handles_closing = 1;
    if (!uv_is_closing((uv_handle_t *)&s->listener)) /* else stop_accepting did */
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->turn_check, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->turn_idle, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->drain_timer, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->hold_timer, on_server_handle_closed);
}

/* A client that stops reading must not hold a stopping node forever: after
 * DRAIN_MS its connection is closed with whatever it has not read. */
static void on_drain_timeout(uv_timer_t *h)
{
    struct am_server *s = h->data;
    int n = 0;
    for (struct conn *c = s->conns; c; c = c->next) {
        if (!c->closing) {
            conn_close(c);
            n++;
        }
    }
    if (n)
        am_log_warn("closed %d connections that did not read their last replies in %d ms", n,
                    DRAIN_MS);
}

void am_server_close(struct am_server *s, void (*done)(void *arg), void *arg)
{
    am_server_stop_accepting(s);
    s->closing = 1;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_start(&s->drain_timer, on_drain_timeout, DRAIN_MS, 0);
    maybe_finish_close(s);
}

void am_server_get_stats(const struct am_server *s, struct am_server_stats *st)
{
    *st = s->st;
}

/* ---- dialed peer streams (the peer set's I/O, peer.h) ---- */

static void on_dialed(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    if (c->closing)
        return; /* let go of while connecting */
    c->connecting = 0;
    if (status < 0) {
        snprintf(c->why, sizeof c->why, "cannot connect: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        snprintf(c->why, sizeof c->why, "cannot read: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    turn_add(c);
}

void *am_server_dial(void *srv, struct am_peer *p, const char *name, const struct sockaddr_in *to,
                     char *err, size_t errlen)
{
    struct am_server *s = srv;
    if (s->closing) {
        snprintf(err, errlen, "this node is stopping");
        return NULL;
    }
    struct conn *c = am_calloc(1, sizeof *c);
    if (c)
        c->peer_name = am_strndup(name, strlen(name));
    if (!c || !c->peer_name) {
        am_free(c);
        snprintf(err, errlen, "out of memory opening a stream");
        return NULL;
    }
    c->srv = s;
    c->peer = c->dialed = c->connecting = 1;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    int rc = am_encode_hello_peer(&c->out, 0, s->o.node_name);
    if (rc == 0 && s->keyed) {
        am_secure_init(&c->sec, s->key, 1);
        rc = am_secure_start(&c->sec, &c->sealed);
    }
    if (rc == 0 && s->o.peer_source)
        rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)s->o.peer_source, 0);
    if (rc == 0)
        rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)to, on_dialed);
    if (rc) {
        snprintf(err, errlen, "cannot connect: %s", uv_strerror(rc));
        conn_close(c); /* no link yet: nobody is told */
        return NULL;
    }
    c->link = p;
    return c;
}

struct am_buf *am_server_link_out(void *link)
{
    return &((struct conn *)link)->out;
}

void am_server_link_kick(void *link)
{
    turn_add(link);
}

size_t am_server_link_queued(const void *link)
{
    return pending_out(link);
}

void am_server_link_close(void *link)
{
    struct conn *c = link;
    c->link = NULL;
    conn_close(c);
}

struct am_peer_io am_server_peer_io(void *(*dial)(void *arg, struct am_peer *p, const char *name,
                                                  const struct sockaddr_in *to, char *err,
                                                  size_t errlen),
                                    void *arg)
{
    return (struct am_peer_io){
        .dial = dial,
        .out = am_server_link_out,
        .kick = am_server_link_kick,
        .queued = am_server_link_queued,
        .close = am_server_link_close,
        .arg = arg,
    };
}
