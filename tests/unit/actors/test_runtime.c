/* test_runtime.c - the actor runtime (src/actors/runtime.h): activation,
 * mailboxes, the durable and interval modes, idle deactivation, eviction,
 * failed commits and shutdown.
 *
 * Each test has its own loop (never the default one), its own store in a
 * fresh mkdtemp directory, a registry with the built-ins and `probe`, a test
 * type whose actions exercise the handler contract. finish() tears down in
 * the documented order and asserts that uv_loop_close finds nothing open:
 *
 *   am_runtime_shutdown -> run until done -> am_runtime_free ->
 *   am_store_close -> uv_run(UV_RUN_DEFAULT) -> uv_loop_close == 0
 *
 * Waiting is loop-driven: run_until turns the loop until a counter or a
 * predicate holds, with a wake-up timer so the loop never sleeps for long and
 * a wall-clock bound (WAIT_MS) that only a broken runtime reaches. Nothing
 * here asserts speed; the only timing assertion is a lower bound (interval
 * mode never writes before its interval), measured on the loop's own clock.
 *
 * Write in flight, deterministically: the store's writer thread commits
 * whatever is queued as soon as it can, so "a write is in flight" normally
 * lasts microseconds. lock_writer() makes it last as long as a test needs: a
 * child process (forked before the store starts its thread) opens the same
 * LMDB environment and holds its write transaction, so the writer blocks in
 * mdb_txn_begin until unlock_writer(). Completions only ever run on the loop
 * thread, so the runtime sees the write in flight the whole time.
 *
 * Failed commits: a store with a 1 MiB map that may not grow is filled with
 * 200 KiB values until a write fails with -ENOSPC; larger writes then fail
 * for certain, while small ones still fit.
 *
 * A reply's hook runs inside the runtime's callback, to check what holds at
 * that moment (the state is committed) or to call the runtime re-entrantly.
 *
 * Replication: a fake replicator records every send (key, version, a copy of
 * the state, done and ctx) and claims N replicas; the test answers each one
 * itself, so "a replica has not answered yet" lasts as long as it needs.
 * Replicas left unanswered are answered before finish() (shutdown waits for
 * them). Newer copies elsewhere are made by writing the store directly. */
#include "err.h"
#include "mp.h"
#include "registry.h"
#include "runtime.h"
#include "store.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <lmdb.h>
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

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* Bound of every wait. A commit takes milliseconds even under ASan on a
 * loaded 2-core machine; 20 s is reached only when something never happens. */
#define WAIT_MS 20000

static const uint8_t NIL = 0xc0, TRUE = 0xc3;

/* ---- fixture ----------------------------------------------------------- */

static struct {
    char dir[64];
    uv_loop_t loop;
    uv_timer_t wake; /* turns the loop during waits */
    uv_timer_t stop; /* ends run_for */
    struct am_registry *reg;
    struct am_store *store;
    struct am_store_opts so;
    struct am_runtime *rt;
    struct am_runtime_opts ro;
    char err[512]; /* message of the last refused submit */
    int replies;   /* replies seen, for arrival order */
    int done;      /* shutdown's done calls */
    void (*on_done)(void);
    pid_t locker; /* lock_writer's child */
    int lock_cmd, lock_ack;
} g;

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
    memset(&g, 0, sizeof g);
    snprintf(g.dir, sizeof g.dir, "/tmp/amesh-rt-XXXXXX");
    cr_assert_not_null(mkdtemp(g.dir));
    cr_assert_eq(uv_loop_init(&g.loop), 0);
    uv_timer_init(&g.loop, &g.wake);
    uv_timer_init(&g.loop, &g.stop);
    g.so.dir = g.dir;
    g.ro = (struct am_runtime_opts){
        .max_payload = 64 * KiB,
        .max_state = 64 * KiB,
        .max_reply = 64 * KiB,
        .mailbox = 1024,
        .max_actors = 100000,
        .idle_ms = 3600 * 1000, /* tests that want deactivation set it */
        .sync_interval_ms = 0,
    };
}

static void teardown(void)
{
    if (g.locker > 0) {
        close(g.lock_cmd); /* the child exits on EOF */
        close(g.lock_ack);
        waitpid(g.locker, NULL, 0);
    }
    rm_rf(g.dir);
}

TestSuite(runtime, .init = setup, .fini = teardown);

/* ---- waiting --------------------------------------------------------------- */

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

static uint64_t wall_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Turns the loop until done(arg) holds. */
static void run_until_fn(int (*done)(void *), void *arg, const char *what)
{
    uint64_t t0 = wall_ms();
    uv_timer_start(&g.wake, on_wake, 5, 5);
    while (!done(arg)) {
        uv_run(&g.loop, UV_RUN_ONCE);
        cr_assert_lt(wall_ms() - t0, WAIT_MS, "still waiting for %s after %d ms", what, WAIT_MS);
    }
    uv_timer_stop(&g.wake);
}

struct count_goal {
    const int *counter;
    int n;
};

static int count_reached(void *arg)
{
    const struct count_goal *c = arg;
    return *c->counter >= c->n;
}

static void run_until(const int *counter, int n, const char *what)
{
    struct count_goal c = {counter, n};
    run_until_fn(count_reached, &c, what);
}

static void on_stop(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs the loop for ms of loop time. */
static void run_for(uint64_t ms)
{
    int fired = 0;
    g.stop.data = &fired;
    uv_timer_start(&g.stop, on_stop, ms, 0);
    while (!fired)
        uv_run(&g.loop, UV_RUN_ONCE);
}

/* ---- the probe actor type ---------------------------------------------------- */

struct probe {
    int calls;
};

static struct probe g_probe;

static int probe_handle(void *data, const struct am_msg *m, struct am_out *out)
{
    struct probe *p = data;
    p->calls++;
    if (am_msg_action_is(m, "set")) {
        int rc = am_out_state(out, m->payload, m->payload_len);
        return rc ? rc : am_out_reply(out, &TRUE, 1);
    }
    if (am_msg_action_is(m, "get"))
        return m->state_len ? am_out_reply(out, m->state, m->state_len)
                            : am_out_reply(out, &NIL, 1);
    if (am_msg_action_is(m, "set_then_fail")) {
        int rc = am_out_state(out, m->payload, m->payload_len);
        if (rc == 0)
            rc = am_out_reply(out, &TRUE, 1);
        cr_assert_eq(rc, 0);
        return am_out_error(out, AM_ERR_HANDLER, "%.*s refused on purpose", (int)m->id_len, m->id);
    }
    if (am_msg_action_is(m, "bad_state")) {
        static const uint8_t never_used = 0xc1;
        return am_out_state(out, &never_used, 1);
    }
    if (am_msg_action_is(m, "short_state")) {
        static const uint8_t array_of_2_with_1[] = {0x92, 0x01};
        return am_out_state(out, array_of_2_with_1, sizeof array_of_2_with_1);
    }
    if (am_msg_action_is(m, "two_states")) {
        static const uint8_t two_ints[] = {0x01, 0x02};
        return am_out_state(out, two_ints, sizeof two_ints);
    }
    if (am_msg_action_is(m, "bad_reply")) {
        static const uint8_t truncated_str[] = {0xa5, 'a', 'b'};
        return am_out_reply(out, truncated_str, sizeof truncated_str);
    }
    if (am_msg_action_is(m, "positive")) {
        am_out_state(out, m->payload, m->payload_len);
        return 7; /* outside the contract */
    }
    if (am_msg_action_is(m, "enomem"))
        return -ENOMEM;
    if (am_msg_action_is(m, "quiet_set"))
        return am_out_state(out, m->payload, m->payload_len); /* no reply: nil */
    if (am_msg_action_is(m, "whoami")) {
        char s[400];
        int n = snprintf(s, sizeof s, "%.*s|%.*s|%.*s|%zu", (int)m->type_len, m->type,
                         (int)m->id_len, m->id, (int)m->action_len, m->action, m->payload_len);
        uint8_t enc[420];
        enc[0] = 0xd9; /* str 8 */
        enc[1] = (uint8_t)n;
        memcpy(enc + 2, s, (size_t)n);
        return am_out_reply(out, enc, (size_t)n + 2);
    }
    return am_out_error(out, AM_ERR_NO_ACTION, "probe has no action '%.*s'", (int)m->action_len,
                        m->action);
}

static const struct am_actor_type probe_type = {"probe", probe_handle, &g_probe};

/* ---- starting and stopping ---------------------------------------------------- */

static void open_store(void)
{
    char err[512] = "";
    int rc = am_store_open(&g.store, &g.loop, &g.so, err, sizeof err);
    cr_assert_eq(rc, 0, "store open: %s", err);
}

static void start_runtime(void)
{
    int rc = am_runtime_new(&g.rt, &g.loop, g.store, g.reg, &g.ro);
    cr_assert_eq(rc, 0, "runtime: %s", am_strerror(rc));
}

/* Registry, store and runtime with the options in g.so and g.ro. */
static void start(void)
{
    char err[200];
    cr_assert_eq(am_registry_new(&g.reg), 0);
    cr_assert_eq(am_registry_add_builtins(g.reg), 0);
    cr_assert_eq(am_registry_add(g.reg, &probe_type, err, sizeof err), 0, "%s", err);
    open_store();
    start_runtime();
}

static void on_done(void *arg)
{
    cr_assert_eq(arg, &g.done);
    g.done++;
    if (g.on_done)
        g.on_done();
}

/* The documented order, up to the store. */
static void stop_runtime(void)
{
    int before = g.done;
    am_runtime_shutdown(g.rt, on_done, &g.done);
    run_until(&g.done, before + 1, "shutdown's done");
    cr_assert_eq(g.done, before + 1, "done ran more than once");
    am_runtime_free(g.rt);
    g.rt = NULL;
}

static void close_store(void)
{
    am_store_close(g.store);
    g.store = NULL;
    uv_run(&g.loop, UV_RUN_DEFAULT);
}

/* Tears everything down and proves nothing was left open or leaked. */
static void finish(void)
{
    if (g.rt)
        stop_runtime();
    close_store();
    uv_close((uv_handle_t *)&g.wake, NULL);
    uv_close((uv_handle_t *)&g.stop, NULL);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&g.loop), 0, "a handle is still open on the loop");
    am_registry_free(g.reg);
    g.reg = NULL;
    CHECK_LEAKS();
}

static struct am_runtime_stats rt_stats(void)
{
    struct am_runtime_stats st;
    am_runtime_get_stats(g.rt, &st);
    return st;
}

static struct am_store_stats store_stats(void)
{
    struct am_store_stats st;
    am_store_get_stats(g.store, &st);
    return st;
}

/* ---- replies --------------------------------------------------------------- */

