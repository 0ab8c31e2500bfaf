/* test_node.c - one real `amesh node` process at a time, driven over TCP and
 * through the `amesh` CLI: durability across kill -9 and SIGTERM, large
 * values, many actors, hostile input, refused data directories, plug-in
 * actor libraries, shutdown with calls in flight, back-pressure, casts and
 * status.
 *
 * Each test binds its own loopback address (127.0.0.10 + its number, port
 * 7946) and keeps its files in its own temporary directory. The suite's
 * .fini kills every node a test left running and removes the directory, so
 * a failed assertion leaves nothing behind; PR_SET_PDEATHSIG (proc.c) covers
 * a test process that dies outright.
 *
 * Every node a test starts is stopped with SIGTERM and must exit 0: under
 * ASan a leak in the node makes that exit code non-zero. No test asserts on
 * speed; the waits below are generous bounds for a loaded 2-core machine
 * under ASan, and polls end as soon as their condition holds. */
#include "proc.h"

#include "buf.h"
#include "client.h"
#include "err.h"
#include "json.h"
#include "mp.h"
#include "proto.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

#define PORT "7946"
/* Bound of one client wait: far above any answer on an idle loopback, so it
 * only fires when the node is stuck. */
#define CLIENT_TIMEOUT_MS 20000
/* Bound of one CLI command. */
#define CLI_TIMEOUT_MS 20000

/* ---- fixture --------------------------------------------------------------- */

static struct {
    char dir[256];
    struct proc_node node;
} w;

static void setup(void)
{
    /* A node that closes a connection must not kill the test with SIGPIPE
     * (am_client sends with MSG_NOSIGNAL; this covers everything else). */
    signal(SIGPIPE, SIG_IGN);
    memset(&w, 0, sizeof w);
    int rc = proc_tmpdir(w.dir, sizeof w.dir, "node");
    cr_assert_eq(rc, 0, "mkdtemp: %s", strerror(-rc));
}

static void teardown(void)
{
    proc_node_cleanup(&w.node);
    proc_rmtree(w.dir);
}

TestSuite(node, .init = setup, .fini = teardown);

/* w.dir/name into out. */
static void path_in(char *out, size_t len, const char *name)
{
    int n = snprintf(out, len, "%s/%s", w.dir, name);
    cr_assert(n > 0 && (size_t)n < len, "path too long");
}

/* Prepares w.node for host (e.g. "127.0.0.10") with data dir w.dir/data. */
static void node_prepare(const char *host)
{
    char addr[32], data[512], log[512];
    snprintf(addr, sizeof addr, "%s:" PORT, host);
    path_in(data, sizeof data, "data");
    path_in(log, sizeof log, "node.log");
    proc_node_init(&w.node, addr, data, log);
}

/* Starts w.node with the extra flags (NULL-terminated list, may be NULL). */
static void node_start(const char *const *extra)
{
    char why[1600];
    int rc = proc_node_start(&w.node, extra, why, sizeof why);
    cr_assert_eq(rc, 0, "%s", why);
}

/* SIGTERM; the node must exit 0 (ASan: no leaks either). */
static void node_stop_ok(void)
{
    char tail[1024];
    int code = proc_node_stop(&w.node, 20000);
    if (code != 0)
        proc_log_tail(w.node.log, tail, sizeof tail);
    cr_assert_eq(code, 0, "node exited with %d after SIGTERM; log ends:\n%s", code,
                 code ? tail : "");
}

static void node_kill9(void)
{
    cr_assert_eq(proc_node_kill9(&w.node), 0, "kill -9 failed");
}

/* ---- client helpers -------------------------------------------------------- */

static struct am_client *client_open(void)
{
    struct am_client *c = NULL;
    char err[160] = "";
    int rc = am_client_open(&c, w.node.addr, CLIENT_TIMEOUT_MS, err, sizeof err);
    cr_assert_eq(rc, 0, "connect %s: %s", w.node.addr, err);
    return c;
}

/* One msgpack integer into a fixed buffer (at most 9 bytes). */
static size_t pack_int(uint8_t out[9], int64_t v)
{
    struct am_buf b = {out, 0, 9};
    msgpack_packer pk;
    am_mp_packer_init(&pk, &b);
    msgpack_pack_int64(&pk, v);
    return b.len;
}

static int64_t body_int(const uint8_t *p, size_t len)
{
    int64_t v = 0;
    const uint8_t *pos = p;
    int rc = am_mp_read_int(&pos, p + len, &v);
    cr_assert(rc == 0 && pos == p + len, "reply body is not one integer");
    return v;
}

/* The error message of a failed reply, as a C string (static buffer). */
static const char *body_msg(const uint8_t *p, size_t len)
{
    static char msg[512];
    const uint8_t *pos = p;
    const char *s;
    uint32_t n;
    if (am_mp_read_str(&pos, p + len, &s, &n))
        return "(not a str)";
    snprintf(msg, sizeof msg, "%.*s", (int)n, s);
    return msg;
}

/* A CALL on c that must answer ok with an integer, which is returned. arg
 * is the integer payload, or NULL for nil. */
