/* test_store.c - the LMDB snapshot store (src/storage/store.h).
 *
 * Each test runs in a fresh mkdtemp directory under /tmp with its own loop,
 * both removed by the fixture. Writes are driven by running the loop until
 * their callbacks have run (run_until), which only terminates because the
 * store keeps its async handle referenced while writes are pending: if it
 * did not, the loop would go idle and run_until fails instead of hanging.
 *
 * Refusal tests fingerprint every file of the directory (size, mtime,
 * XXH3 of the contents) before the failed open and compare afterwards.
 * Files that the store must not accept are made with raw LMDB calls, the
 * way another program (or a damaged disk) would leave them.
 *
 * The crash test forks a child that acknowledges writes over a pipe and then
 * kills itself with SIGKILL while more writes are in flight; the parent
 * reopens and checks every acknowledged write. */
#include "err.h"
#include "store.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <lmdb.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

#define MiB ((size_t)1 << 20)

/* ---- fixture ------------------------------------------------------------ */

static char g_dir[64];
static uv_loop_t g_loop;
static int g_loop_open;

static void rm_rf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                char sub[512];
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/amesh-store-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    cr_assert_eq(uv_loop_init(&g_loop), 0);
    g_loop_open = 1;
}

static void teardown(void)
{
    if (g_loop_open) {
        uv_run(&g_loop, UV_RUN_DEFAULT);
        uv_loop_close(&g_loop);
    }
    rm_rf(g_dir);
}

TestSuite(store, .init = setup, .fini = teardown);

/* Runs the close callbacks, proves the store left no handle behind, and
 * checks for leaks. */
static void end_test(void)
{
    uv_run(&g_loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&g_loop), 0, "a handle is still open on the loop");
    g_loop_open = 0;
    CHECK_LEAKS();
}

static void path_in(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static int exists(const char *name)
{
    char p[128];
    path_in(p, sizeof p, name);
    return access(p, F_OK) == 0;
}

/* ---- store helpers ------------------------------------------------------ */

static struct am_store_opts opts(void)
{
    struct am_store_opts o = {.dir = g_dir};
    return o;
}

static struct am_store *open_with(const struct am_store_opts *o)
{
    struct am_store *s = NULL;
    char err[512] = "";
    int rc = am_store_open(&s, &g_loop, o, err, sizeof err);
    cr_assert_eq(rc, 0, "open: %d (%s): %s", rc, am_strerror(rc), err);
    cr_assert_not_null(s);
    return s;
}

static struct am_store *open_store(void)
{
    struct am_store_opts o = opts();
    return open_with(&o);
}

static void close_store(struct am_store *s)
{
    am_store_close(s);
    uv_run(&g_loop, UV_RUN_DEFAULT);
}

/* Callbacks of a group of writes; `next` checks submission order. */
struct ctx {
    int done;
    int next;
    int out_of_order;
    int failed;
};

struct req {
    struct am_store_write w;
    struct ctx *ctx;
    int idx;
    int status;
    int calls;
    char key[32];
};

static void on_write(struct am_store_write *w, int status)
{
    struct req *r = w->data;
    r->status = status;
    r->calls++;
    if (r->idx != r->ctx->next)
        r->ctx->out_of_order++;
    r->ctx->next = r->idx + 1;
    r->ctx->done++;
    if (status)
        r->ctx->failed++;
}

static void req_init(struct req *r, struct ctx *c, int idx, const void *state, size_t len)
{
    memset(r, 0, sizeof *r);
    r->ctx = c;
    r->idx = idx;
    r->status = 1; /* no callback yet */
    snprintf(r->key, sizeof r->key, "rec/%05d", idx);
    r->w.key = r->key;
    r->w.key_len = strlen(r->key);
    r->w.epoch = (uint64_t)idx;
    r->w.seq = (uint64_t)idx * 2 + 1;
    r->w.state = state;
    r->w.state_len = len;
    r->w.data = r;
}

static void set_key(struct req *r, const char *key)
{
    snprintf(r->key, sizeof r->key, "%s", key);
    r->w.key_len = strlen(r->key);
}

static void submit(struct am_store *s, struct req *r)
{
    int rc = am_store_write(s, &r->w, on_write);
    cr_assert_eq(rc, 0, "write %s: %d", r->key, rc);
}

/* Runs the loop until *counter reaches n; fails if the loop goes idle first. */
static void run_until(const int *counter, int n)
{
    while (*counter < n) {
        int alive = uv_run(&g_loop, UV_RUN_ONCE);
        cr_assert(alive || *counter >= n, "loop idle with %d of %d callbacks run", *counter, n);
    }
}

/* Deterministic state bytes of record idx. */
static void fill(uint8_t *p, size_t n, int idx)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((unsigned)idx * 131u + i * 7u + (i >> 9));
}

/* Checks that rec/<idx> holds fill(len, idx) with req_init's epoch and seq. */
static void expect_record(struct am_store *s, int idx, size_t len)
{
    char key[32];
    snprintf(key, sizeof key, "rec/%05d", idx);
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch = 0, seq = 0;
    int rc = am_store_get(s, key, strlen(key), &b, &epoch, &seq);
    cr_assert_eq(rc, 0, "get %s: %d (%s)", key, rc, am_strerror(rc));
    cr_assert_eq(b.len, len, "%s: %zu bytes, expected %zu", key, b.len, len);
    uint8_t *want = malloc(len ? len : 1);
    cr_assert_not_null(want);
    fill(want, len, idx);
    cr_assert(memcmp(b.data, want, len) == 0, "%s: state differs", key);
    cr_assert_eq(epoch, (uint64_t)idx);
    cr_assert_eq(seq, (uint64_t)idx * 2 + 1);
    free(want);
    am_buf_close(&b);
}

static int have_record(struct am_store *s, int idx)
{
    char key[32];
    snprintf(key, sizeof key, "rec/%05d", idx);
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    int rc = am_store_get(s, key, strlen(key), &b, &epoch, &seq);
    am_buf_close(&b);
    cr_assert(rc == 0 || rc == -ENOENT, "get %s: %d", key, rc);
    return rc == 0;
}

/* ---- raw LMDB, as another program would use it -------------------------- */

static MDB_env *raw_open(void)
{
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
    int rc = mdb_env_open(env, g_dir, 0, 0600);
    cr_assert_eq(rc, 0, "raw open: %s", mdb_strerror(rc));
    return env;
}

static void raw_put(MDB_env *env, const char *db, const char *key, const void *val, size_t len)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    int rc = mdb_dbi_open(txn, db, db ? 0 : MDB_CREATE, &dbi);
    cr_assert_eq(rc, 0, "raw dbi %s: %s", db ? db : "(main)", mdb_strerror(rc));
    MDB_val k = {strlen(key), (void *)key}, v = {len, (void *)val};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
}

