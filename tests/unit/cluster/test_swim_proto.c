/* test_swim_proto.c - the SWIM packet and push-pull formats: round trips,
 * the packet size bound, and refusal of every kind of malformed input. */
#include "err.h"
#include "swim_proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define LEAK_CHECK() ((void)0)
#endif

static struct am_swim_str S(const char *p) {
    struct am_swim_str s = {p, (uint32_t)strlen(p)};
    return s;
}

static int
S_eq(struct am_swim_str s, const char *p)
{
    return s.len == strlen(p) && memcmp(s.p, p, s.len) == 0;
}

/* One packet from "node-a" with one message of every type. */
static void build_all(struct am_buf *b)
{
    struct am_swim_packet_writer w;
    struct am_swim_msg m[8];
    memset(m, 0, sizeof m);
    m[0].type = AM_SWIM_MSG_PING;
    m[0].seq = 7;
    m[0].name = S("node-b");
    m[1].type = AM_SWIM_MSG_PING;
    m[1].seq = 8;
    m[1].name = S("node-c");
    m[1].has_suspicion = 1;
    m[1].incarnation = 42;
    m[2].type = AM_SWIM_MSG_ACK;
    m[2].seq = UINT64_MAX;
    m[3].type = AM_SWIM_MSG_NACK;
    m[3].seq = 0;
    m[4].type = AM_SWIM_MSG_PING_REQ;
    m[4].seq = 9;
    m[4].name = S("node-d");
    m[4].addr = S("10.0.0.4:7946");
    m[5].type = AM_SWIM_MSG_ALIVE;
    m[5].name = S("node-e");
    m[5].addr = S("10.0.0.5:7946");
    m[5].incarnation = 3;
    m[6].type = AM_SWIM_MSG_SUSPECT;
    m[6].name = S("node-f");
    m[6].addr = S("10.0.0.6:7946");
    m[6].incarnation = 4;
    m[6].from = S("node-a");
    m[7].type = AM_SWIM_MSG_DEAD;
    m[7].name = S("node-g");
    m[7].addr = S("10.0.0.7:7946");
    m[7].incarnation = 5;
    m[7].from = S("node-b");
    cr_assert_eq(am_swim_packet_begin(&w, b, "node-a", 6, 1400), 0);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(am_swim_packet_add(&w, &m[i]), 0);
    struct am_swim_msg left;
    memset(&left, 0, sizeof left);
    left.type = AM_SWIM_MSG_LEFT;
    left.name = S("node-h");
    left.addr = S("10.0.0.8:7946");
    left.incarnation = 6;
    cr_assert_eq(am_swim_packet_add(&w, &left), 0);
    am_swim_packet_end(&w);
}

static void build_pp(struct am_buf *b, unsigned flags)
{
    struct am_swim_pp_member m;
    cr_assert_eq(am_swim_pp_encode_hdr(b, flags, "node-a", 6, 3), 0);
    m.name = S("node-a");
    m.addr = S("127.0.0.1:7946");
    m.state = AM_MEMBER_ALIVE;
    m.incarnation = 1;
    cr_assert_eq(am_swim_pp_encode_member(b, &m), 0);
    m.name = S("node-b");
    m.addr = S("127.0.0.2:7946");
    m.state = AM_MEMBER_SUSPECT;
    m.incarnation = 2;
    cr_assert_eq(am_swim_pp_encode_member(b, &m), 0);
    m.name = S("node-c");
    m.addr = S("127.0.0.3:7946");
    m.state = AM_MEMBER_LEFT;
    m.incarnation = UINT64_MAX;
    cr_assert_eq(am_swim_pp_encode_member(b, &m), 0);
}

