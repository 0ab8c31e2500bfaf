/* fake_node.h - a scripted stand-in for a node, for the client tests.
 *
 * Listens on 127.0.0.1 at a kernel-chosen port, accepts one connection in a
 * thread and runs a script on it: the script reads requests with
 * fake_read_request and answers with fake_send / fake_reply, in any order
 * and with any bytes it likes. Scripts do not call cr_assert (Criterion's
 * asserts belong to the test's main thread): they record a failure in
 * f->failed, which the test checks after fake_node_join.
 *
 * Header-only (static functions) so that each test file that includes it is
 * still one translation unit, as the CMake glob expects. */
#ifndef AM_TEST_FAKE_NODE_H
#define AM_TEST_FAKE_NODE_H

#include "buf.h"
#include "proto.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct fake_node;
typedef void (*fake_script)(struct fake_node *f, int fd);

struct fake_node {
    int lfd;
    int port;
    char addr[32]; /* "127.0.0.1:PORT" */
    pthread_t thread;
    fake_script script;
    void *arg;             /* for the script */
    int failed;            /* set by a script that saw something unexpected */
    char why[256];         /* what it saw */
    struct am_buf frame;   /* the last request frame read */
    struct am_request req; /* decoded from frame */
};

static inline void fake_fail(struct fake_node *f, const char *why)
{
    if (!f->failed)
        snprintf(f->why, sizeof f->why, "%s", why);
    f->failed = 1;
}

static inline void fake_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Reads exactly n bytes; 0, or -1 at EOF or error. */
static inline int fake_read_full(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, (char *)p + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

static inline int fake_send(int fd, const void *p, size_t n)
{
    size_t sent = 0;
    while (sent < n) {
        ssize_t k = send(fd, (const char *)p + sent, n - sent, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        sent += (size_t)k;
    }
    return 0;
}

/* Reads one request frame into f->frame and decodes it into f->req.
 * Returns 0, -1 at EOF, -2 for a frame that does not decode. */
static inline int fake_read_request(struct fake_node *f, int fd)
{
    uint8_t hdr[AM_FRAME_HEADER];
    if (fake_read_full(fd, hdr, sizeof hdr))
        return -1;
    uint32_t n = am_be32_get(hdr);
    f->frame.len = 0;
    if (am_buf_reserve(&f->frame, n) || fake_read_full(fd, f->frame.data, n))
        return -1;
    f->frame.len = n;
    return am_request_decode(&f->req, f->frame.data, n) ? -2 : 0;
}

/* Sends one reply frame. */
static inline int fake_reply(int fd, uint64_t id, int status, const void *body, size_t len)
{
    struct am_buf b;
    am_buf_init(&b);
    int rc = am_encode_reply(&b, id, status, body, len);
    if (!rc)
        rc = fake_send(fd, b.data, b.len);
    am_buf_close(&b);
    return rc;
}

static inline int fake_error(int fd, uint64_t id, int status, const char *msg)
{
    struct am_buf b;
    am_buf_init(&b);
    int rc = am_encode_error(&b, id, status, msg);
    if (!rc)
        rc = fake_send(fd, b.data, b.len);
    am_buf_close(&b);
    return rc;
}

/* Waits until the client closes the connection (so a script that does not
 * answer keeps the socket open for as long as the client waits). */
static inline void fake_wait_close(int fd)
{
    char c[4096];
    while (read(fd, c, sizeof c) > 0)
        ;
}

static inline void *fake_thread(void *arg)
{
    struct fake_node *f = arg;
    int fd;
    do
        fd = accept(f->lfd, NULL, NULL);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        fake_fail(f, "accept failed");
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    f->script(f, fd);
    close(fd);
    return NULL;
}

/* Binds 127.0.0.1:0 and starts the accepting thread. */
static inline void fake_node_start(struct fake_node *f, fake_script script, void *arg)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    memset(f, 0, sizeof *f);
    am_buf_init(&f->frame);
    f->script = script;
    f->arg = arg;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(f->lfd, 0);
    cr_assert_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(f->lfd, 4), 0);
    cr_assert_eq(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
    f->port = ntohs(sa.sin_port);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
    cr_assert_eq(pthread_create(&f->thread, NULL, fake_thread, f), 0);
}

/* Joins the thread (the client must have closed its end, or the script must
 * end by itself) and checks what the script recorded. */
static inline void fake_node_join(struct fake_node *f)
{
    pthread_join(f->thread, NULL);
    close(f->lfd);
    am_buf_close(&f->frame);
    cr_assert_not(f->failed, "fake node: %s", f->why);
}

/* An address where nothing listens: a port bound and released again. */
static inline void fake_dead_address(char *out, size_t len)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(out, len, "127.0.0.1:%d", ntohs(sa.sin_port));
}

#endif