/* Flips the last byte of the stored record of key in "snapshots". */
static void raw_flip_last_byte(MDB_env *env, const char *key)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "snapshots", 0, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v;
    cr_assert_eq(mdb_get(txn, dbi, &k, &v), 0);
    uint8_t *copy = malloc(v.mv_size);
    cr_assert_not_null(copy);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - 1] ^= 0xff;
    v.mv_data = copy;
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    free(copy);
}

/* ---- directory fingerprints --------------------------------------------- */

struct fent {
    char name[256];
    off_t size;
    struct timespec mtime;
    uint64_t hash;
};

struct fsnap {
    int n;
    struct fent e[8];
};

static int fent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct fent *)a)->name, ((const struct fent *)b)->name);
}

static void fingerprint(struct fsnap *fs)
{
    memset(fs, 0, sizeof *fs);
    DIR *d = opendir(g_dir);
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        cr_assert_lt(fs->n, 8);
        struct fent *f = &fs->e[fs->n++];
        snprintf(f->name, sizeof f->name, "%s", e->d_name);
        char p[512];
        path_in(p, sizeof p, e->d_name);
        struct stat sb;
        cr_assert_eq(stat(p, &sb), 0);
        f->size = sb.st_size;
        f->mtime = sb.st_mtim;
        FILE *fp = fopen(p, "rb");
        cr_assert_not_null(fp);
        uint8_t *buf = malloc((size_t)sb.st_size + 1);
        cr_assert_not_null(buf);
        size_t got = fread(buf, 1, (size_t)sb.st_size, fp);
        fclose(fp);
        cr_assert_eq(got, (size_t)sb.st_size);
        f->hash = XXH3_64bits(buf, got);
        free(buf);
    }
    closedir(d);
    qsort(fs->e, (size_t)fs->n, sizeof fs->e[0], fent_cmp);
}

static void expect_unchanged(const struct fsnap *a, const struct fsnap *b)
{
    cr_assert_eq(a->n, b->n, "%d files before, %d after", a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const struct fent *x = &a->e[i], *y = &b->e[i];
        cr_assert_str_eq(x->name, y->name);
        cr_assert_eq(x->size, y->size, "%s changed size", x->name);
        cr_assert(x->mtime.tv_sec == y->mtime.tv_sec && x->mtime.tv_nsec == y->mtime.tv_nsec,
                  "%s changed mtime", x->name);
        cr_assert_eq(x->hash, y->hash, "%s changed contents", x->name);
    }
}

/* Opens g_dir expecting `code`, an error naming g_dir/`file` and containing
 * `needle`, and every file as it was. */
static void expect_refused(int code, const char *file, const char *needle)
{
    struct fsnap before, after;
    fingerprint(&before);
    struct am_store *s = NULL;
    char err[1024] = "";
    struct am_store_opts o = opts();
    int rc = am_store_open(&s, &g_loop, &o, err, sizeof err);
    cr_assert_eq(rc, code, "open returned %d (%s), expected %d; err '%s'", rc, am_strerror(rc),
                 code, err);
    cr_assert_null(s);
    char named[128];
    snprintf(named, sizeof named, "%s%s%s:", g_dir, file[0] ? "/" : "", file);
    cr_assert(strncmp(err, named, strlen(named)) == 0, "err '%s' does not start with '%s'", err,
              named);
    cr_assert(strstr(err, needle) != NULL, "err '%s' does not say '%s'", err, needle);
    fingerprint(&after);
    expect_unchanged(&before, &after);
}

/* ---- reads and writes --------------------------------------------------- */

Test(store, round_trips_epoch_seq_and_state)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    struct req r;
    req_init(&r, &c, 0, "hello", 5);
    set_key(&r, "counter/c1");
    r.w.epoch = 7;
    r.w.seq = 42;
    submit(s, &r);
    run_until(&c.done, 1);
    cr_assert_eq(r.status, 0);

    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch = 0, seq = 0;
    cr_assert_eq(am_store_get(s, "counter/c1", 10, &b, &epoch, &seq), 0);
    cr_assert_eq(b.len, 5);
    cr_assert(memcmp(b.data, "hello", 5) == 0);
    cr_assert_eq(epoch, 7);
    cr_assert_eq(seq, 42);

    /* Overwrite, with a key holding a NUL byte next to it. */
    struct req r2;
    req_init(&r2, &c, 1, "world!", 6);
    set_key(&r2, "counter/c1");
    r2.w.epoch = 8;
    r2.w.seq = 1;
    struct req r3;
    static const char binkey[] = {'b', 0, 'k'};
    req_init(&r3, &c, 2, "\x00\x01\x02", 3);
    r3.w.key = binkey;
    r3.w.key_len = sizeof binkey;
    submit(s, &r2);
    submit(s, &r3);
    run_until(&c.done, 3);
    cr_assert_eq(r2.status, 0);
    cr_assert_eq(r3.status, 0);
    cr_assert_eq(am_store_get(s, "counter/c1", 10, &b, &epoch, &seq), 0);
    cr_assert_eq(b.len, 6);
    cr_assert(memcmp(b.data, "world!", 6) == 0);
    cr_assert_eq(epoch, 8);
    cr_assert_eq(seq, 1);
    cr_assert_eq(am_store_get(s, binkey, sizeof binkey, &b, &epoch, &seq), 0);
    cr_assert_eq(b.len, 3);
    cr_assert(memcmp(b.data, "\x00\x01\x02", 3) == 0);
    cr_assert_eq(am_store_get(s, "b", 1, &b, &epoch, &seq), -ENOENT);

    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.writes, 3);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.records, 2);
    cr_assert_eq(st.pending, 0);
    cr_assert_eq(c.out_of_order, 0);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

Test(store, an_empty_state_is_kept_as_a_tombstone_with_its_version)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    uint8_t state[100];
    fill(state, sizeof state, 1);
    struct req put, del;
    req_init(&put, &c, 0, state, sizeof state);
    req_init(&del, &c, 1, NULL, 0);
    set_key(&put, "rec/00001");
    set_key(&del, "rec/00001");
    put.w.epoch = 1;
    put.w.seq = 3;
    submit(s, &put);
    run_until(&c.done, 1);
    expect_record(s, 1, sizeof state);

    del.w.epoch = 1;
    del.w.seq = 4;
    submit(s, &del);
    run_until(&c.done, 2);
    cr_assert_eq(del.status, 0);
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    cr_assert_eq(am_store_get(s, "rec/00001", 9, &b, &epoch, &seq), 0);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(epoch, 1);
    cr_assert_eq(seq, 4);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

/* Writes key at version (epoch, seq) with flags and state byte x; returns
 * the finished request's stale flag. */
