/* bench.c - `amesh bench`: a pipelined load generator over the client protocol.
 *
 * Structure. am_bench_parse turns argv into struct am_bench_opts and does
 * nothing else, so it can be unit tested. bench_run owns one libuv loop
 * (never the default loop) with C connections (struct conn), each with P
 * request slots. A slot is free or holds one request in flight: its req_id,
 * the time it was queued and its actor. req_id = seq << 16 | slot index, so a
 * reply finds its slot in O(1), in any order, and a reply whose id does not
 * match a busy slot is a protocol error.
 *
 * Writes. Requests are encoded with am_encode_call into the connection's
 * `out` buffer and the connection goes on the dirty list; a prepare and a
 * check handle (before and after each poll) flush every dirty connection
 * with one uv_try_write, and hand any rest to a single uv_write whose buffer
 * (`wbuf`) belongs to that write until its callback. So each connection makes
 * at most one write per loop turn, whatever number of replies it read.
 *
 * Phases: CONNECT (all C connections must come up, else the node cannot be
 * reached: exit 69) -> RUN (warm-up, then the measured window) -> DRAIN (only
 * with --verify: wait for the adds still in flight) -> VERIFY (get every
 * actor) -> DONE (close every handle; uv_run returns when the last close
 * callback ran). Callbacks only change counters and state; advance(), called
 * at the end of every callback, makes the phase transitions, so no transition
 * runs inside another.
 *
 * Never hanging: the RUN phase ends at its deadline whether or not any
 * connection is up; with --requests a stall guard ends it when nothing
 * completed for max(10 s, 2 x timeout); DRAIN and VERIFY have deadlines too.
 * Every request in flight expires after --timeout, which closes its
 * connection; a lost connection is retried with a backoff of 50 ms doubling
 * to 500 ms.
 *
 * Invariants: b->inflight == the number of busy slots over all connections;
 * a connection has busy slots only while it is UP; c->oldest is a lower bound
 * of the queue times of its busy slots (UINT64_MAX when it has none known),
 * which lets the timeout scan skip a connection until its bound expires. */
#include "bench.h"

#include "addr.h"
#include "buf.h"
#include "commands.h"
#include "err.h"
#include "hist.h"
#include "mem.h"
#include "mp.h"
#include "proto.h"
#include "seal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

/* ---- Options ---------------------------------------------------------- */

const char am_bench_usage[] =
    "usage: amesh bench [--node HOST:PORT[,HOST:PORT...]] [--type T] [--action A]\n"
    "                   [--actors N] [--connections C] [--pipeline P]\n"
    "                   [--duration S | --requests N] [--warmup S] [--payload BYTES]\n"
    "                   [--skew THETA] [--seed N] [--timeout MS] [--json] [--verify]\n"
    "                   [--series FILE] [--cdf FILE] [--windows FILE] [--key-file FILE]\n"
    "\n"
    "  --node         nodes to load, connections spread round-robin (127.0.0.1:7946)\n"
    "  --type         actor type (counter)\n"
    "  --action       action (add)\n"
    "  --actors       distinct actors, ids bench-0 .. bench-N-1 (1000)\n"
    "  --connections  TCP connections (50)\n"
    "  --pipeline     requests in flight per connection (16)\n"
    "  --duration     seconds measured after the warm-up (10)\n"
    "  --requests     stop after this many requests measured (instead of --duration)\n"
    "  --warmup       seconds run first and not measured (1)\n"
    "  --payload      send a msgpack bin of BYTES bytes (counter/add: the integer 1;\n"
    "                 other actions: 16 bytes)\n"
    "  --skew         Zipf exponent over the actors; 0 is uniform (0)\n"
    "  --seed         seed of the actor choice (1)\n"
    "  --timeout      per request, in milliseconds (5000)\n"
    "  --json         print one JSON object with the figures\n"
    "  --verify       counter/add only: check every actor's value after the run\n"
    "  --series       write one CSV line per measured second to FILE:\n"
    "                 second,requests,errors,rps,p50_us,p99_us\n"
    "  --cdf          write the latency distribution of the measured window to FILE:\n"
    "                 percentile,latency_us for 0..99, 99.1..99.9, 99.91..99.99, 100\n"
    "  --windows      write each called actor's longest unavailable window to FILE:\n"
    "                 id,window_us. A success at time now for a call sent at t0\n"
    "                 ends a window of now - t0, or of now - the send time of the\n"
    "                 earliest call that failed since the actor's last success\n"
    "                 (error status, timeout, lost connection) when that is older;\n"
    "                 a failure still open when the run stops counts up to the\n"
    "                 stop. Only replies and failures after the warm-up count\n"
    "  --key-file     the cluster key, when the nodes have one (or AMESH_KEY_FILE)\n";

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    if (errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t min, uint64_t *out)
{
    char *end;
    if (strchr(s, '-'))
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < min)
        return -EINVAL;
    *out = (uint64_t)v;
    return 0;
}

