/* store.c - the LMDB snapshot store (contract and record layout: store.h).
 *
 * Three parts:
 *
 *  1. Open: refuse anything that is not an intact amesh directory of a
 *     format we understand, *before* writing a byte. A first, read-only pass
 *     opens data.mdb with MDB_RDONLY|MDB_NOLOCK (which creates and writes
 *     nothing, not even lock.mdb), checks the file length against LMDB's own
 *     last page, the "meta" db, the format, and every record's checksum.
 *     Only then is the environment opened for writing and meta updated.
 *     LMDB does not checksum its pages: the length check rules out SIGBUS
 *     and LMDB reports the damage it notices (MDB_CORRUPTED,
 *     MDB_PAGE_NOTFOUND), but a crafted file can still mislead it.
 *
 *  2. The writer thread: am_store_write appends to `queue` (mutex `mu`) and
 *     signals `cond`. The writer takes up to max_batch writes, applies them in
 *     one write transaction, applies those that reached the queue meanwhile
 *     as well (still up to max_batch), and commits it (LMDB's default
 *     durable commit), then appends the batch to `done` and wakes the loop
 *     with `async`.
 *     The loop thread moves `done` to `dispatch` and calls back in order.
 *
 *  3. Reads on the loop thread: a read-only transaction (one handle, reset
 *     between calls, renewed at the next) that never outlives the call.
 *
 * Write lists, each FIFO and linked through am_store_write.next:
 *
 *     am_store_write --> queue --writer--> done --async--> dispatch --> cb
 *                       (mu)              (mu)             (loop thread only)
 *
 * Invariants:
 *  - From am_store_write until its callback a write is on `queue`, in the
 *    writer's batch, on `done` or on `dispatch`, one at a time. Callbacks
 *    run in submission order: the writer takes from the head of `queue` and
 *    appends whole batches to the tail of `done`, and am_store_close drains
 *    `dispatch` before `done`.
 *  - `pending` (loop thread) counts writes on the three lists; `async` is
 *    ref'd exactly while pending > 0, so a loop with nothing else to do still
 *    waits for outstanding callbacks, and an idle store keeps no loop alive.
 *  - Map growth (mdb_env_set_mapsize) requires that no transaction of this
 *    process is live. The writer has aborted its own; loop-thread reads hold
 *    the read side of `maplock` for the length of their transaction and the
 *    writer takes the write side to grow. The loop thread never waits for
 *    a commit, only (rarely, briefly) for a remap.
 *  - After a failed write transaction, statuses are never guessed: a batch
 *    whose failure came from one write (mdb_put) or from the map being full
 *    at max_map is split in halves and retried, so only the writes that
 *    cannot be stored fail; a failed commit (disk error) fails the batch.
 *  - Callers see 0 or negative codes only; LMDB's own codes are mapped here.
 *    Write statuses are -ENOSPC (disk full, map at max_map) or AM_ESTORAGE.
 *  - One process per directory: another process growing the map would make
 *    our transactions fail with MDB_MAP_RESIZED (reported as AM_ESTORAGE). */
#include "store.h"

#include "err.h"
#include "mem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

/* ---- record layout (store.h) -------------------------------------------- */

#define REC_MAGIC "AS"
#define REC_FMT 1 /* the record's fmt byte; bumps with AM_STORE_FORMAT */
#define REC_OFF_FMT 2
#define REC_OFF_FLAGS 3
#define REC_OFF_EPOCH 4
#define REC_OFF_SEQ 12
#define REC_OFF_SUM 20 /* the checksum covers bytes 0..19 of the header */
#define REC_HDR 28

_Static_assert(REC_OFF_SUM + 8 == REC_HDR, "checksum is the header's last field");
_Static_assert(REC_OFF_SEQ + 8 == REC_OFF_SUM, "seq precedes the checksum");

/* LMDB's compile-time key limit (MDB_MAXKEYSIZE, 511 in the Debian build);
 * the header promises -EINVAL past it rather than a failed commit. */
#define MAX_KEY 511

/* The initial map costs address space, not disk: without MDB_WRITEMAP the
 * file only grows as pages are written. 64 MiB holds some 16,000 snapshots
 * of a few KiB before the first growth, so a typical node never pays for a
 * remap (which waits for in-flight reads), and doubling reaches the 1 TiB
 * ceiling in 14 steps. 1 TiB is 1/128 of x86-64's 47-bit user address space. */
#define DEFAULT_INITIAL_MAP ((size_t)64 << 20)
#define DEFAULT_MAX_MAP ((uint64_t)1 << 40)

/* One commit costs two synchronous writes (fdatasync of the data pages, then
 * the O_DSYNC meta page) whatever its size, so batching is what makes small
 * writes cheap; at 4096 writes per commit a disk that syncs in 4 ms costs
 * each write about a microsecond, and a larger batch only pins more
 * caller memory and makes its first write wait longer. The cap also keeps a
 * transaction far from LMDB's dirty limit (MDB_IDL_UM_MAX = 131,071 page
 * runs, else MDB_TXN_FULL): a write dirties one run for its value (an
 * overflow value is one run, whatever its length) plus the leaf and branch
 * pages on its key's path, 3-4 even for millions of keys, so 4096 writes
 * dirty at most ~20,000 runs. A batch that fails anyway is split (see the
 * invariants above). */
#define DEFAULT_MAX_BATCH 4096u

#define NAME_MAX_LEN 255 /* struct am_store_meta.name, less the NUL */

const unsigned am_store_batch_le[AM_STORE_BATCH_BUCKETS] = {1, 4, 16, 64, 256, 1024, 4096, 0};

/* ---- the store ------------------------------------------------------------ */

/* A key whose write failed at fail generation `gen`. Writes of that key
 * submitted with an older generation (before the loop saw the failure) are
 * cancelled. A burst of failures beyond MAX_FAILED distinct keys cancels every
 * write submitted before the loop caught up: coarser, never wrong. */