static int write_version(struct am_store *s, const char *key, uint64_t epoch, uint64_t seq,
                         unsigned flags, uint8_t x)
{
    struct ctx c = {0};
    struct req r;
    req_init(&r, &c, 0, &x, 1);
    set_key(&r, key);
    r.w.epoch = epoch;
    r.w.seq = seq;
    r.w.flags = flags;
    submit(s, &r);
    run_until(&c.done, 1);
    cr_assert_eq(r.status, 0);
    return r.w.stale;
}

static void expect_version(struct am_store *s, const char *key, uint64_t epoch, uint64_t seq,
                           uint8_t x)
{
    struct am_buf b;
    am_buf_init(&b);
    uint64_t e = 0, q = 0;
    cr_assert_eq(am_store_get(s, key, strlen(key), &b, &e, &q), 0);
    cr_assert_eq(e, epoch, "%s: epoch %llu, expected %llu", key, (unsigned long long)e,
                 (unsigned long long)epoch);
    cr_assert_eq(q, seq, "%s: seq %llu, expected %llu", key, (unsigned long long)q,
                 (unsigned long long)seq);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.data[0], x);
    am_buf_close(&b);
}

Test(store, get_returns_the_newer_of_snapshot_and_replica)
{
    struct am_store *s = open_store();
    cr_assert_eq(write_version(s, "a/1", 2, 10, 0, 'S'), 0);
    cr_assert_eq(write_version(s, "a/1", 3, 1, AM_STORE_REPLICA, 'R'), 0);
    expect_version(s, "a/1", 3, 1, 'R'); /* a higher epoch wins over a higher seq */
    cr_assert_eq(write_version(s, "b/1", 2, 10, AM_STORE_REPLICA, 'R'), 0);
    cr_assert_eq(write_version(s, "b/1", 2, 11, 0, 'S'), 0);
    expect_version(s, "b/1", 2, 11, 'S');
    cr_assert_eq(write_version(s, "c/1", 2, 10, AM_STORE_REPLICA, 'R'), 0);
    expect_version(s, "c/1", 2, 10, 'R'); /* a replica alone */
    close_store(s);
    end_test();
}

Test(store, a_conditional_write_is_skipped_when_any_copy_is_as_new)
{
    struct am_store *s = open_store();
    unsigned newer = AM_STORE_NEWER, replica = AM_STORE_NEWER | AM_STORE_REPLICA;
    cr_assert_eq(write_version(s, "k/1", 5, 7, newer, 'a'), 0); /* nothing stored yet */
    cr_assert_eq(write_version(s, "k/1", 5, 7, newer, 'b'), 1); /* same version */
    cr_assert_eq(write_version(s, "k/1", 5, 6, replica, 'c'), 1); /* older than the snapshot */
    cr_assert_eq(write_version(s, "k/1", 4, 99, replica, 'd'), 1); /* older epoch */
    expect_version(s, "k/1", 5, 7, 'a');
    cr_assert_eq(write_version(s, "k/1", 6, 1, replica, 'e'), 0);
    expect_version(s, "k/1", 6, 1, 'e');
    /* The replica is now the newest copy: a snapshot must beat it too. */
    cr_assert_eq(write_version(s, "k/1", 5, 8, newer, 'f'), 1);
    cr_assert_eq(write_version(s, "k/1", 6, 2, newer, 'g'), 0);
    expect_version(s, "k/1", 6, 2, 'g');
    /* An unconditional write is never skipped. */
    cr_assert_eq(write_version(s, "k/1", 1, 1, 0, 'h'), 0);
    expect_version(s, "k/1", 6, 1, 'e'); /* the replica is newer than that snapshot now */
    close_store(s);
    end_test();
}

static int list_keys(void *arg, const char *key, size_t len)
{
    struct am_buf *b = arg;
    return am_buf_append(b, key, len) || am_buf_append(b, ",", 1);
}

Test(store, each_key_lists_both_databases_once_in_key_order)
{
    struct am_store *s = open_store();
    write_version(s, "b", 1, 1, 0, 'x');
    write_version(s, "a", 1, 1, AM_STORE_REPLICA, 'x');
    write_version(s, "c", 1, 1, AM_STORE_REPLICA, 'x');
    write_version(s, "c", 1, 1, 0, 'x');
    write_version(s, "bb", 1, 1, AM_STORE_REPLICA, 'x');
    write_version(s, "d", 1, 1, 0, 'x');
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_store_each_key(s, list_keys, &b), 0);
    cr_assert_eq(b.len, strlen("a,b,bb,c,d,"));
    cr_assert_eq(memcmp(b.data, "a,b,bb,c,d,", b.len), 0, "%.*s", (int)b.len, b.data);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

static int list_versions(void *arg, const char *key, size_t len, uint64_t epoch, uint64_t seq)
{
    char line[64];
    int n = snprintf(line, sizeof line, "%.*s=%llu.%llu,", (int)len, key,
                     (unsigned long long)epoch, (unsigned long long)seq);
    return am_buf_append(arg, line, (size_t)n);
}

Test(store, each_version_gives_each_key_once_with_its_newest_version)
{
    struct am_store *s = open_store();
    write_version(s, "a", 3, 1, 0, 'x');
    write_version(s, "a", 2, 9, AM_STORE_REPLICA, 'x'); /* older than the snapshot */
    write_version(s, "b", 1, 4, 0, 'x');
    write_version(s, "b", 1, 5, AM_STORE_REPLICA, 'x'); /* newer than the snapshot */
    write_version(s, "c", 7, 2, AM_STORE_REPLICA, 'x');
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_store_each_version(s, list_versions, &b), 0);
    const char *want = "a=3.1,b=1.5,c=7.2,";
    cr_assert_eq(b.len, strlen(want), "%.*s", (int)b.len, b.data);
    cr_assert_eq(memcmp(b.data, want, b.len), 0, "%.*s", (int)b.len, b.data);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

Test(store, returns_enoent_for_a_missing_key_and_leaves_the_buffer)
{
    struct am_store *s = open_store();
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_buf_set(&b, "keep", 4), 0);
    uint64_t epoch = 99, seq = 98;
    cr_assert_eq(am_store_get(s, "nope", 4, &b, &epoch, &seq), -ENOENT);
    cr_assert_eq(b.len, 4);
    cr_assert_eq(epoch, 99);
    cr_assert_eq(seq, 98);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

