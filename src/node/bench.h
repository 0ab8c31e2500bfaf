/* bench.h - `amesh bench`, the built-in load generator.
 *
 * One libuv loop drives C TCP connections, spread round-robin over the nodes
 * given; each keeps exactly P CALLs in flight. Every reply is matched to its
 * request by req_id, so replies may come back in any order.
 *
 * Figures. A run is a warm-up of --warmup seconds followed by the measured
 * window of --duration seconds (or until --requests requests completed in
 * it). Only requests completed inside the window count:
 *   requests  completed requests in the window, successes and errors
 *   errors    those of them that failed, by kind: the reply's status name
 *             (err.h: "busy", "overloaded", ...), "timeout" (no reply within
 *             --timeout; the connection is then reconnected), "disconnected"
 *             (the connection closed before the reply came) or "bad_reply"
 *   rps       successful requests per second of the window (goodput)
 *   p50..max  latency of successful requests, from the moment a request is
 *             queued for writing to the moment its reply is parsed
 *
 * Files. --series FILE writes one CSV line per second of the measured
 * window, after the header "second,requests,errors,rps,p50_us,p99_us":
 * second 1 is the first second after the warm-up; requests and errors count
 * what completed in that second, as above; rps is its successes divided by
 * its length (1 s, except the last second of a --requests run, or of a run
 * cut short, which may be shorter); p50_us and p99_us are empty when nothing
 * succeeded in it. With --duration the last line also takes the requests
 * that completed in the few milliseconds between the deadline and the stop,
 * so a run of --duration 10 has exactly 10 lines.
 * --cdf FILE writes the latency distribution of the whole window as CSV,
 * after the header "percentile,latency_us": the percentiles 0, 1, .. 99,
 * then 99.1 .. 99.9, 99.91 .. 99.99 and 100 (the maximum), 119 lines; only
 * the header when nothing succeeded.
 * --windows FILE writes each actor's longest unavailable window, after the
 * header "id,window_us": one line per actor that got at least one reply or
 * failure counted in the window, in the order of the actors (bench-0
 * first), with the id exactly as sent. The three files are created
 * (truncated) before the run starts, so a path that cannot be written fails
 * at once (exit 1) instead of after the run.
 *
 * Unavailable windows (--windows). A call counts when its reply or its
 * failure comes inside the measured window, as for the latencies (so with
 * --warmup 0, every call of the run); calls still in flight when the run
 * stops, and --verify's gets, do not. For each actor the bench keeps
 *   fail_since  the send time of the earliest counted call to it that failed
 *               (a reply with any status but ok, a timeout, or a call lost
 *               with its connection) and has not been followed by a
 *               successful reply since; 0: none
 *   worst       its longest window so far
 * On a successful reply to a call sent at t0 and parsed at now:
 *   window = now - min(t0, fail_since)   (t0 alone when fail_since is 0)
 *   worst = max(worst, window); fail_since = 0
 * On a failed call sent at t0: fail_since = t0 when it is 0 or later.
 * When the run stops (at end), an actor whose fail_since is still set has
 * the window end - fail_since. So an actor served normally has a window
 * equal to its worst latency, a call held by a node counts its whole wait,
 * and failures count from the first failed send to the next success. With
 * --json the object "windows" gives {"actors", "p50_us", "p99_us",
 * "max_us"} over the actors of the file (percentiles as for the latencies:
 * nearest rank, within 0.4%; max exact). It takes 16 bytes per actor.
 *
 * Connections. A connection counts as up once the node acknowledged its
 * HELLO; only then are requests sent on it. All C connections must come up
 * within --timeout at the start. A lost connection is retried with a backoff
 * of 50 ms doubling to 500 ms until the run ends; its requests in flight
 * count as "disconnected".
 *
 * Exit status: 0 when the run completed; 1 when a connection was lost, a
 * request timed out or a node refused a connection (the figures are then
 * partial), when the run was interrupted (SIGINT), when any request failed
 * with a non-retryable status (a misconfigured bench must not look green;
 * busy, overloaded and shutting_down are part of the measurement), when
 * --verify found a mismatch, or when --series, --cdf or --windows could not
 * be written;
 * 2 for bad usage; 69 when a node cannot be reached at the start.
 *
 * --verify (counter/add with the default payload 1 only) needs actors that
 * start at 0, so it uses the ids "bench-<tag>-<i>" with <tag> 8 random hex
 * digits drawn for the run. It counts the acknowledged adds of every actor
 * over the whole run, warm-up included; after the run it waits for the
 * requests still in flight (up to --timeout), then `get`s every actor. An
 * actor passes when acked <= value <= acked + unknown, where unknown counts
 * its adds whose outcome the client cannot know (timed out, or lost with
 * their connection): an add is never applied twice, and an acknowledged add
 * is never lost. */
