/* test_client.c - the blocking client connection (src/node/client.c) against
 * a scripted fake node (fake_node.h): framing, request ids, timeouts, broken
 * and hostile replies. */
#include "client.h"
#include "err.h"
#include "fake_node.h"
#include "mp.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

/* Generous for a loaded 2-core machine under ASan; only the timeout tests
 * wait for it to run out, and they set a short one. */
#define TIMEOUT_MS 10000

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct am_client *open_client(const struct fake_node *f, int timeout_ms)
{
    struct am_client *c = NULL;
    char err[128] = "";
    int rc = am_client_open(&c, f->addr, timeout_ms, err, sizeof err);
    cr_assert_eq(rc, 0, "open %s: %d %s", f->addr, rc, err);
    cr_assert_not_null(c);
    return c;
}

/* A str body as a C string, for comparisons. */
static void assert_str_body(const struct am_buf *b, const char *want)
{
    const uint8_t *p = b->data;
    const char *s;
    uint32_t n;
    cr_assert_eq(am_mp_read_str(&p, b->data + b->len, &s, &n), 0, "body is not a str");
    cr_assert_eq(p, b->data + b->len, "body is not exactly one str");
    cr_assert_eq(n, strlen(want), "got '%.*s', want '%s'", (int)n, s, want);
    cr_assert_eq(memcmp(s, want, n), 0, "got '%.*s', want '%s'", (int)n, s, want);
}

static void reply_str(int fd, uint64_t id, const char *s)
{
    struct am_buf b;
    msgpack_packer pk;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    am_mp_pack_str(&pk, s, strlen(s));
    fake_reply(fd, id, AM_ST_OK, b.data, b.len);
    am_buf_close(&b);
}

/* ---- scripts ----------------------------------------------------------- */

/* Answers every request with a bin holding the request's frame body, so the
 * test can decode exactly what went over the wire. */
static void mirror_script(struct fake_node *f, int fd)
{
    for (;;) {
        int rc = fake_read_request(f, fd);
        if (rc == -1)
            return;
        uint64_t id = rc == 0 ? f->req.id : 0;
        struct am_buf b;
        msgpack_packer pk;
        am_buf_init(&b);
        am_mp_packer_init(&pk, &b);
        msgpack_pack_bin(&pk, f->frame.len);
        msgpack_pack_bin_body(&pk, f->frame.data, f->frame.len);
        fake_reply(fd, id, AM_ST_OK, b.data, b.len);
        am_buf_close(&b);
    }
}

static void silent_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd))
        fake_fail(f, "no request");
    fake_wait_close(fd);
}

static void stale_first_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd)) {
        fake_fail(f, "no request");
        return;
    }
    reply_str(fd, f->req.id + 100, "stale");
    reply_str(fd, f->req.id, "fresh");
    fake_wait_close(fd);
}

/* Holds the first request's reply back until the second request arrives,
 * then answers both, the late one first. */
static void late_reply_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd)) {
        fake_fail(f, "no first request");
        return;
    }
    uint64_t first = f->req.id;
    if (fake_read_request(f, fd)) {
        fake_fail(f, "no second request");
        return;
    }
    reply_str(fd, first, "late");
    reply_str(fd, f->req.id, "fresh");
    fake_wait_close(fd);
}

static void busy_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd) == 0)
        fake_error(fd, f->req.id, AM_ST_BUSY, "mailbox full");
    fake_wait_close(fd);
}

static void id_zero_error_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd) == 0) {
        reply_str(fd, 0, "an id-0 success is no answer");
        fake_error(fd, 0, AM_ST_TOO_LARGE, "frame of 99 bytes exceeds the limit");
    }
    fake_wait_close(fd);
}

/* Refuses a request by its header alone, as a node does with a frame over
 * its limit: answers with id 0 and closes with the rest unread, which makes
 * the kernel reset the connection under the client's send. */