Test(store, rejects_bad_keys_without_ever_calling_back)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    static char longkey[513];
    memset(longkey, 'k', sizeof longkey - 1);
    struct req empty, null_key, too_long, longest;
    req_init(&empty, &c, 0, "x", 1);
    empty.w.key_len = 0;
    req_init(&null_key, &c, 0, "x", 1);
    null_key.w.key = NULL;
    req_init(&too_long, &c, 0, "x", 1);
    too_long.w.key = longkey;
    too_long.w.key_len = 512;
    req_init(&longest, &c, 0, "x", 1);
    longest.w.key = longkey;
    longest.w.key_len = 511;

    cr_assert_eq(am_store_write(s, &empty.w, on_write), -EINVAL);
    cr_assert_eq(am_store_write(s, &null_key.w, on_write), -EINVAL);
    cr_assert_eq(am_store_write(s, &too_long.w, on_write), -EINVAL);
    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.pending, 0);
    submit(s, &longest);
    run_until(&c.done, 1);
    cr_assert_eq(longest.status, 0);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    cr_assert_eq(empty.calls + null_key.calls + too_long.calls, 0);

    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    cr_assert_eq(am_store_get(s, longkey, 512, &b, &epoch, &seq), -EINVAL);
    cr_assert_eq(am_store_get(s, longkey, 0, &b, &epoch, &seq), -EINVAL);
    cr_assert_eq(am_store_get(s, longkey, 511, &b, &epoch, &seq), 0);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

Test(store, commits_many_writes_in_few_transactions_in_submission_order)
{
    enum { N = 5000, LEN = 64 };
    struct am_store *s = open_store();
    struct ctx c = {0};
    struct req *r = calloc(N, sizeof *r);
    uint8_t(*state)[LEN] = calloc(N, LEN);
    cr_assert(r && state);
    for (int i = 0; i < N; i++) {
        fill(state[i], LEN, i);
        req_init(&r[i], &c, i, state[i], LEN);
        submit(s, &r[i]);
    }
    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.pending, N); /* callbacks only run when the loop runs */
    run_until(&c.done, N);

    cr_assert_eq(c.out_of_order, 0);
    cr_assert_eq(c.failed, 0);
    am_store_get_stats(s, &st);
    cr_assert_eq(st.writes, N);
    cr_assert_lt(st.commits, st.writes, "%llu commits for %llu writes",
                 (unsigned long long)st.commits, (unsigned long long)st.writes);
    cr_assert_gt(st.max_batch, 1);
    cr_assert_eq(st.records, N);
    cr_assert_eq(st.pending, 0);
    for (int i = 0; i < N; i++)
        expect_record(s, i, LEN);
    free(r);
    free(state);
    close_store(s);
    end_test();
}

/* Rewrites of the same keys in one transaction after another: in place
 * (same size), grown and shrunk, each conditional on being newer. Every
 * key keeps one record with its last state. */
Test(store, rewrites_in_place_grown_and_shrunk_keep_one_record_per_key)
{
    enum { N = 2000, ROUNDS = 5, MAXLEN = 40 };
    static const size_t lens[ROUNDS] = {16, 16, 40, 8, 8};
    struct am_store *s = open_store();
    struct req *r = calloc(N, sizeof *r);
    uint8_t(*state)[MAXLEN] = calloc(N, MAXLEN);
    cr_assert(r && state);
    for (int round = 0; round < ROUNDS; round++) {
        struct ctx c = {0};
        for (int i = 0; i < N; i++) {
            fill(state[i], lens[round], i + round);
            req_init(&r[i], &c, i, state[i], lens[round]);
            r[i].w.epoch = 1;
            r[i].w.seq = (uint64_t)round + 1;
            r[i].w.flags = AM_STORE_NEWER;
            submit(s, &r[i]);
        }
        run_until(&c.done, N);
        cr_assert_eq(c.failed, 0, "round %d", round);
        struct am_store_stats st;
        am_store_get_stats(s, &st);
        cr_assert_eq(st.records, N, "round %d: %llu records", round,
                     (unsigned long long)st.records);
        for (int i = 0; i < N; i++) {
            cr_assert_eq(r[i].w.stale, 0, "round %d: rec/%05d taken for stale", round, i);
            struct am_buf b;
            am_buf_init(&b);
            uint64_t epoch = 0, seq = 0;
            uint8_t want[MAXLEN];
            fill(want, lens[round], i + round);
            cr_assert_eq(am_store_get(s, r[i].key, r[i].w.key_len, &b, &epoch, &seq), 0);
            cr_assert_eq(b.len, lens[round], "round %d: rec/%05d", round, i);
            cr_assert(memcmp(b.data, want, b.len) == 0, "round %d: rec/%05d differs", round, i);
            cr_assert_eq(seq, (uint64_t)round + 1);
            am_buf_close(&b);
        }
    }
    free(r);
    free(state);
    close_store(s);
    end_test();
}

/* Writes handed to the writer while it applies a batch join that batch's
 * commit (store.joined), up to max_batch, and everything still completes
 * in submission order with its own state. Whether the second hand-over
 * reaches the writer during the apply depends on the threads' timing, so
 * rounds repeat until one does (each round's apply takes milliseconds;
 * the hand-over follows its start by a fraction of that). */
Test(store, writes_that_arrive_while_a_batch_is_applied_join_its_commit)
{
    enum { FIRST = 3000, MORE = 1500, BATCH = 4000, LEN = 512, ROUNDS = 30 };
    struct am_store_opts o = opts();
    o.max_batch = BATCH;
    struct am_store *s = open_with(&o);
    struct req *r = calloc(FIRST + MORE, sizeof *r);
    uint8_t(*state)[LEN] = calloc(FIRST + MORE, LEN);
    cr_assert(r && state);
    struct am_store_stats st = {0};
    int round;
    for (round = 0; round < ROUNDS && st.joined == 0; round++) {
        struct ctx c = {0};
        am_store_begin(s);
        for (int i = 0; i < FIRST; i++) {
            fill(state[i], LEN, i + round);
            req_init(&r[i], &c, i, state[i], LEN);
            r[i].w.seq += (uint64_t)round * 2 * (FIRST + MORE);
            submit(s, &r[i]);
        }
        am_store_end(s); /* the writer takes these and starts applying */
        usleep(300);
        am_store_begin(s);
        for (int i = FIRST; i < FIRST + MORE; i++) {
            fill(state[i], LEN, i + round);
            req_init(&r[i], &c, i, state[i], LEN);
            r[i].w.seq += (uint64_t)round * 2 * (FIRST + MORE);
            submit(s, &r[i]);
        }
        am_store_end(s);
        run_until(&c.done, FIRST + MORE);
        cr_assert_eq(c.failed, 0);
        cr_assert_eq(c.out_of_order, 0);
        am_store_get_stats(s, &st);
        cr_assert_leq(st.max_batch, BATCH);
    }
    cr_assert_gt(st.joined, 0, "no write joined a batch in %d rounds", round);
    cr_assert_eq(st.writes, (uint64_t)round * (FIRST + MORE));
    for (int i = 0; i < FIRST + MORE; i++) {
        struct am_buf b;
        am_buf_init(&b);
        uint64_t epoch = 0, seq = 0;
        uint8_t want[LEN];
        fill(want, LEN, i + round - 1);
        cr_assert_eq(am_store_get(s, r[i].key, r[i].w.key_len, &b, &epoch, &seq), 0);
        cr_assert_eq(b.len, LEN);
        cr_assert(memcmp(b.data, want, LEN) == 0, "rec/%05d differs", i);
        am_buf_close(&b);
    }
    cr_log_info("joined %llu writes in %d rounds", (unsigned long long)st.joined, round);
    free(r);
    free(state);
    close_store(s);
    end_test();
}