/* A finite number in [min, max]; with open_min, min itself is refused. */
static int parse_double(const char *s, double min, int open_min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || (open_min && v == min) || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_nodes(struct am_bench_opts *o, const char *list, char *err, size_t errlen)
{
    o->nnodes = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0)
            return fail(err, errlen, "--node: empty address in '%s'", list);
        if (o->nnodes == AM_BENCH_MAX_NODES)
            return fail(err, errlen, "--node: at most %d nodes", AM_BENCH_MAX_NODES);
        char *name = o->node_names[o->nnodes];
        if (n >= sizeof o->node_names[0])
            return fail(err, errlen, "--node: address too long: '%.*s'", (int)n, p);
        memcpy(name, p, n);
        name[n] = '\0';
        if (am_addr_parse(name, AM_BENCH_DEFAULT_PORT, &o->nodes[o->nnodes]))
            return fail(
                err, errlen,
                "--node: bad address '%s' (expected HOST:PORT, an IPv4 address or localhost)",
                name);
        o->nnodes++;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static int set_name(char *dst, size_t max, const char *flag, const char *v, char *err,
                    size_t errlen)
{
    size_t n = strlen(v);
    if (n == 0 || n > max)
        return fail(err, errlen, "%s must be 1 to %zu characters, not '%s'", flag, max, v);
    memcpy(dst, v, n + 1);
    return 0;
}

static void set_defaults(struct am_bench_opts *o)
{
    memset(o, 0, sizeof *o);
    am_addr_parse(AM_BENCH_DEFAULT_ADDR, 0, &o->nodes[0]);
    snprintf(o->node_names[0], sizeof o->node_names[0], "%s", AM_BENCH_DEFAULT_ADDR);
    o->nnodes = 1;
    snprintf(o->type, sizeof o->type, "counter");
    snprintf(o->action, sizeof o->action, "add");
    o->actors = 1000;
    o->connections = 50;
    o->pipeline = 16;
    o->duration = 10;
    o->warmup = 1;
    o->payload = -1;
    o->seed = 1;
    o->timeout_ms = 5000;
    const char *key = getenv("AMESH_KEY_FILE");
    o->key_file = key && *key ? key : NULL;
}

int am_bench_int_payload(const struct am_bench_opts *o)
{
    return o->payload < 0 && strcmp(o->type, "counter") == 0 && strcmp(o->action, "add") == 0;
}

int am_bench_parse(struct am_bench_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    int have_duration = 0, have_requests = 0;
    set_defaults(o);
    if (errlen)
        err[0] = '\0';
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            o->help = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return fail(err, errlen, "unexpected argument '%s'", arg);

        /* "--flag value" or "--flag=value" */
        char flag[32];
        const char *val = NULL, *eq = strchr(arg, '=');
        size_t fl = eq ? (size_t)(eq - arg) : strlen(arg);
        if (fl >= sizeof flag)
            return fail(err, errlen, "unknown flag '%s'", arg);
        memcpy(flag, arg, fl);
        flag[fl] = '\0';
        if (eq)
            val = eq + 1;

        int is_switch = strcmp(flag, "--json") == 0 || strcmp(flag, "--verify") == 0;
        static const char *const valued[] = {
            "--node",     "--type",     "--action", "--actors",  "--connections", "--pipeline",
            "--duration", "--requests", "--warmup", "--payload", "--skew",        "--seed",
            "--timeout",  "--series",   "--cdf",    "--windows", "--key-file",
        };
        int known = is_switch;
        for (size_t k = 0; !known && k < sizeof valued / sizeof *valued; k++)
            known = strcmp(flag, valued[k]) == 0;
        if (!known)
            return fail(err, errlen, "unknown flag '%s'", flag);
        if (is_switch) {
            if (val)
                return fail(err, errlen, "%s takes no value", flag);
            if (strcmp(flag, "--json") == 0)
                o->json = 1;
            else
                o->verify = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc)
                return fail(err, errlen, "%s needs a value", flag);
            val = argv[++i];
        }

        int rc = 0;
        if (strcmp(flag, "--node") == 0) {
            rc = parse_nodes(o, val, err, errlen);
            if (rc)
                return rc;
        } else if (strcmp(flag, "--type") == 0) {
            rc = set_name(o->type, AM_MAX_TYPE, flag, val, err, errlen);
            if (rc)
                return rc;
            if (strchr(val, '/'))
                return fail(err, errlen, "--type must not contain '/': '%s'", val);
        } else if (strcmp(flag, "--action") == 0) {
            rc = set_name(o->action, AM_MAX_ACTION, flag, val, err, errlen);
            if (rc)
                return rc;
        } else if (strcmp(flag, "--actors") == 0) {
            if (parse_long(val, 1, AM_BENCH_MAX_ACTORS, &o->actors))
                return fail(err, errlen, "--actors must be an integer from 1 to %ld, not '%s'",
                            AM_BENCH_MAX_ACTORS, val);
        } else if (strcmp(flag, "--connections") == 0) {
            if (parse_long(val, 1, AM_BENCH_MAX_CONNECTIONS, &o->connections))
                return fail(err, errlen, "--connections must be an integer from 1 to %ld, not '%s'",
                            AM_BENCH_MAX_CONNECTIONS, val);
        } else if (strcmp(flag, "--pipeline") == 0) {
            if (parse_long(val, 1, AM_BENCH_MAX_PIPELINE, &o->pipeline))
                return fail(err, errlen, "--pipeline must be an integer from 1 to %ld, not '%s'",
                            AM_BENCH_MAX_PIPELINE, val);
        } else if (strcmp(flag, "--duration") == 0) {
            if (parse_double(val, 0, 1, AM_BENCH_MAX_DURATION, &o->duration))
                return fail(err, errlen,
                            "--duration must be a number of seconds above 0 and at most %.0f, "
                            "not '%s'",
                            AM_BENCH_MAX_DURATION, val);
            have_duration = 1;
        } else if (strcmp(flag, "--requests") == 0) {
            if (parse_u64(val, 1, &o->requests))
                return fail(err, errlen, "--requests must be a positive integer, not '%s'", val);
            have_requests = 1;
        } else if (strcmp(flag, "--warmup") == 0) {
            if (parse_double(val, 0, 0, AM_BENCH_MAX_DURATION, &o->warmup))
                return fail(err, errlen,
                            "--warmup must be a number of seconds from 0 to %.0f, not '%s'",
                            AM_BENCH_MAX_DURATION, val);
        } else if (strcmp(flag, "--payload") == 0) {
            if (parse_long(val, 0, AM_BENCH_MAX_PAYLOAD, &o->payload))
                return fail(err, errlen,
                            "--payload must be a number of bytes from 0 to %ld, not '%s'",
                            AM_BENCH_MAX_PAYLOAD, val);
        } else if (strcmp(flag, "--skew") == 0) {
            if (parse_double(val, 0, 0, 10, &o->skew))
                return fail(err, errlen, "--skew must be a number from 0 to 10, not '%s'", val);
        } else if (strcmp(flag, "--seed") == 0) {
            if (parse_u64(val, 0, &o->seed))
                return fail(err, errlen, "--seed must be a non-negative integer, not '%s'", val);
        } else if (strcmp(flag, "--series") == 0 || strcmp(flag, "--cdf") == 0 ||
                   strcmp(flag, "--windows") == 0) {
            if (val[0] == '\0')
                return fail(err, errlen, "%s needs a file name", flag);
            if (strcmp(flag, "--series") == 0)
                o->series = val;
            else if (strcmp(flag, "--cdf") == 0)
                o->cdf = val;
            else
                o->windows = val;
        } else if (strcmp(flag, "--key-file") == 0) {
            if (val[0] == '\0')
                return fail(err, errlen, "--key-file needs a file name");
            o->key_file = val;
        } else if (strcmp(flag, "--timeout") == 0) {
            if (parse_long(val, 1, AM_BENCH_MAX_TIMEOUT_MS, &o->timeout_ms))
                return fail(err, errlen,
                            "--timeout must be a number of milliseconds from 1 to %ld, not '%s'",
                            AM_BENCH_MAX_TIMEOUT_MS, val);
        }
    }
    if (have_duration && have_requests)
        return fail(err, errlen, "--duration and --requests exclude each other: give one");
    if (have_requests)
        o->duration = 0;
    /* Each file is truncated and written on its own: one path for two of
     * them would leave only the last one written, silently. */
    if (o->series && o->cdf && strcmp(o->series, o->cdf) == 0)
        return fail(err, errlen, "--series and --cdf must name different files, not both '%s'",
                    o->cdf);
    if (o->series && o->windows && strcmp(o->series, o->windows) == 0)
        return fail(err, errlen, "--series and --windows must name different files, not both '%s'",
                    o->windows);
    if (o->cdf && o->windows && strcmp(o->cdf, o->windows) == 0)
        return fail(err, errlen, "--cdf and --windows must name different files, not both '%s'",
                    o->windows);
    if (o->verify && !am_bench_int_payload(o))
        return fail(err, errlen,
                    "--verify works only with --type counter --action add and the default "
                    "payload (no --payload)");
    return 0;
}

/* ---- Unavailable windows ------------------------------------------------ */

/* A window is counted as at least 1 ns, so that worst == 0 keeps meaning
 * "no reply yet" even for a reply parsed in the nanosecond it was sent. */
static uint64_t window_of(uint64_t since, uint64_t now)
{
    return now > since ? now - since : 1;
}

void am_bench_window_ok(struct am_bench_window *w, uint64_t t0, uint64_t now)
{
    /* A failure of a call sent after t0 cannot shorten the wait of this
     * call: the window starts at whichever was sent first. */
    uint64_t since = w->fail_since && w->fail_since < t0 ? w->fail_since : t0;
    uint64_t win = window_of(since, now);
    if (win > w->worst)
        w->worst = win;
    w->fail_since = 0;
}

void am_bench_window_failed(struct am_bench_window *w, uint64_t t0)
{
    /* The calls lost with one connection are settled in slot order, not in
     * the order they were sent: keep the earliest. */
    if (!w->fail_since || t0 < w->fail_since)
        w->fail_since = t0;
}

uint64_t am_bench_window_final(const struct am_bench_window *w, uint64_t end)
{
    if (!w->fail_since)
        return w->worst;
    uint64_t open = window_of(w->fail_since, end);
    return open > w->worst ? open : w->worst;
}

/* ---- Run state -------------------------------------------------------- */

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define SLOT_BITS 16 /* AM_BENCH_MAX_PIPELINE must fit */
#define HELLO_ID 0   /* requests have seq >= 1, so never id 0 */
/* Replies are bounded before they are decoded: the largest payload echoed
 * back, plus generous room for an error message or a future reply shape. */
#define MAX_REPLY_FRAME ((size_t)AM_BENCH_MAX_PAYLOAD + (1u << 20))
#define READ_CHUNK 65536
#define TICK_MS 10 /* timeouts, reconnects, deadlines, progress */
#define BACKOFF_MIN_NS (50 * NS_PER_MS)
#define BACKOFF_MAX_NS (500 * NS_PER_MS)

_Static_assert(AM_BENCH_MAX_PIPELINE <= (1L << SLOT_BITS), "slot index must fit in a req_id");

/* Error kinds: the wire statuses, then the client's own. */
enum { KIND_DISCONNECTED = AM_ST__COUNT, KIND_BAD_REPLY, KIND_UNKNOWN_STATUS, NKINDS };

enum op { OP_CALL, OP_GET };
/* IDLE -> CONNECTING -> HELLO (TCP up, our HELLO sent) -> UP (HELLO
 * acknowledged: requests flow) -> CLOSING -> IDLE. */
enum conn_state { CS_IDLE, CS_CONNECTING, CS_HELLO, CS_UP, CS_CLOSING };
enum phase { PH_CONNECT, PH_RUN, PH_DRAIN, PH_VERIFY, PH_DONE };
enum vstate { V_PENDING, V_DONE, V_FAILED };

struct slot {
    uint64_t id; /* 0: free */
    uint64_t t0; /* uv_hrtime when queued */
    uint32_t actor;
    uint8_t op;
};

struct bench;

struct conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    struct bench *b;
    size_t node;
    enum conn_state state;
    int writing; /* wreq in flight: wbuf belongs to it */
    int dirty;   /* on b->dirty */
    struct am_buf out, wbuf, in;
    /* With a cluster key: raw holds bytes read and not yet opened, sealed
     * the sealed output (out stays plain text). */
    struct am_buf raw, sealed;
    struct am_secure sec;
    int sec_on;
    int authentic;      /* a sealed record from the node was opened */
    struct slot *slots; /* P, borrowed from b->slots */
    uint32_t *free;     /* stack of free slot indexes, borrowed from b->free */
    uint32_t nfree;
    uint64_t seq;
    uint64_t oldest;       /* lower bound of busy slots' t0 */
    uint64_t reconnect_at; /* when IDLE */
    uint64_t hello_at;     /* when HELLO: the time it was sent */
    uint64_t backoff;
};