Test(swim_proto, every_message_type_round_trips)
{
    struct am_buf b;
    am_buf_init(&b);
    build_all(&b);
    cr_assert_eq(b.data[0], AM_SWIM_PROTO_VERSION);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), 0);

    const uint8_t *pos = b.data, *end = b.data + b.len;
    struct am_swim_packet_hdr h;
    struct am_swim_msg m;
    cr_assert_eq(am_swim_packet_decode_hdr(&h, &pos, end), 0);
    cr_assert(S_eq(h.sender, "node-a"));
    cr_assert_eq(h.count, 9);

    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_PING && m.seq == 7 && S_eq(m.name, "node-b") &&
              !m.has_suspicion);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_PING && m.seq == 8 && S_eq(m.name, "node-c") &&
              m.has_suspicion && m.incarnation == 42);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_ACK && m.seq == UINT64_MAX);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_NACK && m.seq == 0);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_PING_REQ && m.seq == 9 && S_eq(m.name, "node-d") &&
              S_eq(m.addr, "10.0.0.4:7946"));
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_ALIVE && S_eq(m.name, "node-e") &&
              S_eq(m.addr, "10.0.0.5:7946") && m.incarnation == 3);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_SUSPECT && S_eq(m.name, "node-f") && m.incarnation == 4 &&
              S_eq(m.from, "node-a"));
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_DEAD && S_eq(m.name, "node-g") && m.incarnation == 5 &&
              S_eq(m.from, "node-b"));
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_LEFT && S_eq(m.name, "node-h") &&
              S_eq(m.addr, "10.0.0.8:7946") && m.incarnation == 6);
    cr_assert_eq(pos, end);
    am_buf_close(&b);
    LEAK_CHECK();
}

Test(swim_proto, push_pull_round_trips_with_its_flags)
{
    struct am_buf b;
    am_buf_init(&b);
    build_pp(&b, AM_SWIM_PP_JOIN);
    cr_assert_eq(b.data[0], AM_SWIM_PROTO_VERSION);
    cr_assert_eq(am_swim_pp_check(b.data, b.len), 0);
    const uint8_t *pos = b.data, *end = b.data + b.len;
    struct am_swim_pp_hdr h;
    struct am_swim_pp_member m;
    cr_assert_eq(am_swim_pp_decode_hdr(&h, &pos, end), 0);
    cr_assert_eq(h.flags, AM_SWIM_PP_JOIN);
    cr_assert(S_eq(h.sender, "node-a"));
    cr_assert_eq(h.count, 3);
    cr_assert_eq(am_swim_pp_decode_member(&m, &pos, end), 0);
    cr_assert(S_eq(m.name, "node-a") && S_eq(m.addr, "127.0.0.1:7946") &&
              m.state == AM_MEMBER_ALIVE && m.incarnation == 1);
    cr_assert_eq(am_swim_pp_decode_member(&m, &pos, end), 0);
    cr_assert(S_eq(m.name, "node-b") && m.state == AM_MEMBER_SUSPECT && m.incarnation == 2);
    cr_assert_eq(am_swim_pp_decode_member(&m, &pos, end), 0);
    cr_assert(S_eq(m.name, "node-c") && m.state == AM_MEMBER_LEFT && m.incarnation == UINT64_MAX);
    cr_assert_eq(pos, end);

    am_buf_set(&b, NULL, 0);
    build_pp(&b, AM_SWIM_PP_REPLY);
    pos = b.data;
    cr_assert_eq(am_swim_pp_decode_hdr(&h, &pos, b.data + b.len), 0);
    cr_assert_eq(h.flags, AM_SWIM_PP_REPLY);
    am_buf_close(&b);
    LEAK_CHECK();
}

Test(swim_proto, decoders_refuse_a_truncation_at_every_byte)
{
    struct am_buf b;
    am_buf_init(&b);
    build_all(&b);
    for (size_t n = 0; n < b.len; n++)
        cr_assert_eq(am_swim_packet_check(b.data, n), AM_EPROTO, "packet cut at %zu", n);
    am_buf_set(&b, NULL, 0);
    build_pp(&b, 0);
    for (size_t n = 0; n < b.len; n++)
        cr_assert_eq(am_swim_pp_check(b.data, n), AM_EPROTO, "push-pull cut at %zu", n);
    am_buf_close(&b);
}