Test(store, never_puts_more_than_max_batch_writes_in_one_transaction)
{
    enum { N = 1000, BATCH = 10 };
    struct am_store_opts o = opts();
    o.max_batch = BATCH;
    struct am_store *s = open_with(&o);
    struct ctx c = {0};
    struct req *r = calloc(N, sizeof *r);
    cr_assert_not_null(r);
    for (int i = 0; i < N; i++) {
        req_init(&r[i], &c, i, "v", 1);
        submit(s, &r[i]);
    }
    run_until(&c.done, N);
    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.writes, N);
    cr_assert_leq(st.max_batch, BATCH);
    cr_assert_geq(st.commits, N / BATCH);
    cr_assert_eq(c.out_of_order, 0);
    free(r);
    close_store(s);
    end_test();
}

Test(store, keeps_an_idle_loop_free_and_a_busy_one_alive)
{
    struct am_store *s = open_store();
    cr_assert_eq(uv_run(&g_loop, UV_RUN_NOWAIT), 0, "an idle store keeps the loop alive");
    struct ctx c = {0};
    struct req r;
    req_init(&r, &c, 0, "x", 1);
    submit(s, &r);
    cr_assert(uv_loop_alive(&g_loop), "a pending write does not keep the loop alive");
    run_until(&c.done, 1);
    cr_assert_eq(uv_loop_alive(&g_loop), 0);
    close_store(s);
    end_test();
}

/* each_key's visitor: records keys, reads each one back (the store must
 * allow it), and stops after stop_after keys. */
struct seen {
    struct am_store *s;
    char keys[8][8];
    int n, stop_after, read_fail;
};

static int collect(void *arg, const char *key, size_t len)
{
    struct seen *v = arg;
    cr_assert_lt(v->n, 8);
    cr_assert_lt(len, sizeof v->keys[0]);
    memcpy(v->keys[v->n], key, len);
    v->keys[v->n][len] = '\0';
    v->n++;
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    if (am_store_get(v->s, key, len, &b, &epoch, &seq) != 0)
        v->read_fail++;
    am_buf_close(&b);
    return v->n == v->stop_after ? 7 : 0;
}

Test(store, lists_keys_in_order_and_stops_when_asked)
{
    struct am_store *s = open_store();
    static const char *const keys[] = {"b", "a/1", "c", "a"};
    struct ctx c = {0};
    struct req r[4];
    for (int i = 0; i < 4; i++) {
        req_init(&r[i], &c, i, "v", 1);
        set_key(&r[i], keys[i]);
        submit(s, &r[i]);
    }
    run_until(&c.done, 4);

    struct seen all = {.s = s, .stop_after = 100};
    cr_assert_eq(am_store_each_key(s, collect, &all), 0);
    cr_assert_eq(all.n, 4);
    cr_assert_str_eq(all.keys[0], "a");
    cr_assert_str_eq(all.keys[1], "a/1");
    cr_assert_str_eq(all.keys[2], "b");
    cr_assert_str_eq(all.keys[3], "c");
    cr_assert_eq(all.read_fail, 0);

    struct seen two = {.s = s, .stop_after = 2};
    cr_assert_eq(am_store_each_key(s, collect, &two), 7);
    cr_assert_eq(two.n, 2);
    close_store(s);
    end_test();
}

/* ---- map growth --------------------------------------------------------- */

Test(store, grows_the_map_without_failing_a_write)
{
    enum { LEN = 200 * 1024, N = (20 << 20) / LEN + 1 }; /* > 20 MiB in all */
    struct am_store_opts o = opts();
    o.initial_map = 1 * MiB;
    struct am_store *s = open_with(&o);
    struct ctx c = {0};
    struct req *r = calloc(N, sizeof *r);
    uint8_t *state = malloc((size_t)N * LEN);
    cr_assert(r && state);
    for (int i = 0; i < N; i++) {
        fill(state + (size_t)i * LEN, LEN, i);
        req_init(&r[i], &c, i, state + (size_t)i * LEN, LEN);
        submit(s, &r[i]);
    }
    /* Read what is committed while the writer remaps under us. */
    while (c.done < N) {
        int alive = uv_run(&g_loop, UV_RUN_ONCE);
        cr_assert(alive || c.done >= N, "loop idle with %d of %d callbacks run", c.done, N);
        if (c.done > 0)
            expect_record(s, c.done - 1, LEN);
    }
    cr_assert_eq(c.failed, 0);
    cr_assert_eq(c.out_of_order, 0);
    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_geq(st.map_grows, 1);
    cr_assert_geq(st.map_size, (uint64_t)N * LEN);
    cr_assert_eq(st.writes, N);
    uint64_t grown = st.map_size;
    close_store(s);

    s = open_with(&o); /* the same small initial map: the grown size wins */
    for (int i = 0; i < N; i++)
        expect_record(s, i, LEN);
    am_store_get_stats(s, &st);
    cr_assert_eq(st.map_size, grown);
    cr_assert_eq(st.map_grows, 0);
    free(r);
    free(state);
    close_store(s);
    end_test();
}

Test(store, fails_only_the_write_that_cannot_fit_under_max_map)
{
    struct am_store_opts o = opts();
    o.initial_map = 1 * MiB;
    o.max_map = 2 * MiB;
    struct am_store *s = open_with(&o);
    uint8_t small[100];
    uint8_t *big = malloc(4 * MiB);
    cr_assert_not_null(big);
    fill(small, sizeof small, 0);
    fill(big, 4 * MiB, 1);
    struct ctx c = {0};
    struct req r[4];
    req_init(&r[0], &c, 0, small, sizeof small);
    req_init(&r[1], &c, 1, big, 4 * MiB);
    req_init(&r[2], &c, 2, small, sizeof small);
    for (int i = 0; i < 3; i++)
        submit(s, &r[i]);
    run_until(&c.done, 3);
    cr_assert_eq(r[0].status, 0);
    cr_assert_eq(r[1].status, -ENOSPC);
    cr_assert_eq(r[2].status, 0, "a write batched with the failed one failed: %d", r[2].status);
    cr_assert_eq(c.out_of_order, 0);

    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.writes, 2);
    cr_assert_leq(st.map_size, 2 * MiB);

    expect_record(s, 0, sizeof small);
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    cr_assert_eq(am_store_get(s, r[1].key, r[1].w.key_len, &b, &epoch, &seq), -ENOENT);
    am_buf_close(&b);

    /* ...and the store still takes writes that fit. */
    fill(small, sizeof small, 3);
    req_init(&r[3], &c, 3, small, sizeof small);
    submit(s, &r[3]);
    run_until(&c.done, 4);
    cr_assert_eq(r[3].status, 0);
    expect_record(s, 3, sizeof small);
    free(big);
    close_store(s);
    end_test();
}