#define MAX_FAILED 256

struct failed_key {
    uint64_t hash;
    uint64_t gen;
};

struct am_store {
    uv_loop_t *loop;
    int dir_fd; /* holds the directory's flock */
    MDB_env *env;
    MDB_dbi meta_dbi, snap_dbi, repl_dbi;
    size_t max_map;
    unsigned max_batch;

    uv_thread_t thread;
    uv_async_t async;    /* writer -> loop: `done` is not empty */
    uv_rwlock_t maplock; /* read side: a live read txn; write side: a remap */

    uv_mutex_t mu; /* guards queue, done, stopping, shared */
    uv_cond_t cond;
    struct am_store_write *queue, *queue_tail;
    struct am_store_write *done, *done_tail;
    int stopping;
    struct am_store_stats shared; /* a copy of wstats, refreshed per batch */

    /* writer thread only */
    struct am_store_stats wstats;
    uint64_t fail_gen;                    /* failures so far */
    struct failed_key failed[MAX_FAILED]; /* keys whose failure the loop may not have seen */
    unsigned nfailed;
    int failed_overflow; /* more than MAX_FAILED: cancel every key */
    uint64_t overflow_gen;

    /* loop thread only, read by the writer under mu */
    uint64_t seen_gen; /* the newest failure whose callback ran */

    int writer_idle; /* under mu: the writer waits on cond */

    /* loop thread only */
    struct am_store_write *stage, *stage_tail; /* submitted, not yet handed over */
    int staging;                               /* am_store_begin depth */
    struct am_store_write *dispatch, *dispatch_tail;
    uint64_t pending;
    int async_ref;
    int closing;
    MDB_txn *rtxn; /* reset between reads, NULL until the first */
    struct am_store_meta meta;
};

/* ---- errors --------------------------------------------------------------- */

static int is_lmdb_code(int rc)
{
    return rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE;
}

/* A write's status: -ENOSPC for a full disk or map, AM_ESTORAGE for the rest. */
static int write_status(int rc)
{
    if (rc == 0)
        return 0;
    if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == -ENOSPC)
        return -ENOSPC;
    return AM_ESTORAGE;
}

/* Any other LMDB result: system errors keep their errno. */
static int lmdb_status(int rc)
{
    if (rc == 0)
        return 0;
    if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND)
        return AM_ECORRUPT;
    if (rc == MDB_MAP_FULL)
        return -ENOSPC;
    if (is_lmdb_code(rc))
        return AM_ESTORAGE;
    return rc > 0 ? -rc : rc;
}

/* Writes a printable form of n bytes of p to out (\xNN for the rest). */
static void printable(char *out, size_t cap, const void *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *b = p;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 <= cap; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\'' && b[i] != '\\') {
            out[o++] = (char)b[i];
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[b[i] >> 4];
            out[o++] = hex[b[i] & 15];
        }
    }
    if (cap)
        out[o < cap ? o : cap - 1] = '\0';
}

/* ---- records -------------------------------------------------------------- */

static uint64_t rec_sum(const void *key, size_t key_len, const uint8_t *rec, const void *state,
                        size_t state_len)
{
    XXH3_state_t st;
    XXH3_INITSTATE(&st);
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, key, key_len);
    XXH3_64bits_update(&st, rec, REC_OFF_SUM);
    XXH3_64bits_update(&st, state, state_len);
    return XXH3_64bits_digest(&st);
}

/* Fills rec (REC_HDR + w->state_len bytes). */
static void rec_encode(uint8_t *rec, const struct am_store_write *w)
{
    memcpy(rec, REC_MAGIC, 2);
    rec[REC_OFF_FMT] = REC_FMT;
    rec[REC_OFF_FLAGS] = 0;
    am_be64_put(rec + REC_OFF_EPOCH, w->epoch);
    am_be64_put(rec + REC_OFF_SEQ, w->seq);
    if (w->state_len)
        memcpy(rec + REC_HDR, w->state, w->state_len);
    am_be64_put(rec + REC_OFF_SUM, rec_sum(w->key, w->key_len, rec, w->state, w->state_len));
}

/* 0, or AM_ECORRUPT with *why saying how the record fails. */
static int rec_check(const MDB_val *k, const MDB_val *v, const char **why)
{
    const uint8_t *rec = v->mv_data;
    if (v->mv_size < REC_HDR || memcmp(rec, REC_MAGIC, 2) != 0 || rec[REC_OFF_FMT] != REC_FMT) {
        *why = "is not a snapshot record";
        return AM_ECORRUPT;
    }
    uint64_t sum = rec_sum(k->mv_data, k->mv_size, rec, rec + REC_HDR, v->mv_size - REC_HDR);
    if (sum != am_be64_get(rec + REC_OFF_SUM)) {
        *why = "fails its checksum";
        return AM_ECORRUPT;
    }
    return 0;
}

/* ---- open: the read-only validation pass ---------------------------------- */

struct found {
    uint64_t mapsize;        /* the map size recorded in the file */
    const char *expect_name; /* the name the node starts with, or NULL */
};

/* Checks every record of db `name`, if the file has one. */
static int check_records(MDB_txn *txn, const char *name, int required, const char *file, char *err,
                         size_t errlen)
{
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc == MDB_NOTFOUND && !required)
        return 0;
    if (rc == MDB_NOTFOUND)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: has no '%s' database", file, name);
    if (rc)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: '%s' database: %s", file, name,
                       mdb_strerror(rc));
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return am_errf(err, errlen, lmdb_status(rc), "%s: %s", file, mdb_strerror(rc));
    MDB_val k, v;
    int ret = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const char *why;
        if (rec_check(&k, &v, &why)) {
            char key[4 * MAX_KEY + 1];
            printable(key, sizeof key, k.mv_data, k.mv_size);
            ret = am_errf(err, errlen, AM_ECORRUPT, "%s: record '%s' %s", file, key, why);
            break;
        }
    }
    if (!ret && rc != MDB_NOTFOUND)
        ret = am_errf(err, errlen, AM_ECORRUPT, "%s: '%s' database: %s", file, name,
                      mdb_strerror(rc));
    mdb_cursor_close(cur);
    return ret;
}

