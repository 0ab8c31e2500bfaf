/* peer.h - the calls a node sends to other nodes over peer streams.
 *
 * A node that gets a call for an actor another node owns hands it to that
 * node over a peer stream, and replication, handoff and fetches travel the
 * same way. Each pair of nodes shares one TCP connection (a `link`), which
 * carries requests and replies both ways: whichever node needs it first
 * dials, says HELLO role "peer" with its name, and the other node adopts the
 * accepted connection for its own calls to the dialer. When both dial at
 * once, both keep the connection dialed by the node whose name sorts first;
 * the other one serves the calls already sent on it and is closed by its
 * dialer a reply timeout later. The I/O of a link (connect, HELLO, the
 * cluster key, one write per loop turn, reading and splitting frames) is the
 * server's (src/node/server.h); this module owns what waits on a link: the
 * calls sent to each peer and their callbacks (docs/protocol.md).
 *
 * Everything is bounded, per peer:
 *   - at most max_pending calls wait for replies and at most max_out bytes
 *     wait to be written; past either, a new call is refused at once with
 *     AM_EOVERLOAD (retryable) instead of queueing: a peer that stops reading
 *     costs the sender a fixed amount of memory;
 *   - a call without a reply after timeout_ms fails with AM_ST_TIMEOUT; a
 *     link that has read nothing for timeout_ms while calls wait is closed,
 *     which frees its buffers; its calls fail with AM_ST_TIMEOUT;
 *   - a link that fails (refused, reset, malformed frame, refused HELLO)
 *     fails its calls with AM_ST_UNAVAILABLE, and new calls to that peer fail
 *     at once for a backoff (RETRY_MIN_MS doubling to RETRY_MAX_MS) before
 *     the next connection attempt.
 * A call that failed after it was written may or may not have taken effect
 * at the owner; one refused before it was written did not.
 *
 * Every call gets exactly one callback: its reply, a failure, or
 * AM_ST_SHUTTING_DOWN from am_peers_close. */
#ifndef AM_PEER_H
#define AM_PEER_H

#include "buf.h"
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

/* The I/O of links, done by the node's server. A link is opaque here. */
struct am_peer_io {
    /* Opens a link to the peer p, named name, at `to`: HELLO role "peer"
     * with this node's name goes first, and frames queued meanwhile wait
     * for the connection. The link reports back through am_peer_link_up,
     * _reply, _bytes and _down. NULL, with err set, when it cannot start. */
    void *(*dial)(void *arg, struct am_peer *p, const char *name, const struct sockaddr_in *to,
                  char *err, size_t errlen);
    struct am_buf *(*out)(void *link); /* frames appended here are written ... */
    void (*kick)(void *link);          /* ... at the end of this loop turn */
    size_t (*queued)(const void *link); /* bytes the kernel has not taken yet */
    /* Closes the link at once; am_peer_link_down does not follow. */
    void (*close)(void *link);
    void *arg;
};

struct am_peers_opts {
    const char *name;         /* this node's name (sent in HELLO); copied */
    unsigned timeout_ms;      /* reply deadline of a call */
    unsigned max_pending;     /* calls waiting for replies, per peer */
    size_t max_out;           /* bytes waiting to be written, per peer */
    const struct am_peer_io *io; /* copied */
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
    uint64_t connects;      /* links this node dialed that said HELLO back */
    uint64_t accepts;       /* links other nodes dialed, taken for calls to them */
    uint64_t stream_errors; /* links that failed (refused, reset, malformed, stuck) */
    uint64_t bad_frames;    /* malformed frames read from peers */
    uint64_t streams;       /* peers with a link now */
    uint64_t pending;       /* calls waiting for replies now */
    uint64_t queued_bytes;  /* bytes waiting to be written now */
    uint64_t bytes_in, bytes_out; /* on links, both directions of traffic */
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

/* ---- reports from the links (the server calls these) ---- */

/* The link is up: a link this node dialed got its HELLO answered by the
 * right node (dialed 1), or another node's HELLO on an accepted connection
 * was accepted (dialed 0). Calls to p go on it unless p already has a link
 * that wins (see the top of this file). */
void am_peer_link_up(struct am_peer *p, void *link, int dialed);

/* A REPLY frame read on one of p's links. */
void am_peer_link_reply(struct am_peer *p, const struct am_reply *r);

/* Bytes read from and written to one of p's links (a read also shows
 * that the link is alive). */
void am_peer_link_bytes(struct am_peer *p, size_t in, size_t out);

/* A malformed frame was read on one of p's links (the link is closed). */
void am_peer_link_bad_frame(struct am_peer *p);

/* The link closed or failed, for the reason why ("closed the peer stream",
 * "cannot connect: connection refused", ...): the calls on it fail. */
void am_peer_link_down(struct am_peer *p, void *link, const char *why);

/* All zero for NULL (a node whose set is closed). */
void am_peers_get_stats(const struct am_peers *ps, struct am_peers_stats *st);

#endif
