/* peer.h - streams to other nodes that carry forwarded calls.
 *
 * A node that gets a call for an actor another node owns hands it to that
 * node over a peer stream: one TCP connection from this node to each peer it
 * forwards to (the peer answers on the same connection, so each ordered pair
 * of nodes has one stream). The stream opens with HELLO role "peer" and this
 * node's name, then carries FORWARD frames one way and REPLY frames back
 * (docs/protocol.md). The names and payload bytes of a call are copied into
 * the FORWARD unchanged; its reply is handed back to whoever forwarded it.
 *
 * Everything is bounded, per peer:
 *   - frames queued this loop turn go out in one write;
 *   - at most max_pending calls wait for replies and at most max_out bytes
 *     wait to be written; past either, a new call is refused at once with
 *     AM_EOVERLOAD (retryable) instead of queueing: a peer that stops reading
 *     costs the sender a fixed amount of memory;
 *   - a call without a reply after timeout_ms fails with AM_ST_TIMEOUT; a
 *     stream that has read nothing for timeout_ms while calls wait is closed,
 *     which frees its buffers; its calls fail with AM_ST_TIMEOUT;
 *   - a stream that fails (refused, reset, malformed reply, refused HELLO)
 *     fails its calls with AM_ST_UNAVAILABLE, and new calls to that peer fail
 *     at once for a backoff (RETRY_MIN_MS doubling to RETRY_MAX_MS) before
 *     the next connection attempt.
 * A call that failed after it was written may or may not have taken effect
 * at the owner; one refused before it was written did not.
 *
 * Every forwarded call gets exactly one callback: its reply, a failure, or
 * AM_ST_SHUTTING_DOWN from am_peers_close. */
#ifndef AM_PEER_H
#define AM_PEER_H

#include "proto.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct am_peers;
struct am_peer;

/* The outcome of a forwarded call (the runtime's reply callback type). */
typedef void (*am_peer_reply_fn)(void *ctx, uint64_t req_id, int status, const uint8_t *body,
                                 size_t len);

struct am_peers_opts {
    const char *name;                 /* this node's name, sent in HELLO; copied */
    const struct sockaddr_in *source; /* local address for outgoing streams, or NULL; copied */
    const uint8_t *key;               /* 32-byte cluster key or NULL; copied */
    unsigned timeout_ms;              /* reply deadline of a forwarded call */
    unsigned max_pending;             /* calls waiting for replies, per peer */
    size_t max_out;                   /* bytes waiting to be written, per peer */
    size_t max_frame;                 /* largest reply frame body accepted */
};

struct am_peers_stats {
    uint64_t forwarded;     /* calls written to a peer stream */
    uint64_t handoffs;      /* HANDOFF snapshots written to a peer stream */
    uint64_t replicas;      /* REPLICATE snapshots written to a peer stream */
    uint64_t fetches;       /* FETCH, DIGEST and VERSIONS requests written to a peer stream */
    uint64_t replies;       /* replies received for them */
    uint64_t refused;       /* refused at once: queue full or peer in backoff */
    uint64_t timeouts;      /* calls failed for want of a reply */
    uint64_t failed;        /* calls failed because their stream failed */
    uint64_t connects;      /* streams opened */
    uint64_t stream_errors; /* streams that failed (refused, reset, malformed, stuck) */
    uint64_t bad_frames;    /* malformed frames read from peers */
    uint64_t streams;       /* open now */
    uint64_t pending;       /* calls waiting for replies now */
    uint64_t queued_bytes;  /* bytes waiting to be written now */
    uint64_t bytes_in, bytes_out;
};

int am_peers_new(struct am_peers **out, uv_loop_t *loop, const struct am_peers_opts *o);

/* The peer of that name, created on first use (no connection yet); its
 * address is updated when it changed (a restarted node). NULL when out of
 * memory. A peer lives as long as the set. */
struct am_peer *am_peers_get(struct am_peers *ps, const char *name, const char *addr);

/* Forwards a decoded CALL, CAST or FORWARD r with the given hop count, or
 * sends a HANDOFF or REPLICATE r (key in type, state in payload), a FETCH r
 * (key in type) or HANDOFF_DONE r (hops and ring_version unused); the peer's reply comes back the same way. cb
 * runs exactly once, later, with ctx and reply_id (never before this
 * returns). Returns 0, or a negative code and cb never runs: AM_EOVERLOAD
 * (queues full), AM_EUNAVAIL (peer unreachable, in backoff), AM_ESHUTDOWN,
 * -ENOMEM; err then says why, naming the peer. */
int am_peer_forward(struct am_peer *p, const struct am_request *r, unsigned hops,
                    uint64_t ring_version, uint64_t reply_id, am_peer_reply_fn cb, void *ctx,
                    char *err, size_t errlen);

/* The member left or died: its stream is closed and its calls fail with
 * AM_ST_UNAVAILABLE now rather than at their timeout. */
void am_peers_drop(struct am_peers *ps, const char *name, const char *why);

/* Refuses new calls (AM_ESHUTDOWN), lets the waiting ones end with their
 * reply or their timeout, then closes every stream, frees the set and
 * calls done (may be NULL) once its handles are closed. Not from inside a
 * reply callback. */
void am_peers_close(struct am_peers *ps, void (*done)(void *arg), void *arg);

/* All zero for NULL (a node whose set is closed). */
void am_peers_get_stats(const struct am_peers *ps, struct am_peers_stats *st);

#endif
