/* out.h - the handler output (struct am_out of amesh/actor.h), internal side.
 *
 * The runtime prepares one am_out per message with the limits in force, the
 * handler fills it through am_out_state/am_out_reply/am_out_error, and the
 * runtime takes the results. Both buffers are owned by the am_out. */
#ifndef AM_OUT_H
#define AM_OUT_H

#include "buf.h"

#include <amesh/actor.h>

struct am_out {
    struct am_buf state;
    struct am_buf reply;
    int state_set;
    int reply_set;
    size_t max_state;
    size_t max_reply;
    char err[256];
};

void am_out_init(struct am_out *o, size_t max_state, size_t max_reply);
void am_out_reset(struct am_out *o); /* empties it for the next message, keeping capacity */
void am_out_close(struct am_out *o);

#endif