struct bench {
    uv_loop_t loop;
    uv_timer_t tick;
    uv_prepare_t prepare;
    uv_check_t check;
    uv_signal_t sigint;
    const struct am_bench_opts *o;
    enum phase phase;
    uint8_t key[AM_KEY_BYTES];
    int keyed;

    struct conn *conns;
    size_t nconns, nup;
    struct conn **dirty;
    size_t ndirty;
    struct slot *slots;
    uint32_t *free;
    uint64_t inflight;

    /* What a request carries. */
    char prefix[32]; /* "bench-" or "bench-<tag>-" */
    size_t prefix_len;
    uint8_t *payload;
    size_t payload_len;
    uint64_t rng;
    double *cdf; /* --skew: cdf[i] = P(actor <= i) */

    /* Times (uv_hrtime). */
    uint64_t t_connect_deadline, t_start, t_warm_end, t_run_deadline, t_end;
    uint64_t t_last_done, t_phase_deadline, t_progress;

    /* Figures of the measured window. */
    struct am_hist *hist;
    uint64_t done, ok, errors;
    uint64_t errs[NKINDS];
    uint64_t nonretryable;
    /* Over the whole run. */
    uint64_t lost_conns, timeouts;
    /* --series: the second of the window being counted (0-based), the last
     * one there can be, and the window's totals when it began. */
    FILE *series_f;
    struct am_hist *sec_hist;
    uint64_t sec_cur, sec_cap;
    uint64_t sec_done0, sec_ok0, sec_errors0;
    FILE *cdf_f; /* --cdf, written after the run */
    /* --windows: one per actor; the distribution of their final windows,
     * filled after the run; the file, written after the run. */
    struct am_bench_window *windows;
    struct am_hist *whist;
    FILE *windows_f;
    /* The progress window (warm-up included). */
    struct am_hist *win;
    uint64_t win_ok;
    int progress, progress_shown;

    /* --verify */
    uint64_t *acked, *unknown;
    int64_t *value;
    uint8_t *vstate;
    uint32_t *todo;
    size_t ntodo, resolved;
    uint8_t *vstatus; /* the status that failed an actor's get */

    int start_failed, interrupted, stalled, oom;
    char start_err[256];
    char refusal[256]; /* the first HELLO refusal after the start */
};

static void advance(struct bench *b);
static void conn_fill(struct conn *c, uint64_t now);
static void stop_run(struct bench *b, uint64_t now);

/* splitmix64: small, fast and good enough to pick actors. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t pick_actor(struct bench *b)
{
    uint64_t r = rng_next(&b->rng);
    uint64_t n = (uint64_t)b->o->actors;
    if (!b->cdf) /* Lemire's multiply-shift: n <= 10^7, so the bias is < 2^-40 */
        return (uint32_t)(((r >> 32) * n) >> 32);
    double u = (double)(r >> 11) * (1.0 / 9007199254740992.0);
    uint64_t lo = 0, hi = n - 1; /* the first i with u < cdf[i] */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (u < b->cdf[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return (uint32_t)lo;
}

/* Zipf over ranks 1..n with exponent theta: P(rank k) ~ k^-theta. Actor i
 * has rank i + 1, so bench-0 is the hottest. */
static int build_cdf(struct bench *b)
{
    size_t n = (size_t)b->o->actors;
    b->cdf = am_malloc(n * sizeof *b->cdf);
    if (!b->cdf)
        return -ENOMEM;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += pow((double)(i + 1), -b->o->skew);
        b->cdf[i] = sum;
    }
    for (size_t i = 0; i < n; i++)
        b->cdf[i] /= sum;
    b->cdf[n - 1] = 1.0;
    return 0;
}

static size_t format_id(const struct bench *b, uint32_t actor, char *out)
{
    char digits[12];
    size_t nd = 0;
    do {
        digits[nd++] = (char)('0' + actor % 10);
        actor /= 10;
    } while (actor);
    memcpy(out, b->prefix, b->prefix_len);
    for (size_t i = 0; i < nd; i++)
        out[b->prefix_len + i] = digits[nd - 1 - i];
    return b->prefix_len + nd;
}

static int counting(const struct bench *b, uint64_t now)
{
    return b->phase == PH_RUN && now >= b->t_warm_end;
}

static void count_error(struct bench *b, int kind)
{
    b->errs[kind]++;
    b->errors++;
    if (kind < AM_ST__COUNT ? !am_status_retryable(kind) : kind != KIND_DISCONNECTED)
        b->nonretryable++;
}

static double us_of(uint64_t ns)
{
    return round((double)ns / 100.0) / 10.0; /* 0.1 us */
}

/* The second of the window, 0-based, that a completion at `now` belongs to.
 * Seconds are (k, k + 1] so that the one ending exactly at the end of the
 * window is its last; completions after the --duration deadline (the run
 * stops at the end of the callback that sees it) go to the last second. */
static uint64_t series_second(const struct bench *b, uint64_t now)
{
    uint64_t d = now - b->t_warm_end;
    uint64_t i = d ? (d - 1) / NS_PER_S : 0;
    return i < b->sec_cap ? i : b->sec_cap;
}

/* Writes the line of second i, len_ns long, and starts the next second. */
static void series_emit(struct bench *b, uint64_t i, uint64_t len_ns)
{
    uint64_t ok = b->ok - b->sec_ok0;
    double rps = len_ns ? (double)ok * 1e9 / (double)len_ns : 0;
    fprintf(b->series_f, "%llu,%llu,%llu,%.0f,", (unsigned long long)i + 1,
            (unsigned long long)(b->done - b->sec_done0),
            (unsigned long long)(b->errors - b->sec_errors0), rps);
    if (ok)
        fprintf(b->series_f, "%.1f,%.1f\n", us_of(am_hist_percentile(b->sec_hist, 50)),
                us_of(am_hist_percentile(b->sec_hist, 99)));
    else
        fputs(",\n", b->series_f); /* no latency to report, rather than a false 0 */
    am_hist_reset(b->sec_hist);
    b->sec_done0 = b->done;
    b->sec_ok0 = b->ok;
    b->sec_errors0 = b->errors;
}

/* Called before a completion at `now` is counted: writes every second that
 * ended before it, the empty ones included. */
static void series_roll(struct bench *b, uint64_t now)
{
    if (!b->series_f)
        return;
    uint64_t i = series_second(b, now);
    for (; b->sec_cur < i; b->sec_cur++)
        series_emit(b, b->sec_cur, NS_PER_S);
}

/* After the run: writes the seconds left, up to the end of the window. */
static void series_finish(struct bench *b)
{
    if (!b->series_f || !b->t_warm_end || b->t_end <= b->t_warm_end)
        return; /* no measured window */
    uint64_t last = series_second(b, b->t_end);
    for (; b->sec_cur < last; b->sec_cur++)
        series_emit(b, b->sec_cur, NS_PER_S);
    series_emit(b, last, b->t_end - b->t_warm_end - last * NS_PER_S);
}

/* The latency distribution of the window. Percentiles are stepped in
 * hundredths so that 99.91 is exact: 0..99 by 1, 99.1..99.9 by 0.1,
 * 99.91..100 by 0.01 (119 lines). */
static void cdf_write(const struct bench *b, FILE *f)
{
    fputs("percentile,latency_us\n", f);
    if (am_hist_count(b->hist) == 0)
        return;
    for (unsigned h = 0; h <= 10000; h += h < 9900 ? 100 : h < 9990 ? 10 : 1)
        fprintf(f, "%g,%.1f\n", h / 100.0, us_of(am_hist_percentile(b->hist, h / 100.0)));
}

/* One request finished in the window (the caller checked counting()). */
static void count_done(struct bench *b, uint64_t now)
{
    b->done++;
    b->t_last_done = now;
    if (b->o->requests && b->done >= b->o->requests)
        stop_run(b, now); /* nothing more is counted; advance() does the rest */
}

static void mark_dirty(struct conn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->b->dirty[c->b->ndirty++] = c;
    }
}

static void release_slot(struct conn *c, uint32_t s)
{
    c->slots[s].id = 0;
    c->free[c->nfree++] = s;
    c->b->inflight--;
}

static void verify_requeue(struct bench *b, uint32_t actor)
{
    b->todo[b->ntodo++] = actor;
}

