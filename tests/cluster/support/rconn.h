/* rconn.h - a raw protocol connection to a node, for the process tests that
 * speak the protocol themselves: frames encoded with proto.h, sent in
 * pipelined batches over a plain socket (from a chosen source address when
 * a test poses as a peer), replies read one by one.
 *
 * Unlike proc.h these helpers assert (Criterion) where a test cannot go on:
 * the connect, a HELLO answered otherwise than wanted, a counter call that
 * cannot be encoded, a reply that is not an integer. A send, a reply and a
 * close are returned as codes for the test to judge. */
#ifndef AM_TEST_RCONN_H
#define AM_TEST_RCONN_H

#include "buf.h"
#include "proc.h"
#include "proto.h"

#include <stddef.h>
#include <stdint.h>

/* The bound of one send (and the usual bound of one reply): far above any
 * answer on a loopback, so it fires only when a node is stuck. */
#define RCONN_IO_MS 20000

struct rconn {
    int fd;
    struct am_buf in;
    size_t used; /* bytes of in taken by the last reply returned */
};

/* Connects to addr (HOST:PORT), from src_ip when not NULL. */
void rconn_open(struct rconn *c, const char *addr, const char *src_ip);

void rconn_close(struct rconn *c);

/* Sends all of b (then empties it). 0 or a negated errno. */
int rconn_send(struct rconn *c, struct am_buf *b);

/* The next reply, its body pointing into c->in until the next call.
 * 0, -ETIMEDOUT, -EPIPE (closed by the node) or AM_EPROTO. */
int rconn_reply(struct rconn *c, struct am_reply *r, int timeout_ms);

/* True when the node closes the connection within timeout_ms (replies
 * before the close are skipped). */
int rconn_closed_by_node(struct rconn *c, int timeout_ms);

/* HELLO with request id 1: as a client (peer_name NULL) or as the peer
 * peer_name; asserts the answer is want_status. */
void rconn_hello(struct rconn *c, const char *peer_name, int want_status);

/* One client connection (rconn_open, rconn_hello) to each node
 * nodes[which[i]], i < nn, into conns[i]. */
void rconn_open_all(struct rconn *conns, const struct proc_node *nodes, const int *which, int nn);

void rconn_close_all(struct rconn *conns, int nn);

/* Appends a CALL frame: counter/actor, action, with the integer n as its
 * payload, request id id. */
void rconn_encode_counter(struct am_buf *b, uint64_t id, const char *actor, const char *action,
                          int64_t n);

/* The integer a reply's body holds. */
int64_t rconn_reply_int(const struct am_reply *r);

#endif
