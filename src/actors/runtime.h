/* runtime.h - virtual actors on one event loop.
 *
 * The runtime activates an actor on its first message (loading its snapshot
 * from the store), runs its handler one message at a time, writes new states
 * back to the store, and deactivates actors that stay idle.
 *
 * Durability modes:
 *   durable (sync_interval_ms == 0): a reply is released only once every
 *     state change it may have observed is committed and fsynced. Changes of
 *     many actors share one transaction (group commit); an actor with a write
 *     in flight keeps handling messages, and the next write covers them all.
 *   interval (sync_interval_ms > 0): replies are released at once; dirty
 *     actors are written every sync_interval_ms, on deactivation and at
 *     shutdown. A crash loses at most the last interval.
 *
 * All state is owned by the loop thread that runs the runtime: nothing here
 * is shared between threads, so one runtime per shard thread is possible. */
#ifndef AM_RUNTIME_H
#define AM_RUNTIME_H

#include "registry.h"
#include "store.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct am_runtime_opts {
    size_t max_payload;        /* bytes of one message payload */
    size_t max_state;          /* bytes of one actor's state */
    size_t max_reply;          /* bytes of one reply */
    unsigned mailbox;          /* messages accepted and not yet answered, per actor */
    size_t max_actors;         /* active actors in memory */
    uint64_t idle_ms;          /* deactivate after this long without a message */
    uint64_t sync_interval_ms; /* 0: durable; else the interval mode's period */
};

struct am_runtime_stats {
    uint64_t active;        /* actors in memory now */
    uint64_t activations;   /* total */
    uint64_t deactivations; /* total */
    uint64_t calls, casts;  /* accepted */
    uint64_t ok, errors;    /* completed messages */
    uint64_t refused;       /* refused before a mailbox (busy, overloaded, ...) */
    uint64_t snapshots;     /* snapshot writes completed */
    uint64_t write_errors;  /* snapshot writes that failed */
    uint64_t waiting;       /* replies held for a commit now */
    uint64_t lost;          /* interval mode: unsaved states given up at shutdown */
    uint64_t fenced;        /* actors dropped because a newer copy exists elsewhere */
    uint64_t queued;        /* messages accepted into mailboxes and not completed, now */
};

/* Messages completed per actor type. */
#define AM_RUNTIME_MAX_TYPES 64
struct am_runtime_type_stats {
    const struct am_actor_type *type; /* its name: type->name */
    uint64_t ok, errors;
};

struct am_runtime;

/* Called once per accepted CALL with the outcome. status is a wire status;
 * body is one msgpack object (the reply, or a str with the error message),
 * borrowed for the call. */
typedef void (*am_reply_fn)(void *ctx, uint64_t req_id, int status, const uint8_t *body,
                            size_t len);

/* store and reg are borrowed and must outlive the runtime. */
int am_runtime_new(struct am_runtime **out, uv_loop_t *loop, struct am_store *store,
                   const struct am_registry *reg, const struct am_runtime_opts *o);

/* Submits one message. For a CALL (cb non-NULL) cb runs exactly once, later
 * or before this returns 0. A CAST passes cb NULL: it is answered by nobody.
 * Returns 0 when the message was accepted into the actor's mailbox, else a
 * negative code and cb never runs; err then holds a message for the caller:
 *   AM_ENOTYPE, AM_ETOOBIG (payload), AM_EBUSY (mailbox full),
 *   AM_EOVERLOAD (max_actors active and none can be evicted now),
 *   AM_ESTORAGE (the snapshot could not be read), AM_ESHUTDOWN. */
int am_runtime_submit(struct am_runtime *rt, uint64_t req_id, const char *type, size_t type_len,
                      const char *id, size_t id_len, const char *action, size_t action_len,
                      const uint8_t *payload, size_t payload_len, am_reply_fn cb, void *ctx,
                      char *err, size_t errlen);

void am_runtime_get_stats(const struct am_runtime *rt, struct am_runtime_stats *st);

