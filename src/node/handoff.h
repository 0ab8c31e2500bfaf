/* handoff.h - a leaving node hands its actors' state to their next owners.
 *
 * When a node leaves gracefully (SIGTERM, SIGINT, `amesh leave`) it first
 * finishes what is in flight and writes every changed actor (the runtime's
 * shutdown), then, before it tells the cluster it is leaving, sends the
 * snapshot of every actor it owns to the member that will own it once it is
 * gone (the owner on the ring without this node), as HANDOFF frames over the
 * peer streams, at most HANDOFF_WINDOW at a time. The receiver stores each
 * snapshot (group-committed and fsynced like any write) and answers once it
 * is on disk. Only then does the node spread `left`: by the time the other
 * members place its actors elsewhere, their state is there.
 *
 * A receiver takes a HANDOFF only from the node that owns the actor by the
 * receiver's own ring, and only for an actor not active on the receiver;
 * otherwise it refuses it (unavailable) and the sender counts it failed and
 * logs it: its copy stays in its own data directory.
 *
 * What this does not cover (yet): a joining node does not receive the state
 * of the actors it takes over, a node that dies hands nothing off (no
 * replicas), and calls that reach the leaving node while it hands off wait
 * for their --forward-timeout at the node that forwarded them. */
#ifndef AM_HANDOFF_H
#define AM_HANDOFF_H

#include "peer.h"
#include "proto.h"
#include "ring.h"
#include "runtime.h"
#include "store.h"
#include "swim.h"

#include <stdint.h>
#include <uv.h>

struct am_handoff_env {
    uv_loop_t *loop;
    struct am_store *store;
    struct am_runtime *rt;
    struct am_peers *peers;
    const struct am_swim *core; /* member addresses */
    const char *self;           /* this node's name */
};

struct am_handoff_stats {
    uint64_t sent;     /* snapshots handed to their next owner and stored there */
    uint64_t failed;   /* snapshots that could not be handed off (kept here) */
    uint64_t received; /* snapshots taken from a leaving owner and stored */
    uint64_t refused;  /* snapshots refused: sender not the owner, actor active here */
};

/* Hands off every stored snapshot this node owns by ring (in which it is
 * member self_idx; -1 or a ring of this node alone: nothing to do), then
 * calls done(arg) once every one is answered, stored or failed. Counts into
 * st, which must outlive the handoff. Returns 0 (done will run, possibly
 * before this returns) or a negative code when it could not start (done
 * never runs). */
int am_handoff_leave(const struct am_handoff_env *env, const struct am_ring *ring, int self_idx,
                     struct am_handoff_stats *st, void (*done)(void *arg), void *arg);

/* A HANDOFF r from the peer named peer: stored when peer owns the actor by
 * ring and it is not active here; cb(ctx, r->id, status, body, len) runs
 * once it is on disk (or failed). Returns 0, or a negative code with err set
 * (cb never runs). */
int am_handoff_take(const struct am_handoff_env *env, const struct am_ring *ring, const char *peer,
                    const struct am_request *r, am_reply_fn cb, void *ctx,
                    struct am_handoff_stats *st, char *err, size_t errlen);

#endif
