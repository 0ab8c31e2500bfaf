/* swim.h - SWIM membership with the Lifeguard refinements, as a protocol
 * core without I/O: events in (a packet arrived, a stream message arrived,
 * time passed), actions out (send these bytes to that address, a member
 * changed). The libuv driver and the simulator in tests/sim both feed it.
 *
 * What it implements (Das et al., SWIM, 2002; Dadgar et al., Lifeguard, 2018;
 * the timings of HashiCorp memberlist's profiles):
 *  - randomized round-robin probing: a shuffled list of members walked in
 *    order, reshuffled at each pass; ping/ack with a probe timeout; on no ack,
 *    ping-req through `indirect_checks` random members, who ping on our
 *    behalf and forward the ack, or a nack if they got none (Lifeguard);
 *  - suspicion with incarnation numbers: a member not acked by the end of
 *    the probe interval becomes suspect; a suspect that stays so past the
 *    suspicion timeout is declared dead; a member that hears it is suspected
 *    refutes with a higher incarnation;
 *  - Lifeguard: a local health multiplier (0..awareness_max) that grows on
 *    missed acks / nacks and on having to refute, shrinks on successful
 *    probes, and scales the probe interval and timeout; suspicion timeouts
 *    that start at suspicion_max_mult x and shrink toward suspicion_mult x
 *    the base (log10(N) x probe interval) as independent suspicions arrive
 *    (k = suspicion_mult - 2 confirmations), and on to (suspicion_mult - 1)
 *    x the base at 2k confirmations; the buddy system (a ping to a
 *    suspect carries the suspicion, so it can refute at once);
 *  - infection-style dissemination: alive/suspect/dead/left updates
 *    piggybacked on every packet, each retransmitted up to
 *    retransmit_mult x ceil(log10(N + 1)) times, least-sent first; packets
 *    at most max_packet bytes; plus gossip to gossip_nodes random members
 *    every gossip_interval;
 *  - push-pull: the full member list exchanged over a stream on join and
 *    every push_pull_interval with one random member (anti-entropy);
 *  - join through seeds, retried with backoff while none answers; graceful
 *    leave; dead and left members reaped after reap_ms; dead members and
 *    seeds are still contacted now and then so partitions heal by themselves;
 *  - a live node claiming a name already alive at another address is
 *    refused on both sides (AM_SWIM_EV_CONFLICT).
 *
 * Time is milliseconds from any fixed origin, given by the caller. All
 * randomness comes from `seed`, so a run is reproducible.
 *
 * Ownership: am_swim_* never keep pointers passed in. Actions returned by
 * am_swim_actions point into the core and stay valid until the next call
 * into it. */
#ifndef AM_SWIM_H
#define AM_SWIM_H

#include <stddef.h>
#include <stdint.h>

#define AM_SWIM_MAX_NAME 128
#define AM_SWIM_MAX_ADDR 64

enum am_member_state { AM_MEMBER_ALIVE, AM_MEMBER_SUSPECT, AM_MEMBER_DEAD, AM_MEMBER_LEFT };

/* "alive", "suspect", "dead", "left". */
const char *am_member_state_name(enum am_member_state s);

struct am_swim_config {
    const char *name;               /* unique node name (copied) */
    const char *addr;               /* advertise "A.B.C.D:PORT" (copied) */
    uint64_t seed;                  /* randomness */
    uint64_t incarnation;           /* start at this (the node's stored incarnation) */
    /* Timings; am_swim_profile fills them for "lan", "local" or "wan". */
    uint64_t probe_interval_ms;     /* lan 1000 */
    uint64_t probe_timeout_ms;      /* lan 500 */
    unsigned indirect_checks;       /* lan 3 */
    uint64_t gossip_interval_ms;    /* lan 200 */
    unsigned gossip_nodes;          /* lan 3 */
    unsigned retransmit_mult;       /* lan 4 */
    unsigned suspicion_mult;        /* lan 4 */
    unsigned suspicion_max_mult;    /* lan 6 */
    unsigned awareness_max;         /* lan 8 */
    uint64_t push_pull_interval_ms; /* lan 30000 */
    uint64_t reap_ms;               /* dead/left members forgotten after; lan 30000 (never below 4 x suspicion timeout) */
    size_t max_packet;              /* 1400 */
};