#define NOT_OURS "%s: an LMDB file without amesh metadata"

static int validate_meta(MDB_txn *txn, const char *file, const char *expect_name, char *err,
                         size_t errlen)
{
    MDB_dbi meta;
    int rc = mdb_dbi_open(txn, "meta", 0, &meta);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
        return am_errf(err, errlen, AM_EFOREIGN, NOT_OURS, file);
    if (rc)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: %s", file, mdb_strerror(rc));

    MDB_val k = {7, "program"}, v;
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return am_errf(err, errlen, AM_EFOREIGN, NOT_OURS, file);
    if (rc)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: %s", file, mdb_strerror(rc));
    if (v.mv_size != 5 || memcmp(v.mv_data, "amesh", 5) != 0) {
        char prog[64];
        printable(prog, sizeof prog, v.mv_data, v.mv_size < 15 ? v.mv_size : 15);
        return am_errf(err, errlen, AM_EFOREIGN, "%s: written by '%s', not by amesh", file, prog);
    }

    k = (MDB_val){6, "format"};
    rc = mdb_get(txn, meta, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: %s", file, mdb_strerror(rc));
    if (rc == MDB_NOTFOUND || v.mv_size != 4 || am_be32_get(v.mv_data) == 0)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: meta 'format' is missing or malformed", file);
    uint32_t format = am_be32_get(v.mv_data);
    if (format > AM_STORE_FORMAT)
        return am_errf(err, errlen, AM_ENEWER,
                       "%s: format %u is newer than this build supports (%u)", file,
                       (unsigned)format, (unsigned)AM_STORE_FORMAT);

    k = (MDB_val){11, "incarnation"};
    rc = mdb_get(txn, meta, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: %s", file, mdb_strerror(rc));
    if (rc == 0 && v.mv_size != 8)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: meta 'incarnation' is malformed", file);

    /* A data directory is one node's identity: starting another name on it
     * would hand that node's actors and incarnation to a stranger. */
    k = (MDB_val){4, "name"};
    rc = mdb_get(txn, meta, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: %s", file, mdb_strerror(rc));
    if (rc == 0 && expect_name &&
        (v.mv_size != strlen(expect_name) || memcmp(v.mv_data, expect_name, v.mv_size) != 0)) {
        char was[128];
        printable(was, sizeof was, v.mv_data, v.mv_size < 100 ? v.mv_size : 100);
        return am_errf(err, errlen, AM_EFOREIGN,
                       "%s: belongs to node '%s', not '%s' (start it with --name '%s', or use "
                       "another data directory)",
                       file, was, expect_name, was);
    }
    return 0;
}

/* Validates dir/data.mdb without creating or modifying any file. */
static int validate(const char *dir, const char *file, struct found *f, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(file, &sb) != 0)
        return am_errf(err, errlen, -errno, "%s: %s", file, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return am_errf(err, errlen, AM_EFOREIGN, "%s: not a regular file", file);
    /* LMDB would take an empty file for a new one and try to write its meta
     * pages; it needs at least its two meta pages. */
    if (sb.st_size == 0)
        return am_errf(err, errlen, AM_ECORRUPT, "%s: truncated: 0 bytes, expected at least %ld",
                       file, 2 * sysconf(_SC_PAGESIZE));

    MDB_env *env;
    int rc = mdb_env_create(&env);
    if (rc)
        return am_errf(err, errlen, lmdb_status(rc), "%s: %s", file, mdb_strerror(rc));
    int ret = 0;
    MDB_txn *txn = NULL;
    rc = mdb_env_set_maxdbs(env, 4);
    if (!rc)
        rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK, 0600);
    if (rc == MDB_INVALID) {
        ret = am_errf(err, errlen, AM_EFOREIGN, "%s: not an LMDB file", file);
        goto out;
    }
    if (rc) {
        ret = am_errf(err, errlen, is_lmdb_code(rc) ? AM_ECORRUPT : -rc, "%s: %s", file,
                      mdb_strerror(rc));
        goto out;
    }

    /* Pages past the end of the file would fault (SIGBUS) when touched. */
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(env, &info);
    mdb_env_stat(env, &st);
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)sb.st_size < need) {
        ret = am_errf(err, errlen, AM_ECORRUPT, "%s: truncated: %llu bytes, expected at least %llu",
                      file, (unsigned long long)sb.st_size, (unsigned long long)need);
        goto out;
    }
    f->mapsize = info.me_mapsize;

    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        ret = am_errf(err, errlen, lmdb_status(rc), "%s: %s", file, mdb_strerror(rc));
        goto out;
    }
    ret = validate_meta(txn, file, f->expect_name, err, errlen);
    if (!ret)
        ret = check_records(txn, "snapshots", 1, file, err, errlen);
    if (!ret)
        ret = check_records(txn, "replicas", 0, file, err, errlen);
    mdb_txn_abort(txn);
out:
    mdb_env_close(env);
    return ret;
}

/* Refuses a directory holding anything but LMDB's two files. */
static int check_dir(const char *dir, int *has_data, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return am_errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    int ret = 0;
    struct dirent *e;
    *has_data = 0;
    for (errno = 0; (e = readdir(d)) != NULL; errno = 0) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, "lock.mdb"))
            continue;
        if (!strcmp(e->d_name, "data.mdb")) {
            *has_data = 1;
            continue;
        }
        char name[4 * NAME_MAX_LEN + 1];
        printable(name, sizeof name, e->d_name, strlen(e->d_name));
        ret = am_errf(err, errlen, AM_EFOREIGN,
                      "%s: holds '%s', which is not an amesh file; refusing to use this data "
                      "directory",
                      dir, name);
        break;
    }
    if (!ret && errno)
        ret = am_errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    closedir(d);
    return ret;
}