static void refuse_by_header_script(struct fake_node *f, int fd)
{
    uint8_t hdr[AM_FRAME_HEADER];
    if (fake_read_full(fd, hdr, sizeof hdr)) {
        fake_fail(f, "no header");
        return;
    }
    fake_error(fd, 0, AM_ST_TOO_LARGE, "frame too large");
}

static void oversized_script(struct fake_node *f, int fd)
{
    uint8_t hdr[AM_FRAME_HEADER];
    if (fake_read_request(f, fd) == 0) {
        am_be32_put(hdr, AM_CLIENT_MAX_FRAME + 1);
        fake_send(fd, hdr, sizeof hdr);
    }
    fake_wait_close(fd);
}

/* A reply whose body fills the frame limit exactly. */
static void limit_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd)) {
        fake_fail(f, "no request");
        return;
    }
    /* body: fixarray(4), 0xcc 0x80, id as uint64 (9), 0x00, bin32 header (5) */
    size_t overhead = 1 + 2 + 9 + 1 + 5;
    size_t bin = AM_CLIENT_MAX_FRAME - overhead;
    struct am_buf b;
    am_buf_init(&b);
    if (am_buf_reserve(&b, AM_FRAME_HEADER + AM_CLIENT_MAX_FRAME)) {
        fake_fail(f, "no memory");
        return;
    }
    uint8_t *p = b.data;
    am_be32_put(p, AM_CLIENT_MAX_FRAME);
    p += 4;
    *p++ = 0x94;
    *p++ = 0xcc;
    *p++ = 0x80;
    *p++ = 0xcf;
    am_be64_put(p, f->req.id);
    p += 8;
    *p++ = 0x00;
    *p++ = 0xc6;
    am_be32_put(p, (uint32_t)bin);
    p += 4;
    memset(p, 0xab, bin);
    p += bin;
    b.len = (size_t)(p - b.data);
    if (b.len != AM_FRAME_HEADER + AM_CLIENT_MAX_FRAME)
        fake_fail(f, "miscounted the frame");
    fake_send(fd, b.data, b.len);
    am_buf_close(&b);
    fake_wait_close(fd);
}

/* A well-framed reply that is not a REPLY message, then a good one. */
static void malformed_then_good_script(struct fake_node *f, int fd)
{
    static const uint8_t bad[] = {0, 0, 0, 3, 0x92, 0x01, 0x02};
    if (fake_read_request(f, fd))
        return;
    fake_send(fd, bad, sizeof bad);
    if (fake_read_request(f, fd))
        return;
    reply_str(fd, f->req.id, "good");
    fake_wait_close(fd);
}

static void close_script(struct fake_node *f, int fd)
{
    (void)fake_read_request(f, fd);
}

/* Sends the reply one byte per write, so the client sees it in pieces. */
static void dribble_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd))
        return;
    struct am_buf b;
    msgpack_packer pk;
    am_buf_init(&b);
    am_mp_packer_init(&pk, &b);
    am_mp_pack_str(&pk, "pieces", 6);
    struct am_buf frame;
    am_buf_init(&frame);
    am_encode_reply(&frame, f->req.id, AM_ST_OK, b.data, b.len);
    for (size_t i = 0; i < frame.len; i++) {
        fake_send(fd, frame.data + i, 1);
        fake_sleep_ms(2);
    }
    am_buf_close(&frame);
    am_buf_close(&b);
    fake_wait_close(fd);
}

/* ---- tests ------------------------------------------------------------- */

/* Decodes the request a mirror_script reply carries. The returned struct
 * points into reply. */
static struct am_request mirrored(const struct am_buf *reply)
{
    const uint8_t *p = reply->data, *b;
    uint32_t n;
    struct am_request r;
    cr_assert_eq(am_mp_read_bin(&p, reply->data + reply->len, &b, &n), 0);
    cr_assert_eq(am_request_decode(&r, b, n), 0, "the client sent a malformed request");
    return r;
}