#ifndef AM_BENCH_H
#define AM_BENCH_H

#include "proto.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define AM_BENCH_MAX_NODES 32
#define AM_BENCH_DEFAULT_ADDR "127.0.0.1:7946"
#define AM_BENCH_DEFAULT_PORT 7946

/* Upper bounds of the flags, each with its reason:
 * - actors: the Zipf CDF takes 8 bytes per actor, --verify 30 more
 *   (acked, unknown and read value, 8 each; a to-do index, 4; two state
 *   bytes) and --windows 16 (struct am_bench_window), so 10 M actors cost at
 *   most 540 MB;
 * - connections: a file descriptor each; the soft RLIMIT_NOFILE is raised to
 *   fit when the hard limit allows;
 * - pipeline: the low 16 bits of a req_id name the request's slot, and 4096
 *   in flight on one connection is already far past any useful depth;
 * - payload: every connection buffers up to P payloads before a write, so
 *   1 MiB x 16 x 50 is already 800 MB. */
#define AM_BENCH_MAX_ACTORS 10000000L
#define AM_BENCH_MAX_CONNECTIONS 4096L
#define AM_BENCH_MAX_PIPELINE 4096L
#define AM_BENCH_MAX_PAYLOAD (1L << 20)
#define AM_BENCH_MAX_DURATION 86400.0
#define AM_BENCH_MAX_TIMEOUT_MS 3600000L

struct am_bench_opts {
    struct sockaddr_in nodes[AM_BENCH_MAX_NODES];
    char node_names[AM_BENCH_MAX_NODES][64]; /* as the user wrote them */
    size_t nnodes;
    char type[AM_MAX_TYPE + 1];
    char action[AM_MAX_ACTION + 1];
    long actors;
    long connections;
    long pipeline;
    double duration;   /* seconds of the measured window; 0 when --requests is given */
    uint64_t requests; /* 0 when --duration (or neither) is given */
    double warmup;     /* seconds */
    long payload;      /* bytes of the bin payload; -1: the default */
    double skew;       /* Zipf exponent; 0: uniform */
    uint64_t seed;
    long timeout_ms;
    const char *series;   /* --series FILE, or NULL; borrowed from argv */
    const char *cdf;      /* --cdf FILE, or NULL; borrowed from argv */
    const char *windows;  /* --windows FILE, or NULL; borrowed from argv */
    const char *key_file; /* --key-file FILE (or AMESH_KEY_FILE), or NULL; borrowed */
    int json;
    int verify;
    int help;
};

/* Fills o with the defaults, then applies argv[1..argc) (argv[0] is the
 * subcommand name). Returns 0, or -EINVAL with a one-line reason in err
 * (always NUL-terminated when errlen > 0). Nothing is allocated; o->series,
 * o->cdf and o->windows point into argv, so argv must outlive o. With
 * --help, o->help is set and the other flags are still checked. */
int am_bench_parse(struct am_bench_opts *o, int argc, char **argv, char *err, size_t errlen);

/* 1 when requests carry the integer 1 (counter/add without --payload),
 * 0 when they carry a msgpack bin. */
int am_bench_int_payload(const struct am_bench_opts *o);

/* One actor's unavailable window (--windows), as defined above. Times are
 * uv_hrtime() nanoseconds, never 0 (0 marks "none"). Zero it before use. */
struct am_bench_window {
    uint64_t fail_since; /* 0: no failure since the last success */
    uint64_t worst;      /* 0: no reply yet; a window is counted as >= 1 ns */
};

/* A successful reply, at now, to a call sent at t0. */
void am_bench_window_ok(struct am_bench_window *w, uint64_t t0, uint64_t now);
/* A failed call sent at t0 (an error reply, a timeout, a lost connection). */
void am_bench_window_failed(struct am_bench_window *w, uint64_t t0);
/* The actor's window when the run stopped at end: worst, or end - fail_since
 * when that is longer; 0 when no call to it completed or failed. */
uint64_t am_bench_window_final(const struct am_bench_window *w, uint64_t end);

/* The usage text, for --help and usage errors. */
extern const char am_bench_usage[];

#endif