/* ---- crash recovery ----------------------------------------------------- */

enum { CRASH_ACKED = 300, CRASH_BATCH = 50, CRASH_EXTRA = 2000, CRASH_LEN = 512 };

struct crash {
    int fd;
    int done;
};

struct creq {
    struct am_store_write w;
    struct crash *cr;
    int32_t idx;
    char key[32];
    uint8_t state[CRASH_LEN];
};

static void crash_cb(struct am_store_write *w, int status)
{
    struct creq *r = w->data;
    int32_t v = status ? -1 : r->idx;
    if (write(r->cr->fd, &v, sizeof v) != (ssize_t)sizeof v)
        _exit(10);
    r->cr->done++;
    if (r->idx == CRASH_ACKED)
        raise(SIGKILL); /* with most of CRASH_EXTRA queued or committing */
}

static void crash_submit(struct am_store *s, struct creq *r, struct crash *cr, int idx)
{
    r->cr = cr;
    r->idx = idx;
    snprintf(r->key, sizeof r->key, "rec/%05d", idx);
    fill(r->state, CRASH_LEN, idx);
    r->w.key = r->key;
    r->w.key_len = strlen(r->key);
    r->w.epoch = (uint64_t)idx;
    r->w.seq = (uint64_t)idx * 2 + 1;
    r->w.state = r->state;
    r->w.state_len = CRASH_LEN;
    r->w.data = r;
    if (am_store_write(s, &r->w, crash_cb) != 0)
        _exit(11);
}

/* The child: no Criterion asserts, exits only by SIGKILL or _exit. */
static void crash_child(int fd)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop))
        _exit(12);
    struct am_store *s;
    struct am_store_opts o = opts();
    char err[256];
    if (am_store_open(&s, &loop, &o, err, sizeof err))
        _exit(13);
    struct crash cr = {.fd = fd};
    struct creq *r = calloc(CRASH_ACKED + CRASH_EXTRA, sizeof *r);
    if (!r)
        _exit(14);
    struct am_buf b;
    am_buf_init(&b);
    for (int base = 0; base < CRASH_ACKED; base += CRASH_BATCH) {
        for (int i = base; i < base + CRASH_BATCH; i++)
            crash_submit(s, &r[i], &cr, i);
        while (cr.done < base + CRASH_BATCH)
            if (!uv_run(&loop, UV_RUN_ONCE) && cr.done < base + CRASH_BATCH)
                _exit(17);   /* idle with writes pending */
        uint64_t epoch, seq; /* leaves a reader slot registered to this pid */
        if (am_store_get(s, r[base].key, r[base].w.key_len, &b, &epoch, &seq))
            _exit(15);
    }
    for (int i = CRASH_ACKED; i < CRASH_ACKED + CRASH_EXTRA; i++)
        crash_submit(s, &r[i], &cr, i);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(16); /* the callback of CRASH_ACKED never returns */
}

Test(store, keeps_every_acknowledged_write_after_kill_9)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        crash_child(p[1]);
    }
    close(p[1]);
    int32_t v;
    int last = -1;
    while (read(p[0], &v, sizeof v) == (ssize_t)sizeof v) {
        cr_assert_neq(v, -1, "a write failed in the child after %d", last);
        cr_assert_eq(v, last + 1, "acknowledged out of order");
        last = v;
    }
    close(p[0]);
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "child ended with status 0x%x",
              (unsigned)wst);
    cr_assert_eq(last, CRASH_ACKED);

    struct am_store *s = open_store();
    struct am_store_meta m;
    am_store_get_meta(s, &m);
    cr_assert_eq(m.incarnation, 2);
    for (int i = 0; i <= last; i++)
        expect_record(s, i, CRASH_LEN);
    /* Unacknowledged writes may or may not have landed, but whole batches
     * commit in submission order: what is there is intact and a prefix. */
    int present = last + 1;
    while (present < CRASH_ACKED + CRASH_EXTRA && have_record(s, present))
        expect_record(s, present++, CRASH_LEN);
    for (int i = present; i < CRASH_ACKED + CRASH_EXTRA; i++)
        cr_assert(!have_record(s, i), "rec %d present after missing rec %d", i, present);
    /* Writes after the crash work: the writer lock and reader table are sane. */
    struct ctx c = {.next = 9000};
    struct req r;
    req_init(&r, &c, 9000, "after", 5);
    submit(s, &r);
    run_until(&c.done, 1);
    cr_assert_eq(r.status, 0);
    close_store(s);
    end_test();
}

/* ---- refusals ----------------------------------------------------------- */

static void write_file(const char *name, const void *p, size_t n)
{
    char path[128];
    path_in(path, sizeof path, name);
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(p, 1, n, fp), n);
    cr_assert_eq(fclose(fp), 0);
}

/* A closed store holding n records of len bytes. */
static void make_store(int n, size_t len)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    struct req *r = calloc((size_t)n, sizeof *r);
    uint8_t *state = malloc((size_t)n * len);
    cr_assert(r && state);
    for (int i = 0; i < n; i++) {
        fill(state + (size_t)i * len, len, i);
        req_init(&r[i], &c, i, state + (size_t)i * len, len);
        submit(s, &r[i]);
    }
    run_until(&c.done, n);
    cr_assert_eq(c.failed, 0);
    close_store(s);
    free(r);
    free(state);
}

Test(store, refuses_a_fresh_directory_holding_a_foreign_file_untouched)
{
    write_file("notes.txt", "mine\n", 5);
    expect_refused(AM_EFOREIGN, "",
                   "holds 'notes.txt', which is not an amesh file; refusing to use this data "
                   "directory");
    cr_assert(!exists("data.mdb") && !exists("lock.mdb"));
    end_test();
}

Test(store, refuses_a_store_with_a_foreign_file_beside_it_untouched)
{
    make_store(10, 100);
    write_file("data.mdb.bak", "x", 1);
    expect_refused(AM_EFOREIGN, "", "holds 'data.mdb.bak', which is not an amesh file");
    end_test();
}

Test(store, refuses_random_bytes_as_not_lmdb_untouched)
{
    enum { LEN = 64 * 1024 };
    uint8_t *junk = malloc(LEN);
    cr_assert_not_null(junk);
    uint64_t x = 0x9e3779b97f4a7c15u; /* xorshift64: the same bytes every run */
    for (size_t i = 0; i < LEN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        junk[i] = (uint8_t)x;
    }
    write_file("data.mdb", junk, LEN);
    free(junk);
    expect_refused(AM_EFOREIGN, "data.mdb", "not an LMDB file");
    cr_assert(!exists("lock.mdb"), "the failed open created lock.mdb");
    end_test();
}

