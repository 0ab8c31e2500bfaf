/* http.h - the HTTP/1.1 API of a node (--http HOST:PORT; README, "HTTP API").
 *
 *   POST /v1/actors/{type}/{id}/{action}   body: the payload as JSON (empty: null)
 *   GET  /v1/status, /v1/members, /v1/ring  the maps of STATUS, MEMBERS and RING
 *   GET  /health/live, /health/ready        liveness, readiness
 *   GET  /metrics                           Prometheus text format 0.0.4 (metrics.h)
 *
 * Requests are parsed by http-parser (Debian's libhttp-parser), one parser
 * per connection, on the node's loop. A call goes through the node's route
 * hook and then the runtime, exactly as a CALL of the client protocol does
 * (server.c), so it can be forwarded to the actor's owner. Replies are
 * converted to JSON with json.h.
 *
 * A connection answers its requests in the order they came (pipelining),
 * while the calls themselves run concurrently; it holds at most
 * max_pipeline requests read and not yet answered, and stops reading while
 * that many wait or its unsent output is over 8 MiB. Headers over
 * AM_HTTP_MAX_HEADER bytes get 431, a body over max_body 413, anything
 * http-parser refuses 400; each of those closes the connection. A connection
 * that completes no request for timeout_ms while nothing of it is waiting on
 * the node is closed (slow or idle clients).
 *
 * The connection core runs without a socket too (am_http_conn_open on a
 * server made by am_http_new with no loop): bytes in, response bytes out.
 * The unit tests and the fuzz target drive it that way. */
#ifndef AM_HTTP_H
#define AM_HTTP_H

#include "buf.h"
#include "err.h"
#include "proto.h"
#include "runtime.h"

#include <msgpack.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define AM_HTTP_MAX_HEADER 8192 /* request line and headers, bytes */
/* The bearer token of a node with a cluster key: the 64 lowercase hex
 * digits of BLAKE2b-256 keyed with the cluster key over these 16 bytes. */
#define AM_HTTP_TOKEN_LABEL "amesh http token"
#define AM_HTTP_TOKEN_MIN 16 /* characters of a token file's token */
#define AM_HTTP_TOKEN_MAX 256

/* Latency buckets of amesh_http_call_duration_seconds (upper bounds, s). */
#define AM_HTTP_BUCKETS 14
extern const double am_http_buckets[AM_HTTP_BUCKETS];

/* The HTTP codes the API answers, in the order counted in the stats. */
#define AM_HTTP_NCODES 12
extern const int am_http_codes[AM_HTTP_NCODES];

/* Calls counted by actor type, at most this many types; the others (and
 * types not known to exist) are counted as "(other)". */
#define AM_HTTP_MAX_TYPES 64

struct am_http_type_stats {
    char type[AM_MAX_TYPE + 1];           /* "(other)" for the catch-all slot */
    uint64_t by_status[AM_ST__COUNT + 1]; /* the last: a status this node does not know */
};

struct am_http_stats {
    uint64_t connections; /* open now */
    uint64_t accepted, rejected, timed_out;
    uint64_t requests; /* requests parsed (malformed ones included) */
    uint64_t bytes_in, bytes_out;
    uint64_t by_code[AM_HTTP_NCODES]; /* responses by code, am_http_codes order */
    /* Actor calls: duration from the request's end to the reply, in the
     * buckets (not cumulative: bucket[i] counts durations in
     * (bound[i-1], bound[i]], over holds the rest). */
    uint64_t call_bucket[AM_HTTP_BUCKETS], call_over, call_count;
    double call_sum;                                        /* seconds */
    struct am_http_type_stats types[AM_HTTP_MAX_TYPES + 1]; /* [0]: "(other)" */
    size_t ntypes;                                          /* slots used, [0] included */
};

struct am_http_opts {
    size_t max_body; /* largest request body (--max-payload) */
    unsigned max_connections;
    unsigned max_pipeline;  /* requests read and not yet answered, per connection */
    uint64_t timeout_ms;    /* see above; 0: never */
    const uint8_t *key;     /* cluster key (32 bytes) or NULL: the token derives from it */
    const char *token_file; /* NULL or "": none; else its token replaces the derived one */
    int auth_all;           /* 1: /metrics needs the token too (--http-auth all) */
};

/* What the node provides, as for the client server (server.h). */
struct am_http_hooks {
    int (*status)(void *arg, msgpack_packer *pk);
    int (*members)(void *arg, msgpack_packer *pk);
    int (*ring)(void *arg, msgpack_packer *pk);
    /* As am_server_hooks.route: 0 runs the call here (am_runtime_submit),
     * 1 handed elsewhere (cb runs once later), < 0 refused with err. */
    int (*route)(void *arg, const struct am_request *r, am_reply_fn cb, void *ctx, char *err,
                 size_t errlen);
    /* 1 when the node is ready to serve its actors, else 0 with why set. */
    int (*ready)(void *arg, char *why, size_t len);
    void *arg;
};

