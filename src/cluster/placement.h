/* placement.h - who keeps copies of an actor's state, and what a node sends
 * of the states it stores when its ring changes.
 *
 * Pure functions of rings: no I/O, no clock. node/replica.c and
 * node/handoff.c act on their answers; the simulation (tests/sim) drives the
 * same functions over hundreds of nodes and checks the invariants.
 *
 * An actor's owner is its member on the ring (ring.h); its replicas are the
 * next copies-1 distinct members after the owner, clockwise. */
#ifndef AM_PLACEMENT_H
#define AM_PLACEMENT_H

#include "ring.h"

#include <stddef.h>
#include <stdint.h>

/* Copies of a state at most, the owner's included (--replicas). */
#define AM_PLACEMENT_MAX_COPIES 7

/* The members a node (self_idx in ring, -1 if absent) sends a state it
 * writes to: the key's owner and the members after it, the node itself left
 * out, the first copies-1 of them. For the owner these are its replicas; a
 * node that writes an actor it no longer owns (releasing it after a ring
 * change) sends to the owner first. Writes member indexes of ring to out
 * (room for copies-1) and returns how many. */
size_t am_placement_targets(const struct am_ring *ring, int self_idx, uint64_t key_hash,
                            unsigned copies, int *out);

enum am_placement_kind {
    AM_PLACE_HANDOFF = 1,   /* to the key's new owner */
    AM_PLACE_REPLICATE = 2, /* to a member that became one of its replicas */
};

struct am_placement_send {
    int to; /* member index in the new ring */
    enum am_placement_kind kind;
};

/* What a node sends of one key it stores when its ring changes from `from`
 * (the node at from_self, -1 if absent) to `to` (at to_self; -1: the node is
 * leaving, `to` is the ring without it):
 *   - a HANDOFF to the new owner, when the node owned the key by `from` and
 *     does not by `to`;
 *   - REPLICATEs, when the node owns the key by `to`, to each of its
 *     replicas by `to` that was not one by `from` (to all of them when the
 *     node did not own the key by `from`: it took over from a member that
 *     is gone, from the copy it kept).
 * Writes to out (room for AM_PLACEMENT_MAX_COPIES) and returns how many. */
size_t am_placement_plan(const struct am_ring *from, int from_self, const struct am_ring *to,
                         int to_self, uint64_t key_hash, unsigned copies,
                         struct am_placement_send *out);

#endif
