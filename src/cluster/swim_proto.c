/* swim_proto.c - encode and decode SWIM packets and push-pull messages (the
 * layouts are in swim_proto.h).
 *
 * Decoders read with the bounded am_mp_read_* functions on a local cursor
 * and store it back only on success, so a failure leaves *pos unchanged.
 * Encoders go through msgpack-c's packer into an am_buf; the packet writer
 * rolls the buffer back when a message would push the packet over max. */
#include "swim_proto.h"

#include "err.h"
#include "mp.h"

#include <errno.h>
#include <string.h>

/* ---- decoding ---- */

static int read_bounded_str(const uint8_t **pos, const uint8_t *end, struct am_swim_str *out,
                            uint32_t max)
{
    const char *s;
    uint32_t len;
    if (am_mp_read_str(pos, end, &s, &len))
        return AM_EPROTO;
    if (len == 0 || len > max || memchr(s, 0, len))
        return AM_EPROTO;
    out->p = s;
    out->len = len;
    return 0;
}

static int read_name(const uint8_t **pos, const uint8_t *end, struct am_swim_str *out)
{
    return read_bounded_str(pos, end, out, AM_SWIM_MAX_NAME);
}

static int read_addr(const uint8_t **pos, const uint8_t *end, struct am_swim_str *out)
{
    return read_bounded_str(pos, end, out, AM_SWIM_MAX_ADDR);
}

static int read_version(const uint8_t **pos, const uint8_t *end)
{
    if (*pos >= end || **pos != AM_SWIM_PROTO_VERSION)
        return AM_EPROTO;
    (*pos)++;
    return 0;
}

int am_swim_packet_decode_hdr(struct am_swim_packet_hdr *h, const uint8_t **pos, const uint8_t *end)
{
    const uint8_t *p = *pos;
    struct am_swim_packet_hdr out;
    if (read_version(&p, end) || read_name(&p, end, &out.sender) ||
        am_mp_read_array(&p, end, &out.count) || out.count > AM_SWIM_MAX_MSGS)
        return AM_EPROTO;
    *h = out;
    *pos = p;
    return 0;
}

/* The exact element count of each message type, 0 for unknown types. */
static uint32_t msg_arity(uint64_t type)
{
    switch (type) {
    case AM_SWIM_MSG_PING:
        return 4;
    case AM_SWIM_MSG_ACK:
    case AM_SWIM_MSG_NACK:
        return 2;
    case AM_SWIM_MSG_PING_REQ:
    case AM_SWIM_MSG_ALIVE:
    case AM_SWIM_MSG_LEFT:
        return 4;
    case AM_SWIM_MSG_SUSPECT:
    case AM_SWIM_MSG_DEAD:
        return 5;
    default:
        return 0;
    }
}

int am_swim_msg_decode(struct am_swim_msg *m, const uint8_t **pos, const uint8_t *end)
{
    const uint8_t *p = *pos;
    struct am_swim_msg out;
    uint32_t n;
    uint64_t type;
    memset(&out, 0, sizeof out);
    if (am_mp_read_array(&p, end, &n) || n < 1 || am_mp_read_uint(&p, end, &type))
        return AM_EPROTO;
    if (msg_arity(type) == 0 || msg_arity(type) != n)
        return AM_EPROTO;
    out.type = (enum am_swim_msg_type)type;
    switch (out.type) {
    case AM_SWIM_MSG_PING:
        if (am_mp_read_uint(&p, end, &out.seq) || read_name(&p, end, &out.name))
            return AM_EPROTO;
        if (am_mp_peek(p, end) == AM_MP_NIL) {
            if (am_mp_read_nil(&p, end))
                return AM_EPROTO;
        } else {
            if (am_mp_read_uint(&p, end, &out.incarnation))
                return AM_EPROTO;
            out.has_suspicion = 1;
        }
        break;
    case AM_SWIM_MSG_ACK:
    case AM_SWIM_MSG_NACK:
        if (am_mp_read_uint(&p, end, &out.seq))
            return AM_EPROTO;
        break;
    case AM_SWIM_MSG_PING_REQ:
        if (am_mp_read_uint(&p, end, &out.seq) || read_name(&p, end, &out.name) ||
            read_addr(&p, end, &out.addr))
            return AM_EPROTO;
        break;
    case AM_SWIM_MSG_ALIVE:
    case AM_SWIM_MSG_LEFT:
    case AM_SWIM_MSG_SUSPECT:
    case AM_SWIM_MSG_DEAD:
        if (read_name(&p, end, &out.name) || read_addr(&p, end, &out.addr) ||
            am_mp_read_uint(&p, end, &out.incarnation))
            return AM_EPROTO;
        if ((out.type == AM_SWIM_MSG_SUSPECT || out.type == AM_SWIM_MSG_DEAD) &&
            read_name(&p, end, &out.from))
            return AM_EPROTO;
        break;
    }
    *m = out;
    *pos = p;
    return 0;
}

