/* gossip.h - the libuv driver of the membership core (swim.h).
 *
 * Owns one UDP socket bound to the node's address (the same port as the
 * client protocol's TCP listener), one timer, and the outgoing push-pull
 * streams. It turns the core's actions into I/O:
 *
 *   PACKET  one datagram to the address, sent at once with uv_udp_try_send
 *           (a full socket buffer drops it: UDP is lossy anyway and the
 *           protocol retransmits);
 *   STREAM  a TCP connection to the member's port: HELLO role "member", one
 *           SYNC frame with the push-pull message, the SYNC reply fed back
 *           to the core, close. Bounded: at most MAX_STREAMS at once, each
 *           given STREAM_TIMEOUT_MS; a failure is reported to the core
 *           (am_swim_on_stream_error), which retries on its own schedule;
 *   EVENT   handed to the owner's callback (logging, and later the ring).
 *
 * The other side of a stream is the node's client server: it hands a SYNC
 * frame to am_gossip_sync, whose reply goes back on the same connection.
 *
 * With a cluster key every datagram is sealed (seal.h): a datagram that does
 * not open with the key is dropped and counted before the core sees it. */
#ifndef AM_GOSSIP_H
#define AM_GOSSIP_H

#include "buf.h"
#include "swim.h"

#include <netinet/in.h>
#include <stdint.h>
#include <uv.h>

struct am_gossip;

typedef void (*am_gossip_event_fn)(void *arg, const struct am_swim_action *ev);

struct am_gossip_opts {
    const char *name;                 /* this node's name */
    const char *advertise;            /* "A.B.C.D:PORT" others reach it at */
    const struct sockaddr_in *bind;   /* UDP bind address */
    const char *profile;              /* lan, local or wan */
    const char *const *seeds;         /* --join addresses; may be empty */
    size_t nseeds;
    uint64_t incarnation;             /* the node's stored incarnation */
    const uint8_t *key;               /* 32-byte cluster key, or NULL */
    am_gossip_event_fn on_event;      /* may be NULL */
    void *arg;
};

/* Binds the UDP socket, starts the core (and the join, when there are
 * seeds). On error err names the cause (address in use, bad seed). */
int am_gossip_start(struct am_gossip **out, uv_loop_t *loop, const struct am_gossip_opts *o,
                    char *err, size_t errlen);

/* A SYNC request body (a push-pull message) received by the client server
 * on a "member" connection: fed to the core; the answering push-pull
 * message is appended to reply. Returns 0, or AM_EPROTO for a malformed
 * message (counted; nothing changed). */
int am_gossip_sync(struct am_gossip *g, const uint8_t *msg, size_t len, struct am_buf *reply);

/* Spreads this node's `left` state and calls done once the core says the
 * news has had its round of gossip (or after a bound of a few seconds).
 * The driver keeps running until am_gossip_close. */
void am_gossip_leave(struct am_gossip *g, void (*done)(void *arg), void *arg);

/* Stops timers, aborts open streams, closes the socket, frees g, then calls
 * done (may be NULL) from the loop. */
void am_gossip_close(struct am_gossip *g, void (*done)(void *arg), void *arg);

/* The core, for views (am_swim_count, am_swim_member_at) and stats. */
const struct am_swim *am_gossip_core(const struct am_gossip *g);

struct am_gossip_stats {
    uint64_t streams_out, stream_errors, streams_in;
    uint64_t unauthenticated; /* datagrams or streams dropped: not sealed with our key */
    uint64_t send_errors;     /* datagrams the socket did not take */
    uint64_t conflicts;       /* name conflicts seen */
};

void am_gossip_get_stats(const struct am_gossip *g, struct am_gossip_stats *st);

#endif