Test(swim_proto, decoders_refuse_trailing_bytes)
{
    struct am_buf b;
    am_buf_init(&b);
    build_all(&b);
    am_buf_append(&b, "\xc0", 1);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), AM_EPROTO);
    am_buf_set(&b, NULL, 0);
    build_pp(&b, 0);
    am_buf_append(&b, "\x01", 1);
    cr_assert_eq(am_swim_pp_check(b.data, b.len), AM_EPROTO);
    am_buf_close(&b);
}

Test(swim_proto, decoders_refuse_an_unknown_version)
{
    struct am_buf b;
    am_buf_init(&b);
    build_all(&b);
    for (int v = 0; v < 256; v++) {
        if (v == AM_SWIM_PROTO_VERSION)
            continue;
        b.data[0] = (uint8_t)v;
        cr_assert_eq(am_swim_packet_check(b.data, b.len), AM_EPROTO);
    }
    am_buf_set(&b, NULL, 0);
    build_pp(&b, 0);
    b.data[0] = 2;
    cr_assert_eq(am_swim_pp_check(b.data, b.len), AM_EPROTO);
    am_buf_close(&b);
}

Test(swim_proto, decoders_refuse_lying_counts)
{
    /* A packet header that announces 200 messages and carries one. */
    uint8_t p[] = {1, 0xa1, 'a', 0xdc, 0, 200, 0x92, 2, 5};
    cr_assert_eq(am_swim_packet_check(p, sizeof p), AM_EPROTO);
    p[5] = 1;
    cr_assert_eq(am_swim_packet_check(p, sizeof p), 0);
    /* 257 messages are refused even if present. */
    struct am_buf b;
    am_buf_init(&b);
    uint8_t hdr[] = {1, 0xa1, 'a', 0xdc, 0x01, 0x01};
    am_buf_append(&b, hdr, sizeof hdr);
    for (int i = 0; i < 257; i++)
        am_buf_append(&b, "\x92\x02\x05", 3);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), AM_EPROTO);
    b.data[5] = 0; /* 256 */
    b.len -= 3;
    cr_assert_eq(am_swim_packet_check(b.data, b.len), 0);
    /* A message array that lies about its element count, and one with the
     * wrong arity for its type. */
    uint8_t q[] = {1, 0xa1, 'a', 0x91, 0x93, 2, 5};
    cr_assert_eq(am_swim_packet_check(q, sizeof q), AM_EPROTO);
    uint8_t r[] = {1, 0xa1, 'a', 0x91, 0x93, 2, 5, 6};
    cr_assert_eq(am_swim_packet_check(r, sizeof r), AM_EPROTO);
    /* An unknown message type. */
    uint8_t t[] = {1, 0xa1, 'a', 0x91, 0x92, 9, 5};
    cr_assert_eq(am_swim_packet_check(t, sizeof t), AM_EPROTO);
    /* A push-pull announcing 100,001 members (array32), and one announcing
     * 3 while carrying none. */
    uint8_t pp[] = {1, 0, 0xa1, 'a', 0xdd, 0x00, 0x01, 0x86, 0xa1};
    cr_assert_eq(am_swim_pp_check(pp, sizeof pp), AM_EPROTO);
    uint8_t pp2[] = {1, 0, 0xa1, 'a', 0x93};
    cr_assert_eq(am_swim_pp_check(pp2, sizeof pp2), AM_EPROTO);
    /* Unknown flags, and an out-of-range member state. */
    uint8_t pp3[] = {1, 4, 0xa1, 'a', 0x90};
    cr_assert_eq(am_swim_pp_check(pp3, sizeof pp3), AM_EPROTO);
    pp3[1] = 3;
    cr_assert_eq(am_swim_pp_check(pp3, sizeof pp3), 0);
    uint8_t pp4[] = {1, 0, 0xa1, 'a', 0x91, 0x94, 0xa1, 'b', 0xa1, 'x', 4, 0};
    cr_assert_eq(am_swim_pp_check(pp4, sizeof pp4), AM_EPROTO);
    pp4[10] = 3;
    cr_assert_eq(am_swim_pp_check(pp4, sizeof pp4), 0);
    am_buf_close(&b);
}