static int64_t call_int(struct am_client *c, const char *type, const char *id, const char *action,
                        const int64_t *arg)
{
    uint8_t p[9];
    size_t plen = arg ? pack_int(p, *arg) : 0;
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    int rc = am_client_call(c, AM_MSG_CALL, type, id, action, arg ? p : NULL, plen, &reply,
                            &status);
    cr_assert_eq(rc, 0, "%s %s %s: %s", type, id, action, am_strerror(rc));
    cr_assert_eq(status, AM_ST_OK, "%s %s %s: %s: %s", type, id, action, am_status_name(status),
                 body_msg(reply.data, reply.len));
    int64_t v = body_int(reply.data, reply.len);
    am_buf_close(&reply);
    return v;
}

/* `counter ID get` on a new connection. */
static int64_t counter_get(const char *id)
{
    struct am_client *c = client_open();
    int64_t v = call_int(c, "counter", id, "get", NULL);
    am_client_close(c);
    return v;
}

/* Appends one CALL frame "counter ID add N" with request id rid. */
static void encode_add(struct am_buf *out, uint64_t rid, const char *id, int64_t n)
{
    uint8_t p[9];
    size_t plen = pack_int(p, n);
    int rc = am_encode_call(out, AM_MSG_CALL, rid, "counter", 7, id, strlen(id), "add", 3, p, plen);
    cr_assert_eq(rc, 0, "encode");
}

static void send_raw(struct am_client *c, const struct am_buf *b)
{
    int rc = am_client_send_raw(c, b->data, b->len);
    cr_assert_eq(rc, 0, "send: %s", am_strerror(rc));
}

/* Sends count adds of 1 to counter id on c, pipelined (request ids first..),
 * and reads every reply: each must be ok, and each id must be answered once.
 * Returns the largest value replied. */
static int64_t pipelined_adds(struct am_client *c, uint64_t first, unsigned count, const char *id)
{
    struct am_buf b;
    am_buf_init(&b);
    for (unsigned i = 0; i < count; i++)
        encode_add(&b, first + i, id, 1);
    send_raw(c, &b);
    am_buf_close(&b);
    uint8_t *seen = calloc(count, 1);
    cr_assert_not_null(seen);
    int64_t max = 0;
    for (unsigned i = 0; i < count; i++) {
        struct am_reply r;
        int rc = am_client_recv_reply(c, &r);
        cr_assert_eq(rc, 0, "reply %u of %u: %s", i + 1, count, am_strerror(rc));
        cr_assert(r.id >= first && r.id < first + count, "reply to unknown id %llu",
                  (unsigned long long)r.id);
        cr_assert_eq(seen[r.id - first], 0, "id %llu answered twice", (unsigned long long)r.id);
        seen[r.id - first] = 1;
        cr_assert_eq(r.status, AM_ST_OK, "add %llu: %s: %s", (unsigned long long)r.id,
                     am_status_name(r.status), body_msg(r.body, r.body_len));
        int64_t v = body_int(r.body, r.body_len);
        if (v > max)
            max = v;
    }
    free(seen);
    return max;
}

/* The node's status as a JSON object (caller json_decref's it). */
static json_t *status_json(void)
{
    struct am_client *c = client_open();
    struct am_buf reply, text;
    int status = -1;
    am_buf_init(&reply);
    am_buf_init(&text);
    int rc = am_client_status(c, &reply, &status);
    cr_assert(rc == 0 && status == AM_ST_OK, "status: %s / %s", am_strerror(rc),
              am_status_name(status));
    cr_assert_eq(am_msgpack_to_json(reply.data, reply.len, &text), 0, "status is not printable");
    json_error_t je;
    json_t *j = json_loadb((const char *)text.data, text.len, 0, &je);
    cr_assert_not_null(j, "status JSON: %s", je.text);
    am_buf_close(&reply);
    am_buf_close(&text);
    am_client_close(c);
    return j;
}

/* A "section.key" integer of the status. */
static uint64_t status_u64(const char *section, const char *key)
{
    json_t *j = status_json();
    json_t *v = json_object_get(json_object_get(j, section), key);
    cr_assert(json_is_integer(v), "status has no integer %s.%s", section, key);
    uint64_t n = (uint64_t)json_integer_value(v);
    json_decref(j);
    return n;
}

/* ---- CLI helpers ----------------------------------------------------------- */

/* `amesh call --node ADDR type id action [payload]`; the result is r's to free. */
static void cli_call(struct proc_result *r, const char *cmd, const char *type, const char *id,
                     const char *action, const char *payload)
{
    int rc = proc_runl(r, CLI_TIMEOUT_MS, cmd, "--node", w.node.addr, type, id, action, payload,
                       (char *)NULL);
    cr_assert_eq(rc, 0, "cannot run amesh %s: %s", cmd, strerror(-rc));
    cr_assert_neq(r->code, -ETIMEDOUT, "amesh %s %s %s %s timed out", cmd, type, id, action);
}

/* A call that must succeed and print exactly want (plus a newline). */
static void cli_expect(const char *type, const char *id, const char *action, const char *payload,
                       const char *want)
{
    struct proc_result r;
    cli_call(&r, "call", type, id, action, payload);
    cr_assert_eq(r.code, 0, "amesh call %s %s %s: exit %d, stderr: %s", type, id, action, r.code,
                 r.err);
    char line[256];
    snprintf(line, sizeof line, "%s\n", want);
    cr_assert_str_eq(r.out, line, "amesh call %s %s %s printed '%s', want '%s'", type, id, action,
                     r.out, want);
    proc_result_free(&r);
}