struct rep {
    int calls;
    int status;
    int order; /* g.replies when it arrived, from 1 */
    enum am_mp_type kind;
    int64_t i;                   /* AM_MP_INT */
    int b;                       /* AM_MP_BOOL */
    char text[300];              /* AM_MP_STR */
    size_t len;                  /* of the whole body */
    uint64_t hash;               /* XXH3 of the whole body */
    void (*hook)(struct rep *r); /* runs inside the callback */
    void *arg;
};

static void on_reply(void *ctx, uint64_t req_id, int status, const uint8_t *body, size_t len)
{
    struct rep *r = ctx;
    cr_assert_eq(req_id, (uint64_t)(uintptr_t)r, "the request id comes back");
    cr_assert_eq(am_mp_check_one(body, len), 0, "a reply body is one msgpack object");
    r->calls++;
    r->status = status;
    r->order = ++g.replies;
    r->len = len;
    r->hash = XXH3_64bits(body, len);
    const uint8_t *p = body, *end = body + len;
    r->kind = am_mp_peek(p, end);
    if (r->kind == AM_MP_INT) {
        cr_assert_eq(am_mp_read_int(&p, end, &r->i), 0);
    } else if (r->kind == AM_MP_BOOL) {
        cr_assert_eq(am_mp_read_bool(&p, end, &r->b), 0);
    } else if (r->kind == AM_MP_STR) {
        const char *s;
        uint32_t n;
        cr_assert_eq(am_mp_read_str(&p, end, &s, &n), 0);
        snprintf(r->text, sizeof r->text, "%.*s", (int)n, s);
    }
    if (r->hook)
        r->hook(r);
}

/* Submits a call (r non-NULL) or a cast (r NULL); a refusal's message is
 * left in g.err. */
static int submit(const char *type, const char *id, const char *action, const void *payload,
                  size_t len, struct rep *r)
{
    g.err[0] = '\0';
    if (!payload) {
        payload = &NIL;
        len = 1;
    }
    return am_runtime_submit(g.rt, (uint64_t)(uintptr_t)r, type, strlen(type), id, strlen(id),
                             action, strlen(action), payload, len, r ? on_reply : NULL, r, g.err,
                             sizeof g.err);
}

static void submit_ok(const char *type, const char *id, const char *action, const void *payload,
                      size_t len, struct rep *r)
{
    int rc = submit(type, id, action, payload, len, r);
    cr_assert_eq(rc, 0, "submit %s/%s %s: %d (%s): %s", type, id, action, rc, am_strerror(rc),
                 g.err);
}

/* A msgpack int64, for counter payloads. */
struct num {
    uint8_t b[9];
    size_t n;
};

static struct num num(int64_t v)
{
    struct num x;
    struct am_buf b = {x.b, 0, sizeof x.b};
    msgpack_packer pk;
    am_mp_packer_init(&pk, &b);
    cr_assert_eq(msgpack_pack_int64(&pk, v), 0);
    x.n = b.len;
    return x;
}

static void add(const char *id, int64_t n, struct rep *r)
{
    struct num x = num(n);
    submit_ok("counter", id, "add", x.b, x.n, r);
}

/* A msgpack bin of n bytes derived from seed, malloc'd (free it). */
static uint8_t *bin(size_t n, unsigned seed, size_t *len)
{
    uint8_t *p = malloc(n + 5);
    cr_assert_not_null(p);
    p[0] = 0xc6;
    am_be32_put(p + 1, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        p[5 + i] = (uint8_t)(seed * 31u + i * 7u + (i >> 8));
    *len = n + 5;
    return p;
}

/* A msgpack str. */
struct text {
    uint8_t b[40];
    size_t n;
};

static struct text text(const char *s)
{
    struct text t;
    size_t n = strlen(s);
    cr_assert_lt(n, 32);
    t.b[0] = (uint8_t)(0xa0 | n);
    memcpy(t.b + 1, s, n);
    t.n = n + 1;
    return t;
}

/* Calls and waits for the reply. */
static struct rep call(const char *type, const char *id, const char *action, const void *payload,
                       size_t len)
{
    struct rep r = {0};
    submit_ok(type, id, action, payload, len, &r);
    run_until(&r.calls, 1, "a reply");
    cr_assert_eq(r.calls, 1);
    return r;
}

static int64_t counter_value(const char *id)
{
    struct rep r = call("counter", id, "get", NULL, 0);
    cr_assert_eq(r.status, AM_ST_OK, "get %s: %s %s", id, am_status_name(r.status), r.text);
    cr_assert_eq(r.kind, AM_MP_INT);
    return r.i;
}

static void expect_status(const struct rep *r, int status)
{
    cr_assert_eq(r->calls, 1, "%d calls of the reply callback", r->calls);
    cr_assert_eq(r->status, status, "status %s, expected %s (%s)", am_status_name(r->status),
                 am_status_name(status), r->text);
}

static void expect_text(const struct rep *r, const char *needle)
{
    cr_assert_eq(r->kind, AM_MP_STR, "the body is not a str");
    cr_assert(strstr(r->text, needle) != NULL, "'%s' does not say '%s'", r->text, needle);
}

/* ---- the store --------------------------------------------------------------- */

/* Reads key from the store: 0 and the state, or -ENOENT. */
static int stored(const char *key, struct am_buf *state, uint64_t *seq)
{
    uint64_t epoch, s;
    am_buf_init(state);
    int rc = am_store_get(g.store, key, strlen(key), state, &epoch, seq ? seq : &s);
    cr_assert(rc == 0 || rc == -ENOENT, "store get %s: %s", key, am_strerror(rc));
    return rc;
}

static int is_stored(const char *key)
{
    struct am_buf b;
    int rc = stored(key, &b, NULL);
    am_buf_close(&b);
    return rc == 0;
}

/* The stored counter value of key, which must exist. */
static int64_t stored_int(const char *key)
{
    struct am_buf b;
    cr_assert_eq(stored(key, &b, NULL), 0, "%s is not stored", key);
    const uint8_t *p = b.data;
    int64_t v;
    cr_assert_eq(am_mp_read_int(&p, b.data + b.len, &v), 0);
    am_buf_close(&b);
    return v;
}

/* ---- holding the store's writer --------------------------------------------- */

static void locker_main(int cmd, int ack)
{
    char c;
    MDB_env *env;
    MDB_txn *txn;
    if (read(cmd, &c, 1) != 1 || c != 'L')
        _exit(2);
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) || mdb_env_open(env, g.dir, 0, 0600) ||
        mdb_txn_begin(env, NULL, 0, &txn))
        _exit(3);
    c = 'l';
    if (write(ack, &c, 1) != 1)
        _exit(4);
    if (read(cmd, &c, 1) != 1) /* 'U', or EOF when the test died */
        c = 0;
    mdb_txn_abort(txn);
    mdb_env_close(env);
    _exit(c == 'U' ? 0 : 5);
}

/* Forks the child that will hold the writer. Call before start(): the child
 * is forked while the process has no other thread. */
static void locker_fork(void)
{
    int cmd[2], ack[2];
    cr_assert_eq(pipe(cmd), 0);
    cr_assert_eq(pipe(ack), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(cmd[1]);
        close(ack[0]);
        locker_main(cmd[0], ack[1]);
    }
    close(cmd[0]);
    close(ack[1]);
    g.locker = pid;
    g.lock_cmd = cmd[1];
    g.lock_ack = ack[0];
}

static void lock_writer(void)
{
    char c = 'L';
    cr_assert_eq(write(g.lock_cmd, &c, 1), 1);
    cr_assert_eq(read(g.lock_ack, &c, 1), 1, "the locker child died");
    cr_assert_eq(c, 'l');
}

static void unlock_writer(void)
{
    char c = 'U';
    int status;
    cr_assert_eq(write(g.lock_cmd, &c, 1), 1);
    cr_assert_eq(waitpid(g.locker, &status, 0), g.locker);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "locker status %d", status);
    close(g.lock_cmd);
    close(g.lock_ack);
    g.locker = 0;
}

static int store_pending_is(void *arg)
{
    return store_stats().pending == *(uint64_t *)arg;
}

/* ---- durable mode ------------------------------------------------------------ */

static void hook_read_store(struct rep *r)
{
    /* Inside the reply: the value must already be committed. */
    r->arg = (void *)(intptr_t)(is_stored("counter/c1") ? stored_int("counter/c1") : -1);
}

Test(runtime, durable_mode_replies_only_after_the_commit)
{
    start();
    struct rep r = {.hook = hook_read_store};
    add("c1", 5, &r);
    cr_assert_eq(r.calls, 0, "the reply ran before the write was even submitted");
    cr_assert_eq(rt_stats().waiting, 1);
    cr_assert_eq(store_stats().writes, 0);
    run_until(&r.calls, 1, "the add's reply");
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.i, 5);
    cr_assert_eq((intptr_t)r.arg, 5, "the reply ran before its state was committed");

    struct am_store_stats ss = store_stats();
    cr_assert_eq(ss.writes, 1);
    cr_assert_eq(ss.commits, 1);
    cr_assert_eq(ss.records, 1);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.snapshots, 1);
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.calls, 1);
    cr_assert_eq(st.ok, 1);
    cr_assert_eq(st.active, 1);
    cr_assert_eq(st.activations, 1);
    finish();
}

Test(runtime, reads_wait_behind_uncommitted_writes_in_durable_mode)
{
    locker_fork();
    start();
    struct rep a = {0}, b = {0};
    add("c1", 1, &a);
    submit_ok("counter", "c1", "get", NULL, 0, &b);
    cr_assert_eq(a.calls + b.calls, 0, "a read answered before the write it saw committed");
    run_until(&b.calls, 1, "the get's reply");
    expect_status(&a, AM_ST_OK);
    expect_status(&b, AM_ST_OK);
    cr_assert_lt(a.order, b.order, "the get overtook the add");
    cr_assert_eq(a.i, 1);
    cr_assert_eq(b.i, 1);

    /* A read arriving while the write is in flight waits for it too. */
    struct rep c = {0}, d = {0};
    uint64_t one = 1;
    lock_writer();
    add("c1", 1, &c);
    run_until_fn(store_pending_is, &one, "the write to be submitted");
    submit_ok("counter", "c1", "get", NULL, 0, &d);
    run_for(20);
    cr_assert_eq(c.calls + d.calls, 0, "a reply ran while its write was in flight");
    unlock_writer();
    run_until(&d.calls, 1, "the second get's reply");
    cr_assert_lt(c.order, d.order);
    cr_assert_eq(c.i, 2);
    cr_assert_eq(d.i, 2);
    finish();
}

