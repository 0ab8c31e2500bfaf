/* rconn.c - see rconn.h. */
#include "rconn.h"

#include "err.h"
#include "mp.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void rconn_open(struct rconn *c, const char *addr, const char *src_ip)
{
    memset(c, 0, sizeof *c);
    am_buf_init(&c->in);
    c->fd = proc_tcp_connect(addr, src_ip);
    cr_assert(c->fd >= 0, "connect %s%s%s: %s", addr, src_ip ? " from " : "", src_ip ? src_ip : "",
              strerror(-c->fd));
}

void rconn_close(struct rconn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    am_buf_close(&c->in);
}

int rconn_send(struct rconn *c, struct am_buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        struct pollfd p = {.fd = c->fd, .events = POLLOUT};
        if (poll(&p, 1, RCONN_IO_MS) <= 0)
            return -ETIMEDOUT;
        ssize_t n = send(c->fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR && errno != EAGAIN)
            return -errno;
        if (n > 0)
            off += (size_t)n;
    }
    b->len = 0;
    return 0;
}

int rconn_reply(struct rconn *c, struct am_reply *r, int timeout_ms)
{
    am_buf_consume(&c->in, c->used);
    c->used = 0;
    int64_t deadline = proc_now_ms() + timeout_ms;
    for (;;) {
        const uint8_t *body;
        size_t blen;
        long n = am_frame_next(c->in.data, c->in.len, 64u << 20, &body, &blen);
        if (n < 0)
            return AM_EPROTO;
        if (n > 0) {
            c->used = (size_t)n;
            return am_reply_decode(r, body, blen);
        }
        int left = (int)(deadline - proc_now_ms());
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        if (am_buf_reserve(&c->in, 65536))
            return -ENOMEM;
        ssize_t got = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (got == 0 || (got < 0 && errno == ECONNRESET))
            return -EPIPE;
        if (got > 0)
            c->in.len += (size_t)got;
    }
}

int rconn_closed_by_node(struct rconn *c, int timeout_ms)
{
    struct am_reply r;
    int64_t deadline = proc_now_ms() + timeout_ms;
    while (proc_now_ms() < deadline) {
        int rc = rconn_reply(c, &r, (int)(deadline - proc_now_ms()));
        if (rc == -EPIPE)
            return 1;
        if (rc == -ETIMEDOUT)
            return 0;
    }
    return 0;
}

void rconn_hello(struct rconn *c, const char *peer_name, int want_status)
{
    struct am_buf b;
    struct am_reply r;
    am_buf_init(&b);
    if (peer_name)
        cr_assert_eq(am_encode_hello_peer(&b, 1, peer_name), 0);
    else
        cr_assert_eq(am_encode_hello(&b, 1, "client"), 0);
    cr_assert_eq(rconn_send(c, &b), 0);
    cr_assert_eq(rconn_reply(c, &r, RCONN_IO_MS), 0);
    cr_assert_eq(r.id, 1);
    cr_assert_eq(r.status, want_status, "HELLO answered %s", am_status_name(r.status));
    am_buf_close(&b);
}

void rconn_open_all(struct rconn *conns, const struct proc_node *nodes, const int *which, int nn)
{
    for (int i = 0; i < nn; i++) {
        rconn_open(&conns[i], nodes[which[i]].addr, NULL);
        rconn_hello(&conns[i], NULL, AM_ST_OK);
    }
}

void rconn_close_all(struct rconn *conns, int nn)
{
    for (int i = 0; i < nn; i++)
        rconn_close(&conns[i]);
}

void rconn_encode_counter(struct am_buf *b, uint64_t id, const char *actor, const char *action,
                          int64_t n)
{
    struct am_buf pb;
    msgpack_packer pk;
    am_buf_init(&pb);
    am_mp_packer_init(&pk, &pb);
    cr_assert_eq(msgpack_pack_int64(&pk, n), 0);
    cr_assert_eq(am_encode_call(b, AM_MSG_CALL, id, "counter", 7, actor, strlen(actor), action,
                                strlen(action), pb.data, pb.len),
                 0);
    am_buf_close(&pb);
}

int64_t rconn_reply_int(const struct am_reply *r)
{
    int64_t v = -1;
    const uint8_t *p = r->body;
    cr_assert_eq(am_mp_read_int(&p, r->body + r->body_len, &v), 0, "reply is not an integer");
    return v;
}