/* ---- open: the read-write environment ------------------------------------- */

/* Doubles the map, up to max_map. Callers hold no transaction; the
 * write side of maplock waits out the loop thread's read, if any. */
static int grow_map(struct am_store *s, struct am_store_stats *st)
{
    if (st->map_size >= s->max_map)
        return -ENOSPC;
    size_t old = (size_t)st->map_size;
    size_t size = old > s->max_map / 2 ? s->max_map : old * 2;
    uv_rwlock_wrlock(&s->maplock);
    int rc = mdb_env_set_mapsize(s->env, size);
    if (rc) /* keep a usable map: the old size was mapped a moment ago */
        mdb_env_set_mapsize(s->env, old);
    uv_rwlock_wrunlock(&s->maplock);
    if (rc)
        return write_status(rc);
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    st->map_size = info.me_mapsize;
    st->map_grows++;
    return 0;
}

static int put_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t x)
{
    uint8_t b[8];
    am_be64_put(b, x);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Creates the databases if new, records this open in meta and reads meta
 * back into s->meta. Retries with a larger map if the map is full. */
static int write_meta(struct am_store *s, const char *name)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc)
            return rc;
        rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta_dbi);
        if (!rc)
            rc = mdb_dbi_open(txn, "snapshots", MDB_CREATE, &s->snap_dbi);
        if (!rc)
            rc = mdb_dbi_open(txn, "replicas", MDB_CREATE, &s->repl_dbi);

        MDB_val k = {11, "incarnation"}, v;
        uint64_t inc = 0;
        if (!rc) {
            rc = mdb_get(txn, s->meta_dbi, &k, &v);
            if (rc == 0 && v.mv_size == 8)
                inc = am_be64_get(v.mv_data);
            if (rc == MDB_NOTFOUND)
                rc = 0;
        }
        if (!rc) {
            uint8_t fmt[4];
            am_be32_put(fmt, AM_STORE_FORMAT);
            k = (MDB_val){7, "program"};
            v = (MDB_val){5, "amesh"};
            rc = mdb_put(txn, s->meta_dbi, &k, &v, 0);
            k = (MDB_val){6, "format"};
            v = (MDB_val){4, fmt};
            if (!rc)
                rc = mdb_put(txn, s->meta_dbi, &k, &v, 0);
        }
        if (!rc && name) {
            k = (MDB_val){4, "name"};
            v = (MDB_val){strlen(name), (void *)name};
            rc = mdb_put(txn, s->meta_dbi, &k, &v, 0);
        }
        if (!rc)
            rc = put_u64(txn, s->meta_dbi, "incarnation", inc + 1);

        memset(&s->meta, 0, sizeof s->meta);
        s->meta.incarnation = inc + 1;
        s->meta.format = AM_STORE_FORMAT;
        k = (MDB_val){4, "name"};
        if (!rc && mdb_get(txn, s->meta_dbi, &k, &v) == 0) {
            size_t n = v.mv_size < NAME_MAX_LEN ? v.mv_size : NAME_MAX_LEN;
            memcpy(s->meta.name, v.mv_data, n);
        }
        MDB_stat ms;
        if (!rc)
            rc = mdb_stat(txn, s->snap_dbi, &ms);
        if (!rc) {
            s->wstats.records = ms.ms_entries;
            rc = mdb_txn_commit(txn);
        } else {
            mdb_txn_abort(txn);
        }
        if (rc != MDB_MAP_FULL)
            return rc;
        rc = grow_map(s, &s->wstats);
        if (rc)
            return rc;
    }
}

static void writer_main(void *arg);
static void on_async(uv_async_t *h);