Test(runtime, replies_of_one_actor_keep_submission_order)
{
    enum { N = 1000 };
    start();
    struct rep *r = calloc(N, sizeof *r);
    cr_assert_not_null(r);
    for (int i = 0; i < N; i++)
        add("c1", 1, &r[i]);
    run_until(&r[N - 1].calls, 1, "the last reply");
    for (int i = 0; i < N; i++) {
        expect_status(&r[i], AM_ST_OK);
        cr_assert_eq(r[i].i, i + 1, "reply %d carries %lld", i, (long long)r[i].i);
        cr_assert_eq(r[i].order, i + 1, "reply %d arrived as %d", i, r[i].order);
    }
    /* Handled at once, one write covers them all. */
    cr_assert_eq(store_stats().writes, 1);
    cr_assert_eq(stored_int("counter/c1"), N);
    free(r);
    finish();
}

Test(runtime, replies_keep_their_order_across_writes_in_flight)
{
    enum { N = 1000, ROUNDS = 4 };
    start();
    struct rep *r = calloc(N, sizeof *r);
    cr_assert_not_null(r);
    for (int k = 0; k < ROUNDS; k++) {
        for (int i = k * N / ROUNDS; i < (k + 1) * N / ROUNDS; i++)
            add("c1", 1, &r[i]);
        uv_run(&g.loop, UV_RUN_NOWAIT); /* submits the write of this round */
    }
    run_until(&r[N - 1].calls, 1, "the last reply");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].i, i + 1, "reply %d carries %lld", i, (long long)r[i].i);
        cr_assert_eq(r[i].order, i + 1, "reply %d arrived as %d", i, r[i].order);
    }
    cr_assert_leq(store_stats().writes, ROUNDS);
    cr_assert_eq(counter_value("c1"), N);
    free(r);
    finish();
}

Test(runtime, many_actors_share_commits)
{
    enum { N = 2000 };
    start();
    struct rep *r = calloc(N, sizeof *r);
    cr_assert_not_null(r);
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "c%d", i);
        add(id, i, &r[i]);
    }
    for (int i = 0; i < N; i++)
        run_until(&r[i].calls, 1, "every reply");
    for (int i = 0; i < N; i++) {
        expect_status(&r[i], AM_ST_OK);
        cr_assert_eq(r[i].i, i);
    }
    struct am_store_stats ss = store_stats();
    cr_assert_eq(ss.writes, N);
    cr_assert_lt(ss.commits, ss.writes, "%llu commits for %llu writes: no group commit",
                 (unsigned long long)ss.commits, (unsigned long long)ss.writes);
    cr_assert_eq(rt_stats().snapshots, N);
    cr_assert_eq(rt_stats().active, N);
    free(r);
    finish();
}

/* ---- interval mode ------------------------------------------------------------ */

struct interval_watch {
    uint64_t created; /* loop time the runtime started its sync timer */
    int early;        /* the record appeared before the interval */
};

static int record_appeared(void *arg)
{
    struct interval_watch *w = arg;
    if (!is_stored("counter/c1"))
        return 0;
    if (uv_now(&g.loop) < w->created + g.ro.sync_interval_ms)
        w->early = 1;
    return 1;
}

Test(runtime, interval_mode_replies_at_once_and_writes_later)
{
    g.ro.sync_interval_ms = 50;
    start();
    struct interval_watch w = {.created = uv_now(&g.loop)};
    struct rep r = {0};
    add("c1", 3, &r);
    expect_status(&r, AM_ST_OK); /* before submit returned */
    cr_assert_eq(r.i, 3);
    cr_assert_eq(rt_stats().waiting, 0);
    uv_run(&g.loop, UV_RUN_NOWAIT);
    /* Only meaningful while the interval has not passed: a slow machine may
     * have let the loop clock run past it already. */
    if (uv_now(&g.loop) < w.created + g.ro.sync_interval_ms)
        cr_assert_not(is_stored("counter/c1"), "written before the interval");
    run_until_fn(record_appeared, &w, "the interval's write");
    cr_assert_not(w.early, "the record appeared before the loop ran past the interval");
    cr_assert_eq(stored_int("counter/c1"), 3);
    cr_assert_eq(rt_stats().snapshots, 1);
    finish();
}

Test(runtime, interval_mode_writes_an_actor_once_per_interval)
{
    g.ro.sync_interval_ms = 30;
    start();
    struct interval_watch w = {.created = uv_now(&g.loop)};
    struct rep r[100] = {{0}};
    for (int i = 0; i < 100; i++)
        add("c1", 1, &r[i]);
    cr_assert_eq(r[99].i, 100);
    run_until_fn(record_appeared, &w, "the interval's write");
    cr_assert_not(w.early);
    cr_assert_eq(store_stats().writes, 1, "100 changes in one interval make one write");
    cr_assert_eq(stored_int("counter/c1"), 100);
    finish();
}

static int stored_c1_is_2(void *arg)
{
    (void)arg;
    return is_stored("counter/c1") && stored_int("counter/c1") == 2;
}

/* Ticks that meet an actor whose write is in flight must not drop its newer
 * change: it reaches the disk once the writer is free again. */
static int two_snapshots(void *arg)
{
    (void)arg;
    return rt_stats().snapshots >= 2;
}

Test(runtime, a_change_made_while_its_write_is_in_flight_is_written_at_the_next_interval)
{
    g.ro.sync_interval_ms = 10;
    locker_fork();
    start();
    struct rep a = {0}, b = {0};
    uint64_t one = 1;
    add("c1", 1, &a);
    lock_writer();
    run_until_fn(store_pending_is, &one, "the first interval's write");
    add("c1", 1, &b);
    cr_assert_eq(b.i, 2);
    run_for(50); /* several ticks, all while the first write is in flight */
    cr_assert_eq(rt_stats().snapshots, 0);
    unlock_writer();
    run_until_fn(stored_c1_is_2, NULL, "the second state to be written");
    /* The record can be read before the loop has run the write's callback. */
    run_until_fn(two_snapshots, NULL, "the second write's callback");
    cr_assert_eq(rt_stats().snapshots, 2);
    finish();
}

static void hook_count_records(void)
{
    cr_assert_eq(store_stats().pending, 0, "done ran with writes in flight");
    cr_assert_eq(store_stats().records, 50, "done ran before every write was committed");
}

Test(runtime, shutdown_writes_dirty_actors_in_interval_mode)
{
    enum { N = 50 };
    g.ro.sync_interval_ms = 60000;
    start();
    struct rep r[N] = {{0}};
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "c%d", i);
        add(id, i + 1, &r[i]);
        expect_status(&r[i], AM_ST_OK);
    }
    uv_run(&g.loop, UV_RUN_NOWAIT);
    cr_assert_eq(store_stats().records, 0);

    g.on_done = hook_count_records;
    am_runtime_shutdown(g.rt, on_done, &g.done);
    cr_assert_eq(g.done, 0, "done ran before the writes completed");
    run_until(&g.done, 1, "shutdown's done");
    am_runtime_free(g.rt);
    g.rt = NULL;
    close_store();

    open_store();
    cr_assert_eq(store_stats().records, N);
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof key, "counter/c%d", i);
        cr_assert_eq(stored_int(key), i + 1, "%s", key);
    }
    finish();
}

static struct rep g_held;

static void hook_held_released(void)
{
    cr_assert_eq(g_held.calls, 1, "done ran before a held reply was released");
    cr_assert_eq(rt_stats().waiting, 0);
}

Test(runtime, shutdown_waits_for_held_replies_in_durable_mode)
{
    start();
    add("c1", 1, &g_held);
    g.on_done = hook_held_released;
    am_runtime_shutdown(g.rt, on_done, &g.done);
    cr_assert_eq(g.done, 0);
    cr_assert_eq(g_held.calls, 0);
    run_until(&g.done, 1, "shutdown's done");
    expect_status(&g_held, AM_ST_OK);
    am_runtime_free(g.rt);
    g.rt = NULL;
    cr_assert_eq(stored_int("counter/c1"), 1);
    finish();
}

Test(runtime, submit_after_shutdown_is_refused)
{
    start();
    cr_assert_eq(counter_value("c1"), 0);
    am_runtime_shutdown(g.rt, on_done, &g.done);
    run_until(&g.done, 1, "shutdown's done");
    struct rep r = {0};
    cr_assert_eq(submit("counter", "c1", "add", NULL, 0, &r), AM_ESHUTDOWN);
    cr_assert(strstr(g.err, "shutting down") != NULL, "err '%s'", g.err);
    cr_assert_eq(submit("counter", "c2", "add", NULL, 0, NULL), AM_ESHUTDOWN, "casts too");
    run_for(10);
    cr_assert_eq(r.calls, 0, "the callback of a refused call ran");
    cr_assert_eq(rt_stats().refused, 2);
    am_runtime_free(g.rt);
    g.rt = NULL;
    finish();
}

Test(runtime, state_survives_a_restart_and_seq_keeps_growing)
{
    start();
    struct rep r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        add("c1", 10, &r[i]);
    run_until(&r[2].calls, 1, "the adds");
    struct am_buf b;
    uint64_t seq;
    cr_assert_eq(stored("counter/c1", &b, &seq), 0);
    am_buf_close(&b);
    cr_assert_eq(seq, 3, "one seq per state change");
    stop_runtime();
    close_store();

    open_store();
    start_runtime();
    cr_assert_eq(counter_value("c1"), 30);
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 31);
    cr_assert_eq(stored("counter/c1", &b, &seq), 0);
    am_buf_close(&b);
    cr_assert_eq(seq, 4, "seq continues from the stored one");
    finish();
}

/* ---- handler outcomes ------------------------------------------------------------ */

Test(runtime, handler_error_leaves_state_unchanged)
{
    start();
    struct text v1 = text("v1"), v2 = text("v2");
    struct rep r = call("probe", "p1", "set", v1.b, v1.n);
    expect_status(&r, AM_ST_OK);
    uint64_t writes = store_stats().writes;

    r = call("probe", "p1", "set_then_fail", v2.b, v2.n);
    expect_status(&r, AM_ST_HANDLER);
    expect_text(&r, "p1 refused on purpose");
    cr_assert_eq(r.len, 1 + strlen("p1 refused on purpose"), "the body is exactly the str");

    r = call("probe", "p1", "get", NULL, 0);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.len, v1.n);
    cr_assert_eq(r.hash, XXH3_64bits(v1.b, v1.n), "the state changed");
    cr_assert_eq(store_stats().writes, writes, "a failed handler cost a write");
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.errors, 1);
    cr_assert_eq(st.ok, 2);
    cr_assert_eq(g_probe.calls, 3);
    finish();
}

