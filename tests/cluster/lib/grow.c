/* grow.c - an actor type for the process tests, loaded with --actors: its
 * state is one msgpack bin holding every payload it was sent, back to back,
 * so a state can grow far past --max-payload (up to --max-state). Any
 * action appends the payload's bytes and replies the state's length. */
#include <amesh/actor.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HDR 5 /* bin 32: 0xc6 and a big-endian length */

static int handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    size_t old = m->state_len >= HDR ? m->state_len - HDR : 0;
    size_t n = old + m->payload_len;
    if (n > UINT32_MAX)
        return am_out_error(out, AM_ERR_HANDLER, "state too large");
    uint8_t *b = malloc(n + HDR);
    if (!b)
        return am_out_error(out, AM_ERR_HANDLER, "out of memory");
    b[0] = 0xc6;
    b[1] = (uint8_t)(n >> 24);
    b[2] = (uint8_t)(n >> 16);
    b[3] = (uint8_t)(n >> 8);
    b[4] = (uint8_t)n;
    if (old)
        memcpy(b + HDR, m->state + HDR, old);
    if (m->payload_len)
        memcpy(b + HDR + old, m->payload, m->payload_len);
    int rc = am_out_state(out, b, n + HDR);
    uint8_t r[5] = {0xce, (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    if (rc == 0)
        rc = am_out_reply(out, r, sizeof r);
    free(b);
    return rc;
}

static const struct am_actor_type types[] = {{"grow", handle, NULL}};

const struct am_actor_module amesh_actor_module = {
    .abi = AM_ACTOR_ABI,
    .ntypes = 1,
    .types = types,
};