/* A request that will get no reply (timeout or lost connection). */
static void settle_lost(struct bench *b, struct slot *sl, int kind, uint64_t now)
{
    if (sl->op == OP_GET) {
        verify_requeue(b, sl->actor);
        return;
    }
    if (b->unknown)
        b->unknown[sl->actor]++;
    if (counting(b, now)) {
        if (b->windows)
            am_bench_window_failed(&b->windows[sl->actor], sl->t0);
        series_roll(b, now);
        count_error(b, kind);
        count_done(b, now);
    }
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct bench *b = c->b;
    c->state = CS_IDLE;
    c->writing = 0;
    c->out.len = c->wbuf.len = c->in.len = c->raw.len = c->sealed.len = 0;
    if (c->sec_on) {
        am_secure_free(&c->sec);
        c->sec_on = c->authentic = 0;
    }
    c->reconnect_at = uv_hrtime() + c->backoff;
    c->backoff = c->backoff * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : c->backoff * 2;
    advance(b);
}

/* Closes a connection that failed; every request in flight on it is settled
 * as `kind` (the expired ones were already settled as timeouts). */
static void conn_lost(struct conn *c, int kind)
{
    struct bench *b = c->b;
    if (c->state != CS_UP && c->state != CS_CONNECTING && c->state != CS_HELLO)
        return;
    uint64_t now = uv_hrtime();
    int was_up = c->state == CS_UP;
    c->state = CS_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    if (b->phase == PH_CONNECT) {
        if (!b->start_failed) {
            b->start_failed = 1;
            snprintf(
                b->start_err, sizeof b->start_err, "cannot reach %s: %s", b->o->node_names[c->node],
                kind == KIND_DISCONNECTED ? "connection closed by the node" : am_status_name(kind));
        }
        return;
    }
    if (was_up && b->phase != PH_DONE)
        b->lost_conns++;
    for (uint32_t s = 0; s < (uint32_t)b->o->pipeline; s++) {
        struct slot *sl = &c->slots[s];
        if (!sl->id)
            continue;
        struct slot copy = *sl;
        release_slot(c, s);
        settle_lost(b, &copy, kind, now);
    }
    c->oldest = UINT64_MAX;
}

/* ---- Writing ------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    c->writing = 0;
    c->wbuf.len = 0;
    if (status < 0)
        conn_lost(c, KIND_DISCONNECTED);
    else if ((c->out.len || c->sealed.len) && (c->state == CS_UP || c->state == CS_HELLO))
        mark_dirty(c);
    advance(c->b);
}

static void conn_flush(struct conn *c)
{
    if ((c->state != CS_UP && c->state != CS_HELLO) || c->writing ||
        (c->out.len == 0 && c->sealed.len == 0))
        return;
    /* With a key, what goes on the wire is the sealed form of out (held
     * inside c->sec until the handshake completes). */
    struct am_buf *src = &c->out;
    if (c->sec_on) {
        if (c->out.len && am_secure_out(&c->sec, c->out.data, c->out.len, &c->sealed)) {
            conn_lost(c, KIND_DISCONNECTED);
            return;
        }
        c->out.len = 0;
        src = &c->sealed;
        if (src->len == 0)
            return;
    }
    uv_buf_t ub = uv_buf_init((char *)src->data, (unsigned)src->len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
    if (n == (int)src->len) {
        src->len = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_lost(c, KIND_DISCONNECTED);
        return;
    }
    if (n > 0)
        am_buf_consume(src, (size_t)n);
    struct am_buf t = c->wbuf;
    c->wbuf = *src;
    *src = t;
    src->len = 0;
    ub = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &ub, 1, on_write);
    if (rc) {
        c->wbuf.len = 0;
        conn_lost(c, KIND_DISCONNECTED);
        return;
    }
    c->writing = 1;
}

static void flush_dirty(struct bench *b)
{
    /* conn_flush never dirties a connection, so the list cannot grow here. */
    for (size_t i = 0; i < b->ndirty; i++) {
        b->dirty[i]->dirty = 0;
        conn_flush(b->dirty[i]);
    }
    b->ndirty = 0;
}

static void on_prepare(uv_prepare_t *h)
{
    flush_dirty(h->data);
}

static void on_check(uv_check_t *h)
{
    flush_dirty(h->data);
}

/* ---- Requests ----------------------------------------------------------- */

static const uint8_t nil_payload[1] = {0xc0};
static const uint8_t int1_payload[1] = {0x01};

/* Queues one request on c, in slot taken from the free stack. */
static int issue(struct conn *c, enum op op, uint32_t actor, uint64_t now)
{
    struct bench *b = c->b;
    const struct am_bench_opts *o = b->o;
    char id[64];
    size_t idlen = format_id(b, actor, id);
    uint32_t s = c->free[c->nfree - 1];
    uint64_t rid = (++c->seq << SLOT_BITS) | s;
    int rc;
    if (op == OP_GET)
        rc = am_encode_call(&c->out, AM_MSG_CALL, rid, o->type, strlen(o->type), id, idlen, "get",
                            3, nil_payload, sizeof nil_payload);
    else
        rc = am_encode_call(&c->out, AM_MSG_CALL, rid, o->type, strlen(o->type), id, idlen,
                            o->action, strlen(o->action), b->payload, b->payload_len);
    if (rc)
        return rc;
    c->nfree--;
    struct slot *sl = &c->slots[s];
    sl->id = rid;
    sl->t0 = now;
    sl->actor = actor;
    sl->op = (uint8_t)op;
    b->inflight++;
    if (now < c->oldest)
        c->oldest = now;
    return 0;
}

/* Fills every free slot of c with the work of the current phase. */
static void conn_fill(struct conn *c, uint64_t now)
{
    struct bench *b = c->b;
    if (c->state != CS_UP)
        return;
    size_t before = c->out.len;
    while (c->nfree) {
        int rc;
        if (b->phase == PH_RUN) {
            rc = issue(c, OP_CALL, pick_actor(b), now);
        } else if (b->phase == PH_VERIFY && b->ntodo) {
            rc = issue(c, OP_GET, b->todo[b->ntodo - 1], now);
            if (!rc)
                b->ntodo--;
        } else {
            break;
        }
        if (rc) {
            b->oom = 1;
            break;
        }
    }
    if (c->out.len != before)
        mark_dirty(c);
}

static void verify_reply(struct bench *b, uint32_t actor, const struct am_reply *r)
{
    if (r->status != AM_ST_OK) {
        if (am_status_retryable(r->status)) {
            verify_requeue(b, actor);
            return;
        }
        b->vstate[actor] = V_FAILED;
        b->vstatus[actor] = (uint8_t)(r->status < AM_ST__COUNT ? r->status : KIND_UNKNOWN_STATUS);
        b->resolved++;
        return;
    }
    const uint8_t *p = r->body, *end = r->body + r->body_len;
    int64_t v = 0;
    if (am_mp_peek(p, end) == AM_MP_NIL) {
        v = 0; /* never written */
    } else if (am_mp_read_int(&p, end, &v)) {
        b->vstate[actor] = V_FAILED;
        b->vstatus[actor] = KIND_BAD_REPLY;
        b->resolved++;
        return;
    }
    b->value[actor] = v;
    b->vstate[actor] = V_DONE;
    b->resolved++;
}

/* A reply for slot s of c, parsed at time now. */
static void complete(struct conn *c, uint32_t s, const struct am_reply *r, uint64_t now)
{
    struct bench *b = c->b;
    struct slot sl = c->slots[s];
    release_slot(c, s);
    if (sl.op == OP_GET) {
        verify_reply(b, sl.actor, r);
        return;
    }
    if (b->acked) {
        if (r->status == AM_ST_OK)
            b->acked[sl.actor]++;
        else if (r->status == AM_ST_TIMEOUT || r->status == AM_ST_UNAVAILABLE) /* may have happened */
            b->unknown[sl.actor]++;
    }
    uint64_t lat = now > sl.t0 ? now - sl.t0 : 0;
    if (r->status == AM_ST_OK && b->phase == PH_RUN) {
        am_hist_record(b->win, lat);
        b->win_ok++;
    }
    if (!counting(b, now))
        return;
    if (b->windows) {
        if (r->status == AM_ST_OK)
            am_bench_window_ok(&b->windows[sl.actor], sl.t0, now);
        else
            am_bench_window_failed(&b->windows[sl.actor], sl.t0);
    }
    series_roll(b, now);
    if (r->status == AM_ST_OK) {
        am_hist_record(b->hist, lat);
        if (b->sec_hist)
            am_hist_record(b->sec_hist, lat);
        b->ok++;
    } else {
        count_error(b, r->status < AM_ST__COUNT ? r->status : KIND_UNKNOWN_STATUS);
    }
    count_done(b, now);
}

/* ---- Reading ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    struct am_buf *in = c->sec_on ? &c->raw : &c->in;
    (void)suggested;
    if (am_buf_reserve(in, READ_CHUNK)) {
        *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)in->data + in->len, (unsigned)(in->cap - in->len));
}

/* A keyed connection closed or failed before anything authentic came from
 * the node: the node could not open what we sealed (another key, or none). */