Test(runtime, handler_producing_invalid_msgpack_gets_handler_error)
{
    start();
    struct text v = text("kept");
    struct rep r = call("probe", "p1", "set", v.b, v.n);
    expect_status(&r, AM_ST_OK);
    uint64_t writes = store_stats().writes;
    const char *bad_state[] = {"bad_state", "short_state", "two_states"};
    for (int i = 0; i < 3; i++) {
        r = call("probe", "p1", bad_state[i], NULL, 0);
        expect_status(&r, AM_ST_HANDLER);
        expect_text(&r, "state that is not msgpack");
    }
    r = call("probe", "p1", "bad_reply", NULL, 0);
    expect_status(&r, AM_ST_HANDLER);
    expect_text(&r, "reply that is not msgpack");

    r = call("probe", "p1", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(v.b, v.n), "the state changed");
    cr_assert_eq(store_stats().writes, writes);
    finish();
}

Test(runtime, handler_returning_a_code_outside_the_contract_fails_cleanly)
{
    start();
    struct text v = text("kept"), w = text("lost");
    call("probe", "p1", "set", v.b, v.n);

    struct rep r = call("probe", "p1", "positive", w.b, w.n);
    expect_status(&r, AM_ST_HANDLER);
    expect_text(&r, am_strerror(AM_EHANDLER));

    r = call("probe", "p1", "enomem", NULL, 0);
    expect_status(&r, AM_ST_INTERNAL);
    expect_text(&r, am_strerror(-ENOMEM));

    r = call("probe", "p1", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(v.b, v.n), "the state changed");
    finish();
}

Test(runtime, handler_sees_type_id_action_and_payload)
{
    start();
    size_t len;
    uint8_t *p = bin(10, 1, &len);
    struct rep r = call("probe", "some-id.1", "whoami", p, len);
    expect_status(&r, AM_ST_OK);
    cr_assert_str_eq(r.text, "probe|some-id.1|whoami|15");
    r = call("probe", "x", "whoami", NULL, 0);
    cr_assert_str_eq(r.text, "probe|x|whoami|1", "no payload arrives as nil");
    cr_assert_eq(g_probe.calls, 2, "the type's data pointer reaches the handler");
    free(p);
    finish();
}

Test(runtime, handler_that_sets_no_reply_answers_nil)
{
    start();
    struct text v = text("v");
    struct rep r = call("probe", "p1", "quiet_set", v.b, v.n);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.kind, AM_MP_NIL);
    cr_assert_eq(r.len, 1);
    r = call("probe", "p1", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(v.b, v.n));
    finish();
}

Test(runtime, unknown_action_is_answered_for_every_type)
{
    start();
    const char *types[] = {"counter", "kv", "echo", "probe"};
    for (int i = 0; i < 4; i++) {
        struct rep r = call(types[i], "a", "frobnicate", NULL, 0);
        expect_status(&r, AM_ST_UNKNOWN_ACTION);
        expect_text(&r, "frobnicate");
    }
    finish();
}

/* A kv whose last value is deleted leaves a tombstone: an empty state with
 * a newer version, so no older copy elsewhere can come back. */
Test(runtime, kv_del_leaves_an_empty_state_with_a_newer_version)
{
    start();
    struct text v = text("value");
    struct rep r = call("kv", "k", "put", v.b, v.n);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.kind, AM_MP_BOOL);
    cr_assert(r.b);
    struct am_buf b;
    uint64_t seq_put, seq_del;
    cr_assert_eq(stored("kv/k", &b, &seq_put), 0);
    cr_assert_gt(b.len, 0);
    am_buf_close(&b);
    r = call("kv", "k", "del", NULL, 0);
    cr_assert(r.kind == AM_MP_BOOL && r.b, "del of a value replies true");
    cr_assert_eq(stored("kv/k", &b, &seq_del), 0, "the tombstone is stored");
    cr_assert_eq(b.len, 0, "a tombstone has no state");
    cr_assert_gt(seq_del, seq_put);
    am_buf_close(&b);
    r = call("kv", "k", "del", NULL, 0);
    cr_assert(r.kind == AM_MP_BOOL && !r.b, "del of nothing replies false");
    r = call("kv", "k", "get", NULL, 0);
    cr_assert_eq(r.kind, AM_MP_NIL);
    finish();
}

Test(runtime, casts_are_applied_and_answered_by_nobody)
{
    start();
    for (int i = 0; i < 3; i++)
        submit_ok("counter", "c1", "add", NULL, 0, NULL);
    submit_ok("counter", "c1", "nonsense", NULL, 0, NULL);
    cr_assert_eq(counter_value("c1"), 3);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.casts, 4);
    cr_assert_eq(st.calls, 1);
    cr_assert_eq(st.errors, 1);
    cr_assert_eq(st.ok, 4);
    finish();
}

/* ---- refusals -------------------------------------------------------------- */

Test(runtime, unknown_type_is_refused_with_a_message)
{
    start();
    struct rep r = {0};
    cr_assert_eq(submit("nosuch", "x", "get", NULL, 0, &r), AM_ENOTYPE);
    cr_assert(strstr(g.err, "'nosuch'") != NULL, "err '%s' does not name the type", g.err);
    char long_type[100];
    memset(long_type, 't', 99);
    long_type[99] = '\0';
    cr_assert_eq(submit(long_type, "x", "get", NULL, 0, &r), AM_ENOTYPE);
    run_for(10);
    cr_assert_eq(r.calls, 0, "the callback of a refused call ran");
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.refused, 2);
    cr_assert_eq(st.activations, 0);
    cr_assert_eq(st.calls, 0);
    finish();
}

Test(runtime, actor_ids_must_be_1_to_255_bytes)
{
    start();
    struct rep r = {0};
    char id[257];
    cr_assert_eq(submit("counter", "", "add", NULL, 0, &r), AM_EPROTO);
    cr_assert(strstr(g.err, "255") != NULL, "err '%s'", g.err);
    memset(id, 'i', 256);
    id[256] = '\0';
    cr_assert_eq(submit("counter", id, "add", NULL, 0, &r), AM_EPROTO);
    cr_assert_eq(r.calls, 0);
    id[255] = '\0';
    struct rep ok = call("counter", id, "add", NULL, 0);
    expect_status(&ok, AM_ST_OK);
    char key[300];
    snprintf(key, sizeof key, "counter/%s", id);
    cr_assert_eq(stored_int(key), 1);
    finish();
}

Test(runtime, payload_over_the_limit_is_refused)
{
    g.ro.max_payload = 100;
    start();
    size_t len;
    uint8_t *p = bin(96, 1, &len); /* 101 bytes */
    struct rep r = {0};
    cr_assert_eq(submit("echo", "e", "echo", p, len, &r), AM_ETOOBIG);
    cr_assert(strstr(g.err, "101") && strstr(g.err, "100"), "err '%s'", g.err);
    cr_assert_eq(rt_stats().refused, 1);
    cr_assert_eq(rt_stats().activations, 0, "a refused message activated its actor");
    free(p);
    p = bin(95, 1, &len); /* exactly the limit */
    r = call("echo", "e", "echo", p, len);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.hash, XXH3_64bits(p, len));
    free(p);
    finish();
}

Test(runtime, state_over_the_limit_is_refused)
{
    g.ro.max_state = 100;
    g.ro.max_payload = g.ro.max_reply = 1000;
    start();
    struct text small = text("small");
    call("kv", "k", "put", small.b, small.n);
    size_t len;
    uint8_t *p = bin(96, 2, &len);
    struct rep r = call("kv", "k", "put", p, len);
    expect_status(&r, AM_ST_TOO_LARGE);
    expect_text(&r, "exceeds the limit of 100");
    r = call("kv", "k", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(small.b, small.n), "the state changed");
    free(p);
    p = bin(95, 3, &len);
    r = call("kv", "k", "put", p, len);
    expect_status(&r, AM_ST_OK);
    r = call("kv", "k", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(p, len));
    free(p);
    finish();
}

Test(runtime, reply_over_the_limit_is_refused)
{
    g.ro.max_reply = 100;
    g.ro.max_payload = g.ro.max_state = 1000;
    start();
    size_t len;
    uint8_t *p = bin(96, 4, &len);
    struct rep r = call("echo", "e", "echo", p, len);
    expect_status(&r, AM_ST_TOO_LARGE);
    expect_text(&r, "reply of 101 bytes");
    /* A state may be larger than a reply may: stored, but not read back. */
    r = call("kv", "k", "put", p, len);
    expect_status(&r, AM_ST_OK);
    r = call("kv", "k", "get", NULL, 0);
    expect_status(&r, AM_ST_TOO_LARGE);
    cr_assert(is_stored("kv/k"));
    free(p);
    p = bin(95, 5, &len);
    r = call("echo", "e", "echo", p, len);
    expect_status(&r, AM_ST_OK);
    free(p);
    finish();
}

Test(runtime, full_mailbox_answers_busy)
{
    g.ro.mailbox = 4;
    start();
    struct rep r[10] = {{0}};
    for (int i = 0; i < 10; i++) {
        struct num one = num(1);
        int rc = submit("counter", "c1", "add", one.b, one.n, &r[i]);
        if (i < 4) {
            cr_assert_eq(rc, 0, "add %d: %s", i, g.err);
        } else {
            cr_assert_eq(rc, AM_EBUSY, "add %d: %d", i, rc);
            cr_assert(strstr(g.err, "mailbox of counter/c1 is full") != NULL, "err '%s'", g.err);
        }
    }
    run_until(&r[3].calls, 1, "the accepted adds");
    for (int i = 0; i < 4; i++) {
        expect_status(&r[i], AM_ST_OK);
        cr_assert_eq(r[i].i, i + 1);
    }
    for (int i = 4; i < 10; i++)
        cr_assert_eq(r[i].calls, 0, "the callback of refused add %d ran", i);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.refused, 6);
    cr_assert_eq(st.calls, 4);
    /* Released replies free the mailbox again. */
    cr_assert_eq(counter_value("c1"), 4);
    finish();
}

struct keys {
    int n;
    char seen[16][32];
};

static void collect_key(void *arg, const char *key, size_t len)
{
    struct keys *k = arg;
    cr_assert_lt(k->n, 16);
    snprintf(k->seen[k->n++], sizeof k->seen[0], "%.*s", (int)len, key);
}

static int has_key(const struct keys *k, const char *key)
{
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->seen[i], key) == 0)
            return 1;
    return 0;
}