int am_store_open(struct am_store **out, uv_loop_t *loop, const struct am_store_opts *o, char *err,
                  size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!o || !o->dir || !o->dir[0] || !loop)
        return am_errf(err, errlen, -EINVAL, "store: no data directory given");
    const char *dir = o->dir;
    if (o->node_name && strlen(o->node_name) > NAME_MAX_LEN)
        return am_errf(err, errlen, -EINVAL, "store: node name longer than %d bytes", NAME_MAX_LEN);
    char file[4096];
    if ((size_t)snprintf(file, sizeof file, "%s/data.mdb", dir) >= sizeof file)
        return am_errf(err, errlen, -ENAMETOOLONG, "%s: path too long", dir);

    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT || mkdir(dir, 0700) != 0)
            return am_errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(sb.st_mode)) {
        return am_errf(err, errlen, -ENOTDIR, "%s: not a directory", dir);
    }

    /* One process per data directory: an advisory lock on the directory
     * itself, taken before anything is read so that validation never sees
     * another process's half-written state. It creates no file. */
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return am_errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    if (flock(dir_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(dir_fd);
        if (e == EWOULDBLOCK)
            return am_errf(err, errlen, -EBUSY, "%s: in use by another amesh process", dir);
        return am_errf(err, errlen, -e, "%s: cannot lock: %s", dir, strerror(e));
    }

    int has_data = 0;
    int rc = check_dir(dir, &has_data, err, errlen);
    struct found f = {0, o->node_name};
    if (!rc && has_data)
        rc = validate(dir, file, &f, err, errlen);
    if (rc) {
        close(dir_fd);
        return rc;
    }

    struct am_store *s = am_calloc(1, sizeof *s);
    if (!s) {
        close(dir_fd);
        return am_errf(err, errlen, -ENOMEM, "store: out of memory");
    }
    s->dir_fd = dir_fd;
    s->loop = loop;
    s->max_batch = o->max_batch ? o->max_batch : DEFAULT_MAX_BATCH;
    uint64_t max_map = o->max_map ? o->max_map : DEFAULT_MAX_MAP;
    s->max_map = max_map > SIZE_MAX ? SIZE_MAX : (size_t)max_map;
    size_t map = o->initial_map ? o->initial_map : DEFAULT_INITIAL_MAP;
    if (map > s->max_map)
        map = s->max_map;
    if (f.mapsize > map) /* keep what an earlier run grew to */
        map = (size_t)f.mapsize;

    int have_rw = 0, have_mu = 0, have_cond = 0, have_env = 0;
    rc = uv_rwlock_init(&s->maplock);
    if (!rc) {
        have_rw = 1;
        rc = uv_mutex_init(&s->mu);
    }
    if (!rc) {
        have_mu = 1;
        rc = uv_cond_init(&s->cond);
    }
    if (rc) {
        rc = am_errf(err, errlen, rc, "store: %s", uv_strerror(rc));
        goto fail_sync;
    }
    have_cond = 1;

    rc = mdb_env_create(&s->env);
    if (!rc) {
        have_env = 1;
        rc = mdb_env_set_maxdbs(s->env, 4);
    }
    if (!rc)
        rc = mdb_env_set_mapsize(s->env, map);
    if (!rc)
        rc = mdb_env_open(s->env, dir, 0, 0600);
    if (!rc) {
        int dead;
        rc = mdb_reader_check(s->env, &dead); /* slots of crashed processes */
    }
    if (!rc) {
        MDB_envinfo info;
        mdb_env_info(s->env, &info);
        s->wstats.map_size = info.me_mapsize;
        rc = write_meta(s, o->node_name);
    }
    if (rc) {
        /* write_meta's map growth already returns a negative status */
        const char *what = rc < 0 && !is_lmdb_code(rc) ? am_strerror(rc) : mdb_strerror(rc);
        rc = am_errf(err, errlen, lmdb_status(rc), "%s: %s", file, what);
        goto fail_sync;
    }
    s->shared = s->wstats;

    rc = uv_thread_create(&s->thread, writer_main, s);
    if (rc) {
        rc = am_errf(err, errlen, rc, "store: writer thread: %s", uv_strerror(rc));
        goto fail_sync;
    }
    rc = uv_async_init(loop, &s->async, on_async);
    if (rc) {
        uv_mutex_lock(&s->mu);
        s->stopping = 1;
        uv_cond_signal(&s->cond);
        uv_mutex_unlock(&s->mu);
        uv_thread_join(&s->thread);
        rc = am_errf(err, errlen, rc, "store: %s", uv_strerror(rc));
        goto fail_sync;
    }
    s->async.data = s;
    uv_unref((uv_handle_t *)&s->async);
    *out = s;
    return 0;

fail_sync:
    if (have_env)
        mdb_env_close(s->env);
    if (have_cond)
        uv_cond_destroy(&s->cond);
    if (have_mu)
        uv_mutex_destroy(&s->mu);
    if (have_rw)
        uv_rwlock_destroy(&s->maplock);
    close(s->dir_fd);
    am_free(s);
    return rc;
}

/* ---- the writer thread ---------------------------------------------------- */

/* 1 when a record of key in dbi has version (epoch, seq) or a newer one. */
static int holds_newer(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, uint64_t epoch, uint64_t seq)
{
    MDB_val v;
    if (mdb_get(txn, dbi, k, &v) != 0 || v.mv_size < REC_HDR)
        return 0;
    const uint8_t *rec = v.mv_data;
    uint64_t e = am_be64_get(rec + REC_OFF_EPOCH), q = am_be64_get(rec + REC_OFF_SEQ);
    return e > epoch || (e == epoch && q >= seq);
}

static int apply(struct am_store *s, MDB_txn *txn, struct am_store_write *w)
{
    MDB_val k = {w->key_len, (void *)w->key};
    MDB_dbi dbi = w->flags & AM_STORE_REPLICA ? s->repl_dbi : s->snap_dbi;
    w->stale = 0;
    if ((w->flags & AM_STORE_NEWER) &&
        (holds_newer(txn, s->snap_dbi, &k, w->epoch, w->seq) ||
         holds_newer(txn, s->repl_dbi, &k, w->epoch, w->seq))) {
        w->stale = 1;
        return 0;
    }
    MDB_val v = {REC_HDR + w->state_len, NULL};
    int rc = mdb_put(txn, dbi, &k, &v, MDB_RESERVE);
    if (rc)
        return rc;
    rec_encode(v.mv_data, w);
    return 0;
}

static void mark_cancelled(struct am_store *s, struct am_store_write *head, unsigned n);

/* Takes up to `room` writes from the head of the queue, with mu held: *head
 * the first, *tail the last, their count returned (0: the queue is empty). */
static unsigned take_locked(struct am_store *s, unsigned room, struct am_store_write **head,
                            struct am_store_write **tail)
{
    unsigned n = 0;
    struct am_store_write *h = s->queue, *t = h;
    if (h && room) {
        n = 1;
        while (n < room && t->next) {
            t = t->next;
            n++;
        }
        s->queue = t->next;
        if (!s->queue)
            s->queue_tail = NULL;
        t->next = NULL;
    }
    *head = h;
    *tail = t;
    return n;
}

/* Applies *n writes from head in one transaction and commits it, growing
 * the map and starting over while it is full. With `join`, the writes that
 * reached the queue while the batch was applied join it before the commit
 * (up to max_batch; *n and *tail follow): they share this commit's fsyncs
 * instead of waiting for the next commit, which costs as much whatever its
 * size. Returns 0 or the status of every one of them; *split says whether
 * a smaller batch could fare better (the failure came from one write, or
 * from the map at max_map). */