static void key_refused(struct conn *c)
{
    struct bench *b = c->b;
    if (b->phase == PH_CONNECT && !b->start_failed) {
        b->start_failed = 1;
        snprintf(b->start_err, sizeof b->start_err, "%s does not hold this cluster key",
                 b->o->node_names[c->node]);
    }
}

/* Opens what a keyed connection read. Returns 0, or -1 when the node does
 * not hold our key (the connection is then lost). */
static int open_raw(struct conn *c)
{
    size_t had = c->in.len;
    int rc = am_secure_read(&c->sec, c->raw.data, c->raw.len, &c->in, &c->sealed);
    c->raw.len = 0;
    c->authentic |= c->in.len > had;
    if (rc == 1)
        mark_dirty(c);
    if (rc >= 0)
        return 0;
    key_refused(c);
    conn_lost(c, KIND_DISCONNECTED);
    return -1;
}

/* The node took the connection: only now do requests flow, so a node that
 * refuses clients (too many connections) costs no request. */
static void hello_acked(struct conn *c)
{
    struct bench *b = c->b;
    c->state = CS_UP;
    c->backoff = BACKOFF_MIN_NS;
    c->oldest = UINT64_MAX;
    if (b->phase == PH_CONNECT)
        b->nup++;
    else
        conn_fill(c, uv_hrtime());
}

static void hello_refused(struct conn *c, const struct am_reply *r)
{
    struct bench *b = c->b;
    const uint8_t *p = r->body;
    const char *msg = "no reason given";
    uint32_t len = (uint32_t)strlen(msg);
    if (am_mp_read_str(&p, r->body + r->body_len, &msg, &len) == 0 && len > 200)
        len = 200;
    if (b->phase == PH_CONNECT && !b->start_failed) {
        b->start_failed = 1;
        snprintf(b->start_err, sizeof b->start_err, "cannot reach %s: refused: %.*s",
                 b->o->node_names[c->node], (int)len, msg);
    } else if (!b->refusal[0]) {
        snprintf(b->refusal, sizeof b->refusal, "%s refused a connection: %.*s",
                 b->o->node_names[c->node], (int)len, msg);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    struct bench *b = c->b;
    (void)buf;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_ENOBUFS)
            b->oom = 1;
        else if (c->sec_on && !c->authentic)
            key_refused(c);
        conn_lost(c, KIND_DISCONNECTED);
        advance(b);
        return;
    }
    if (c->sec_on) {
        c->raw.len += (size_t)nread;
        if (open_raw(c)) {
            advance(b);
            return;
        }
    } else {
        c->in.len += (size_t)nread;
    }
    uint64_t now = uv_hrtime();
    size_t off = 0;
    while (c->state == CS_UP || c->state == CS_HELLO) {
        const uint8_t *body;
        size_t blen;
        long n = am_frame_next(c->in.data + off, c->in.len - off, MAX_REPLY_FRAME, &body, &blen);
        if (n == 0)
            break;
        struct am_reply r;
        if (n < 0 && !c->sec_on && memcmp(c->in.data + off, "AMS1", 4) == 0 &&
            b->phase == PH_CONNECT && !b->start_failed) {
            b->start_failed = 1; /* a keyed node's handshake */
            snprintf(b->start_err, sizeof b->start_err,
                     "%s requires the cluster key (--key-file or AMESH_KEY_FILE)",
                     b->o->node_names[c->node]);
        }
        if (n < 0 || am_reply_decode(&r, body, blen)) {
            conn_lost(c, KIND_BAD_REPLY);
            break;
        }
        off += (size_t)n;
        if (r.id == HELLO_ID) {
            /* Our HELLO is acknowledged; a refusal (wrong version, too many
             * connections) says why and closes the connection. */
            if (r.status != AM_ST_OK) {
                hello_refused(c, &r);
                conn_lost(c, r.status < AM_ST__COUNT ? r.status : KIND_UNKNOWN_STATUS);
            } else if (c->state == CS_HELLO) {
                hello_acked(c);
            }
            continue;
        }
        uint32_t s = (uint32_t)(r.id & ((1u << SLOT_BITS) - 1));
        if (s >= (uint32_t)b->o->pipeline || c->slots[s].id != r.id) {
            conn_lost(c, KIND_BAD_REPLY);
            break;
        }
        complete(c, s, &r, now);
    }
    if (c->state == CS_UP || c->state == CS_HELLO) {
        am_buf_consume(&c->in, off);
        conn_fill(c, uv_hrtime());
    }
    advance(b);
}

/* ---- Connecting --------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    struct bench *b = c->b;
    if (status == UV_ECANCELED)
        return; /* we closed it; on_close follows */
    if (status < 0) {
        if (b->phase == PH_CONNECT && !b->start_failed) {
            b->start_failed = 1;
            snprintf(b->start_err, sizeof b->start_err, "cannot reach %s: %s",
                     b->o->node_names[c->node], uv_strerror(status));
        }
        c->state = CS_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_close);
        advance(b);
        return;
    }
    c->state = CS_HELLO;
    c->hello_at = uv_hrtime();
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = 0;
    if (b->keyed) {
        am_secure_init(&c->sec, b->key, 1);
        c->sec_on = 1;
        rc = am_secure_start(&c->sec, &c->sealed);
    }
    if (!rc)
        rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (!rc)
        rc = am_encode_hello(&c->out, HELLO_ID, "client");
    if (rc) {
        if (rc == -ENOMEM)
            b->oom = 1;
        conn_lost(c, KIND_DISCONNECTED);
        advance(b);
        return;
    }
    mark_dirty(c);
    advance(b);
}

static void conn_connect(struct conn *c)
{
    struct bench *b = c->b;
    int rc = uv_tcp_init(&b->loop, &c->tcp);
    if (rc) { /* only for an invalid loop: nothing to close */
        c->reconnect_at = uv_hrtime() + c->backoff;
        return;
    }
    c->tcp.data = c;
    c->creq.data = c;
    c->state = CS_CONNECTING;
    rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&b->o->nodes[c->node],
                        on_connect);
    if (rc) { /* the callback will not run */
        if (b->phase == PH_CONNECT && !b->start_failed) {
            b->start_failed = 1;
            snprintf(b->start_err, sizeof b->start_err, "cannot reach %s: %s",
                     b->o->node_names[c->node], uv_strerror(rc));
        }
        c->state = CS_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

/* ---- Phases ------------------------------------------------------------- */

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish(struct bench *b)
{
    if (b->phase == PH_DONE)
        return;
    if (b->phase == PH_RUN || b->t_end == 0)
        b->t_end = uv_hrtime();
    b->phase = PH_DONE;
    for (size_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->state == CS_UP || c->state == CS_CONNECTING || c->state == CS_HELLO) {
            c->state = CS_CLOSING;
            uv_close((uv_handle_t *)&c->tcp, on_close);
        }
    }
    close_if_open((uv_handle_t *)&b->tick);
    close_if_open((uv_handle_t *)&b->prepare);
    close_if_open((uv_handle_t *)&b->check);
    close_if_open((uv_handle_t *)&b->sigint);
}

static void start_run(struct bench *b)
{
    uint64_t now = uv_hrtime();
    b->phase = PH_RUN;
    b->t_start = b->t_progress = b->t_last_done = now;
    b->t_warm_end = now + (uint64_t)(b->o->warmup * (double)NS_PER_S);
    b->sec_cap = UINT64_MAX;
    if (b->o->duration > 0) {
        uint64_t d = (uint64_t)(b->o->duration * (double)NS_PER_S);
        b->t_run_deadline = b->t_warm_end + d;
        b->sec_cap = d ? (d - 1) / NS_PER_S : 0; /* the last second the deadline reaches */
    }
    for (size_t i = 0; i < b->nconns; i++)
        conn_fill(&b->conns[i], now);
}

static void stop_run(struct bench *b, uint64_t now)
{
    if (b->phase != PH_RUN)
        return;
    b->t_end = now;
    b->phase = PH_DRAIN;
    b->t_phase_deadline = now + (uint64_t)b->o->timeout_ms * NS_PER_MS + 100 * NS_PER_MS;
}

static void start_verify(struct bench *b)
{
    uint64_t now = uv_hrtime();
    b->phase = PH_VERIFY;
    /* Gets are idempotent and retried until they succeed or fail for good;
     * 20 s plus three timeouts is room for a node that restarts meanwhile. */
    b->t_phase_deadline = now + 20 * NS_PER_S + 3 * (uint64_t)b->o->timeout_ms * NS_PER_MS;
    for (size_t i = (size_t)b->o->actors; i-- > 0;)
        b->todo[b->ntodo++] = (uint32_t)i;
    for (size_t i = 0; i < b->nconns; i++)
        conn_fill(&b->conns[i], now);
}

