/* client.c - blocking client connection to a node (see client.h).
 *
 * The socket is non-blocking from the start and every wait is a poll() bounded
 * by the deadline of the current operation, so connect, send and receive all
 * honour the same timeout and no call can hang on a silent node.
 *
 * Receiving: bytes accumulate in `in`; am_frame_next finds whole frames. The
 * frame handed out last stays at the front of `in` (its size in `consumed`)
 * so that a struct am_reply can point into it, and is dropped when the next
 * operation starts.
 *
 * Invariant: unless `broken` is set, the bytes sent so far are whole frames
 * and `in` starts at a frame boundary, so the stream is in sync both ways. A
 * send cut short by the deadline, a frame over the limit or a socket error
 * breaks that, and then every later operation fails with `broken`. */
#include "client.h"

#include "addr.h"
#include "err.h"
#include "mem.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Receive in steps of at least 64 KiB: one recv() takes a typical reply
 * whole, and am_buf's doubling keeps a large reply at O(n) copies. */
#define RECV_STEP (64u << 10)

struct am_client {
    int fd;
    int timeout_ms;
    int broken;       /* 0, or the code every operation now returns */
    uint64_t next_id; /* id of the next request */
    size_t consumed;  /* bytes at the front of in that belong to the last frame */
    struct am_buf in;
    struct am_buf out;
    /* With a cluster key (am_client_set_key): raw holds bytes received and
     * not yet opened, sealed what is about to be sent. */
    int keyed;
    int authentic; /* a sealed record from the node was opened */
    struct am_secure sec;
    struct am_buf raw, sealed;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -1: no deadline. */
static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms > 0 ? now_ms() + timeout_ms : -1;
}

/* Waits until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                return AM_ETIMEOUT;
            ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, ms);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
        /* n == 0 or EINTR: the loop re-checks the deadline. */
    }
}

/* Connects the non-blocking socket fd within the deadline. */
static int connect_within(int fd, const struct sockaddr_in *sa, int64_t deadline)
{
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    int rc = wait_fd(fd, POLLOUT, deadline);
    if (rc)
        return rc == AM_ETIMEOUT ? -ETIMEDOUT : rc;
    int so_err = 0;
    socklen_t sl = sizeof so_err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_err, &sl))
        return -errno;
    return -so_err;
}

