/* store.h - the LMDB snapshot store and its writer thread.
 *
 * One LMDB environment per node, in its data directory, with three named
 * databases:
 *
 *   "meta"       program ("amesh"), format (u32 BE), name, incarnation (u64 BE)
 *   "snapshots"  key "type/id" -> snapshot record (below)
 *   "replicas"   snapshots this node keeps for the actors other nodes own
 *                (replication; same record layout)
 *
 * A snapshot record, all integers big-endian:
 *
 *   0      2     3       4              12             20             28
 *   +------+-----+-------+--------------+--------------+--------------+------------+
 *   | "AS" | fmt | flags | epoch (u64)  | seq (u64)    | checksum u64 | state ...  |
 *   +------+-----+-------+--------------+--------------+--------------+------------+
 *
 *   checksum = XXH3_64bits over: key bytes, record bytes 0..19, state bytes.
 *
 * A state of no bytes is stored as a record without state (a tombstone), not
 * deleted: its version must survive, or an older copy elsewhere (a replica,
 * a stale owner) could come back as the newer one.
 *
 * Versions: (epoch, seq) ordered by epoch, then seq. An actor's versions
 * only grow: its runtime continues the seq of the state it loaded and takes
 * the next epoch at every activation, so a node that activates an actor from
 * the newest copy always writes newer versions than any older owner.
 *
 * Threads: the loop thread calls every function here. Writes go to one
 * writer thread, which commits everything queued in one transaction (group
 * commit), fsyncs (LMDB's default sync commit), then hands completions back to
 * the loop through a uv_async; callbacks run on the loop thread. Reads
 * (am_store_get) run on the loop thread in a short read-only transaction that
 * never outlives the call.
 *
 * Map growth: when a batch hits MDB_MAP_FULL the writer aborts it, doubles
 * the map (up to max_map) while no read is in progress, and retries the same
 * batch; no write is lost or reported failed because of growth. */
#ifndef AM_STORE_H
#define AM_STORE_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define AM_STORE_FORMAT 1
#define AM_STORE_BATCH_BUCKETS 8

struct am_store;

struct am_store_opts {
    const char *dir;       /* data directory; created (one level, 0700) if missing */
    const char *node_name; /* recorded in meta; NULL keeps the recorded one */
    size_t initial_map;    /* bytes; 0 = 64 MiB */
    size_t max_map;        /* bytes; 0 = 1 TiB; past it a batch fails with -ENOSPC */
    unsigned max_batch;    /* writes per transaction; 0 = 4096 */
};

struct am_store_write;
typedef void (*am_store_write_cb)(struct am_store_write *w, int status);

/* A write request, allocated and owned by the caller (like a uv_req_t). key
 * and state are borrowed until the callback runs; state_len 0 writes a
 * tombstone. status is 0 once committed and fsynced, else a negative code
 * (-ENOSPC for a full disk or map at max_map, AM_ESTORAGE otherwise).
 *
 * Once a write of a key fails, every later write of the same key that was
 * submitted before the loop ran that failure's callback is cancelled, not
 * committed (status -ECANCELED): such writes carry states built on the one
 * that failed, and the caller rolls back to the last committed state when
 * the failure reaches it. So a state whose write failed never reaches the
 * disk through a later write. */
/* am_store_write.flags */
#define AM_STORE_REPLICA 1u /* into "replicas" instead of "snapshots" */
#define AM_STORE_NEWER 2u   /* only when newer than every stored copy (stale, below) */

struct am_store_write {
    const char *key;
    size_t key_len;
    uint64_t epoch, seq;
    const uint8_t *state;
    size_t state_len;
    void *data; /* for the caller */
    unsigned flags;
    /* out: with AM_STORE_NEWER, 1 when the write was skipped because a copy
     * of the key (in either database) has this version or a newer one;
     * status is 0 then. */
    int stale;
    /* private */
    am_store_write_cb cb;
    int status;
    uint64_t gen;        /* failures the loop had seen when this was submitted */
    uint64_t gen_failed; /* the failure this write was, if it failed */
    struct am_store_write *next;
};

