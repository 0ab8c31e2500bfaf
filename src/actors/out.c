/* out.c - what a handler hands back (see out.h and amesh/actor.h).
 *
 * States and replies are checked here, where the handler produced them: over
 * its limit is too_large, and bytes that are not exactly one msgpack object
 * are a handler error, so a broken handler can never store or send garbage. */
#include "out.h"

#include "err.h"
#include "mp.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

_Static_assert(AM_ERR_NO_ACTION == AM_ENOACTION, "public and internal codes agree");
_Static_assert(AM_ERR_INVALID == AM_EINVAL, "public and internal codes agree");
_Static_assert(AM_ERR_HANDLER == AM_EHANDLER, "public and internal codes agree");

void am_out_init(struct am_out *o, size_t max_state, size_t max_reply)
{
    memset(o, 0, sizeof *o);
    am_buf_init(&o->state);
    am_buf_init(&o->reply);
    o->max_state = max_state;
    o->max_reply = max_reply;
}

void am_out_reset(struct am_out *o)
{
    o->state.len = 0;
    o->reply.len = 0;
    o->state_set = 0;
    o->reply_set = 0;
    o->err[0] = '\0';
}

void am_out_close(struct am_out *o)
{
    am_buf_close(&o->state);
    am_buf_close(&o->reply);
}

int am_out_state(struct am_out *out, const void *state, size_t len)
{
    if (len > out->max_state)
        return am_out_error(out, AM_ETOOBIG, "new state of %zu bytes exceeds the limit of %zu",
                            len, out->max_state);
    if (len && am_mp_check_one(state, len))
        return am_out_error(out, AM_EHANDLER, "handler produced a state that is not msgpack");
    if (am_buf_set(&out->state, state, len))
        return am_out_error(out, AM_EHANDLER, "out of memory");
    out->state_set = 1;
    return 0;
}

int am_out_reply(struct am_out *out, const void *reply, size_t len)
{
    if (len > out->max_reply)
        return am_out_error(out, AM_ETOOBIG, "reply of %zu bytes exceeds the limit of %zu", len,
                            out->max_reply);
    if (am_mp_check_one(reply, len))
        return am_out_error(out, AM_EHANDLER, "handler produced a reply that is not msgpack");
    if (am_buf_set(&out->reply, reply, len))
        return am_out_error(out, AM_EHANDLER, "out of memory");
    out->reply_set = 1;
    return 0;
}

int am_out_error(struct am_out *out, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->err, sizeof out->err, fmt, ap);
    va_end(ap);
    return code;
}

int am_msg_action_is(const struct am_msg *m, const char *name)
{
    size_t n = strlen(name);
    return m->action_len == n && memcmp(m->action, name, n) == 0;
}