/* The phase transitions; called at the end of every callback. */
static void advance(struct bench *b)
{
    uint64_t now = uv_hrtime();
    if (b->oom || (b->start_failed && b->phase == PH_CONNECT)) {
        finish(b);
        return;
    }
    switch (b->phase) {
    case PH_CONNECT:
        if (b->nup == b->nconns)
            start_run(b);
        break;
    case PH_RUN:
        if ((b->t_run_deadline && now >= b->t_run_deadline) || b->interrupted) {
            stop_run(b, now);
        } else if (b->o->requests && now >= b->t_warm_end) {
            /* A dead node would keep --requests from ever being reached.
             * Live but stuck nodes still complete requests (as timeouts),
             * so only a silence longer than two timeouts means a stall. */
            uint64_t last = b->t_last_done > b->t_warm_end ? b->t_last_done : b->t_warm_end;
            uint64_t limit = 2 * (uint64_t)b->o->timeout_ms * NS_PER_MS;
            if (limit < 10 * NS_PER_S)
                limit = 10 * NS_PER_S;
            if (now - last > limit) {
                b->stalled = 1;
                stop_run(b, now);
            }
        }
        if (b->phase == PH_DRAIN)
            advance(b);
        break;
    case PH_DRAIN:
        if (!b->acked || b->interrupted > 1) {
            finish(b);
            break;
        }
        if (now >= b->t_phase_deadline) {
            /* Expiry should have settled every add by now; whatever is left
             * is given up as unknown, with its connection, so that no late
             * reply can change a count after its actor was read. */
            for (size_t i = 0; i < b->nconns; i++)
                if (b->conns[i].state == CS_UP && b->conns[i].nfree < (uint32_t)b->o->pipeline)
                    conn_lost(&b->conns[i], KIND_DISCONNECTED);
        }
        if (b->inflight == 0)
            start_verify(b);
        break;
    case PH_VERIFY:
        if (b->resolved == (size_t)b->o->actors || now >= b->t_phase_deadline || b->interrupted > 1)
            finish(b);
        break;
    case PH_DONE:
        break;
    }
}

/* Expires requests older than the timeout; each expiry closes its connection. */
static void scan_timeouts(struct bench *b, uint64_t now)
{
    uint64_t limit = (uint64_t)b->o->timeout_ms * NS_PER_MS;
    for (size_t i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        if (c->state == CS_HELLO && now - c->hello_at >= limit) {
            conn_lost(c, KIND_DISCONNECTED); /* no request on it yet: try again */
            continue;
        }
        if (c->state != CS_UP || c->oldest > now || now - c->oldest < limit)
            continue;
        uint64_t oldest = UINT64_MAX;
        int expired = 0;
        for (uint32_t s = 0; s < (uint32_t)b->o->pipeline; s++) {
            struct slot *sl = &c->slots[s];
            if (!sl->id)
                continue;
            if (sl->t0 <= now && now - sl->t0 >= limit) {
                struct slot copy = *sl;
                release_slot(c, s);
                b->timeouts++;
                settle_lost(b, &copy, AM_ST_TIMEOUT, now);
                expired = 1;
            } else if (sl->t0 < oldest) {
                oldest = sl->t0;
            }
        }
        c->oldest = oldest;
        if (expired)
            conn_lost(c, KIND_DISCONNECTED);
    }
}

static void print_progress(struct bench *b, uint64_t now)
{
    double el = (double)(now - b->t_start) / 1e9;
    double win = (double)(now - b->t_progress) / 1e9;
    double rate = win > 0 ? (double)b->win_ok / win : 0;
    double p99 = (double)am_hist_percentile(b->win, 99) / 1000.0;
    fprintf(stderr, "\r  %.1fs  %.0f req/s  p99 %.0fus  errors %llu%s   ", el, rate, p99,
            (unsigned long long)b->errors, now < b->t_warm_end ? "  (warm-up)" : "");
    fflush(stderr);
    b->progress_shown = 1;
    am_hist_reset(b->win);
    b->win_ok = 0;
    b->t_progress = now;
}

static void on_tick(uv_timer_t *t)
{
    struct bench *b = t->data;
    uint64_t now = uv_hrtime();
    if (b->phase == PH_CONNECT && now >= b->t_connect_deadline && !b->start_failed) {
        for (size_t i = 0; i < b->nconns; i++) {
            const struct conn *c = &b->conns[i];
            if (c->state != CS_UP) {
                b->start_failed = 1;
                snprintf(b->start_err, sizeof b->start_err, "cannot reach %s: %s within %ld ms",
                         b->o->node_names[c->node],
                         c->state == CS_HELLO ? "connected, but the node did not answer the hello"
                                              : "no connection",
                         b->o->timeout_ms);
                break;
            }
        }
    }
    if (b->phase == PH_RUN || b->phase == PH_DRAIN || b->phase == PH_VERIFY)
        scan_timeouts(b, now);
    if (b->phase == PH_RUN || b->phase == PH_VERIFY) {
        for (size_t i = 0; i < b->nconns; i++) {
            struct conn *c = &b->conns[i];
            if (c->state == CS_IDLE && now >= c->reconnect_at)
                conn_connect(c);
        }
    }
    if (b->progress && b->phase == PH_RUN && now - b->t_progress >= NS_PER_S)
        print_progress(b, now);
    advance(b);
}

static void on_sigint(uv_signal_t *h, int signum)
{
    struct bench *b = h->data;
    (void)signum;
    b->interrupted++;
    if (b->phase == PH_CONNECT) {
        b->start_failed = 1;
        snprintf(b->start_err, sizeof b->start_err, "interrupted while connecting");
    }
    advance(b);
}

/* ---- Set-up and report -------------------------------------------------- */

static void raise_nofile(long connections)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)connections + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need ? rl.rlim_max : need;
    setrlimit(RLIMIT_NOFILE, &rl); /* best effort: a short limit shows as EMFILE */
}

static int make_payload(struct bench *b)
{
    const struct am_bench_opts *o = b->o;
    if (am_bench_int_payload(o)) {
        b->payload = am_malloc(1);
        if (!b->payload)
            return -ENOMEM;
        b->payload[0] = int1_payload[0];
        b->payload_len = 1;
        return 0;
    }
    size_t n = o->payload < 0 ? 16 : (size_t)o->payload;
    struct am_buf buf;
    msgpack_packer pk;
    am_buf_init(&buf);
    am_mp_packer_init(&pk, &buf);
    if (msgpack_pack_bin(&pk, n) || am_buf_reserve(&buf, n)) {
        am_buf_close(&buf);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        buf.data[buf.len++] = (uint8_t)('a' + i % 26);
    b->payload = am_buf_steal(&buf, &b->payload_len);
    return 0;
}

static int make_prefix(struct bench *b)
{
    if (!b->o->verify) {
        b->prefix_len = (size_t)snprintf(b->prefix, sizeof b->prefix, "bench-");
        return 0;
    }
    uint8_t r[4];
    int rc = uv_random(NULL, NULL, r, sizeof r, 0, NULL);
    if (rc) { /* no entropy source: time and pid still differ between runs */
        uint64_t x = uv_hrtime() ^ ((uint64_t)getpid() << 32);
        uint64_t s = x;
        x = rng_next(&s);
        memcpy(r, &x, sizeof r);
    }
    b->prefix_len = (size_t)snprintf(b->prefix, sizeof b->prefix, "bench-%02x%02x%02x%02x-", r[0],
                                     r[1], r[2], r[3]);
    return 0;
}

static int bench_alloc(struct bench *b)
{
    const struct am_bench_opts *o = b->o;
    size_t nc = (size_t)o->connections, p = (size_t)o->pipeline, na = (size_t)o->actors;
    b->nconns = nc;
    b->conns = am_calloc(nc, sizeof *b->conns);
    b->dirty = am_calloc(nc, sizeof *b->dirty);
    b->slots = am_calloc(nc * p, sizeof *b->slots);
    b->free = am_calloc(nc * p, sizeof *b->free);
    b->hist = am_hist_new();
    b->win = am_hist_new();
    if (!b->conns || !b->dirty || !b->slots || !b->free || !b->hist || !b->win)
        return -ENOMEM;
    if (o->series) {
        b->sec_hist = am_hist_new();
        if (!b->sec_hist)
            return -ENOMEM;
    }
    if (o->skew > 0 && build_cdf(b))
        return -ENOMEM;
    if (o->windows) {
        b->windows = am_calloc(na, sizeof *b->windows);
        b->whist = am_hist_new();
        if (!b->windows || !b->whist)
            return -ENOMEM;
    }
    if (o->verify) {
        b->acked = am_calloc(na, sizeof *b->acked);
        b->unknown = am_calloc(na, sizeof *b->unknown);
        b->value = am_calloc(na, sizeof *b->value);
        b->vstate = am_calloc(na, 1);
        b->vstatus = am_calloc(na, 1);
        /* Each actor is in the to-do stack or in flight, never both. */
        b->todo = am_calloc(na, sizeof *b->todo);
        if (!b->acked || !b->unknown || !b->value || !b->vstate || !b->vstatus || !b->todo)
            return -ENOMEM;
    }
    if (make_payload(b) || make_prefix(b))
        return -ENOMEM;
    for (size_t i = 0; i < nc; i++) {
        struct conn *c = &b->conns[i];
        c->b = b;
        c->node = i % o->nnodes;
        c->slots = b->slots + i * p;
        c->free = b->free + i * p;
        for (size_t s = 0; s < p; s++)
            c->free[s] = (uint32_t)(p - 1 - s); /* slot 0 first */
        c->nfree = (uint32_t)p;
        c->oldest = UINT64_MAX;
        c->backoff = BACKOFF_MIN_NS;
        am_buf_init(&c->out);
        am_buf_init(&c->wbuf);
        am_buf_init(&c->in);
    }
    return 0;
}

static void bench_free(struct bench *b)
{
    for (size_t i = 0; b->conns && i < b->nconns; i++) {
        am_buf_close(&b->conns[i].out);
        am_buf_close(&b->conns[i].wbuf);
        am_buf_close(&b->conns[i].in);
        am_buf_close(&b->conns[i].raw);
        am_buf_close(&b->conns[i].sealed);
        if (b->conns[i].sec_on)
            am_secure_free(&b->conns[i].sec);
    }
    am_free(b->conns);
    am_free(b->dirty);
    am_free(b->slots);
    am_free(b->free);
    am_hist_free(b->hist);
    am_hist_free(b->win);
    am_hist_free(b->sec_hist);
    am_free(b->cdf);
    am_free(b->windows);
    am_hist_free(b->whist);
    am_free(b->acked);
    am_free(b->unknown);
    am_free(b->value);
    am_free(b->vstate);
    am_free(b->vstatus);
    am_free(b->todo);
    am_free(b->payload);
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case KIND_DISCONNECTED:
        return "disconnected";
    case KIND_BAD_REPLY:
        return "bad_reply";
    case KIND_UNKNOWN_STATUS:
        return "unknown_status";
    default:
        return am_status_name(kind);
    }
}

