/* swim_proto.h - the SWIM wire formats: UDP packets and push-pull stream
 * messages. Pure encode/decode, no state, no allocation in the decoders.
 *
 * Every byte read here may come from an attacker: decoders use the bounded
 * am_mp_read_* cursor functions, never trust a count or a length, and bound
 * every string (names <= AM_SWIM_MAX_NAME, addrs <= AM_SWIM_MAX_ADDR, both
 * non-empty and without NUL bytes), the messages of a packet
 * (<= AM_SWIM_MAX_MSGS) and the members of a push-pull (<= AM_SWIM_MAX_PP).
 * A decoder that fails returns AM_EPROTO and leaves its cursor unchanged.
 * Decoded strings point into the input (borrowed, not NUL-terminated).
 *
 * ---- Packet (one UDP datagram, at most max_packet bytes) ----------------
 *
 *   offset  bytes  field
 *   0       1      version = AM_SWIM_PROTO_VERSION (anything else: refused)
 *   1       var    sender name            msgpack str, 1..AM_SWIM_MAX_NAME
 *   ..      3      message count n        msgpack array16 header (0xdc nn nn),
 *                                         n <= AM_SWIM_MAX_MSGS (any array
 *                                         header encoding is accepted)
 *   ..      var    n messages, each a msgpack array [type, fields...]
 *   end            nothing may follow the last message
 *
 *   type          array                                            notes
 *   1 ping        [1, seq uint, target str, susp uint|nil]         susp: buddy system,
 *                                                                  "you are suspected at
 *                                                                  this incarnation"
 *   2 ack         [2, seq uint]
 *   3 nack        [3, seq uint]
 *   4 ping-req    [4, seq uint, target str, target addr str]
 *   5 alive       [5, name str, addr str, incarnation uint]
 *   6 suspect     [6, name str, addr str, incarnation uint, accuser str]
 *   7 dead        [7, name str, addr str, incarnation uint, accuser str]
 *   8 left        [8, name str, addr str, incarnation uint]
 *
 *   The element count of each message array must be exactly the one above.
 *   The count header is fixed-width so the encoder can patch it after adding
 *   messages until the next would not fit.
 *
 * ---- Push-pull stream message (one whole message, framed by the driver) -
 *
 *   offset  bytes  field
 *   0       1      version = AM_SWIM_PROTO_VERSION
 *   1       var    flags uint             bit 0 join: the sender is joining
 *                                         bit 1 reply: an answer, not to be answered
 *                                         other bits must be 0
 *   ..      var    sender name str        1..AM_SWIM_MAX_NAME
 *   ..      var    member count n         msgpack array header, n <= AM_SWIM_MAX_PP
 *   ..      var    n members, each [name str, addr str, state uint (0 alive,
 *                  1 suspect, 2 dead, 3 left), incarnation uint]
 *   end            nothing may follow
 */
#ifndef AM_SWIM_PROTO_H
#define AM_SWIM_PROTO_H

#include "buf.h"
#include "swim.h"

#include <stddef.h>
#include <stdint.h>

#define AM_SWIM_PROTO_VERSION 1
#define AM_SWIM_MAX_MSGS 256
#define AM_SWIM_MAX_PP 100000

#define AM_SWIM_PP_JOIN 1u
#define AM_SWIM_PP_REPLY 2u

/* Largest encoded message (a suspect with maximal strings and 8-byte
 * numbers): 1 + 1 + (2 + 128) + (2 + 64) + 9 + (2 + 128) = 337 bytes. The
 * smallest useful max_packet is a header with a maximal name plus one such
 * message. */
#define AM_SWIM_MAX_MSG_BYTES 337
#define AM_SWIM_HDR_MAX_BYTES (1 + 2 + AM_SWIM_MAX_NAME + 3)
#define AM_SWIM_MIN_PACKET (AM_SWIM_HDR_MAX_BYTES + AM_SWIM_MAX_MSG_BYTES)