/* Fills the timings of a profile; -EINVAL for an unknown name. */
int am_swim_profile(struct am_swim_config *c, const char *profile);

struct am_swim;

int am_swim_new(struct am_swim **out, const struct am_swim_config *c, uint64_t now);
void am_swim_free(struct am_swim *s); /* NULL is a no-op */

/* ---- events ---- */

/* Starts joining through these seed addresses (push-pull to each, retried
 * with backoff until one answers). */
int am_swim_join(struct am_swim *s, const char *const *seeds, size_t nseeds, uint64_t now);

/* A datagram from addr. Malformed packets are counted and dropped (the
 * return value says why; nothing changes). */
int am_swim_on_packet(struct am_swim *s, const char *from_addr, const uint8_t *p, size_t len,
                      uint64_t now);

/* A whole push-pull message received on a stream from addr. May produce a
 * stream reply (AM_SWIM_ACT_STREAM) to the same address. */
int am_swim_on_stream(struct am_swim *s, const char *from_addr, const uint8_t *p, size_t len,
                      uint64_t now);

/* A stream to addr failed (connection refused, timeout): the driver reports
 * it so the core can retry or try another seed. */
void am_swim_on_stream_error(struct am_swim *s, const char *to_addr, uint64_t now);

/* Runs what is due at `now`. Call it at am_swim_next_deadline() or later. */
void am_swim_tick(struct am_swim *s, uint64_t now);
uint64_t am_swim_next_deadline(const struct am_swim *s);

/* Spreads this node's `left` state; the driver keeps ticking for about a
 * gossip round before it stops (am_swim_leave_done says when). */
int am_swim_leave(struct am_swim *s, uint64_t now);
int am_swim_leave_done(const struct am_swim *s, uint64_t now);

/* ---- actions ---- */

enum am_swim_action_kind {
    AM_SWIM_ACT_PACKET, /* send data as one UDP datagram to addr */
    AM_SWIM_ACT_STREAM, /* send data as one push-pull message on a stream to addr */
    AM_SWIM_ACT_EVENT,  /* a member changed: name, addr, state, incarnation */
};

enum am_swim_event {
    AM_SWIM_EV_JOINED,   /* first seen, or alive again */
    AM_SWIM_EV_UPDATED,  /* state or incarnation changed */
    AM_SWIM_EV_REAPED,   /* forgotten */
    AM_SWIM_EV_CONFLICT, /* another live node claims this node's name, or a name at two addresses */
};

struct am_swim_action {
    enum am_swim_action_kind kind;
    const char *addr;
    const uint8_t *data;
    size_t len;
    enum am_swim_event event;
    const char *name;
    enum am_member_state state;
    uint64_t incarnation;
};

/* The actions produced since the previous call into the core. */
size_t am_swim_actions(struct am_swim *s, const struct am_swim_action **out);

/* ---- views ---- */

struct am_swim_member {
    const char *name;
    const char *addr;
    enum am_member_state state;
    uint64_t incarnation;
};

size_t am_swim_count(const struct am_swim *s);       /* members known, self included */
void am_swim_member_at(const struct am_swim *s, size_t i, struct am_swim_member *m);
int am_swim_find(const struct am_swim *s, const char *name, struct am_swim_member *m);

struct am_swim_stats {
    uint64_t probes, acks, nacks, indirect_probes;
    uint64_t suspicions, refutations, deaths_declared;
    uint64_t corrections; /* stale accusations of this node answered to the accuser */
    uint64_t announces;   /* members told of this node's join directly */
    uint64_t deaths_told; /* members told directly that a push-pull listed them dead */
    uint64_t declared_dead; /* times others declared this node dead (it refuted) */
    uint64_t packets_in, packets_out, bytes_in, bytes_out;
    uint64_t bad_packets;
    unsigned health; /* Lifeguard local health multiplier now */
};

void am_swim_get_stats(const struct am_swim *s, struct am_swim_stats *st);

#endif