Test(runtime, max_actors_evicts_idle_actors_and_refuses_when_none_can_go)
{
    g.ro.max_actors = 10;
    start();
    struct rep r[10] = {{0}};
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "a%d", i);
        add(id, i + 1, &r[i]);
    }
    /* All ten hold uncommitted writes: none can go. */
    struct rep x = {0};
    cr_assert_eq(submit("counter", "a10", "add", NULL, 0, &x), AM_EOVERLOAD);
    cr_assert(strstr(g.err, "10 actors are active") != NULL, "err '%s'", g.err);
    cr_assert_eq(rt_stats().active, 10);
    cr_assert_eq(rt_stats().refused, 1);
    for (int i = 0; i < 10; i++)
        run_until(&r[i].calls, 1, "the adds");

    /* Committed, they are idle and clean: the least recently used goes. */
    x = call("counter", "a10", "add", NULL, 0);
    expect_status(&x, AM_ST_OK);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.active, 10);
    cr_assert_eq(st.deactivations, 1);
    struct keys k = {0};
    am_runtime_each_active(g.rt, collect_key, &k);
    cr_assert_eq(k.n, 10);
    cr_assert_not(has_key(&k, "counter/a0"), "the evicted one was not the oldest");
    cr_assert(has_key(&k, "counter/a10"));
    cr_assert_str_eq(k.seen[0], "counter/a10", "most recently used first");

    /* The evicted one comes back with its state. */
    cr_assert_eq(counter_value("a0"), 1);
    st = rt_stats();
    cr_assert_eq(st.deactivations, 2);
    cr_assert_eq(st.activations, 12);
    cr_assert_eq(counter_value("a1"), 2);
    finish();
}

/* ---- idle deactivation -------------------------------------------------------- */

static void count_active(void *arg, const char *key, size_t len)
{
    (void)key;
    (void)len;
    (*(int *)arg)++;
}

Test(runtime, idle_actors_deactivate_and_come_back_with_their_state)
{
    enum { N = 100 };
    g.ro.idle_ms = 50;
    start();
    struct rep r[N] = {{0}};
    char id[16];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "a%d", i);
        add(id, i + 1, &r[i]);
    }
    for (int i = 0; i < N; i++)
        run_until(&r[i].calls, 1, "the adds");
    run_for(300);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.active, 0);
    cr_assert_eq(st.deactivations, N);
    int active = 0;
    am_runtime_each_active(g.rt, count_active, &active);
    cr_assert_eq(active, 0);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "a%d", i);
        cr_assert_eq(counter_value(id), i + 1, "%s", id);
    }
    cr_assert_eq(rt_stats().activations, 2 * N);
    finish();
}

/* am_runtime_release: keeps odd ids here (a node that still owns them). */
static int keep_odd(void *arg, const char *key, size_t len)
{
    (void)arg;
    return (key[len - 1] - '0') % 2 == 1;
}

/* How often each of counter/a0..a9 was told freed. */
static int freed_count[10];

static void note_freed(void *arg, const char *key, size_t len)
{
    (void)arg;
    cr_assert(len == 10 && memcmp(key, "counter/a", 9) == 0, "%.*s", (int)len, key);
    freed_count[key[9] - '0']++;
}

static int released_all(void *arg)
{
    (void)arg;
    return am_runtime_release(g.rt, keep_odd, note_freed, NULL) == 0;
}

Test(runtime, release_deactivates_the_actors_not_kept_after_writing_them)
{
    g.ro.sync_interval_ms = 100; /* changes are in memory only until written */
    start();
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "a%d", i);
        add(id, i + 1, NULL);
    }
    /* Dirty: the first call starts their writes and keeps them. */
    memset(freed_count, 0, sizeof freed_count);
    cr_assert_eq(am_runtime_release(g.rt, keep_odd, note_freed, NULL), 5);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(freed_count[i], 0, "a%d told freed before its write", i);
    run_until_fn(released_all, NULL, "the even actors released");
    cr_assert_eq(rt_stats().active, 5);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "counter/a%d", i);
        cr_assert_eq(freed_count[i], i % 2 == 0, "a%d told freed %d times", i, freed_count[i]);
        cr_assert_eq(am_runtime_is_active(g.rt, id, strlen(id)), i % 2, "%s", id);
        if (i % 2 == 0)
            cr_assert_eq(stored_int(id), i + 1, "%s was not written first", id);
    }
    finish();
}

static int deactivated_10(void *arg)
{
    (void)arg;
    return rt_stats().deactivations >= 10;
}

Test(runtime, interval_mode_writes_idle_actors_before_deactivating_them)
{
    g.ro.idle_ms = 50;
    g.ro.sync_interval_ms = 100;
    start();
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "a%d", i);
        add(id, i + 1, NULL);
    }
    run_until_fn(deactivated_10, NULL, "ten deactivations");
    cr_assert_eq(rt_stats().active, 0);
    for (int i = 0; i < 10; i++) {
        char key[32];
        snprintf(key, sizeof key, "counter/a%d", i);
        cr_assert_eq(stored_int(key), i + 1, "%s", key);
    }
    finish();
}

/* ---- failed commits ---------------------------------------------------------------- */

/* A 1 MiB map that cannot grow: 200 KiB values fill it after four or so. */
static void small_map(void)
{
    g.so.initial_map = 1 * MiB;
    g.so.max_map = 1 * MiB;
    g.ro.max_payload = g.ro.max_state = g.ro.max_reply = 2 * MiB;
}

/* Durable mode: puts 200 KiB values to kv/f0, f1, ... until one fails;
 * returns its index. */
static int fill_map(void)
{
    for (int i = 0; i < 64; i++) {
        char id[16];
        size_t len;
        snprintf(id, sizeof id, "f%d", i);
        uint8_t *p = bin(200 * KiB, (unsigned)i, &len);
        struct rep r = call("kv", id, "put", p, len);
        free(p);
        if (r.status != AM_ST_OK) {
            expect_status(&r, AM_ST_STORAGE);
            expect_text(&r, "could not be committed");
            cr_assert_geq(i, 1, "not even one value fits");
            return i;
        }
    }
    cr_assert_fail("64 values of 200 KiB fit a map of 1 MiB");
    return -1;
}

Test(runtime, failed_commit_fails_held_replies_and_reverts_state)
{
    small_map();
    start();
    struct text v0 = text("v0"), v1 = text("v1");
    struct rep r = call("kv", "victim", "put", v0.b, v0.n);
    expect_status(&r, AM_ST_OK);

    int failed = fill_map();
    char id[16];
    snprintf(id, sizeof id, "f%d", failed);
    r = call("kv", id, "get", NULL, 0);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.kind, AM_MP_NIL, "the failed put is visible");
    cr_assert_eq(rt_stats().write_errors, 1);

    /* Four messages handled back to back wait behind one write that fails. */
    size_t la, lb;
    uint8_t *a = bin(300 * KiB, 1001, &la), *b = bin(300 * KiB, 1002, &lb);
    struct rep h[4] = {{0}};
    submit_ok("kv", "victim", "put", a, la, &h[0]);
    submit_ok("kv", "victim", "get", NULL, 0, &h[1]);
    submit_ok("kv", "victim", "put", b, lb, &h[2]);
    submit_ok("kv", "victim", "get", NULL, 0, &h[3]);
    cr_assert_eq(rt_stats().waiting, 4);
    run_until(&h[3].calls, 1, "the held replies");
    for (int i = 0; i < 4; i++) {
        expect_status(&h[i], AM_ST_STORAGE);
        expect_text(&h[i], "kv/victim could not be committed");
        if (i)
            cr_assert_lt(h[i - 1].order, h[i].order);
    }
    r = call("kv", "victim", "get", NULL, 0);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.hash, XXH3_64bits(v0.b, v0.n), "not back on the committed state");
    cr_assert_eq(rt_stats().write_errors, 2);

    /* A write in flight, and changes made on top of it while it is: they
     * fail with it, since they built on a state that never existed. */
    struct rep f[3] = {{0}};
    submit_ok("kv", "victim", "put", a, la, &f[0]);
    uv_run(&g.loop, UV_RUN_NOWAIT); /* the write is submitted, not completed */
    cr_assert_eq(store_stats().pending, 1);
    submit_ok("kv", "victim", "put", v1.b, v1.n, &f[1]);
    submit_ok("kv", "victim", "get", NULL, 0, &f[2]);
    run_until(&f[2].calls, 1, "the replies behind the write in flight");
    for (int i = 0; i < 3; i++)
        expect_status(&f[i], AM_ST_STORAGE);
    r = call("kv", "victim", "get", NULL, 0);
    cr_assert_eq(r.hash, XXH3_64bits(v0.b, v0.n), "not back on the committed state");
    cr_assert_eq(rt_stats().write_errors, 3);
    cr_assert_eq(rt_stats().waiting, 0);
    struct am_buf st;
    cr_assert_eq(stored("kv/victim", &st, NULL), 0);
    cr_assert(st.len == v0.n && memcmp(st.data, v0.b, v0.n) == 0);
    am_buf_close(&st);
    free(a);
    free(b);
    finish();
}

/* Several writes of one actor can be in flight. When the first fails, the
 * ones behind it carry states built on the failed one: the store cancels
 * them, their callers are told they failed, and the disk keeps the committed
 * state. */
Test(runtime, a_write_built_on_a_failed_one_is_cancelled_and_fails_its_replies)
{
    small_map();
    locker_fork();
    start();
    struct text v0 = text("v0"), v1 = text("v1");
    call("kv", "victim", "put", v0.b, v0.n);
    fill_map();
    size_t la;
    uint8_t *a = bin(300 * KiB, 11, &la);
    struct rep f[3] = {{0}};
    uint64_t one = 1, two = 2;
    lock_writer();
    submit_ok("kv", "victim", "put", a, la, &f[0]);
    run_until_fn(store_pending_is, &one, "the failing write to be submitted");
    submit_ok("kv", "victim", "put", v1.b, v1.n, &f[1]);
    submit_ok("kv", "victim", "get", NULL, 0, &f[2]);
    run_until_fn(store_pending_is, &two, "the write behind it to be submitted");
    unlock_writer();
    run_until(&f[2].calls, 1, "the replies");
    expect_status(&f[0], AM_ST_STORAGE);
    expect_text(&f[0], "kv/victim could not be committed");
    for (int i = 1; i < 3; i++) {
        expect_status(&f[i], AM_ST_STORAGE);
        expect_text(&f[i], "followed a state whose write failed");
    }
    cr_assert(f[0].order < f[1].order && f[1].order < f[2].order);
    struct rep r = call("kv", "victim", "get", NULL, 0);
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.hash, XXH3_64bits(v0.b, v0.n), "not back on the committed state");
    struct am_buf st;
    cr_assert_eq(stored("kv/victim", &st, NULL), 0);
    cr_assert(st.len == v0.n && memcmp(st.data, v0.b, v0.n) == 0,
              "the disk keeps a state whose callers were told it failed");
    am_buf_close(&st);
    free(a);
    finish();
}

static void hook_get_victim(struct rep *r)
{
    if (r->status != AM_ST_OK)
        submit_ok("kv", "victim", "get", NULL, 0, r->arg);
}