enum am_swim_msg_type {
    AM_SWIM_MSG_PING = 1,
    AM_SWIM_MSG_ACK = 2,
    AM_SWIM_MSG_NACK = 3,
    AM_SWIM_MSG_PING_REQ = 4,
    AM_SWIM_MSG_ALIVE = 5,
    AM_SWIM_MSG_SUSPECT = 6,
    AM_SWIM_MSG_DEAD = 7,
    AM_SWIM_MSG_LEFT = 8,
};

/* A string that points into a packet (borrowed). */
struct am_swim_str {
    const char *p;
    uint32_t len;
};

struct am_swim_msg {
    enum am_swim_msg_type type;
    uint64_t seq;            /* ping, ack, nack, ping-req */
    struct am_swim_str name; /* ping, ping-req: the target; updates: the member */
    struct am_swim_str addr; /* ping-req: the target's address; updates: the member's */
    uint64_t incarnation;    /* updates; ping: the suspected incarnation if has_suspicion */
    int has_suspicion;       /* ping only */
    struct am_swim_str from; /* suspect, dead: the accuser */
};

struct am_swim_packet_hdr {
    struct am_swim_str sender;
    uint32_t count;
};

/* Decoding a packet: the header, then count messages, then *pos == end. */
int am_swim_packet_decode_hdr(struct am_swim_packet_hdr *h, const uint8_t **pos,
                              const uint8_t *end);
int am_swim_msg_decode(struct am_swim_msg *m, const uint8_t **pos, const uint8_t *end);
/* 0 if [p, p+len) is one well-formed packet, else AM_EPROTO. */
int am_swim_packet_check(const uint8_t *p, size_t len);

/* Encoding a packet into b (borrowed for the writer's lifetime), appended
 * after what b already holds. */
struct am_swim_packet_writer {
    struct am_buf *b;
    size_t start; /* offset of the packet in b */
    size_t count_off;
    size_t max;
    uint32_t count;
};

/* -EINVAL if the name is not 1..AM_SWIM_MAX_NAME bytes or max is below
 * AM_SWIM_MIN_PACKET; -ENOMEM. */
int am_swim_packet_begin(struct am_swim_packet_writer *w, struct am_buf *b, const char *sender,
                         size_t sender_len, size_t max);
/* Appends one message. AM_ETOOBIG when the packet would exceed max bytes or
 * AM_SWIM_MAX_MSGS messages (b is then unchanged); -EINVAL for a string out
 * of bounds; -ENOMEM. */
int am_swim_packet_add(struct am_swim_packet_writer *w, const struct am_swim_msg *m);
/* Writes the final count; the packet is b->data[w->start .. b->len). */
void am_swim_packet_end(struct am_swim_packet_writer *w);

/* ---- push-pull ---- */

struct am_swim_pp_hdr {
    unsigned flags; /* AM_SWIM_PP_JOIN | AM_SWIM_PP_REPLY */
    struct am_swim_str sender;
    uint32_t count;
};

struct am_swim_pp_member {
    struct am_swim_str name;
    struct am_swim_str addr;
    enum am_member_state state;
    uint64_t incarnation;
};

int am_swim_pp_decode_hdr(struct am_swim_pp_hdr *h, const uint8_t **pos, const uint8_t *end);
int am_swim_pp_decode_member(struct am_swim_pp_member *m, const uint8_t **pos, const uint8_t *end);
/* 0 if [p, p+len) is one well-formed push-pull message, else AM_EPROTO. */
int am_swim_pp_check(const uint8_t *p, size_t len);

/* Appends a header announcing count members (<= AM_SWIM_MAX_PP), then the
 * caller appends exactly count members. -EINVAL, -ENOMEM. */
int am_swim_pp_encode_hdr(struct am_buf *b, unsigned flags, const char *sender, size_t sender_len,
                          uint32_t count);
int am_swim_pp_encode_member(struct am_buf *b, const struct am_swim_pp_member *m);

#endif