static size_t alive_with_name(uint8_t *out, const char *name, size_t len)
{
    /* [version, sender "a", array(1), [5, name, "x", 0]] with str8 names. */
    size_t n = 0;
    out[n++] = 1;
    out[n++] = 0xa1;
    out[n++] = 'a';
    out[n++] = 0x91;
    out[n++] = 0x94;
    out[n++] = 5;
    out[n++] = 0xd9;
    out[n++] = (uint8_t)len;
    memcpy(out + n, name, len);
    n += len;
    out[n++] = 0xa1;
    out[n++] = 'x';
    out[n++] = 0;
    return n;
}

Test(swim_proto, decoders_refuse_oversized_empty_or_nul_names)
{
    char name[200];
    uint8_t p[300];
    memset(name, 'n', sizeof name);
    cr_assert_eq(am_swim_packet_check(p, alive_with_name(p, name, AM_SWIM_MAX_NAME)), 0);
    cr_assert_eq(am_swim_packet_check(p, alive_with_name(p, name, AM_SWIM_MAX_NAME + 1)),
                 AM_EPROTO);
    cr_assert_eq(am_swim_packet_check(p, alive_with_name(p, name, 0)), AM_EPROTO);
    name[3] = 0;
    cr_assert_eq(am_swim_packet_check(p, alive_with_name(p, name, 10)), AM_EPROTO);

    /* An address one byte too long. */
    struct am_buf b;
    am_buf_init(&b);
    char addr[AM_SWIM_MAX_ADDR + 1];
    memset(addr, '1', sizeof addr);
    uint8_t hdr[] = {1, 0xa1, 'a', 0x91, 0x94, 5, 0xa1, 'b', 0xd9, AM_SWIM_MAX_ADDR + 1};
    am_buf_append(&b, hdr, sizeof hdr);
    am_buf_append(&b, addr, sizeof addr);
    am_buf_append(&b, "\x00", 1);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), AM_EPROTO);
    am_buf_close(&b);

    /* Encoders refuse them too. */
    struct am_swim_packet_writer w;
    am_buf_init(&b);
    memset(name, 'n', sizeof name);
    cr_assert_eq(am_swim_packet_begin(&w, &b, name, AM_SWIM_MAX_NAME + 1, 1400), -EINVAL);
    cr_assert_eq(am_swim_packet_begin(&w, &b, name, 0, 1400), -EINVAL);
    cr_assert_eq(am_swim_packet_begin(&w, &b, name, 5, AM_SWIM_MIN_PACKET - 1), -EINVAL);
    cr_assert_eq(am_swim_packet_begin(&w, &b, name, 5, 1400), 0);
    struct am_swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_ALIVE;
    m.name.p = name;
    m.name.len = AM_SWIM_MAX_NAME + 1;
    m.addr = S("x");
    cr_assert_eq(am_swim_packet_add(&w, &m), -EINVAL);
    am_buf_close(&b);
    LEAK_CHECK();
}