/* Regression: a failed write answered its held replies before putting the
 * actor back on its committed state, so a call made from one of those
 * callbacks read (and was acknowledged with) the state that failed. */
Test(runtime, a_call_made_from_a_failed_reply_sees_the_committed_state)
{
    small_map();
    start();
    struct text v0 = text("v0");
    call("kv", "victim", "put", v0.b, v0.n);
    fill_map();
    size_t la;
    uint8_t *a = bin(300 * KiB, 7, &la);
    struct rep inner = {0}, outer = {.hook = hook_get_victim, .arg = &inner};
    submit_ok("kv", "victim", "put", a, la, &outer);
    run_until(&inner.calls, 1, "the get made from the failed reply");
    expect_status(&outer, AM_ST_STORAGE);
    expect_status(&inner, AM_ST_OK);
    cr_assert_eq(inner.hash, XXH3_64bits(v0.b, v0.n), "read a state that was rolled back");
    cr_assert_lt(outer.order, inner.order);
    free(a);
    finish();
}

static int write_settled(void *arg)
{
    struct am_runtime_stats st = rt_stats();
    return st.snapshots + st.write_errors >= *(uint64_t *)arg;
}

struct stored_goal {
    const char *key;
    uint64_t hash;
};

static int is_stored_as(void *arg)
{
    const struct stored_goal *s = arg;
    struct am_buf b;
    int rc = stored(s->key, &b, NULL);
    int same = rc == 0 && XXH3_64bits(b.data, b.len) == s->hash;
    am_buf_close(&b);
    return same;
}

/* Regression: in interval mode a failed write was to be retried at the next
 * interval, but the actor was not put back on the dirty list. */
Test(runtime, interval_mode_retries_a_failed_write_at_the_next_interval)
{
    small_map();
    g.ro.sync_interval_ms = 20;
    start();
    int failed = -1;
    size_t len = 0;
    uint8_t *p = NULL;
    for (int i = 0; i < 64 && failed < 0; i++) {
        char id[16];
        snprintf(id, sizeof id, "f%d", i);
        free(p);
        p = bin(200 * KiB, (unsigned)i, &len);
        struct rep r = call("kv", id, "put", p, len);
        expect_status(&r, AM_ST_OK); /* interval mode: before the write */
        uint64_t settled = (uint64_t)i + 1;
        run_until_fn(write_settled, &settled, "the interval's write");
        if (rt_stats().write_errors)
            failed = i;
    }
    cr_assert_geq(failed, 1);
    /* Room made by deleting the others lets the retry succeed. */
    for (int i = 0; i < failed; i++) {
        char id[16];
        snprintf(id, sizeof id, "f%d", i);
        struct rep r = call("kv", id, "del", NULL, 0);
        expect_status(&r, AM_ST_OK);
    }
    char key[16];
    snprintf(key, sizeof key, "kv/f%d", failed);
    struct stored_goal goal = {key, XXH3_64bits(p, len)};
    run_until_fn(is_stored_as, &goal, "the failed write to be retried");
    free(p);
    finish();
}

/* Flips the last byte of key's record from another process (a second
 * environment in this one would break LMDB's file locks). */
static void corrupt_record(const char *key)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi;
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 4) ||
            mdb_env_open(env, g.dir, 0, 0600) || mdb_txn_begin(env, NULL, 0, &txn) ||
            mdb_dbi_open(txn, "snapshots", 0, &dbi))
            _exit(1);
        MDB_val k = {strlen(key), (void *)key}, v;
        uint8_t copy[256];
        if (mdb_get(txn, dbi, &k, &v) || v.mv_size > sizeof copy)
            _exit(2);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[v.mv_size - 1] ^= 0x01;
        v.mv_data = copy;
        if (mdb_put(txn, dbi, &k, &v, 0) || mdb_txn_commit(txn))
            _exit(3);
        mdb_env_close(env);
        _exit(0);
    }
    int wst;
    cr_assert_eq(waitpid(pid, &wst, 0), pid);
    cr_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "child status 0x%x", (unsigned)wst);
}

Test(runtime, a_snapshot_that_cannot_be_read_refuses_the_activation)
{
    start();
    call("counter", "c1", "add", NULL, 0);
    call("counter", "c2", "add", NULL, 0);
    stop_runtime(); /* deactivates both */
    corrupt_record("counter/c1");
    start_runtime();
    struct rep r = {0};
    cr_assert_eq(submit("counter", "c1", "get", NULL, 0, &r), AM_ESTORAGE);
    cr_assert(strstr(g.err, "cannot load the state of counter/c1") != NULL, "err '%s'", g.err);
    run_for(10);
    cr_assert_eq(r.calls, 0);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.refused, 1);
    cr_assert_eq(st.active, 0, "an actor without its state was activated");
    cr_assert_eq(counter_value("c2"), 1);
    finish();
}

Test(runtime, free_of_null_is_a_no_op)
{
    am_runtime_free(NULL);
    uv_close((uv_handle_t *)&g.wake, NULL);
    uv_close((uv_handle_t *)&g.stop, NULL);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&g.loop), 0);
}

/* ---- replication ------------------------------------------------------------------ */

/* A fake replicator: send records every call (key, version, a copy of the
 * state, done and ctx) and returns g_repl.replicas; the test answers each
 * replica itself with answer(). Every replica left unanswered must be
 * answered before finish() (repl_finish), since shutdown waits for them. */
#define MAX_SENT 64

struct sent {
    char key[64];
    uint64_t epoch, seq;
    uint8_t *state; /* a copy, malloc'd; NULL for no state */
    size_t len;
    am_replica_done_fn done;
    void *ctx;
    unsigned replicas, answered;
};

static struct {
    unsigned replicas; /* what send returns */
    int sends;
    struct sent s[MAX_SENT];
} g_repl;

static unsigned fake_send(void *arg, const char *key, size_t key_len, uint64_t epoch, uint64_t seq,
                          const uint8_t *state, size_t len, am_replica_done_fn done, void *ctx)
{
    cr_assert_eq(arg, &g_repl, "send gets the replicator's arg");
    cr_assert_lt(g_repl.sends, MAX_SENT);
    cr_assert_lt(key_len, sizeof g_repl.s[0].key);
    cr_assert_not_null(done);
    struct sent *s = &g_repl.s[g_repl.sends++];
    memcpy(s->key, key, key_len);
    s->key[key_len] = '\0';
    s->epoch = epoch;
    s->seq = seq;
    s->len = len;
    s->state = NULL;
    if (len) {
        s->state = malloc(len);
        cr_assert_not_null(s->state);
        memcpy(s->state, state, len);
    }
    s->done = done;
    s->ctx = ctx;
    s->replicas = g_repl.replicas;
    s->answered = 0;
    return g_repl.replicas;
}

static void use_replicator(unsigned replicas)
{
    memset(&g_repl, 0, sizeof g_repl);
    g_repl.replicas = replicas;
    struct am_replicator r = {fake_send, &g_repl};
    am_runtime_set_replicator(g.rt, &r);
}

/* One replica of send i answers. */
static void answer(int i, int stale)
{
    cr_assert_lt(i, g_repl.sends, "send %d never happened", i);
    struct sent *s = &g_repl.s[i];
    cr_assert_lt(s->answered, s->replicas, "every replica of send %d has answered", i);
    s->answered++;
    s->done(s->ctx, stale);
}

static void answer_all(int i, int stale)
{
    while (g_repl.s[i].answered < g_repl.s[i].replicas)
        answer(i, stale);
}

/* Answers every replica still waiting, clears the replicator (shutdown's
 * writes are not sent then) and frees the copies. */
static void repl_finish(void)
{
    for (int i = 0; i < g_repl.sends; i++)
        answer_all(i, 0);
    am_runtime_set_replicator(g.rt, NULL);
    for (int i = 0; i < g_repl.sends; i++) {
        free(g_repl.s[i].state);
        g_repl.s[i].state = NULL;
    }
}

/* Runs the loop until send i happened and its local write was called back. */
static void wait_local_commit(int i)
{
    uint64_t zero = 0;
    run_until(&g_repl.sends, i + 1, "the state to be sent to the replicas");
    run_until_fn(store_pending_is, &zero, "the local write");
}

/* The newest stored copy of key: 0 and its version and state, or -ENOENT. */
static int stored_version(const char *key, struct am_buf *state, uint64_t *epoch, uint64_t *seq)
{
    am_buf_init(state);
    int rc = am_store_get(g.store, key, strlen(key), state, epoch, seq);
    cr_assert(rc == 0 || rc == -ENOENT, "store get %s: %s", key, am_strerror(rc));
    return rc;
}

/* Send i carries exactly the version and state stored for its key. */
static void expect_sent_is_stored(int i)
{
    struct sent *s = &g_repl.s[i];
    struct am_buf b;
    uint64_t epoch, seq;
    cr_assert_eq(stored_version(s->key, &b, &epoch, &seq), 0, "%s is not stored", s->key);
    cr_assert_eq(s->epoch, epoch, "sent epoch %llu, stored %llu", (unsigned long long)s->epoch,
                 (unsigned long long)epoch);
    cr_assert_eq(s->seq, seq, "sent seq %llu, stored %llu", (unsigned long long)s->seq,
                 (unsigned long long)seq);
    cr_assert_eq(s->len, b.len, "sent %zu bytes of state, stored %zu", s->len, b.len);
    cr_assert(b.len == 0 || memcmp(s->state, b.data, b.len) == 0, "sent another state");
    am_buf_close(&b);
}

static void expect_version(const char *key, uint64_t epoch, uint64_t seq)
{
    struct am_buf b;
    uint64_t e, s;
    cr_assert_eq(stored_version(key, &b, &e, &s), 0, "%s is not stored", key);
    am_buf_close(&b);
    cr_assert(e == epoch && s == seq, "%s is stored at (%llu, %llu), expected (%llu, %llu)", key,
              (unsigned long long)e, (unsigned long long)s, (unsigned long long)epoch,
              (unsigned long long)seq);
}

static int is_active(const char *key)
{
    return am_runtime_is_active(g.rt, key, strlen(key));
}

struct put {
    struct am_store_write w;
    int calls, status;
};

static void on_put(struct am_store_write *w, int status)
{
    struct put *p = w->data;
    p->calls++;
    p->status = status;
}

/* Writes a counter's value straight into the store, and waits. */
static void store_put_int(const char *key, uint64_t epoch, uint64_t seq, int64_t v, unsigned flags)
{
    struct num x = num(v);
    struct put p = {0};
    p.w.key = key;
    p.w.key_len = strlen(key);
    p.w.epoch = epoch;
    p.w.seq = seq;
    p.w.state = x.b;
    p.w.state_len = x.n;
    p.w.flags = flags;
    p.w.data = &p;
    cr_assert_eq(am_store_write(g.store, &p.w, on_put), 0);
    run_until(&p.calls, 1, "the direct store write");
    cr_assert_eq(p.status, 0, "direct store write: %s", am_strerror(p.status));
    cr_assert_eq(p.w.stale, 0);
}

