/* proto.c - client protocol frames and messages (see proto.h).
 *
 * Encoders reserve the 4-byte header, pack the body with msgpack-c, then fill
 * the header in; if packing fails the buffer is cut back to where it was. */
#include "proto.h"

#include "err.h"
#include "mp.h"

#include <errno.h>
#include <string.h>

long am_frame_next(const uint8_t *p, size_t len, size_t max, const uint8_t **body, size_t *body_len)
{
    if (len < AM_FRAME_HEADER)
        return 0;
    uint32_t n = am_be32_get(p);
    if (n > max)
        return AM_ETOOBIG;
    if (len - AM_FRAME_HEADER < n)
        return 0;
    *body = p + AM_FRAME_HEADER;
    *body_len = n;
    return (long)(AM_FRAME_HEADER + (size_t)n);
}

static int read_name(const uint8_t **p, const uint8_t *end, const char **s, uint32_t *len,
                     uint32_t max)
{
    if (am_mp_read_str(p, end, s, len) || *len == 0 || *len > max)
        return AM_EPROTO;
    return 0;
}

/* The fields of a CALL after its id (also the tail of a FORWARD): type,
 * id, action, payload. */
static int read_call(struct am_request *r, const uint8_t **p, const uint8_t *end)
{
    if (read_name(p, end, &r->type, &r->type_len, AM_MAX_TYPE) ||
        read_name(p, end, &r->actor, &r->actor_len, AM_MAX_ID) ||
        read_name(p, end, &r->action, &r->action_len, AM_MAX_ACTION) ||
        memchr(r->type, '/', r->type_len))
        return AM_EPROTO;
    const uint8_t *start = *p;
    if (am_mp_skip(p, end))
        return AM_EPROTO;
    r->payload = start;
    r->payload_len = (uint32_t)(*p - start);
    return 0;
}

int am_request_decode(struct am_request *r, const uint8_t *body, size_t len)
{
    const uint8_t *p = body, *end;
    uint32_t n;
    uint64_t kind;
    memset(r, 0, sizeof *r);
    if (len == 0) /* body may be NULL then, and NULL + 0 is undefined */
        return AM_EPROTO;
    end = body + len;
    if (am_mp_read_array(&p, end, &n) || n < 2 || am_mp_read_uint(&p, end, &kind))
        return AM_EPROTO;
    if (am_mp_read_uint(&p, end, &r->id))
        return AM_EPROTO;
    r->has_id = 1;
    r->kind = kind > 255 ? -1 : (int)kind;
    switch (r->kind) {
    case AM_MSG_HELLO:
        if ((n != 4 && n != 5) || am_mp_read_uint(&p, end, &r->version) ||
            read_name(&p, end, &r->role, &r->role_len, AM_MAX_ROLE) ||
            (n == 5 && read_name(&p, end, &r->name, &r->name_len, AM_MAX_PEER_NAME)))
            return AM_EPROTO;
        break;
    case AM_MSG_FORWARD: {
        uint64_t fk, hops;
        if (n != 9 || am_mp_read_uint(&p, end, &fk) || (fk != AM_MSG_CALL && fk != AM_MSG_CAST) ||
            am_mp_read_uint(&p, end, &hops) || hops > 255 ||
            am_mp_read_uint(&p, end, &r->ring_version) || read_call(r, &p, end))
            return AM_EPROTO;
        r->fwd_kind = (int)fk;
        r->hops = (unsigned)hops;
        break;
    }
    case AM_MSG_CALL:
    case AM_MSG_CAST:
        if (n != 6 || read_call(r, &p, end))
            return AM_EPROTO;
        break;
    case AM_MSG_HANDOFF:
    case AM_MSG_REPLICATE:
        /* The key is "type/id" whole: at most the longest type, '/', id. */
        if (n != 6 || read_name(&p, end, &r->type, &r->type_len, AM_MAX_TYPE + 1 + AM_MAX_ID) ||
            am_mp_read_uint(&p, end, &r->epoch) || am_mp_read_uint(&p, end, &r->seq) ||
            am_mp_read_bin(&p, end, &r->payload, &r->payload_len))
            return AM_EPROTO;
        break;
    case AM_MSG_FETCH:
        if (n != 3 || read_name(&p, end, &r->type, &r->type_len, AM_MAX_TYPE + 1 + AM_MAX_ID))
            return AM_EPROTO;
        break;
    case AM_MSG_DIGEST:
    case AM_MSG_VERSIONS:
        if (n != 4 || am_mp_read_uint(&p, end, &r->ring_version) ||
            am_mp_read_bin(&p, end, &r->payload, &r->payload_len))
            return AM_EPROTO;
        break;
    case AM_MSG_STATUS:
    case AM_MSG_MEMBERS:
    case AM_MSG_LEAVE:
    case AM_MSG_RING:
    case AM_MSG_ACTORS:
    case AM_MSG_HANDOFF_DONE:
        if (n != 2)
            return AM_EPROTO;
        break;
    case AM_MSG_SYNC:
        if (n != 3 || am_mp_read_bin(&p, end, &r->payload, &r->payload_len))
            return AM_EPROTO;
        break;
    default:
        return AM_EPROTO;
    }
    return p == end ? 0 : AM_EPROTO;
}