int am_swim_packet_check(const uint8_t *p, size_t len)
{
    const uint8_t *pos = p, *end = p + len;
    struct am_swim_packet_hdr h;
    struct am_swim_msg m;
    if (am_swim_packet_decode_hdr(&h, &pos, end))
        return AM_EPROTO;
    for (uint32_t i = 0; i < h.count; i++)
        if (am_swim_msg_decode(&m, &pos, end))
            return AM_EPROTO;
    return pos == end ? 0 : AM_EPROTO;
}

int am_swim_pp_decode_hdr(struct am_swim_pp_hdr *h, const uint8_t **pos, const uint8_t *end)
{
    const uint8_t *p = *pos;
    struct am_swim_pp_hdr out;
    uint64_t flags;
    if (read_version(&p, end) || am_mp_read_uint(&p, end, &flags) ||
        (flags & ~(uint64_t)(AM_SWIM_PP_JOIN | AM_SWIM_PP_REPLY)) ||
        read_name(&p, end, &out.sender) || am_mp_read_array(&p, end, &out.count) ||
        out.count > AM_SWIM_MAX_PP)
        return AM_EPROTO;
    out.flags = (unsigned)flags;
    *h = out;
    *pos = p;
    return 0;
}

int am_swim_pp_decode_member(struct am_swim_pp_member *m, const uint8_t **pos, const uint8_t *end)
{
    const uint8_t *p = *pos;
    struct am_swim_pp_member out;
    uint32_t n;
    uint64_t state;
    if (am_mp_read_array(&p, end, &n) || n != 4 || read_name(&p, end, &out.name) ||
        read_addr(&p, end, &out.addr) || am_mp_read_uint(&p, end, &state) ||
        state > AM_MEMBER_LEFT || am_mp_read_uint(&p, end, &out.incarnation))
        return AM_EPROTO;
    out.state = (enum am_member_state)state;
    *m = out;
    *pos = p;
    return 0;
}

int am_swim_pp_check(const uint8_t *p, size_t len)
{
    const uint8_t *pos = p, *end = p + len;
    struct am_swim_pp_hdr h;
    struct am_swim_pp_member m;
    if (am_swim_pp_decode_hdr(&h, &pos, end))
        return AM_EPROTO;
    for (uint32_t i = 0; i < h.count; i++)
        if (am_swim_pp_decode_member(&m, &pos, end))
            return AM_EPROTO;
    return pos == end ? 0 : AM_EPROTO;
}

/* ---- encoding ---- */

static int str_ok(const char *s, size_t len, size_t max)
{
    return s && len >= 1 && len <= max && !memchr(s, 0, len);
}

static int sstr_ok(struct am_swim_str s, size_t max)
{
    return str_ok(s.p, s.len, max);
}

int am_swim_packet_begin(struct am_swim_packet_writer *w, struct am_buf *b, const char *sender,
                         size_t sender_len, size_t max)
{
    msgpack_packer pk;
    static const uint8_t version = AM_SWIM_PROTO_VERSION;
    static const uint8_t count[3] = {0xdc, 0, 0};
    if (!str_ok(sender, sender_len, AM_SWIM_MAX_NAME) || max < AM_SWIM_MIN_PACKET)
        return -EINVAL;
    w->b = b;
    w->start = b->len;
    w->max = max;
    w->count = 0;
    am_mp_packer_init(&pk, b);
    if (am_buf_append(b, &version, 1) || am_mp_pack_str(&pk, sender, sender_len)) {
        b->len = w->start;
        return -ENOMEM;
    }
    w->count_off = b->len;
    if (am_buf_append(b, count, sizeof count)) {
        b->len = w->start;
        return -ENOMEM;
    }
    return 0;
}