Test(store, refuses_an_empty_data_file_untouched)
{
    write_file("data.mdb", "", 0);
    expect_refused(AM_ECORRUPT, "data.mdb", "truncated: 0 bytes");
    cr_assert(!exists("lock.mdb"), "the failed open created lock.mdb");
    end_test();
}

Test(store, refuses_an_lmdb_file_of_another_program_untouched)
{
    MDB_env *env = raw_open();
    raw_put(env, NULL, "hello", "world", 5);
    mdb_env_close(env);
    expect_refused(AM_EFOREIGN, "data.mdb", "an LMDB file without amesh metadata");
    end_test();
}

Test(store, refuses_meta_of_another_program_untouched)
{
    MDB_env *env = raw_open();
    raw_put(env, NULL, "unused", "", 0); /* the main db must exist first */
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi), 0);
    MDB_val k = {7, "program"}, v = {6, "other!"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_refused(AM_EFOREIGN, "data.mdb", "written by 'other!', not by amesh");
    end_test();
}

Test(store, refuses_a_newer_format_untouched)
{
    make_store(3, 10);
    MDB_env *env = raw_open();
    uint8_t fmt[4];
    am_be32_put(fmt, AM_STORE_FORMAT + 1);
    raw_put(env, "meta", "format", fmt, 4);
    mdb_env_close(env);
    char want[128];
    snprintf(want, sizeof want, "format %d is newer than this build supports (%d)",
             AM_STORE_FORMAT + 1, AM_STORE_FORMAT);
    expect_refused(AM_ENEWER, "data.mdb", want);
    end_test();
}

Test(store, refuses_a_truncated_data_file_untouched)
{
    make_store(200, 1024);
    char path[128];
    path_in(path, sizeof path, "data.mdb");
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(truncate(path, sb.st_size / 2), 0);
    char want[128];
    snprintf(want, sizeof want, "truncated: %lld bytes, expected at least",
             (long long)(sb.st_size / 2));
    expect_refused(AM_ECORRUPT, "data.mdb", want);
    end_test();
}

Test(store, refuses_a_record_that_fails_its_checksum_untouched)
{
    make_store(5, 10);
    MDB_env *env = raw_open();
    raw_flip_last_byte(env, "rec/00003");
    mdb_env_close(env);
    expect_refused(AM_ECORRUPT, "data.mdb", "record 'rec/00003' fails its checksum");
    end_test();
}

Test(store, refuses_a_record_that_is_not_a_record_untouched)
{
    make_store(2, 10);
    MDB_env *env = raw_open();
    raw_put(env, "snapshots", "odd\x01key", "short", 5);
    mdb_env_close(env);
    expect_refused(AM_ECORRUPT, "data.mdb", "record 'odd\\x01key' is not a snapshot record");
    end_test();
}

Test(store, reports_a_record_corrupted_while_open)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    struct req r[2];
    req_init(&r[0], &c, 0, "0123456789", 10);
    req_init(&r[1], &c, 1, "abcdefghij", 10);
    submit(s, &r[0]);
    submit(s, &r[1]);
    run_until(&c.done, 2);

    /* Another process damages a record behind the store's back (a second
     * environment in this process would break LMDB's file locks). */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) ||
            mdb_env_open(env, g_dir, 0, 0600) || mdb_txn_begin(env, NULL, 0, &txn) ||
            mdb_dbi_open(txn, "snapshots", 0, &dbi))
            _exit(1);
        MDB_val k = {9, "rec/00000"}, v;
        if (mdb_get(txn, dbi, &k, &v))
            _exit(2);
        uint8_t copy[64];
        if (v.mv_size > sizeof copy)
            _exit(3);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[v.mv_size - 1] ^= 0x01;
        v.mv_data = copy;
        if (mdb_put(txn, dbi, &k, &v, 0) || mdb_txn_commit(txn))
            _exit(4);
        mdb_env_close(env);
        _exit(0);
    }
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "child status 0x%x", (unsigned)wst);

    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    cr_assert_eq(am_store_get(s, "rec/00000", 9, &b, &epoch, &seq), AM_ECORRUPT);
    cr_assert_eq(am_store_get(s, "rec/00001", 9, &b, &epoch, &seq), 0);
    cr_assert(b.len == 10 && memcmp(b.data, "abcdefghij", 10) == 0);
    am_buf_close(&b);
    close_store(s);
    end_test();
}

/* ---- open and close ----------------------------------------------------- */

Test(store, increments_incarnation_and_records_the_name_at_each_open)
{
    struct am_store_opts o = opts();
    o.node_name = "n1";
    struct am_store *s = open_with(&o);
    struct am_store_meta m;
    am_store_get_meta(s, &m);
    cr_assert_eq(m.incarnation, 1);
    cr_assert_str_eq(m.name, "n1");
    cr_assert_eq(m.format, AM_STORE_FORMAT);
    close_store(s);

    o.node_name = NULL; /* keeps the recorded name */
    s = open_with(&o);
    am_store_get_meta(s, &m);
    cr_assert_eq(m.incarnation, 2);
    cr_assert_str_eq(m.name, "n1");
    close_store(s);

    o.node_name = "n1";
    s = open_with(&o);
    am_store_get_meta(s, &m);
    cr_assert_eq(m.incarnation, 3);
    cr_assert_str_eq(m.name, "n1");
    close_store(s);
    end_test();
}

Test(store, refuses_a_data_directory_of_another_node_name)
{
    struct am_store_opts o = opts();
    o.node_name = "n1";
    close_store(open_with(&o));
    o.node_name = "n2";
    struct am_store *s = NULL;
    char err[512] = "";
    cr_assert_eq(am_store_open(&s, &g_loop, &o, err, sizeof err), AM_EFOREIGN);
    cr_assert_null(s);
    cr_assert(strstr(err, "belongs to node 'n1', not 'n2'"), "%s", err);
    o.node_name = "n1";
    close_store(open_with(&o)); /* still fine under its own name */
    end_test();
}

Test(store, refuses_a_data_directory_open_in_another_store)
{
    struct am_store_opts o = opts();
    struct am_store *a = open_with(&o);
    struct am_store *b = NULL;
    char err[512] = "";
    cr_assert_eq(am_store_open(&b, &g_loop, &o, err, sizeof err), -EBUSY);
    cr_assert(strstr(err, "in use by another amesh process"), "%s", err);
    close_store(a);
    close_store(open_with(&o)); /* free again once closed */
    end_test();
}

