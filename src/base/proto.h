/* proto.h - the client protocol: frames and messages (docs/protocol.md).
 *
 * A frame is a 4-byte big-endian body length followed by the body, one
 * msgpack array:
 *
 *   +--------+--------+--------+--------+---------------------------+
 *   |      body length N (uint32, BE)   |  N bytes: msgpack array   |
 *   +--------+--------+--------+--------+---------------------------+
 *
 *   HELLO  [0, req_id, proto_version, role]            role "client" or "member"
 *   HELLO  [0, req_id, proto_version, "peer", name]    a node's stream for forwards
 *   CALL   [1, req_id, type, id, action, payload]      payload: any object
 *   CAST   [2, req_id, type, id, action, payload]
 *   STATUS [3, req_id]
 *   MEMBERS [4, req_id]                                the membership view
 *   LEAVE  [5, req_id]                                 leave the cluster, stop
 *   SYNC   [6, req_id, bin]                            push-pull state exchange;
 *                                                      only after HELLO role "member"
 *   RING   [7, req_id]                                 the placement ring
 *   FORWARD [8, req_id, kind, hops, ring_version, type, id, action, payload]
 *                                                      a CALL (kind 1) or CAST (2)
 *                                                      handed on by another node;
 *                                                      only after HELLO role "peer"
 *   ACTORS [9, req_id]                                 the actors active here
 *   HANDOFF [10, req_id, key, epoch, seq, state]       a leaving owner's snapshot
 *                                                      of actor key ("type/id");
 *                                                      state: bin; only after
 *                                                      HELLO role "peer"
 *   HANDOFF_DONE [11, req_id]                          a node has handed off to
 *                                                      the receiver all it had
 *                                                      for it; peer streams only
 *   REPLICATE [12, req_id, key, epoch, seq, state]     an owner's new state of
 *                                                      actor key for a replica;
 *                                                      peer streams only
 *   FETCH [13, req_id, key]                            the newest copy of actor
 *                                                      key held by the receiver,
 *                                                      asked by an owner before
 *                                                      it activates the actor;
 *                                                      peer streams only
 *   DIGEST [14, req_id, ring_version, digests]         an owner's digests of the
 *                                                      states the receiver should
 *                                                      replicate (bin, 64 x 8
 *                                                      bytes); peer streams only
 *   VERSIONS [15, req_id, ring_version, entries]       the keys and versions of
 *                                                      differing digest ranges
 *                                                      (bin); peer streams only
 *   REPLY  [128, req_id, status, body]                 body: reply object if
 *                                                      status is 0, else an
 *                                                      error message (str)
 *
 * Decoding is pure and bounded: fields point into the frame body, which must
 * outlive the decoded struct. */
#ifndef AM_PROTO_H
#define AM_PROTO_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define AM_PROTO_VERSION 1
#define AM_FRAME_HEADER 4

enum am_msg_kind {
    AM_MSG_HELLO = 0,
    AM_MSG_CALL = 1,
    AM_MSG_CAST = 2,
    AM_MSG_STATUS = 3,
    AM_MSG_MEMBERS = 4,
    AM_MSG_LEAVE = 5,
    AM_MSG_SYNC = 6,
    AM_MSG_RING = 7,
    AM_MSG_FORWARD = 8,
    AM_MSG_ACTORS = 9,
    AM_MSG_HANDOFF = 10,
    AM_MSG_HANDOFF_DONE = 11,
    AM_MSG_REPLICATE = 12,
    AM_MSG_FETCH = 13,
    AM_MSG_DIGEST = 14,
    AM_MSG_VERSIONS = 15,
    AM_MSG_REPLY = 128,
};

/* Name limits. An actor's storage key is "type/id"; with these bounds it
 * stays under LMDB's 511-byte key limit (63 + 1 + 255 = 319). */
#define AM_MAX_TYPE 63
#define AM_MAX_ID 255
#define AM_MAX_ACTION 63
#define AM_MAX_ROLE 31
/* A node name in a peer HELLO (the membership's limit, swim_proto.h). */
#define AM_MAX_PEER_NAME 255
/* How many times a call may be handed from node to node: the node a client
 * asked forwards it to the owner by its view (hop 1); a node that gets a
 * forwarded call it does not own by its own view forwards it once more
 * (hop 2); past that the caller gets AM_ST_UNAVAILABLE. */
#define AM_MAX_HOPS 2

/* Looks for one complete frame at the start of [p, p+len).
 * Returns the bytes the frame takes (header included) and sets body/body_len;
 * 0 when more bytes are needed; AM_ETOOBIG when the header announces a body
 * longer than max (the stream cannot be resynchronised: close it). */
