/* fetch.h - an owner asks for newer copies before it activates an actor.
 *
 * The copy an owner finds in its own data directory is not always the
 * newest. Its first replica becomes the owner when the owner dies, but a
 * replica that missed a write (it was unreachable: the write was counted
 * `unreplicated`) is behind another replica (R >= 3); a node that joined
 * while the owner had crashed but was not yet declared dead starts with
 * nothing, while the old owner's replica, the one member with the newest
 * copy, hands it over only after its own ring has changed (a race with the
 * first calls). So before a node activates an actor it owns, it sends
 * FETCH [13, id, key] to the next R members after itself on the ring (the
 * key's replicas and one more: the one that held it before a member
 * joined in front), keeps the newest copy they answer with in its
 * "replicas" database (only if newer than what it holds), and only then
 * lets the calls run. Calls for the actor that arrive meanwhile wait with
 * the first. An answer that does not come within the bound (a quarter of
 * --forward-timeout), or a member that cannot be reached, does not stop
 * the activation: it goes ahead with the newest copy it has (the crash of
 * one node is the guarantee; a second one is not).
 *
 * Answering: a FETCH is answered with the newest copy held here, snapshot
 * or replica, as [epoch, seq, state], or nil when there is none.
 *
 * One loop thread; no allocation on the path of a call to an active actor
 * (the caller checks that first). */
#ifndef AM_FETCH_H
#define AM_FETCH_H

#include "proto.h"
#include "replica.h"

#include <stdint.h>
#include <uv.h>

struct am_fetch_stats {
    uint64_t fetches;  /* activations that asked other members first */
    uint64_t newer;    /* ... and found a newer copy than the one here */
    uint64_t timeouts; /* ... and went ahead without some answer, after the bound */
    uint64_t answered; /* FETCHes answered here */
};

/* Runs a call again once its actor's copy is in place (never fetching
 * again): the node's routing. */
typedef void (*am_fetch_run_fn)(void *arg, struct am_request *r, am_reply_fn cb, void *ctx);

struct am_fetch;

/* rp gives the ring, its peer streams and the store (replica.h); wait_ms
 * bounds a fetch. Returns 0 or -ENOMEM. */
int am_fetch_new(struct am_fetch **out, uv_loop_t *loop, struct am_replication *rp,
                 uint64_t wait_ms, am_fetch_run_fn run, void *arg);

/* A call r for actor key that this node owns and does not have active:
 * returns 1 when the call waits for a fetch (cb runs later, through run or
 * with an error), 0 when it may run now (nobody to ask: one copy, alone),
 * or a negative code with err set. */
int am_fetch_hold(struct am_fetch *f, const struct am_request *r, const char *key,
                  size_t key_len, am_reply_fn cb, void *ctx, char *err, size_t errlen);

/* A FETCH r from a peer: answered with the newest copy held here. */
void am_fetch_answer(struct am_fetch *f, const struct am_request *r, am_reply_fn cb, void *ctx);

/* The node stops: calls still waiting fail with `shutting_down`. */
void am_fetch_stop(struct am_fetch *f);

void am_fetch_get_stats(const struct am_fetch *f, struct am_fetch_stats *st);

/* Frees what is left; fetches still waiting for answers are freed when the
 * peer layer answers them (it must be closed before the loop ends). */
void am_fetch_free(struct am_fetch *f);

#endif
