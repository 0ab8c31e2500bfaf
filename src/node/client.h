/* client.h - a small blocking client connection to a node (proto.h frames).
 *
 * One TCP connection, one request in flight at a time, every wait bounded by
 * the connection's timeout. Used by the amesh call/cast/status commands and
 * by tests and tools that want to talk to a node without an event loop.
 *
 *   struct am_client *c;
 *   char err[128];
 *   if (am_client_open(&c, "127.0.0.1:7946", 10000, err, sizeof err) == 0) {
 *       struct am_buf reply;
 *       int status;
 *       am_buf_init(&reply);
 *       if (am_client_call(c, AM_MSG_CALL, "counter", "user-42", "get", NULL, 0,
 *                          &reply, &status) == 0 && status == AM_ST_OK)
 *           ... reply.data is one msgpack object ...
 *       am_buf_close(&reply);
 *       am_client_close(c);
 *   }
 *
 * The client sends no HELLO: its first frame is its first request. Request
 * ids start at 1 and grow by one per request on the connection. A reply whose
 * id is not the one awaited (the late reply of a request that timed out) is
 * read and dropped, except an error reply with id 0, which a node sends when
 * it cannot read a frame's id (malformed or oversized frame): that answers
 * the request in flight.
 *
 * A struct am_client is not thread-safe; use one per thread. */
#ifndef AM_CLIENT_H
#define AM_CLIENT_H

#include "buf.h"
#include "proto.h"
#include "seal.h"

#include <stddef.h>
#include <stdint.h>

struct am_client; /* opaque; owned by the caller from open to close */

/* Largest reply frame body accepted. A reply is one actor state or status
 * map; the node bounds those far lower, so 64 MiB only stops a broken or
 * hostile peer from making the client allocate without limit. */
#define AM_CLIENT_MAX_FRAME (64u << 20)

/* Port used when hostport has no ":PORT" (the node's default). */
#define AM_CLIENT_DEFAULT_PORT 7946

/* Connects to hostport ("A.B.C.D:PORT" or "localhost:PORT"; without ":PORT",
 * port AM_CLIENT_DEFAULT_PORT) with TCP_NODELAY, within timeout_ms (<= 0: no
 * limit; the same timeout then bounds every later wait). Sends nothing.
 *
 * On success *c is a new client, to close with am_client_close. On failure *c
 * is NULL, a one-line reason goes into err (errlen bytes; err may be NULL when
 * errlen is 0) and the result is -EINVAL (bad address), -ENOMEM, -ETIMEDOUT
 * (no answer in time) or the negated errno of socket/connect (-ECONNREFUSED,
 * ...). */
int am_client_open(struct am_client **c, const char *hostport, int timeout_ms, char *err,
                   size_t errlen);

/* Sends one CALL or CAST (kind AM_MSG_CALL or AM_MSG_CAST) with a fresh id and
 * waits, at most the timeout, for the reply with that id. payload must be
 * exactly one msgpack object, or NULL/0 for nil. type, id and action are
 * NUL-terminated and borrowed for the call; their limits (proto.h) are the
 * node's to enforce.
 *
 * Returns 0 when a reply arrived: *status (if status is not NULL) is its wire
 * status (enum am_status) and reply (if not NULL) holds its body, replacing
 * what it held: one msgpack object, which for a non-zero status is a str with
 * the error message. When the node answers and then closes the connection
 * while the request is still being sent (as it does for a frame over its
 * limit, answering with request id 0), that answer is the reply.
 *
 * Otherwise returns AM_ETIMEOUT (the connection stays usable; a late reply is
 * dropped by the next call), a negated errno when the connection failed
 * (-ECONNRESET when the node closed it), AM_EPROTO for a malformed reply
 * (dropped; the connection stays usable) or a frame over AM_CLIENT_MAX_FRAME,
 * -EINVAL for a bad kind, or -ENOMEM.
 *
 * After a connection failure, an oversized frame or a send cut short by the
 * timeout (half a frame on the wire), the client is broken: every later call
 * fails at once, with the failure's code, AM_EPROTO or -EPIPE respectively.
 * Close it and open a new one. */
int am_client_call(struct am_client *c, int kind, const char *type, const char *id,
                   const char *action, const uint8_t *payload, size_t payload_len,
                   struct am_buf *reply, int *status);

/* Sends STATUS and waits for its reply, as am_client_call. On success with
 * status 0 the body is a map (see the node's status module). */
int am_client_status(struct am_client *c, struct am_buf *reply, int *status);

/* STATUS, MEMBERS, LEAVE, RING or ACTORS (a message with no field but its id), as
 * am_client_status. */
int am_client_simple(struct am_client *c, int kind, struct am_buf *reply, int *status);

/* Turns on the cluster key (seal.h) for this connection: sends this side's
 * handshake now; every later request is sealed, every reply opened. Call
 * right after am_client_open, before any request. Returns 0, -EINVAL when
 * called later, or a send error. A node that does not hold the same key
 * makes later calls fail with -EACCES. Without a key, a node that has one
 * makes calls fail with -ENOKEY. */
int am_client_set_key(struct am_client *c, const uint8_t key[AM_KEY_BYTES]);

/* For tests that craft their own bytes: sends [p, p+n) as is, waiting at most
 * the timeout for the socket to take it. Returns 0, AM_ETIMEOUT or a negated
 * errno. */
int am_client_send_raw(struct am_client *c, const void *p, size_t n);

/* Waits, at most the timeout, for the next reply frame, whatever its id, and
 * decodes it into r. r->body points into the client's receive buffer and is
 * valid until the next call on c. Returns 0, AM_ETIMEOUT, a negated errno or
 * AM_EPROTO (malformed reply: the frame is dropped). */
int am_client_recv_reply(struct am_client *c, struct am_reply *r);

/* The timeout of every later wait, in milliseconds (<= 0: no limit). */
void am_client_set_timeout(struct am_client *c, int timeout_ms);

/* The socket, for tests that need to half-close or inspect it. Owned by c. */
int am_client_fd(const struct am_client *c);

/* Closes the connection and frees c. NULL is a no-op. */
void am_client_close(struct am_client *c);

#endif