long am_frame_next(const uint8_t *p, size_t len, size_t max, const uint8_t **body,
                   size_t *body_len);

/* A decoded request. Strings are not NUL-terminated and point into the body. */
struct am_request {
    int kind;
    uint64_t id;
    int has_id; /* set as soon as the id was read, so errors can name it */
    const char *type, *actor, *action, *role, *name;
    uint32_t type_len, actor_len, action_len, role_len, name_len; /* name: peer HELLO */
    const uint8_t *payload; /* exactly one msgpack object; SYNC: the bin's bytes */
    uint32_t payload_len;
    uint64_t version; /* HELLO only */
    /* HANDOFF and REPLICATE only: the snapshot's version (the key is in type/type_len,
     * "type/id" whole, as for FETCH; the state in payload/payload_len). */
    uint64_t epoch, seq;
    /* FORWARD only: what was forwarded (AM_MSG_CALL or AM_MSG_CAST), how many
     * hops it has made and the ring version of the node that sent it (DIGEST
     * too: its ring version, the digests in payload). */
    int fwd_kind;
    unsigned hops;
    uint64_t ring_version;
};

/* Decodes one request body. Returns 0, or AM_EPROTO for a malformed message
 * (r->has_id says whether r->id can be used to answer it). Names over their
 * limits, empty names and a '/' in a type name are AM_EPROTO too. */
int am_request_decode(struct am_request *r, const uint8_t *body, size_t len);

/* A call kept past its frame (held, waiting): the bytes its type, id,
 * action and payload take, and *dst = *r with those copied into bytes
 * (room for am_request_call_bytes(r)); role and name are cleared. */
size_t am_request_call_bytes(const struct am_request *r);
void am_request_copy_call(struct am_request *dst, const struct am_request *r, uint8_t *bytes);

struct am_reply {
    uint64_t id;
    int status;
    const uint8_t *body; /* one msgpack object */
    uint32_t body_len;
};

int am_reply_decode(struct am_reply *r, const uint8_t *body, size_t len);

/* Encoders append one whole frame (header included) to out. They return 0 or
 * -ENOMEM; on error out is left as it was. payload/body must each be exactly
 * one msgpack object. */
int am_encode_call(struct am_buf *out, int kind, uint64_t id, const char *type, size_t type_len,
                   const char *actor, size_t actor_len, const char *action, size_t action_len,
                   const uint8_t *payload, size_t payload_len);
int am_encode_hello(struct am_buf *out, uint64_t id, const char *role);
/* HELLO role "peer" with the sending node's name. */
int am_encode_hello_peer(struct am_buf *out, uint64_t id, const char *name);
/* FORWARD of a decoded CALL or CAST (r->kind), or of a FORWARD again
 * (r->fwd_kind): names and payload bytes are copied unchanged. */
int am_encode_forward(struct am_buf *out, uint64_t id, const struct am_request *r, unsigned hops,
                      uint64_t ring_version);
int am_encode_status(struct am_buf *out, uint64_t id);
/* HANDOFF or REPLICATE (kind) of the snapshot of key. */
int am_encode_snapshot(struct am_buf *out, int kind, uint64_t id, const char *key,
                       size_t key_len, uint64_t epoch, uint64_t seq, const uint8_t *state,
                       size_t state_len);
int am_encode_handoff(struct am_buf *out, uint64_t id, const char *key, size_t key_len,
                      uint64_t epoch, uint64_t seq, const uint8_t *state, size_t state_len);
/* A message with no field but its id: STATUS, MEMBERS, LEAVE, RING, ACTORS
 * or HANDOFF_DONE. */
int am_encode_simple(struct am_buf *out, int kind, uint64_t id);
/* FETCH of the newest copy of key. */
int am_encode_fetch(struct am_buf *out, uint64_t id, const char *key, size_t key_len);
/* DIGEST or VERSIONS (kind): ring_version, and the digests or entries as
 * one bin. */
int am_encode_digest(struct am_buf *out, int kind, uint64_t id, uint64_t ring_version,
                     const uint8_t *digests, size_t len);
int am_encode_sync(struct am_buf *out, uint64_t id, const uint8_t *data, size_t len);
int am_encode_reply(struct am_buf *out, uint64_t id, int status, const uint8_t *body,
                    size_t body_len);
/* A failed reply whose body is the message msg (copied as a msgpack str). */
int am_encode_error(struct am_buf *out, uint64_t id, int status, const char *msg);

#endif