/* ---- 1. durability of the user's path ------------------------------------- */

Test(node, counter_survives_kill_9_in_durable_mode)
{
    node_prepare("127.0.0.10");
    static const char *const durable[] = {"--sync", "durable", NULL};
    node_start(durable);
    cli_expect("counter", "c1", "add", "5", "5");
    cli_expect("counter", "c1", "add", "5", "10");
    node_kill9();
    node_start(durable);
    cli_expect("counter", "c1", "get", NULL, "10");
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 2, 3. interval mode --------------------------------------------------- */

Test(node, interval_mode_loses_at_most_one_interval_on_kill_9)
{
    node_prepare("127.0.0.11");
    static const char *const interval[] = {"--sync", "interval:200", NULL};
    node_start(interval);
    struct am_client *c = client_open();
    cr_assert_eq(pipelined_adds(c, 1, 1000, "i"), 1000);
    am_client_close(c);
    /* Three intervals: the periodic write of the last change has had two
     * full chances to commit. */
    proc_sleep_ms(600);
    node_kill9();

    node_start(interval);
    cr_assert_eq(counter_get("i"), 1000, "a change older than three intervals was lost");
    c = client_open();
    cr_assert_eq(pipelined_adds(c, 1, 100, "i"), 1100);
    am_client_close(c);
    node_kill9(); /* at once: the last interval may be lost, nothing older */

    node_start(interval);
    int64_t v = counter_get("i");
    cr_assert(v >= 1000 && v <= 1100, "after kill -9 the counter is %lld, want 1000..1100",
              (long long)v);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

Test(node, interval_mode_clean_shutdown_loses_nothing)
{
    node_prepare("127.0.0.12");
    /* A minute: no periodic write happens during the test, so only the
     * shutdown can have written the state. */
    static const char *const interval[] = {"--sync", "interval:60000", NULL};
    node_start(interval);
    struct am_client *c = client_open();
    cr_assert_eq(pipelined_adds(c, 1, 500, "s"), 500);
    am_client_close(c);
    node_stop_ok();
    node_start(interval);
    cr_assert_eq(counter_get("s"), 500);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 4. large values ------------------------------------------------------- */

/* Writes a JSON string of n characters (plus its quotes) to path; returns
 * the file's text (malloc'ed, NUL-terminated). */
static char *write_json_string(const char *path, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    char *s = malloc(n + 3);
    cr_assert_not_null(s);
    s[0] = '"';
    for (size_t i = 0; i < n; i++)
        s[1 + i] = alphabet[(i * 7 + i / 61) % (sizeof alphabet - 1)];
    s[n + 1] = '"';
    s[n + 2] = '\0';
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(s, 1, n + 2, f), n + 2);
    cr_assert_eq(fclose(f), 0);
    return s;
}

Test(node, kv_round_trips_a_one_mebibyte_value)
{
    node_prepare("127.0.0.13");
    node_start(NULL);
    char file[512], arg[520];
    path_in(file, sizeof file, "one-mib.json");
    char *value = write_json_string(file, 1u << 20);
    snprintf(arg, sizeof arg, "@%s", file);

    cli_expect("kv", "big", "put", arg, "true");
    struct proc_result r;
    cli_call(&r, "call", "kv", "big", "get", NULL);
    cr_assert_eq(r.code, 0, "get: exit %d: %s", r.code, r.err);
    size_t want = strlen(value);
    cr_assert_eq(r.out_len, want + 1, "get printed %zu bytes, want %zu", r.out_len, want + 1);
    cr_assert(memcmp(r.out, value, want) == 0 && r.out[want] == '\n',
              "get returned a different value");
    proc_result_free(&r);
    free(value);
    cli_expect("kv", "big", "del", NULL, "true");
    cli_expect("kv", "big", "get", NULL, "null");

    /* 3 MiB: over the default 2 MiB payload limit. */
    path_in(file, sizeof file, "three-mib.json");
    free(write_json_string(file, 3u << 20));
    snprintf(arg, sizeof arg, "@%s", file);
    cli_call(&r, "call", "kv", "huge", "put", arg);
    cr_assert_neq(r.code, 0, "a 3 MiB put was accepted");
    cr_assert_not_null(strstr(r.err, "too_large"), "stderr does not name too_large: %s", r.err);
    proc_result_free(&r);
    cli_expect("counter", "after-huge", "add", "1", "1");
    cli_expect("kv", "huge", "get", NULL, "null");
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 5. many actors -------------------------------------------------------- */

#define MANY 100000
#define BATCH 1000

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64: fixed seeds give the same bytes and picks on every run. */
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

Test(node, hundred_thousand_actors_activate_deactivate_and_come_back)
{
    node_prepare("127.0.0.14");
    /* The idle timeout must outlast the activation phase, or the first
     * actors are gone before the count is read. That phase takes about
     * 1.5 s here and 2.6 s under ASan, so 5 s leaves room for a loaded
     * machine; should it still run longer, the "all active at once" check is
     * skipped with a note rather than made an assertion on speed. */
    static const char *const opts[] = {"--idle-timeout", "5000", "--sync", "durable", NULL};
    const int64_t idle_ms = 5000;
    node_start(opts);
    long long rss_before = proc_rss(w.node.pid);

    struct am_client *c = client_open();
    struct am_buf b;
    am_buf_init(&b);
    uint8_t *seen = calloc(MANY, 1);
    cr_assert_not_null(seen);
    char id[32];
    int64_t t0 = proc_now_ms();
    for (unsigned base = 0; base < MANY; base += BATCH) {
        b.len = 0;
        for (unsigned i = base; i < base + BATCH; i++) {
            snprintf(id, sizeof id, "a%u", i);
            encode_add(&b, (uint64_t)i + 1, id, (int64_t)(i % 7 + 1));
        }
        send_raw(c, &b);
        for (unsigned k = 0; k < BATCH; k++) {
            struct am_reply r;
            int rc = am_client_recv_reply(c, &r);
            cr_assert_eq(rc, 0, "batch at %u, reply %u: %s", base, k, am_strerror(rc));
            cr_assert(r.id > base && r.id <= base + BATCH, "reply to id %llu in batch at %u",
                      (unsigned long long)r.id, base);
            unsigned i = (unsigned)(r.id - 1);
            cr_assert_eq(seen[i], 0, "id %llu answered twice", (unsigned long long)r.id);
            seen[i] = 1;
            cr_assert_eq(r.status, AM_ST_OK, "a%u: %s: %s", i, am_status_name(r.status),
                         body_msg(r.body, r.body_len));
            int64_t got = body_int(r.body, r.body_len);
            cr_assert_eq(got, (int64_t)(i % 7 + 1), "add to a%u replied %lld, want %u", i,
                         (long long)got, i % 7 + 1);
        }
    }
    int64_t took = proc_now_ms() - t0;
    am_buf_close(&b);
    free(seen);
    am_client_close(c);

    long long rss_peak = proc_rss(w.node.pid);
    json_t *st = status_json();
    json_t *actors = json_object_get(st, "actors");
    uint64_t active = (uint64_t)json_integer_value(json_object_get(actors, "active"));
    uint64_t activations = (uint64_t)json_integer_value(json_object_get(actors, "activations"));
    json_decref(st);
    /* No actor can have gone idle if the status was read within idle_ms of
     * the first call. */
    int64_t since_first = proc_now_ms() - t0;
    cr_assert_geq(activations, MANY, "only %llu activations", (unsigned long long)activations);
    if (since_first < idle_ms)
        cr_assert_geq(active, MANY, "%llu active just after activating %d",
                      (unsigned long long)active, MANY);
    else
        cr_log_info("activation and status took %lld ms, longer than the idle timeout: %llu "
                    "of %d still active; not checked",
                    (long long)since_first, (unsigned long long)active, MANY);

    /* Sweeps run every idle_ms/4, so every actor goes within 6.25 s of its
     * last call; 30 s is the bound for a node that never deactivates. */
    int64_t deadline = proc_now_ms() + 30000;
    for (;;) {
        active = status_u64("actors", "active");
        if (active == 0 || proc_now_ms() > deadline)
            break;
        proc_sleep_ms(500);
    }
    cr_assert_eq(active, 0, "%llu actors still active 30 s after the last call",
                 (unsigned long long)active);
    long long rss_after = proc_rss(w.node.pid);

    /* Back from storage: 1000 of them, picked with a fixed seed. */
    c = client_open();
    uint64_t seed = 0x5eed1234abcdULL;
    for (int k = 0; k < 1000; k++) {
        unsigned i = (unsigned)(rng_next(&seed) % MANY);
        snprintf(id, sizeof id, "a%u", i);
        int64_t got = call_int(c, "counter", id, "get", NULL);
        cr_assert_eq(got, (int64_t)(i % 7 + 1), "a%u came back as %lld, want %u", i,
                     (long long)got, i % 7 + 1);
    }
    am_client_close(c);

    cr_log_info("%d actors: activated in %lld ms; RSS before %.1f MiB, peak %.1f MiB, after "
                "deactivation %.1f MiB; %.0f bytes per active actor",
                MANY, (long long)took, rss_before / 1048576.0, rss_peak / 1048576.0,
                rss_after / 1048576.0, (double)(rss_peak - rss_before) / MANY);
    fprintf(stderr,
            "node: %d actors: RSS before %lld, peak %lld, after deactivation %lld bytes: "
            "%.0f bytes per active actor\n",
            MANY, rss_before, rss_peak, rss_after, (double)(rss_peak - rss_before) / MANY);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 6. hostile input ------------------------------------------------------ */

/* The node still answers on a new connection and "keep" still holds 42. */
static void assert_alive_and_kept(const char *after)
{
    struct am_client *c = NULL;
    char err[160] = "";
    int rc = am_client_open(&c, w.node.addr, CLIENT_TIMEOUT_MS, err, sizeof err);
    cr_assert_eq(rc, 0, "after %s the node does not accept: %s", after, err);
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    rc = am_client_call(c, AM_MSG_CALL, "counter", "keep", "get", NULL, 0, &reply, &status);
    cr_assert(rc == 0 && status == AM_ST_OK, "after %s get failed: %s / %s", after,
              am_strerror(rc), am_status_name(status));
    cr_assert_eq(body_int(reply.data, reply.len), 42, "after %s keep is no longer 42", after);
    am_buf_close(&reply);
    am_client_close(c);
}

/* Appends a frame header announcing len bytes. */
static void put_header(struct am_buf *b, uint32_t len)
{
    uint8_t h[4];
    am_be32_put(h, len);
    cr_assert_eq(am_buf_append(b, h, 4), 0);
}

/* Appends body as one frame. */
static void put_frame(struct am_buf *out, const struct am_buf *body)
{
    put_header(out, (uint32_t)body->len);
    cr_assert_eq(am_buf_append(out, body->data, body->len), 0);
}

/* Appends a CALL body whose fields are well formed up to the action, then
 * the raw bytes tail as the payload (or, with lie_in_type, as the type). */
static void lying_call(struct am_buf *out, uint64_t rid, const uint8_t *tail, size_t tail_len,
                       int lie_in_type)
{
    struct am_buf body;
    msgpack_packer pk;
    am_buf_init(&body);
    am_mp_packer_init(&pk, &body);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_int(&pk, AM_MSG_CALL);
    msgpack_pack_uint64(&pk, rid);
    if (lie_in_type) {
        cr_assert_eq(am_buf_append(&body, tail, tail_len), 0);
    } else {
        am_mp_pack_str(&pk, "counter", 7);
        am_mp_pack_str(&pk, "liar", 4);
        am_mp_pack_str(&pk, "add", 3);
        cr_assert_eq(am_buf_append(&body, tail, tail_len), 0);
    }
    put_frame(out, &body);
    am_buf_close(&body);
}

/* Reads one reply on c: it must answer rid with status want. */
static void expect_reply(struct am_client *c, uint64_t rid, int want, const char *what)
{
    struct am_reply r;
    int rc = am_client_recv_reply(c, &r);
    cr_assert_eq(rc, 0, "%s: no reply: %s", what, am_strerror(rc));
    cr_assert_eq(r.id, rid, "%s: reply to id %llu, want %llu", what, (unsigned long long)r.id,
                 (unsigned long long)rid);
    cr_assert_eq(r.status, want, "%s: status %s, want %s (%s)", what, am_status_name(r.status),
                 am_status_name(want), body_msg(r.body, r.body_len));
}

/* Reads until the node closes c (or the wait runs out); returns the last
 * code: -ECONNRESET once the node closed it. */
static int drain_until_closed(struct am_client *c)
{
    for (;;) {
        struct am_reply r;
        int rc = am_client_recv_reply(c, &r);
        if (rc)
            return rc;
    }
}

Test(node, bad_input_gets_an_error_or_a_closed_connection_and_nothing_is_lost)
{
    node_prepare("127.0.0.15");
    node_start(NULL);
    struct am_client *c = client_open();
    int64_t fortytwo = 42;
    cr_assert_eq(call_int(c, "counter", "keep", "add", &fortytwo), 42);
    am_client_close(c);

    struct am_buf b;
    am_buf_init(&b);

    /* 64 KiB of random bytes: whatever the first four announce, the node
     * answers or closes, and keeps serving others. */
    uint64_t seed = 0x0badcafe12345678ULL;
    for (int i = 0; i < 65536 / 8; i++) {
        uint64_t x = rng_next(&seed);
        cr_assert_eq(am_buf_append(&b, &x, 8), 0);
    }
    c = client_open();
    am_client_set_timeout(c, 5000);
    am_client_send_raw(c, b.data, b.len); /* the node may close before taking it all */
    am_client_close(c);
    assert_alive_and_kept("64 KiB of random bytes");

    /* A header announcing 4 GiB - 1: too_large for id 0, then EOF. */
    c = client_open();
    b.len = 0;
    put_header(&b, 0xFFFFFFFFu);
    send_raw(c, &b);
    expect_reply(c, 0, AM_ST_TOO_LARGE, "a 4 GiB frame header");
    int rc = drain_until_closed(c);
    cr_assert_eq(rc, -ECONNRESET, "after too_large the connection was not closed: %s",
                 am_strerror(rc));
    am_client_close(c);
    assert_alive_and_kept("a 4 GiB frame header");

    /* Lengths that lie: bad_request with the request id, and the
     * connection stays usable. */
    static const uint8_t array32[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c'};
    static const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02};
    static const uint8_t bin32[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 0x00};
    c = client_open();
    b.len = 0;
    lying_call(&b, 101, array32, sizeof array32, 0);
    lying_call(&b, 102, str32, sizeof str32, 0);
    lying_call(&b, 103, map32, sizeof map32, 0);
    lying_call(&b, 104, bin32, sizeof bin32, 0);
    lying_call(&b, 105, str32, sizeof str32, 1);
    send_raw(c, &b);
    expect_reply(c, 101, AM_ST_BAD_REQUEST, "a payload array32 of 2^32-1 elements");
    expect_reply(c, 102, AM_ST_BAD_REQUEST, "a payload str32 of 4 GiB");
    expect_reply(c, 103, AM_ST_BAD_REQUEST, "a payload map32 of 2^32-1 entries");
    expect_reply(c, 104, AM_ST_BAD_REQUEST, "a payload bin32 of 4 GiB");
    expect_reply(c, 105, AM_ST_BAD_REQUEST, "a type str32 of 4 GiB");
    /* The outer array lies: the id cannot be read, so the answer is id 0. */
    b.len = 0;
    struct am_buf body;
    am_buf_init(&body);
    cr_assert_eq(am_buf_append(&body, array32, sizeof array32), 0);
    cr_assert_eq(am_buf_append(&body, "\x01\x6a", 2), 0);
    put_frame(&b, &body);
    am_buf_close(&body);
    send_raw(c, &b);
    expect_reply(c, 0, AM_ST_BAD_REQUEST, "a request array32 of 2^32-1 elements");
    /* Still usable: unknown type, unknown action, then a real call. */
    struct am_buf reply;
    int status = -1;
    am_buf_init(&reply);
    rc = am_client_call(c, AM_MSG_CALL, "nosuchtype", "x", "get", NULL, 0, &reply, &status);
    cr_assert(rc == 0 && status == AM_ST_UNKNOWN_TYPE, "unknown type: %s / %s", am_strerror(rc),
              am_status_name(status));
    rc = am_client_call(c, AM_MSG_CALL, "counter", "keep", "nosuchaction", NULL, 0, &reply,
                        &status);
    cr_assert(rc == 0 && status == AM_ST_UNKNOWN_ACTION, "unknown action: %s / %s",
              am_strerror(rc), am_status_name(status));
    am_buf_close(&reply);
    cr_assert_eq(call_int(c, "counter", "keep", "get", NULL), 42);
    am_client_close(c);
    assert_alive_and_kept("lying lengths");

    /* A frame cut short, then close. */
    c = client_open();
    b.len = 0;
    encode_add(&b, 7, "keep", 1000);
    cr_assert_eq(am_client_send_raw(c, b.data, b.len - 3), 0);
    am_client_close(c);
    assert_alive_and_kept("a truncated frame");

    /* 1000 connections, each half a frame then closed, 100 open at a time. */
    struct am_client *cs[100];
    for (int batch = 0; batch < 10; batch++) {
        for (int i = 0; i < 100; i++) {
            cs[i] = client_open();
            b.len = 0;
            encode_add(&b, (uint64_t)i + 1, "keep", 1000);
            cr_assert_eq(am_client_send_raw(cs[i], b.data, b.len / 2), 0);
        }
        for (int i = 0; i < 100; i++)
            am_client_close(cs[i]);
    }
    assert_alive_and_kept("1000 half frames");
    am_buf_close(&b);

    cr_assert_gt(status_u64("clients", "bad_frames"), 0);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 7. refused data directories ------------------------------------------- */

#define MAX_FILES 8

/* What a directory holds, to compare before and after. */
struct dir_snap {
    int n;
    struct {
        char name[256];
        struct timespec mtime;
        char *bytes;
        size_t len;
    } f[MAX_FILES];
};

static void snap_take(struct dir_snap *s, const char *dir)
{
    memset(s, 0, sizeof *s);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
    for (struct dirent *e = readdir(d); e; e = readdir(d)) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        cr_assert_lt(s->n, MAX_FILES, "too many files in %s", dir);
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, strerror(errno));
        snprintf(s->f[s->n].name, sizeof s->f[s->n].name, "%s", e->d_name);
        s->f[s->n].mtime = st.st_mtim;
        s->f[s->n].bytes = proc_read_file(path, &s->f[s->n].len);
        cr_assert_not_null(s->f[s->n].bytes, "cannot read %s", path);
        s->n++;
    }
    closedir(d);
}

static void snap_free(struct dir_snap *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->f[i].bytes);
    s->n = 0;
}

/* Every file of before is in after, byte for byte with the same mtime, and
 * after has nothing else. */
static void snap_assert_same(const struct dir_snap *before, const struct dir_snap *after,
                             const char *what)
{
    for (int i = 0; i < after->n; i++) {
        int found = -1;
        for (int k = 0; k < before->n; k++)
            if (strcmp(before->f[k].name, after->f[i].name) == 0)
                found = k;
        cr_assert_geq(found, 0, "%s: the node created '%s'", what, after->f[i].name);
        const char *name = after->f[i].name;
        cr_assert(before->f[found].len == after->f[i].len &&
                      memcmp(before->f[found].bytes, after->f[i].bytes, after->f[i].len) == 0,
                  "%s: '%s' changed", what, name);
        cr_assert(before->f[found].mtime.tv_sec == after->f[i].mtime.tv_sec &&
                      before->f[found].mtime.tv_nsec == after->f[i].mtime.tv_nsec,
                  "%s: the mtime of '%s' changed", what, name);
    }
    cr_assert_eq(before->n, after->n, "%s: a file disappeared", what);
}

/* Starts a node on dir: it must exit non-zero within 5 s, name want_in_err
 * on stderr and leave dir as it was. */
static void assert_refused(const char *dir, const char *want_in_err, const char *what)
{
    struct dir_snap before, after;
    struct proc_result r;
    snap_take(&before, dir);
    int rc = proc_runl(&r, 5000, "node", "--bind", w.node.addr, "--data", dir, (char *)NULL);
    cr_assert_eq(rc, 0, "cannot run amesh node: %s", strerror(-rc));
    cr_assert_neq(r.code, -ETIMEDOUT, "%s: the node was still running after 5 s", what);
    cr_assert_neq(r.code, 0, "%s: the node exited 0", what);
    cr_assert_not_null(strstr(r.err, want_in_err), "%s: stderr does not name '%s': %s", what,
                       want_in_err, r.err);
    proc_result_free(&r);
    snap_take(&after, dir);
    snap_assert_same(&before, &after, what);
    snap_free(&before);
    snap_free(&after);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

Test(node, corrupt_or_foreign_data_directory_is_refused_and_left_untouched)
{
    node_prepare("127.0.0.16");
    char dir[512], file[PATH_MAX + 16];

    /* (a) someone else's directory */
    path_in(dir, sizeof dir, "foreign");
    cr_assert_eq(mkdir(dir, 0700), 0);
    snprintf(file, sizeof file, "%s/notes.txt", dir);
    write_file(file, "not a database\n", 15);
    assert_refused(dir, "notes.txt", "a directory with notes.txt");

    /* (b) a data.mdb of random bytes */
    path_in(dir, sizeof dir, "random");
    cr_assert_eq(mkdir(dir, 0700), 0);
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    static uint64_t noise[16384]; /* 128 KiB */
    uint64_t seed = 0xfeedface0ddba11ULL;
    for (size_t i = 0; i < sizeof noise / sizeof noise[0]; i++)
        noise[i] = rng_next(&seed);
    write_file(file, noise, sizeof noise);
    assert_refused(dir, file, "a data.mdb of random bytes");

    /* (c) a real store, truncated to half */
    node_start(NULL);
    struct am_client *c = client_open();
    char id[16];
    for (int i = 0; i < 200; i++) {
        int64_t n = i;
        snprintf(id, sizeof id, "t%d", i);
        call_int(c, "counter", id, "add", &n);
    }
    am_client_close(c);
    node_stop_ok();
    snprintf(file, sizeof file, "%s/data.mdb", w.node.data);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0);
    cr_assert_eq(truncate(file, st.st_size / 2), 0, "truncate: %s", strerror(errno));
    assert_refused(w.node.data, file, "a data.mdb truncated to half");
    ASSERT_NO_LEAKS();
}

/* ---- 8. plug-in actor library ---------------------------------------------- */

Test(node, example_actor_library_loads_and_errors_leave_state_unchanged)
{
    node_prepare("127.0.0.17");
    static const char *const lib[] = {"--actors", AMESH_EXAMPLE_LIB, NULL};
    node_start(lib);
    cli_expect("account", "alice", "deposit", "100", "100");
    cli_expect("account", "alice", "withdraw", "30", "70");
    struct proc_result r;
    cli_call(&r, "call", "account", "alice", "withdraw", "500");
    cr_assert_neq(r.code, 0, "overdraft was accepted: %s", r.out);
    cr_assert_not_null(strstr(r.err, "handler_error"), "stderr: %s", r.err);
    cr_assert_not_null(strstr(r.err, "insufficient funds"), "stderr: %s", r.err);
    proc_result_free(&r);
    cli_expect("account", "alice", "balance", NULL, "70");
    cli_call(&r, "call", "account", "alice", "close", NULL);
    cr_assert_neq(r.code, 0, "an unknown action succeeded: %s", r.out);
    cr_assert_not_null(strstr(r.err, "unknown_action"), "stderr: %s", r.err);
    proc_result_free(&r);
    node_stop_ok();

    /* A library that is not there: the node refuses to start and says which. */
    char bad[512], data[512];
    path_in(bad, sizeof bad, "no-such-dir/actors.so");
    path_in(data, sizeof data, "data-bad-lib");
    int rc = proc_runl(&r, 10000, "node", "--bind", w.node.addr, "--data", data, "--actors", bad,
                       (char *)NULL);
    cr_assert_eq(rc, 0);
    cr_assert_neq(r.code, -ETIMEDOUT, "the node started with a missing --actors library");
    cr_assert_neq(r.code, 0, "the node exited 0 with a missing --actors library");
    cr_assert_not_null(strstr(r.err, bad), "stderr does not name %s: %s", bad, r.err);
    proc_result_free(&r);
    ASSERT_NO_LEAKS();
}

/* ---- 9, 10. shutdown and back-pressure ------------------------------------- */

Test(node, sigterm_finishes_in_flight_calls_and_exits_zero)
{
    node_prepare("127.0.0.18");
    /* A mailbox that holds all 2000: busy is not the subject here. */
    static const char *const opts[] = {"--mailbox", "4096", NULL};
    node_start(opts);
    enum { N = 2000 };
    struct am_client *c = client_open();
    struct am_buf b;
    am_buf_init(&b);
    for (unsigned i = 0; i < N; i++)
        encode_add(&b, i + 1, "t", 1);
    /* The node is stopped while the adds and the SIGTERM reach it, so the
     * signal is pending before it has read a byte: when it resumes, it
     * finds both at once and may read some, all or none of the adds before
     * it handles the signal. */
    cr_assert_eq(kill(w.node.pid, SIGSTOP), 0);
    send_raw(c, &b);
    kill(w.node.pid, SIGTERM);
    cr_assert_eq(kill(w.node.pid, SIGCONT), 0);
    am_buf_close(&b);

    static uint8_t seen[N + 1];
    memset(seen, 0, sizeof seen);
    int ok = 0, shutting = 0, rc;
    for (;;) {
        struct am_reply r;
        rc = am_client_recv_reply(c, &r);
        if (rc)
            break;
        cr_assert(r.id >= 1 && r.id <= N, "reply to unknown id %llu", (unsigned long long)r.id);
        cr_assert_eq(seen[r.id], 0, "id %llu answered twice", (unsigned long long)r.id);
        seen[r.id] = 1;
        if (r.status == AM_ST_OK)
            ok++;
        else if (r.status == AM_ST_SHUTTING_DOWN)
            shutting++;
        else
            cr_assert_fail("add %llu answered %s: %s", (unsigned long long)r.id,
                           am_status_name(r.status), body_msg(r.body, r.body_len));
    }
    cr_assert_eq(rc, -ECONNRESET, "waiting for replies: %s", am_strerror(rc));
    am_client_close(c);
    int code = proc_node_wait_exit(&w.node, 20000);
    cr_assert_eq(code, 0, "exit status %d after SIGTERM", code);
    cr_log_info("SIGTERM with %d adds in flight: %d ok, %d shutting_down, %d unanswered", N, ok,
                shutting, N - ok - shutting);

    node_start(opts);
    cr_assert_eq(counter_get("t"), ok, "the counter does not equal the ok replies (%d)", ok);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

Test(node, mailbox_full_answers_busy)
{
    node_prepare("127.0.0.19");
    static const char *const opts[] = {"--mailbox", "8", "--sync", "durable", NULL};
    node_start(opts);
    enum { N = 5000 };
    struct am_client *c = client_open();
    struct am_buf b;
    am_buf_init(&b);
    for (unsigned i = 0; i < N; i++)
        encode_add(&b, i + 1, "hot", 1);
    send_raw(c, &b);
    am_buf_close(&b);
    static uint8_t seen[N + 1];
    memset(seen, 0, sizeof seen);
    int ok = 0, busy = 0;
    for (int k = 0; k < N; k++) {
        struct am_reply r;
        int rc = am_client_recv_reply(c, &r);
        cr_assert_eq(rc, 0, "reply %d of %d: %s", k + 1, N, am_strerror(rc));
        cr_assert(r.id >= 1 && r.id <= N, "reply to unknown id %llu", (unsigned long long)r.id);
        cr_assert_eq(seen[r.id], 0, "id %llu answered twice", (unsigned long long)r.id);
        seen[r.id] = 1;
        if (r.status == AM_ST_OK)
            ok++;
        else if (r.status == AM_ST_BUSY)
            busy++;
        else
            cr_assert_fail("add %llu answered %s: %s", (unsigned long long)r.id,
                           am_status_name(r.status), body_msg(r.body, r.body_len));
    }
    cr_assert_eq(ok + busy, N);
    cr_assert_gt(busy, 0, "5000 adds in flight on a mailbox of 8 and none was busy");
    cr_assert(AM_ST_BUSY == 7 && am_status_retryable(AM_ST_BUSY), "busy is retryable status 7");
    cr_assert_eq(call_int(c, "counter", "hot", "get", NULL), ok);
    am_client_close(c);
    cr_log_info("mailbox 8, %d adds pipelined: %d ok, %d busy", N, ok, busy);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

/* ---- 11, 12. cast and status ----------------------------------------------- */

Test(node, cast_is_accepted_and_applied)
{
    node_prepare("127.0.0.20");
    node_start(NULL);
    struct proc_result r;
    cli_call(&r, "cast", "counter", "x", "add", "3");
    cr_assert_eq(r.code, 0, "cast: exit %d: %s", r.code, r.err);
    cr_assert_str_eq(r.out, "", "cast printed '%s'", r.out);
    proc_result_free(&r);
    /* A cast's reply means accepted, not applied: poll briefly. */
    int64_t v = counter_get("x"), deadline = proc_now_ms() + 5000;
    while (v != 3 && proc_now_ms() < deadline) {
        proc_sleep_ms(20);
        v = counter_get("x");
    }
    cr_assert_eq(v, 3, "the cast's add was not applied");
    node_stop_ok();
    ASSERT_NO_LEAKS();
}

Test(node, status_json_has_the_documented_fields)
{
    node_prepare("127.0.0.21");
    node_start(NULL);
    struct proc_result r;
    int rc = proc_runl(&r, CLI_TIMEOUT_MS, "status", "--node", w.node.addr, "--json",
                       (char *)NULL);
    cr_assert_eq(rc, 0);
    cr_assert_eq(r.code, 0, "status: exit %d: %s", r.code, r.err);
    json_error_t je;
    json_t *j = json_loads(r.out, 0, &je);
    cr_assert_not_null(j, "status --json is not JSON (%s): %s", je.text, r.out);
    json_t *node = json_object_get(j, "node");
    cr_assert(json_is_string(node) && strcmp(json_string_value(node), w.node.addr) == 0,
              "node: %s", r.out);
    json_t *sync = json_object_get(j, "sync");
    cr_assert(json_is_string(sync) && strcmp(json_string_value(sync), "durable") == 0, "sync: %s",
              r.out);
    json_t *active = json_object_get(json_object_get(j, "actors"), "active");
    cr_assert(json_is_integer(active) && json_integer_value(active) >= 0, "actors.active: %s",
              r.out);
    json_decref(j);
    proc_result_free(&r);
    node_stop_ok();
    ASSERT_NO_LEAKS();
}