size_t am_request_call_bytes(const struct am_request *r)
{
    return (size_t)r->type_len + r->actor_len + r->action_len + r->payload_len;
}

void am_request_copy_call(struct am_request *dst, const struct am_request *r, uint8_t *bytes)
{
    *dst = *r;
    uint8_t *p = bytes;
    if (r->type_len)
        memcpy(p, r->type, r->type_len);
    dst->type = (const char *)p;
    p += r->type_len;
    if (r->actor_len)
        memcpy(p, r->actor, r->actor_len);
    dst->actor = (const char *)p;
    p += r->actor_len;
    if (r->action_len)
        memcpy(p, r->action, r->action_len);
    dst->action = (const char *)p;
    p += r->action_len;
    if (r->payload_len)
        memcpy(p, r->payload, r->payload_len);
    dst->payload = p;
    dst->role = dst->name = NULL;
}

int am_reply_decode(struct am_reply *r, const uint8_t *body, size_t len)
{
    const uint8_t *p = body, *end;
    uint32_t n;
    uint64_t kind, status;
    memset(r, 0, sizeof *r);
    if (len == 0) /* body may be NULL then, and NULL + 0 is undefined */
        return AM_EPROTO;
    end = body + len;
    if (am_mp_read_array(&p, end, &n) || n != 4 || am_mp_read_uint(&p, end, &kind) ||
        kind != AM_MSG_REPLY || am_mp_read_uint(&p, end, &r->id) ||
        am_mp_read_uint(&p, end, &status) || status > 255)
        return AM_EPROTO;
    const uint8_t *start = p;
    if (am_mp_skip(&p, end) || p != end)
        return AM_EPROTO;
    r->status = (int)status;
    r->body = start;
    r->body_len = (uint32_t)(p - start);
    return 0;
}

/* Starts a frame: reserves the header. Returns the header's offset. */
static size_t frame_begin(struct am_buf *out, msgpack_packer *pk, int *rc)
{
    size_t at = out->len;
    static const uint8_t zero[AM_FRAME_HEADER];
    *rc = am_buf_append(out, zero, sizeof zero);
    am_mp_packer_init(pk, out);
    return at;
}

static int frame_end(struct am_buf *out, size_t at, int rc)
{
    size_t body = out->len - at - AM_FRAME_HEADER;
    if (rc || body > UINT32_MAX) {
        out->len = at;
        return -ENOMEM;
    }
    am_be32_put(out->data + at, (uint32_t)body);
    return 0;
}

int am_encode_call(struct am_buf *out, int kind, uint64_t id, const char *type, size_t type_len,
                   const char *actor, size_t actor_len, const char *action, size_t action_len,
                   const uint8_t *payload, size_t payload_len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 6) || msgpack_pack_unsigned_int(&pk, (unsigned)kind) ||
         msgpack_pack_uint64(&pk, id) || am_mp_pack_str(&pk, type, type_len) ||
         am_mp_pack_str(&pk, actor, actor_len) || am_mp_pack_str(&pk, action, action_len) ||
         am_mp_pack_raw(&pk, payload, payload_len);
    return frame_end(out, at, rc);
}

int am_encode_hello(struct am_buf *out, uint64_t id, const char *role)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 4) || msgpack_pack_unsigned_int(&pk, AM_MSG_HELLO) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_unsigned_int(&pk, AM_PROTO_VERSION) ||
         am_mp_pack_str(&pk, role, strlen(role));
    return frame_end(out, at, rc);
}

int am_encode_hello_peer(struct am_buf *out, uint64_t id, const char *name)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 5) || msgpack_pack_unsigned_int(&pk, AM_MSG_HELLO) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_unsigned_int(&pk, AM_PROTO_VERSION) ||
         am_mp_pack_str(&pk, "peer", 4) || am_mp_pack_str(&pk, name, strlen(name));
    return frame_end(out, at, rc);
}