Test(store, creates_a_missing_directory_with_mode_0700)
{
    char sub[128];
    path_in(sub, sizeof sub, "data");
    struct am_store_opts o = opts();
    o.dir = sub;
    struct am_store *s = open_with(&o);
    struct stat sb;
    cr_assert_eq(stat(sub, &sb), 0);
    cr_assert(S_ISDIR(sb.st_mode));
    cr_assert_eq(sb.st_mode & 0777, 0700, "mode %o", (unsigned)(sb.st_mode & 0777));
    close_store(s);
    end_test();
}

Test(store, commits_everything_queued_before_close_returns)
{
    enum { N = 300 };
    struct am_store *s = open_store();
    struct ctx c = {0};
    static struct req r[N];
    static uint8_t state[N][32];
    for (int i = 0; i < N; i++) {
        fill(state[i], 32, i);
        req_init(&r[i], &c, i, state[i], 32);
        submit(s, &r[i]);
    }
    am_store_close(s); /* without running the loop: close runs the callbacks */
    cr_assert_eq(c.done, N);
    cr_assert_eq(c.failed, 0);
    cr_assert_eq(c.out_of_order, 0);
    uv_run(&g_loop, UV_RUN_DEFAULT);

    s = open_store();
    for (int i = 0; i < N; i++)
        expect_record(s, i, 32);
    close_store(s);
    end_test();
}

/* A callback that runs during am_store_close and tries to write again. */
struct late {
    struct am_store *s;
    struct req again;
    int rc;
    int ran;
};

static void on_write_then_retry(struct am_store_write *w, int status)
{
    struct late *l = w->data;
    cr_assert_eq(status, 0);
    l->ran = 1;
    l->rc = am_store_write(l->s, &l->again.w, on_write);
}

Test(store, refuses_writes_once_close_began)
{
    struct am_store *s = open_store();
    struct ctx c = {0};
    struct late l = {.s = s, .rc = 12345};
    struct req first;
    req_init(&first, &c, 0, "x", 1);
    first.w.data = &l;
    req_init(&l.again, &c, 1, "y", 1);
    cr_assert_eq(am_store_write(s, &first.w, on_write_then_retry), 0);
    am_store_close(s);
    cr_assert(l.ran, "close returned before the queued write's callback ran");
    cr_assert_eq(l.rc, -ESHUTDOWN);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    cr_assert_eq(l.again.calls, 0, "a refused write was called back");
    end_test();
}

static struct am_store *g_closing_store;

/* Closes the store from the first callback, as a node shutting down would. */
static void on_write_close_first(struct am_store_write *w, int status)
{
    struct req *r = w->data;
    on_write(w, status);
    if (r->idx == 0)
        am_store_close(g_closing_store);
}

Test(store, closes_from_inside_a_callback_and_still_calls_back_in_order)
{
    enum { N = 50 };
    struct am_store *s = open_store();
    g_closing_store = s;
    struct ctx c = {0};
    static struct req r[N];
    for (int i = 0; i < N; i++) {
        req_init(&r[i], &c, i, "v", 1);
        cr_assert_eq(am_store_write(s, &r[i].w, on_write_close_first), 0);
    }
    run_until(&c.done, 1);
    cr_assert_eq(c.done, N, "close inside a callback left writes uncalled");
    cr_assert_eq(c.out_of_order, 0);
    cr_assert_eq(c.failed, 0);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N; i++)
        cr_assert_eq(r[i].calls, 1);

    s = open_store();
    for (int i = 0; i < N; i++) {
        struct am_buf b;
        am_buf_init(&b);
        uint64_t epoch, seq;
        cr_assert_eq(am_store_get(s, r[i].key, r[i].w.key_len, &b, &epoch, &seq), 0);
        am_buf_close(&b);
    }
    close_store(s);
    end_test();
}

/* A failed write of a key cancels the later writes of that key submitted
 * before its callback ran (they carry states built on the failed one), even
 * in the same batch; other keys are untouched, and a write of the key
 * submitted after the callback is committed. */
Test(store, cancels_later_writes_of_a_key_whose_write_failed)
{
    struct am_store_opts o = opts();
    o.initial_map = 1 * MiB;
    o.max_map = 2 * MiB;
    struct am_store *s = open_with(&o);
    uint8_t small[100];
    uint8_t *big = malloc(4 * MiB);
    cr_assert_not_null(big);
    fill(small, sizeof small, 0);
    fill(big, 4 * MiB, 1);
    struct ctx c = {0};
    struct req r[5];
    req_init(&r[0], &c, 0, big, 4 * MiB); /* K: cannot fit */
    req_init(&r[1], &c, 1, small, sizeof small);
    set_key(&r[1], "rec/00000"); /* K again, built on r[0] */
    req_init(&r[2], &c, 2, small, sizeof small); /* another key */
    am_store_begin(s); /* one batch: the failure and its follower meet in it */
    for (int i = 0; i < 3; i++)
        submit(s, &r[i]);
    am_store_end(s);
    run_until(&c.done, 3);
    cr_assert_eq(r[0].status, -ENOSPC);
    cr_assert_eq(r[1].status, -ECANCELED, "got %d", r[1].status);
    cr_assert_eq(r[2].status, 0);
    cr_assert_eq(c.out_of_order, 0);
    struct am_buf b;
    am_buf_init(&b);
    uint64_t epoch, seq;
    cr_assert_eq(am_store_get(s, "rec/00000", 9, &b, &epoch, &seq), -ENOENT,
                 "the state that followed a failed one reached the disk");
    am_buf_close(&b);

    /* After the failure's callback ran, the key takes writes again. */
    req_init(&r[3], &c, 3, small, sizeof small);
    set_key(&r[3], "rec/00000");
    submit(s, &r[3]);
    run_until(&c.done, 4);
    cr_assert_eq(r[3].status, 0);
    free(big);
    close_store(s);
    end_test();
}

Test(store, hands_staged_writes_to_the_writer_only_at_the_end)
{
    struct am_store *s = open_store();
    uint8_t v[16];
    fill(v, sizeof v, 7);
    struct ctx c = {0};
    struct req r[50];
    am_store_begin(s);
    am_store_begin(s); /* nested */
    for (int i = 0; i < 50; i++) {
        req_init(&r[i], &c, i, v, sizeof v);
        submit(s, &r[i]);
    }
    am_store_end(s);
    for (int i = 0; i < 20; i++)
        uv_run(&g_loop, UV_RUN_NOWAIT);
    usleep(20000);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    cr_assert_eq(c.done, 0, "a staged write was committed before the outer end");
    struct am_store_stats st;
    am_store_get_stats(s, &st);
    cr_assert_eq(st.commits, 0);
    cr_assert_eq(st.pending, 50);
    am_store_end(s);
    run_until(&c.done, 50);
    cr_assert_eq(c.failed, 0);
    cr_assert_eq(c.out_of_order, 0);
    am_store_get_stats(s, &st);
    cr_assert_eq(st.writes, 50);
    close_store(s);
    end_test();
}