Test(runtime, durable_reply_waits_for_the_local_commit_and_every_replica)
{
    start();
    use_replicator(2);
    struct rep r = {0};
    add("c1", 5, &r);
    cr_assert_eq(g_repl.sends, 0, "sent before the write was submitted");
    wait_local_commit(0);
    run_for(20);
    cr_assert_eq(r.calls, 0, "replied after the local commit, before any replica answered");
    cr_assert_eq(rt_stats().waiting, 1);
    cr_assert_eq(rt_stats().snapshots, 0);
    cr_assert_eq(g_repl.sends, 1, "one write, one send");
    cr_assert_str_eq(g_repl.s[0].key, "counter/c1");
    cr_assert_eq(g_repl.s[0].epoch, 1, "a fresh actor's first epoch is 1");
    cr_assert_eq(g_repl.s[0].seq, 1);
    expect_sent_is_stored(0);
    cr_assert_eq(stored_int("counter/c1"), 5);

    answer(0, 0);
    run_for(20);
    cr_assert_eq(r.calls, 0, "replied before the second replica answered");
    answer(0, 0);
    run_until(&r.calls, 1, "the reply");
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.i, 5);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.snapshots, 1);
    cr_assert_eq(st.fenced, 0);
    cr_assert(is_active("counter/c1"));

    /* The next change is sent at the next seq of the same epoch. */
    struct rep r2 = {0};
    add("c1", 1, &r2);
    wait_local_commit(1);
    cr_assert_eq(g_repl.s[1].epoch, 1);
    cr_assert_eq(g_repl.s[1].seq, 2);
    expect_sent_is_stored(1);
    cr_assert_eq(r2.calls, 0);
    answer_all(1, 0);
    run_until(&r2.calls, 1, "the second reply");
    expect_status(&r2, AM_ST_OK);
    cr_assert_eq(r2.i, 6);
    repl_finish();
    finish();
}

Test(runtime, replicas_answering_before_the_local_commit_still_wait_for_it)
{
    locker_fork();
    start();
    use_replicator(2);
    lock_writer();
    struct rep r = {0};
    add("c1", 7, &r);
    run_until(&g_repl.sends, 1, "the send");
    answer_all(0, 0);
    run_for(30);
    cr_assert_eq(store_stats().pending, 1, "the local write completed while the writer is held");
    cr_assert_eq(r.calls, 0, "replied before the local commit");
    unlock_writer();
    run_until(&r.calls, 1, "the reply");
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.i, 7);
    cr_assert_eq(stored_int("counter/c1"), 7);
    expect_sent_is_stored(0);
    repl_finish();
    finish();
}

Test(runtime, a_stale_replica_fences_the_actor_which_comes_back_from_the_store)
{
    start();
    use_replicator(2);
    struct rep r1 = {0}, r2 = {0}, r3 = {0};
    add("c1", 1, &r1);
    wait_local_commit(0);
    answer_all(0, 0);
    run_until(&r1.calls, 1, "the first reply");
    expect_status(&r1, AM_ST_OK);

    add("c1", 2, &r2);
    wait_local_commit(1);
    expect_sent_is_stored(1); /* the local write did commit */
    cr_assert_eq(r2.calls, 0);
    answer(1, 0);
    answer(1, 1); /* this replica holds this version or a newer one */
    run_until(&r2.calls, 1, "the fenced call's reply");
    expect_status(&r2, AM_ST_UNAVAILABLE);
    expect_text(&r2, "counter/c1 has a newer state on another node");
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.fenced, 1);
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.snapshots, 1, "a stale write counted as a snapshot");
    cr_assert_eq(st.write_errors, 0);
    cr_assert_not(is_active("counter/c1"), "a quiet fenced actor stayed in memory");
    cr_assert_eq(st.active, 0);
    cr_assert_eq(st.deactivations, 1);

    /* The local commit stands: the next call activates from it. */
    expect_version("counter/c1", 1, 2);
    cr_assert_eq(stored_int("counter/c1"), 3);
    add("c1", 10, &r3);
    cr_assert(is_active("counter/c1"));
    wait_local_commit(2);
    cr_assert_eq(g_repl.s[2].epoch, 2, "the new activation's epoch");
    cr_assert_eq(g_repl.s[2].seq, 3);
    expect_sent_is_stored(2);
    cr_assert_eq(stored_int("counter/c1"), 13);
    run_for(10);
    cr_assert_eq(r3.calls, 0);
    answer_all(2, 0);
    run_until(&r3.calls, 1, "the reply after reactivation");
    expect_status(&r3, AM_ST_OK);
    cr_assert_eq(r3.i, 13);
    st = rt_stats();
    cr_assert_eq(st.activations, 2);
    cr_assert_eq(st.fenced, 1);
    cr_assert_eq(st.snapshots, 2);
    repl_finish();
    finish();
}

/* Writes behind the stale one carry states built on it: everything that saw
 * it fails, later messages are refused while it is in memory, and it leaves
 * once its last write is answered. */
Test(runtime, a_stale_replica_fails_every_call_that_saw_the_fenced_state)
{
    start();
    use_replicator(1);
    struct rep a = {0}, b = {0}, c = {0}, d = {0};
    add("c1", 1, &a);
    wait_local_commit(0);
    add("c1", 1, &b);
    wait_local_commit(1); /* a second write in flight, built on the first */
    add("c1", 1, &c);     /* handled, its write not yet submitted */
    cr_assert_eq(c.calls, 0);
    cr_assert_eq(rt_stats().waiting, 3);
    answer(0, 1);
    expect_status(&a, AM_ST_UNAVAILABLE);
    expect_status(&c, AM_ST_UNAVAILABLE);
    cr_assert_eq(b.calls, 0, "answered before its own write completed");
    cr_assert_eq(rt_stats().fenced, 1);
    cr_assert(is_active("counter/c1"), "freed with a write in flight");
    cr_assert_eq(submit("counter", "c1", "get", NULL, 0, &d), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "counter/c1 is moving") != NULL, "err '%s'", g.err);
    cr_assert_eq(submit("counter", "c1", "add", NULL, 0, NULL), AM_EUNAVAIL, "casts too");
    run_for(20);
    cr_assert(is_active("counter/c1"), "freed with a write in flight");
    cr_assert_eq(g_repl.sends, 2, "the fenced state was written again");
    answer(1, 1); /* the replica holds a newer copy: this one is stale too */
    expect_status(&b, AM_ST_UNAVAILABLE);
    run_for(10);
    cr_assert_not(is_active("counter/c1"));
    cr_assert_eq(d.calls, 0, "the callback of a refused call ran");
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.fenced, 1, "one actor fenced, counted once");
    cr_assert_eq(st.refused, 2);
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.ok, 0);
    cr_assert_eq(st.errors, 3);
    cr_assert_eq(g_repl.sends, 2);
    repl_finish();
    finish();
}

static void hook_read_store_c1(struct rep *r)
{
    r->arg = (void *)(intptr_t)(is_stored("counter/c1") ? stored_int("counter/c1") : -1);
}

Test(runtime, a_replicator_without_replicas_replies_after_the_local_commit)
{
    start();
    use_replicator(0);
    struct rep r = {.hook = hook_read_store_c1};
    add("c1", 4, &r);
    cr_assert_eq(r.calls, 0);
    run_until(&r.calls, 1, "the reply");
    expect_status(&r, AM_ST_OK);
    cr_assert_eq(r.i, 4);
    cr_assert_eq((intptr_t)r.arg, 4, "the reply ran before its state was committed");
    cr_assert_eq(g_repl.sends, 1, "send was not called");
    expect_sent_is_stored(0);
    cr_assert_eq(rt_stats().snapshots, 1);
    cr_assert_eq(rt_stats().waiting, 0);
    /* The replicator cleared: no send at all. */
    am_runtime_set_replicator(g.rt, NULL);
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 5);
    cr_assert_eq(g_repl.sends, 1, "send called after the replicator was cleared");
    repl_finish();
    finish();
}

static int none_kept(void *arg, const char *key, size_t len)
{
    (void)arg;
    (void)key;
    (void)len;
    return 0;
}

static int deactivations_reach(void *arg)
{
    return rt_stats().deactivations >= *(uint64_t *)arg;
}

Test(runtime, every_activation_writes_at_the_next_epoch)
{
    g.ro.idle_ms = 40;
    start();
    store_put_int("counter/e1", 5, 7, 10, 0);
    cr_assert_eq(call("counter", "e1", "add", NULL, 0).i, 11);
    expect_version("counter/e1", 6, 8);

    /* Released, then reactivated. */
    cr_assert_eq(am_runtime_release(g.rt, none_kept, NULL, NULL), 0);
    cr_assert_not(is_active("counter/e1"));
    cr_assert_eq(call("counter", "e1", "add", NULL, 0).i, 12);
    expect_version("counter/e1", 7, 9);

    /* Idle, then reactivated. */
    uint64_t two = 2;
    run_until_fn(deactivations_reach, &two, "the idle deactivation");
    cr_assert_not(is_active("counter/e1"));
    cr_assert_eq(counter_value("e1"), 12, "a read brought it back");
    expect_version("counter/e1", 7, 9); /* a read writes nothing */
    cr_assert_eq(call("counter", "e1", "add", NULL, 0).i, 13);
    expect_version("counter/e1", 8, 10);
    cr_assert_eq(rt_stats().activations, 3);

    /* The newest copy may be a replica: the activation continues it. */
    store_put_int("counter/e2", 3, 4, 1, 0);
    store_put_int("counter/e2", 9, 20, 2, AM_STORE_REPLICA);
    cr_assert_eq(call("counter", "e2", "add", NULL, 0).i, 3);
    expect_version("counter/e2", 10, 21);
    finish();
}

Test(runtime, fence_of_a_quiet_actor_frees_it_at_once)
{
    start();
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 100, 100), 0, "not active: 0");
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 1); /* active at (1, 1) */
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 1, 1), -1, "the same version");
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 1, 0), -1, "an older seq");
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 0, 100), -1, "an older epoch");
    cr_assert(is_active("counter/c1"));
    cr_assert_eq(rt_stats().fenced, 0);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c2", 10, 100, 100), 0, "another key");

    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 1, 2), 1, "a newer seq");
    cr_assert_not(is_active("counter/c1"), "a quiet fenced actor stays in memory");
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.fenced, 1);
    cr_assert_eq(st.active, 0);
    cr_assert_eq(st.deactivations, 1);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 1, 2), 0, "gone: 0");

    /* Back from the store at the next epoch; a newer epoch fences it even
     * with a lower seq. */
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 2);
    expect_version("counter/c1", 2, 2);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 2, 2), -1);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 3, 0), 1);
    cr_assert_not(is_active("counter/c1"));
    cr_assert_eq(rt_stats().fenced, 2);
    finish();
}