int am_encode_forward(struct am_buf *out, uint64_t id, const struct am_request *r, unsigned hops,
                      uint64_t ring_version)
{
    msgpack_packer pk;
    int rc;
    int kind = r->kind == AM_MSG_FORWARD ? r->fwd_kind : r->kind;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 9) || msgpack_pack_unsigned_int(&pk, AM_MSG_FORWARD) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_unsigned_int(&pk, (unsigned)kind) ||
         msgpack_pack_unsigned_int(&pk, hops) || msgpack_pack_uint64(&pk, ring_version) ||
         am_mp_pack_str(&pk, r->type, r->type_len) || am_mp_pack_str(&pk, r->actor, r->actor_len) ||
         am_mp_pack_str(&pk, r->action, r->action_len) ||
         am_mp_pack_raw(&pk, r->payload, r->payload_len);
    return frame_end(out, at, rc);
}

int am_encode_handoff(struct am_buf *out, uint64_t id, const char *key, size_t key_len,
                      uint64_t epoch, uint64_t seq, const uint8_t *state, size_t state_len)
{
    return am_encode_snapshot(out, AM_MSG_HANDOFF, id, key, key_len, epoch, seq, state,
                              state_len);
}

int am_encode_snapshot(struct am_buf *out, int kind, uint64_t id, const char *key,
                       size_t key_len, uint64_t epoch, uint64_t seq, const uint8_t *state,
                       size_t state_len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || state_len > UINT32_MAX || msgpack_pack_array(&pk, 6) ||
         msgpack_pack_unsigned_int(&pk, (unsigned)kind) || msgpack_pack_uint64(&pk, id) ||
         am_mp_pack_str(&pk, key, key_len) || msgpack_pack_uint64(&pk, epoch) ||
         msgpack_pack_uint64(&pk, seq) || msgpack_pack_bin(&pk, state_len) ||
         (state_len && msgpack_pack_bin_body(&pk, state, state_len));
    return frame_end(out, at, rc);
}

int am_encode_fetch(struct am_buf *out, uint64_t id, const char *key, size_t key_len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 3) ||
         msgpack_pack_unsigned_int(&pk, (unsigned)AM_MSG_FETCH) || msgpack_pack_uint64(&pk, id) ||
         am_mp_pack_str(&pk, key, key_len);
    return frame_end(out, at, rc);
}

int am_encode_digest(struct am_buf *out, int kind, uint64_t id, uint64_t ring_version,
                     const uint8_t *digests, size_t len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || len > UINT32_MAX || msgpack_pack_array(&pk, 4) ||
         msgpack_pack_unsigned_int(&pk, (unsigned)kind) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_uint64(&pk, ring_version) ||
         msgpack_pack_bin(&pk, len) || (len && msgpack_pack_bin_body(&pk, digests, len));
    return frame_end(out, at, rc);
}

int am_encode_simple(struct am_buf *out, int kind, uint64_t id)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 2) || msgpack_pack_unsigned_int(&pk, (unsigned)kind) ||
         msgpack_pack_uint64(&pk, id);
    return frame_end(out, at, rc);
}

int am_encode_status(struct am_buf *out, uint64_t id)
{
    return am_encode_simple(out, AM_MSG_STATUS, id);
}

int am_encode_sync(struct am_buf *out, uint64_t id, const uint8_t *data, size_t len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || len > UINT32_MAX || msgpack_pack_array(&pk, 3) ||
         msgpack_pack_unsigned_int(&pk, AM_MSG_SYNC) || msgpack_pack_uint64(&pk, id) ||
         msgpack_pack_bin(&pk, len) || (len && msgpack_pack_bin_body(&pk, data, len));
    return frame_end(out, at, rc);
}

int am_encode_reply(struct am_buf *out, uint64_t id, int status, const uint8_t *body,
                    size_t body_len)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 4) || msgpack_pack_unsigned_int(&pk, AM_MSG_REPLY) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_unsigned_int(&pk, (unsigned)status) ||
         am_mp_pack_raw(&pk, body, body_len);
    return frame_end(out, at, rc);
}

int am_encode_error(struct am_buf *out, uint64_t id, int status, const char *msg)
{
    msgpack_packer pk;
    int rc;
    size_t at = frame_begin(out, &pk, &rc);
    rc = rc || msgpack_pack_array(&pk, 4) || msgpack_pack_unsigned_int(&pk, AM_MSG_REPLY) ||
         msgpack_pack_uint64(&pk, id) || msgpack_pack_unsigned_int(&pk, (unsigned)status) ||
         am_mp_pack_str(&pk, msg, strlen(msg));
    return frame_end(out, at, rc);
}
