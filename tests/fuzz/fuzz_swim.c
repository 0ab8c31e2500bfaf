/* fuzz_swim.c - libFuzzer target for the SWIM decoders and core.
 *
 * The whole input goes to the packet and push-pull decoders, which must
 * agree with their whole-message checks. Then the input is cut into
 * chunks (a 2-byte big-endian length, a control byte, the bytes), each fed
 * to a fresh core that already knows a few peers, as a packet or a stream
 * from one of a few addresses, with time advancing and the core ticking
 * between chunks. The core must accept exactly what the decoders accept,
 * never emit a packet over max_packet or one its own decoder refuses, and
 * never crash or leak. */
#include "err.h"
#include "swim.h"
#include "swim_proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const addrs[] = {"10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946",
                                    "10.0.0.9:7946"};

static void drain(struct am_swim *s, size_t max_packet)
{
    const struct am_swim_action *a;
    size_t k = am_swim_actions(s, &a);
    for (size_t i = 0; i < k; i++) {
        CHECK(a[i].addr != NULL);
        if (a[i].kind == AM_SWIM_ACT_PACKET) {
            CHECK(a[i].len <= max_packet);
            CHECK(am_swim_packet_check(a[i].data, a[i].len) == 0);
        } else if (a[i].kind == AM_SWIM_ACT_STREAM) {
            CHECK(am_swim_pp_check(a[i].data, a[i].len) == 0);
        } else {
            CHECK(a[i].name != NULL);
        }
    }
}

static void decode_all(const uint8_t *data, size_t size)
{
    const uint8_t *pos = data, *end = data + size;
    struct am_swim_packet_hdr h;
    struct am_swim_msg m;
    int ok = am_swim_packet_decode_hdr(&h, &pos, end) == 0;
    for (uint32_t i = 0; ok && i < h.count; i++)
        ok = am_swim_msg_decode(&m, &pos, end) == 0;
    ok = ok && pos == end;
    CHECK(ok == (am_swim_packet_check(data, size) == 0));

    pos = data;
    struct am_swim_pp_hdr ph;
    struct am_swim_pp_member pm;
    ok = am_swim_pp_decode_hdr(&ph, &pos, end) == 0;
    for (uint32_t i = 0; ok && i < ph.count; i++)
        ok = am_swim_pp_decode_member(&pm, &pos, end) == 0;
    ok = ok && pos == end;
    CHECK(ok == (am_swim_pp_check(data, size) == 0));
}

static struct am_swim *new_core(uint64_t now)
{
    struct am_swim_config c;
    struct am_swim *s;
    memset(&c, 0, sizeof c);
    if (am_swim_profile(&c, "lan"))
        abort();
    c.name = "me";
    c.addr = addrs[3];
    c.seed = 1;
    if (am_swim_new(&s, &c, now))
        abort();
    /* Three peers, so probes, ping-reqs and suspicions have targets. */
    struct am_buf b;
    am_buf_init(&b);
    am_swim_pp_encode_hdr(&b, AM_SWIM_PP_REPLY, "p1", 2, 3);
    const char *names[] = {"p1", "p2", "p3"};
    for (int i = 0; i < 3; i++) {
        struct am_swim_pp_member m = {{names[i], 2}, {addrs[i], 13}, AM_MEMBER_ALIVE, 0};
        am_swim_pp_encode_member(&b, &m);
    }
    CHECK(am_swim_on_stream(s, addrs[0], b.data, b.len, now) == 0);
    am_buf_close(&b);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decode_all(data, size);

    uint64_t now = 1000;
    struct am_swim *s = new_core(now);
    drain(s, 1400);
    /* The input as one packet and as one stream. */
    int want = am_swim_packet_check(data, size) == 0 ? 0 : AM_EPROTO;
    CHECK(am_swim_on_packet(s, addrs[0], data, size, now) == want);
    drain(s, 1400);
    want = am_swim_pp_check(data, size) == 0 ? 0 : AM_EPROTO;
    CHECK(am_swim_on_stream(s, addrs[1], data, size, now) == want);
    drain(s, 1400);

    /* The input as a sequence of chunks over time. */
    const uint8_t *p = data, *end = data + size;
    while (end - p >= 3) {
        size_t len = ((size_t)p[0] << 8) | p[1];
        uint8_t ctl = p[2];
        p += 3;
        if (len > (size_t)(end - p))
            len = (size_t)(end - p);
        const char *from = addrs[(ctl >> 1) & 3];
        if (ctl & 1)
            am_swim_on_stream(s, from, p, len, now);
        else
            am_swim_on_packet(s, from, p, len, now);
        drain(s, 1400);
        p += len;
        now += (uint64_t)(ctl >> 3) * 100;
        while (am_swim_next_deadline(s) <= now) {
            am_swim_tick(s, am_swim_next_deadline(s));
            drain(s, 1400);
        }
        if (ctl == 0xff) {
            am_swim_leave(s, now);
            drain(s, 1400);
        }
    }
    am_swim_free(s);
    return 0;
}