static int commit_batch(struct am_store *s, struct am_store_write *head, unsigned *np,
                        struct am_store_write **tail, int join, int *split)
{
    *split = 0;
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc)
            return write_status(rc);
        struct am_store_write *w = head;
        unsigned n = *np;
        for (unsigned i = 0; i < n && !rc; i++, w = w->next)
            if (w->status != -ECANCELED)
                rc = apply(s, txn, w);
        while (join && !rc && n < s->max_batch) {
            struct am_store_write *more, *last;
            uv_mutex_lock(&s->mu);
            unsigned k = take_locked(s, s->max_batch - n, &more, &last);
            uv_mutex_unlock(&s->mu);
            if (!k)
                break;
            (*tail)->next = more;
            *tail = last;
            *np = n += k;
            mark_cancelled(s, more, k);
            s->wstats.joined += k;
            for (w = more; w && !rc; w = w->next)
                if (w->status != -ECANCELED)
                    rc = apply(s, txn, w);
        }
        MDB_stat ms;
        if (!rc)
            rc = mdb_stat(txn, s->snap_dbi, &ms);
        if (rc) {
            mdb_txn_abort(txn);
            if (rc != MDB_MAP_FULL) {
                *split = 1;
                return write_status(rc);
            }
        } else {
            rc = mdb_txn_commit(txn); /* frees txn, even when it fails */
            if (!rc) {
                s->wstats.commits++;
                s->wstats.records = ms.ms_entries;
                if (n > s->wstats.max_batch)
                    s->wstats.max_batch = n;
                unsigned b = 0;
                while (b + 1 < AM_STORE_BATCH_BUCKETS && n > am_store_batch_le[b])
                    b++;
                s->wstats.batches[b]++;
                return 0;
            }
            if (rc != MDB_MAP_FULL)
                return write_status(rc);
        }
        rc = grow_map(s, &s->wstats);
        if (rc) {
            *split = 1;
            return rc;
        }
    }
}

/* Commits n writes from head, halving a failed batch until only the writes
 * that cannot be stored fail, and sets every status. */
/* Forgets failures every write now carries the news of: a write submitted
 * with generation g was submitted after the loop saw failures up to g. */
static void prune_failed(struct am_store *s, uint64_t gen)
{
    unsigned k = 0;
    for (unsigned i = 0; i < s->nfailed; i++)
        if (s->failed[i].gen > gen)
            s->failed[k++] = s->failed[i];
    s->nfailed = k;
    if (s->failed_overflow && s->overflow_gen <= gen)
        s->failed_overflow = 0;
}

static int cancelled(const struct am_store *s, const struct am_store_write *w)
{
    if (s->failed_overflow && w->gen < s->overflow_gen)
        return 1;
    if (s->nfailed == 0)
        return 0;
    uint64_t h = XXH3_64bits(w->key, w->key_len);
    for (unsigned i = 0; i < s->nfailed; i++)
        if (s->failed[i].hash == h && w->gen < s->failed[i].gen)
            return 1;
    return 0;
}

static void remember_failed(struct am_store *s, const struct am_store_write *w)
{
    if (s->nfailed == MAX_FAILED) {
        s->failed_overflow = 1;
        s->overflow_gen = s->fail_gen;
        return;
    }
    s->failed[s->nfailed].hash = XXH3_64bits(w->key, w->key_len);
    s->failed[s->nfailed].gen = s->fail_gen;
    s->nfailed++;
}

/* Marks the cancelled writes of a batch (see store.h); commit_batch skips
 * them and process leaves their status alone. */
static void mark_cancelled(struct am_store *s, struct am_store_write *head, unsigned n)
{
    /* Generations only grow along the queue, so no write still to come is
     * older than the head of this batch: failures up to its generation can
     * cancel nothing more. */
    prune_failed(s, head->gen);
    struct am_store_write *w = head;
    for (unsigned i = 0; i < n; i++, w = w->next) {
        if (w->status == 0 && cancelled(s, w)) {
            w->status = -ECANCELED;
            s->wstats.failed++;
        }
    }
}

static void process(struct am_store *s, struct am_store_write *head, unsigned *np,
                    struct am_store_write **tail, int join)
{
    int split;
    int rc = commit_batch(s, head, np, tail, join, &split);
    unsigned n = *np;
    if (rc && split && n > 1) {
        unsigned half = n / 2, rest = n - half;
        struct am_store_write *second = head, *t;
        for (unsigned i = 0; i < half; i++)
            second = second->next;
        process(s, head, &half, &t, 0);
        /* A write of the first half may just have failed: later writes of
         * its key in the second half were built on it. */
        mark_cancelled(s, second, rest);
        process(s, second, &rest, &t, 0);
        return;
    }
    if (rc)
        s->fail_gen++;
    struct am_store_write *w = head;
    for (unsigned i = 0; i < n; i++, w = w->next) {
        if (w->status == -ECANCELED)
            continue;
        w->status = rc;
        if (rc) {
            s->wstats.failed++;
            w->gen_failed = s->fail_gen;
            remember_failed(s, w);
        } else {
            s->wstats.writes++;
        }
    }
}

static void writer_main(void *arg)
{
    struct am_store *s = arg;
    for (;;) {
        uv_mutex_lock(&s->mu);
        while (!s->queue && !s->stopping) {
            s->writer_idle = 1;
            uv_cond_wait(&s->cond, &s->mu);
            s->writer_idle = 0;
        }
        if (!s->queue) { /* stopping, and everything queued is done */
            uv_mutex_unlock(&s->mu);
            return;
        }
        struct am_store_write *head, *tail;
        unsigned n = take_locked(s, s->max_batch, &head, &tail);
        uv_mutex_unlock(&s->mu);

        mark_cancelled(s, head, n);
        process(s, head, &n, &tail, 1);

        uv_mutex_lock(&s->mu);
        if (s->done_tail)
            s->done_tail->next = head;
        else
            s->done = head;
        s->done_tail = tail;
        s->shared = s->wstats;
        uv_mutex_unlock(&s->mu);
        uv_async_send(&s->async);
    }
}

/* ---- the loop thread ------------------------------------------------------ */