Test(client, sends_one_call_frame_with_type_id_action_and_payload)
{
    static const uint8_t payload[] = {0x81, 0xa1, 'n', 0x05};
    struct fake_node f;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    fake_node_start(&f, mirror_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "counter", "user-42", "add", payload,
                                sizeof payload, &reply, &status),
                 0);
    cr_assert_eq(status, AM_ST_OK);
    struct am_request r = mirrored(&reply);
    cr_assert_eq(r.kind, AM_MSG_CALL);
    cr_assert_eq(r.id, 1);
    cr_assert_eq(r.type_len, 7);
    cr_assert_eq(memcmp(r.type, "counter", 7), 0);
    cr_assert_eq(r.actor_len, 7);
    cr_assert_eq(memcmp(r.actor, "user-42", 7), 0);
    cr_assert_eq(r.action_len, 3);
    cr_assert_eq(memcmp(r.action, "add", 3), 0);
    cr_assert_eq(r.payload_len, sizeof payload);
    cr_assert_arr_eq(r.payload, payload, sizeof payload);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
    ASSERT_NO_LEAKS();
}

Test(client, sends_nil_when_there_is_no_payload_and_numbers_requests_from_one)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, mirror_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    for (uint64_t id = 1; id <= 3; id++) {
        cr_assert_eq(am_client_call(c, AM_MSG_CAST, "echo", "e", "echo", NULL, 0, &reply, &status),
                     0);
        struct am_request r = mirrored(&reply);
        cr_assert_eq(r.kind, AM_MSG_CAST);
        cr_assert_eq(r.id, id);
        cr_assert_eq(r.payload_len, 1);
        cr_assert_eq(r.payload[0], 0xc0);
    }
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, sends_status_requests)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, mirror_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_status(c, &reply, &status), 0);
    struct am_request r = mirrored(&reply);
    cr_assert_eq(r.kind, AM_MSG_STATUS);
    cr_assert_eq(r.id, 1);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, sends_a_one_mebibyte_payload)
{
    size_t n = 1u << 20;
    struct am_buf payload, reply;
    msgpack_packer pk;
    am_buf_init(&payload);
    am_buf_init(&reply);
    am_mp_packer_init(&pk, &payload);
    char *s = malloc(n);
    cr_assert_not_null(s);
    memset(s, 'x', n);
    cr_assert_eq(am_mp_pack_str(&pk, s, n), 0);
    free(s);
    struct fake_node f;
    int status;
    fake_node_start(&f, mirror_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "echo", "e", "echo", payload.data, payload.len,
                                &reply, &status),
                 0);
    struct am_request r = mirrored(&reply);
    cr_assert_eq(r.payload_len, payload.len);
    cr_assert_eq(memcmp(r.payload, payload.data, payload.len), 0);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&payload);
    am_buf_close(&reply);
    ASSERT_NO_LEAKS();
}

Test(client, times_out_when_no_reply_arrives)
{
    struct fake_node f;
    int status = -1;
    fake_node_start(&f, silent_script, NULL);
    struct am_client *c = open_client(&f, 200);
    int64_t t0 = mono_ms();
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "counter", "c", "get", NULL, 0, NULL, &status),
                 AM_ETIMEOUT);
    int64_t took = mono_ms() - t0;
    cr_assert_geq(took, 190, "gave up after %lld ms", (long long)took);
    cr_assert_lt(took, 5000, "took %lld ms", (long long)took);
    cr_assert_eq(status, -1, "status is untouched without a reply");
    am_client_close(c);
    fake_node_join(&f);
    ASSERT_NO_LEAKS();
}