struct am_store_stats {
    uint64_t writes;        /* records committed */
    uint64_t commits;       /* transactions committed */
    uint64_t failed;        /* writes that completed with an error */
    uint64_t max_batch;     /* largest number of writes in one transaction */
    uint64_t joined;        /* writes that joined a transaction while it was applied */
    uint64_t map_grows;     /* times the map was enlarged */
    uint64_t map_size;      /* current map size in bytes */
    uint64_t records;       /* snapshot records now stored */
    uint64_t pending;       /* writes submitted and not yet called back */
    /* Transactions by number of writes: batches[i] counts those with more
     * than am_store_batch_le[i-1] and at most am_store_batch_le[i] writes
     * (the last: more than 4096, only with a larger max_batch). */
    uint64_t batches[AM_STORE_BATCH_BUCKETS];
};

extern const unsigned am_store_batch_le[AM_STORE_BATCH_BUCKETS];

struct am_store_meta {
    char name[256];
    uint64_t incarnation; /* incremented at every open */
    uint32_t format;
};

/* Opens (or creates) the store in o->dir and starts its writer thread.
 *
 * Refuses, leaving every file untouched, a directory that:
 *  - holds files other than data.mdb and lock.mdb   (AM_EFOREIGN)
 *  - has a data.mdb that is not LMDB, or is LMDB without amesh metadata
 *                                                     (AM_EFOREIGN)
 *  - has a data.mdb written by a newer format        (AM_ENEWER)
 *  - has a data.mdb that is truncated, whose pages or records fail their
 *    checks (every record's checksum is verified at open)     (AM_ECORRUPT)
 * On error, err receives one line naming the file and the problem, e.g.
 * "data/data.mdb: record 'counter/c1' fails its checksum".
 * Stale reader slots left by a crashed process are cleared at open. */
int am_store_open(struct am_store **out, uv_loop_t *loop, const struct am_store_opts *o,
                  char *err, size_t errlen);

/* Queues w (see struct am_store_write). cb runs on the loop thread exactly
 * once, unless this returns an error (-EINVAL for a key over 511 bytes or
 * empty, -ESHUTDOWN after am_store_close began), in which case it never does.
 * Writes complete in submission order. */
int am_store_write(struct am_store *s, struct am_store_write *w, am_store_write_cb cb);

/* Reads the newest copy of key: its snapshot or its replica, whichever has
 * the newer version (the snapshot on a tie). On success copies the state
 * into *state (replacing its contents; empty for a tombstone; state NULL:
 * the version only) and sets *epoch and *seq. Returns 0, -ENOENT when there is none, AM_ECORRUPT when
 * the record fails its checksum, or another negative code. Sees only
 * committed writes. */
int am_store_get(struct am_store *s, const char *key, size_t key_len, struct am_buf *state,
                 uint64_t *epoch, uint64_t *seq);

/* Between am_store_begin and am_store_end (nestable) writes are staged and
 * handed to the writer thread together at the end, under one lock and one
 * wake-up. Order and callbacks are as if each was submitted alone. */
void am_store_begin(struct am_store *s);
void am_store_end(struct am_store *s);

void am_store_get_meta(const struct am_store *s, struct am_store_meta *m);
void am_store_get_stats(struct am_store *s, struct am_store_stats *st);

/* Calls fn for every key stored in either database (once each), in key
 * order, until fn returns non-zero (which is returned). Not for the hot
 * path: handoff and replica repair walk the store with it. */
int am_store_each_key(struct am_store *s, int (*fn)(void *arg, const char *key, size_t len),
                      void *arg);

/* The same walk with each key's newest version (of its snapshot and its
 * replica), read from the record headers: anti-entropy digests. */
int am_store_each_version(struct am_store *s,
                          int (*fn)(void *arg, const char *key, size_t len, uint64_t epoch,
                                    uint64_t seq),
                          void *arg);

/* Stops the writer thread after it has committed everything queued, runs
 * the remaining callbacks, closes LMDB, and frees s once the loop has run
 * its close callbacks (so call it before the last uv_run). NULL is a no-op. */
void am_store_close(struct am_store *s);

#endif