static void update_ref(struct am_store *s)
{
    if (s->pending && !s->async_ref) {
        uv_ref((uv_handle_t *)&s->async);
        s->async_ref = 1;
    } else if (!s->pending && s->async_ref) {
        uv_unref((uv_handle_t *)&s->async);
        s->async_ref = 0;
    }
}

static void take_done(struct am_store *s)
{
    uv_mutex_lock(&s->mu);
    struct am_store_write *head = s->done, *tail = s->done_tail;
    s->done = s->done_tail = NULL;
    uv_mutex_unlock(&s->mu);
    if (!head)
        return;
    if (s->dispatch_tail)
        s->dispatch_tail->next = head;
    else
        s->dispatch = head;
    s->dispatch_tail = tail;
}

/* Calls back everything on `dispatch`. Re-entrant: a callback may submit
 * writes or close the store, whose own drain continues from the same list. */
static void run_callbacks(struct am_store *s)
{
    while (s->dispatch) {
        struct am_store_write *w = s->dispatch;
        s->dispatch = w->next;
        if (!s->dispatch)
            s->dispatch_tail = NULL;
        w->next = NULL;
        s->pending--;
        update_ref(s);
        if (w->status && w->status != -ECANCELED && w->gen_failed > s->seen_gen) {
            uv_mutex_lock(&s->mu);
            s->seen_gen = w->gen_failed;
            uv_mutex_unlock(&s->mu);
        }
        if (w->cb)
            w->cb(w, w->status);
    }
}

static void on_async(uv_async_t *h)
{
    struct am_store *s = h->data;
    take_done(s);
    run_callbacks(s);
}

/* Hands the staged writes to the writer thread: one lock and at most one
 * wake-up for a whole loop turn's writes. */
static void publish(struct am_store *s)
{
    if (!s->stage)
        return;
    uv_mutex_lock(&s->mu);
    if (s->queue_tail)
        s->queue_tail->next = s->stage;
    else
        s->queue = s->stage;
    s->queue_tail = s->stage_tail;
    if (s->writer_idle)
        uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
    s->stage = s->stage_tail = NULL;
}

int am_store_write(struct am_store *s, struct am_store_write *w, am_store_write_cb cb)
{
    if (s->closing)
        return -ESHUTDOWN;
    if (!w->key || w->key_len == 0 || w->key_len > MAX_KEY)
        return -EINVAL;
    if (w->state_len && (!w->state || w->state_len > SIZE_MAX - REC_HDR))
        return -EINVAL;
    w->cb = cb;
    w->status = 0;
    w->next = NULL;
    w->gen = s->seen_gen;
    if (s->stage_tail)
        s->stage_tail->next = w;
    else
        s->stage = w;
    s->stage_tail = w;
    s->pending++;
    update_ref(s);
    if (s->staging == 0)
        publish(s);
    return 0;
}

void am_store_begin(struct am_store *s)
{
    s->staging++;
}

void am_store_end(struct am_store *s)
{
    if (--s->staging == 0)
        publish(s);
}

static int read_begin(struct am_store *s)
{
    uv_rwlock_rdlock(&s->maplock);
    int rc;
    if (s->rtxn) {
        rc = mdb_txn_renew(s->rtxn);
        if (!rc)
            return 0;
        mdb_txn_abort(s->rtxn);
        s->rtxn = NULL;
    }
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
    if (rc) {
        s->rtxn = NULL;
        uv_rwlock_rdunlock(&s->maplock);
    }
    return rc;
}

static void read_end(struct am_store *s)
{
    mdb_txn_reset(s->rtxn);
    uv_rwlock_rdunlock(&s->maplock);
}

int am_store_get(struct am_store *s, const char *key, size_t key_len, struct am_buf *state,
                 uint64_t *epoch, uint64_t *seq)
{
    if (!key || key_len == 0 || key_len > MAX_KEY)
        return -EINVAL;
    int rc = read_begin(s);
    if (rc)
        return lmdb_status(rc);
    MDB_val k = {key_len, (void *)key}, v, best = {0, NULL};
    uint64_t be = 0, bs = 0;
    MDB_dbi dbis[2] = {s->snap_dbi, s->repl_dbi};
    for (int i = 0; i < 2 && (rc == 0 || rc == MDB_NOTFOUND); i++) {
        rc = mdb_get(s->rtxn, dbis[i], &k, &v);
        if (rc)
            continue;
        const char *why;
        if (rec_check(&k, &v, &why)) {
            rc = AM_ECORRUPT;
            break;
        }
        const uint8_t *rec = v.mv_data;
        uint64_t e = am_be64_get(rec + REC_OFF_EPOCH), q = am_be64_get(rec + REC_OFF_SEQ);
        if (!best.mv_data || e > be || (e == be && q > bs)) {
            best = v;
            be = e;
            bs = q;
        }
    }
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = !best.mv_data ? -ENOENT
             : state       ? am_buf_set(state, (const uint8_t *)best.mv_data + REC_HDR,
                                        best.mv_size - REC_HDR)
                           : 0;
        if (rc == 0) {
            *epoch = be;
            *seq = bs;
        }
    } else if (rc != AM_ECORRUPT) {
        rc = lmdb_status(rc);
    }
    read_end(s);
    return rc;
}

void am_store_get_meta(const struct am_store *s, struct am_store_meta *m)
{
    *m = s->meta;
}

void am_store_get_stats(struct am_store *s, struct am_store_stats *st)
{
    uv_mutex_lock(&s->mu);
    *st = s->shared;
    uv_mutex_unlock(&s->mu);
    st->pending = s->pending;
}

/* Appends a key to the list each_key builds (length, bytes, NUL). */
static int list_key(struct am_buf *keys, const MDB_val *k)
{
    uint16_t len = (uint16_t)k->mv_size; /* <= MAX_KEY */
    const uint8_t nul = 0;
    return am_buf_append(keys, &len, sizeof len) || am_buf_append(keys, k->mv_data, k->mv_size) ||
                   am_buf_append(keys, &nul, 1)
               ? ENOMEM
               : 0;
}