/* How long messages took from acceptance into a mailbox to their answer
 * (durable mode: the commit included): count[i] messages took more than
 * am_runtime_latency_le_us[i-1] and at most am_runtime_latency_le_us[i]
 * microseconds (the last bucket: the rest). */
#define AM_RUNTIME_LATENCY_BUCKETS 15
extern const uint64_t am_runtime_latency_le_us[AM_RUNTIME_LATENCY_BUCKETS];
struct am_runtime_latency {
    uint64_t count[AM_RUNTIME_LATENCY_BUCKETS];
    uint64_t sum_us;
};
void am_runtime_get_latency(const struct am_runtime *rt, struct am_runtime_latency *out);

/* The per-type rows (*out, valid until the runtime is freed) and how many:
 * one per type activated so far, at most AM_RUNTIME_MAX_TYPES (later types
 * are counted in the last row). */
size_t am_runtime_get_type_stats(const struct am_runtime *rt,
                                  const struct am_runtime_type_stats **out);

/* Deactivates every active actor for which keep(arg, key, len) returns 0:
 * at once when it has no message or write pending, else its state write is
 * started and the actor stays until a later call finds it quiescent.
 * freed(arg, key, len), when set, is told each one deactivated (its state
 * is in the store by then). Returns how many such actors remain active
 * (call again later until 0). Used when this node stops owning actors. */
size_t am_runtime_release(struct am_runtime *rt,
                          int (*keep)(void *arg, const char *key, size_t len),
                          void (*freed)(void *arg, const char *key, size_t len), void *arg);

/* Replication. send is called for every state write as it is submitted to
 * the store (epoch, seq: its version; state borrowed for the call). It
 * sends the state to the actor's replicas and returns how many it sent it
 * to; done(ctx, stale) then runs once for each of them, later (never before
 * send returns): stale 1 when that replica holds the same version or a
 * newer one. A reply waits for the local commit and every done (durable
 * mode). A replica that cannot be reached is the sender's business: it
 * calls done(ctx, 0) and counts it.
 *
 * A write found stale (by a replica, or by the local store, which keeps
 * only newer versions) fences its actor: the messages that saw that state
 * fail with AM_ST_UNAVAILABLE, later ones are refused with AM_EUNAVAIL, and
 * the actor leaves memory once quiet; its next message activates it from
 * the newest copy stored here. */
typedef void (*am_replica_done_fn)(void *ctx, int stale);
struct am_replicator {
    unsigned (*send)(void *arg, const char *key, size_t key_len, uint64_t epoch, uint64_t seq,
                     const uint8_t *state, size_t len, am_replica_done_fn done, void *ctx);
    void *arg;
};

/* Sets (or with NULL clears) the replicator; copied. */
void am_runtime_set_replicator(struct am_runtime *rt, const struct am_replicator *r);

/* A newer copy (epoch, seq) of key arrived from another node. Returns 0
 * when the actor is not active, -1 when it is active with that version or
 * a newer one (nothing done), 1 when it was older and is now fenced (see
 * above; freed at once when quiet). */
int am_runtime_fence(struct am_runtime *rt, const char *key, size_t len, uint64_t epoch,
                     uint64_t seq);

/* Fences every active actor (as am_runtime_fence with a newer version):
 * this node may have been declared dead and its actors served elsewhere
 * meanwhile. Returns how many were fenced. */
size_t am_runtime_fence_all(struct am_runtime *rt);

/* 1 when the actor of key ("type/id") is active here, else 0. */
int am_runtime_is_active(const struct am_runtime *rt, const char *key, size_t len);

/* Calls fn for each active actor's key ("type/id"). */
void am_runtime_each_active(const struct am_runtime *rt,
                            void (*fn)(void *arg, const char *key, size_t len), void *arg);

/* Stops taking messages, writes every dirty actor, and calls done once all
 * writes have completed and every reply was released. */
void am_runtime_shutdown(struct am_runtime *rt, void (*done)(void *arg), void *arg);

/* Frees everything; after shutdown's done, before the store is closed. The
 * loop must run once more to close the runtime's handles. NULL is a no-op. */
void am_runtime_free(struct am_runtime *rt);

#endif
