/* server.h - the client protocol server (docs/protocol.md).
 *
 * Accepts TCP connections, splits their bytes into frames, decodes requests,
 * hands calls and casts to the runtime and writes replies back, batched into
 * one write per connection per loop turn. Every connection is bounded:
 * requests in flight (max_inflight) and unsent output; past either bound the
 * server stops reading that connection until it drains (backpressure, not an
 * error).
 *
 * The server also does the I/O of peer streams for the peer set (peer.h):
 * it dials them (am_server_dial), and any peer stream, dialed or accepted,
 * carries requests and replies both ways. Those are never paused; see
 * server.c. */
#ifndef AM_SERVER_H
#define AM_SERVER_H

#include "buf.h"
#include "peer.h"
#include "proto.h"
#include "runtime.h"

#include <msgpack.h>
#include <netinet/in.h>
#include <stdint.h>
#include <uv.h>

struct am_server;

struct am_server_opts {
    const char *node_name; /* borrowed for the server's lifetime */
    const uint8_t *key;    /* 32-byte cluster key (seal.h) or NULL; copied */
    size_t max_frame;      /* largest request frame body */
    size_t max_peer_frame; /* on a peer stream (HANDOFF and REPLICATE carry whole
                            * states); 0: max_frame */
    unsigned max_connections;
    unsigned max_inflight; /* per connection */
    /* Local address dialed peer streams leave from, or NULL; copied. */
    const struct sockaddr_in *peer_source;
};

struct am_server_stats {
    uint64_t connections;     /* open now */
    uint64_t accepted;        /* total */
    uint64_t rejected;        /* refused for max_connections */
    uint64_t requests;        /* frames decoded */
    uint64_t bad_frames;      /* malformed or oversized */
    uint64_t unauthenticated; /* connections closed: no cluster key, or another one */
    uint64_t peers;           /* peer connections open now (HELLO role "peer") */
    uint64_t peers_refused;   /* peer HELLOs refused: not a live member at that address */
    uint64_t bytes_in, bytes_out;
};

/* What the node serves besides actor calls. Each packs or produces its
 * reply synchronously on the loop thread. */
struct am_server_hooks {
    int (*status)(void *arg, msgpack_packer *pk);  /* STATUS: one map */
    int (*members)(void *arg, msgpack_packer *pk); /* MEMBERS: one map; NULL when not clustered */
    int (*ring)(void *arg, msgpack_packer *pk);    /* RING: one map; NULL when not clustered */
    void (*leave)(void *arg);                      /* LEAVE, after the reply is queued */
    /* SYNC, on "member" connections only: a push-pull message in, the
     * answer appended to reply. 0 or AM_EPROTO. */
    int (*sync)(void *arg, const uint8_t *msg, size_t len, struct am_buf *reply);
    /* HELLO role "peer" from a node named name (not NUL-terminated) whose
     * connection comes from `from`: 0 to accept it, with *peer set to the
     * peer whose link it becomes (or left NULL: it only serves requests),
     * or a negative code with err saying why not. NULL: peer connections
     * are refused. */
    int (*peer_hello)(void *arg, const char *name, size_t len, const struct sockaddr_in *from,
                      struct am_peer **peer, char *err, size_t errlen);
    /* Placement of a CALL, CAST or FORWARD r: 0 when this node runs it;
     * 1 when it was handed to another node, and cb(ctx, r->id, ...) will run
     * exactly once with the outcome; or a negative code with err set. NULL:
     * everything runs here. */
    int (*route)(void *arg, const struct am_request *r, am_reply_fn cb, void *ctx, char *err,
                 size_t errlen);
    /* HANDOFF or REPLICATE r (r->kind) from the peer named peer (peer
     * streams only): 0 when taken, and cb(ctx, r->id, ...) will run exactly
     * once when it is stored, or a negative code with err set. NULL:
     * refused. */
    int (*handoff)(void *arg, const char *peer, const struct am_request *r, am_reply_fn cb,
                   void *ctx, char *err, size_t errlen);
    /* HANDOFF_DONE from the peer named peer: it handed off all it had for
     * this node. Answered status 0 at once. */
    void (*handoff_done)(void *arg, const char *peer);
    void *arg;
};

/* Starts listening on addr. rt and hooks are borrowed. On error err says
 * why (e.g. the address is in use). */
int am_server_start(struct am_server **out, uv_loop_t *loop, const struct sockaddr_in *addr,
                    struct am_runtime *rt, const struct am_server_opts *o,
                    const struct am_server_hooks *hooks, char *err, size_t errlen);

/* Stops accepting connections and reading requests; replies still flow. */
void am_server_stop_accepting(struct am_server *s);

/* Closes every connection once its pending output is written, then frees
 * the server and calls done. Call after the runtime released every reply. */
void am_server_close(struct am_server *s, void (*done)(void *arg), void *arg);

void am_server_get_stats(const struct am_server *s, struct am_server_stats *st);

/* The peer set's I/O (struct am_peer_io in peer.h; srv is the server, a
 * link one of its connections). am_server_dial refuses once the server is
 * closing. */
void *am_server_dial(void *srv, struct am_peer *p, const char *name, const struct sockaddr_in *to,
                     char *err, size_t errlen);
struct am_buf *am_server_link_out(void *link);
void am_server_link_kick(void *link);
size_t am_server_link_queued(const void *link);
void am_server_link_close(void *link);

/* The table of those for a peer set, with its dial: one that reaches the
 * server (am_server_dial) once there is one. */
struct am_peer_io am_server_peer_io(void *(*dial)(void *arg, struct am_peer *p, const char *name,
                                                  const struct sockaddr_in *to, char *err,
                                                  size_t errlen),
                                    void *arg);

#endif