int am_client_open(struct am_client **c, const char *hostport, int timeout_ms, char *err,
                   size_t errlen)
{
    struct sockaddr_in sa;
    *c = NULL;
    if (!hostport || am_addr_parse(hostport, AM_CLIENT_DEFAULT_PORT, &sa)) {
        if (errlen)
            snprintf(err, errlen, "invalid address '%s' (expected HOST:PORT)",
                     hostport ? hostport : "");
        return -EINVAL;
    }
    int64_t deadline = deadline_of(timeout_ms);
    int rc = 0;
    struct am_client *cl = am_calloc(1, sizeof *cl);
    if (!cl) {
        rc = -ENOMEM;
        goto out;
    }
    cl->timeout_ms = timeout_ms;
    cl->next_id = 1;
    am_buf_init(&cl->in);
    am_buf_init(&cl->out);
    cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cl->fd < 0) {
        rc = -errno;
        goto out;
    }
    /* One small request, then a wait for its answer: Nagle would hold a
     * request's last segment until the node's delayed ACK (up to 40 ms). */
    int one = 1;
    if (setsockopt(cl->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
        rc = -errno;
    else
        rc = connect_within(cl->fd, &sa, deadline);
out:
    if (rc) {
        if (errlen)
            snprintf(err, errlen, "%s", strerror(-rc));
        if (cl && cl->fd >= 0)
            close(cl->fd);
        am_free(cl);
        return rc;
    }
    *c = cl;
    return 0;
}

void am_client_close(struct am_client *c)
{
    if (!c)
        return;
    close(c->fd);
    am_buf_close(&c->in);
    am_buf_close(&c->out);
    am_buf_close(&c->raw);
    am_buf_close(&c->sealed);
    if (c->keyed)
        am_secure_free(&c->sec);
    am_free(c);
}

void am_client_set_timeout(struct am_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

int am_client_fd(const struct am_client *c)
{
    return c->fd;
}

/* Marks the connection unusable for every code but a clean timeout. */
static int broke(struct am_client *c, int rc, int keeps_sync)
{
    if (!(rc == AM_ETIMEOUT && keeps_sync))
        c->broken = rc == AM_ETIMEOUT ? -EPIPE : rc;
    return rc;
}

static int send_all(struct am_client *c, const uint8_t *p, size_t n, int64_t deadline)
{
    size_t sent = 0;
    while (sent < n) {
        /* MSG_NOSIGNAL: a node that went away must be an error code, not a
         * SIGPIPE that kills the tool. */
        ssize_t k = send(c->fd, p + sent, n - sent, MSG_NOSIGNAL);
        if (k > 0) {
            sent += (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        int rc = k < 0 && errno != EAGAIN && errno != EWOULDBLOCK ? -errno : 0;
        if (!rc)
            rc = wait_fd(c->fd, POLLOUT, deadline);
        if (rc)
            /* Half a frame on the wire desynchronises the node's reader. */
            return broke(c, rc, sent == 0);
    }
    return 0;
}

/* Opens the bytes in c->raw into c->in; once the handshake completes,
 * sends what was sealed while it was pending. */
static int open_raw(struct am_client *c, int64_t deadline)
{
    size_t had = c->in.len;
    c->sealed.len = 0;
    int rc = am_secure_read(&c->sec, c->raw.data, c->raw.len, &c->in, &c->sealed);
    c->raw.len = 0;
    c->authentic |= c->in.len > had;
    if (rc == 1)
        return send_all(c, c->sealed.data, c->sealed.len, deadline);
    return rc == AM_EPROTO ? broke(c, -EACCES, 0) : rc < 0 ? broke(c, rc, 0) : 0;
}

/* Reads more bytes into c->in. */
static int fill(struct am_client *c, int64_t deadline)
{
    struct am_buf *b = c->keyed ? &c->raw : &c->in;
    if (am_buf_reserve(b, RECV_STEP))
        return -ENOMEM;
    for (;;) {
        ssize_t k = recv(c->fd, b->data + b->len, b->cap - b->len, 0);
        if (k > 0) {
            b->len += (size_t)k;
            return c->keyed ? open_raw(c, deadline) : 0;
        }
        /* A node that closes a keyed connection before anything authentic
         * came from it could not open what we sealed: another key. */
        int keyless = c->keyed && !c->authentic;
        if (k == 0)
            return broke(c, keyless ? -EACCES : -ECONNRESET, 0);
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return broke(c, keyless && errno == ECONNRESET ? -EACCES : -errno, 0);
        int rc = wait_fd(c->fd, POLLIN, deadline);
        if (rc)
            /* A partial frame stays buffered: the stream is still in sync. */
            return broke(c, rc, 1);
    }
}

/* The next whole reply frame, decoded; it stays in c->in until the next
 * operation. */
static int next_reply(struct am_client *c, int64_t deadline, struct am_reply *r)
{
    am_buf_consume(&c->in, c->consumed);
    c->consumed = 0;
    for (;;) {
        const uint8_t *body;
        size_t body_len;
        long n = am_frame_next(c->in.data, c->in.len, AM_CLIENT_MAX_FRAME, &body, &body_len);
        if (n < 0 && !c->keyed && memcmp(c->in.data, "AMS1", 4) == 0)
            return broke(c, -ENOKEY, 0); /* a keyed node's handshake */
        if (n < 0)
            return broke(c, AM_EPROTO, 0); /* cannot skip what we will not buffer */
        if (n > 0) {
            c->consumed = (size_t)n;
            return am_reply_decode(r, body, body_len) ? AM_EPROTO : 0;
        }
        int rc = fill(c, deadline);
        if (rc)
            return rc;
    }
}

/* Waits for the reply to request id. */
static int await_reply(struct am_client *c, uint64_t id, int64_t deadline, struct am_buf *reply,
                       int *status)
{
    for (;;) {
        struct am_reply r;
        int rc = next_reply(c, deadline, &r);
        if (rc)
            return rc;
        /* Another id is the late answer to a request that timed out. Id 0
         * is no request's (ids start at 1): the node uses it for an error
         * about a frame whose id it could not read, which can only be the
         * one request in flight. */
        if (r.id != id && !(r.id == 0 && r.status != AM_ST_OK))
            continue;
        if (reply && am_buf_set(reply, r.body, r.body_len))
            return -ENOMEM;
        if (status)
            *status = r.status;
        return 0;
    }
}

/* Sends c->out and waits for the reply to request id. */
static int transact(struct am_client *c, uint64_t id, struct am_buf *reply, int *status)
{
    int64_t deadline = deadline_of(c->timeout_ms);
    const struct am_buf *wire = &c->out;
    if (c->keyed) {
        /* Before the handshake completes this only queues the frame; it is
         * sent when the node's half of the handshake arrives (open_raw). */
        c->sealed.len = 0;
        int rc = am_secure_out(&c->sec, c->out.data, c->out.len, &c->sealed);
        if (rc)
            return broke(c, rc, 0);
        wire = &c->sealed;
    }
    int rc = send_all(c, wire->data, wire->len, deadline);
    if (rc == 0)
        return await_reply(c, id, deadline, reply, status);
    /* A node that refuses a request before reading all of it (a frame over
     * its limit) answers, then closes, and our send fails. Its answer says
     * more than "connection reset": read what arrived before the close. */
    if (rc != AM_ETIMEOUT && await_reply(c, id, deadline, reply, status) == 0)
        return 0;
    return rc;
}

int am_client_call(struct am_client *c, int kind, const char *type, const char *id,
                   const char *action, const uint8_t *payload, size_t payload_len,
                   struct am_buf *reply, int *status)
{
    static const uint8_t nil = 0xc0;
    if ((kind != AM_MSG_CALL && kind != AM_MSG_CAST) || !type || !id || !action)
        return -EINVAL;
    if (c->broken)
        return c->broken;
    if (!payload || !payload_len) {
        payload = &nil;
        payload_len = 1;
    }
    uint64_t rid = c->next_id++;
    c->out.len = 0;
    int rc = am_encode_call(&c->out, kind, rid, type, strlen(type), id, strlen(id), action,
                            strlen(action), payload, payload_len);
    if (rc)
        return rc;
    return transact(c, rid, reply, status);
}

int am_client_set_key(struct am_client *c, const uint8_t key[AM_KEY_BYTES])
{
    if (c->keyed || c->next_id != 1)
        return -EINVAL;
    am_secure_init(&c->sec, key, 1);
    c->keyed = 1;
    c->sealed.len = 0;
    int rc = am_secure_start(&c->sec, &c->sealed);
    if (rc == 0)
        rc = send_all(c, c->sealed.data, c->sealed.len, deadline_of(c->timeout_ms));
    return rc;
}

int am_client_status(struct am_client *c, struct am_buf *reply, int *status)
{
    return am_client_simple(c, AM_MSG_STATUS, reply, status);
}

int am_client_simple(struct am_client *c, int kind, struct am_buf *reply, int *status)
{
    if (kind != AM_MSG_STATUS && kind != AM_MSG_MEMBERS && kind != AM_MSG_LEAVE &&
        kind != AM_MSG_RING && kind != AM_MSG_ACTORS)
        return -EINVAL;
    if (c->broken)
        return c->broken;
    uint64_t rid = c->next_id++;
    c->out.len = 0;
    int rc = am_encode_simple(&c->out, kind, rid);
    if (rc)
        return rc;
    return transact(c, rid, reply, status);
}

int am_client_send_raw(struct am_client *c, const void *p, size_t n)
{
    if (c->broken)
        return c->broken;
    return send_all(c, p, n, deadline_of(c->timeout_ms));
}

int am_client_recv_reply(struct am_client *c, struct am_reply *r)
{
    if (c->broken)
        return c->broken;
    return next_reply(c, deadline_of(c->timeout_ms), r);
}
