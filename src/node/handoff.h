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
 * A receiver takes a HANDOFF from the node that owns the actor by the
 * receiver's own ring, or for an actor the receiver owns (it was paused or
 * cut off and the sender served the actor meanwhile); otherwise it refuses
 * it (invalid_argument) and the sender counts it failed and logs it: its
 * copy stays in its own data directory.
 *
 * When members join, every node hands the snapshots of the actors that the
 * newcomers now own to them (am_handoff_move), after it has deactivated
 * those actors, then tells each newcomer it is done (HANDOFF_DONE). A node
 * that joins holds the calls for the actors it gained from a member until
 * that member's HANDOFF_DONE, its departure, or a bound (node.c), so that
 * it never serves them from empty or stale state while their owner can
 * still hand them over.
 *
 * Handoffs and replicas are stored only when newer than every copy the
 * receiver holds (store.h); an actor active on the receiver with an older
 * version is fenced (runtime.h) and the handoff taken. A receiver that took
 * a handoff replicates it to the actor's replicas before it answers.
 *
 * The same walk repairs replication after a ring change: the owner of each
 * stored key sends it (REPLICATE) to the members that became its replicas
 * (replica.h). A node that dies hands nothing off: its first replica takes
 * over from the copy it keeps. Calls that reach a leaving node while it
 * hands off wait for their --forward-timeout at the node that forwarded
 * them. */
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
    unsigned copies;            /* --replicas: copies of each state, the owner's included */
    /* Where a taken handoff is passed on (the new owner keeps R copies
     * before it answers); send NULL: nowhere. */
    struct am_replicator repl;
    /* When set and *abort becomes non-zero, a move sends nothing more: it
     * finishes once the snapshots in flight are answered (a stopping node). */
    const int *abort;
    /* When set, called as a HANDOFF from the member this node waits for
     * (the actor's previous owner) is answered OK: its newest copy is here
     * now (stored, or here already), so its calls need not wait for the
     * member's HANDOFF_DONE. */
    void (*taken)(void *arg, const char *key, size_t len);
    void *taken_arg;
};

struct am_handoff_stats {
    uint64_t sent;     /* snapshots handed to their next owner and stored there */
    uint64_t failed;   /* snapshots that could not be handed off (kept here) */
    uint64_t received; /* snapshots taken from a leaving owner and stored */
    uint64_t refused;  /* snapshots refused: sender not the owner, actor active here */
    uint64_t current;  /* snapshots handed here whose version was here already (a replica) */
    uint64_t repaired; /* snapshots sent to members that became their replicas */
};

/* Hands off every stored snapshot this node owns by ring (in which it is
 * member self_idx; -1 or a ring of this node alone: nothing to do), then
 * calls done(arg) once every one is answered, stored or failed. Counts into
 * st, which must outlive the handoff. Returns 0 (done will run, possibly
 * before this returns) or a negative code when it could not start (done
 * never runs). */
int am_handoff_leave(const struct am_handoff_env *env, const struct am_ring *ring, int self_idx,
                     struct am_handoff_stats *st, void (*done)(void *arg), void *arg);

/* Hands off every stored snapshot this node owned by from and another
 * member owns by to, and sends the snapshots this node owns by to to the
 * members that became their replicas (a ring change), as am_handoff_leave.
 * The keys in first (back to back, each NUL-terminated, first_len bytes in
 * all; the actors that were active here) go first: the store is walked for
 * the others once they are answered. from must stay valid until done runs;
 * first is copied. */
int am_handoff_move(const struct am_handoff_env *env, const struct am_ring *from,
                    const struct am_ring *to, const char *first, size_t first_len,
                    struct am_handoff_stats *st, void (*done)(void *arg), void *arg);

/* 1 and *prev set when this node (self_idx in ring) owns key and another
 * member owned it before this node was in the ring (its owner by
 * without_self, ring without this node), else 0. */
int am_handoff_previous_owner(const struct am_ring *ring, const struct am_ring *without_self,
                              int self_idx, const char *key, size_t len, const char **prev);

/* A HANDOFF r from the peer named peer: taken when peer owns it by ring
 * (peer is leaving), or this node owns it, or this node waits for peer's
 * handoff (waiting: this node joined) and peer owned the actor before this
 * node was in the ring (its owner by without_self); stored when newer than
 * every copy here (an active older copy is fenced; an active copy as new
 * or newer makes the handoff moot: answered at once, counted `current`).
 * cb(ctx, r->id, status, body, len) runs once it is on disk (or failed).
 * Returns 0, or a negative code with err set (cb never runs). */
int am_handoff_take(const struct am_handoff_env *env, const struct am_ring *ring,
                    const struct am_ring *without_self, int waiting, const char *peer,
                    const struct am_request *r, am_reply_fn cb, void *ctx,
                    struct am_handoff_stats *st, char *err, size_t errlen);

#endif
