/* amesh/actor.h - writing actor types for amesh.
 *
 * An actor type is a name and a handler. The node calls the handler with one
 * message at a time per actor: the actor's current state, the action and the
 * payload. The handler answers with a new state and a reply, or an error.
 * State, payload and reply are each exactly one msgpack object (the empty
 * state, of length 0, means "no state yet").
 *
 *   static int handle(void *data, const struct am_msg *m, struct am_out *out)
 *   {
 *       static const uint8_t nil = 0xc0;
 *       if (am_msg_action_is(m, "get"))   // the state, or nil if none yet
 *           return m->state_len ? am_out_reply(out, m->state, m->state_len)
 *                               : am_out_reply(out, &nil, 1);
 *       return am_out_error(out, AM_ERR_NO_ACTION, "no action %.*s",
 *                           (int)m->action_len, m->action);
 *   }
 *
 * Rules:
 * - The handler runs on the node's event loop: it must not block.
 * - Everything in struct am_msg is borrowed for the call only.
 * - am_out_state/am_out_reply copy their bytes; call each at most once.
 *   Not calling am_out_state keeps the state unchanged (and costs no write);
 *   am_out_state(out, NULL, 0) deletes it. Not calling am_out_reply replies nil.
 * - Returning an error (a negative AM_ERR_* code) discards any state or reply
 *   set during the call: the state stays as it was and the caller receives
 *   the error with the message given to am_out_error.
 *
 * Shared libraries: a library passed to `amesh node --actors LIB.so` exports
 *
 *   const struct am_actor_module amesh_actor_module = {
 *       .abi = AM_ACTOR_ABI, .ntypes = 1, .types = my_types,
 *   };
 *
 * and links msgpack-c itself if it decodes msgpack. Type names are 1 to 63
 * bytes of [a-z0-9_.-]; a name already registered is refused at start-up. */
#ifndef AMESH_ACTOR_H
#define AMESH_ACTOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AM_ACTOR_ABI 1

/* Errors a handler may return. They reach the caller as the wire statuses of
 * the same meaning (docs/protocol.md). */
#define AM_ERR_NO_ACTION (-1004)   /* unknown_action */
#define AM_ERR_INVALID (-1005)     /* invalid_argument: the payload does not suit */
#define AM_ERR_HANDLER (-1006)     /* handler_error: anything else */

struct am_msg {
    const char *type;
    size_t type_len;
    const char *id;
    size_t id_len;
    const char *action;
    size_t action_len;
    const uint8_t *state; /* current state; state_len 0: none yet */
    size_t state_len;
    const uint8_t *payload; /* one msgpack object (0xc0, nil, when none was sent) */
    size_t payload_len;
};

struct am_out; /* opaque; valid for the call only */

/* Sets the new state (copied). len 0 deletes the actor's state. Returns 0 or
 * a negative error, which the handler should return as is. */
int am_out_state(struct am_out *out, const void *state, size_t len);

/* Sets the reply (copied), which must be one msgpack object. */
int am_out_reply(struct am_out *out, const void *reply, size_t len);

/* Records an error message for the caller (printf-style, cut at 255 bytes)
 * and returns code, so a handler can `return am_out_error(out, ...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
int am_out_error(struct am_out *out, int code, const char *fmt, ...);

/* 1 if the message's action equals the NUL-terminated name. */
int am_msg_action_is(const struct am_msg *m, const char *name);

typedef int (*am_handler_fn)(void *data, const struct am_msg *msg, struct am_out *out);

struct am_actor_type {
    const char *name;     /* borrowed for the node's lifetime */
    am_handler_fn handle;
    void *data;           /* passed to handle as is */
};

struct am_actor_module {
    unsigned abi;         /* AM_ACTOR_ABI */
    unsigned ntypes;
    const struct am_actor_type *types;
};

#ifdef __cplusplus
}
#endif

#endif
