/* replica.h - every committed state also lives on the next nodes of the ring.
 *
 * With --replicas R (default 2) each actor's state is kept by its owner and
 * by the next R-1 distinct members after the owner on the ring (its
 * replicas), in their "replicas" database (store.h). The runtime hands
 * every state it writes to am_replication_send (its replicator, runtime.h)
 * as the local write starts; this sends it in a REPLICATE frame over the
 * peer streams to each replica, which stores it, group-committed and
 * fsynced like any write, and answers once it is on disk. In durable mode
 * the caller's reply waits for the local commit and those answers.
 *
 * Versions decide (store.h): a replica keeps a state only when it is newer
 * than every copy it holds. When it holds the same version or a newer one,
 * it answers with its newest copy [epoch, seq, state] instead: the sender
 * is a stale owner (it was paused or cut off while another node took the
 * actor over). The sender's runtime then fences the actor (its callers get
 * `unavailable`, retryable) and the newer copy is stored here, so the next
 * activation starts from it.
 *
 * A replica that cannot be reached (its stream fails or times out, or its
 * queue is full) does not fail the write: the state is committed on the
 * owner and on the replicas that answered, and the shortfall is counted
 * (`unreplicated` in status). The key is queued, and every second the
 * owner sends its stored state again to the key's replicas by its ring
 * then (if it still owns the key), until they all take it: a replica that
 * was unreachable for a moment (restarted, paused, its stream backing off)
 * gets what it missed without waiting for the actor's next write. The ring
 * drops a dead member within the failure detector's time, and the repair
 * after each ring change (am_handoff_move) copies states to the replicas
 * that gained them.
 *
 * When an owner dies, its first replica is the next owner by the ring; it
 * activates the actor from the newest copy it holds (am_store_get reads
 * both databases), with a new epoch, so the old owner, should it come back,
 * cannot overwrite it. */
#ifndef AM_REPLICA_H
#define AM_REPLICA_H

#include "peer.h"
#include "proto.h"
#include "ring.h"
#include "runtime.h"
#include "store.h"

#include <stdint.h>
#include <uv.h>

struct am_replica_stats {
    uint64_t sent;         /* states sent to replicas */
    uint64_t acked;        /* ... and stored there */
    uint64_t stale;        /* ... answered with a newer copy (this node was a stale owner) */
    uint64_t unreplicated; /* ... that could not be delivered (replica unreachable, queue full) */
    uint64_t received;     /* REPLICATE frames taken from owners */
    uint64_t stored;       /* ... stored as this node's replica */
    uint64_t newer_here;   /* ... answered with a newer copy held here */
    uint64_t retried;      /* states sent again after a REPLICATE failed */
    uint64_t retry_pending; /* keys waiting to be sent again, now */
    uint64_t retry_dropped; /* failed keys not queued: the queue was full */
};

struct am_replica_retry;

struct am_replication {
    uv_loop_t *loop;
    struct am_store *store;
    struct am_runtime *rt;
    const char *self;
    unsigned copies; /* R: the owner's copy included */
    /* The current ring and its peer streams (ring_peers[i] for member i,
     * NULL for this node), updated by the node on every rebuild. */
    const struct am_ring *ring;
    struct am_peer *const *ring_peers;
    int self_idx; /* this node in ring, or -1 */
    struct am_replica_stats st;
    struct am_replica_retry *retry; /* created at the first failure */
};

/* Queues key to be sent to its replicas again (anti-entropy found them
 * behind), as a failed REPLICATE does. */
void am_replication_queue(struct am_replication *rp, const char *key, size_t len);

/* Stops sending again and frees the queue (the node stops). */
void am_replication_close(struct am_replication *rp);

/* A replica answered a REPLICATE with its newer copy, body [epoch, seq,
 * state]: stores it here as a replica record if newer than what is here
 * (so the actor's next activation on this node starts from it). A body of
 * another shape is ignored. */
void am_replication_keep_newer(struct am_store *store, const char *key, size_t key_len,
                               const uint8_t *body, size_t len);

/* The runtime's replicator (runtime.h): rp is its arg. */
unsigned am_replication_send(void *rp, const char *key, size_t key_len, uint64_t epoch,
                             uint64_t seq, const uint8_t *state, size_t len,
                             am_replica_done_fn done, void *ctx);

/* A REPLICATE r from the peer named peer: stored when newer than every
 * copy held here (an active actor here with an older version is fenced
 * first); cb(ctx, r->id, AM_ST_OK, body) once it is on disk, body nil, or
 * [epoch, seq, state] of the newest copy held here when that is as new or
 * newer. Returns 0, or a negative code with err set (cb never runs). */
int am_replication_take(struct am_replication *rp, const char *peer, const struct am_request *r,
                        am_reply_fn cb, void *ctx, char *err, size_t errlen);

#endif