static int pack_msg(msgpack_packer *pk, const struct am_swim_msg *m)
{
    int rc = 0;
    uint32_t n = msg_arity(m->type);
    rc |= msgpack_pack_array(pk, n);
    rc |= msgpack_pack_uint64(pk, (uint64_t)m->type);
    switch (m->type) {
    case AM_SWIM_MSG_PING:
        rc |= msgpack_pack_uint64(pk, m->seq);
        rc |= am_mp_pack_str(pk, m->name.p, m->name.len);
        if (m->has_suspicion)
            rc |= msgpack_pack_uint64(pk, m->incarnation);
        else
            rc |= msgpack_pack_nil(pk);
        break;
    case AM_SWIM_MSG_ACK:
    case AM_SWIM_MSG_NACK:
        rc |= msgpack_pack_uint64(pk, m->seq);
        break;
    case AM_SWIM_MSG_PING_REQ:
        rc |= msgpack_pack_uint64(pk, m->seq);
        rc |= am_mp_pack_str(pk, m->name.p, m->name.len);
        rc |= am_mp_pack_str(pk, m->addr.p, m->addr.len);
        break;
    case AM_SWIM_MSG_ALIVE:
    case AM_SWIM_MSG_LEFT:
    case AM_SWIM_MSG_SUSPECT:
    case AM_SWIM_MSG_DEAD:
        rc |= am_mp_pack_str(pk, m->name.p, m->name.len);
        rc |= am_mp_pack_str(pk, m->addr.p, m->addr.len);
        rc |= msgpack_pack_uint64(pk, m->incarnation);
        if (m->type == AM_SWIM_MSG_SUSPECT || m->type == AM_SWIM_MSG_DEAD)
            rc |= am_mp_pack_str(pk, m->from.p, m->from.len);
        break;
    }
    return rc ? -ENOMEM : 0;
}

static int msg_valid(const struct am_swim_msg *m)
{
    switch (m->type) {
    case AM_SWIM_MSG_PING:
        return sstr_ok(m->name, AM_SWIM_MAX_NAME);
    case AM_SWIM_MSG_ACK:
    case AM_SWIM_MSG_NACK:
        return 1;
    case AM_SWIM_MSG_PING_REQ:
    case AM_SWIM_MSG_ALIVE:
    case AM_SWIM_MSG_LEFT:
        return sstr_ok(m->name, AM_SWIM_MAX_NAME) && sstr_ok(m->addr, AM_SWIM_MAX_ADDR);
    case AM_SWIM_MSG_SUSPECT:
    case AM_SWIM_MSG_DEAD:
        return sstr_ok(m->name, AM_SWIM_MAX_NAME) && sstr_ok(m->addr, AM_SWIM_MAX_ADDR) &&
               sstr_ok(m->from, AM_SWIM_MAX_NAME);
    }
    return 0;
}

int am_swim_packet_add(struct am_swim_packet_writer *w, const struct am_swim_msg *m)
{
    msgpack_packer pk;
    size_t before = w->b->len;
    if (!msg_valid(m))
        return -EINVAL;
    if (w->count >= AM_SWIM_MAX_MSGS)
        return AM_ETOOBIG;
    am_mp_packer_init(&pk, w->b);
    if (pack_msg(&pk, m)) {
        w->b->len = before;
        return -ENOMEM;
    }
    if (w->b->len - w->start > w->max) {
        w->b->len = before;
        return AM_ETOOBIG;
    }
    w->count++;
    return 0;
}

void am_swim_packet_end(struct am_swim_packet_writer *w)
{
    w->b->data[w->count_off + 1] = (uint8_t)(w->count >> 8);
    w->b->data[w->count_off + 2] = (uint8_t)(w->count & 0xff);
}

int am_swim_pp_encode_hdr(struct am_buf *b, unsigned flags, const char *sender, size_t sender_len,
                          uint32_t count)
{
    msgpack_packer pk;
    size_t before = b->len;
    static const uint8_t version = AM_SWIM_PROTO_VERSION;
    if (!str_ok(sender, sender_len, AM_SWIM_MAX_NAME) || count > AM_SWIM_MAX_PP ||
        (flags & ~(AM_SWIM_PP_JOIN | AM_SWIM_PP_REPLY)))
        return -EINVAL;
    am_mp_packer_init(&pk, b);
    if (am_buf_append(b, &version, 1) || msgpack_pack_uint64(&pk, flags) ||
        am_mp_pack_str(&pk, sender, sender_len) || msgpack_pack_array(&pk, count)) {
        b->len = before;
        return -ENOMEM;
    }
    return 0;
}

int am_swim_pp_encode_member(struct am_buf *b, const struct am_swim_pp_member *m)
{
    msgpack_packer pk;
    size_t before = b->len;
    if (!sstr_ok(m->name, AM_SWIM_MAX_NAME) || !sstr_ok(m->addr, AM_SWIM_MAX_ADDR) ||
        (unsigned)m->state > AM_MEMBER_LEFT)
        return -EINVAL;
    am_mp_packer_init(&pk, b);
    if (msgpack_pack_array(&pk, 4) || am_mp_pack_str(&pk, m->name.p, m->name.len) ||
        am_mp_pack_str(&pk, m->addr.p, m->addr.len) ||
        msgpack_pack_uint64(&pk, (uint64_t)m->state) || msgpack_pack_uint64(&pk, m->incarnation)) {
        b->len = before;
        return -ENOMEM;
    }
    return 0;
}
