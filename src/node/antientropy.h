/* antientropy.h - replica sets brought back to R copies by digests.
 *
 * Writes reach the replicas as they happen (replica.h), failed ones are
 * sent again, and a ring change repairs the replica sets that changed. What
 * none of that covers is a replica that lost copies while the ring stayed
 * the same: its data directory was replaced, or a write it took was lost.
 * So about every --anti-entropy MS (drawn between 0.5 and 1.5 times it),
 * when its ring has settled (no move running, no handoff awaited), a node
 * picks the next member of its ring, round robin, and compares digests with
 * it:
 *
 *   1. the node walks the states it stores (am_store_each_version) and, for
 *      each key it owns whose replicas include that member, folds
 *      mix(key hash, epoch, seq) into one of 64 buckets (the key hash's top
 *      six bits) by XOR: 64 digests of 8 bytes;
 *   2. it sends them in DIGEST [14, id, ring_version, digests];
 *   3. the member, if its ring has that version, computes the same over the
 *      copies it holds of the keys the sender owns and it replicates, and
 *      answers a uint whose bit b is set when bucket b differs (nil when
 *      the rings differ: the round is skipped);
 *   4. for the differing buckets the node sends the keys and versions it
 *      holds, VERSIONS [15, id, ring_version, entries] (at most 4,096
 *      entries a frame; an entry is u16 key length, key, u64 epoch, u64
 *      seq, big-endian), and the member answers a bitmap of the entries it
 *      lacks or holds older. Under writes most buckets differ for a moment
 *      (the two walks do not see the same instant), but only the keys
 *      written in between come back;
 *   5. the node queues those keys to be sent again (replica.c's queue: the
 *      state it stores, to the key's replicas, up to 1,024 keys a second).
 *
 * Cost: each round walks the store once on each side (one read transaction
 * listing the keys and versions, then the loop folds them: 34 ms for 48,000
 * keys in a release build here), once more on the sender when a bucket
 * differs, and one version lookup per entry shown on the member. */
#ifndef AM_ANTIENTROPY_H
#define AM_ANTIENTROPY_H

#include "proto.h"
#include "replica.h"

#include <stdint.h>
#include <uv.h>

#define AM_AE_BUCKETS 64

struct am_ae_stats {
    uint64_t rounds;   /* DIGESTs sent */
    uint64_t answered; /* DIGESTs answered here */
    uint64_t differ;   /* buckets found different by the member asked */
    uint64_t queued;   /* keys of those buckets queued to be sent again */
};

/* 1 when the node's ring has settled (a round may run). */
typedef int (*am_ae_settled_fn)(void *arg);

struct am_ae;

/* interval_ms 0: no rounds (DIGESTs from others are still answered). */
int am_ae_new(struct am_ae **out, uv_loop_t *loop, struct am_replication *rp,
              uint64_t interval_ms, am_ae_settled_fn settled, void *arg);

/* A DIGEST r from the peer named peer: answered (cb) at once. */
void am_ae_answer(struct am_ae *ae, const char *peer, const struct am_request *r, am_reply_fn cb,
                  void *ctx);

void am_ae_get_stats(const struct am_ae *ae, struct am_ae_stats *st);

/* One entry of a VERSIONS body at *p (u16 key length 1..319, the key, u64
 * epoch, u64 seq; big-endian): 0 with *p past it and the fields set (key
 * points into the body), or -1 when malformed (*p unchanged). */
int am_ae_next_entry(const uint8_t **p, const uint8_t *end, const char **key, size_t *len,
                     uint64_t *epoch, uint64_t *seq);

/* Stops the rounds; an answer still expected is dropped when it comes (the
 * peer layer must be closed before the loop ends). */
void am_ae_free(struct am_ae *ae);

#endif