Test(client, matches_reply_by_request_id)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, stale_first_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status), 0);
    assert_str_body(&reply, "fresh");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, drops_the_late_reply_of_a_timed_out_request)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, late_reply_script, NULL);
    struct am_client *c = open_client(&f, 150);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status),
                 AM_ETIMEOUT);
    am_client_set_timeout(c, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status), 0);
    assert_str_body(&reply, "fresh");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, returns_the_error_status_and_message)
{
    struct fake_node f;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    fake_node_start(&f, busy_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "put", NULL, 0, &reply, &status), 0);
    cr_assert_eq(status, AM_ST_BUSY);
    assert_str_body(&reply, "mailbox full");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, takes_an_id_zero_error_as_the_answer_to_the_request_in_flight)
{
    struct fake_node f;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    fake_node_start(&f, id_zero_error_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "put", NULL, 0, &reply, &status), 0);
    cr_assert_eq(status, AM_ST_TOO_LARGE);
    assert_str_body(&reply, "frame of 99 bytes exceeds the limit");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, reads_the_nodes_answer_when_it_resets_the_connection_mid_send)
{
    size_t n = 16u << 20; /* far more than the socket buffers hold */
    uint8_t *payload = malloc(n + 5);
    cr_assert_not_null(payload);
    payload[0] = 0xc6;
    am_be32_put(payload + 1, (uint32_t)n);
    memset(payload + 5, 'z', n);
    struct fake_node f;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    fake_node_start(&f, refuse_by_header_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(
        am_client_call(c, AM_MSG_CALL, "echo", "e", "echo", payload, n + 5, &reply, &status), 0);
    cr_assert_eq(status, AM_ST_TOO_LARGE);
    assert_str_body(&reply, "frame too large");
    int rc = am_client_call(c, AM_MSG_CALL, "echo", "e", "echo", NULL, 0, NULL, &status);
    cr_assert(rc == -ECONNRESET || rc == -EPIPE, "the connection stays broken: %d", rc);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
    free(payload);
}

Test(client, refuses_reply_frames_over_64_mib_and_stays_broken)
{
    struct fake_node f;
    int status;
    fake_node_start(&f, oversized_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, NULL, &status),
                 AM_EPROTO);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, NULL, &status),
                 AM_EPROTO);
    cr_assert_eq(am_client_status(c, NULL, &status), AM_EPROTO);
    am_client_close(c);
    fake_node_join(&f);
    ASSERT_NO_LEAKS();
}

Test(client, accepts_a_reply_of_exactly_64_mib)
{
    struct fake_node f;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    fake_node_start(&f, limit_script, NULL);
    struct am_client *c = open_client(&f, 60000);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status), 0);
    cr_assert_eq(status, AM_ST_OK);
    cr_assert_eq(reply.len, 5 + AM_CLIENT_MAX_FRAME - 18);
    cr_assert_eq(reply.data[0], 0xc6);
    cr_assert_eq(reply.data[reply.len - 1], 0xab);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, drops_a_malformed_reply_and_keeps_the_connection)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, malformed_then_good_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status),
                 AM_EPROTO);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status), 0);
    assert_str_body(&reply, "good");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, reports_a_connection_the_node_closed)
{
    struct fake_node f;
    int status;
    fake_node_start(&f, close_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, NULL, &status),
                 -ECONNRESET);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, NULL, &status),
                 -ECONNRESET, "a broken client keeps failing the same way");
    am_client_close(c);
    fake_node_join(&f);
    ASSERT_NO_LEAKS();
}

Test(client, reassembles_a_reply_that_arrives_in_pieces)
{
    struct fake_node f;
    struct am_buf reply;
    int status;
    am_buf_init(&reply);
    fake_node_start(&f, dribble_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_CALL, "kv", "k", "get", NULL, 0, &reply, &status), 0);
    assert_str_body(&reply, "pieces");
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&reply);
}