Test(runtime, a_fenced_actor_with_a_write_in_flight_refuses_and_leaves_after_it)
{
    locker_fork();
    start();
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 1);
    uint64_t one = 1;
    struct rep r = {0}, x = {0};
    lock_writer();
    add("c1", 1, &r);
    run_until_fn(store_pending_is, &one, "the write to be submitted");
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 5, 0), 1);
    cr_assert(is_active("counter/c1"), "freed with a write in flight");
    cr_assert_eq(rt_stats().fenced, 1);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 5, 0), 1, "already fenced: 1");
    cr_assert_eq(rt_stats().fenced, 1, "fenced twice");
    cr_assert_eq(submit("counter", "c1", "get", NULL, 0, &x), AM_EUNAVAIL);
    cr_assert(strstr(g.err, "counter/c1 is moving") != NULL, "err '%s'", g.err);
    cr_assert_eq(rt_stats().refused, 1);
    run_for(20);
    cr_assert(is_active("counter/c1"), "freed with a write in flight");
    unlock_writer();
    run_until(&r.calls, 1, "the reply of the write in flight");
    cr_assert_eq(r.calls, 1);
    run_for(10);
    cr_assert_not(is_active("counter/c1"), "stayed in memory after its write completed");
    cr_assert_eq(x.calls, 0, "the callback of a refused call ran");
    cr_assert_eq(rt_stats().active, 0);
    finish();
}

/* runtime.h: once fenced, "the messages that saw that state fail with
 * AM_ST_UNAVAILABLE". A call handled before am_runtime_fence, whose state
 * change is not yet committed, saw the older state: acknowledging it would
 * acknowledge a change that the newer copy does not have, and that the next
 * activation (from the newer copy) loses. The newer copies are stored as
 * src/node/replica.c does: am_runtime_fence, then a replica write
 * (AM_STORE_NEWER | AM_STORE_REPLICA) queued at once. */
static void queue_newer_copy(struct put *p, const char *key, struct num *x)
{
    memset(p, 0, sizeof *p);
    p->w.key = key;
    p->w.key_len = strlen(key);
    p->w.epoch = 5;
    p->w.seq = 0;
    p->w.state = x->b;
    p->w.state_len = x->n;
    p->w.flags = AM_STORE_NEWER | AM_STORE_REPLICA;
    p->w.data = p;
    cr_assert_eq(am_store_write(g.store, &p->w, on_put), 0);
}

Test(runtime, fence_fails_the_calls_that_wait_on_the_older_state)
{
    locker_fork();
    start();
    cr_assert_eq(call("counter", "c1", "add", NULL, 0).i, 1);
    cr_assert_eq(call("counter", "c2", "add", NULL, 0).i, 1);
    uint64_t one = 1;
    struct rep r = {0}, q = {0};
    struct put p1, p2;
    struct num x = num(50);
    lock_writer();
    add("c1", 1, &r); /* its write in flight when fenced */
    run_until_fn(store_pending_is, &one, "the write to be submitted");
    add("c2", 1, &q); /* handled, not yet written when fenced */
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c1", 10, 5, 0), 1);
    queue_newer_copy(&p1, "counter/c1", &x);
    cr_assert_eq(am_runtime_fence(g.rt, "counter/c2", 10, 5, 0), 1);
    queue_newer_copy(&p2, "counter/c2", &x);
    unlock_writer();
    run_until(&r.calls, 1, "c1's reply");
    run_until(&q.calls, 1, "c2's reply");
    run_until(&p2.calls, 1, "the newer copies stored");
    run_for(10);
    cr_assert_not(is_active("counter/c1"));
    cr_assert_not(is_active("counter/c2"));
    expect_version("counter/c1", 5, 0);
    expect_version("counter/c2", 5, 0);
    cr_assert(r.status == AM_ST_UNAVAILABLE && q.status == AM_ST_UNAVAILABLE,
              "in flight when fenced: %s; not yet written when fenced: %s",
              am_status_name(r.status), am_status_name(q.status));
    /* The next activations start from the newer copies. */
    cr_assert_eq(counter_value("c1"), 50);
    cr_assert_eq(counter_value("c2"), 50);
    finish();
}

static void local_stale_fences(const char *id, unsigned flags)
{
    char key[32];
    snprintf(key, sizeof key, "counter/%s", id);
    cr_assert_eq(call("counter", id, "add", NULL, 0).i, 1); /* active at epoch 1 */
    uint64_t fenced = rt_stats().fenced, snaps = rt_stats().snapshots;
    store_put_int(key, 1000, 1, 77, flags);
    cr_assert(is_active(key));
    struct rep r = {0};
    add(id, 1, &r);
    run_until(&r.calls, 1, "the reply");
    expect_status(&r, AM_ST_UNAVAILABLE);
    expect_text(&r, "has a newer state on another node");
    cr_assert_eq(rt_stats().fenced, fenced + 1);
    cr_assert_eq(rt_stats().snapshots, snaps, "a skipped write counted as a snapshot");
    cr_assert_eq(rt_stats().write_errors, 0);
    cr_assert_not(is_active(key), "a quiet fenced actor stayed in memory");
    expect_version(key, 1000, 1);
    cr_assert_eq(stored_int(key), 77, "the newer copy was overwritten");
    /* Back from the newer copy. */
    cr_assert_eq(call("counter", id, "add", NULL, 0).i, 78);
    expect_version(key, 1001, 2);
}

Test(runtime, a_local_write_found_stale_fences_the_actor_and_keeps_the_newer_copy)
{
    start();
    local_stale_fences("s1", 0);
    local_stale_fences("s2", AM_STORE_REPLICA);
    cr_assert_eq(rt_stats().fenced, 2);
    finish();
}

/* The local store finds the write stale while the replicas accept it: the
 * call still fails, once they have answered. */
Test(runtime, a_local_stale_write_fails_its_call_whatever_the_replicas_say)
{
    start();
    use_replicator(1);
    struct rep r0 = {0}, r = {0};
    add("c1", 1, &r0);
    wait_local_commit(0);
    answer_all(0, 0);
    run_until(&r0.calls, 1, "the first reply");
    store_put_int("counter/c1", 1000, 1, 77, AM_STORE_REPLICA);
    add("c1", 1, &r);
    wait_local_commit(1);
    run_for(10);
    cr_assert_eq(r.calls, 0, "answered before its replica");
    cr_assert(is_active("counter/c1"));
    answer_all(1, 0);
    run_until(&r.calls, 1, "the reply");
    expect_status(&r, AM_ST_UNAVAILABLE);
    cr_assert_eq(rt_stats().fenced, 1);
    cr_assert_not(is_active("counter/c1"));
    expect_version("counter/c1", 1000, 1);
    repl_finish();
    finish();
}

Test(runtime, interval_mode_sends_replicas_each_flush_without_holding_replies)
{
    g.ro.sync_interval_ms = 20;
    start();
    use_replicator(2);
    struct rep r1 = {0}, r2 = {0};
    add("c1", 3, &r1);
    expect_status(&r1, AM_ST_OK); /* before submit returned */
    cr_assert_eq(r1.i, 3);
    cr_assert_eq(g_repl.sends, 0, "sent before the interval");
    wait_local_commit(0);
    cr_assert_eq(g_repl.s[0].epoch, 1);
    cr_assert_eq(g_repl.s[0].seq, 1);
    expect_sent_is_stored(0);
    cr_assert_eq(rt_stats().waiting, 0);

    /* The first send still unanswered: the next change replies at once and
     * is sent at the next flush. */
    add("c1", 4, &r2);
    expect_status(&r2, AM_ST_OK);
    cr_assert_eq(r2.i, 7);
    wait_local_commit(1);
    cr_assert_eq(g_repl.s[1].seq, 2);
    expect_sent_is_stored(1);
    cr_assert_eq(stored_int("counter/c1"), 7);
    run_for(60);
    cr_assert_eq(g_repl.sends, 2, "an unchanged actor was sent again");
    answer_all(0, 0);
    answer_all(1, 0);
    run_for(10);
    struct am_runtime_stats st = rt_stats();
    cr_assert_eq(st.snapshots, 2);
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.fenced, 0);
    cr_assert_eq(st.ok, 2);

    /* A stale replica fences it in this mode too. */
    struct rep r3 = {0};
    add("c1", 1, &r3);
    expect_status(&r3, AM_ST_OK);
    wait_local_commit(2);
    answer(2, 0);
    answer(2, 1);
    cr_assert_eq(rt_stats().fenced, 1);
    run_for(30);
    cr_assert_not(is_active("counter/c1"));
    repl_finish();
    finish();
}

Test(runtime, shutdown_waits_for_the_replicas)
{
    start();
    use_replicator(1);
    struct rep r = {0};
    add("c1", 1, &r);
    wait_local_commit(0);
    am_runtime_shutdown(g.rt, on_done, &g.done);
    run_for(30);
    cr_assert_eq(g.done, 0, "done ran before a replica answered");
    cr_assert_eq(r.calls, 0);
    answer(0, 0);
    run_until(&g.done, 1, "shutdown's done");
    expect_status(&r, AM_ST_OK);
    am_runtime_free(g.rt);
    g.rt = NULL;
    for (int i = 0; i < g_repl.sends; i++)
        free(g_repl.s[i].state);
    finish();
}

Test(runtime, a_tombstone_is_sent_as_an_empty_state_with_its_version)
{
    start();
    use_replicator(1);
    struct text v = text("value");
    struct rep p = {0}, d = {0};
    submit_ok("kv", "k", "put", v.b, v.n, &p);
    wait_local_commit(0);
    cr_assert_eq(g_repl.s[0].len, v.n);
    cr_assert_eq(memcmp(g_repl.s[0].state, v.b, v.n), 0);
    answer(0, 0);
    run_until(&p.calls, 1, "the put");
    submit_ok("kv", "k", "del", NULL, 0, &d);
    wait_local_commit(1);
    cr_assert_eq(g_repl.s[1].len, 0, "a tombstone carries no state");
    cr_assert_eq(g_repl.s[1].seq, 2);
    expect_sent_is_stored(1);
    cr_assert_eq(d.calls, 0);
    answer(1, 0);
    run_until(&d.calls, 1, "the del");
    expect_status(&d, AM_ST_OK);
    repl_finish();
    finish();
}