struct am_http;
struct am_http_conn;

/* A server without a listener. loop may be NULL (no sockets, no timers:
 * the connections of am_http_conn_open only); rt may be NULL (then a call
 * the route hook leaves here is answered 500). Loads or derives the token;
 * on error err says why (a token file readable by others, say). */
int am_http_new(struct am_http **out, uv_loop_t *loop, struct am_runtime *rt,
                const struct am_http_opts *o, const struct am_http_hooks *hooks, char *err,
                size_t errlen);

/* Listens on addr (a server made with a loop). */
int am_http_listen(struct am_http *s, const struct sockaddr_in *addr, char *err, size_t errlen);

/* am_http_new, then am_http_listen; on error nothing is left open (the
 * loop must run once to close the handles). */
int am_http_start(struct am_http **out, uv_loop_t *loop, const struct sockaddr_in *addr,
                  struct am_runtime *rt, const struct am_http_opts *o,
                  const struct am_http_hooks *hooks, char *err, size_t errlen);

/* The node is stopping: the listener closes; requests on open connections
 * are still answered (calls 503 shutting_down, readiness 503), each with
 * Connection: close. NULL is a no-op. */
void am_http_stop_accepting(struct am_http *s);

/* Closes every connection once its output is written (at most 5 s), then
 * frees the server and calls done (if not NULL). Call once the runtime and
 * the peer streams have answered every call. NULL is a no-op. */
void am_http_close(struct am_http *s, void (*done)(void *arg), void *arg);

void am_http_get_stats(const struct am_http *s, struct am_http_stats *st);

/* The token in force ("" when the API is open). */
const char *am_http_token(const struct am_http *s);

/* ---- the connection core, without a socket ---------------------------- */

struct am_http_conn *am_http_conn_open(struct am_http *s);
/* Parses len bytes; returns 0 while the connection takes more, 1 once it
 * has finished (its last response is queued: close after the output). */
int am_http_conn_feed(struct am_http_conn *c, const void *data, size_t len);
/* What the loop turn does for a socket: parses input held back by the
 * pipeline bound once answers have gone. Returns as am_http_conn_feed. */
int am_http_conn_poll(struct am_http_conn *c);
/* Responses ready to send; the caller may take bytes (am_buf_consume). */
struct am_buf *am_http_conn_output(struct am_http_conn *c);
/* Frees the connection (later, if calls of it are still out). */
void am_http_conn_close(struct am_http_conn *c);

/* ---- pieces, for the tests --------------------------------------------- */

enum am_http_endpoint {
    AM_HTTP_EP_NOT_FOUND,
    AM_HTTP_EP_BAD, /* an actor path that breaks the name rules: 400 */
    AM_HTTP_EP_ACTOR,
    AM_HTTP_EP_STATUS,
    AM_HTTP_EP_MEMBERS,
    AM_HTTP_EP_RING,
    AM_HTTP_EP_LIVE,
    AM_HTTP_EP_READY,
    AM_HTTP_EP_METRICS,
};

struct am_http_target {
    char type[AM_MAX_TYPE + 1], id[AM_MAX_ID + 1], action[AM_MAX_ACTION + 1];
    size_t type_len, id_len, action_len; /* decoded; NUL-terminated too */
};

/* The endpoint a request target (origin or absolute form; the query is
 * ignored) names. For AM_HTTP_EP_ACTOR t holds the three segments,
 * percent-decoded (an id may hold "/" as %2F; a type may not). Limits as
 * in the protocol: type 1-63 bytes, id 1-255, action 1-63; a segment over
 * them, empty or badly escaped gives AM_HTTP_EP_BAD with err set. */
enum am_http_endpoint am_http_parse_target(const char *url, size_t len, struct am_http_target *t,
                                           char *err, size_t errlen);

/* The HTTP code of a wire status (README's table). */
int am_http_status_code(int status);
const char *am_http_reason(int code);

/* The payload of a call from its body: empty or blank -> nil, else one
 * JSON value converted to msgpack (json.h). Returns 0, AM_EPROTO (not
 * JSON, nested too deep; err says why) or -ENOMEM. */
int am_http_payload(const char *body, size_t len, struct am_buf *out, char *err, size_t errlen);

/* The token of a cluster key: 64 hex digits and a NUL. */
int am_http_token_derive(const uint8_t key[32], char out[65]);

/* Reads a token file: one line of AM_HTTP_TOKEN_MIN to AM_HTTP_TOKEN_MAX
 * characters from '!' to '~', trailing whitespace allowed; the file must
 * not be accessible to group or others. */
int am_http_token_load(const char *path, char *out, size_t outlen, char *err, size_t errlen);

#endif