Test(client, sends_raw_bytes_and_receives_any_reply)
{
    struct fake_node f;
    struct am_buf hello;
    struct am_reply r;
    am_buf_init(&hello);
    cr_assert_eq(am_encode_hello(&hello, 77, "client"), 0);
    fake_node_start(&f, mirror_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_send_raw(c, hello.data, hello.len), 0);
    cr_assert_eq(am_client_recv_reply(c, &r), 0);
    cr_assert_eq(r.id, 77);
    cr_assert_eq(r.status, AM_ST_OK);
    const uint8_t *p = r.body, *b;
    uint32_t n;
    struct am_request req;
    cr_assert_eq(am_mp_read_bin(&p, r.body + r.body_len, &b, &n), 0);
    cr_assert_eq(am_request_decode(&req, b, n), 0);
    cr_assert_eq(req.kind, AM_MSG_HELLO);
    cr_assert_eq(req.version, AM_PROTO_VERSION);
    cr_assert_eq(req.role_len, 6);
    /* A malformed frame goes out as is; the mirror answers it with id 0. */
    static const uint8_t junk[] = {0, 0, 0, 1, 0xc1};
    cr_assert_eq(am_client_send_raw(c, junk, sizeof junk), 0);
    cr_assert_eq(am_client_recv_reply(c, &r), 0);
    cr_assert_eq(r.id, 0);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&hello);
}

Test(client, times_out_waiting_for_a_raw_reply)
{
    struct fake_node f;
    struct am_buf st;
    struct am_reply r;
    am_buf_init(&st);
    cr_assert_eq(am_encode_status(&st, 5), 0);
    fake_node_start(&f, silent_script, NULL);
    struct am_client *c = open_client(&f, 100);
    cr_assert_eq(am_client_send_raw(c, st.data, st.len), 0);
    cr_assert_eq(am_client_recv_reply(c, &r), AM_ETIMEOUT);
    am_client_close(c);
    fake_node_join(&f);
    am_buf_close(&st);
}

Test(client, refuses_a_kind_that_is_not_call_or_cast)
{
    struct fake_node f;
    int status;
    fake_node_start(&f, close_script, NULL);
    struct am_client *c = open_client(&f, TIMEOUT_MS);
    cr_assert_eq(am_client_call(c, AM_MSG_STATUS, "kv", "k", "get", NULL, 0, NULL, &status),
                 -EINVAL);
    am_client_close(c);
    fake_node_join(&f);
}

Test(client, reports_a_refused_connection)
{
    char addr[32], err[128] = "";
    struct am_client *c = (struct am_client *)&c;
    fake_dead_address(addr, sizeof addr);
    cr_assert_eq(am_client_open(&c, addr, TIMEOUT_MS, err, sizeof err), -ECONNREFUSED);
    cr_assert_null(c);
    cr_assert_str_eq(err, strerror(ECONNREFUSED));
    ASSERT_NO_LEAKS();
}

Test(client, refuses_an_invalid_address)
{
    char err[128] = "";
    struct am_client *c;
    cr_assert_eq(am_client_open(&c, "nowhere:99999", TIMEOUT_MS, err, sizeof err), -EINVAL);
    cr_assert_null(c);
    cr_assert_str_eq(err, "invalid address 'nowhere:99999' (expected HOST:PORT)");
    cr_assert_eq(am_client_open(&c, "localhost:notaport", TIMEOUT_MS, NULL, 0), -EINVAL);
}

Test(client, connects_to_localhost_with_tcp_nodelay)
{
    struct fake_node f;
    char addr[32];
    struct am_client *c;
    fake_node_start(&f, close_script, NULL);
    snprintf(addr, sizeof addr, "localhost:%d", f.port);
    cr_assert_eq(am_client_open(&c, addr, TIMEOUT_MS, NULL, 0), 0);
    int one = 0;
    socklen_t sl = sizeof one;
    cr_assert_eq(getsockopt(am_client_fd(c), IPPROTO_TCP, TCP_NODELAY, &one, &sl), 0);
    cr_assert(one, "TCP_NODELAY is set");
    am_client_close(c);
    am_client_close(NULL);
    fake_node_join(&f);
}