Test(swim_proto, writer_never_exceeds_max_packet_nor_256_messages)
{
    struct am_buf b;
    struct am_swim_packet_writer w;
    char name[AM_SWIM_MAX_NAME], addr[AM_SWIM_MAX_ADDR];
    memset(name, 'n', sizeof name);
    memset(addr, '9', sizeof addr);
    am_buf_init(&b);
    am_buf_append(&b, "prefix", 6); /* the writer appends after what is there */
    cr_assert_eq(am_swim_packet_begin(&w, &b, name, sizeof name, AM_SWIM_MIN_PACKET), 0);
    struct am_swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_SUSPECT;
    m.name.p = name;
    m.name.len = sizeof name;
    m.addr.p = addr;
    m.addr.len = sizeof addr;
    m.incarnation = UINT64_MAX;
    m.from = m.name;
    cr_assert_eq(am_swim_packet_add(&w, &m), 0, "the largest message fits the minimum packet");
    cr_assert_eq(am_swim_packet_add(&w, &m), AM_ETOOBIG);
    am_swim_packet_end(&w);
    cr_assert_eq(b.len - w.start, AM_SWIM_MIN_PACKET);
    cr_assert_eq(am_swim_packet_check(b.data + w.start, b.len - w.start), 0);

    /* Small messages: the count bound comes first. */
    am_buf_set(&b, NULL, 0);
    cr_assert_eq(am_swim_packet_begin(&w, &b, "a", 1, 1400), 0);
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_ACK;
    int added = 0;
    while (am_swim_packet_add(&w, &m) == 0)
        added++;
    cr_assert_eq(added, AM_SWIM_MAX_MSGS);
    am_swim_packet_end(&w);
    cr_assert_leq(b.len, 1400);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), 0);

    /* Larger messages: the byte bound. */
    am_buf_set(&b, NULL, 0);
    cr_assert_eq(am_swim_packet_begin(&w, &b, "a", 1, 1400), 0);
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_ALIVE;
    m.name.p = name;
    m.name.len = 100;
    m.addr.p = addr;
    m.addr.len = 20;
    while (am_swim_packet_add(&w, &m) == 0)
        ;
    am_swim_packet_end(&w);
    cr_assert_leq(b.len, 1400);
    cr_assert_gt(b.len, 1400 - 130);
    cr_assert_eq(am_swim_packet_check(b.data, b.len), 0);
    am_buf_close(&b);
    LEAK_CHECK();
}

static uint64_t rng_state = 0x12345678;

static uint64_t next_rand(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void decode_everything(const uint8_t *p, size_t len)
{
    int a = am_swim_packet_check(p, len), c = am_swim_pp_check(p, len);
    cr_assert(a == 0 || a == AM_EPROTO);
    cr_assert(c == 0 || c == AM_EPROTO);
    const uint8_t *pos = p, *end = p + len;
    struct am_swim_msg m;
    while (pos < end && am_swim_msg_decode(&m, &pos, end) == 0)
        cr_assert(pos <= end);
    pos = p;
    struct am_swim_pp_member pm;
    while (pos < end && am_swim_pp_decode_member(&pm, &pos, end) == 0)
        cr_assert(pos <= end);
}

Test(swim_proto, random_and_mutated_bytes_never_crash_the_decoders)
{
    uint8_t buf[512];
    for (int i = 0; i < 50000; i++) {
        size_t len = (size_t)(next_rand() % sizeof buf);
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)next_rand();
        if (len)
            buf[0] = AM_SWIM_PROTO_VERSION;
        /* Heap copies of the exact length, so ASan sees any overread. */
        uint8_t *h = malloc(len ? len : 1);
        memcpy(h, buf, len);
        decode_everything(h, len);
        free(h);
    }
    struct am_buf b;
    am_buf_init(&b);
    build_all(&b);
    size_t n = b.len;
    uint8_t *orig = malloc(n);
    memcpy(orig, b.data, n);
    for (int i = 0; i < 50000; i++) {
        uint8_t *h = malloc(n);
        memcpy(h, orig, n);
        for (int k = 0; k < 3; k++)
            h[next_rand() % n] = (uint8_t)next_rand();
        decode_everything(h, (size_t)(next_rand() % (n + 1)));
        free(h);
    }
    free(orig);
    am_buf_close(&b);
}