struct figures {
    double seconds, rps, p50, p90, p99, p999, max; /* latencies in us */
};

static void compute(const struct bench *b, struct figures *f)
{
    uint64_t end = b->t_end > b->t_warm_end ? b->t_end : b->t_warm_end;
    f->seconds = b->t_warm_end ? (double)(end - b->t_warm_end) / 1e9 : 0;
    f->rps = f->seconds > 0 ? (double)b->ok / f->seconds : 0;
    f->p50 = us_of(am_hist_percentile(b->hist, 50));
    f->p90 = us_of(am_hist_percentile(b->hist, 90));
    f->p99 = us_of(am_hist_percentile(b->hist, 99));
    f->p999 = us_of(am_hist_percentile(b->hist, 99.9));
    f->max = us_of(am_hist_max(b->hist));
}

/* The final window of every actor into b->whist, after the run. */
static void windows_settle(struct bench *b)
{
    for (size_t i = 0; i < (size_t)b->o->actors; i++) {
        uint64_t w = am_bench_window_final(&b->windows[i], b->t_end);
        if (w)
            am_hist_record(b->whist, w);
    }
}

/* The --windows file: one line per actor with a window, in actor order. */
static void windows_write(const struct bench *b, FILE *f)
{
    fputs("id,window_us\n", f);
    for (size_t i = 0; i < (size_t)b->o->actors; i++) {
        uint64_t w = am_bench_window_final(&b->windows[i], b->t_end);
        if (!w)
            continue;
        char id[64];
        size_t n = format_id(b, (uint32_t)i, id);
        fprintf(f, "%.*s,%.1f\n", (int)n, id, us_of(w));
    }
}

struct verdict {
    size_t ok, low, high, unread;
};

static void verify_report(const struct bench *b, FILE *out, struct verdict *v)
{
    memset(v, 0, sizeof *v);
    size_t shown = 0;
    for (size_t i = 0; i < (size_t)b->o->actors; i++) {
        char id[64];
        size_t n = format_id(b, (uint32_t)i, id);
        if (b->vstate[i] != V_DONE) {
            v->unread++;
            if (shown++ < 20)
                fprintf(out, "verify: %.*s could not be read: %s\n", (int)n, id,
                        b->vstate[i] == V_FAILED ? kind_name(b->vstatus[i]) : "no reply in time");
            continue;
        }
        int64_t got = b->value[i];
        uint64_t lo = b->acked[i], hi = b->acked[i] + b->unknown[i];
        if (got >= 0 && (uint64_t)got >= lo && (uint64_t)got <= hi) {
            v->ok++;
            continue;
        }
        if (got < 0 || (uint64_t)got < lo)
            v->low++;
        else
            v->high++;
        if (shown++ < 20)
            fprintf(out, "verify: %.*s is %lld, expected %llu acknowledged adds (+%llu unknown)\n",
                    (int)n, id, (long long)got, (unsigned long long)lo,
                    (unsigned long long)b->unknown[i]);
    }
    if (shown > 20)
        fprintf(out, "verify: ... and %zu more\n", shown - 20);
    if (v->low == 0 && v->high == 0 && v->unread == 0)
        fprintf(out, "verify: %zu actors ok\n", v->ok);
    else
        fprintf(out,
                "verify: %zu actors ok, %zu below their acknowledged adds (lost), %zu above "
                "(applied twice), %zu unread\n",
                v->ok, v->low, v->high, v->unread);
}