static int key_cmp(const MDB_val *a, const MDB_val *b)
{
    size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
    int c = memcmp(a->mv_data, b->mv_data, n);
    return c ? c : (a->mv_size > b->mv_size) - (a->mv_size < b->mv_size);
}

/* Copies the keys out first, so fn runs with no transaction open: it may
 * read the store, and a slow fn never holds back map growth. The two
 * databases are merged in key order (LMDB's default order is memcmp, then
 * length), each key listed once. */
/* The version in a record's header; (0, 0) for one too short to hold it
 * (the walk does not verify checksums: am_store_get does, at use). */
static void rec_version(const MDB_val *v, uint64_t *epoch, uint64_t *seq)
{
    const uint8_t *rec = v->mv_data;
    if (v->mv_size < REC_HDR) {
        *epoch = *seq = 0;
        return;
    }
    *epoch = am_be64_get(rec + REC_OFF_EPOCH);
    *seq = am_be64_get(rec + REC_OFF_SEQ);
}

/* One entry of a walk: u16 length, the key, NUL, then the newest version
 * (two u64) when versions are asked for. */
static int list_entry(struct am_buf *keys, const MDB_val *k, int versions, uint64_t epoch,
                      uint64_t seq)
{
    if (list_key(keys, k))
        return ENOMEM;
    if (versions && (am_buf_append(keys, &epoch, sizeof epoch) ||
                     am_buf_append(keys, &seq, sizeof seq)))
        return ENOMEM;
    return 0;
}

/* Lists every key of both databases in one short read transaction (with
 * its newest version if asked), then calls fkey or fver for each outside
 * it. */
static int walk(struct am_store *s, int versions,
                int (*fkey)(void *arg, const char *key, size_t len),
                int (*fver)(void *arg, const char *key, size_t len, uint64_t epoch, uint64_t seq),
                void *arg)
{
    struct am_buf keys;
    am_buf_init(&keys);
    int rc = read_begin(s);
    if (rc)
        return lmdb_status(rc);
    MDB_cursor *a = NULL, *b = NULL;
    rc = mdb_cursor_open(s->rtxn, s->snap_dbi, &a);
    if (!rc)
        rc = mdb_cursor_open(s->rtxn, s->repl_dbi, &b);
    if (!rc) {
        MDB_val ka, kb, va, vb;
        int ra = mdb_cursor_get(a, &ka, &va, MDB_FIRST);
        int rb = mdb_cursor_get(b, &kb, &vb, MDB_FIRST);
        while ((ra == 0 || rb == 0) && !rc) {
            int c = ra ? 1 : rb ? -1 : key_cmp(&ka, &kb);
            uint64_t e = 0, q = 0, e2, q2;
            if (versions) {
                rec_version(c <= 0 ? &va : &vb, &e, &q);
                if (c == 0) {
                    rec_version(&vb, &e2, &q2);
                    if (e2 > e || (e2 == e && q2 > q)) {
                        e = e2;
                        q = q2;
                    }
                }
            }
            rc = list_entry(&keys, c <= 0 ? &ka : &kb, versions, e, q);
            if (c <= 0)
                ra = mdb_cursor_get(a, &ka, &va, MDB_NEXT);
            if (c >= 0)
                rb = mdb_cursor_get(b, &kb, &vb, MDB_NEXT);
        }
        if (!rc && ra != MDB_NOTFOUND)
            rc = lmdb_status(ra);
        else if (!rc && rb != MDB_NOTFOUND)
            rc = lmdb_status(rb);
    } else {
        rc = lmdb_status(rc);
    }
    if (a)
        mdb_cursor_close(a);
    if (b)
        mdb_cursor_close(b);
    if (rc == ENOMEM)
        rc = -ENOMEM;
    read_end(s);
    for (size_t off = 0; !rc && off < keys.len;) {
        uint16_t len;
        memcpy(&len, keys.data + off, sizeof len);
        off += sizeof len;
        const char *key = (const char *)keys.data + off;
        off += (size_t)len + 1;
        if (versions) {
            uint64_t e, q;
            memcpy(&e, keys.data + off, sizeof e);
            memcpy(&q, keys.data + off + sizeof e, sizeof q);
            off += sizeof e + sizeof q;
            rc = fver(arg, key, len, e, q);
        } else {
            rc = fkey(arg, key, len);
        }
    }
    am_buf_close(&keys);
    return rc;
}

int am_store_each_key(struct am_store *s, int (*fn)(void *arg, const char *key, size_t len),
                      void *arg)
{
    return walk(s, 0, fn, NULL, arg);
}

int am_store_each_version(struct am_store *s,
                          int (*fn)(void *arg, const char *key, size_t len, uint64_t epoch,
                                    uint64_t seq),
                          void *arg)
{
    return walk(s, 1, NULL, fn, arg);
}

static void on_closed(uv_handle_t *h)
{
    struct am_store *s = h->data;
    uv_cond_destroy(&s->cond);
    uv_mutex_destroy(&s->mu);
    uv_rwlock_destroy(&s->maplock);
    am_free(s);
}

void am_store_close(struct am_store *s)
{
    if (!s || s->closing)
        return;
    publish(s); /* anything staged by a caller that never called am_store_end */
    s->closing = 1;
    uv_mutex_lock(&s->mu);
    s->stopping = 1;
    uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
    uv_thread_join(&s->thread); /* the writer commits everything queued first */
    take_done(s);
    run_callbacks(s);
    if (s->rtxn)
        mdb_txn_abort(s->rtxn);
    s->rtxn = NULL;
    mdb_env_close(s->env);
    close(s->dir_fd); /* releases the directory lock */
    s->env = NULL;
    uv_close((uv_handle_t *)&s->async, on_closed);
}