static int print_json(const struct bench *b, const struct figures *f, const struct verdict *v)
{
    const struct am_bench_opts *o = b->o;
    json_t *root = json_object(), *by = json_object();
    if (!root || !by) {
        json_decref(root);
        json_decref(by);
        return -ENOMEM;
    }
    for (int k = 0; k < NKINDS; k++)
        if (b->errs[k])
            json_object_set_new(by, kind_name(k), json_integer((json_int_t)b->errs[k]));
    json_object_set_new(root, "requests", json_integer((json_int_t)b->done));
    json_object_set_new(root, "errors", json_integer((json_int_t)b->errors));
    json_object_set_new(root, "seconds", json_real(round(f->seconds * 1000) / 1000));
    json_object_set_new(root, "rps", json_integer((json_int_t)llround(f->rps)));
    json_object_set_new(root, "p50_us", json_real(f->p50));
    json_object_set_new(root, "p90_us", json_real(f->p90));
    json_object_set_new(root, "p99_us", json_real(f->p99));
    json_object_set_new(root, "p999_us", json_real(f->p999));
    json_object_set_new(root, "max_us", json_real(f->max));
    json_object_set_new(root, "errors_by_status", by);
    json_object_set_new(root, "connections", json_integer(o->connections));
    json_object_set_new(root, "pipeline", json_integer(o->pipeline));
    json_object_set_new(root, "actors", json_integer(o->actors));
    json_object_set_new(root, "type", json_string(o->type));
    json_object_set_new(root, "action", json_string(o->action));
    json_object_set_new(root, "warmup", json_real(o->warmup));
    json_object_set_new(root, "lost_connections", json_integer((json_int_t)b->lost_conns));
    if (b->whist) {
        json_t *wo = json_object();
        if (wo) {
            json_object_set_new(wo, "actors", json_integer((json_int_t)am_hist_count(b->whist)));
            json_object_set_new(wo, "p50_us", json_real(us_of(am_hist_percentile(b->whist, 50))));
            json_object_set_new(wo, "p99_us", json_real(us_of(am_hist_percentile(b->whist, 99))));
            json_object_set_new(wo, "max_us", json_real(us_of(am_hist_max(b->whist))));
            json_object_set_new(root, "windows", wo);
        }
    }
    if (v) {
        json_t *vo = json_object();
        if (vo) {
            json_object_set_new(vo, "ok", json_integer((json_int_t)v->ok));
            json_object_set_new(vo, "lost", json_integer((json_int_t)v->low));
            json_object_set_new(vo, "duplicated", json_integer((json_int_t)v->high));
            json_object_set_new(vo, "unread", json_integer((json_int_t)v->unread));
            json_object_set_new(root, "verify", vo);
        }
    }
    char *s = json_dumps(root, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(root);
    if (!s)
        return -ENOMEM;
    printf("%s\n", s);
    free(s); /* jansson allocates with malloc unless told otherwise */
    return 0;
}

static void print_human(const struct bench *b, const struct figures *f)
{
    const struct am_bench_opts *o = b->o;
    printf("amesh bench: %s/%s on %ld actors (%s), %ld connections x %ld in flight, %zu node%s\n",
           o->type, o->action, o->actors, o->skew > 0 ? "zipf" : "uniform", o->connections,
           o->pipeline, o->nnodes, o->nnodes == 1 ? "" : "s");
    printf("\n  %12s %10s %10s %12s\n", "requests", "errors", "seconds", "ok/s");
    printf("  %12llu %10llu %10.2f %12.0f\n", (unsigned long long)b->done,
           (unsigned long long)b->errors, f->seconds, f->rps);
    printf("\n  %12s %10s %10s %10s %10s\n", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us");
    printf("  %12.1f %10.1f %10.1f %10.1f %10.1f\n\n", f->p50, f->p90, f->p99, f->p999, f->max);
    if (b->whist)
        printf("  unavailable windows of %llu actors: p50 %.1f us, p99 %.1f us, max %.1f us\n\n",
               (unsigned long long)am_hist_count(b->whist), us_of(am_hist_percentile(b->whist, 50)),
               us_of(am_hist_percentile(b->whist, 99)), us_of(am_hist_max(b->whist)));
    if (b->errors) {
        printf("  errors:");
        const char *sep = " ";
        for (int k = 0; k < NKINDS; k++) {
            if (!b->errs[k])
                continue;
            printf("%s%s %llu", sep, kind_name(k), (unsigned long long)b->errs[k]);
            sep = ", ";
        }
        printf("\n");
    }
}

/* Creates the --series, --cdf and --windows files before the run, so that a
 * path that cannot be written costs no run. Returns 0 or -1 (reported). */
static int open_files(struct bench *b)
{
    const struct am_bench_opts *o = b->o;
    if (o->series) {
        b->series_f = fopen(o->series, "w");
        if (!b->series_f) {
            fprintf(stderr, "amesh bench: cannot write --series %s: %s\n", o->series,
                    strerror(errno));
            return -1;
        }
        fputs("second,requests,errors,rps,p50_us,p99_us\n", b->series_f);
    }
    if (o->cdf) {
        b->cdf_f = fopen(o->cdf, "w");
        if (!b->cdf_f) {
            fprintf(stderr, "amesh bench: cannot write --cdf %s: %s\n", o->cdf, strerror(errno));
            return -1;
        }
    }
    if (o->windows) {
        b->windows_f = fopen(o->windows, "w");
        if (!b->windows_f) {
            fprintf(stderr, "amesh bench: cannot write --windows %s: %s\n", o->windows,
                    strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Closes one file; returns -1 (reported) when any write to it failed. */
static int close_file(FILE **f, const char *flag, const char *path)
{
    if (!*f)
        return 0;
    int bad = ferror(*f);
    int rc = fclose(*f);
    *f = NULL;
    if (!bad && rc == 0)
        return 0;
    fprintf(stderr, "amesh bench: writing %s %s failed%s%s\n", flag, path, rc ? ": " : "",
            rc ? strerror(errno) : "");
    return -1;
}

/* Ends the files after the run (complete) or without one. */
static int close_files(struct bench *b, int complete)
{
    if (complete) {
        if (b->series_f)
            series_finish(b);
        if (b->cdf_f)
            cdf_write(b, b->cdf_f);
        if (b->windows_f)
            windows_write(b, b->windows_f);
    }
    int rc = close_file(&b->series_f, "--series", b->o->series);
    if (close_file(&b->cdf_f, "--cdf", b->o->cdf))
        rc = -1;
    if (close_file(&b->windows_f, "--windows", b->o->windows))
        rc = -1;
    return rc;
}

static int bench_run(const struct am_bench_opts *o)
{
    struct bench bs, *b = &bs;
    memset(b, 0, sizeof *b);
    b->o = o;
    b->rng = o->seed;
    b->progress = !o->json && isatty(STDOUT_FILENO);
    int code = AM_EXIT_ERROR;

    if (bench_alloc(b)) {
        fprintf(stderr, "amesh bench: out of memory\n");
        bench_free(b);
        return AM_EXIT_ERROR;
    }
    if (o->key_file) {
        char kerr[1200] = "cannot initialise libsodium";
        if (am_seal_init() || am_key_load(o->key_file, b->key, kerr, sizeof kerr)) {
            fprintf(stderr, "amesh bench: %s\n", kerr);
            bench_free(b);
            return AM_EXIT_ERROR;
        }
        b->keyed = 1;
    }
    if (open_files(b)) {
        close_files(b, 0);
        bench_free(b);
        return AM_EXIT_ERROR;
    }
    raise_nofile(o->connections);
    int rc = uv_loop_init(&b->loop);
    if (rc) {
        fprintf(stderr, "amesh bench: cannot start the event loop: %s\n", uv_strerror(rc));
        close_files(b, 0);
        bench_free(b);
        return AM_EXIT_ERROR;
    }
    uv_timer_init(&b->loop, &b->tick);
    uv_prepare_init(&b->loop, &b->prepare);
    uv_check_init(&b->loop, &b->check);
    uv_signal_init(&b->loop, &b->sigint);
    b->tick.data = b->prepare.data = b->check.data = b->sigint.data = b;
    uv_timer_start(&b->tick, on_tick, TICK_MS, TICK_MS);
    uv_prepare_start(&b->prepare, on_prepare);
    uv_check_start(&b->check, on_check);
    uv_signal_start(&b->sigint, on_sigint, SIGINT);

    b->phase = PH_CONNECT;
    b->t_connect_deadline = uv_hrtime() + (uint64_t)o->timeout_ms * NS_PER_MS;
    for (size_t i = 0; i < b->nconns && !b->start_failed; i++)
        conn_connect(&b->conns[i]);
    advance(b);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&b->loop))
        fprintf(stderr, "amesh bench: warning: handles left open at exit\n");

    if (b->progress_shown)
        fputc('\n', stderr);
    if (b->start_failed) {
        fprintf(stderr, "amesh bench: %s\n", b->start_err);
        close_files(b, 0);
        bench_free(b);
        return b->interrupted ? AM_EXIT_ERROR : AM_EXIT_UNAVAILABLE;
    }

    struct figures f;
    struct verdict v;
    compute(b, &f);
    if (b->windows)
        windows_settle(b);
    if (o->json) {
        if (o->verify)
            verify_report(b, stderr, &v);
        if (print_json(b, &f, o->verify ? &v : NULL))
            fprintf(stderr, "amesh bench: out of memory\n");
    } else {
        print_human(b, &f);
        if (o->verify)
            verify_report(b, stdout, &v);
    }
    fflush(stdout);

    code = AM_EXIT_OK;
    if (b->oom) {
        fprintf(stderr, "amesh bench: out of memory during the run; figures are partial\n");
        code = AM_EXIT_ERROR;
    }
    if (b->lost_conns || b->timeouts) {
        fprintf(stderr,
                "amesh bench: %llu connection%s lost, %llu request%s timed out; figures are "
                "partial\n",
                (unsigned long long)b->lost_conns, b->lost_conns == 1 ? "" : "s",
                (unsigned long long)b->timeouts, b->timeouts == 1 ? "" : "s");
        code = AM_EXIT_ERROR;
    }
    if (b->refusal[0]) {
        fprintf(stderr, "amesh bench: %s\n", b->refusal);
        code = AM_EXIT_ERROR; /* fewer connections than asked for */
    }
    if (b->stalled) {
        fprintf(stderr, "amesh bench: no request completed for too long; stopped early\n");
        code = AM_EXIT_ERROR;
    }
    if (b->interrupted) {
        fprintf(stderr, "amesh bench: interrupted; figures are partial\n");
        code = AM_EXIT_ERROR;
    }
    if (b->nonretryable) {
        fprintf(stderr, "amesh bench: %llu request%s failed with a non-retryable error\n",
                (unsigned long long)b->nonretryable, b->nonretryable == 1 ? "" : "s");
        code = AM_EXIT_ERROR;
    }
    if (o->verify && (v.low || v.high || v.unread))
        code = AM_EXIT_ERROR;
    if (close_files(b, 1))
        code = AM_EXIT_ERROR;
    bench_free(b);
    return code;
}

int am_cmd_bench(int argc, char **argv)
{
    struct am_bench_opts o;
    char err[256];
    if (am_bench_parse(&o, argc, argv, err, sizeof err)) {
        fprintf(stderr, "amesh bench: %s\nTry 'amesh bench --help'.\n", err);
        return AM_EXIT_USAGE;
    }
    if (o.help) {
        fputs(am_bench_usage, stdout);
        return AM_EXIT_OK;
    }
    /* A write to a connection the node just closed must be an error, not a
     * signal that kills the run before it can report. */
    signal(SIGPIPE, SIG_IGN);
    return bench_run(&o);
}
